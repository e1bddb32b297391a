"""Training speed, three ways side by side, in one process.

    python benchmarks/speed/training_loop.py                      # ws_aux, ws, convnet; 1 thread and all cores
    python benchmarks/speed/training_loop.py --models ws_aux --threads 1 --epochs 10 --repeats 5 --json out.json

For each model, the same 1000 training pairs (real digits, normalised, in memory), the
same epochs and the same torch threads are timed three ways:

  (a) lightning  the project's training as train.py runs it: the Hydra config composed
                 with the compose API, then digitpairs.training.run.build() -> trainer.fit()
                 (loggers off and no validation, so the timed part does no disk I/O);
  (b) bare NCHW  a plain PyTorch loop as the recipe is usually written: NCHW tensors,
                 DataLoader(TensorDataset, batch_size=100, shuffle=True);
  (c) bare fast  a plain loop with the optimisations that (a) uses: channels-last
                 convolutions, whole batches cut from in-memory tensors, denormal
                 floats flushed to zero, glibc malloc keeping freed memory
                 (digitpairs/training/process_settings.py).

Each is warmed up for one epoch, then timed ``--repeats`` times over ``--epochs``
epochs, the three ways taking turns (a, b, c, a, b, c, ...) so that a slow spell of the
machine does not land on one way only; the median is reported as pairs/s (training pairs processed per second) and
GFLOP/s (3 x forward FLOPs per pair, the usual estimate of forward + backward).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from digitpairs.models.nets import ConvNet, TwoBranchNet  # noqa: E402

MODELS = ("ws_aux", "ws", "convnet")


def forward_flops(net: nn.Module, memory_format=torch.contiguous_format) -> float:
    """FLOPs (2 x multiply-adds) of Conv2d and Linear layers for one pair, forward only."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs += output.numel() // output.shape[0] * k
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(2, 2, 14, 14).contiguous(memory_format=memory_format)[:1])
    for h in handles:
        h.remove()
    return 2.0 * macs


def make_net(model: str) -> nn.Module:
    return ConvNet(2, 2) if model == "convnet" else TwoBranchNet(weight_sharing=True)


def loss_fn(model: str, out, target, classes, alpha=0.75, gamma=1.0) -> torch.Tensor:
    if model == "convnet":
        return gamma * F.cross_entropy(out, target)
    logits, digits = out
    loss = gamma * F.cross_entropy(logits, target)
    if model == "ws_aux":
        loss = loss + alpha * (
            F.cross_entropy(digits[:, 0], classes[:, 0]) + F.cross_entropy(digits[:, 1], classes[:, 1])
        )
    return loss


def set_malloc(keep: bool) -> None:
    """glibc malloc: keep freed memory (as the project does) or glibc's defaults."""
    import ctypes

    from digitpairs.training.process_settings import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_freed_memory

    if keep:
        keep_freed_memory()
    else:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


def bare_loop(model: str, data: tuple, epochs: int, fast: bool, seed: int = 0):
    """A plain PyTorch training loop; returns ``prepare(n) -> run`` (a fresh model each time)."""
    return lambda n: _bare_loop(model, data, n, fast, seed)


def _bare_loop(model: str, data: tuple, epochs: int, fast: bool, seed: int):
    torch.manual_seed(seed)
    fmt = torch.channels_last if fast else torch.contiguous_format
    net = make_net(model).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.09, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[math.floor(0.6 * epochs)], gamma=1e-3 / 0.09)
    x, target, classes = data
    if model == "convnet":
        x = x.contiguous(memory_format=fmt)
    loader = DataLoader(TensorDataset(x, target, classes), batch_size=100, shuffle=True)

    def batches():
        if not fast:
            yield from loader
            return
        perm = torch.randperm(len(target))
        for i in range(0, len(target), 100):
            idx = perm[i : i + 100]
            yield x[idx], target[idx], classes[idx]

    def run() -> None:
        torch.set_flush_denormal(fast)
        set_malloc(fast)
        net.train()
        for _ in range(epochs):
            for xb, tb, cb in batches():
                loss = loss_fn(model, net(xb), tb, cb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()

    return run


def lightning_fit(model: str, epochs: int):
    """The project's training as train.py builds it: the Hydra config, then
    ``digitpairs.training.run.build`` (checks, data, model, Trainer). Returns ``prepare(n)``,
    which builds all that for ``n`` epochs and returns the call to time,
    ``trainer.fit`` (a fresh model each time)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from digitpairs.training.run import build
    from digitpairs.utils.config import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()

    def prepare(n: int):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    f"model={model}",
                    f"trainer.max_epochs={n}",
                    "data.val_fraction=0",
                    "data.test_curve=false",
                    "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false",
                    "paths.output_dir=/tmp/digitpairs-bench",
                    f"model_name={model}",
                    "overrides=[]",
                    f"threads={torch.get_num_threads()}",
                ],
            )
        datamodule, net, trainer, _ = build(cfg, loggers=False)
        return lambda: trainer.fit(net, datamodule=datamodule)

    return prepare


def timed(ways: dict, epochs: int, repeats: int) -> dict[str, float]:
    """Median seconds per epoch of each way; the ways take turns, after a warm-up.

    Each way is ``prepare(n) -> run``: only ``run()`` is timed (building the model,
    the Trainer and the config is not training)."""
    for prepare in ways.values():
        prepare(1)()  # warm-up: allocator, oneDNN primitives, first-call costs
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(repeats):
        for way, prepare in ways.items():
            run = prepare(epochs)
            t = time.perf_counter()
            run()
            times[way].append((time.perf_counter() - t) / epochs)
    return {way: statistics.median(ts) for way, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("digitpairs").setLevel(logging.ERROR)
    from digitpairs.data import PairDataModule

    dm = PairDataModule(val_fraction=0.0)
    dm.setup()
    data = dm.sets["train"].tensors
    n_pairs = len(data[1])
    results = []
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, {n_pairs} training pairs ({dm.resolved_source}), "
        f"{args.epochs} epochs x median of {args.repeats}"
    )
    print(f"{'model':8} {'threads':>7} {'way':12} {'s/epoch':>8} {'pairs/s':>9} {'GFLOP/s':>8} {'vs (b)':>7}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model in args.models:
            flops = 3 * forward_flops(make_net(model))
            ways = {
                "(a) lightning": lightning_fit(model, args.epochs),
                "(b) bare NCHW": bare_loop(model, data, args.epochs, fast=False),
                "(c) bare fast": bare_loop(model, data, args.epochs, fast=True),
            }
            row = {"model": model, "threads": threads, "epochs": args.epochs, "pairs": n_pairs}
            row.update(timed(ways, args.epochs, args.repeats))
            for way in ways:
                pps = n_pairs / row[way]
                print(
                    f"{model:8} {threads:>7} {way:12} {row[way]:8.4f} {pps:9.0f} {pps * flops / 1e9:8.2f} "
                    f"{row['(b) bare NCHW'] / row[way]:6.2f}x"
                )
            row["ratio_a_over_b"] = row["(b) bare NCHW"] / row["(a) lightning"]
            row["ratio_a_over_c"] = row["(c) bare fast"] / row["(a) lightning"]
            row["gflop_per_pair_train"] = flops / 1e9
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
