"""Where the digits come from: labelled 14x14 digit pools (``data.source``).

A *pool* is a set of labelled digits, average-pooled from 28x28 to 14x14. A source gives
two pools, train and test, that never share an image::

    auto         the four MNIST IDX files in data.root (default data/mnist, in the
                 repository), resolved as idx; else torchvision's files already under
                 data.root, resolved as torchvision. Never downloads.
    idx          IDX files in the folder data.root: train-* and t10k-* (.gz or not) give
                 the 60,000 / 10,000 pools; one set alone is split into two fixed halves
    torchvision  torchvision.datasets.MNIST under data.root; downloads (11 MB) if missing

The study's protocol draws training pairs from MNIST's 60,000 training digits and test
pairs from its 10,000 test digits (``docs/design.md`` §1): ``auto`` on the repository's
``data/mnist`` gives exactly that, offline.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from digitpairs.utils.errors import ConfigError, require_choice

SOURCES = ("auto", "idx", "torchvision")
POOL_SPLIT_SEED = 0  # fixed: the split of a single set into two pools never depends on a run's seed
IDX_FILES = ("images-idx3", "labels-idx1")


@dataclass(frozen=True)
class Pool:
    """Labelled 14x14 digits.

    Attributes:
        images: ``float32 (N, 14, 14)``, pixel values 0-255 (2x2 average of 28x28 MNIST).
        labels: ``int64 (N,)``, digits 0-9.
        name: where the digits come from, e.g. ``"idx:train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return len(self.labels)


def downsample(images28: torch.Tensor) -> torch.Tensor:
    """Average-pool ``(N, 28, 28)`` digits (any dtype, 0-255) to ``float32 (N, 14, 14)``.

    2x2 kernel, stride 2 (step 1 of the pair protocol, ``docs/design.md`` §1).
    """
    return F.avg_pool2d(images28.float().unsqueeze(1), kernel_size=2, stride=2).squeeze(1)


def split_stratified(images: torch.Tensor, labels: torch.Tensor, source: str) -> tuple[Pool, Pool]:
    """Split one labelled set into two fixed, disjoint, class-balanced halves.

    Each class's images are shuffled with the fixed ``POOL_SPLIT_SEED``; the first half
    of each class goes to the train pool, the rest to the test pool. The split is the
    same for every run, so train and test pools never share an image.

    Args:
        images: ``float32 (N, 14, 14)``; labels: ``int64 (N,)``; source: a name for logs.

    Returns:
        ``(train_pool, test_pool)``.
    """
    g = torch.Generator().manual_seed(POOL_SPLIT_SEED)
    first, second = [], []
    for digit in range(10):
        idx = torch.nonzero(labels == digit).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 :])
    a, b = torch.cat(first).sort().values, torch.cat(second).sort().values
    return Pool(images[a], labels[a], f"{source}:train"), Pool(images[b], labels[b], f"{source}:test")


def find_idx(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``prefix`` (``train`` or ``t10k``) in ``folder``,
    plain or ``.gz``; None if either is missing."""
    found = []
    for kind in IDX_FILES:
        candidates = [folder / f"{prefix}-{kind}-ubyte{ext}" for ext in ("", ".gz")]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (plain or ``.gz``) as a ``uint8`` tensor of its shape, ``(N, 28, 28)`` for
    images and ``(N,)`` for labels, read with torchvision's MNIST reader (a ``.gz`` is
    decompressed into a temporary folder first).

    Raises:
        ConfigError: a file that torchvision cannot read as an IDX file.
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import extract_archive

    try:
        if path.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(path), strict=False)
        with tempfile.TemporaryDirectory() as tmp:
            return read_sn3_pascalvincent_tensor(extract_archive(str(path), tmp), strict=False)
    except (OSError, EOFError, KeyError, RuntimeError, ValueError) as err:
        raise ConfigError("data.root", str(path.parent), f"MNIST IDX files; {path.name} is not one ({type(err).__name__})") from None


def idx_pools(folder: Path) -> tuple[Pool, Pool]:
    """The pools of the IDX files in ``folder``: MNIST train and t10k as the train and test
    pools; only one of the two sets present, that set split in two (:func:`split_stratified`).

    Raises:
        ConfigError: a missing folder, no complete set of files, or a malformed file.
    """
    if not folder.is_dir():
        raise ConfigError("data.root", str(folder), "an existing folder with MNIST IDX files (data.source=idx)")
    sets = {}
    for prefix in ("train", "t10k"):
        files = find_idx(folder, prefix)
        if files is not None:
            images, labels = read_idx(files[0]), read_idx(files[1])
            if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
                raise ConfigError("data.root", str(folder), f"MNIST IDX files; the {prefix} images and labels do not match")
            sets[prefix] = (downsample(images), labels.long())
    if not sets:
        raise ConfigError(
            "data.root", str(folder),
            "a folder holding train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] "
            "and/or t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz] (data.source=idx)",
        )
    if len(sets) == 2:
        return Pool(*sets["train"], "idx:train"), Pool(*sets["t10k"], "idx:t10k")
    ((prefix, (images, labels)),) = sets.items()
    return split_stratified(images, labels, f"idx:{prefix}")


def torchvision_pools(root: Path, download: bool) -> tuple[Pool, Pool]:
    """MNIST train and test through ``torchvision.datasets.MNIST`` under ``root``.

    Raises:
        ConfigError: the files are missing and cannot be downloaded.
    """
    from torchvision.datasets import MNIST

    pools = []
    for train in (True, False):
        try:
            ds = MNIST(str(root), train=train, download=download)
        except (RuntimeError, OSError) as err:  # offline: torchvision tries every mirror, then gives up
            raise ConfigError(
                "data.source", "torchvision",
                f"MNIST under {root}/MNIST/raw, or a network to download it (11 MB) ({type(err).__name__}); "
                "offline, use data.source=auto (the repository's data/mnist)",
            ) from None
        pools.append(Pool(downsample(ds.data), ds.targets.long(), f"torchvision:{'train' if train else 'test'}"))
    return pools[0], pools[1]


def torchvision_present(root: Path) -> bool:
    """True if torchvision's MNIST files (train and test) are already under ``root``."""
    raw = root / "MNIST" / "raw"
    return all(find_idx(raw, prefix) for prefix in ("train", "t10k"))


def resolve_source(source: str, root: Path) -> str:
    """What ``source`` means for the folder ``root``: ``auto`` becomes ``idx`` (the four IDX
    files in ``root`` itself) or ``torchvision`` (its files under ``root/MNIST/raw``).

    Raises:
        ConfigError: an unknown source, or ``auto`` with neither layout in ``root``.
    """
    require_choice("data.source", source, SOURCES)
    if source != "auto":
        return source
    if find_idx(root, "train") and find_idx(root, "t10k"):
        return "idx"
    if torchvision_present(root):
        return "torchvision"
    raise ConfigError(
        "data.root", str(root),
        "a folder holding the four MNIST IDX files (the repository's data/mnist, the default), "
        "or data.source=torchvision to download MNIST into data.root",
    )


@functools.lru_cache(maxsize=4)
def load_pools(source: str, root: str) -> tuple[Pool, Pool, str]:
    """Load the train and test pools of a source; cached per process (a sweep worker
    loads them once for all its jobs).

    Args:
        source: one of ``SOURCES``.
        root: the folder of the IDX files (``auto``, ``idx``) or torchvision's root
            (MNIST under ``root/MNIST/raw``).

    Returns:
        ``(train_pool, test_pool, resolved_source)``; ``resolved_source`` is never
        ``"auto"``. The pools' tensors are shared by all callers: do not modify them.

    Raises:
        ConfigError: an unknown source, or a folder that is missing or lacks files.
    """
    path = Path(root)
    source = resolve_source(source, path)
    if source == "torchvision":
        train, test = torchvision_pools(path, download=True)
    else:
        train, test = idx_pools(path)
    return train, test, source


def describe(train: Pool, test: Pool, source: str) -> str:
    """One line for logs: ``MNIST 60,000/10,000 (idx)``, or the pool names when they are
    not MNIST's full train and test sets."""
    full = {train.name.split(":")[1], test.name.split(":")[1]} in ({"train", "t10k"}, {"train", "test"})
    name = "MNIST" if full and source in ("idx", "torchvision") else f"{train.name} + {test.name}"
    return f"{name} {len(train):,}/{len(test):,} ({source})"
