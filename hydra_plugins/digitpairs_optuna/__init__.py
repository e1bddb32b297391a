"""The Optuna sweeper: ``hparams_search=optuna`` searches a model's hyperparameters with
Optuna's samplers over Optuna's ask/tell API, keeping the study in a storage that a later
search continues (:mod:`digitpairs.sweeps.search`).

    python train.py -m hparams_search=optuna model=ws_aux
    python train.py -m hparams_search=optuna model=ws_aux hydra.sweeper.n_trials=10   # continue the study

Keys (those of Hydra's own ``hydra-optuna-sweeper`` where it has one): ``storage`` (an
SQLAlchemy URL, ``sqlite:///...``), ``study_name``, ``n_trials`` (trials this command
adds), ``n_jobs`` (trials launched at a time: one batch), ``sampler`` (``hydra/sweeper/
sampler=tpe|random|gp``, and its keys, e.g. ``hydra.sweeper.sampler.seed``), ``params``
(the search space in Hydra's sweep grammar: ``tag(log, interval(0.01, 0.81))``,
``interval(0, 1)``, ``choice(a, b)``, ``range(1, 5)``); and this sweeper's own: ``seeds``
(the seeds every trial trains with; its value is their mean validation accuracy) and
``heartbeat_interval`` (seconds between the live trials' heartbeats in the storage; a
trial silent for 3 intervals is recorded as failed by the next search).

Hydra instantiates sweepers only from the ``hydra_plugins`` package, hence this module.
"""

# no "from __future__ import annotations": Hydra scans this module outside sys.modules,
# where dataclasses need real types

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    """``hydra/sweeper/sampler=tpe`` (the default): ``optuna.samplers.TPESampler``."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Any = 0
    n_startup_trials: int = 10
    multivariate: bool = False
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    """``hydra/sweeper/sampler=random``: ``optuna.samplers.RandomSampler``."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: Any = 0


@dataclass
class GPSamplerConf:
    """``hydra/sweeper/sampler=gp``: ``optuna.samplers.GPSampler`` (a Gaussian process; torch)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Any = 0
    n_startup_trials: int = 10


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=digitpairs_optuna``; ``conf/hparams_search/optuna.yaml`` sets its values."""

    _target_: str = "hydra_plugins.digitpairs_optuna.OptunaSweeper"
    _recursive_: bool = False  # the sampler is built once the study is open: its seed depends on it
    defaults: list = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING  # from the defaults list: hydra/sweeper/sampler=tpe
    storage: Any = None
    study_name: Any = None
    n_trials: int = 20
    n_jobs: int = 2
    seeds: Any = field(default_factory=lambda: [0])
    heartbeat_interval: int = 10
    params: Any = field(default_factory=dict)


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="digitpairs_optuna", node=OptunaSweeperConf, provider="digitpairs")
for _name, _node in (("tpe", TPESamplerConf), ("random", RandomSamplerConf), ("gp", GPSamplerConf)):
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="digitpairs")


class OptunaSweeper(Sweeper):
    """Hydra's sweeper API over :func:`digitpairs.sweeps.search.search` (see the module doc)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        from hydra_plugins.digitpairs_sweeper import LostJobsRecorded

        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.launcher = LostJobsRecorded(launcher, hydra_context, config)  # a killed worker's jobs recorded

    def sweep(self, arguments: list[str]) -> Any:
        from digitpairs.sweeps.search import search

        return search(self, arguments)
