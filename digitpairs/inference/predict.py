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
from digitpairs.training.checkpoints import store as ckpt_io
from digitpairs.utils.errors import ConfigError

INK = 0.1  # share of the brightest pixel that counts as ink, for the bounding box
MAX_PIXELS = 50_000_000  # larger images are refused before they are decoded (a 12000x12000 PNG needs 2.8 GB)
MAX_SIDE_DRAFT = 1024  # a JPEG is decoded at the smallest scale that keeps this many pixels a side
IMAGE = "image file (PNG or JPEG, any size, grey or colour) of one digit"
FORMATS = ("PNG", "JPEG")  # the only decoders Pillow may use on a file (docs/usage.md promises these)


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


def grey_pixels(img, key: str = "image", value: str = "?") -> np.ndarray:
    """An opened image as people have them -> ``float32 (H, W)`` grey levels in 0-255.

    In this order:

    1. the size is read from the header, and an image over ``MAX_PIXELS`` is refused
       before it is decoded (a JPEG is first decoded at a reduced scale, which costs
       little);
    2. the EXIF orientation is applied (a phone's photo, stored turned, is read upright;
       Pillow's ``ImageOps.exif_transpose``);
    3. transparency is composited away: the digit's opaque pixels are laid on a
       background that contrasts with them (white under dark ink, black under light
       ink), so a digit on a transparent background keeps its strokes;
    4. grey levels of any depth (16-bit, 32-bit integer or float) are scaled by the
       image's own range to 0-255; 8-bit images keep their levels.

    Raises:
        ConfigError: an image over ``MAX_PIXELS``.
    """
    from PIL import ImageOps

    if img.format == "JPEG":
        img.draft("L", (MAX_SIDE_DRAFT, MAX_SIDE_DRAFT))  # JPEG decodes at 1/2, 1/4 or 1/8 scale: cheap
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ConfigError(key, value, f"an {IMAGE} of at most {MAX_PIXELS // 10**6} megapixels; this one is {w}x{h}")
    img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        opaque = alpha[..., 0] > 0.5
        ink_is_dark = not opaque.any() or float(grey[opaque].mean()) < 128
        background = 255.0 if ink_is_dark else 0.0
        return grey * alpha[..., 0] + background * (1 - alpha[..., 0])
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        low, high = float(a.min()), float(a.max())
        return ((a - low) * (255.0 / (high - low)) if high > low else np.zeros_like(a)).astype(np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32)


def load_digit(path: str | Path, key: str) -> Digit:
    """Read an image file and prepare it as a 14x14 digit (see the module doc).

    Only the formats of ``FORMATS`` (PNG and JPEG, as documented) are decoded, whatever the
    file's name: Pillow is never asked to guess among its other decoders (EPS, for one,
    would start Ghostscript). Anything that goes wrong while Pillow reads the file (a
    truncated or damaged file, another format) is the one "not one" line.

    Raises:
        ConfigError: a missing file, a file that is not a PNG or JPEG image, or an empty
            or one-colour image; ``key`` names the argument.
    """
    from PIL import Image

    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), f"an existing {IMAGE}")
    try:
        with Image.open(file, formats=FORMATS) as img:
            grey = grey_pixels(img, key, str(path))  # decodes the file
    except ConfigError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours: refused at the header
        raise ConfigError(
            key, str(path), f"an {IMAGE} of at most {MAX_PIXELS // 10**6} megapixels; this one is far larger"
        ) from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a decoder is the same user error
        raise ConfigError(key, str(path), f"an {IMAGE}; this file is not one ({type(err).__name__})") from None
    frame, inverted = mnist_frame(grey, key, str(path))
    return Digit(downsample(frame[None])[0], inverted)


def prepare_image(img, key: str = "image", value: str = "?") -> Digit:
    """An opened PIL image -> the 14x14 digit the models read (:func:`grey_pixels`, then
    :func:`mnist_frame`, then the 2x2 average of the protocol).

    Raises:
        ConfigError: an image over the size limit, or one with no digit to find.
    """
    frame, inverted = mnist_frame(grey_pixels(img, key, value), key, value)
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
    """``(model, mean, std)`` of a checkpoint, every part checked
    (:func:`digitpairs.training.checkpoints.store.load`, then its normalisation and weights); bad
    input names the ``checkpoint`` argument."""
    ckpt = ckpt_io.load(path, key="checkpoint")
    mean, std = ckpt_io.normalisation(ckpt, key="checkpoint", value=path)
    return ckpt_io.build_model(ckpt, key="checkpoint", value=path), mean, std


def check_answer(result: dict[str, Any], key: str = "checkpoint", value: str = "?") -> dict[str, Any]:
    """``result`` of :func:`compare` if every number in it is finite (so that it is JSON).

    Raises:
        ConfigError: a NaN or infinite probability, naming the model that gave it.
    """
    import math

    numbers = [result["p_le"], *(result["first_probs"] or []), *(result["second_probs"] or [])]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
        raise ConfigError(key, value, f"a model whose answer is finite; it answers p={result['p_le']} for these images")
    return result
