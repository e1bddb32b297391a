"""The README and docs/: every command works as written, and the text speaks of the project alone.

The commands are read from README.md and every ``docs/*.md``: every line of a ```bash
block and every inline `code` span that starts with one of ``PREFIXES``.

- ``python train.py ...``: every job it would launch (a sweep expanded as Hydra's basic
  sweeper does, the experiment's sweep lists included) is composed with Hydra, and its
  checks and constructors run (``digitpairs.training.run.check_config``, the data module and the model):
  a bad key, a bad value or a bad group choice fails here. Training itself is tested in
  test_train.py, test_sweep.py and test_logs.py; composing keeps this test cheap.
  ``--help`` runs for real.
- ``make <target>``: ``make -n`` prints the recipe's commands (the install step skipped);
  those are checked as above, or run for real where they are quick (report, plan, help).
- ``python -m digitpairs.<module>``: run for real (a report on a small sweep folder).

Commands that are patterns (``<name>``, ``...``) are skipped, ``outputs/multirun/<...>``
becomes a sweep folder made here, and commands in ``NOT_RUN`` are skipped with a reason.
A command that matches no rule fails the test: add its rule here.

The text of the project (README, docs, code, configs, tests) must not speak of how it was
built (``PROCESS_WORDS``), and the README and docs name no path outside the repository.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, compose_config

PREFIXES = (
    "python train.py",
    "python -m digitpairs.",
    "make ",
    "tensorboard ",
    "python evaluate.py",
    "python predict.py",
    "python benchmarks/",
)
NOT_RUN = {  # command start -> why it is not run here
    "make test-slurm": "starts a SLURM cluster: its own CI step (scripts/test-slurm.sh, tests/test_slurm.py)",
    "python benchmarks/speed/checkpoint_cost.py": "a benchmark of minutes",
    "python benchmarks/speed/training_loop.py": "a benchmark of minutes (make bench)",
    "python benchmarks/speed/fleet_speed.py": "a benchmark of minutes (tests/test_fleet.py runs it in a short form)",
    "python benchmarks/speed/fleet_vs_joblib.py": "two whole sweeps",
    "python benchmarks/speed/fleet_settings.py": "a whole sweep per setting",
    "python benchmarks/speed/augment_cost.py": "a benchmark of a minute (tests/test_beyond.py runs it in a short form)",
    "python benchmarks/accuracy/ablation.py --run": "trains a 15-seed sweep",
    "python benchmarks/accuracy/second_member.py": "reads a 15-seed sweep (tests/test_second_member.py: a short run)",
    "python benchmarks/accuracy/search_vs_grid.py": "a grid, a search and 15-seed tests (tests/test_search.py: tiny)",
    "make lint": "ruff, run by .ci/run before the tests",
    "make test-fast": "the test suite itself, without its slow tests",
    "make test": "the test suite itself",
    "make bench": "a benchmark of minutes (benchmarks/speed/training_loop.py)",
    "make clean": "deletes the project's outputs/",
    "make tensorboard": "a server: tests/test_tensorboard.py serves one",
    "make demo": "a web server: tests/test_browser.py serves it and drives it in Chromium (make test-browser)",
    "make test-browser": "headless Chromium: its own CI step (tests/test_browser.py)",
    "tensorboard ": "a server: tests/test_tensorboard.py serves one",
}
MAKE_TARGETS = {"help", "install", "train", "sweep", "grid", "search", "study", "beyond", "report", "pretrained"}
DOCS = [
    PROJECT_ROOT / "README.md",
    *sorted((PROJECT_ROOT / "docs").glob("*.md")),
    PROJECT_ROOT / "pretrained" / "README.md",
]
QUICK_SCRIPTS = {"benchmarks/accuracy/ablation.py"}  # run for real: they only read sweep folders
MODULES = {"digitpairs.sweeps.report", "digitpairs.sweeps.launcher_plan", "digitpairs.sweeps.summary"}
JOBS_PER_COMMAND = 3  # composed per sweep: the first job and the first of each model
# `make -o` it: never reinstall in a test. The name as the Makefile spells it (make -o matches
# target names, and the Makefile's target is the relative .venv/.install-stamp).
STAMP = ".venv/.install-stamp"


def readme_commands(text: str) -> list[str]:
    """Commands in ```bash blocks (comments stripped) and inline `code` spans, in order, once
    each. An inline span of Hydra settings (``hydra/launcher=joblib ...``) is checked as
    ``python train.py -m <span>``."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(PREFIXES):
                found.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in (span.strip() for span in re.findall(r"`([^`\n]+)`", prose)):
        if span.startswith(PREFIXES):
            found.append(span)
        elif span.startswith("hydra") and "=" in span:  # Hydra settings to add to a sweep's command line
            found.append(f"python train.py -m {span}")
    return list(dict.fromkeys(found))


def is_template(command: str) -> bool:
    """``python train.py model=<name>``, ``make study PLAN="..."``: a pattern, not a command
    (a sweep folder ``outputs/multirun/<...>`` is filled in instead)."""
    rest = re.sub(r"outputs/multirun/<[^>]+>", "", command)
    return "..." in rest or bool(re.search(r"<[^>]+>", rest))


def sweep_jobs(args: list[str], tmp: Path) -> list[list[str]]:
    """The override lists of the jobs that ``python train.py *args`` launches (one for a run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    overrides = [a for a in args if not a.startswith("-")]
    if "-m" not in args and "--multirun" not in args:
        return [overrides]
    parser = OverridesParser.create()
    # the experiment's sweep lists (hydra.sweeper.params) come first; the command line wins
    params = []
    for o in parser.parse_overrides(overrides):
        if o.key_or_group == "experiment" and not o.is_sweep_override():
            exp = OmegaConf.load(PROJECT_ROOT / "conf" / "experiment" / f"{o.value()}.yaml")
            node = OmegaConf.select(exp, "hydra.sweeper.params")
            params += [f"{k}={v}" for k, v in OmegaConf.to_container(node).items()] if node else []
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]
    seen, sample = set(), []
    for job in jobs:
        choice = next((o for o in job if o.startswith("model=")), "")
        if not sample or choice not in seen:
            sample.append(job)
            seen.add(choice)
    return sample[:JOBS_PER_COMMAND]


_CHECKED: set[tuple[str, ...]] = set()  # jobs already composed and checked (commands repeat jobs)


def check_train_command(args: list[str], tmp: Path) -> int:
    """Compose every (sampled) job of ``python train.py *args`` and run its checks and
    constructors; return the number of jobs checked. Raises what the run would raise."""
    from hydra.utils import instantiate

    from digitpairs.training.run import check_config
    from digitpairs.utils.config import check_group_choices

    check_group_choices(args)
    jobs = [job for job in sweep_jobs(args, tmp) if tuple(job) not in _CHECKED]
    for job in jobs:
        _CHECKED.add(tuple(job))
        cfg = compose_config(job, tmp)
        check_config(cfg)
        instantiate(cfg.data)
        instantiate(cfg.model)
    return len(jobs)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, **kwargs)
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stderr[-2000:]}"
    return out


def check_command(command: str, tmp: Path, sweep_dir: Path, trained_sweep: Path | None = None) -> str:
    """Check one README command (see the module doc); return how, for the failure message.

    ``python evaluate.py`` and ``python predict.py`` run for real on ``trained_sweep`` (a
    sweep with checkpoints, trained here), which replaces ``outputs/multirun/<...>``.
    """
    if any(command.startswith(prefix) for prefix in NOT_RUN):
        return "not run: " + next(v for k, v in NOT_RUN.items() if command.startswith(k))
    if is_template(command):
        return "a pattern"
    uses_checkpoints = command.startswith(("python evaluate.py", "python predict.py"))
    command = re.sub(r"outputs/multirun/<[^>]+>", str(trained_sweep if uses_checkpoints else sweep_dir), command)
    tokens = shlex.split(command)
    cut = next((i for i, t in enumerate(tokens) if re.match(r"^(\d?>|\||&)", t)), len(tokens))
    tokens = tokens[:cut]  # shell redirections and pipes: the command is what comes before
    if tokens[:2] == ["python", "train.py"]:
        if "--help" in tokens:
            run([sys.executable, "train.py", *tokens[2:]])
            return "ran"
        return f"composed {check_train_command(tokens[2:], tmp)} jobs"
    if tokens[:2] in (["python", "evaluate.py"], ["python", "predict.py"]):
        extra = [f"hydra.run.dir={tmp / 'evaluate'}"] if tokens[1] == "evaluate.py" else []  # not into outputs/
        run([sys.executable, *tokens[1:], *extra])
        return "ran"
    if tokens[0] == "python" and tokens[1] in QUICK_SCRIPTS:
        run([sys.executable, *tokens[1:]])
        return "ran"
    if tokens[:2] == ["python", "-m"] and tokens[2] in MODULES:
        run([sys.executable, "-m", *tokens[2:]])
        return "ran"
    if tokens[0] == "make":
        target = tokens[1] if len(tokens) > 1 else "help"
        assert target in MAKE_TARGETS, f"README command {command!r}: add a rule for `make {target}` in {__file__}"
        make = ["make", "-s", "-o", str(STAMP), *tokens[1:], f"PY={sys.executable}"]
        if target in ("help", "install", "report"):
            run(make)
            return "ran"
        recipe = run(["make", "-n", *make[2:]]).stdout  # the commands, not run
        lines = [shlex.split(line) for line in recipe.splitlines() if " train.py" in line]
        assert lines, f"make -n {target}: no train.py command in {recipe!r}"
        for line in lines:
            check_train_command(line[line.index("train.py") + 1 :], tmp)
        return f"composed the jobs of {len(lines)} train.py command(s)"
    raise AssertionError(f"README command {command!r} has no rule: add one in {__file__}")


def all_commands() -> list[str]:
    """The commands of the README and of every page of docs/, once each, in order."""
    return list(dict.fromkeys(c for doc in DOCS for c in readme_commands(doc.read_text())))


def test_readme_commands_are_found():
    commands = readme_commands((PROJECT_ROOT / "README.md").read_text())
    assert "python train.py model=ws_aux" in commands
    assert "python train.py -m optim.lr1=0.01,0.09 loss.alpha=0.5,0.75" in commands
    assert any(c.startswith("python train.py -m experiment=study") for c in commands)
    assert {"make install", "make test", "make study", "make beyond", "make lint"} <= set(commands)
    assert any(c.startswith("python -m digitpairs.sweeps.report") for c in all_commands())


def test_sweep_expansion_follows_hydra(tmp_path):
    jobs = sweep_jobs(["-m", "experiment=grid", "model=convnet", "loss.alpha=0.75"], tmp_path)
    assert all("loss.alpha=0.75" in job for job in jobs)  # the command line replaces the grid's list
    assert sweep_jobs(["model=ws"], tmp_path) == [["model=ws"]]


def test_a_broken_command_fails(tmp_path):
    with pytest.raises(Exception, match="hydra.sweeper.params.loss.alpha"):  # the README's old advice
        check_train_command(
            ["-m", "experiment=grid", "model=convnet", "hydra.sweeper.params.loss.alpha=0.75"], tmp_path
        )
    with pytest.raises(Exception, match="data.batch_size"):
        check_train_command(["data.batch_size=1"], tmp_path)


@pytest.mark.slow
def test_every_command_of_the_readme_and_docs_works(tmp_path):
    from test_report_edges import fake_sweep

    sweep_dir = fake_sweep(tmp_path / "sweep", {"convnet": [0.8, 0.82], "ws_aux": [0.97, 0.98]})
    trained = tmp_path / "trained"  # a real sweep with a checkpoint, for evaluate.py and predict.py
    run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=study",
            "model=ws_aux",
            "seed=0",
            "trainer.max_epochs=1",
            "data.n_pairs=200",
            "data.eval_batch_size=200",
            "threads=1",
            "hydra.callbacks.sweep_summary.report=false",
            f"hydra.sweep.dir={trained}",
        ]
    )
    results = {}
    failed = []
    for i, command in enumerate(all_commands()):
        try:
            results[command] = check_command(command, tmp_path / f"c{i:02d}" / "run", sweep_dir, trained)
        except BaseException as err:  # noqa: BLE001 - SystemExit, Hydra errors, ConfigError: all are failures
            failed.append(f"{command}\n  -> {type(err).__name__}: {str(err).strip().splitlines()[-1:]}")
    assert not failed, "README and docs commands that fail:\n" + "\n".join(failed)
    assert sum(r.startswith(("ran", "composed")) for r in results.values()) >= 15, results


def test_make_is_never_asked_to_reinstall():
    """``make -o STAMP`` keeps the install step out of every make command this file runs,
    even when ``pyproject.toml`` is newer than the stamp (``-W``: as if it had just
    changed). An absolute path would not name the Makefile's target, and ``make install``
    would create a virtual environment and reinstall the project."""
    out = run(["make", "-n", "-s", "-W", "pyproject.toml", "-o", STAMP, "install", f"PY={sys.executable}"])
    assert "pip install" not in out.stdout and "venv" not in out.stdout, out.stdout
    unprotected = run(["make", "-n", "-s", "-W", "pyproject.toml", "install", f"PY={sys.executable}"])
    assert "pip install" in unprotected.stdout  # the check sees the install step when it is there


def section(text: str, title: str) -> tuple[int, int, str]:
    """The first and last line numbers (1-based) and the text of the README section ``## title``."""
    lines = text.splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start + 1, end, "\n".join(lines[start:end])


def test_the_quick_start_is_on_the_first_screen():
    """The Quick start follows the intro and ends within the README's first 60 lines, with
    the commands a newcomer runs first, each with what it prints."""
    text = (PROJECT_ROOT / "README.md").read_text()
    first, last, quick = section(text, "Quick start")
    assert last <= 60, f"the Quick start ends at line {last}"
    assert first < text.splitlines().index("## Results") + 1
    commands = readme_commands(quick)
    assert commands[:2] == ["make install", "python predict.py examples/two.png examples/seven_black_on_white.png"]
    assert "python train.py model=ws_aux" in commands
    assert "python train.py experiment=study model=ws_aux seed=0 threads=1" in commands
    assert "python train.py debug=fast" in commands
    assert "first: 2 (p=1.00)  second: 7 (p=1.00)  2 <= 7: yes (p=1.000)" in quick
    assert "](docs/figures/study-boxplot.png)" in "\n".join(text.splitlines()[:60])  # the study's figure
    assert "`recipe=`" in quick or "`recipe=`" in "\n".join(text.splitlines()[:15])  # what recipe= and experiment= mean


def test_the_quick_start_prediction_prints_the_readme_line(capsys):
    """``python predict.py examples/two.png examples/seven_black_on_white.png`` prints the
    line the Quick start promises, character for character."""
    from conftest import load_script

    quick = section((PROJECT_ROOT / "README.md").read_text(), "Quick start")[2]
    promised = re.search(r"`(first: [^`]+)`", quick).group(1)
    main = load_script("predict.py", "predict_quick_start").main
    assert main(["examples/two.png", "examples/seven_black_on_white.png"]) == 0
    assert capsys.readouterr().out == promised + "\n"


@pytest.mark.slow
def test_a_training_run_ends_with_a_line_shaped_as_the_readme_says(tmp_path):
    """The Quick start's line of ``python train.py model=ws_aux``, its figures aside, is the
    line a run prints (one epoch here; the figures depend on the epochs, threads and CPU)."""
    from conftest import run_train

    quick = section((PROJECT_ROOT / "README.md").read_text(), "Quick start")[2]
    promised = re.search(r"`(ws_aux seed=0 on MNIST [^`]+)`", quick).group(1)
    shape = re.escape(promised).replace("\\ ", " ")
    shape = re.sub(r"\d+\\\.\d\d%", lambda _: r"\d+\.\d\d%", shape)  # accuracies
    shape = re.sub(r"\\\(\d+ errors", lambda _: r"\(\d+ errors", shape)  # the error count
    shape = re.sub(r"\d+\\\.\d s$", lambda _: r"\d+\.\d s", shape)  # the wall time
    assert shape.count(r"\d") == 3 * 3 + 1 + 2, shape  # test, val and train accuracy, the errors and the time vary
    out = run_train(["model=ws_aux", "trainer.max_epochs=1", "threads=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    last = (out.stdout + out.stderr).strip().splitlines()[-1].split(" - ", 1)[-1]
    assert re.fullmatch(shape, last), (shape, last)


def test_setup_claims_agree_with_the_project():
    """The README names the Python that pyproject.toml requires, says that the first install
    downloads (not that it is offline), and has the GPU and troubleshooting sections; the
    Makefile's help says the same of the install."""
    import tomllib

    text = (PROJECT_ROOT / "README.md").read_text()
    floor = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor.startswith(">=")
    assert f"Python {floor[2:]} or newer" in text
    for line in [*text.splitlines(), *(PROJECT_ROOT / "Makefile").read_text().splitlines()]:
        if "make install" in line or line.startswith("install:"):
            assert "offline" not in line, line
    assert "downloads about 3 GB" in text
    for title in ("Quick start", "Setup", "GPUs", "Troubleshooting"):
        assert f"\n## {title}\n" in text
    gpus = " ".join(section(text, "GPUs")[2].split())
    assert "trainer.accelerator=auto" in gpus and "run on CPUs only" in gpus


def test_help_lists_only_real_models():
    out = run([sys.executable, "train.py", "--help"]).stdout
    assert (
        "model: aux, convnet, digit_classifier, ws, ws_aux\n" in out
    )  # the model base (conf/pair_module.yaml) is not an option
    assert "_pair_module" not in out


def test_declared_floors_cover_the_apis_used():
    """Each lower bound in pyproject.toml is at least the version that introduced an API we call."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    needs = {"matplotlib": ("3.9", "Axes.boxplot(tick_labels=...)")}
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in map(Requirement, deps):
        lows = [Version(s.version) for s in dep.specifier if s.operator in (">=", "==")]
        floors[dep.name] = max(lows) if lows else None
    for name, (version, api) in needs.items():
        assert floors[name] is not None and floors[name] >= Version(version), f"{name}: {api} needs >= {version}"


# ---- the project speaks of itself alone ----------------------------------------------------
# How the project was built belongs in commit messages, not in its text. TensorBoard's own
# "session" (a row of the HPARAMS table) is fine; sessions of work, issue numbers, turns,
# logs of the work, the date of writing and the computer a figure happened to be measured on
# are not. The patterns spell those words with a bracket (``to[d]ay``) so that this file,
# which is checked too, does not hold them.
PROCESS_WORDS = re.compile(
    r"\b(?:first|second|third|fourth|fifth|sixth|this|that|a later|later|an earlier|earlier|previous|next|"
    r"our|every) (?:work )?sessions?\b"
    r"|\bissues? ?#?\d+|\(#\d+\)|#\d+'s\b"
    r"|\btask[ ]log|\bvirtual[ ]machine|\bthis[ ]machine\b|\bto[d]ay(?:'s)?\b|\bclosing[ ]note"
    r"|\b(?:this|that|next|previous|earlier|a later|later) turn\b"
    r"|\.\./sh[a]red|\bsh[a]red/data\b",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cff", ".sh", ".txt", ".cfg", ""}


def project_text_files() -> list[Path]:
    """The files git tracks or would track (not ignored): what a fresh clone holds."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [
        PROJECT_ROOT / f
        for f in out
        if Path(f).suffix in TEXT_SUFFIXES and (PROJECT_ROOT / f).is_file() and not f.startswith("data/")
    ]


def process_words(text: str) -> list[str]:
    return [m.group(0) for m in PROCESS_WORDS.finditer(text)]


def test_the_project_speaks_of_itself_alone():
    found = []
    for path in project_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if words := process_words(line):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{n}: {words}")
    assert not found, "words about how the project was built:\n" + "\n".join(found)


def spelled(*parts: str) -> str:
    """A text joined from parts, so that this file does not hold the words it checks for."""
    return "".join(parts)


def test_process_words_are_caught():
    vm, issue = spelled("virtual", " machine"), spelled("issue", " #7")
    assert process_words(spelled("Rerun in a fifth", " session on this ", vm, f" ({issue}).")) == [
        spelled("fifth", " session"),
        vm,
        issue,
    ]
    log, day = spelled("task", " log"), spelled("to", "day's")
    assert process_words(f"the {log}'s per-run times; {day} figures") == [log, day]
    shared = spelled("..", "/sha", "red")
    assert process_words(f"data.root={shared}/data/mnist") == [shared]
    assert process_words(spelled("the folder sha", "red/data/mnist")) == [spelled("sha", "red/data")]
    assert process_words("a TensorBoard session start; session data per run; the three ways take turns") == []


def test_docs_name_no_path_outside_the_repository():
    found = [
        f"{doc.name}:{n}" for doc in DOCS for n, line in enumerate(doc.read_text().splitlines(), 1) if "../" in line
    ]
    assert not found, found


LARGE_FILES_ALLOWED = "data/mnist/"  # the MNIST files; every other file a clone holds stays small
MAX_FILE_BYTES = 2_000_000


def test_no_large_file_outside_the_mnist_folder():
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sizes = {f: (PROJECT_ROOT / f).stat().st_size for f in out if (PROJECT_ROOT / f).is_file()}
    assert max(sizes.values()) > MAX_FILE_BYTES  # the MNIST training images: the check sees real sizes
    large = [
        f"{f} ({n / 1e6:.1f} MB)"
        for f, n in sizes.items()
        if n > MAX_FILE_BYTES and not f.startswith(LARGE_FILES_ALLOWED)
    ]
    assert not large, f"files over {MAX_FILE_BYTES / 1e6:g} MB outside {LARGE_FILES_ALLOWED}: {large}"


def test_readme_is_a_front_door():
    text = (PROJECT_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "Convolutional Neural Network and improvements for MNIST comparison" in text
    assert (PROJECT_ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = (PROJECT_ROOT / "CITATION.cff").read_text()
    assert "cff-version" in citation
    assert "\nreferences:\n" in citation  # the study and MNIST
    assert 'title: "Convolutional Neural Network and improvements for MNIST comparison"' in citation
    assert 'title: "The MNIST database of handwritten digits"' in citation
    assert text.index("| model") < text.index("## Setup")  # results first
