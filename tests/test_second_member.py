"""The second kind of member: scattering features into the affine space classifier
(``model.second=scatter_pca``, in ``recipe=beyond``) or an RBF SVM (``model.second=scatter_svm``)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import PROJECT_ROOT

from digitpairs.data import load_pools
from digitpairs.models.lightning_modules import DigitClassifierModule
from digitpairs.models.scatter import AffinePCA, KernelSVM, Scattering, ScatterPCA, ScatterSVM, couple
from digitpairs.training.run import instantiate_checked
from digitpairs.utils.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    """600 training digits (60 per class) and 300 test digits of MNIST, normalised."""
    train, test, _ = load_pools("auto", str(PROJECT_ROOT / "data" / "mnist"))
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:60] for c in range(10)])
    mean, std = train.images[idx].mean(), train.images[idx].std()
    norm = lambda a: ((a - mean) / std).unsqueeze(1)  # noqa: E731
    return norm(train.images[idx]), train.labels[idx], norm(test.images[:300]), test.labels[:300]


def test_kymatio_2d_frontend_gives_729_features_per_digit():
    """The entry point this project uses (not ``kymatio.torch``, whose 3D code needs a
    SciPy function removed in SciPy 1.15): fails loudly if a kymatio release moves it."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    x = torch.rand(3, 14, 14)
    assert ScatteringTorch2D(J=2, shape=(14, 14))(x).shape == (3, 81, 3, 3)
    f = Scattering(2)(x.unsqueeze(1))
    assert f.shape == (3, 729) and f.dtype == torch.float32
    assert Scattering(1)(x.unsqueeze(1)).shape == (3, 9 * 7 * 7)


def test_svm_probabilities_are_libsvms_and_a_distribution(digits):
    from sklearn.svm import SVC

    x, y, xt, yt = digits
    member = ScatterSVM(J=2, C=10.0).fit(x, y)
    p = member(xt)
    assert p.shape == (300, 10) and p.dtype == torch.float32
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(300), atol=1e-5)
    assert (p.argmax(1) == yt).float().mean() > 0.85  # 600 training digits: 0.93 measured
    # the same numbers as scikit-learn's own predict_proba and decision_function
    f_train = ((member.features(x) - member.mean) / member.std).double().numpy()
    f_test = (member.features(xt) - member.mean) / member.std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        svc = SVC(kernel="rbf", C=10.0, gamma="scale", probability=True, random_state=0)
        svc.fit(f_train, y.numpy())
        svc.decision_function_shape = "ovo"
        ref = torch.from_numpy(svc.predict_proba(f_test.double().numpy()))
        dec = torch.from_numpy(svc.decision_function(f_test.double().numpy()))
    assert torch.allclose(member.svm.decision(f_test), dec, rtol=0, atol=1e-9)
    assert torch.allclose(member.svm(f_test), ref, rtol=0, atol=1e-9)


def test_coupling_of_consistent_pairwise_probabilities_recovers_the_classes():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    r = p.unsqueeze(2) / (p.unsqueeze(2) + p.unsqueeze(1))  # r[i, j] = p_i / (p_i + p_j)
    assert torch.allclose(couple(r), p, atol=1e-3)


def test_svm_needs_every_class(digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="every digit 0-9"):
        KernelSVM().fit(torch.randn(20, 5), torch.arange(20) % 9, C=1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        ScatterSVM()(x[:2])


def test_affine_space_distances_are_the_residuals_off_each_class_plane():
    """Class c's points lie on a plane through c * e_0 spanned by e_1 and e_2: with dim=2 a
    point's squared distance to its own class is 0, to class k the squared distance between
    the parallel planes, (c - k)^2, plus nothing else; with dim=1 the e_2 part is left over."""
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(10).repeat_interleave(30)
    f = torch.zeros(300, 6)
    f[:, 0] = classes.float()
    f[:, 1:3] = torch.randn(300, 2, generator=g)
    pca = AffinePCA().fit(f, classes, dim=2)
    d = pca.distances(f)
    expected = (classes.float().unsqueeze(1) - torch.arange(10).float()) ** 2
    assert torch.allclose(d, expected, atol=1e-4)
    p = pca(f, temperature=0.5)
    assert torch.allclose(p, torch.softmax(-expected / 0.5, 1), atol=1e-4)
    assert (p.argmax(1) == classes).all()
    one = AffinePCA().fit(f, classes, dim=1).distances(f)  # one of the two directions: the other's part remains
    assert (one >= expected - 1e-4).all() and (one - expected).amin() < (one - expected).amax()
    with pytest.raises(ValueError, match="every digit 0-9"):
        AffinePCA().fit(f[:270], classes[:270], dim=2)


def test_affine_space_member_is_a_distribution_and_learns_real_digits(digits):
    x, y, xt, yt = digits
    member = ScatterPCA(J=2, dim=20, temperature=6.0).fit(x, y)  # 60 digits per class: 20 directions
    p = member(xt)
    assert p.shape == (300, 10) and p.dtype == torch.float32
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(300), atol=1e-5)
    assert (p.argmax(1) == yt).float().mean() > 0.9  # 600 training digits: 0.963 measured
    # more directions than a class has digits: the extra ones are zero, and the nearest space is the same
    many = ScatterPCA(J=2, dim=100, temperature=6.0).fit(x, y)
    assert (many.pca.basis[:, 60:] == 0).all() and many(xt).shape == (300, 10)
    with pytest.raises(RuntimeError, match="not fitted"):
        ScatterPCA()(x[:2])


def fitted_module(digits, weight: float, second: str = "scatter_svm") -> DigitClassifierModule:
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = DigitClassifierModule(second=second, second_weight=weight, tta=2).eval()
    if model.second is not None:
        model.second.fit(x, y)
    return model


@pytest.mark.parametrize("second", ["scatter_pca", "scatter_svm"])
def test_checkpoint_round_trip_is_exact_with_weights_only(second, digits, tmp_path):
    _, _, xt, _ = digits
    model = fitted_module(digits, 0.4, second)
    pairs = xt[:200].reshape(100, 2, 14, 14)
    logits, digit_logits = model(pairs)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    fresh = DigitClassifierModule(**ckpt["hyper_parameters"])  # a fresh member: empty buffers
    assert not fresh.second.fitted
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    again = fresh(pairs)
    assert torch.equal(again[0], logits) and torch.equal(again[1], digit_logits)
    if second == "scatter_svm":
        assert ckpt["state_dict"]["second.svm.support"].dtype == torch.float64
    else:
        assert ckpt["state_dict"]["second.pca.basis"].shape == (10, 120, 729)


@pytest.mark.parametrize("second", ["scatter_pca", "scatter_svm"])
def test_weight_zero_is_the_cnn_exactly_and_weight_one_the_member(second, digits):
    _, _, xt, _ = digits
    pairs = xt[:200].reshape(100, 2, 14, 14)
    recipe = fitted_module(digits, 0.0, second="none")
    zero = fitted_module(digits, 0.0, second)
    assert all(torch.equal(a, b) for a, b in zip(recipe(pairs), zero(pairs), strict=True))
    half = fitted_module(digits, 0.5, second)
    assert not torch.equal(half(pairs)[1], recipe(pairs)[1])
    one = fitted_module(digits, 1.0, second)
    p_svm = one.second(pairs.reshape(-1, 1, 14, 14)).view(100, 2, 10)
    assert torch.allclose(one(pairs)[1].exp(), p_svm, atol=1e-6)
    mixed = 0.5 * recipe(pairs)[1].softmax(-1) + 0.5 * p_svm
    assert torch.allclose(half(pairs)[1].exp(), mixed, atol=1e-6)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.second=knn", "model.second"),
        ("model.second_weight=1.5", "model.second_weight"),
        ("model.second_weight=-0.1", "model.second_weight"),
        ("model.second_copies=0", "model.second_copies"),
        ("model.second_copies=2.5", "model.second_copies"),
        ("model.second_C=0", "model.second_C"),
        ("model.second_J=3", "model.second_J"),
        ("model.second_dim=0", "model.second_dim"),
        ("model.second_dim=730", "model.second_dim"),
        ("model.second_temperature=0", "model.second_temperature"),
        ("model.second_temperature=-1", "model.second_temperature"),
    ],
)
def test_bad_second_member_keys_name_the_key(override, key, compose_cfg):
    cfg = compose_cfg("recipe=beyond", override)
    with pytest.raises(ConfigError, match=key):
        instantiate_checked(cfg.model)


@pytest.mark.slow
def test_bad_second_member_key_is_one_line_and_exit_2(tmp_path):
    from conftest import run_train

    result = run_train(["recipe=beyond", "model.second_weight=2"], tmp_path, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.second_weight" in lines[0] and "[0, 1]" in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, weight, key, shape",
    [("beyond", "0.4", "second.pca.basis", (10, 120, 729)), ("beyond_svm", "0.2", "second.svm.support", (None, 729))],
)
def test_a_short_run_with_the_member_on_real_digits(recipe, weight, key, shape, tmp_path):
    """The recipe with its member, 3 epochs on 300 pairs: metrics.json holds every rule's
    accuracy, the checkpoint holds the member, evaluate.py reproduces the run's own figure
    and the validation table of benchmarks/accuracy/second_member.py its validation errors."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        f"recipe={recipe}",
        "model.second_copies=2",
        "model.tta=2",
        "data.n_pairs=300",
        "trainer.max_epochs=3",
        "threads=1",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["decision"] == "prob"
    for rule in ("comparator", "argmax", "prob"):
        assert set(m["rule_acc"][rule]) == {"train", "val", "test"}
    assert m["test_acc"] == m["rule_acc"]["prob"]["test"] > 0.8  # 240 fit pairs, 3 epochs
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    stored = ckpt["state_dict"][key].shape
    assert all(want in (None, got) for want, got in zip(shape, stored, strict=True)), stored
    out = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"ckpt_path={run_dir}",
            "data.n_pairs=300",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    record = record["results"][0]
    assert record["acc"] == pytest.approx(m["test_acc"], abs=1e-9)
    # the validation table of benchmarks/accuracy/second_member.py on this one run: its own w gives its val figure
    table = subprocess.run(
        [sys.executable, "benchmarks/accuracy/second_member.py", str(tmp_path), "--weights", f"{weight},1"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"0", weight, "1"}, table.stdout
    assert int(rows[weight][3]) == round((1 - m["val_acc"]) * m["n_val"])
    if recipe != "beyond":
        return
    # --baseline (once): the run against itself, paired by its seed: the same errors on both sides
    paired = subprocess.run(
        [sys.executable, "benchmarks/accuracy/second_member.py", str(tmp_path), "--baseline", str(tmp_path)]
        + ["--weights", weight],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert paired.returncode == 0, paired.stderr[-2000:]
    row = next(line.split("|") for line in paired.stdout.splitlines() if line.startswith(f"| {weight} "))
    assert row[3].strip() == f"{rows[weight][3].strip()} against {rows[weight][3].strip()}", paired.stdout


@pytest.mark.parametrize(
    "second, key, value",
    [
        ("scatter_svm", "second.svm.coef", torch.zeros(7, 45, dtype=torch.float64)),  # not one row per support vector
        ("scatter_svm", "second.svm.support", torch.zeros(3, 10, dtype=torch.float64)),  # not 729 features
        ("scatter_svm", "second.mean", torch.zeros(5)),
        ("scatter_svm", "second.svm.prob_a", torch.zeros(45, dtype=torch.int64)),
        ("scatter_pca", "second.pca.basis", torch.zeros(10, 7, 729)),  # not second_dim directions
        ("scatter_pca", "second.pca.centre", torch.zeros(9, 729)),
        ("scatter_pca", "second.std", torch.zeros(729, dtype=torch.int64)),
    ],
)
def test_a_checkpoint_with_a_malformed_member_is_refused_at_load(second, key, value, digits, tmp_path):
    """Untrusted input: sizes that do not fit each other are one line at load, not a
    traceback from a matrix product at the first prediction."""
    from digitpairs.training.checkpoints import store as ckpt_io

    model = fitted_module(digits, 0.4, second)
    state = model.state_dict()
    state[key] = value
    ckpt = {
        "state_dict": state,
        "hyper_parameters": dict(model.hparams),
        ckpt_io.KEY: {"class": "DigitClassifierModule"},
    }
    fresh = DigitClassifierModule(**ckpt["hyper_parameters"])
    with pytest.raises(RuntimeError, match=key.split(".")[-1]):
        fresh.load_state_dict(state)
    with pytest.raises(ConfigError, match="do not fit its model"):
        ckpt_io.build_model(ckpt, value="m.ckpt")


@pytest.mark.slow
def test_the_member_leaves_the_networks_as_they_are(tmp_path):
    """``recipe=beyond`` with and without its second member trains the same CNN members,
    bit for bit (the member is fitted after the last epoch, its copies from a random state
    of its own), so ``model.second=none`` keeps giving the recipe's former figures."""
    from conftest import run_train

    common = ["recipe=beyond", "data.n_pairs=100", "trainer.max_epochs=2", "model.tta=2", "threads=1", "logger=none"]
    states = {}
    for second in ("none", "scatter_pca"):
        result = run_train([*common, f"model.second={second}", "model.second_copies=2"], tmp_path / second)
        assert result.returncode == 0, result.stderr[-2000:]
        path = tmp_path / second / "run" / "checkpoints" / "last.ckpt"
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        states[second] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("second.")}
    assert states["none"].keys() == states["scatter_pca"].keys()
    assert all(torch.equal(states["none"][k], states["scatter_pca"][k]) for k in states["none"])


def test_the_paired_table_subtracts_the_baseline_seed_by_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks" / "accuracy"))
    from second_member import paired_table

    def rows(digit_errors, pair_errors):  # {seed: {member: {w: (digit errors, pair errors, pairs)}}}
        return {s: {"m": {0.0: (d, p, 200)}} for s, d, p in zip((1, 2, 3), digit_errors, pair_errors, strict=True)}

    base, runs = rows([3, 5, 4], [1, 2, 1]), rows([4, 7, 4], [1, 3, 2])
    runs[9] = {"m": {0.0: (50, 50, 200)}}  # a seed the baseline lacks is left out
    line = paired_table(runs, base, [0.0]).splitlines()[-1]
    # digit changes +1, +2, 0: mean +1, se 1/sqrt(3) = 0.58, t = 1.7; pairs 0, +1, +1: +0.67 ± 0.33, t = 2.0
    assert line == "| 0 | 15 against 12 | 6 against 4 | +1.00 ± 0.58 (t = 1.7) | +0.67 ± 0.33 (t = 2.0) |"
    with pytest.raises(SystemExit, match="share no seed"):
        paired_table({7: runs[1]}, base, [0.0])
