"""The ``PairDataModule``: pairs of real MNIST digits for training, validation and test.

Run ``python -m digitpairs.data.datamodule`` to print the pools and one batch of pairs.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from digitpairs.data.augment import AUGMENTS, RandomDigitAffine, RandomDigitElastic
from digitpairs.data.pairs import DigitPairs, IndexBatches, RepairBatches, make_pairs
from digitpairs.data.sources import SOURCES, describe, load_pools
from digitpairs.utils.errors import ConfigError, require_choice, require_number
from digitpairs.utils.io import project_path

log = logging.getLogger(__name__)


class PairDataModule(L.LightningDataModule):
    """Pairs of real MNIST digits for training, validation and test (``docs/design.md`` §1).

    The constructor only stores and checks its arguments; :meth:`setup` loads the pools
    and draws the pairs (once; later calls do nothing). Batches are tuples
    ``(x float32 (B, 2, 14, 14) normalised, target int64 (B,), classes int64 (B, 2))``,
    cut from in-memory tensors (no per-sample collation, no worker processes).

    Args:
        source: ``auto`` (the default), ``idx`` or ``torchvision``
            (:mod:`digitpairs.data.sources`).
        root: the folder of the MNIST IDX files (``auto``, ``idx``) or torchvision's root;
            a relative path is relative to the project (default ``data/mnist``, the
            repository's copy of MNIST).
        n_pairs: pairs drawn for training (from the train pool) and for test (from the
            test pool); 1000 in the study.
        val_fraction: share of the training pairs held out for validation, in [0, 1).
        batch_size: training batch size, >= 2 (100 in the study). If the last batch of an
            epoch would hold a single pair, that pair is dropped for that epoch (it
            would crash BatchNorm1d); a different pair each epoch, as batches are shuffled.
        eval_batch_size: batch size for validation and test.
        seed: draws train pairs, test pairs and the validation split, in that order.
        test_curve: also evaluate the test pairs after every training epoch, under the
            name ``curve`` (for the study's Fig. 2 only; never used to choose anything).
        augment: ``none`` (the study) or ``affine``: each training digit of each batch
            gets its own random affine map (:class:`~digitpairs.data.augment.RandomDigitAffine`
            with ``shift`` px, ``rotate`` degrees, ``scale``); training batches only.
        shift, rotate, scale: the affine strengths (used with ``augment=affine``).
        elastic, elastic_sigma: with ``elastic`` > 0, each training digit of each batch
            also gets its own elastic distortion, after the affine map if any
            (:class:`~digitpairs.data.augment.RandomDigitElastic`: ``elastic`` pixels,
            smoothed over ``elastic_sigma`` pixels); 0 (the default) turns it off.
        repair: re-pair the training digits at random every epoch, targets recomputed
            from the classes (:class:`RepairBatches`); the training pairs' digits only,
            validation and test pairs untouched. The final ``train`` accuracy is still
            measured on the drawn training pairs.

    Raises:
        ConfigError: for a bad ``source``, ``val_fraction``, ``batch_size``,
            ``eval_batch_size``, ``augment`` or strength (affine or elastic), or ``n_pairs`` (the last when
            :meth:`setup` sees the pool). BatchNorm1d cannot train on a batch of one pair,
            so ``batch_size`` must be >= 2 and at least 2 pairs must be left for training.
            :meth:`setup` also refuses data files that fail the checks of
            :mod:`digitpairs.data.sources` (magic number, length, 28x28 images, labels 0-9).
    """

    def __init__(
        self,
        source: str = "auto",
        root: str = "data/mnist",
        n_pairs: int = 1000,
        val_fraction: float = 0.2,
        batch_size: int = 100,
        eval_batch_size: int = 1000,
        seed: int = 0,
        test_curve: bool = False,
        augment: str = "none",
        shift: float = 1.5,
        rotate: float = 12.0,
        scale: float = 0.1,
        repair: bool = False,
        elastic: float = 0.0,
        elastic_sigma: float = 2.0,
    ) -> None:
        super().__init__()
        require_choice("data.augment", augment, AUGMENTS)
        if not isinstance(repair, bool):
            raise ConfigError("data.repair", repair, "true or false")
        augmenter = RandomDigitAffine(shift, rotate, scale)  # checks the strengths even when off
        self.augmenter = augmenter if augment == "affine" else None
        elastic_warp = RandomDigitElastic(elastic, elastic_sigma)  # checks the keys even when off
        self.elastic = elastic_warp if elastic > 0 else None
        self.repair = repair
        require_choice("data.source", source, SOURCES)
        require_number("data.val_fraction", val_fraction, 0, high=1)
        # BatchNorm1d trains on >= 2 samples
        require_number("data.batch_size", batch_size, 2, integer=True, high=1_000_000, high_strict=False)
        require_number("data.eval_batch_size", eval_batch_size, 1, integer=True, high=1_000_000, high_strict=False)
        require_number("data.n_pairs", n_pairs, 1, integer=True)
        n_val = round(val_fraction * n_pairs)
        if val_fraction > 0 and not 1 <= n_val <= n_pairs - 2:
            raise ConfigError("data.val_fraction", val_fraction,
                              f"a share of data.n_pairs={n_pairs} leaving >= 1 validation pair and >= 2 training pairs")
        if n_pairs - n_val < 2:  # one training pair: BatchNorm1d cannot train on a batch of one
            raise ConfigError("data.n_pairs", n_pairs, "an integer >= 2 (BatchNorm1d trains on batches of >= 2 pairs)")
        self.save_hyperparameters(logger=False)
        self.source, self.root, self.n_pairs, self.n_val = source, str(project_path(root)), n_pairs, n_val
        self.batch_size, self.eval_batch_size, self.seed, self.test_curve = batch_size, eval_batch_size, seed, test_curve
        self.resolved_source: str | None = None
        self.source_label: str | None = None  # e.g. "MNIST 60,000/10,000 (idx)", once set up
        self.train_origin = ""  # the labels file of the training digits, for messages, once set up
        self.mean = self.std = None
        self.sets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load the pools, draw the pairs, split off validation and normalise (once)."""
        if self.sets:
            return
        train_pool, test_pool, self.resolved_source = load_pools(self.source, self.root)
        self.source_label = describe(train_pool, test_pool, self.resolved_source)
        self.train_origin = train_pool.origin
        g = torch.Generator().manual_seed(self.seed)
        x, t, c = make_pairs(train_pool, self.n_pairs, g)
        x_test, t_test, c_test = make_pairs(test_pool, self.n_pairs, g)
        order = torch.randperm(self.n_pairs, generator=g)
        fit_idx, val_idx = order[self.n_val :], order[: self.n_val]
        x_fit = x[fit_idx]
        # float64 in NumPy (single-threaded): the same two numbers at any torch thread count
        # (torch's float32 sums differed in the 7th digit between 1 and 2 threads)
        pixels = x_fit.numpy().astype("float64")
        self.mean, self.std = float(pixels.mean()), float(pixels.std(ddof=1))
        norm = lambda a: ((a - self.mean) / self.std).contiguous()  # noqa: E731
        self.sets["train"] = TensorDataset(norm(x_fit), t[fit_idx], c[fit_idx])
        if self.n_val:
            self.sets["val"] = TensorDataset(norm(x[val_idx]), t[val_idx], c[val_idx])
        self.sets["test"] = TensorDataset(norm(x_test), t_test, c_test)
        if self.repair:  # the training pairs' digits, one by one, for a fresh pairing every epoch
            x_train, _, c_train = self.sets["train"].tensors
            self.digits = DigitPairs(x_train.reshape(-1, *x_train.shape[2:]), c_train.reshape(-1))
        log.info(
            "data: %s from %s (data.source=%s); pairs train=%d val=%d test=%d",
            self.source_label, self.root, self.source,
            len(self.sets["train"]), self.n_val, len(self.sets["test"]),
        )

    def fit_digits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pairs' digits one by one, normalised and not augmented:
        ``(float32 (2n, 1, 14, 14), int64 (2n,))`` for ``n`` training pairs."""
        x, _, classes = self.sets["train"].tensors
        return x.reshape(-1, 1, *x.shape[2:]), classes.reshape(-1)

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        ds = self.sets[name]
        n = len(ds)
        if train:
            sampler = IndexBatches(n, self.batch_size, shuffle=True, drop_last=n % self.batch_size == 1 and n > 1)
        else:
            sampler = IndexBatches(n, self.eval_batch_size, shuffle=False)
        # batch_size=None: each item of the sampler is a whole batch, cut with one tensor index.
        return DataLoader(ds, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (a fresh order every epoch); with ``repair``, a fresh
        pairing of the training digits every epoch."""
        if not self.repair:
            return self._loader("train", train=True)
        n = len(self.digits)
        sampler = RepairBatches(n, self.batch_size, shuffle=True, drop_last=n % self.batch_size == 1 and n > 1)
        return DataLoader(self.digits, sampler=sampler, batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``augment=affine`` and/or ``elastic`` > 0: warp the digits of training
        batches (never in evaluation)."""
        if (self.augmenter is None and self.elastic is None) or self.trainer is None or not self.trainer.training:
            return batch
        x, target, classes = batch
        fill = -self.mean / self.std  # the normalised background
        for warp in (self.augmenter, self.elastic):
            if warp is not None:
                x = warp(x, fill=fill)
        return x, target, classes

    def val_dataloader(self) -> dict[str, DataLoader]:
        """``{"val": ...}`` if a validation split exists, plus ``{"curve": test}`` with ``test_curve``."""
        loaders = {"val": self._loader("val")} if "val" in self.sets else {}
        if self.test_curve:
            loaders["curve"] = self._loader("test")
        return loaders

    def test_dataloader(self) -> dict[str, DataLoader]:
        """Final evaluation, in eval mode: ``{"train", "val" (if any), "test"}``."""
        return {name: self._loader(name) for name in ("train", "val", "test") if name in self.sets}

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move a ``(x, target, classes)`` batch to ``device``: three ``Tensor.to`` calls
        (no-ops on the CPU) instead of Lightning's generic walk, which cost ~0.3 ms a step."""
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def state_dict(self) -> dict:
        """The normalisation and the resolved source, saved in checkpoints."""
        return {"mean": self.mean, "std": self.std, "resolved_source": self.resolved_source}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        self.resolved_source = state_dict["resolved_source"]


if __name__ == "__main__":  # pragma: no cover - a quick look at the data
    logging.basicConfig(level=logging.INFO)
    dm = PairDataModule()
    dm.setup()
    x, t, c = next(iter(dm.train_dataloader()))
    print(f"source={dm.source_label} x={tuple(x.shape)} {x.dtype} target={t[:10].tolist()} classes={c[:10].tolist()}")
    print(f"share of target 1: {dm.sets['train'].tensors[1].float().mean():.3f}")
