"""The shipped models: ``pretrained/<name>/model.ckpt``, usable without training.

=========== ====================================================================
name        what it is
=========== ====================================================================
``beyond``  ``recipe=beyond`` without its second member (``model.second=none``: the same
            networks, 3.5 MB smaller), the default of ``predict.py``
``ws_aux``  the study's ``ws_aux``: weight sharing and auxiliary losses
=========== ====================================================================

Both were trained on the study's protocol (1000 pairs of MNIST training digits, seed 0,
all 1000 pairs for training) by ``make pretrained`` (two runs in ``outputs/pretrained/<name>``);
each folder holds the checkpoint and
the run's ``metrics.json``, and ``pretrained/README.md`` is their model card.
``predict.py --model`` and ``evaluate.py ckpt_path=`` take these names or a path.
"""

from __future__ import annotations

from pathlib import Path

from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import PROJECT_ROOT, project_path

PRETRAINED_DIR = PROJECT_ROOT / "pretrained"
NAMES = ("beyond", "ws_aux")
DEFAULT = "beyond"


def pretrained_path(name: str) -> Path:
    """``pretrained/<name>/model.ckpt``.

    Raises:
        ConfigError: an unknown name, or a shipped model that is missing from the folder.
    """
    if name not in NAMES:
        raise ConfigError("--model", name, f"one of {', '.join(NAMES)}, or a checkpoint file or run folder")
    path = PRETRAINED_DIR / name / "model.ckpt"
    if not path.is_file():
        raise ConfigError("--model", name, f"a shipped model in {path.parent} (make pretrained rebuilds it)")
    return path


def resolve_model(name_or_path: str, key: str = "--model") -> Path:
    """A checkpoint file from a shipped model's name, a checkpoint file, or a run folder
    (its ``checkpoints/last.ckpt``); a relative path is relative to the working directory
    first, then to the project.

    Raises:
        ConfigError: a name that is neither a shipped model nor an existing path.
    """
    given = Path(name_or_path).expanduser()
    for path in (given, project_path(given)):
        if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
            return path / "checkpoints" / "last.ckpt"
        if path.is_file():
            return path
    if name_or_path in NAMES:
        return pretrained_path(name_or_path)
    raise ConfigError(
        key, name_or_path, f"one of {', '.join(NAMES)} (a shipped model), or an existing checkpoint file or run folder"
    )


# what a shipped checkpoint keeps: the model, its data module's normalisation and seed, and
# the project's own record (the random state, the optimiser and the loops are left out)
KEEP = (
    "state_dict",
    "hyper_parameters",
    "hparams_name",
    "datamodule_hyper_parameters",
    "PairDataModule",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)
MODEL_OF = {"digit_classifier": "beyond", "ws_aux": "ws_aux"}  # a run's model= -> the shipped name


def export(sweep_dir: Path, out_dir: Path = PRETRAINED_DIR) -> list[Path]:
    """Ship the finished seed-0 runs in the subfolders of ``sweep_dir`` (a sweep's jobs, or
    ``make pretrained``'s ``beyond/`` and ``ws_aux/``) as ``out_dir/<name>/model.ckpt`` and
    ``out_dir/<name>/metrics.json``.

    The checkpoint keeps what inference needs (``KEEP`` and the project's record without the
    random state, with the epochs done) and loads with ``torch.load(weights_only=True)``;
    it cannot resume a run (``train.py ckpt_path=`` refuses it).

    Raises:
        ConfigError: a folder without a finished seed-0 run of each model.
    """
    import json

    import torch

    from digitpairs.training.checkpoints import store as ckpt_io
    from digitpairs.utils.io import atomic_write, write_json

    written = []
    for job in sorted(Path(sweep_dir).glob("*/metrics.json")):
        metrics = json.loads(job.read_text())
        name = MODEL_OF.get(metrics.get("model"))
        if name is None or metrics.get("status") != "ok" or metrics.get("seed") != 0:
            continue
        ckpt = ckpt_io.load(job.parent / metrics["checkpoint"], key="sweep")
        slim = {k: ckpt[k] for k in KEEP if k in ckpt}
        # the loops are left out: the epochs done go into the record (Lightning's "epoch" is no count)
        slim[ckpt_io.KEY] = {k: v for k, v in ckpt[ckpt_io.KEY].items() if k != "rng"}
        slim[ckpt_io.KEY]["epochs"] = ckpt_io.epochs_done(ckpt)
        target = Path(out_dir) / name
        atomic_write(target / "model.ckpt", lambda tmp, slim=slim: torch.save(slim, tmp))
        shipped = {k: v for k, v in metrics.items() if k not in ("history", "hparams", "resumed_from")}
        write_json(target / "metrics.json", {**shipped, "checkpoint": "model.ckpt"})
        written.append(target / "model.ckpt")
    if {p.parent.name for p in written} != set(NAMES):
        raise ConfigError(
            "sweep",
            str(sweep_dir),
            f"a folder of finished seed-0 runs of each shipped model ({NAMES}), as make pretrained writes",
        )
    return written


if __name__ == "__main__":
    import sys

    from digitpairs.utils.errors import one_line_errors

    if len(sys.argv) != 2:
        sys.exit("usage: python -m digitpairs.inference.pretrained <folder of seed-0 runs, e.g. outputs/pretrained>")
    with one_line_errors():
        for path in export(Path(sys.argv[1])):
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
