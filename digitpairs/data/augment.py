"""Random affine augmentation of single digits (``data.augment=affine``; not in the study).

Each digit of each pair gets its own draw of a rotation, a scale and a shift: kornia's
``RandomAffine`` (``kornia.augmentation``, per-sample parameters, bilinear warp of the
whole batch in one call). It costs 2.2-4.1 ms per batch of 100 pairs on one CPU
thread here, 5-9 % of a step of the best model (``benchmarks/augment_cost.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from digitpairs.utils.errors import require_number

AUGMENTS = ("none", "affine")


class RandomDigitAffine(nn.Module):
    """A random affine map per digit, in train mode only; the identity in eval mode.

    For each digit, independently: rotation ``U(-rotate, rotate)`` degrees, scale
    ``U(1 - scale, 1 + scale)`` (the same along both axes), shift ``U(-shift, shift)``
    pixels along each axis, all about the image centre (kornia's ``RandomAffine``).
    Pixels that come from outside the image take the value ``fill`` (the background
    after normalisation). Draws use torch's global generator, so ``seed_everything``
    makes them reproducible.

    Args:
        shift: largest shift in pixels, >= 0.
        rotate: largest rotation in degrees, >= 0.
        scale: largest relative change of size, in [0, 1).
        prefix: the config keys of the three strengths, for error messages (``data.``:
            ``data.shift``, ...; the test-time augmentation's are ``model.tta_``).

    ``forward(x, fill)`` takes ``float (B, C, H, W)`` (C digits per sample, e.g. the 2 of
    a pair; each of the ``B * C`` digits gets its own draw) and returns the same shape
    and dtype; classes and targets are not touched. ``fill`` is a number or a tensor
    that broadcasts to ``x`` (e.g. ``(B, C, 1, 1)``, one background value per digit).
    :meth:`draw` warps in any mode, and with ``same=True`` one map for all digits
    (test-time augmentation).

    Raises:
        ConfigError: a negative strength, or ``scale`` >= 1.
    """

    def __init__(self, shift: float = 1.5, rotate: float = 12.0, scale: float = 0.1, prefix: str = "data.") -> None:
        super().__init__()
        require_number(f"{prefix}shift", shift, 0, high=14, high_strict=False)  # pixels: at most the digit's size
        require_number(f"{prefix}rotate", rotate, 0, high=180, high_strict=False)  # degrees
        require_number(f"{prefix}scale", scale, 0, high=1)
        self.shift, self.rotate, self.scale = float(shift), float(rotate), float(scale)
        # per image size (kornia takes shifts as fractions) and per mode (one draw per digit, or one for all)
        self._warps: dict[tuple[int, int, bool], nn.Module] = {}

    def _warp(self, h: int, w: int, same: bool) -> nn.Module:
        if (h, w, same) not in self._warps:
            from kornia.augmentation import RandomAffine

            self._warps[h, w, same] = RandomAffine(
                degrees=self.rotate, translate=(self.shift / w, self.shift / h),
                scale=(1.0 - self.scale, 1.0 + self.scale), padding_mode="zeros", p=1.0, same_on_batch=same,
            )
        return self._warps[h, w, same]

    def forward(self, x: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
        return self.draw(x, fill) if self.training else x

    def draw(self, x: torch.Tensor, fill: float | torch.Tensor = 0.0, same: bool = False) -> torch.Tensor:
        """A fresh random affine map of every digit of ``x (B, C, H, W)``, in any mode.

        ``same=False``: each digit its own draw. ``same=True``: one draw, the same map for
        every digit of ``x`` (a test-time view); it does not depend on ``B`` or ``C``, so
        under a fixed seed a digit gets the same view whatever batch or slot it is in."""
        b, c, h, w = x.shape
        digits = (x - fill).reshape(b * c, 1, h, w)  # the background becomes 0, kornia's padding value
        return self._warp(h, w, same)(digits).view(b, c, h, w) + fill

    def extra_repr(self) -> str:
        return f"shift={self.shift}, rotate={self.rotate}, scale={self.scale}"
