"""A hyperparameter search with Optuna over Hydra's launchers, kept in a storage that a
later search continues: the body of ``hparams_search=optuna``
(:class:`hydra_plugins.digitpairs_optuna.OptunaSweeper`).

    python train.py -m hparams_search=optuna model=ws_aux                 # a study named ws_aux
    python train.py -m hparams_search=optuna model=ws_aux hydra.sweeper.n_trials=6   # 6 more

Each batch of ``hydra.sweeper.n_jobs`` trials is asked of the study at once (Optuna's
ask/tell API), launched as ``n_jobs * len(seeds)`` jobs by whichever launcher the config
names (basic, joblib, SLURM, the fleet), and told its value: the mean validation pair
accuracy over the trial's seeds, computed by :func:`digitpairs.sweeps.summary.rank`, the
figure ``ranking.csv`` ranks by. The test pairs take no part. A trial whose job fails,
is refused or is killed is told ``FAIL`` with the reason, and the search goes on.

The study lives in ``hydra.sweeper.storage`` (SQLite by default). A later search with the
same storage and study name continues it in a new sweep folder: earlier trials inform the
sampler, whose seed is advanced by the number of trials the study holds, so no trial is
drawn again. Live trials beat a heartbeat into the storage; one left ``RUNNING`` by a
search that was killed is recorded as failed by the next search once its heartbeat is
3 intervals old (Optuna's ``fail_stale_trials``). A study remembers the overrides it was
started with (``study.user_attrs["overrides"]``): a continuation with other overrides
(another model, other epochs) is refused, as its values would not compare.

At the end, ``search.json`` (storage, study, space, this sweep's trials) and Optuna's own
pictures (:mod:`digitpairs.sweeps.search_report`) land in the sweep folder; the sweep's
``summary.csv``, ``ranking.csv``, ``best_overrides.txt`` and TensorBoard columns are
written by the sweep callback, as for any sweep.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any

from digitpairs.utils.errors import ConfigError, one_line_errors, require_number

log = logging.getLogger(__name__)

# loss weight -> the loss terms it weighs (digitpairs.models.pair_module.PairModule.loss_terms)
LOSS_WEIGHTS = {"loss.gamma": ("main",), "loss.alpha": ("digit1", "digit2")}
OUTCOMES = ("ok", "failed", "invalid", "killed", "missing")  # metrics.json's status


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The sweeper's keys, checked and normalised.

    Returns:
        ``storage`` (str), ``study_name`` (str), ``n_trials``, ``n_jobs``,
        ``heartbeat_interval`` (int), ``seeds`` (list of int), ``params`` (dict), ``sampler``.

    Raises:
        ConfigError: a missing storage or study name, ``n_trials``/``n_jobs``/
            ``heartbeat_interval`` not an integer >= 1, ``seeds`` not a non-empty list of
            distinct integers >= 0.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out = dict(settings)
    for key in ("storage", "study_name"):
        value = out.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"hydra.sweeper.{key}", value, "a non-empty string")
    if "://" not in out["storage"]:
        raise ConfigError("hydra.sweeper.storage", out["storage"], "an SQLAlchemy URL, e.g. sqlite:///outputs/s.db")
    for key in ("n_trials", "n_jobs", "heartbeat_interval"):
        require_number(f"hydra.sweeper.{key}", out.get(key), 1, integer=True)
    seeds = out.get("seeds")
    if isinstance(seeds, ListConfig):
        seeds = OmegaConf.to_container(seeds)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError("hydra.sweeper.seeds", seeds, "a non-empty list of distinct integers >= 0, e.g. [0,1]")
    out["seeds"] = seeds
    params = out.get("params") or {}
    out["params"] = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params)
    return out


def search_arguments(arguments: list[str]) -> list[str]:
    """The command line's overrides that reach the jobs and the space: all of them, less
    ``seed`` (refused: the seeds of a trial are ``hydra.sweeper.seeds``).

    Raises:
        ConfigError: a ``seed=`` override.
    """
    for line in arguments:
        if line.split("=", 1)[0].lstrip("+~") == "seed":
            raise ConfigError(
                "seed",
                line.split("=", 1)[1] if "=" in line else "",
                "no seed on a search's command line: every trial trains with each of hydra.sweeper.seeds "
                "(e.g. 'hydra.sweeper.seeds=[0,1,2]')",
            )
    return list(arguments)


def unused_weights(space: dict[str, Any], fixed: list[str], model_target: str) -> list[str]:
    """The loss weights of ``space`` that the model's loss never reads (``loss.alpha`` for
    ``convnet`` and ``ws``, ``loss.gamma`` for ``digit_classifier``): searching them would
    only add noise. Reads the model class's ``loss_terms`` (imports torch)."""
    from hydra.utils import get_class

    terms = set(getattr(get_class(model_target), "loss_terms", ("main",)))
    return [k for k, weighs in LOSS_WEIGHTS.items() if k in space and not terms & set(weighs)]


def study_overrides(fixed: list[str], model: str) -> list[str]:
    """What makes trials comparable: the fixed overrides without run settings
    (:func:`digitpairs.sweeps.summary.config_key`'s rule), with the model named."""
    from digitpairs.sweeps.summary import config_key

    key = config_key(fixed)
    lines = key.split() if key else []
    if not any(line.startswith("model=") for line in lines):
        lines = sorted([*lines, f"model={model}"])
    return lines


def _sqlite_folder(url: str) -> None:
    """Create the folder of an SQLite file (SQLite creates the file, not its folder)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)


def open_study(settings: dict[str, Any], overrides: list[str]):
    """Load or create the study, fail its stale trials, and check it was started with
    ``overrides``; its sampler is instantiated from ``settings["sampler"]`` with the seed
    advanced by the number of trials the study holds.

    Raises:
        ConfigError: the study was started with other overrides (``hydra.sweeper.study_name``),
            the storage cannot be opened (``hydra.sweeper.storage``).
    """
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    url, name, beat = settings["storage"], settings["study_name"], settings["heartbeat_interval"]
    _sqlite_folder(url)
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=beat, grace_period=3 * beat)
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("hydra.sweeper.storage", url, f"a storage Optuna can open ({first})") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError("hydra.sweeper.study_name", name, "a study that maximises (this one minimises)")
    started = study.user_attrs.get("overrides")
    if started is None:
        study.set_user_attr("overrides", overrides)
    elif list(started) != overrides:
        raise ConfigError(
            "hydra.sweeper.study_name",
            name,
            f"a new study name, or the overrides study {name!r} was started with: it has "
            f"'{' '.join(started)}', this search '{' '.join(overrides)}'; its values would not compare",
        )
    fail_stale(study)
    sampler = settings.get("sampler")
    if sampler is not None:
        sampler = OmegaConf.to_container(sampler) if not isinstance(sampler, dict) else dict(sampler)
        if sampler.get("seed") is not None:
            sampler["seed"] = int(sampler["seed"]) + len(study.trials)  # a continuation draws new points
        study.sampler = instantiate(sampler)
    return study, storage


def fail_stale(study) -> list[int]:
    """Record as failed the trials left ``RUNNING`` by a search that stopped without a word
    (killed: no heartbeat for 3 intervals; Optuna's ``fail_stale_trials``). A stale trial
    whose jobs all finished all the same is added again as a finished trial with their
    value (``user_attrs["recovered_from"]``), so that no finished result is lost. Returns
    the numbers of the trials failed here."""
    import optuna

    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    if not running:
        return []
    optuna.storages.fail_stale_trials(study)
    stale = [t for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)) if t.number in running]
    for trial in stale:
        planned = trial.user_attrs.get("job_overrides") or []
        folders = find_job_folders(Path(trial.user_attrs.get("sweep_dir", ".")), planned) if planned else []
        value, per_seed, error = trial_outcome(folders) if folders else (None, [], "no job planned")
        if value is None:
            log.warning("search: trial %d was left running by a stopped search: recorded as failed", trial.number)
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=value,
                user_attrs={
                    **trial.user_attrs,
                    "jobs": [f.name for f in folders],
                    "val_acc": per_seed,
                    "recovered_from": trial.number,
                },
            )
        )
        log.warning(
            "search: trial %d was left running by a stopped search, but its jobs had finished: "
            "recorded again as trial %d (val %.2f%%)",
            trial.number,
            study.trials[-1].number,
            100 * value,
        )
    return [t.number for t in stale]


class Heartbeat:
    """A thread that records a heartbeat for each live trial every ``interval`` seconds
    (Optuna's ``RDBStorage.record_heartbeat``), while the trials' jobs run."""

    def __init__(self, storage, trial_ids: list[int], interval: float) -> None:
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # noqa: BLE001 - a busy database: try again next beat
                    log.warning("optuna heartbeat of trial id %d failed: %s", trial_id, err)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def find_job_folders(sweep_dir: Path, planned: list[list[str]]) -> list[Path | None]:
    """The folder of each planned job in ``sweep_dir``: the one whose ``.hydra/overrides.yaml``
    holds all its overrides (a launcher may add its own, as the SLURM launcher does), or
    None where there is none (the job never started)."""
    from omegaconf import OmegaConf

    written = [
        (p.parent.parent, {str(o) for o in OmegaConf.load(p)}) for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")
    ]
    return [next((d for d, have in written if set(want) <= have), None) for want in planned]


def trial_outcome(folders: list[Path | None]) -> tuple[float | None, list[float], str]:
    """A trial's value from its jobs' ``metrics.json``: ``(value, val_acc per seed, error)``.

    The value is the mean validation accuracy of the jobs (a fraction in [0, 1]), by
    :func:`digitpairs.sweeps.summary.rank`; None when a job did not finish ``ok`` with a
    validation accuracy, and ``error`` then says which and why.
    """
    import json

    from digitpairs.sweeps.summary import rank

    rows, errors = [], []
    for k, folder in enumerate(folders):
        if folder is None:
            folder, m = Path(f"#{k}"), {"status": "missing", "error": "it never started (no job folder)"}
        else:
            try:
                m = json.loads((folder / "metrics.json").read_text())
            except (OSError, ValueError):
                m = {"status": "missing", "error": "it wrote no metrics.json (killed?)"}
        val = m.get("val_acc")
        val = float(val) if isinstance(val, (int, float)) else math.nan
        status = m.get("status", "missing")
        if status != "ok":
            errors.append(f"job {folder.name} {status}: {m.get('error') or 'no error recorded'}")
        elif math.isnan(val):
            errors.append(f"job {folder.name}: no validation accuracy")
        rows.append({"status": status, "val_acc": val, "model": "", "config": ""})
    per_seed = [r["val_acc"] for r in rows]
    if errors:
        return None, per_seed, "; ".join(errors)
    return rank(rows)[0]["mean_val_acc"], per_seed, ""


def trial_overrides(fixed: list[str], params: dict[str, Any], seeds: list[int]) -> list[list[str]]:
    """The jobs of one trial: the fixed overrides, the trial's values, and each seed."""
    values = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())]
    return [[*fixed, *values, f"seed={seed}"] for seed in seeds]


def search(sweeper, arguments: list[str]) -> list:
    """The sweeper's ``sweep``: the search described in the module doc. Returns the
    launcher's ``JobReturn`` lists, one per batch."""
    import optuna
    from omegaconf import OmegaConf

    from digitpairs.sweeps.search_report import write_search_record
    from digitpairs.sweeps.search_space import describe, parse_space
    from digitpairs.utils.config import check_output_dir, claim_output_dir

    config = sweeper.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    with one_line_errors():
        check_output_dir("hydra.sweep.dir", sweep_dir, multirun=True)
        settings = check_settings(sweeper.settings)
        space, fixed = parse_space(settings["params"], search_arguments(arguments))
        if not space:
            raise ConfigError("hydra.sweeper.params", settings["params"], "at least one key to search")
        if "model" in space:
            raise ConfigError("model", "(searched)", "one model per search: a study per model (make search MODEL=...)")
        val_fraction = OmegaConf.select(config, "data.val_fraction", default=0.0)
        if not isinstance(val_fraction, (int, float)) or not val_fraction > 0:
            raise ConfigError(
                "data.val_fraction", val_fraction, "a number > 0: a search is scored on the validation pairs"
            )
        model = str(OmegaConf.select(config, "hydra.runtime.choices.model", default="model"))
        for key in unused_weights(space, fixed, str(config.model._target_)):
            log.info("search: %s is not searched: the loss of model=%s does not use it", key, model)
            del space[key]
        study, storage = open_study(settings, study_overrides(fixed, model))
    seeds, n_jobs, beat = settings["seeds"], settings["n_jobs"], settings["heartbeat_interval"]
    states = [t.state.name for t in study.trials]
    log.info(
        "search: study %r in %s: %d trials so far (%d finished, %d failed); this search adds %d, "
        "%d at a time, %d seed(s) each (%s); sampler %s; sweep folder %s",
        study.study_name,
        settings["storage"],
        len(states),
        states.count("COMPLETE"),
        states.count("FAIL"),
        settings["n_trials"],
        n_jobs,
        len(seeds),
        ",".join(map(str, seeds)),
        type(study.sampler).__name__,
        sweep_dir,
    )
    for key, dist in space.items():
        log.info("search: %s ~ %s", key, describe(dist))
    with one_line_errors():  # the folder is this search's until the process ends (its lock)
        claim_output_dir("hydra.sweep.dir", sweep_dir.resolve(), multirun=True)
    job_idx, done, returns_all, mine = 0, 0, [], []
    while done < settings["n_trials"]:
        batch = min(n_jobs, settings["n_trials"] - done)
        trials = [study.ask(space) for _ in range(batch)]
        jobs = [trial_overrides(fixed, t.params, seeds) for t in trials]
        for trial, planned in zip(trials, jobs, strict=True):
            trial.set_user_attr("sweep_dir", str(sweep_dir))
            trial.set_user_attr("job_overrides", planned)  # finds its folders, even after a kill
            mine.append(trial.number)
        try:
            with Heartbeat(storage, [t._trial_id for t in trials], beat):  # Optuna's own heartbeat uses _trial_id
                returns_all.append(sweeper.launcher.launch([o for p in jobs for o in p], initial_job_idx=job_idx))
        except BaseException as err:  # Ctrl-C, a launcher's exit: the batch's trials end failed
            for trial in trials:
                trial.set_user_attr("error", f"the search stopped before this trial finished ({type(err).__name__})")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        for trial, planned in zip(trials, jobs, strict=True):
            folders = find_job_folders(sweep_dir, planned)
            value, per_seed, error = trial_outcome(folders)
            trial.set_user_attr("jobs", [f.name if f else None for f in folders])
            trial.set_user_attr("val_acc", [None if math.isnan(v) else v for v in per_seed])
            if error:
                trial.set_user_attr("error", error)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.warning("search: trial %d failed: %s", trial.number, error)
            else:
                study.tell(trial, value)
                log.info(
                    "search: trial %d: val %.2f%% (mean over seeds %s): %s",
                    trial.number,
                    100 * value,
                    ",".join(map(str, seeds)),
                    " ".join(planned[0][len(fixed) : -1]),
                )
        job_idx += batch * len(seeds)
        done += batch
        fail_stale(study)  # another search of the study, killed meanwhile
    write_search_record(study, sweep_dir, settings, space, mine)
    return returns_all
