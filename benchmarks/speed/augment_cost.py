"""What the per-digit affine augmentation (kornia, ``digitpairs.data.augment``) costs per training step.

The project prefers a well-kept library for the per-sample warp unless it costs more than
10 % of a step. This times, on one torch thread, a batch of 100 pairs (200 digits):

- the augmentation alone (``RandomDigitAffine``: kornia's ``RandomAffine``);
- one training step (forward, loss, backward, SGD step) of each model given, built from
  its Hydra config exactly as ``train.py`` builds it;

and prints the augmentation's share of an augmented step. Medians of ``--repeats`` timings
of ``--steps`` steps each, after a warm-up::

    python benchmarks/speed/augment_cost.py                       # ws_aux and the best model (recipe=beyond)
    python benchmarks/speed/augment_cost.py --models "model=ws_aux" "recipe=beyond"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, steps: int, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["model=ws_aux", "recipe=beyond"], help="override lines, one per model (quoted)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from digitpairs.data.augment import RandomDigitAffine
    from digitpairs.training.process_settings import configure_cpu
    from digitpairs.utils.config import CONF_DIR, register_resolvers

    configure_cpu(1, True, True)
    torch.manual_seed(0)
    x = torch.randn(100, 2, 14, 14)
    target, classes = torch.randint(0, 2, (100,)), torch.randint(0, 10, (100, 2))
    augment = RandomDigitAffine(1.5, 12.0, 0.1).train()
    aug_ms = _median_ms(lambda: augment(x, fill=-0.42), args.steps, args.repeats)
    print(f"augmentation (kornia RandomAffine, 200 digits): {aug_ms:.2f} ms per batch of 100 pairs")
    register_resolvers()
    for line in args.models:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=line.split() + ["hydra.runtime.output_dir=/tmp"], return_hydra_config=True)
        model = instantiate(cfg.model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt) -> None:
            logits, digits = model(x)
            loss = sum(model.losses(logits, digits, target, classes).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step_ms = _median_ms(step, args.steps, args.repeats)
        print(
            f"{line}: training step {step_ms:.2f} ms; augmentation = {100 * aug_ms / (aug_ms + step_ms):.1f} % "
            f"of an augmented step"
        )


if __name__ == "__main__":
    main()
