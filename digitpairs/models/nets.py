"""The networks of the study (Table 1), as plain ``nn.Module``s.

Every network returns **logits**; the losses apply ``log_softmax`` themselves (see
``docs/design.md`` §2 for the two errors of the printed table that this corrects).

Parameter counts (checked by the tests)::

    ConvNet(2, 2)                          91,406   model=convnet
    TwoBranchNet(weight_sharing=True)     103,128   model=ws, model=ws_aux
    TwoBranchNet(weight_sharing=False)    195,054   model=aux
    TwoBranchNet(trunk="wide")            151,660   model=ws_aux model.trunk=wide
    TwoBranchNet(trunk="compact")         105,516   model=ws_aux model.trunk=compact
    CompactConvNet(1, 10)                  94,314   model=digit_classifier (per member)

Shapes: a batch of pairs is ``float32 (B, 2, 14, 14)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout(p)``, with CPU masks drawn by NumPy.

    In train mode each element is zeroed with probability ``p`` and the rest scaled by
    ``1 / (1 - p)``; in eval mode it is the identity. On the CPU the keep-mask comes
    from NumPy's PCG64 generator: torch's CPU ``bernoulli_`` costs ~15 ns per element
    (a scalar Mersenne twister), 7% of a ws_aux training step here, NumPy's ~4 ns. On
    other devices it is ``F.dropout``. The generator is seeded from torch's global RNG
    when the layer is built, so a run stays reproducible from its seed.

    Args:
        p: drop probability, in [0, 1).

    Input and output: any float tensor shape.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep = torch.from_numpy(self.rng.random(x.shape, dtype=np.float32) >= self.p)
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _check_trunk(name: str, c_in: int, k: int, p_drop: float) -> None:
    """Raise ``ValueError`` for a trunk's bad ``c_in``/``k`` (< 1) or ``p_drop`` (outside [0, 1))."""
    if c_in < 1 or k < 1:
        raise ValueError(f"{name}: c_in={c_in} and k={k} must both be >= 1")
    if not 0.0 <= p_drop < 1.0:
        raise ValueError(f"{name}: p_drop={p_drop} must lie in [0, 1)")


def _mlp_block(n_in: int, n_out: int, p_drop: float) -> list[nn.Module]:
    """Linear -> ReLU -> BatchNorm1d -> Dropout, the hidden block of Table 1."""
    return [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out), Dropout(p_drop)]


class ConvNet(nn.Sequential):
    """The ConvNet trunk of Table 1 of the study: the backbone of every model.

    Layers (for ``c_in`` input channels and ``k`` outputs)::

        Conv2d(c_in, 32, 3) -> MaxPool2d(2) -> ReLU          32 x 6 x 6
        Conv2d(32, 64, 3)   -> MaxPool2d(2) -> ReLU          64 x 2 x 2
        Flatten -> Linear(256, 200) -> ReLU -> BatchNorm1d -> Dropout(p)
                   Linear(200, 100) -> ReLU -> BatchNorm1d -> Dropout(p)
                   Linear(100, k)

    Args:
        c_in: input channels (2 for the pair as channels, 1 for one digit).
        k: number of output logits (2 for the comparison, 10 for a digit).
        p_drop: dropout probability of the two hidden blocks (0.2 in the study).

    Input ``float32 (B, c_in, 14, 14)``; output ``float32 (B, k)`` logits. ``B`` must be
    at least 2 in train mode (BatchNorm1d).

    Raises:
        ValueError: if ``c_in`` or ``k`` is below 1, or ``p_drop`` is outside [0, 1).
    """

    def __init__(self, c_in: int, k: int, p_drop: float = 0.2) -> None:
        _check_trunk(type(self).__name__, c_in, k, p_drop)
        super().__init__(
            nn.Conv2d(c_in, 32, kernel_size=3),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            *_mlp_block(256, 200, p_drop),
            *_mlp_block(200, 100, p_drop),
            nn.Linear(100, k),
        )


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class WideConvNet(nn.Sequential):
    """A wider all-convolutional trunk (``model.trunk=wide``; not in the study).

    Layers (3x3 convolutions with padding 1, each followed by BatchNorm2d and ReLU)::

        conv 32 -> conv 32 -> MaxPool2d(2)          32 x 7 x 7
        conv 64 -> conv 64 -> MaxPool2d(2)          64 x 3 x 3
        conv 128 -> global average pool            128
        Dropout(p) -> Linear(128, k)

    The convolutions have no bias (BatchNorm follows). It was the first trunk tried
    beyond the study (VGG-style blocks, Simonyan & Zisserman 2015, with BatchNorm, Ioffe & Szegedy 2015).

    Args:
        c_in: input channels; k: output logits; p_drop: dropout before the last layer.

    Input ``float32 (B, c_in, 14, 14)``; output ``float32 (B, k)`` logits.

    Raises:
        ValueError: if ``c_in`` or ``k`` is below 1, or ``p_drop`` is outside [0, 1).
    """

    def __init__(self, c_in: int, k: int, p_drop: float = 0.3) -> None:
        _check_trunk(type(self).__name__, c_in, k, p_drop)
        super().__init__(
            *_conv_bn_relu(c_in, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            Dropout(p_drop),
            nn.Linear(128, k),
        )


class CompactConvNet(nn.Sequential):
    """A small BatchNorm trunk (``model.trunk=compact``; not in the study).

    Layers (3x3 convolutions with padding 1; max-pooling before BatchNorm and ReLU)::

        Conv2d(c_in, 32, 3) -> MaxPool2d(2) -> BatchNorm2d -> ReLU     32 x 7 x 7
        Conv2d(32, 64, 3)   -> MaxPool2d(2) -> BatchNorm2d -> ReLU     64 x 3 x 3
        Flatten -> Linear(576, 128) -> BatchNorm1d -> ReLU -> Dropout(p) -> Linear(128, k)

    Max-pooling commutes with ReLU, so pooling first leaves the network's form as
    conv -> BN -> ReLU -> pool but normalises the pooled map: 4x fewer elements for the
    BatchNorm and ReLU, which dominate a step on the CPU here (the 14x14 BatchNorm of
    :class:`WideConvNet` took more time than its convolutions). 94,314 parameters for
    ``c_in=1, k=10``; a step costs about a third of :class:`WideConvNet`'s.

    Args:
        c_in: input channels; k: output logits; p_drop: dropout before the last layer.

    Input ``float32 (B, c_in, 14, 14)``; output ``float32 (B, k)`` logits. ``B`` >= 2 in train mode.

    Raises:
        ValueError: if ``c_in`` or ``k`` is below 1, or ``p_drop`` is outside [0, 1).
    """

    def __init__(self, c_in: int, k: int, p_drop: float = 0.3) -> None:
        _check_trunk(type(self).__name__, c_in, k, p_drop)
        super().__init__(
            nn.Conv2d(c_in, 32, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(576, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            Dropout(p_drop),
            nn.Linear(128, k),
        )


def mean_probability(member_logits: torch.Tensor) -> torch.Tensor:
    """An ensemble's output: the log of its members' mean softmax probabilities.

    Args:
        member_logits: ``float (K, ..., C)``, the logits of ``K`` members.

    Returns:
        ``float (..., C)`` log-probabilities (valid logits: their softmax is the members'
        mean probability, their argmax the most probable class).
    """
    k = member_logits.shape[0]
    return torch.logsumexp(member_logits.float().log_softmax(dim=-1), dim=0) - math.log(k)


TRUNKS = ("table1", "wide", "compact")


def make_trunk(trunk: str, c_in: int, k: int, p_drop: float = 0.2) -> nn.Module:
    """The digit trunk named ``trunk``: ``table1`` (:class:`ConvNet` with dropout
    ``p_drop``), ``wide`` (:class:`WideConvNet`) or ``compact`` (:class:`CompactConvNet`),
    the last two with their own dropout 0.3.

    Raises:
        ValueError: an unknown name.
    """
    if trunk == "table1":
        return ConvNet(c_in, k, p_drop)
    if trunk == "wide":
        return WideConvNet(c_in, k, 0.3)
    if trunk == "compact":
        return CompactConvNet(c_in, k, 0.3)
    raise ValueError(f"trunk={trunk!r}: expected one of {', '.join(TRUNKS)}")


class Comparator(nn.Sequential):
    """The comparator MLP of Table 1: two digits' 10 probabilities -> 2 logits.

    ``Linear(20, 150) -> ReLU -> BN -> Dropout -> Linear(150, 50) -> ReLU -> BN ->
    Dropout -> Linear(50, 2)``.

    Input ``float32 (B, 20)`` (the two branches' softmax outputs, concatenated);
    output ``float32 (B, 2)`` logits, class 1 meaning "first digit <= second".
    """

    def __init__(self, p_drop: float = 0.2) -> None:
        super().__init__(*_mlp_block(20, 150, p_drop), *_mlp_block(150, 50, p_drop), nn.Linear(50, 2))


class TwoBranchNet(nn.Module):
    """Map each digit of a pair to 10 digit logits, then compare them with an MLP.

    With ``weight_sharing=True`` one :class:`ConvNet` (``c_in=1, k=10``) processes both
    digits (models ``ws`` and ``ws_aux``); with ``False`` each digit has its own
    ConvNet (model ``aux``, the fourth cell of the study's 2x2 design). Each branch is
    called on its own batch of ``B`` digits, as in the study, so that BatchNorm sees
    per-branch statistics.

    Args:
        weight_sharing: one trunk for both digits (True) or one trunk per digit.
        p_drop: dropout probability of the comparator and the table1 trunk (0.2 in the study).
        trunk: the digit trunk, ``table1`` (the study's ConvNet) or ``wide``
            (:class:`WideConvNet`); see :func:`make_trunk`.

    ``forward(x)`` takes ``float32 (B, 2, 14, 14)`` and returns ``(logits, digit_logits)``:
    ``float32 (B, 2)`` comparison logits and ``float32 (B, 2, 10)`` digit logits of the
    first and second digit. The comparator's input is ``softmax(digit_logits)``.
    """

    def __init__(self, weight_sharing: bool = True, p_drop: float = 0.2, trunk: str = "table1") -> None:
        super().__init__()
        self.weight_sharing = weight_sharing
        self.branch1 = make_trunk(trunk, 1, 10, p_drop)
        self.branch2 = self.branch1 if weight_sharing else make_trunk(trunk, 1, 10, p_drop)
        self.comparator = Comparator(p_drop)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = self.branch1(x[:, 0:1])
        d2 = self.branch2(x[:, 1:2])
        probs = torch.cat([d1.softmax(dim=1), d2.softmax(dim=1)], dim=1)
        return self.comparator(probs), torch.stack([d1, d2], dim=1)
