"""Compare two digit images with a trained checkpoint (``predict.py``).

An image file becomes an MNIST digit the way MNIST itself was made (LeCun et al., "The
MNIST database", http://yann.lecun.com/exdb/mnist/): grey scale, a white digit on black
(a light background is inverted, and this is noted), the digit's bounding box scaled to
fit a 20x20 box with its aspect ratio kept (anti-aliased), then placed in the 28x28
frame with its centre of mass at the centre. Then, like every digit of this project, it
is average-pooled 2x2 to 14x14 (docs/design.md §1) and normalised with the checkpoint's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from digitpairs.data import downsample
from digitpairs.training import checkpoint as ckpt_io
from digitpairs.utils.errors import ConfigError

INK = 0.1  # share of the brightest pixel that counts as ink, for the bounding box
IMAGE = "image file (PNG or JPEG, any size, grey or colour) of one digit"


@dataclass
class Digit:
    """A prepared digit: ``image`` ``float32 (14, 14)`` in 0-255 (white on black);
    ``inverted`` tells whether the file had a light background."""

    image: torch.Tensor
    inverted: bool


def mnist_frame(grey: np.ndarray, key: str = "image", value: str = "?") -> tuple[torch.Tensor, bool]:
    """A grey image (any size, 0-255) -> ``float32 (28, 28)`` MNIST-style digit, and
    whether it was inverted (its border is lighter than mid-grey).

    Raises:
        ConfigError: an empty image or one of a single colour (no digit to find).
    """
    a = grey.astype(np.float32)
    if a.size == 0 or a.max() - a.min() < 1:
        raise ConfigError(key, value, f"an {IMAGE}; this one is empty or all one colour")
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    inverted = bool(np.median(border) > 127)
    if inverted:
        a, border = 255 - a, 255 - border
    a = np.clip(a - np.median(border), 0, None)  # the background becomes 0
    if a.max() <= 0:
        raise ConfigError(key, value, f"an {IMAGE}; no digit stands out from its background")
    a = a * (255.0 / a.max())
    rows, cols = np.nonzero(a > INK * 255)
    crop = torch.from_numpy(a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].copy())
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    box = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp(
        0, 255
    )
    frame = torch.zeros(28, 28)
    total = box.sum()
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    cy, cx = (box.sum(1) * ys).sum() / total, (box.sum(0) * xs).sum() / total
    # MNIST's centre of mass lies at pixel index (14.0, 14.0) on average (2000 test digits: 13.99, 14.00)
    top = int(min(max(round(14 - cy.item()), 0), 28 - size[0]))
    left = int(min(max(round(14 - cx.item()), 0), 28 - size[1]))
    frame[top : top + size[0], left : left + size[1]] = box
    return frame, inverted


def load_digit(path: str | Path, key: str) -> Digit:
    """Read an image file and prepare it as a 14x14 digit (see the module doc).

    Raises:
        ConfigError: a missing file, a file that is not an image, or an empty or
            one-colour image; ``key`` names the argument.
    """
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), f"an existing {IMAGE}")
    try:
        with Image.open(file) as img:
            grey = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(key, str(path), f"an {IMAGE}; this file is not one ({type(err).__name__})") from None
    frame, inverted = mnist_frame(grey, key, str(path))
    return Digit(downsample(frame[None])[0], inverted)


def mnist_test_digit(index: int, source: str, root: str) -> Digit:
    """Digit ``index`` of the test pool of ``source`` (already 14x14, white on black).

    Raises:
        ConfigError: an index outside the pool, or a bad source or root.
    """
    from digitpairs.data import load_pools

    _, test_pool, resolved = load_pools(source, root)
    if not 0 <= index < len(test_pool):
        raise ConfigError("--mnist-test", index, f"an index in 0..{len(test_pool) - 1} of the {resolved} test pool")
    return Digit(test_pool.images[index], False)


@torch.no_grad()
def compare(model, first: torch.Tensor, second: torch.Tensor, mean: float, std: float) -> dict[str, Any]:
    """The model's answer for one pair of ``float32 (14, 14)`` digits in 0-255.

    Returns the JSON object of ``predict.py --json``: ``first``, ``second`` (predicted
    digits, ``None`` for a model without trained digit heads), ``first_probs``,
    ``second_probs`` (10 floats or ``None``), ``le`` (1 if the model answers
    first <= second, else 0) and ``p_le`` (the model's probability that first <= second).
    Both follow the model's own decision rule (``model.decision``: comparator, argmax or
    prob, :mod:`digitpairs.models.rules`; the comparator for models without digit heads).
    """
    from digitpairs.models.rules import p_leq

    x = ((torch.stack([first, second])[None] - mean) / std).contiguous()
    logits, digit_logits = model.eval()(x)
    rule = getattr(model.hparams, "decision", "comparator")
    p_le = p_leq(rule, logits, digit_logits)[0].item()
    out: dict[str, Any] = {"first": None, "second": None, "first_probs": None, "second_probs": None}
    if model.has_aux and digit_logits is not None:
        probs = digit_logits.float().softmax(dim=2)[0]
        for i, name in enumerate(("first", "second")):
            out[name] = int(probs[i].argmax())
            out[f"{name}_probs"] = [round(p, 6) for p in probs[i].tolist()]
    out["le"] = int(model.predict_target(logits, digit_logits)[0])
    out["p_le"] = p_le
    return out


def human_line(r: dict[str, Any]) -> str:
    """``first: 3 (p=0.99)  second: 7 (p=0.97)  3 <= 7: yes (p=0.998)``; the p of the
    comparison is that of the answer given."""
    p = r["p_le"] if r["le"] else 1 - r["p_le"]
    answer = f"{'yes' if r['le'] else 'no'} (p={p:.3f})"
    if r["first"] is None:
        return f"first <= second: {answer}"
    p1, p2 = r["first_probs"][r["first"]], r["second_probs"][r["second"]]
    return (
        f"first: {r['first']} (p={p1:.2f})  second: {r['second']} (p={p2:.2f})  {r['first']} <= {r['second']}: {answer}"
    )


def load_model(path: str):
    """``(model, mean, std)`` of a checkpoint; bad input names the ``checkpoint`` argument."""
    ckpt = ckpt_io.load(path, key="checkpoint")
    mean, std = ckpt_io.normalisation(ckpt, key="checkpoint", value=path)
    return ckpt_io.build_model(ckpt), mean, std
