"""Data: digit pools from MNIST's files, the pair protocol, the augmentation and the
``PairDataModule`` (``docs/design.md`` §1).

``sources`` (pools) -> ``pairs`` (the protocol) -> ``datamodule`` (batches for Lightning);
``augment`` warps single digits.
"""

from digitpairs.data.datamodule import PairDataModule
from digitpairs.data.pairs import make_pairs
from digitpairs.data.sources import Pool, downsample, load_pools

__all__ = ["PairDataModule", "Pool", "downsample", "load_pools", "make_pairs"]
