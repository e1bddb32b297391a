"""Shared fixtures: project paths, a ``train.py`` subprocess runner and Hydra composition.

Nothing here writes into ``outputs/``: subprocess runs get ``hydra.run.dir`` under
pytest's ``tmp_path``, and composed configs get their output folder there too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores (pytest-xdist):
    # one torch thread per worker and per training it starts (OMP_NUM_THREADS is inherited by
    # subprocesses), or the workers' spinning threads fight over the cores (README: threads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IDX_DIR = PROJECT_ROOT / "data" / "mnist"  # the four MNIST IDX files of the repository (data/mnist/README.md)

# The first ten labels of the MNIST test set (t10k-labels-idx1-ubyte), a well-known fact.
T10K_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
# Class counts of the MNIST test set, digits 0-9 (data/mnist/README.md).
T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def run_train(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python train.py *args`` in the project root; its run folder is ``tmp_path/run``.

    Returns the ``CompletedProcess`` (text stdout and stderr); never raises on a
    non-zero exit, so tests can assert on the exit code.
    """
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def load_script(relpath: str, name: str):
    """The project script ``relpath`` (e.g. ``predict.py``) loaded as module ``name`` in this
    process, so tests can call its functions without starting a subprocess."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(run_dir: Path) -> dict:
    """The ``metrics.json`` of a run folder."""
    return json.loads((run_dir / "metrics.json").read_text())


def compose_config(overrides: list[str], output_dir: Path, hydra_node: bool = False, config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` (``train`` by default) with ``overrides``, as
    ``train.py`` would, fully resolved.

    The ``${hydra:...}`` interpolations (run folder, model choice, overrides) are resolved
    against a temporary ``HydraConfig`` whose output folder is ``output_dir``; the
    returned config has no ``hydra`` node and no interpolations left. ``hydra_node=True``
    returns the composed config with its ``hydra`` node instead, unresolved.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from digitpairs.utils.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if hydra_node:
        return cfg
    cfg.hydra.runtime.output_dir = str(output_dir)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    finally:
        hydra_config.cfg = previous
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable:
    """``compose_cfg(*overrides)``: a resolved config whose run folder is ``tmp_path/run``."""

    def make(*overrides: str):
        return compose_config(list(overrides), tmp_path / "run")

    return make
