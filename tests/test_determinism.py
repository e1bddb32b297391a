"""What is reproducible: the normalisation statistics do not depend on the thread count,
and ``metrics.json`` records the threads (same seed + threads + machine -> same metrics)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import IDX_DIR
from test_data import make_dm


def test_normalisation_statistics_are_float64_and_thread_independent():
    before = torch.get_num_threads()
    try:
        stats = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            dm = make_dm(("idx", str(IDX_DIR)), n_pairs=1000, val_fraction=0.2, seed=0)
            stats.append((dm.mean, dm.std))
    finally:
        torch.set_num_threads(before)
    assert stats[0] == stats[1]
    # the exact pixels (2x2 averages of 0-255 integers are multiples of 0.25), summed in float64
    raw = ((dm.sets["train"].tensors[0].double() * dm.std + dm.mean) * 4).round() / 4
    pixels = raw.numpy().astype(np.float64)
    assert abs(dm.mean - pixels.mean()) < 1e-9 * pixels.mean()
    assert abs(dm.std - pixels.std(ddof=1)) < 1e-9 * pixels.std(ddof=1)
