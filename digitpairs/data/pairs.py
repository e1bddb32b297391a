"""The pair protocol (``docs/design.md`` §1): pairs drawn from a pool, and the batches of a
training epoch.

- :func:`make_pairs` draws ``n`` pairs from a pool with a seeded generator: one
  permutation of the pool, its first ``2n`` indices read as ``n`` rows of two.
- :class:`IndexBatches` cuts in-memory tensors into batches with one index tensor each.
- :class:`RepairBatches` and :class:`DigitPairs` pair the training digits afresh every
  epoch (``data.repair=true``).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from digitpairs.data.sources import Pool
from digitpairs.utils.errors import ConfigError


def make_pairs(pool: Pool, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` pairs from ``pool`` with no image used twice (``docs/design.md`` §1, steps 2-3).

    One permutation of the pool is drawn from ``generator``; its first ``2n`` indices,
    read as ``n`` rows of two, are (first digit, second digit).

    Returns:
        ``x``: ``float32 (n, 2, 14, 14)``, raw pixels 0-255;
        ``target``: ``int64 (n,)``, 1 if the first digit <= the second, else 0;
        ``classes``: ``int64 (n, 2)``, the two digits.

    Raises:
        ConfigError: if ``2n`` exceeds the pool, or ``n < 1``.
    """
    if not 1 <= 2 * n <= len(pool):
        raise ConfigError("data.n_pairs", n, f"1..{len(pool) // 2} for pool {pool.name} of {len(pool)} images")
    idx = torch.randperm(len(pool), generator=generator)[: 2 * n].view(n, 2)
    classes = pool.labels[idx]
    return pool.images[idx], (classes[:, 0] <= classes[:, 1]).long(), classes


class IndexBatches(Sampler):
    """Batches of indices as ``int64`` tensors, for ``DataLoader(..., batch_size=None)``.

    Indexing in-memory tensors with one index tensor per batch is ~10x cheaper than
    ``BatchSampler``'s lists of Python ints (collated sample by sample).

    Args:
        n: dataset size; batch_size: indices per batch; shuffle: a fresh permutation each
        epoch, drawn from torch's global generator (seeded by ``seed_everything``);
        drop_last: drop a last, shorter batch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool = False) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last

    def __iter__(self):
        order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class RepairBatches(IndexBatches):
    """Each epoch a fresh random pairing of ``2n`` digits, in batches (``data.repair=true``).

    Yields ``int64 (b, 2)`` index rows into the digits: one permutation of all ``2n``
    digits per epoch (torch's global generator), read as ``n`` rows of two, cut into
    batches of ``batch_size`` pairs. Args as :class:`IndexBatches`, ``n`` counting pairs.
    """

    def __iter__(self):
        order = torch.randperm(2 * self.n).view(self.n, 2)
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return iter(batches)


class DigitPairs(Dataset):
    """Pairs made on the fly from single digits: ``ds[idx]`` for ``idx int64 (b, 2)``
    returns ``(x float32 (b, 2, 14, 14), target int64 (b,), classes int64 (b, 2))`` with
    ``target = (classes[:, 0] <= classes[:, 1])``.

    Args:
        digits: ``float32 (M, 14, 14)``; classes: ``int64 (M,)``, ``M`` even.
    """

    def __init__(self, digits: torch.Tensor, classes: torch.Tensor) -> None:
        self.digits, self.classes = digits, classes

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        classes = self.classes[idx]
        return self.digits[idx], (classes[:, 0] <= classes[:, 1]).long(), classes

    def __len__(self) -> int:
        return len(self.classes) // 2
