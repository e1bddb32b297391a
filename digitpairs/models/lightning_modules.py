"""The pair models: one thin ``LightningModule`` per model over :class:`~digitpairs.models.pair_module.PairModule`.

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

from digitpairs.models.nets import TRUNKS, ConvNet, TwoBranchNet, make_trunk
from digitpairs.models.pair_module import PairModule
from digitpairs.models.rules import RULES, rule_logits
from digitpairs.models.scatter import N_CLASSES, ScatterPCA, ScatterSVM
from digitpairs.utils.errors import ConfigError, require_choice, require_number

SECONDS = ("none", "scatter_pca", "scatter_svm")  # model.second: the kinds of second member
SECOND_SEED = 0  # the second member's affine copies (and the SVM's Platt cross-validation) are drawn from this seed


def check_training_data(model: nn.Module, datamodule) -> None:
    """Refuse, before any training, training digits that ``model`` cannot be fitted on.

    A second member (``model.second``, fitted when training ends) needs every digit 0-9
    among the training pairs' digits (``datamodule.fit_digits()``); other models need
    nothing beyond labels 0-9, which the data sources check.

    Args:
        model: a pair model; datamodule: a set-up :class:`~digitpairs.data.PairDataModule`.

    Raises:
        ConfigError: naming ``model.second``, the labels file and the missing digits.
    """
    if getattr(model, "second", None) is None:
        return
    _, classes = datamodule.fit_digits()
    missing = sorted(set(range(N_CLASSES)) - set(classes.unique().tolist()))
    if missing:
        raise ConfigError(
            "model.second",
            model.hparams.second,
            f"training digits of every class 0-{N_CLASSES - 1} to fit it on (or model.second=none); "
            f"the {len(classes):,} digits of the {len(classes) // 2:,} training pairs drawn from "
            f"{datamodule.train_origin or datamodule.root} (data.n_pairs={datamodule.n_pairs}) "
            f"have no {', '.join(map(str, missing))}",
        )


def mixture(p_cnn: torch.Tensor, p_second: torch.Tensor, w: float) -> torch.Tensor:
    """``log((1 - w) p_cnn + w p_second)``: two members' digit probabilities ``(..., 10)``
    mixed, as log-probabilities (the input of the decision rules)."""
    return torch.log((1 - w) * p_cnn + w * p_second)


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

    A second kind of member (:mod:`~digitpairs.models.scatter`): scattering features into the
    affine space classifier (``second=scatter_pca``, :class:`~digitpairs.models.scatter.ScatterPCA`)
    or an RBF SVM (``second=scatter_svm``, :class:`~digitpairs.models.scatter.ScatterSVM`),
    fitted when training ends (``on_fit_end``) on the training pairs' digits, each with
    ``second_copies - 1`` random affine copies (the test-time views' strengths). From then on
    evaluation mixes the digit probabilities, ``(1 - w) p_cnn + w p_second`` with
    ``w = second_weight``, before the decision rule. It is kept in the checkpoint as tensors;
    ``second_weight=0`` gives the CNN's probabilities exactly.

    Args:
        alpha: weight of each digit loss, > 0.
        trunk: ``table1``, ``wide`` or ``compact`` (:mod:`digitpairs.models.nets`).
        decision: ``prob`` (the default; ``comparator`` is the same) or ``argmax``.
        second: ``none``, ``scatter_pca`` or ``scatter_svm``.
        second_weight: ``w`` in [0, 1].
        second_copies: training images per digit for the second member, an integer >= 1
            (the digit itself and ``second_copies - 1`` random affine copies).
        second_J: scattering scales, 1 or 2.
        second_dim: ``scatter_pca``'s principal directions per class, an integer in [1, 729].
        second_temperature: ``scatter_pca``'s softmax temperature, > 0.
        second_C: ``scatter_svm``'s penalty, > 0.
        **kwargs: see :class:`PairModule`.

    ``forward(x)``: ``float32 (B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10))``.
    Parameters: 94,314 per member with ``trunk=compact``.

    Raises:
        ConfigError: ``alpha`` <= 0, an unknown ``trunk``, ``decision`` or ``second``, or a
            ``second_*`` value out of its range (and see :class:`PairModule`).
    """

    has_aux = True
    loss_terms = ("digit1", "digit2")

    def __init__(
        self,
        alpha: float = 0.75,
        trunk: str = "compact",
        decision: str = "prob",
        second: str = "none",
        second_weight: float = 0.4,
        second_copies: int = 5,
        second_J: int = 2,
        second_dim: int = 120,
        second_temperature: float = 6.0,
        second_C: float = 10.0,
        **kwargs,
    ) -> None:
        require_number("loss.alpha", alpha, 0, strict=True)
        require_choice("model.trunk", trunk, TRUNKS)
        require_choice("model.decision", decision, RULES)
        require_choice("model.second", second, SECONDS)
        require_number("model.second_weight", second_weight, 0, high=1, high_strict=False)
        require_number("model.second_copies", second_copies, 1, integer=True, high=100, high_strict=False)
        require_number("model.second_J", second_J, 1, integer=True, high=2, high_strict=False)
        require_number("model.second_dim", second_dim, 1, integer=True, high=729, high_strict=False)
        require_number("model.second_temperature", second_temperature, 0, strict=True, high=1e6, high_strict=False)
        require_number("model.second_C", second_C, 0, strict=True, high=1e6, high_strict=False)
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.build_net(lambda: make_trunk(trunk, 1, 10))
        self.second = {
            "none": lambda: None,
            "scatter_pca": lambda: ScatterPCA(J=second_J, dim=second_dim, temperature=second_temperature),
            "scatter_svm": lambda: ScatterSVM(J=second_J, C=second_C),
        }[second]()

    def on_fit_end(self) -> None:
        """Fit the second member (if any) on the training digits and their affine copies,
        once training has run all its epochs (a run stopped early, e.g. by a SLURM warning,
        resumes and fits it when it finishes)."""
        if self.second is None or self.trainer.current_epoch < self.trainer.max_epochs:
            return
        self.fit_second(*self.trainer.datamodule.fit_digits())

    def fit_second(self, digits: torch.Tensor, classes: torch.Tensor) -> None:
        """Fit :attr:`second` on ``digits float32 (N, 1, 14, 14)`` (normalised, not augmented),
        ``classes int64 (N,)`` and ``second_copies - 1`` affine copies of each, drawn with
        ``SECOND_SEED`` (the random state outside is left as it was)."""
        digits, classes = digits.to(self.device), classes.to(self.device)
        views = [digits]
        background = digits.amin(dim=(-2, -1), keepdim=True)
        with torch.random.fork_rng(devices=[digits.device] if digits.device.type == "cuda" else []):
            torch.manual_seed(SECOND_SEED)
            views += [self.tta_views.draw(digits, background) for _ in range(self.hparams.second_copies - 1)]
        self.second.fit(torch.cat(views), classes.repeat(len(views)), seed=SECOND_SEED)

    def mix(self, x: torch.Tensor, digit_logits: torch.Tensor) -> torch.Tensor:
        """``log((1 - w) softmax(digit_logits) + w p_second(x))``: ``(B, 2, 10)`` log-probabilities
        (``digit_logits`` unchanged while no second member is fitted, or with ``w = 0``)."""
        w = self.hparams.get("second_weight", 0.0)
        if self.second is None or not self.second.fitted or w == 0:
            return digit_logits
        p_second = self.second(x.reshape(-1, 1, *x.shape[2:])).view(digit_logits.shape)
        return mixture(digit_logits.float().softmax(dim=-1), p_second, w)

    def forward_net(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10))``: both digits in one call."""
        b = x.shape[0]
        digits = net(x.reshape(2 * b, 1, *x.shape[2:]).contiguous(memory_format=self.memory_format)).view(b, 2, -1)
        return rule_logits(digits), digits

    def finish(
        self, x: torch.Tensor, logits: torch.Tensor, digit_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In eval mode, the rule on the mean posteriors of the members and views, mixed with
        the second member's (:meth:`mix`); in train mode the networks' outputs as they are."""
        if self.training:
            return logits, digit_logits
        digits = self.mix(x, digit_logits)
        return rule_logits(digits), digits

    def losses(self, logits, digit_logits, target, classes) -> dict[str, torch.Tensor]:
        return self._digit_losses(digit_logits, classes)
