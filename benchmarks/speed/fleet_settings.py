"""The fleet launcher's settings against each other: one sweep, timed once per setting.

    python benchmarks/speed/fleet_settings.py                 # 16 ws_aux runs: packs in parallel vs threads
    python benchmarks/speed/fleet_settings.py --sweep "experiment=study model=convnet seed=range(0,16)" \\
        --settings "hydra.launcher.n_jobs=2 threads=1" "hydra.launcher.n_jobs=1 threads=2"

For each setting (a string of overrides added to ``train.py -m <sweep> hydra/launcher=fleet``)
it runs the whole sweep into a fresh folder and prints its wall time (process start to
summary), the settings one after the other in the order given. The defaults compare the
launcher's default (two packs of 8 at a time, one thread each) with one pack of 16 on two
threads and with packs of 4.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SETTINGS = [
    "hydra.launcher.n_jobs=2 threads=1",
    "hydra.launcher.n_jobs=1 hydra.launcher.pack=16 threads=2",
    "hydra.launcher.n_jobs=2 hydra.launcher.pack=4 threads=1",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="experiment=study model=ws_aux seed=range(0,16)")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    args = parser.parse_args()
    print(f"sweep: train.py -m {args.sweep} hydra/launcher=fleet <setting>")
    print("| setting | wall time (s) |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(args.settings):
            cmd = [sys.executable, "train.py", "-m", *shlex.split(args.sweep), "hydra/launcher=fleet"]
            cmd += [*shlex.split(setting), f"hydra.sweep.dir={Path(tmp) / str(i)}"]
            start = time.perf_counter()
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if out.returncode != 0:
                sys.exit(f"{shlex.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
            print(f"| `{setting}` | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
