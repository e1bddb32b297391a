"""Training speed of a fleet's pack against its runs one after another, per training step.

    python benchmarks/speed/fleet_speed.py                         # ws_aux, K = 1, 2, 4, 8, 16, one thread
    python benchmarks/speed/fleet_speed.py --models ws_aux convnet recipe=beyond --packs 1 8 --epochs 3
    python benchmarks/speed/fleet_speed.py --accelerator gpu       # on a GPU (strategy grouped)

For each model and each K, the same K runs (seeds 0..K-1, the study's data: 1000 training
pairs, batches of 100) are built as ``train.py`` builds them, then their training epochs
are timed two ways, taking turns so that a slow spell of the machine does not land on one
way only:

  solo   the K runs one after another, each its own ``trainer.fit`` (Lightning, as a sweep's
         jobs train), validation and checkpoints off;
  pack   one ``trainer.fit`` of the K runs packed (:class:`digitpairs.training.pack.PackModule`),
         the same settings.

It prints milliseconds per training step of one run (a batch of 100 pairs: forward,
backward, update) for each way, their ratio, and the medians over ``--repeats``. Building
runs, data and tests are not timed here; ``benchmarks/speed/fleet_vs_joblib.py`` times whole
sweeps. ``--profile`` also prints, per model and K, the share of a pack's time spent in
convolutions (forward and backward, torch's profiler), the part that packing cannot shrink.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def compose(overrides: list[str], out: Path):
    """The resolved config of ``train.py`` with ``overrides``, run folder ``out``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from digitpairs.utils.config import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg


def configs(model: str, k: int, epochs: int, accelerator: str, tmp: Path, precision: str = "32-true") -> list:
    choice = [model] if "=" in model else [f"model={model}"]
    common = [
        *choice,
        "data.val_fraction=0",
        "data.test_curve=false",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={accelerator}",
        f"trainer.precision={precision}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=none",
        f"checkpoint_every={10 * epochs}",
        f"threads={torch.get_num_threads()}",
        "model.second=none" if "beyond" in model else "seed=0",
    ]
    return [compose([*common, f"seed={s}"], tmp / f"{s}") for s in range(k)]


def time_solo(cfgs) -> float:
    """Seconds of ``trainer.fit`` of each run, one after the other (built untimed)."""
    from digitpairs.training.run import build

    total = 0.0
    for cfg in cfgs:
        dm, model, trainer, _ = build(cfg, loggers=False, quiet=True)
        t = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        total += time.perf_counter() - t
    return total


def time_pack(cfgs, strategy: str, during=None) -> float:
    """Seconds of one ``trainer.fit`` of the runs packed (built untimed), inside the context
    manager ``during`` if given."""
    from contextlib import nullcontext

    from digitpairs.training.pack import PackModule, build_run, pack_trainer

    runs = [build_run(i, cfg) for i, cfg in enumerate(cfgs)]
    module = PackModule(runs, strategy)
    trainer = pack_trainer(cfgs[0], [cfg.checkpoint_every for cfg in cfgs])
    with during or nullcontext():
        t = time.perf_counter()
        trainer.fit(module)
        return time.perf_counter() - t


def conv_share(cfgs, strategy: str) -> float:
    """The share of a pack's ``trainer.fit`` self CPU time spent in convolutions."""
    from torch.profiler import profile

    prof = profile()
    time_pack(cfgs, strategy, during=prof)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ws_aux"], help="model names, or recipe=beyond")
    parser.add_argument("--packs", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="runs per pack, K")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true", help="trainer.precision (bf16-mixed: AMX CPUs, GPUs)")
    parser.add_argument("--strategy", default="auto", choices=["auto", "loop", "grouped"])
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--profile", action="store_true", help="also print the convolutions' share of a pack's time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    import tempfile

    steps_per_epoch = 10  # 1000 training pairs, batches of 100
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(
        f"device: {device}, torch {torch.__version__}, {args.threads} thread(s), {args.precision}, "
        f"strategy {args.strategy}, {args.epochs} epochs per timing"
    )
    print("| model | K | solo (ms per run-step) | pack (ms per run-step) | pack vs solo |")
    print("|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for k in args.packs:
                cfgs = configs(model, k, args.epochs, args.accelerator, Path(tmp), args.precision)
                time_pack(configs(model, k, 1, args.accelerator, Path(tmp), args.precision), args.strategy)  # warm-up
                solo, packed = [], []
                for _ in range(args.repeats):
                    solo.append(time_solo(cfgs))
                    packed.append(time_pack(cfgs, args.strategy))
                per_step = 1000 / (k * args.epochs * steps_per_epoch)
                s, p = statistics.median(solo) * per_step, statistics.median(packed) * per_step
                rows.append({"model": model, "K": k, "solo_ms": s, "pack_ms": p, "speedup": s / p, "device": device})
                print(f"| {model} | {k} | {s:.1f} | {p:.1f} | {s / p:.2f}x |", flush=True)
                if args.profile:
                    share = conv_share(cfgs, args.strategy)
                    rows[-1]["conv_share"] = share
                    print(f"(convolutions: {100 * share:.0f} % of the pack's time)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
