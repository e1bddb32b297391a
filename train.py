"""Train one model on pairs of MNIST digits, or sweep many with ``-m``.

    python train.py model=ws_aux                       # one run (see conf/train.yaml)
    python train.py -m optim.lr1=0.01,0.09 seed=0,1    # a sweep (multirun)
    python train.py ckpt_path=<run>/checkpoints/last.ckpt   # resume a run (or extend it)
    python train.py --help                             # every config group and key

Each run leaves a folder under outputs/ (metrics.json, checkpoint, TensorBoard events).
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from digitpairs.training.checkpoints.resume_command import resume_arguments
from digitpairs.utils.config import (
    check_command_line,
    check_group_choices,
    check_output_dirs,
    claim_command_line_dirs,
    register_resolvers,
)
from digitpairs.utils.errors import one_line_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from digitpairs.training.run import run  # imports torch and Lightning: once per worker, not per job

    logging.raiseExceptions = False  # a log file on a full disk: the run says so once, not a traceback per line
    metrics = run(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    return metrics.get("test_acc")


if __name__ == "__main__":
    register_resolvers()
    with one_line_errors():
        check_group_choices(sys.argv[1:])
        check_output_dirs(sys.argv[1:])  # never a second run or sweep into a finished one's folder
        sys.argv[1:] = resume_arguments(sys.argv[1:])  # ckpt_path=...: the checkpoint's own overrides first
        composed = check_command_line(sys.argv[1:])  # Hydra's own refusals, as one line
        # the run or sweep folder: writable, and this process's alone until it ends
        claim_command_line_dirs(composed, sys.argv[1:])
    main()
