"""Random affine augmentation of single digits (``data.augment=affine``; not in the study).

Each digit of each pair gets its own draw of a rotation, a scale and a shift: kornia's
``RandomAffine`` (``kornia.augmentation``, per-sample parameters, bilinear warp of the
whole batch in one call). It costs 2.2-4.1 ms per batch of 100 pairs on one CPU
thread here, 5-9 % of a step of the best model (``benchmarks/speed/augment_cost.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from digitpairs.utils.errors import require_number

AUGMENTS = ("none", "affine")


def warp_digits(
    warp: nn.Module, x: torch.Tensor, fill: float | torch.Tensor, params: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Apply a kornia augmentation ``warp`` to every digit of ``x float (B, C, H, W)`` as a
    ``(B * C, 1, H, W)`` batch (one draw per digit, or one for all if ``warp`` was built
    with ``same_on_batch``), with ``fill`` as the background brought in from outside the
    image (kornia pads with 0). ``params``: the maps' parameters, drawn already (kornia's
    ``params=``); None draws them from torch's global generator. Returns ``(B, C, H, W)``,
    the dtype of ``x``."""
    b, c, h, w = x.shape
    return warp((x - fill).reshape(b * c, 1, h, w), params=params).view(b, c, h, w) + fill


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

    def draw(
        self,
        x: torch.Tensor,
        fill: float | torch.Tensor = 0.0,
        same: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A fresh random affine map of every digit of ``x (B, C, H, W)``, in any mode.

        ``same=False``: each digit its own draw. ``same=True``: one draw, the same map for
        every digit of ``x`` (a test-time view); it does not depend on ``B`` or ``C``, so
        under a fixed seed a digit gets the same view whatever batch or slot it is in.
        ``generator``: a ``torch.Generator`` the maps are drawn from, in place of torch's
        global one (on the CPU, or on ``x``'s device: the maps are then drawn there); a CPU
        generator in the state the global one would be in draws the same maps
        (:meth:`parameters_from`)."""
        b, c, h, w = x.shape
        warp = self._warp(h, w, same)
        if generator is None:
            return warp_digits(warp, x, fill)
        return warp_digits(warp, x, fill, self.parameters_from(generator, b * c, h, w, same))

    def parameters_from(self, generator: torch.Generator, n: int, h: int, w: int, same: bool) -> dict:
        """The parameters of ``n`` maps of ``h`` x ``w`` digits (kornia's ``RandomAffine``
        parameters: ``angle (n,)`` degrees, ``scale (n, 2)``, ``translations (n, 2)`` pixels,
        ``center (n, 2)``, ``shear_x``/``shear_y (n,)`` zeros; all float32 on the generator's device) drawn
        from ``generator`` as kornia draws them from the global generator: angle, scale,
        then the two shifts, each ``low + U[0, 1) * (high - low)`` in float32, one draw for
        all ``n`` maps when ``same``."""

        device = generator.device
        f32 = {"dtype": torch.float32, "device": device}

        def uniform(low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
            low, high = torch.as_tensor(low, **f32), torch.as_tensor(high, **f32)
            draw = low + torch.rand(1 if same else n, generator=generator, **f32) * (high - low)
            return draw.repeat(n) if same else draw

        shift = torch.tensor((self.shift / w, self.shift / h), **f32)  # fractions, as kornia takes them
        angle = uniform(-self.rotate, self.rotate)
        scale = uniform(1.0 - self.scale, 1.0 + self.scale).unsqueeze(1).repeat(1, 2)
        translations = torch.stack([uniform(-shift[0], shift[0]) * w, uniform(-shift[1], shift[1]) * h], dim=-1)
        center = (torch.tensor([w, h], **f32) / 2.0 - 0.5).view(1, 2).expand(n, -1)
        zeros = torch.zeros(n, **f32)
        return {
            "translations": translations,
            "center": center,
            "scale": scale,
            "angle": angle,
            "shear_x": zeros,
            "shear_y": zeros.clone(),
        }

    def extra_repr(self) -> str:
        return f"shift={self.shift}, rotate={self.rotate}, scale={self.scale}"


class RandomDigitElastic(nn.Module):
    """A random elastic distortion per digit, in train mode only (``data.elastic``; not in the study).

    Simard, Steinkraus & Platt, "Best practices for convolutional neural networks applied
    to visual document analysis" (ICDAR 2003, §2): a displacement field drawn uniform in
    ``[-1, 1]`` at every pixel, smoothed by a Gaussian of ``sigma`` pixels and scaled by
    ``alpha`` pixels, moves every pixel of the digit (kornia's
    ``RandomElasticTransform``, per-sample fields, bilinear). Their MNIST setting,
    ``sigma=4``, ``alpha=34`` at 28x28, is ``sigma=2``, ``alpha=8.5`` at 14x14: the same
    displacements relative to the digit, about 0.7 px (std) here.

    Args:
        alpha: the field's scale in pixels, in [0, 100] (0: the identity).
        sigma: the Gaussian's standard deviation in pixels, > 0; the kernel spans
            ``2 * ceil(3 * sigma) + 1`` pixels.
        prefix: the config keys' prefix, for error messages.

    ``forward(x, fill)`` takes ``float (B, C, H, W)`` (each of the ``B * C`` digits its
    own field) and returns the same shape and dtype; pixels that come from outside the
    image take the value ``fill``. Draws use torch's global generator.

    Raises:
        ConfigError: ``alpha`` outside [0, 100], or ``sigma`` <= 0 or > 14.
    """

    def __init__(self, alpha: float = 8.5, sigma: float = 2.0, prefix: str = "data.") -> None:
        super().__init__()
        require_number(f"{prefix}elastic", alpha, 0, high=100, high_strict=False)  # pixels
        require_number(f"{prefix}elastic_sigma", sigma, 0, strict=True, high=14, high_strict=False)
        self.alpha, self.sigma = float(alpha), float(sigma)
        self._warps: dict[tuple[int, int], nn.Module] = {}

    def _warp(self, h: int, w: int) -> nn.Module:
        if (h, w) not in self._warps:
            from kornia.augmentation import RandomElasticTransform

            k = 2 * math.ceil(3 * self.sigma) + 1
            # kornia scales the field in normalised coordinates: 2 / size per pixel
            self._warps[h, w] = RandomElasticTransform(
                kernel_size=(k, k), sigma=(self.sigma, self.sigma),
                alpha=(self.alpha * 2 / w, self.alpha * 2 / h), padding_mode="zeros", p=1.0,
            )
        return self._warps[h, w]

    def forward(self, x: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
        if not self.training or self.alpha == 0:
            return x
        return warp_digits(self._warp(*x.shape[-2:]), x, fill)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, sigma={self.sigma}"
