"""Decision rules: from two digits' 10-way outputs to "first digit <= second digit".

A model with digit heads can decide a pair three ways (``model.decision``):

=========== ==================================================================
comparator  the learned comparator MLP on the two softmax outputs (the study)
argmax      the predicted digits compared: ``argmax p1 <= argmax p2``
prob        ``P(d1 <= d2) = sum_{i <= j} p1(i) p2(j) > 0.5``, the two digits taken
            as independent with the heads' posteriors ``p1``, ``p2``
=========== ==================================================================
"""

from __future__ import annotations

import torch

RULES = ("comparator", "argmax", "prob")


def prob_leq(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """``P(d1 <= d2) = sum_i p1(i) * sum_{j >= i} p2(j)`` for independent digits.

    Args:
        p1, p2: ``float (B, 10)`` probabilities of the first and second digit (rows sum to 1).

    Returns:
        ``float (B,)`` in [0, 1]. One-hot inputs give exactly ``1.0`` if the first digit is
        <= the second, else ``0.0``; uniform inputs give 55/100 = ``0.55``.
    """
    tail2 = p2.flip(-1).cumsum(-1).flip(-1)  # tail2[:, i] = P(d2 >= i)
    return (p1 * tail2).sum(-1)


def rule_logits(digit_logits: torch.Tensor) -> torch.Tensor:
    """The probability rule as 2 comparison logits: ``[log P(d1 > d2), log P(d1 <= d2)]``.

    Args:
        digit_logits: ``float (..., 2, 10)`` logits of the first and second digit.

    Returns:
        ``float (..., 2)`` log-probabilities (their softmax is ``[1 - P, P]`` with ``P`` of
        :func:`prob_leq`; their argmax is the ``prob`` rule's answer). ``P`` is clamped to
        ``[1e-12, 1 - 1e-12]`` so that the logarithms stay finite.
    """
    p = digit_logits.float().softmax(dim=-1)
    le = prob_leq(p[..., 0, :], p[..., 1, :]).clamp(1e-12, 1 - 1e-12)
    return torch.stack([torch.log1p(-le), torch.log(le)], dim=-1)


def decide(rule: str, logits: torch.Tensor, digit_logits: torch.Tensor) -> torch.Tensor:
    """Predicted target ``int64 (B,)`` (1: first digit <= second) under ``rule``.

    Args:
        rule: one of ``RULES``.
        logits: ``float (B, 2)`` comparator logits.
        digit_logits: ``float (B, 2, 10)`` logits of the first and second digit.

    Raises:
        ValueError: an unknown rule.
    """
    if rule == "comparator":
        return logits.argmax(dim=1)
    if rule == "argmax":
        digits = digit_logits.argmax(dim=2)
        return (digits[:, 0] <= digits[:, 1]).long()
    if rule == "prob":
        p = digit_logits.float().softmax(dim=2)
        return (prob_leq(p[:, 0], p[:, 1]) > 0.5).long()
    raise ValueError(f"decision rule {rule!r}: expected one of {', '.join(RULES)}")


def p_leq(rule: str, logits: torch.Tensor, digit_logits: torch.Tensor | None) -> torch.Tensor:
    """The probability ``float (B,)`` that the first digit is <= the second, under ``rule``.

    ``comparator``: the softmax of the 2 comparison logits (class 1); ``prob``:
    :func:`prob_leq` of the two heads' posteriors; ``argmax``: a hard 0.0 / 1.0. The
    answer ``p_leq > 0.5`` is :func:`decide`'s (``comparator`` and ``argmax`` ties aside).

    Raises:
        ValueError: an unknown rule.
    """
    if rule == "comparator":
        return logits.float().softmax(dim=1)[:, 1]
    if rule not in RULES:
        raise ValueError(f"decision rule {rule!r}: expected one of {', '.join(RULES)}")
    if rule == "argmax":
        return decide("argmax", logits, digit_logits).float()
    p = digit_logits.float().softmax(dim=2)
    return prob_leq(p[:, 0], p[:, 1])
