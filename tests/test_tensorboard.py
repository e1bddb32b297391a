"""TensorBoard as a user sees it: a small sweep made here, served by a real TensorBoard
on a free loopback port, read through the HTTP API that the browser's HPARAMS tab uses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

SWEEP = [
    "experiment=study",
    "model=convnet,ws",
    "seed=0,1",
    "trainer.max_epochs=2",
    "data.n_pairs=200",
    "data.eval_batch_size=200",
    "threads=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served_sweep(tmp_path_factory):
    """(base URL, sweep folder, sweep output): the sweep above, with TensorBoard serving it."""
    sweep_dir = tmp_path_factory.mktemp("tb") / "sweep"
    out = subprocess.run(
        [sys.executable, "train.py", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    port = free_port()
    tb = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tb), "--logdir", str(sweep_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # TensorBoard needs a few seconds to start and load the runs
            try:
                if len(get(f"{base}/data/runs")) == 5:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield base, sweep_dir, out.stdout + out.stderr
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_each_runs_hparams_yaml_holds_its_hyperparameters(served_sweep):
    import yaml

    _, sweep_dir, _ = served_sweep
    files = sorted(sweep_dir.glob("*/*/seed=*/hparams.yaml"))
    assert len(files) == 4
    for f in files:
        hp = yaml.safe_load(f.read_text())
        assert (hp["model_name"], hp["seed"]) == (f.parent.parent.name, int(f.parent.name.split("=")[1]))
        assert (hp["optim.lr1"], hp["loss.alpha"], hp["trainer.max_epochs"]) == (0.09, 0.75, 2)


def test_runs_are_named_by_job_model_and_seed(served_sweep):
    base, sweep_dir, _ = served_sweep
    runs = get(f"{base}/data/runs")
    # the root run "." holds the sweep's experiment summary; job folders sort as numbers
    assert sorted(runs) == [".", "000/convnet/seed=00", "001/convnet/seed=01", "002/ws/seed=00", "003/ws/seed=01"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["000", "001", "002", "003"]


def test_hparams_tab_opens_on_the_varied_keys_then_the_metrics(served_sweep):
    base, _, _ = served_sweep
    exp = get(f"{base}/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})
    infos = exp["hparamInfos"]
    assert [i["name"] for i in infos] == ["model_name", "seed"]  # what the sweep varied; nothing constant
    assert all(i["differs"] for i in infos)
    assert infos[0]["type"] == "DATA_TYPE_STRING" and infos[0]["domainDiscrete"] == ["convnet", "ws"]
    assert infos[1]["type"] == "DATA_TYPE_FLOAT64" and infos[1]["domainDiscrete"] == [0, 1]
    # only the metrics the runs have: experiment=study has no validation split, so no final/val_acc
    assert [m["name"]["tag"] for m in exp["metricInfos"]] == ["final/test_acc", "final/train_acc"]


def test_session_groups_hold_each_run_with_its_values(served_sweep):
    base, sweep_dir, _ = served_sweep
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    groups = get(
        f"{base}/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 100},
    )["sessionGroups"]
    assert sorted(g["name"] for g in groups) == [
        "000/convnet/seed=00",
        "001/convnet/seed=01",
        "002/ws/seed=00",
        "003/ws/seed=01",
    ]
    for g in groups:
        job = sweep_dir / g["name"].split("/")[0]
        m = json.loads((job / "metrics.json").read_text())
        hp = g["hparams"]
        assert (hp["model_name"], hp["seed"]) == (m["model"], m["seed"])
        assert hp["experiment"] == "study"  # the group choice, not "None"
        assert hp["model.literal_softmax"] is False  # a boolean, not 0.0
        assert hp["data.source"] == "idx" and hp["trainer.max_epochs"] == 2
        values = {v["name"]["tag"]: v["value"] for v in g["metricValues"]}
        assert set(values) == {"final/test_acc", "final/train_acc"}  # no NaN column
        assert values["final/test_acc"] == pytest.approx(m["test_acc"])
        assert values["final/train_acc"] == pytest.approx(m["train_acc"])


def test_scalars_have_one_place_for_each_final_number_and_no_placeholder(served_sweep):
    base, _, _ = served_sweep
    tags = get(f"{base}/data/plugin/scalars/tags")
    run_tags = tags["000/convnet/seed=00"]
    assert not [t for t in run_tags if t.startswith("hp/")]  # no NaN placeholders, no copy of the final numbers
    assert {"final/test_acc", "final/train_acc", "train/loss", "lr"} <= set(run_tags)
    points = get(f"{base}/data/plugin/scalars/scalars?run=000/convnet/seed%3D00&tag=final/test_acc")
    assert len(points) == 1 and points[0][2] == points[0][2]  # one point, not NaN


def test_sweep_jobs_leave_lightnings_info_lines_out(served_sweep):
    text = served_sweep[2]
    assert "test accuracy" in text  # each job's own result line is there
    for line in ("GPU available", "TPU available", "`Trainer.fit` stopped", "srun"):
        assert line not in text
