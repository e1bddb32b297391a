"""Evaluate trained checkpoints on fresh test pairs of any source.

    python evaluate.py ckpt_path=outputs/runs/<time>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=outputs/multirun/<study> data.source=idx data.root=../shared/data/mnist
    python evaluate.py --help                                 # every key (conf/evaluate.yaml)

Pairs are normalised with each checkpoint's stored mean and std. Prints one line per
checkpoint; leaves metrics.json (and, for a sweep folder, summary.csv and report.md) in
outputs/evaluate/<time>/. See digitpairs/evaluate.py.
"""

import sys

import hydra
from omegaconf import DictConfig

from digitpairs.config import check_group_choices, register_resolvers
from digitpairs.errors import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from digitpairs.evaluate import run  # imports torch and Lightning

    run(cfg)


if __name__ == "__main__":
    register_resolvers()
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
