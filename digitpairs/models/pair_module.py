"""``PairModule``: the LightningModule base that every pair model shares.

It holds metrics, evaluation, the optimiser and lr schedule, logging, ensembles and
test-time views; one thin subclass per model (:mod:`digitpairs.models.lightning_modules`) builds
its network and its loss.

Ensembles (``model.members=K``, not in the study): ``K`` networks of the model, each with
its own initial weights and dropout, trained side by side on the same batches, each on its
own loss (as if trained alone); evaluation averages their probabilities (Lakshminarayanan
et al. 2017, "deep ensembles"). ``members=1`` (the default) is the model itself.

Test-time augmentation (``model.tta=V``, not in the study): in evaluation (the final
train/val/test figures, ``evaluate.py``, ``predict.py``) the model's answer averages its
probabilities over the pair as given and ``V`` random affine views of it
(``model.tta_shift``, ``tta_rotate``, ``tta_scale``; by default the training augmentation's
strengths). The ``V`` maps are drawn from ``TTA_SEED`` afresh for every batch, one map per
view for all digits, so a digit's answer depends on that digit alone (not on its batch,
its place in it or its slot in the pair), evaluation is deterministic, and the training
random stream is untouched: the maps come from a ``torch.Generator`` of each call's own,
never from torch's global one, so calls from several threads at once agree. The per-epoch
curves (validation) use the pair as given.

Optimiser (the study's recipe, ``docs/design.md`` §3): SGD, ``lr1`` for the first
``floor(switch_fraction * max_epochs)`` epochs, then ``lr2``; stepped per epoch
(``schedule=step``). ``schedule=onecycle`` (``optim=sgd_onecycle``): SGD with a one-cycle
schedule peaking at ``lr1`` (``torch.optim.lr_scheduler.OneCycleLR``, Smith & Topin
2019), stepped per batch; ``lr2`` and ``switch_fraction`` are then unused.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from digitpairs.data.augment import RandomDigitAffine
from digitpairs.models.nets import mean_probability
from digitpairs.models.rules import RULES, decide
from digitpairs.utils.errors import ConfigError, RunFailed, require_choice, require_number

# Evaluation loaders (stage, loader name) -> prefix of their logged metrics. The "curve"
# loader is the test set evaluated after each epoch for the Fig. 2 curves only.
EVAL_PREFIX = {
    ("val", "val"): "val/",
    ("val", "curve"): "curve/test_",
    ("test", "train"): "final/train_",
    ("test", "val"): "final/val_",
    ("test", "test"): "final/test_",
}
EVAL_KEYS = [f"{stage}_{name}" for stage, name in EVAL_PREFIX]

log = logging.getLogger(__name__)
SCHEDULES = ("step", "onecycle")
TTA_SEED = 0  # the test-time views (the same V maps for every digit) are drawn from this seed


def diverged_message(loss: float, epoch: int) -> str:
    """The one line of a run whose training loss became ``loss`` (not finite) in ``epoch`` (from 0)."""
    return f"train/loss is {loss} at epoch {epoch}: the run diverged"


def _accuracy(num_classes: int) -> MulticlassAccuracy:
    # micro: the share of correct predictions (docs/design.md §6). Inputs are argmax labels made
    # here, so the per-update input validation (a costly torch.unique) is skipped.
    return MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)


class PairModule(L.LightningModule):
    """What every pair model shares: metrics, evaluation, optimiser, scheduler, logging.

    Subclasses build their network with :meth:`build_net`, implement :meth:`forward_net`
    and, if the loss differs, :meth:`losses`. ``forward(x)`` takes ``float32 (B, 2, 14, 14)``
    and returns ``(logits float32 (B, 2), digit_logits float32 (B, 2, 10) or None)``. With
    ``members`` K > 1, ``self.net`` is an ``nn.ModuleList`` of K networks: in train mode
    ``forward`` returns every member's outputs, ``(K, B, 2)`` and ``(K, B, 2, 10)``, and
    each member is trained on its own loss; in eval mode it returns the members' mean
    probabilities as log-probabilities (valid logits), ``(B, 2)`` and ``(B, 2, 10)``.

    Logged: ``lr``, ``train/loss`` and each ``train/loss_*`` term, ``train/acc`` (per
    epoch); ``val/{acc,loss}`` and ``curve/test_{acc,loss}`` (per epoch, when those
    loaders exist); ``final/{train,val,test}_{acc,loss,errors}`` (after training, by
    ``trainer.test``); and for aux models ``*digit_acc``, the accuracy of the digit
    heads over both digits of every pair.

    Args:
        lr1: SGD learning rate for the first part of training (0.09 in the study).
        lr2: learning rate after the switch (1e-3 in the study).
        weight_decay: SGD weight decay (5e-4 in the study).
        switch_fraction: share of ``max_epochs`` trained with ``lr1`` (3/5 in the study).
        momentum: SGD momentum (0 in the study).
        gamma: weight of the main (comparison) loss (1 in the study).
        literal_softmax: feed softmax outputs to cross-entropy, as Table 1 literally
            reads (a double softmax; off by default, see docs/design.md §2).
        channels_last: run convolutions in channels-last memory format (same results,
            1.3-1.8x faster on CPU).
        schedule: ``step`` (the study: lr1, then lr2) or ``onecycle`` (peak lr1, per batch).
        nesterov: Nesterov momentum (needs ``momentum`` > 0).
        label_smoothing: label smoothing of the training cross-entropies, in [0, 1)
            (0 in the study; Szegedy et al. 2016). Evaluation losses use none.
        members: networks in the ensemble, an integer >= 1 (1: no ensemble, the study).
        tta: random views per digit averaged in evaluation, an integer >= 0 (0: none, the study).
        tta_shift, tta_rotate, tta_scale: the views' strengths (pixels, degrees, relative
            size; see :class:`~digitpairs.data.augment.RandomDigitAffine`).

    Raises:
        ConfigError: a learning rate <= 0, ``gamma``/``weight_decay``/``momentum`` < 0,
            ``switch_fraction`` outside [0, 1], an unknown ``schedule``, ``nesterov``
            without momentum, ``label_smoothing`` outside [0, 1), ``members`` < 1,
            ``tta`` < 0, or a bad ``tta_*`` strength.
    """

    has_aux = False
    loss_terms: tuple[str, ...] = ("main",)  # the keys that :meth:`losses` returns

    def __init__(
        self,
        lr1: float = 0.09,
        lr2: float = 1e-3,
        weight_decay: float = 5e-4,
        switch_fraction: float = 0.6,
        momentum: float = 0.0,
        gamma: float = 1.0,
        literal_softmax: bool = False,
        channels_last: bool = True,
        schedule: str = "step",
        nesterov: bool = False,
        label_smoothing: float = 0.0,
        members: int = 1,
        tta: int = 0,
        tta_shift: float = 1.5,
        tta_rotate: float = 12.0,
        tta_scale: float = 0.1,
    ) -> None:
        super().__init__()
        require_number("model.members", members, 1, integer=True, high=64, high_strict=False)
        require_number("model.tta", tta, 0, integer=True, high=1024, high_strict=False)
        self.tta_views = RandomDigitAffine(tta_shift, tta_rotate, tta_scale, prefix="model.tta_")
        require_choice("optim.schedule", schedule, SCHEDULES)
        if nesterov and not momentum > 0:
            raise ConfigError("optim.nesterov", nesterov, "false unless optim.momentum > 0")
        require_number("loss.label_smoothing", label_smoothing, 0, high=1)
        require_number("optim.lr1", lr1, 0, strict=True)
        require_number("optim.lr2", lr2, 0, strict=True)
        require_number("optim.weight_decay", weight_decay, 0)
        require_number("optim.momentum", momentum, 0, high=1)
        require_number("optim.switch_fraction", switch_fraction, 0, high=1, high_strict=False)
        require_number("loss.gamma", gamma, 0)
        self.save_hyperparameters(logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # One metric object per stage and loader (docs/design.md §6).
        self.eval_acc = nn.ModuleDict({key: _accuracy(2) for key in EVAL_KEYS})
        self.eval_errors = nn.ModuleDict({key: SumMetric() for key in EVAL_KEYS})
        if self.has_aux:
            self.eval_digit_acc = nn.ModuleDict({key: _accuracy(10) for key in EVAL_KEYS})
            self.eval_rule_acc = nn.ModuleDict({f"{key}_{rule}": _accuracy(2) for key in EVAL_KEYS for rule in RULES})

    # ---- what subclasses provide -------------------------------------------------
    def forward_net(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One network's outputs on ``x (B, 2, 14, 14)``: ``(logits (B, 2), digit_logits (B, 2, 10) or None)``."""
        raise NotImplementedError

    def build_net(self, make) -> None:
        """Set ``self.net``: ``make()`` (a network), or ``members`` of them in an ``nn.ModuleList``.

        ``make`` is called once per member, in order, so members draw their own initial
        weights from torch's generator (one member draws exactly what the model alone does).
        """
        nets = [make().to(memory_format=self.memory_format) for _ in range(self.hparams.get("members", 1))]
        self.net = nets[0] if len(nets) == 1 else nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, tta: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, 2, 14, 14)`` -> ``(logits (B, 2), digit_logits (B, 2, 10) or None)``; for an
        ensemble in train mode, every member's: ``(K, B, 2)``, ``(K, B, 2, 10)``. In eval
        mode with ``model.tta`` > 0 (and ``tta``), the mean probability over the pair and its
        random views, as log-probabilities."""
        return self.finish(x, *self.forward_with(self.net, x, tta))

    def forward_with(
        self, net: nn.Module, x: torch.Tensor, tta: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` with ``net`` in place of ``self.net`` and without :meth:`finish`: the
        part of the forward pass that only the networks compute. A packed network
        (:mod:`digitpairs.models.packed`) goes through it with the batches of several runs
        back to back, ``x (K * B, 2, 14, 14)``: every step here treats each pair alone."""
        views = self.hparams.get("tta", 0)
        if self.training or not tta or not views:
            return self._members(net, x)
        outs = [self._members(net, x)]
        background = x.amin(dim=(-2, -1), keepdim=True)  # per digit: its 0-valued pixels, normalised
        seeded = torch.Generator().manual_seed(TTA_SEED)  # a call's own: no global state, safe across threads
        for _ in range(views):
            outs.append(self._members(net, self.tta_views.draw(x, background, same=True, generator=seeded)))
        logits = mean_probability(torch.stack([o[0] for o in outs]))
        digits = None if outs[0][1] is None else mean_probability(torch.stack([o[1] for o in outs]))
        return logits, digits

    def finish(
        self, x: torch.Tensor, logits: torch.Tensor, digit_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The run's own last step of :meth:`forward`, after the networks (the identity here;
        :class:`~digitpairs.models.lightning_modules.DigitClassifierModule` mixes in its second member)."""
        return logits, digit_logits

    def _members(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's outputs, or the ensemble's (members in train mode, their mean in eval)."""
        if not isinstance(net, nn.ModuleList):
            return self.forward_net(net, x)
        outs = [self.forward_net(member, x) for member in net]
        logits = torch.stack([o[0] for o in outs])
        digits = None if outs[0][1] is None else torch.stack([o[1] for o in outs])
        if self.training:
            return logits, digits
        return mean_probability(logits), None if digits is None else mean_probability(digits)

    def losses(self, logits, digit_logits, target, classes) -> dict[str, torch.Tensor]:
        """The weighted loss terms; their sum is minimised. Keys become ``train/loss_<key>``."""
        return {"main": self.hparams.gamma * self._ce(logits, target)}

    def _digit_losses(self, digit_logits: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """``alpha * CE`` of each digit head: ``digit_logits (B, 2, 10)``, or ``(K, B, 2, 10)``
        for an ensemble's members, against ``classes int64 (B, 2)``."""
        return {f"digit{i + 1}": self.hparams.alpha * self._ce(digit_logits[..., i, :], classes[:, i]) for i in (0, 1)}

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits (..., B, C)`` against ``target (B,)``; leading member
        dimensions are averaged over (every member against the same targets)."""
        if self.hparams.literal_softmax:
            logits = logits.softmax(dim=-1)  # Table 1 as printed: softmax, then CE's log-softmax
        smoothing = self.hparams.get("label_smoothing", 0.0) if self.training else 0.0
        if logits.dim() > target.dim() + 1:  # an ensemble's members
            target = target.expand(logits.shape[:-1]).reshape(-1)
            logits = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(logits, target, label_smoothing=smoothing)

    # ---- training ----------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, target, classes = batch
        loss, stats = self.step_loss(self(x), target, classes)
        # Epoch means of the loss terms and of the accuracy, summed on the device and logged
        # once per epoch: a self.log call per step costs ~1 ms in Lightning 2.6 and four
        # torchmetrics updates per step ~0.5 ms (5-10% of a step here), and a host sync
        # per step would stall a GPU.
        self.add_epoch_stats(stats, len(target), batch_idx)
        return loss

    def step_loss(self, outputs, target: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's loss and statistics from the forward pass ``outputs``
        (``(logits, digit_logits)`` as :meth:`forward` returns them in train mode) on a batch
        of ``B`` pairs with ``target int64 (B,)`` and ``classes int64 (B, 2)``.

        Returns ``(loss, stats)``: the scalar to minimise (an ensemble's is ``K`` times the
        mean of its members' losses, so that every member gets the gradient of its own loss,
        as if trained alone), and ``float (len(loss_terms) + 1,)``: each loss term and the
        share of correct predictions, each times ``B`` (sums, for epoch means)."""
        logits, digit_logits = outputs
        terms = self.losses(logits, digit_logits, target, classes)
        n = len(target)
        correct = (logits.detach().argmax(dim=-1) == target).float().mean()  # an ensemble: its members' mean
        stats = torch.stack([*(term.detach() for term in terms.values()), correct]) * n
        return sum(terms.values()) * (logits.shape[0] if logits.dim() == 3 else 1), stats

    def add_epoch_stats(self, stats: torch.Tensor, n: int, batch_idx: int) -> None:
        """Add one step's :meth:`step_loss` statistics of ``n`` pairs to the epoch's sums
        (the first step of an epoch, ``batch_idx == 0``, starts them afresh)."""
        self._epoch_sums = stats if batch_idx == 0 else self._epoch_sums + stats
        self._epoch_count = n if batch_idx == 0 else self._epoch_count + n

    def epoch_means(self) -> dict[str, torch.Tensor]:
        """The epoch's means so far: ``train/loss`` (the sum of the terms), each
        ``train/loss_<term>`` and ``train/acc``, as 0-dim tensors on the model's device."""
        means = self._epoch_sums / self._epoch_count
        terms = {f"train/loss_{name}": means[i] for i, name in enumerate(self.loss_terms)}
        return {"train/loss": means[: len(self.loss_terms)].sum(), **terms, "train/acc": means[-1]}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step the lr schedule (Lightning's hook). A one-cycle schedule that has taken all
        its planned steps (a resumed run trained past the epochs it was planned for) holds
        its last lr instead of stepping: ``OneCycleLR`` raises ``ValueError`` beyond
        ``total_steps``. The step schedule holds ``lr2`` after its switch by itself."""
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.last_epoch >= scheduler.total_steps:
            return
        scheduler.step()

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        means = self.epoch_means()
        total = means["train/loss"]
        if not torch.isfinite(total):
            raise RunFailed(diverged_message(total.item(), self.current_epoch))
        self.log_dict(means, on_step=False, on_epoch=True)

    # ---- evaluation --------------------------------------------------------------
    def _eval_step(self, batch, stage: str, dataloader_idx: int, loaders) -> None:
        """Update and log the metrics of one evaluation batch; Lightning reduces per epoch."""
        # the DataModule names its loaders (a dict); a plain loader counts as val or test
        name = list(loaders)[dataloader_idx] if isinstance(loaders, dict) else stage
        key, prefix = f"{stage}_{name}", EVAL_PREFIX[stage, name]
        x, target, classes = batch
        logits, digit_logits = self(x, tta=stage == "test")  # the per-epoch curves without test-time views
        preds, n = self.predict_target(logits, digit_logits), len(target)
        log = dict(on_step=False, on_epoch=True, add_dataloader_idx=False, batch_size=n)
        self.eval_acc[key](preds, target)
        self.log(f"{prefix}acc", self.eval_acc[key], **log)
        self.log(f"{prefix}loss", self._ce(logits, target), **log)
        if stage == "test":
            self.eval_errors[key](preds != target)
            self.log(f"{prefix}errors", self.eval_errors[key], **log)
        if self.has_aux:
            self.eval_digit_acc[key](digit_logits.argmax(dim=2).flatten(), classes.flatten())
            self.log(f"{prefix}digit_acc", self.eval_digit_acc[key], **log)
            for rule in RULES:  # every decision rule's accuracy, whichever is the model's
                metric = self.eval_rule_acc[f"{key}_{rule}"]
                metric(decide(rule, logits, digit_logits), target)
                self.log(f"{prefix}acc_{rule}", metric, **log)

    def predict_target(self, logits: torch.Tensor, digit_logits: torch.Tensor | None) -> torch.Tensor:
        """The model's predicted targets ``int64 (B,)``: under its ``decision`` rule for a
        model with digit heads (:func:`~digitpairs.models.rules.decide`), else the argmax of the
        comparison logits."""
        if self.has_aux:
            return decide(self.hparams.decision, logits, digit_logits)
        return logits.argmax(dim=1)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx, self.trainer.val_dataloaders)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx, self.trainer.test_dataloaders)

    # ---- optimiser ---------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        switch = math.floor(hp.switch_fraction * self.trainer.max_epochs)
        if switch == 0 and hp.switch_fraction > 0 and hp.lr1 != hp.lr2 and hp.get("schedule", "step") == "step":
            log.warning(
                "optim.switch_fraction=%s x trainer.max_epochs=%s < 1 epoch: lr1 is never used, "
                "every epoch runs at lr2=%s",
                hp.switch_fraction,
                self.trainer.max_epochs,
                hp.lr2,
            )
        nesterov = hp.get("nesterov", False)
        opt = torch.optim.SGD(
            self.parameters(),
            lr=hp.lr1,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=nesterov,
        )
        if hp.get("schedule", "step") == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=hp.lr1,
                total_steps=int(self.trainer.estimated_stepping_batches),
                cycle_momentum=False,
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[switch], gamma=hp.lr2 / hp.lr1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
