"""Where the digits come from: labelled 14x14 digit pools (``data.source``).

A *pool* is a set of labelled digits, average-pooled from 28x28 to 14x14. A source gives
two pools, train and test, that never share an image::

    auto         the four MNIST IDX files in data.root (default data/mnist, in the
                 repository), resolved as idx; else torchvision's files already under
                 data.root, resolved as torchvision. Never downloads.
    idx          IDX files in the folder data.root: train-* and t10k-* (.gz or not) give
                 the 60,000 / 10,000 pools; one set alone is split into two fixed halves
    torchvision  torchvision.datasets.MNIST under data.root; downloads (11 MB) if missing

Every file is checked when it is read, before any pair is drawn (:func:`read_idx`,
:func:`check_set`): its IDX magic number (unsigned bytes; 3 dimensions for images, 1 for
labels), its size against its header, 28x28 images, labels 0-9, as many labels as images.
A file that fails is one :class:`~digitpairs.utils.errors.ConfigError` naming ``data.root``
and the file.

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
IDX_DIMS = {"images-idx3": 3, "labels-idx1": 1}  # the dimensions each file's magic number declares
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, MNIST's only type
IMAGE_SIZE = 28  # MNIST's digits are 28x28 (average-pooled to 14x14)
N_CLASSES = 10  # labels 0-9


@dataclass(frozen=True)
class Pool:
    """Labelled 14x14 digits.

    Attributes:
        images: ``float32 (N, 14, 14)``, pixel values 0-255 (2x2 average of 28x28 MNIST).
        labels: ``int64 (N,)``, digits 0-9.
        name: where the digits come from, e.g. ``"idx:train"``.
        origin: the file of the labels, for messages (``""`` if none).
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    origin: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def downsample(images28: torch.Tensor) -> torch.Tensor:
    """Average-pool ``(N, 28, 28)`` digits (any dtype, 0-255) to ``float32 (N, 14, 14)``.

    2x2 kernel, stride 2 (step 1 of the pair protocol, ``docs/design.md`` §1).
    """
    return F.avg_pool2d(images28.float().unsqueeze(1), kernel_size=2, stride=2).squeeze(1)


def split_stratified(images: torch.Tensor, labels: torch.Tensor, source: str, origin: str = "") -> tuple[Pool, Pool]:
    """Split one labelled set into two fixed, disjoint, class-balanced halves.

    Each class's images are shuffled with the fixed ``POOL_SPLIT_SEED``; the first half
    of each class goes to the train pool, the rest to the test pool. The split is the
    same for every run, so train and test pools never share an image.

    Args:
        images: ``float32 (N, 14, 14)``; labels: ``int64 (N,)``; source: a name for logs;
        origin: the labels' file (:attr:`Pool.origin`).

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
    return (
        Pool(images[a], labels[a], f"{source}:train", origin),
        Pool(images[b], labels[b], f"{source}:test", origin),
    )


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


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies inside it (``MNIST/raw/...``), else whole."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _bad_file(root: Path, path: Path, why: str) -> ConfigError:
    return ConfigError("data.root", str(root), f"MNIST IDX files; {_shown(path, root)} {why}")


def read_idx(path: Path, ndim: int | None = None, root: Path | None = None) -> torch.Tensor:
    """An IDX file (plain or ``.gz``) of unsigned bytes as a ``uint8`` tensor of its shape,
    ``(N, 28, 28)`` for images and ``(N,)`` for labels, read with torchvision's MNIST reader
    (a ``.gz`` is decompressed into a temporary folder first).

    Its magic number is checked first: ``0x00 0x00 0x08 ndim`` (unsigned bytes, ``ndim``
    dimensions); then its length against the sizes in its header.

    Args:
        path: the file; ndim: the dimensions it must have (3 for images, 1 for labels;
            default: as its name says, ``idx3`` or ``idx1``); root: ``data.root``, for
            messages (default: the file's folder).

    Raises:
        ConfigError: naming ``data.root`` and the file: not gzip, another magic number,
            or a length that disagrees with its header (a truncated file).
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import extract_archive

    root = path.parent if root is None else root
    if ndim is None:
        ndim = next((d for kind, d in IDX_DIMS.items() if kind in path.name), 3)

    def read(plain: str) -> torch.Tensor:
        with open(plain, "rb") as f:
            head, sizes = f.read(4), f.read(4 * ndim)
        if not head:
            raise _bad_file(root, path, "is empty")
        if len(head) < 4 or head[:3] != bytes([0, 0, IDX_UBYTE]) or head[3] != ndim:
            raise _bad_file(
                root,
                path,
                f"starts with 0x{head.hex()}, not the magic number 0x{IDX_UBYTE:06x}{ndim:02x} "
                f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})",
            )
        if len(sizes) < 4 * ndim:
            raise _bad_file(root, path, "is cut short inside its header")
        if int.from_bytes(sizes[:4], "big") == 0:
            raise _bad_file(root, path, f"holds no {'images' if ndim == 3 else 'items'}")
        return read_sn3_pascalvincent_tensor(plain, strict=False)

    try:
        if path.suffix != ".gz":
            return read(str(path))
        with tempfile.TemporaryDirectory() as tmp:
            return read(extract_archive(str(path), tmp))
    except ConfigError:
        raise
    except (OSError, EOFError, KeyError, RuntimeError, ValueError, AssertionError) as err:
        why = "is cut short or longer than its header says" if isinstance(err, RuntimeError) else "is not one"
        raise _bad_file(root, path, f"{why} ({type(err).__name__})") from None


def check_set(images: torch.Tensor, labels: torch.Tensor, files: tuple[Path, Path], root: Path) -> None:
    """Check one set of MNIST digits as read from its IDX files, before any pair is drawn.

    Args:
        images: ``uint8 (N, H, W)``; labels: ``uint8 (N,)``; files: their (images,
            labels) files; root: ``data.root``, for messages.

    Raises:
        ConfigError: naming ``data.root`` and the file: images that are not 28x28, no
            images, a label outside 0-9, or as many labels as images.
    """
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        size = "x".join(map(str, images.shape[1:]))
        raise _bad_file(root, files[0], f"holds {size} images; MNIST's are {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) == 0:
        raise _bad_file(root, files[0], "holds no images")
    if len(images) != len(labels):
        raise _bad_file(
            root, files[1], f"holds {len(labels):,} labels for the {len(images):,} images of {_shown(files[0], root)}"
        )
    bad = torch.nonzero(labels >= N_CLASSES).flatten()
    if len(bad):
        i = int(bad[0])
        raise _bad_file(
            root, files[1], f"holds label {int(labels[i])} at item {i} ({len(bad):,} of {len(labels):,} labels outside 0-{N_CLASSES - 1})"
        )


def read_set(files: tuple[Path, Path], root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked digits of one (images, labels) pair of IDX files (:func:`read_idx`,
    :func:`check_set`): ``(float32 (N, 14, 14) 0-255, int64 (N,))``.

    Raises:
        ConfigError: see :func:`read_idx` and :func:`check_set`.
    """
    images, labels = (read_idx(f, IDX_DIMS[kind], root) for f, kind in zip(files, IDX_FILES, strict=True))
    check_set(images, labels, files, root)
    return downsample(images), labels.long()


def idx_pools(folder: Path, source: str = "idx", root: Path | None = None) -> tuple[Pool, Pool]:
    """The pools of the IDX files in ``folder``: MNIST train and t10k as the train and test
    pools; only one of the two sets present, that set split in two (:func:`split_stratified`).

    Args:
        folder: the folder of the files; source: the pools' name prefix; root:
            ``data.root`` for messages (default ``folder``).

    Raises:
        ConfigError: a missing folder, no complete set of files, or a file that fails
            :func:`read_set`'s checks.
    """
    root = folder if root is None else root
    if not folder.is_dir():
        raise ConfigError("data.root", str(folder), "an existing folder with MNIST IDX files (data.source=idx)")
    sets = {}
    for prefix in ("train", "t10k"):
        files = find_idx(folder, prefix)
        if files is not None:
            sets[prefix] = (*read_set(files, root), str(files[1]))
    if not sets:
        raise ConfigError(
            "data.root",
            str(folder),
            "a folder holding train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] "
            "and/or t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz] (data.source=idx)",
        )
    if len(sets) == 2:
        test_name = "t10k" if source == "idx" else "test"
        return Pool(*sets["train"][:2], f"{source}:train", sets["train"][2]), Pool(
            *sets["t10k"][:2], f"{source}:{test_name}", sets["t10k"][2]
        )
    ((prefix, (images, labels, origin)),) = sets.items()
    return split_stratified(images, labels, f"{source}:{prefix}", origin)


def torchvision_pools(root: Path, download: bool) -> tuple[Pool, Pool]:
    """MNIST train and test as ``torchvision.datasets.MNIST`` keeps them under
    ``root/MNIST/raw`` (downloaded first if missing and ``download``), read and checked as
    IDX files (:func:`read_set`).

    Raises:
        ConfigError: the files are missing and cannot be downloaded, or a file fails the checks.
    """
    from torchvision.datasets import MNIST

    if not torchvision_present(root):
        try:
            MNIST(str(root), train=True, download=download)
        except (RuntimeError, OSError) as err:  # offline: torchvision tries every mirror, then gives up
            raise ConfigError(
                "data.source",
                "torchvision",
                f"MNIST under {root}/MNIST/raw, or a network to download it (11 MB) ({type(err).__name__}); "
                "offline, use data.source=auto (the repository's data/mnist)",
            ) from None
    return idx_pools(root / "MNIST" / "raw", "torchvision", root)


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
        "data.root",
        str(root),
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
