"""The fleet launcher: ``hydra/launcher=fleet`` trains a sweep's runs side by side, several
to one packed network (:mod:`digitpairs.sweeps.fleet`).

    python train.py -m hydra/launcher=fleet seed=range(0,8) hydra.launcher.pack=8 threads=1

Keys: ``pack`` (at most this many runs per packed network), ``n_jobs`` (packs trained at a
time, each in its own process; -1: one per core), ``strategy`` (how convolutional stages
of a pack run: ``auto``, ``loop`` or ``grouped``; :mod:`digitpairs.models.packed`).

Hydra instantiates launchers only from the ``hydra_plugins`` package, hence this module.
"""

# no "from __future__ import annotations": Hydra scans this module outside sys.modules,
# where dataclasses need real types

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class FleetLauncherConf:
    """``hydra/launcher=fleet``: see :mod:`digitpairs.sweeps.fleet`. The defaults were chosen by
    ``benchmarks/speed/fleet_speed.py`` and the study timed both ways (docs/speed.md)."""

    _target_: str = "hydra_plugins.digitpairs_fleet.FleetLauncher"
    pack: int = 8
    n_jobs: int = -1
    strategy: str = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="fleet", node=FleetLauncherConf, provider="digitpairs")


class FleetLauncher(Launcher):
    """Hydra's launcher API over :func:`digitpairs.sweeps.fleet.launch`."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from digitpairs.sweeps.fleet import launch

        return launch(self, job_overrides, initial_job_idx)
