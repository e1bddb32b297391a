"""Bad data files are refused with one line before any training: IDX files copied from the
repository's MNIST (``data/mnist``) into a temporary folder, then altered byte by byte.

Every case goes through what ``train.py`` runs (``digitpairs.training.run.run`` on a
composed config, in this process; one case as a ``train.py`` subprocess) and checks the
exit code, the one line, the ``invalid`` record and that no training started.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import IDX_DIR, read_metrics, run_train
from test_errors import one_error_line

from digitpairs.data import load_pools

QUICK = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


# ---- building IDX files ----------------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: magic ``00 00 08 ndim``, big-endian sizes, the bytes."""
    head = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    return head + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def read_gz(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


@pytest.fixture(scope="module")
def t10k() -> tuple[np.ndarray, np.ndarray]:
    """The repository's MNIST test set: ``(uint8 (10000, 28, 28), uint8 (10000,))``."""
    return read_gz(IDX_DIR / "t10k-images-idx3-ubyte.gz"), read_gz(IDX_DIR / "t10k-labels-idx1-ubyte.gz")


def t10k_folder(root: Path, images: bytes, labels: bytes, gz: bool = False) -> Path:
    """A data.root holding only a t10k set (split in two pools by data.source=idx)."""
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for name, data in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        (root / f"{name}{ext}").write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return root


# id: (images, labels) -> (images file bytes, labels file bytes); the file named; the reason
def _set_label(value: int, at: int):
    def edit(images, labels):
        labels = labels.copy()
        labels[at] = value
        return idx_bytes(images), idx_bytes(labels)

    return edit


CASES = {
    "label_10": (
        _set_label(10, 3),
        "t10k-labels-idx1-ubyte",
        "holds label 10 at item 3 (1 of 10,000 labels outside 0-9)",
    ),
    "label_255": (_set_label(255, 9999), "t10k-labels-idx1-ubyte", "holds label 255 at item 9999"),
    "image_size_32": (
        lambda im, lab: (idx_bytes(np.pad(im, ((0, 0), (2, 2), (2, 2)))), idx_bytes(lab)),
        "t10k-images-idx3-ubyte",
        "holds 32x32 images; MNIST's are 28x28",
    ),
    "image_size_28x14": (
        lambda im, lab: (idx_bytes(im[:, :, ::2]), idx_bytes(lab)),
        "t10k-images-idx3-ubyte",
        "holds 28x14 images; MNIST's are 28x28",
    ),
    "magic_first_byte": (
        lambda im, lab: (idx_bytes(im, bytes([1, 0, 8, 3])), idx_bytes(lab)),
        "t10k-images-idx3-ubyte",
        "starts with 0x01000803, not the magic number 0x00000803 (unsigned bytes, 3 dimensions)",
    ),
    "magic_float_labels": (  # type 0x0D (float32) read as 4-byte floats: a length error before, or a float pool
        lambda im, lab: (idx_bytes(im), idx_bytes(lab, bytes([0, 0, 0x0D, 1]))),
        "t10k-labels-idx1-ubyte",
        "starts with 0x00000d01, not the magic number 0x00000801 (unsigned bytes, 1 dimension)",
    ),
    "labels_as_images": (  # the files swapped: a 1-dimensional file where images belong
        lambda im, lab: (idx_bytes(lab), idx_bytes(im)),
        "t10k-images-idx3-ubyte",
        "starts with 0x00000801, not the magic number 0x00000803",
    ),
    "images_cut_short": (
        lambda im, lab: (idx_bytes(im)[: 16 + 784 * 5000 + 100], idx_bytes(lab)),
        "t10k-images-idx3-ubyte",
        "is cut short or longer than its header says",
    ),
    "labels_too_long": (
        lambda im, lab: (idx_bytes(im), idx_bytes(lab) + b"\x01\x02"),
        "t10k-labels-idx1-ubyte",
        "is cut short or longer than its header says",
    ),
    "fewer_labels": (
        lambda im, lab: (idx_bytes(im), idx_bytes(lab[:9999])),
        "t10k-labels-idx1-ubyte",
        "holds 9,999 labels for the 10,000 images of t10k-images-idx3-ubyte",
    ),
    "no_images": (
        lambda im, lab: (idx_bytes(im[:0]), idx_bytes(lab[:0])),
        "t10k-images-idx3-ubyte",
        "holds no images",
    ),
    "empty_file": (lambda im, lab: (idx_bytes(im), b""), "t10k-labels-idx1-ubyte", "is empty"),
}


GZ_CASES = ("label_10", "image_size_32", "magic_first_byte", "images_cut_short")  # the .gz path: the same reader


@pytest.mark.parametrize(
    ("case", "gz"),
    [pytest.param(c, False, id=c) for c in CASES] + [pytest.param(c, True, id=f"{c}-gz") for c in GZ_CASES],
)
def test_bad_idx_file_is_one_line_before_training(case, gz, t10k, compose_cfg, tmp_path, capsys):
    from digitpairs.training.run import run

    edit, file, reason = CASES[case]
    root = t10k_folder(tmp_path / "data", *edit(*t10k), gz=gz)
    cfg = compose_cfg(*QUICK, "data.source=idx", f"data.root={root}", "data.n_pairs=300")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(cfg, multirun=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    m = one_error_line(err)
    assert (m["key"], m["value"]) == ("data.root", repr(str(root)))
    shown = f"{file}{'.gz' if gz else ''}"
    assert m["allowed"].startswith(f"MNIST IDX files; {shown} {reason}"), m["allowed"]
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "invalid" and "error: " + record["error"] == err.strip()
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training started


def test_not_gzip_is_one_line(t10k, tmp_path):
    from digitpairs.utils.errors import ConfigError

    root = t10k_folder(tmp_path / "data", idx_bytes(t10k[0]), idx_bytes(t10k[1]), gz=True)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_bytes(t10k[1]))  # not compressed, named .gz
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte.gz is not one \(BadGzipFile\)$"):
        load_pools("idx", str(root))


def test_the_unaltered_copy_still_loads(t10k, tmp_path):
    """The files the cases alter, written back unaltered, give the repository's pools."""
    for gz in (False, True):
        root = t10k_folder(tmp_path / f"data{gz}", idx_bytes(t10k[0]), idx_bytes(t10k[1]), gz=gz)
        train, test, source = load_pools("idx", str(root))
        assert (len(train), len(test), source) == (4999, 5001, "idx")  # half of each class
        assert train.origin == str(root / f"t10k-labels-idx1-ubyte{'.gz' if gz else ''}")
        assert sorted(set(train.labels.tolist())) == list(range(10))


def test_torchvision_files_get_the_same_checks(t10k, tmp_path):
    """data.source=torchvision (files already under data.root/MNIST/raw, so no download)
    reads its files with the same checks: a label byte out of range names that file."""
    from digitpairs.utils.errors import ConfigError

    images, labels = t10k
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    bad = labels.copy()
    bad[0] = 42
    for prefix, lab in (("train", labels), ("t10k", bad)):  # the test set stands in for both
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(lab))
    with pytest.raises(ConfigError) as err:
        load_pools("torchvision", str(tmp_path / "tv"))
    assert str(err.value) == (
        f"data.root='{tmp_path / 'tv'}' is not allowed: expected MNIST IDX files; "
        "MNIST/raw/t10k-labels-idx1-ubyte holds label 42 at item 0 (1 of 10,000 labels outside 0-9)"
    )
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    train, test, source = load_pools("auto", str(tmp_path / "tv"))  # auto finds them: torchvision
    assert (len(train), len(test), source, train.name, test.name) == (
        10000,
        10000,
        "torchvision",
        "torchvision:train",
        "torchvision:test",
    )


@pytest.mark.slow
def test_label_out_of_range_through_train_py(tmp_path):
    """The whole repository set, one training label byte set to 12: refused at once, exit 2."""
    root = tmp_path / "mnist"
    shutil.copytree(IDX_DIR, root)
    labels = root / "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[8 + 5] = 12  # item 5 (after the 8-byte header)
    labels.write_bytes(gzip.compress(bytes(data)))
    result = run_train(["model=ws_aux", "data.source=idx", f"data.root={root}", "threads=1", *QUICK], tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr).group(0)
    assert line == (
        f"error: data.root='{root}' is not allowed: expected MNIST IDX files; "
        "train-labels-idx1-ubyte.gz holds label 12 at item 5 (1 of 60,000 labels outside 0-9)"
    )
    assert read_metrics(tmp_path / "run")["status"] == "invalid"
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- the classes a model needs ------------------------------------------------------------
def test_second_member_without_every_class_is_refused_before_training(t10k, compose_cfg, tmp_path, capsys):
    """recipe=beyond's second member is fitted on the training digits when training ends: a
    labels file without any 7 is refused before the first epoch, naming the file."""
    from digitpairs.training.run import run

    images, labels = t10k
    labels = np.where(labels == 7, 1, labels)  # every 7 relabelled as a 1: labels in range, a class missing
    root = t10k_folder(tmp_path / "data", idx_bytes(images), idx_bytes(labels), gz=True)
    cfg = compose_cfg("recipe=beyond", *QUICK, "data.source=idx", f"data.root={root}", "data.n_pairs=300")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(cfg, multirun=False)
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err).group(0)
    assert line == (
        "error: model.second='scatter_pca' is not allowed: expected training digits of every class 0-9 to fit it "
        "on (or model.second=none); the 480 digits of the 240 training pairs drawn from "
        f"{root / 't10k-labels-idx1-ubyte.gz'} (data.n_pairs=300) have no 7"
    )
    assert read_metrics(tmp_path / "run")["status"] == "invalid"
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the same model without its second member needs no class in particular: it builds
    from digitpairs.training.run import build

    build(
        compose_cfg("recipe=beyond", *QUICK, "data.source=idx", f"data.root={root}", "model.second=none"), loggers=False
    )


@pytest.mark.parametrize("second", ["scatter_pca", "scatter_svm"])
def test_too_few_pairs_for_the_second_member(second, compose_cfg):
    """Four training pairs of the repository's MNIST cannot hold every digit: refused in
    ``build`` (which a fleet's packed runs go through too), before any training."""
    from digitpairs.training.run import build
    from digitpairs.utils.errors import ConfigError

    cfg = compose_cfg("recipe=beyond", *QUICK, f"model.second={second}", "data.n_pairs=4", "data.val_fraction=0")
    with pytest.raises(ConfigError) as err:
        build(cfg, loggers=False)
    assert str(err.value).startswith(f"model.second='{second}' is not allowed: expected training digits of every")
    assert str(err.value).endswith(
        f"the 8 digits of the 4 training pairs drawn from {IDX_DIR / 'train-labels-idx1-ubyte.gz'} "
        "(data.n_pairs=4) have no 0, 1, 2, 8"
    )
