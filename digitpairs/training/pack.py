"""Train a fleet's pack: ``K`` runs that differ only in per-run keys, as one packed network.

:func:`train_pack` is what the fleet launcher (:mod:`digitpairs.sweeps.fleet`) runs in each
pack's process. Each run is built exactly as a solo run builds it
(:func:`digitpairs.training.run.build`: its checks, its seed, its pairs and validation
split, its initial weights, its TensorBoard logger and its callbacks); then
:class:`PackModule` trains the ``K`` runs' networks as one (:func:`digitpairs.models.packed.pack`)
under one Lightning ``Trainer``, and each run is tested and recorded by the solo code
(:func:`digitpairs.training.run.test_and_record`) with its own ``Trainer``.

Each run stays its own run:

- its batches come from its own ``DataLoader``, its augmentation and batch order from its
  own random state (:class:`RunRandomState`, swapped in for its draws), its dropout masks
  from its own generators: on the CPU, the same batches, views and masks as the solo run;
- its loss is its own module's (:meth:`PairModule.step_loss`), with its own ``alpha`` and
  ``gamma``; its optimiser and lr schedule are its own module's (``configure_optimizers``),
  with its own learning rates, momentum and weight decay; gradient clipping is per run;
- its BatchNorm statistics, epoch metrics, validation figures, history, TensorBoard events
  and ``checkpoints/last.ckpt`` (an ordinary solo checkpoint: ``evaluate.py``,
  ``predict.py`` and resuming read it as any) are its own;
- a run whose training loss stops being finite is recorded ``failed`` at the end of that
  epoch, as a solo run is, and frozen; the others go on.

The results are statistically those of solo runs, not bit for bit: float sums run in
another order.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from digitpairs.models.packed import PackedDropout, pack
from digitpairs.models.pair_module import EVAL_PREFIX, diverged_message
from digitpairs.training.checkpoints.store import DATA_STATE_KEY, KEY
from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import atomic_write

log = logging.getLogger(__name__)

# Keys that may differ between the runs of one pack: each run applies its own (README:
# "the fleet launcher"). Any other difference puts runs into different packs.
PER_RUN_KEYS = (
    "seed",
    "optim.lr1",
    "optim.lr2",
    "optim.weight_decay",
    "optim.momentum",
    "optim.nesterov",
    "loss.alpha",
    "loss.gamma",
    "loss.label_smoothing",
    "model.decision",
    "model.second_weight",
    "model.second_dim",
    "model.second_temperature",
    "model.second_C",
    "checkpoint_every",
)

_active_run = None  # the run whose log lines are being written (None: every run's)


class RunFilter(logging.Filter):
    """Let a record into run ``index``'s ``train.log`` when it was written for that run
    (inside :func:`for_run`) or for the whole pack."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        return _active_run is None or _active_run == self.index


@contextmanager
def for_run(index: int | None) -> Iterator[None]:
    """Log lines written inside go to run ``index``'s ``train.log`` only."""
    global _active_run
    outer, _active_run = _active_run, index
    try:
        yield
    finally:
        _active_run = outer


class RunRandomState:
    """One run's own global random state, kept aside while other runs draw.

    Captured when the run is built (after its ``seed_everything``, its model and its data,
    the state in which a solo run starts ``fit``); :meth:`active` swaps it in for the
    run's own draws (its batch order, its augmentation) and keeps what they leave. On a CUDA
    device the device's default generator is swapped too.
    """

    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        self.numpy = np.random.get_state()
        self.python = random.getstate()
        self.cuda: dict[int, torch.Tensor] = {}
        self.generators: dict[torch.device, torch.Generator] = {}

    @contextmanager
    def active(self, device: torch.device | None = None) -> Iterator[None]:
        cuda = device is not None and device.type == "cuda"
        index = device.index if cuda and device.index is not None else (torch.cuda.current_device() if cuda else None)
        outer = torch.get_rng_state()
        torch.set_rng_state(self.torch)
        outer_cuda = None
        if cuda:
            outer_cuda = torch.cuda.get_rng_state(index)
            if index in self.cuda:
                torch.cuda.set_rng_state(self.cuda[index], index)
            else:  # first use on this device: a stream of the run's own, drawn from its CPU state
                torch.cuda.manual_seed(int(torch.randint(0, 2**62, ())))
        try:
            yield
        finally:
            self.torch = torch.get_rng_state()
            torch.set_rng_state(outer)
            if cuda:
                self.cuda[index] = torch.cuda.get_rng_state(index)
                torch.cuda.set_rng_state(outer_cuda, index)

    def device_generator(self, device: torch.device) -> torch.Generator:
        """The run's own ``torch.Generator`` on ``device``, seeded once from its CPU state: on
        a GPU its affine augmentation is drawn there, with no host work per step."""
        if device not in self.generators:
            with self.active():
                seed = int(torch.randint(0, 2**62, ()))
            self.generators[device] = torch.Generator(device=device).manual_seed(seed)
        return self.generators[device]

    def globals(self) -> dict[str, Any]:
        """The states as :func:`digitpairs.training.checkpoints.resume.rng_state` takes them."""
        return {"torch": self.torch, "numpy": self.numpy, "python": self.python}


@dataclass
class Run:
    """One run of a pack: its config, its solo objects and its state.

    ``trainer`` is the run's own solo ``Trainer`` (never fitted): its loggers and callbacks
    are the run's, and it tests the run when training ends.
    """

    index: int
    cfg: DictConfig
    datamodule: Any
    model: Any
    trainer: L.Trainer
    history: Any
    hp: dict[str, Any]
    rng: RunRandomState
    start: float
    failed: str | None = None
    lr: float = math.nan
    val_sums: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.failed is None


def _on_device(loader: DataLoader, device: torch.device) -> DataLoader:
    """``loader`` with its dataset's tensors on ``device`` and the same sampler: batches are
    cut on the device, with no copy per step."""
    if device.type == "cpu":
        return loader
    dataset = loader.dataset
    if isinstance(dataset, TensorDataset):
        moved = TensorDataset(*(t.to(device) for t in dataset.tensors))
    else:
        import copy

        moved = copy.copy(dataset)
        for name, value in vars(dataset).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
    return DataLoader(moved, sampler=loader.sampler, batch_size=None)


class PackedLoader:
    """An epoch of packed batches: the runs' own loaders, each iterated from its run's
    random state (so each run draws its batch order as a solo run does), their batches
    concatenated: ``(x (K * B, 2, 14, 14), target (K * B,), classes (K * B, 2))``.

    Every run's loader must yield batches of the same sizes (the runs share ``data.*``).
    """

    def __init__(self, runs: list[Run], loaders: list[DataLoader], device: torch.device) -> None:
        self.runs, self.device = runs, device
        self.loaders = [_on_device(loader, device) for loader in loaders]

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        iterators = []
        for run, loader in zip(self.runs, self.loaders, strict=True):
            with run.rng.active(self.device):
                iterators.append(iter(loader))
        for batches in zip(*iterators, strict=True):
            yield tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


class PackOptimizer(torch.optim.Optimizer):
    """The runs' own optimisers as one, for Lightning: ``step`` runs the closure (forward
    and backward of the whole pack) once, then steps each live run's optimiser."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], runs: list[Run]) -> None:
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        super().__init__(params, {})
        self.optimizers, self.runs = optimizers, runs

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for run, opt in zip(self.runs, self.optimizers, strict=True):
            if run.live:
                opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"runs": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for opt, state in zip(self.optimizers, state_dict["runs"], strict=True):
            opt.load_state_dict(state)


class PackScheduler:
    """The runs' own lr schedulers as one, for Lightning (stepped by
    :meth:`PackModule.lr_scheduler_step`)."""

    def __init__(self, optimizer: PackOptimizer, schedulers: list[Any]) -> None:
        self.optimizer, self.schedulers = optimizer, schedulers

    def state_dict(self) -> dict[str, Any]:
        return {"runs": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for s, state in zip(self.schedulers, state_dict["runs"], strict=True):
            s.load_state_dict(state)


def _run_rows(t: torch.Tensor | None, k: int, runs: int, batch_dim: int) -> torch.Tensor | None:
    """Run ``k``'s block of ``t`` along ``batch_dim`` (counted from the end)."""
    if t is None:
        return None
    dim = t.dim() + batch_dim
    size = t.shape[dim] // runs
    return t.narrow(dim, k * size, size)


class PackModule(L.LightningModule):
    """The LightningModule of a pack: the runs' solo modules and their packed networks.

    Args:
        runs: the pack's runs, each built as a solo run (:func:`build_run`).
        strategy: how convolutional stages run (:func:`~digitpairs.models.packed.pack`);
            ``auto``: ``loop`` on the CPU, ``grouped`` elsewhere.
        device_draws: draw dropout masks and affine augmentation from per-run generators on
            the training device (None: on any device but the CPU, where each run draws as
            its solo run does; True on the CPU tests the GPU's way).

    Raises:
        NotPackable: networks that do not pack.
    """

    def __init__(self, runs: list[Run], strategy: str = "auto", device_draws: bool | None = None) -> None:
        super().__init__()
        self.runs = runs
        self.models = nn.ModuleList([run.model for run in runs])
        self.strategy = strategy
        self.device_draws = device_draws
        self.packed = self._pack("loop" if strategy == "auto" else strategy)

    def _pack(self, strategy: str) -> nn.Module:
        nets = [run.model.net for run in self.runs]
        return pack(nets, strategy)

    def setup(self, stage: str) -> None:
        for run in self.runs:  # Lightning sets the trainer of direct children only
            run.model.trainer = self.trainer
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        if self.strategy == "auto" and not on_cpu:
            self.packed = self._pack("grouped")
        if self.device_draws is None:
            self.device_draws = not on_cpu
        for m in self.packed.modules():
            if isinstance(m, PackedDropout):
                m.device_masks = self.device_draws

    # ---- data --------------------------------------------------------------------
    def _root_device(self) -> torch.device:
        return self.trainer.strategy.root_device

    def train_dataloader(self) -> PackedLoader:
        return PackedLoader(self.runs, [run.datamodule.train_dataloader() for run in self.runs], self._root_device())

    def val_dataloader(self) -> dict[str, PackedLoader]:
        per_run = [run.datamodule.val_dataloader() for run in self.runs]
        return {
            name: PackedLoader(self.runs, [loaders[name] for loaders in per_run], self._root_device())
            for name in per_run[0]
        }

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Each run's own training augmentation of its rows, from its own random state: on the
        CPU the solo run's draws; on another device the affine maps are drawn there from the
        run's own generator (:meth:`RunRandomState.device_generator`)."""
        if not self.trainer.training:
            return batch
        x, target, classes = batch
        if all(run.datamodule.augmenter is None and run.datamodule.elastic is None for run in self.runs):
            return batch
        parts = []
        for run, rows in zip(self.runs, x.split(x.shape[0] // len(self.runs)), strict=True):
            dm, fill = run.datamodule, -run.datamodule.mean / run.datamodule.std
            if dm.augmenter is not None and self.device_draws:  # drawn on the device
                rows = dm.augmenter.draw(rows, fill, generator=run.rng.device_generator(x.device))
            elif dm.augmenter is not None:  # on the CPU: the solo run's draws, from its own state
                with run.rng.active():
                    rows = dm.augmenter(rows, fill=fill)
            if dm.elastic is not None:
                with run.rng.active(x.device):
                    rows = dm.elastic(rows, fill=fill)
            parts.append(rows)
        return torch.cat(parts), target, classes

    # ---- training ----------------------------------------------------------------
    def _outputs(self, x: torch.Tensor, tta: bool):
        return self.runs[0].model.forward_with(self.packed, x, tta)

    def _per_run(self, outputs, x: torch.Tensor, k: int):
        logits, digits = outputs
        n = len(self.runs)
        x_k = _run_rows(x, k, n, -4)
        return self.runs[k].model.finish(x_k, _run_rows(logits, k, n, -2), _run_rows(digits, k, n, -3))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, target, classes = batch
        outputs = self._outputs(x, tta=False)
        n, total = len(self.runs), None
        for k, run in enumerate(self.runs):
            if not run.live:
                continue
            t_k, c_k = _run_rows(target, k, n, -1), _run_rows(classes, k, n, -2)
            loss, stats = run.model.step_loss(self._per_run(outputs, x, k), t_k, c_k)
            run.model.add_epoch_stats(stats, len(t_k), batch_idx)
            total = loss if total is None else total + loss
        return total

    def configure_optimizers(self):
        optimizers, schedulers, interval = [], [], "epoch"
        for run in self.runs:
            conf = run.model.configure_optimizers()
            optimizers.append(conf["optimizer"])
            schedulers.append(conf["lr_scheduler"]["scheduler"])
            interval = conf["lr_scheduler"]["interval"]
        optimizer = PackOptimizer(optimizers, self.runs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": PackScheduler(optimizer, schedulers), "interval": interval},
        }

    def lr_scheduler_step(self, scheduler, metric) -> None:
        for run, s in zip(self.runs, scheduler.schedulers, strict=True):
            if run.live:
                run.model.lr_scheduler_step(s, metric)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each run's gradients by its own norm (never the pack's)."""
        if not gradient_clip_val:
            return
        for run, opt in zip(self.runs, optimizer.optimizers, strict=True):
            if run.live:
                self.clip_gradients(opt, gradient_clip_val, gradient_clip_algorithm)

    def on_train_epoch_start(self) -> None:
        for run, opt in zip(self.runs, self.trainer.optimizers[0].optimizers, strict=True):
            run.lr = opt.param_groups[0]["lr"]

    def on_train_epoch_end(self) -> None:
        epoch, step = self.current_epoch, self.global_step
        for run in self.runs:
            if not run.live:
                continue
            means = run.model.epoch_means()
            values = {key: float(v) for key, v in means.items()} | {"lr": float(run.lr)}
            if not math.isfinite(values["train/loss"]):
                self.fail(run, diverged_message(values["train/loss"], epoch))
                continue
            run.history.record(values, epoch)
            for lg in run.trainer.loggers:
                lg.log_metrics({**values, "epoch": float(epoch)}, step=step - 1)
            for cb in run.trainer.callbacks:
                if hasattr(cb, "history") and cb.history is run.history and hasattr(cb, "_log"):  # EpochLog
                    with for_run(run.index):
                        cb._log(self.trainer, run.model)
        if not any(run.live for run in self.runs):
            self.trainer.should_stop = True

    def fail(self, run: Run, message: str) -> None:
        """Record ``run`` as failed (its ``metrics.json``, at once), freeze it, go on without it."""
        from digitpairs.training.run import failure_record, write_record
        from digitpairs.utils.errors import RunFailed

        record, _ = failure_record(run.cfg, RunFailed(message), run.start)
        run.failed = record["error"]
        write_record(Path(run.cfg.paths.output_dir), record)
        with for_run(run.index):
            log.error("job failed: %s", run.failed)
        for p in run.model.parameters():
            p.requires_grad_(False)
            p.grad = None

    # ---- validation (the per-epoch curves) -----------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = list(self.trainer.val_dataloaders)[dataloader_idx]
        x, target, classes = batch
        outputs = self._outputs(x, tta=False)
        n = len(self.runs)
        for k, run in enumerate(self.runs):
            logits, digits = self._per_run(outputs, x, k)
            t_k = _run_rows(target, k, n, -1)
            correct = (run.model.predict_target(logits, digits) == t_k).sum()
            loss = run.model._ce(logits, t_k) * len(t_k)
            sums = run.val_sums.setdefault(name, [])
            sums.append(torch.stack([correct.float(), loss.float(), torch.tensor(float(len(t_k)), device=loss.device)]))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        epoch, step = self.current_epoch, self.global_step
        for run in self.runs:
            values = {}
            for name, sums in run.val_sums.items():
                correct, loss, count = torch.stack(sums).sum(0).tolist()
                prefix = EVAL_PREFIX["val", name]
                values[f"{prefix}acc"], values[f"{prefix}loss"] = correct / count, loss / count
            run.val_sums = {}
            if not run.live or not values:
                continue
            run.history.record(values, epoch)
            for lg in run.trainer.loggers:
                lg.log_metrics({**values, "epoch": float(epoch)}, step=step - 1)

    # ---- the runs' checkpoints -----------------------------------------------------
    def save_run(self, run: Run) -> Path:
        """Write ``run``'s ``checkpoints/last.ckpt``, an ordinary solo checkpoint of this moment
        of training (the pack's loops, the run's weights, optimiser, schedule, data state,
        history and random state), atomically."""
        from digitpairs.training.checkpoints.resume import LastCheckpoint, rng_state

        base = self.trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        opt = self.trainer.optimizers[0].optimizers[run.index]
        sched = self.trainer.lr_scheduler_configs[0].scheduler.schedulers[run.index]
        last = next(cb for cb in run.trainer.callbacks if isinstance(cb, LastCheckpoint))
        model, dm = run.model, run.datamodule
        ckpt: dict[str, Any] = {
            "epoch": base["epoch"],
            "global_step": base["global_step"],
            "pytorch-lightning_version": base["pytorch-lightning_version"],
            "state_dict": model.state_dict(),
            "loops": base["loops"],
            "callbacks": {cb.state_key: cb.state_dict() for cb in run.trainer.callbacks if cb.state_dict()},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            model.CHECKPOINT_HYPER_PARAMS_KEY: dict(model.hparams),
            dm.CHECKPOINT_HYPER_PARAMS_KEY: dict(dm.hparams),
            DATA_STATE_KEY: dm.state_dict(),
            KEY: {
                **last.run_info,
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "rng": rng_state(model, run.rng.globals()),
            },
        }
        for obj in (model, dm):
            if getattr(obj, "_hparams_name", None):
                ckpt[obj.CHECKPOINT_HYPER_PARAMS_NAME] = obj._hparams_name
        return atomic_write(last.path, lambda tmp: torch.save(ckpt, tmp))


class PackCheckpoint(Checkpoint):
    """Save every live run's ``last.ckpt`` every ``every`` epochs (a Lightning ``Checkpoint``,
    so that it runs after :meth:`PackModule.on_train_epoch_end`, as a solo run's does)."""

    def __init__(self, every: list[int]) -> None:
        self.every = every

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PackModule) -> None:
        if trainer.sanity_checking:
            return
        for run, every in zip(pl_module.runs, self.every, strict=True):
            if run.live and (trainer.current_epoch + 1) % every == 0:
                pl_module.save_run(run)


def build_run(index: int, cfg: DictConfig) -> Run:
    """Build run ``index`` of a pack exactly as a solo run is built
    (:func:`digitpairs.training.run.build`, its HPARAMS row), and keep its random state.

    Raises:
        ConfigError: bad input.
    """
    from digitpairs.training.run import build, start_session

    start = time.perf_counter()
    with for_run(index):
        datamodule, model, trainer, history = build(cfg, quiet=True)
        rng = RunRandomState()
        hp = start_session(cfg, datamodule, trainer, multirun=True)
    return Run(index, cfg, datamodule, model, trainer, history, hp, rng, start)


def pack_trainer(cfg: DictConfig, every: list[int]) -> L.Trainer:
    """The pack's Lightning ``Trainer``, from the first run's ``trainer`` config (the runs
    share it): no logger (each run has its own), no progress bar, the runs' checkpoints."""
    from digitpairs.training.run import instantiate_checked

    return instantiate_checked(
        cfg.trainer,
        callbacks=[PackCheckpoint(every)],
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def train_pack(cfgs: list[DictConfig], report: Callable[[int, dict[str, Any]], None], strategy: str = "auto") -> None:
    """Train the runs ``cfgs`` (resolved configs, one per job folder) as one pack; call
    ``report(k, record)`` with each run's ``metrics.json`` record as soon as it is written.

    A run that is refused when built (bad input) is recorded ``invalid`` and left out; a
    run that diverges is recorded ``failed`` and frozen; an error of the whole pack records
    every run still training as ``failed`` with it.
    """
    from digitpairs.training.run import failure_record, test_and_record, write_record

    runs: list[Run] = []
    for k, cfg in enumerate(cfgs):
        start = time.perf_counter()
        try:
            runs.append(build_run(k, cfg))
        except (ConfigError, Exception) as err:  # noqa: BLE001 - one bad run must not lose the others
            record, _ = failure_record(cfg, err, start)
            write_record(Path(cfg.paths.output_dir), record)
            with for_run(k):
                log.error("job failed: %s", record["error"])
            report(k, record)
    if not runs:
        return
    fit_start = time.perf_counter()
    module = PackModule(runs, strategy)
    trainer = pack_trainer(runs[0].cfg, [run.cfg.checkpoint_every for run in runs])
    try:
        trainer.fit(module)
    except Exception as err:  # noqa: BLE001 - the pack's error is every live run's
        for run in runs:
            if run.live:
                module.fail(run, f"{type(err).__name__}: {err}")
    shared = (time.perf_counter() - fit_start) / len(runs)  # each run's share of the pack's training
    for run in runs:
        if not run.live:
            report(run.index, {"status": "failed", "error": run.failed})
            continue
        start = time.perf_counter() - shared - (fit_start - run.start)
        try:
            with for_run(run.index):
                if getattr(run.model, "second", None) is not None and trainer.current_epoch >= trainer.max_epochs:
                    run.model.fit_second(*run.datamodule.fit_digits())  # what a solo run does in on_fit_end
                module.save_run(run)
                run.trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step  # final/* at the run's step
                extra = {"pack": {"runs": len(runs), "wall_time_s": round(time.perf_counter() - fit_start, 3)}}
                record = test_and_record(
                    run.cfg,
                    run.datamodule,
                    run.model,
                    run.trainer,
                    run.history,
                    run.hp,
                    start,
                    trainer.current_epoch,
                    extra,
                )
        except Exception as err:  # noqa: BLE001
            record, _ = failure_record(run.cfg, err, run.start)
            write_record(Path(run.cfg.paths.output_dir), record)
        report(run.index, record)
