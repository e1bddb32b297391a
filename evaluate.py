"""Evaluate trained checkpoints on fresh test pairs of any source.

    python evaluate.py ckpt_path=outputs/runs/<time>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=outputs/multirun/<study> data.n_pairs=500 seed=7
    python evaluate.py --help                                 # every key (conf/evaluate.yaml)

Pairs are normalised with each checkpoint's stored mean and std. Prints one line per
checkpoint; leaves metrics.json (and, for a sweep folder, summary.csv and report.md) in
outputs/evaluate/<time>/. See digitpairs/inference/evaluate.py.
"""

import sys

import hydra
from omegaconf import DictConfig

from digitpairs.utils.config import (
    check_command_line,
    check_group_choices,
    check_output_dirs,
    claim_command_line_dirs,
    register_resolvers,
)
from digitpairs.utils.errors import one_line_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from digitpairs.inference.evaluate import run  # imports torch and Lightning

    run(cfg)


if __name__ == "__main__":
    register_resolvers()
    with one_line_errors():
        check_group_choices(sys.argv[1:])
        check_output_dirs(sys.argv[1:])  # never into a finished run's or evaluation's folder
        composed = check_command_line(sys.argv[1:], config_name="evaluate")  # Hydra's own refusals, as one line
        # the evaluation's folder: writable, and this process's alone until it ends
        claim_command_line_dirs(composed, sys.argv[1:])
    main()
