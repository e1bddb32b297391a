"""Random affine augmentation of the training digits (``data.augment=affine``; not in the study).

Each digit of each pair gets its own draw of a rotation, a scale and a shift. The warp
is torch's ``F.affine_grid`` + ``F.grid_sample`` (bilinear), one call for the whole
batch; only the 2x3 matrices are built here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from digitpairs.errors import require_number

AUGMENTS = ("none", "affine")


class RandomDigitAffine(nn.Module):
    """A random affine map per digit, in train mode only; the identity in eval mode.

    For each digit, independently: rotation ``U(-rotate, rotate)`` degrees, scale
    ``U(1 - scale, 1 + scale)``, shift ``U(-shift, shift)`` pixels along each axis,
    all about the image centre. Pixels that come from outside the image take the value
    ``fill`` (the background after normalisation). Draws use torch's global generator,
    so ``seed_everything`` makes them reproducible.

    Args:
        shift: largest shift in pixels, >= 0.
        rotate: largest rotation in degrees, >= 0.
        scale: largest relative change of size, in [0, 1).

    ``forward(x, fill)`` takes ``float (B, C, H, W)`` (C digits per sample, e.g. the 2 of
    a pair) and returns the same shape and dtype; classes and targets are not touched.

    Raises:
        ConfigError: a negative strength, or ``scale`` >= 1.
    """

    def __init__(self, shift: float = 1.5, rotate: float = 12.0, scale: float = 0.1) -> None:
        super().__init__()
        require_number("data.shift", shift, 0)
        require_number("data.rotate", rotate, 0)
        require_number("data.scale", scale, 0, high=1)
        self.shift, self.rotate, self.scale = float(shift), float(rotate), float(scale)

    def forward(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        if not self.training:
            return x
        b, c, h, w = x.shape
        n = b * c
        u = torch.rand(n, 4, device=x.device) * 2 - 1  # U(-1, 1): angle, scale, dx, dy
        angle = u[:, 0] * math.radians(self.rotate)
        inv_scale = 1.0 / (1.0 + u[:, 1] * self.scale)
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of s pixels is 2s/size
        theta = torch.stack([
            torch.stack([cos, -sin, u[:, 2] * (2 * self.shift / w)], dim=1),
            torch.stack([sin, cos, u[:, 3] * (2 * self.shift / h)], dim=1),
        ], dim=1)
        digits = x.reshape(n, 1, h, w) - fill
        grid = F.affine_grid(theta.to(x.dtype), [n, 1, h, w], align_corners=False)
        out = F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out + fill).view(b, c, h, w)

    def extra_repr(self) -> str:
        return f"shift={self.shift}, rotate={self.rotate}, scale={self.scale}"
