"""The pair models: one thin ``LightningModule`` per model over :class:`~digitpairs.models.base.PairModule`.

=========== ====================== ===================================================
model=      class                  training loss
=========== ====================== ===================================================
convnet     ConvNetModule          gamma * CE(main)
ws          WSModule               gamma * CE(main)            (digit heads unsupervised)
ws_aux      WSAuxModule            gamma * CE(main) + alpha * (CE(digit1) + CE(digit2))
aux         WSAuxModule(weight_sharing=False)   the same loss, one trunk per digit
digit_       DigitClassifierModule  alpha * (CE(digit1) + CE(digit2)): the digit losses
classifier                          alone; no comparator, pairs decided by the probability rule
=========== ====================== ===================================================

All constructors take plain numbers, strings and booleans, so a checkpoint restores with
``WSAuxModule.load_from_checkpoint(path)`` and no extra arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from digitpairs.models.base import PairModule
from digitpairs.models.nets import TRUNKS, ConvNet, TwoBranchNet, make_trunk
from digitpairs.models.rules import RULES, rule_logits
from digitpairs.utils.errors import require_choice, require_number


class ConvNetModule(PairModule):
    """Model ``convnet``: one Table 1 ConvNet on the pair as 2 channels, 2 logits.

    91,406 parameters. Loss ``gamma * CE(main)``. Arguments: see :class:`PairModule`.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.build_net(lambda: ConvNet(c_in=2, k=2))

    def forward_net(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``(B, 2, 14, 14)`` -> ``(logits (B, 2), None)``."""
        return net(x.contiguous(memory_format=self.memory_format)), None


class WSModule(PairModule):
    """Model ``ws``: weight sharing. One ConvNet maps each digit to 10 logits; the
    comparator MLP compares their softmax outputs (Table 1).

    103,128 parameters with weight sharing, 195,054 without. Loss ``gamma * CE(main)``;
    the digit logits are returned but not trained on.

    Args:
        weight_sharing: one trunk for both digits (True) or one per digit.
        trunk: the digit trunk: ``table1`` (the study) or ``wide`` (:class:`~digitpairs.models.nets.WideConvNet`).
        **kwargs: see :class:`PairModule`.

    Raises:
        ConfigError: an unknown ``trunk`` (and see :class:`PairModule`).
    """

    def __init__(self, weight_sharing: bool = True, trunk: str = "table1", **kwargs) -> None:
        require_choice("model.trunk", trunk, TRUNKS)
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.build_net(lambda: TwoBranchNet(weight_sharing=weight_sharing, trunk=trunk))

    def forward_net(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10))``."""
        return net(x)


class WSAuxModule(WSModule):
    """Models ``ws_aux`` (weight sharing on) and ``aux`` (off): :class:`WSModule` plus an
    auxiliary digit-classification loss on each branch.

    Loss ``gamma * CE(main) + alpha * (CE(digit1) + CE(digit2))`` (the study: alpha 0.75,
    gamma 1); each term is logged as ``train/loss_main``, ``train/loss_digit1``,
    ``train/loss_digit2`` (already weighted).

    Evaluation logs the accuracy of all three decision rules (``*acc_comparator``,
    ``*acc_argmax``, ``*acc_prob``, see :mod:`digitpairs.models.rules`); ``decision`` chooses
    which one is the model's ``*acc`` and ``*errors``. Logged losses are the comparator's.

    Args:
        alpha: weight of each auxiliary loss, >= 0.
        decision: ``comparator`` (the study), ``argmax`` or ``prob``.
        weight_sharing, trunk, **kwargs: see :class:`WSModule` and :class:`PairModule`.

    Raises:
        ConfigError: ``alpha`` < 0, an unknown ``decision`` (and see :class:`PairModule`).
    """

    has_aux = True
    loss_terms = ("main", "digit1", "digit2")

    def __init__(
        self, alpha: float = 0.75, weight_sharing: bool = True, decision: str = "comparator", **kwargs
    ) -> None:
        require_number("loss.alpha", alpha, 0)
        require_choice("model.decision", decision, RULES)
        super().__init__(weight_sharing=weight_sharing, **kwargs)
        self.save_hyperparameters(logger=False)

    def losses(self, logits, digit_logits, target, classes) -> dict[str, torch.Tensor]:
        return {**super().losses(logits, digit_logits, target, classes), **self._digit_losses(digit_logits, classes)}


class DigitClassifierModule(PairModule):
    """Model ``digit_classifier`` (not in the study): one trunk trained as a digit classifier
    on both digits of every pair, the pairs decided from its two posteriors.

    The trunk (:func:`~digitpairs.models.nets.make_trunk`; ``compact`` by default) sees the ``2B``
    digits of a batch in one call. There is no learned comparator: the model's 2 comparison
    logits are the probability rule's, ``[log P(d1 > d2), log P(d1 <= d2)]``
    (:func:`~digitpairs.models.rules.rule_logits`), computed in evaluation from the mean posteriors
    of the ensemble's members and test-time views. So the ``comparator`` and ``prob`` rules
    agree; ``argmax`` compares the predicted digits.

    Loss ``alpha * (CE(digit1) + CE(digit2))`` (the auxiliary losses of ``ws_aux`` alone),
    logged as ``train/loss_digit1`` and ``train/loss_digit2``; ``gamma`` is not used.

    Args:
        alpha: weight of each digit loss, > 0.
        trunk: ``table1``, ``wide`` or ``compact`` (:mod:`digitpairs.models.nets`).
        decision: ``prob`` (the default; ``comparator`` is the same) or ``argmax``.
        **kwargs: see :class:`PairModule`.

    ``forward(x)``: ``float32 (B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10))``.
    Parameters: 94,314 per member with ``trunk=compact``.

    Raises:
        ConfigError: ``alpha`` <= 0, an unknown ``trunk`` or ``decision`` (and see :class:`PairModule`).
    """

    has_aux = True
    loss_terms = ("digit1", "digit2")

    def __init__(self, alpha: float = 0.75, trunk: str = "compact", decision: str = "prob", **kwargs) -> None:
        require_number("loss.alpha", alpha, 0, strict=True)
        require_choice("model.trunk", trunk, TRUNKS)
        require_choice("model.decision", decision, RULES)
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.build_net(lambda: make_trunk(trunk, 1, 10))

    def forward_net(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10))``: both digits in one call."""
        b = x.shape[0]
        digits = net(x.reshape(2 * b, 1, *x.shape[2:]).contiguous(memory_format=self.memory_format)).view(b, 2, -1)
        return rule_logits(digits), digits

    def forward(self, x: torch.Tensor, tta: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        logits, digits = super().forward(x, tta)
        if not self.training:  # the rule on the mean posteriors of the members and views
            logits = rule_logits(digits)
        return logits, digits

    def losses(self, logits, digit_logits, target, classes) -> dict[str, torch.Tensor]:
        return self._digit_losses(digit_logits, classes)
