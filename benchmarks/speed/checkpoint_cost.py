"""What saving ``checkpoints/last.ckpt`` every epoch costs, as a share of a run's training time.

    python benchmarks/speed/checkpoint_cost.py                         # ws_aux and convnet, 20 epochs, 1 thread
    python benchmarks/speed/checkpoint_cost.py --models ws_aux --epochs 50 --every 1 5

Each run is the study's setting (``experiment=study``: no validation split, the test
curve every 5 epochs) built by ``digitpairs.training.run.build`` as ``train.py`` builds it. The
time spent inside ``LastCheckpoint.save`` (serialise, write a temp file, rename) is
summed and divided by the time of ``trainer.fit``. It prints one line per model and
``checkpoint_every`` value. The bound is 2 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def measure(model: str, epochs: int, every: int, threads: int, out_dir: str) -> dict[str, float]:
    """Train once; return fit seconds, seconds inside the checkpoint saves and the save count."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from digitpairs.training.checkpoints.resume import LastCheckpoint
    from digitpairs.training.run import build
    from digitpairs.utils.config import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=study",
                f"model={model}",
                f"trainer.max_epochs={epochs}",
                f"checkpoint_every={every}",
                "paths.output_dir=" + out_dir,
                f"model_name={model}",
                "overrides=[]",
                f"threads={threads}",
            ],
        )
    datamodule, net, trainer, _ = build(cfg, loggers=False)
    last = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))
    spent, count, save = [0.0], [0], last.save

    def timed_save(tr):
        start = time.perf_counter()
        save(tr)
        spent[0] += time.perf_counter() - start
        count[0] += 1

    last.save = timed_save
    start = time.perf_counter()
    trainer.fit(net, datamodule=datamodule)
    return {"fit_s": time.perf_counter() - start, "save_s": spent[0], "saves": count[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ws_aux", "convnet"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    for model in args.models:
        for every in args.every:
            with tempfile.TemporaryDirectory() as tmp:
                measure(model, 2, every, args.threads, tmp)  # warm-up: first-call costs
                r = measure(model, args.epochs, every, args.threads, tmp)
            share = 100 * r["save_s"] / r["fit_s"]
            print(
                f"{model:8s} checkpoint_every={every}: {r['saves']} saves, "
                f"{1000 * r['save_s'] / max(r['saves'], 1):.1f} ms "
                f"each, {r['save_s']:.2f} s of {r['fit_s']:.2f} s fit = {share:.2f} % "
                f"({1000 * r['fit_s'] / args.epochs:.0f} ms per epoch)"
            )


if __name__ == "__main__":
    main()
