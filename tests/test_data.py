"""The data files and the pair protocol (``docs/design.md`` §1) on real MNIST digits.

Images are identified by their exact pixels: every pool holds distinct images (checked
below), so a drawn image can be traced back to its pool row and its label.
"""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch
from conftest import IDX_DIR, T10K_CLASS_COUNTS, T10K_FIRST_LABELS

from digitpairs.data import PairDataModule, Pool, downsample, load_pools, make_pairs
from digitpairs.data.sources import SOURCES as SOURCE_NAMES
from digitpairs.utils.errors import ConfigError

# the repository's MNIST, by the name a run resolves it to and by the default (auto)
SOURCES = [pytest.param(("idx", str(IDX_DIR)), id="idx"), pytest.param(("auto", str(IDX_DIR)), id="auto")]
# md5 of the original, uncompressed MNIST files (data/mnist/README.md; torchvision checks the same sums)
MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


# ---- helpers ---------------------------------------------------------------------------
def read_idx_gz(path) -> np.ndarray:
    """An IDX file read with numpy alone (independent of the project's reader)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def key(image: torch.Tensor) -> bytes:
    """A hashable identity of a 14x14 image in pixel units, robust to float round-off."""
    return (torch.round(image.double() * 4)).to(torch.int32).numpy().tobytes()


def index_pool(pool: Pool) -> dict[bytes, tuple[int, int]]:
    """Map each pool image to (row, label); the pool must hold distinct images."""
    table = {key(img): (i, int(lab)) for i, (img, lab) in enumerate(zip(pool.images, pool.labels, strict=False))}
    assert len(table) == len(pool), f"{pool.name} holds duplicate images"
    return table


def denormalise(dm: PairDataModule, name: str) -> torch.Tensor:
    return dm.sets[name].tensors[0] * dm.std + dm.mean


@pytest.fixture(scope="module")
def raw_t10k():
    images = read_idx_gz(IDX_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(IDX_DIR / "t10k-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(scope="module", params=SOURCES)
def source(request):
    return request.param


@pytest.fixture(scope="module")
def pools(source):
    train, test, resolved = load_pools(*source)
    return train, test, resolved


# ---- downsampling ----------------------------------------------------------------------
def test_downsample_is_exact_2x2_average():
    a = torch.arange(28 * 28, dtype=torch.float64).view(1, 28, 28)  # a[r, c] = 28 r + c
    out = downsample(a)
    assert out.shape == (1, 14, 14) and out.dtype == torch.float32
    i, j = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    expected = 56 * i + 2 * j + 14.5  # mean of 28(2i)+2j, +1, +28, +29
    assert torch.equal(out[0], expected)

    u = torch.zeros(2, 28, 28, dtype=torch.uint8)
    u[0, :2, :2] = torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8)  # no uint8 overflow
    u[1, 26:, 26:] = 255
    out = downsample(u)
    assert out[0, 0, 0].item() == 64.5 and out[0].sum().item() == 64.5
    assert out[1, 13, 13].item() == 255.0 and out[1].sum().item() == 255.0


# ---- the repository's data ----------------------------------------------------------------
def test_data_files_are_the_original_mnist():
    """The four files in data/mnist decompress to the original MNIST bytes."""
    assert sorted(p.name for p in IDX_DIR.glob("*.gz")) == sorted(MD5)
    for name, md5 in MD5.items():
        with gzip.open(IDX_DIR / name, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, name


def test_default_source_resolves_to_the_repository_files():
    """data.source=auto with the default data.root is the study's protocol: MNIST 60,000/10,000."""
    dm = PairDataModule()  # every default, from any working directory
    assert (dm.hparams.source, dm.hparams.root) == ("auto", "data/mnist")
    dm.setup()
    assert dm.resolved_source == "idx" and dm.root == str(IDX_DIR)
    assert dm.source_label == "MNIST 60,000/10,000 (idx)"
    assert SOURCE_NAMES == ("auto", "idx", "torchvision")


def test_auto_without_files_names_the_folder(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data.root='.*' is not allowed: expected a folder holding the four MNIST IDX"
    ):
        load_pools("auto", str(tmp_path))


# ---- pools -----------------------------------------------------------------------------
def test_idx_files_are_the_real_mnist_test_set(raw_t10k):
    images, labels = raw_t10k
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert labels[:10].tolist() == T10K_FIRST_LABELS
    assert torch.bincount(labels, minlength=10).tolist() == T10K_CLASS_COUNTS


def test_idx_test_set_split_into_two_halves_with_labels_attached(raw_t10k, tmp_path):
    """Only t10k has images in the folder: it is split per class into two fixed halves."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):  # the t10k files alone
        (tmp_path / name).symlink_to(IDX_DIR / name)
    train, test, resolved = load_pools("idx", str(tmp_path))
    assert resolved == "idx"
    assert len(train) + len(test) == 10000
    n_train = torch.bincount(train.labels, minlength=10).tolist()
    n_test = torch.bincount(test.labels, minlength=10).tolist()
    assert [a + b for a, b in zip(n_train, n_test, strict=False)] == T10K_CLASS_COUNTS
    assert all(abs(a - b) <= 1 for a, b in zip(n_train, n_test, strict=False)), (n_train, n_test)
    # Every pool image is a real t10k digit with its own label, and each is used once.
    images, labels = raw_t10k
    small = downsample(images)
    raw = {key(img): int(lab) for img, lab in zip(small, labels, strict=False)}
    assert len(raw) == 10000
    seen = set()
    for pool in (train, test):
        assert pool.images.dtype == torch.float32 and pool.images.shape[1:] == (14, 14)
        assert pool.labels.dtype == torch.int64
        for img, lab in zip(pool.images, pool.labels, strict=False):
            k = key(img)
            assert raw[k] == int(lab)
            seen.add(k)
    assert len(seen) == 10000


def test_train_and_test_pools_are_disjoint(pools):
    train, test, resolved = pools
    a, b = index_pool(train), index_pool(test)
    assert not set(a) & set(b)
    assert (len(train), len(test)) == (60000, 10000)


def test_load_pools_is_cached_and_resolves_auto():
    first = load_pools("idx", str(IDX_DIR))
    assert load_pools("idx", str(IDX_DIR)) is first
    train, test, resolved = load_pools("auto", str(IDX_DIR))  # the four IDX files: idx
    assert resolved == "idx" and torch.equal(train.images, first[0].images)


# ---- pairs -----------------------------------------------------------------------------
def test_pairs_follow_the_protocol(pools):
    train, test, _ = pools
    for pool, seed in ((train, 0), (test, 1)):
        table = index_pool(pool)
        x, target, classes = make_pairs(pool, 1000, torch.Generator().manual_seed(seed))
        assert x.shape == (1000, 2, 14, 14) and x.dtype == torch.float32
        assert target.shape == (1000,) and target.dtype == torch.int64
        assert classes.shape == (1000, 2) and classes.dtype == torch.int64
        rows = [[table[key(img)] for img in pair] for pair in x]  # every image is a pool image
        used = [row for pair in rows for row, _ in pair]
        assert len(set(used)) == 2000, "an image was used twice in one set"
        assert classes.tolist() == [[lab for _, lab in pair] for pair in rows]
        assert torch.equal(target, (classes[:, 0] <= classes[:, 1]).long())
        assert 0.50 < target.float().mean().item() < 0.60  # about 55% of random pairs are "<="
        assert set(classes.flatten().tolist()) == set(range(10))


def test_pair_count_limits(pools):
    train, _, _ = pools
    half = len(train) // 2
    x, _, _ = make_pairs(train, half, torch.Generator().manual_seed(0))
    assert len({key(img) for img in x.flatten(0, 1)}) == 2 * half
    for n in (half + 1, 0):
        with pytest.raises(ConfigError, match=f"data.n_pairs={n} is not allowed"):
            make_pairs(train, n, torch.Generator().manual_seed(0))


def test_exact_targets_on_known_digits(raw_t10k):
    images, labels = raw_t10k
    small = downsample(images[:10])
    # The first ten test digits, labelled by hand (not by the file): 7 2 1 0 4 1 4 9 5 9.
    known = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    pool = Pool(small, torch.tensor(known), "t10k[:10]")
    table = index_pool(pool)
    x, target, classes = make_pairs(pool, 5, torch.Generator().manual_seed(0))
    drawn = [[table[key(img)][0] for img in pair] for pair in x]
    assert sorted(i for pair in drawn for i in pair) == list(range(10))
    assert classes.tolist() == [[known[i], known[j]] for i, j in drawn]
    assert target.tolist() == [int(known[i] <= known[j]) for i, j in drawn]

    # A 7 and a 2: the target says which one came first.
    seven_two = Pool(small[[0, 1]], torch.tensor([7, 2]), "7,2")
    orders = set()
    for seed in range(12):
        x, target, classes = make_pairs(seven_two, 1, torch.Generator().manual_seed(seed))
        if torch.equal(x[0, 0], small[0]):  # the 7 first: 7 <= 2 is false
            assert (target.item(), classes.tolist()) == (0, [[7, 2]])
        else:
            assert torch.equal(x[0, 0], small[1])
            assert (target.item(), classes.tolist()) == (1, [[2, 7]])
        orders.add(target.item())
    assert orders == {0, 1}, "the order within a pair is never random"
    # Two different images of a 1 (test digits 2 and 5): a tie has target 1.
    ones = Pool(small[[2, 5]], torch.tensor([1, 1]), "1,1")
    for seed in range(4):
        _, target, classes = make_pairs(ones, 1, torch.Generator().manual_seed(seed))
        assert (target.item(), classes.tolist()) == (1, [[1, 1]])


# ---- the data module -------------------------------------------------------------------
def make_dm(source, **kwargs) -> PairDataModule:
    dm = PairDataModule(source=source[0], root=source[1], **kwargs)
    dm.setup()
    return dm


def test_same_seed_same_pairs_other_seed_other_pairs(source):
    a, b, c = make_dm(source, seed=3), make_dm(source, seed=3), make_dm(source, seed=4)
    for name in ("train", "val", "test"):
        for ta, tb in zip(a.sets[name].tensors, b.sets[name].tensors, strict=False):
            assert torch.equal(ta, tb)
        assert not torch.equal(a.sets[name].tensors[0], c.sets[name].tensors[0])
    assert not torch.equal(a.sets["train"].tensors[2], c.sets["train"].tensors[2])


def test_split_sizes_normalisation_and_pool_membership(source):
    dm = make_dm(source, n_pairs=1000, val_fraction=0.2, seed=0)
    assert dm.resolved_source == "idx"
    assert {k: len(v) for k, v in dm.sets.items()} == {"train": 800, "val": 200, "test": 1000}
    x = dm.sets["train"].tensors[0]
    assert x.dtype == torch.float32 and x.shape == (800, 2, 14, 14)
    # Statistics of the 800 training pairs only: with val included the mean would be off
    # by about 8e-4.
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    assert 10 < dm.mean < 60 and 50 < dm.std < 100  # raw pixels are 0-255, mostly background
    train_pool, test_pool, _ = load_pools(*source)
    train_table, test_table = index_pool(train_pool), index_pool(test_pool)
    used = {}
    for name, table in (("train", train_table), ("val", train_table), ("test", test_table)):
        # The same two numbers undo the normalisation of every set: each image is a pool image.
        raw = denormalise(dm, name)
        _, target, classes = dm.sets[name].tensors
        labels = [[table[key(img)][1] for img in pair] for pair in raw]
        assert classes.tolist() == labels
        assert torch.equal(target, (classes[:, 0] <= classes[:, 1]).long())
        used[name] = {table[key(img)][0] for img in raw.flatten(0, 1)}
        assert len(used[name]) == 2 * len(raw)
    assert not used["train"] & used["val"], "a validation image is also a training image"
    # Train, val and test share the two numbers: blank pixels (0) map to the same value
    # everywhere, and undoing the normalisation lands exactly on 2x2 averages of 0-255
    # integers (multiples of 0.25). With statistics of their own, val and test would be
    # off by about 0.03 pixel units.
    zero = -dm.mean / dm.std
    for name in ("train", "val", "test"):
        assert dm.sets[name].tensors[0].min().item() == pytest.approx(zero, abs=1e-5)
        raw = denormalise(dm, name) * 4
        assert (raw - raw.round()).abs().max().item() < 4e-3, name


def test_no_validation_split():
    dm = make_dm(("idx", str(IDX_DIR)), n_pairs=300, val_fraction=0.0)
    assert set(dm.sets) == {"train", "test"} and len(dm.sets["train"]) == 300
    assert dm.val_dataloader() == {}
    assert list(dm.test_dataloader()) == ["train", "test"]


def test_batches_never_hold_a_single_pair():
    dm = make_dm(("idx", str(IDX_DIR)), n_pairs=1000, val_fraction=0.2, batch_size=799)
    assert len(dm.sets["train"]) == 800  # 799 + 1 would crash BatchNorm1d in train mode
    seen = set()
    for _ in range(3):
        sizes = []
        for x, target, classes in dm.train_dataloader():
            sizes.append(len(x))
            assert x.shape[1:] == (2, 14, 14) and target.shape == (len(x),) and classes.shape == (len(x), 2)
            seen.update(key(img) for img in x[:, 0])
        assert sizes == [799]
    assert len(seen) == 800, "the dropped pair is not always the same one"

    dm = make_dm(("idx", str(IDX_DIR)), n_pairs=1000, val_fraction=0.2, batch_size=100)
    epochs = [torch.cat([t for _, t, _ in dm.train_dataloader()]) for _ in range(2)]
    batches = [len(x) for x, _, _ in dm.train_dataloader()]
    assert batches == [100] * 8  # nothing dropped when no batch of one would be left
    assert sorted(epochs[0].tolist()) == sorted(dm.sets["train"].tensors[1].tolist())
    first = [x for x, _, _ in dm.train_dataloader()][0]
    again = [x for x, _, _ in dm.train_dataloader()][0]
    assert not torch.equal(first, again), "training batches are not shuffled every epoch"

    dm = make_dm(("idx", str(IDX_DIR)), n_pairs=1000, val_fraction=0.2, batch_size=797)  # 797 + 3
    assert [len(x) for x, _, _ in dm.train_dataloader()] == [797, 3]


def test_eval_loaders_are_ordered_and_complete():
    dm = make_dm(("idx", str(IDX_DIR)), n_pairs=1000, eval_batch_size=300)
    loaders = dm.test_dataloader()
    assert list(loaders) == ["train", "val", "test"]
    for name, loader in loaders.items():
        x = torch.cat([b[0] for b in loader])
        assert torch.equal(x, dm.sets[name].tensors[0])  # sequential, every pair once
    assert [len(b[0]) for b in loaders["val"]] == [200]
    assert [len(b[0]) for b in loaders["test"]] == [300, 300, 300, 100]


def test_idx_folder_with_both_sets_gives_the_60k_train_and_10k_test_pools():
    """The study's exact protocol: train pool = MNIST's 60,000 training digits, test pool = its 10,000 test digits."""
    train, test, resolved = load_pools("idx", str(IDX_DIR))
    assert resolved == "idx" and (train.name, test.name) == ("idx:train", "idx:t10k")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(test.labels, minlength=10).tolist() == T10K_CLASS_COUNTS
    assert test.labels[:10].tolist() == T10K_FIRST_LABELS
