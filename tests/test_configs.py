"""Hydra configs compose and instantiate through Hydra's compose API (no training).

Every option of ``conf/model/`` builds its LightningModule with the right network, the
data node builds a ``PairDataModule`` and the trainer node a Lightning ``Trainer``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import PROJECT_ROOT
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger

from digitpairs.data import PairDataModule
from digitpairs.models.lightning_modules import ConvNetModule, DigitClassifierModule, WSAuxModule, WSModule
from digitpairs.utils.config import CONF_DIR, group_options

MODEL_FILES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))
EXPECTED = {  # option -> (class, parameters of .net, weight sharing); a new model adds its line here
    "convnet": (ConvNetModule, 91_406, None),
    "ws": (WSModule, 103_128, True),
    "ws_aux": (WSAuxModule, 103_128, True),
    "aux": (WSAuxModule, 195_054, False),
    "digit_classifier": (DigitClassifierModule, 94_314, None),
}


def test_model_group_options():
    assert CONF_DIR == PROJECT_ROOT / "conf"
    assert set(group_options("model")) == set(MODEL_FILES) == set(EXPECTED)
    assert {"aux", "convnet", "ws", "ws_aux"} <= set(EXPECTED)
    assert set(group_options("logger")) == {"none", "tensorboard"}


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_composes_and_instantiates(name, compose_cfg):
    cfg = compose_cfg(f"model={name}", "optim.lr1=0.05", "loss.alpha=0.25", "loss.gamma=0.5")
    assert cfg.model_name == name
    assert cfg.overrides == [f"model={name}", "optim.lr1=0.05", "loss.alpha=0.25", "loss.gamma=0.5"]
    model = instantiate(cfg.model)
    cls, count, sharing = EXPECTED[name]
    assert type(model) is cls
    assert sum(p.numel() for p in model.net.parameters()) == count
    # The model takes its numbers from the optim and loss groups.
    assert model.hparams.lr1 == 0.05 and model.hparams.lr2 == 0.001 and model.hparams.weight_decay == 5e-4
    assert model.hparams.gamma == 0.5  # digit_classifier takes it but has no comparison loss
    assert model.hparams.switch_fraction == 0.6
    assert model.hparams.literal_softmax is False
    if sharing is not None:
        assert model.net.weight_sharing is sharing
    if cls in (WSAuxModule, DigitClassifierModule):
        assert model.hparams.alpha == 0.25


def test_defaults_are_the_study_recipe(compose_cfg):
    cfg = compose_cfg()
    assert cfg.model_name == "ws_aux" and cfg.seed == 0
    assert (cfg.optim.lr1, cfg.optim.lr2, cfg.optim.weight_decay, cfg.optim.switch_fraction) == (0.09, 0.001, 5e-4, 0.6)
    assert (cfg.loss.alpha, cfg.loss.gamma) == (0.75, 1.0)
    assert (cfg.data.n_pairs, cfg.data.val_fraction, cfg.data.batch_size) == (1000, 0.2, 100)
    assert cfg.trainer.max_epochs == 50
    assert cfg.paths.root == str(PROJECT_ROOT)


def test_data_trainer_logger_and_callbacks_instantiate(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "data.source=idx",
        "data.n_pairs=500",
        "seed=7",
        "trainer.max_epochs=3",
        "+callbacks.early_stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.early_stop.monitor=val/acc",
        "+callbacks.early_stop.mode=max",
    )
    dm = instantiate(cfg.data)
    assert isinstance(dm, PairDataModule)
    assert (dm.source, dm.n_pairs, dm.n_val, dm.batch_size, dm.seed) == ("idx", 500, 100, 100, 7)
    assert cfg.paths.output_dir == str(tmp_path / "run")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    from digitpairs.training.checkpoints.preemption import CheckpointOnSignal  # default: inert outside SLURM

    assert [type(c) for c in callbacks] == [CheckpointOnSignal, EarlyStopping]
    assert callbacks[1].monitor == "val/acc" and callbacks[1].mode == "max"
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert [type(lg) for lg in loggers] == [TensorBoardLogger]
    assert Path(loggers[0].log_dir) == tmp_path / "run" / "ws_aux" / "seed=07"  # TensorBoard run <model>/seed=NN
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_epochs == 3 and trainer.default_root_dir == str(tmp_path / "run")
    assert trainer.num_sanity_val_steps == 0 and trainer.checkpoint_callback is None


def test_logger_none_composes_to_no_logger(compose_cfg):
    cfg = compose_cfg("logger=none", "model=convnet")
    assert not cfg.get("logger")
    assert cfg.model_name == "convnet"
