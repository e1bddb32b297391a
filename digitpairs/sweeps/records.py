"""A job's records, read defensively: its ``metrics.json`` and Hydra's ``.hydra/overrides.yaml``.

Records are files that people open, edit by hand, copy half of, or write with other tools.
:func:`read_metrics` and :func:`read_overrides` return what a record holds only when every
value that the summary, the report, TensorBoard's columns or ``evaluate.py`` use is of its
type and in its range; otherwise they raise :class:`BadRecord` with one line saying which
value and why. A value that passes is safe to average:

- accuracies (``test_acc``, ``val_acc``, ``train_acc``, ``digit_acc.*``, ``rule_acc.*.*``,
  the ``*acc`` series of ``history``) are fractions in [0, 1], never percentages;
- an ``ok`` record has a ``model`` and a ``test_acc``; ``n_test`` is an integer >= 1 and
  ``test_errors`` (which needs ``n_test``) an integer in [0, n_test] that agrees with
  ``test_acc`` (``test_errors == n_test - round(test_acc * n_test)``);
- ``seed`` is an integer in [0, 2**32 - 1], ``epochs`` an integer >= 0, ``wall_time_s`` and
  the other ``history`` series finite numbers >= 0; ``null`` stands for "none" where a run
  may have no value (``val_acc`` without a validation split).

Only ``ok`` records carry results and are checked value by value; the others (``failed``,
``invalid``, ``killed``) need only a ``status`` (their ``error`` is shown as text, and a
refused run records the bad value it was given, e.g. ``seed: "abc"``). This module imports
neither torch nor Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from digitpairs.utils.config import MAX_SEED

STATUSES = ("ok", "failed", "invalid", "killed")  # what a run or a launcher writes as a job's status
RULES = ("comparator", "argmax", "prob")  # decision rules of models with digit heads (digitpairs.models.rules)
SPLITS = ("train", "val", "test")


class BadRecord(ValueError):
    """A record that cannot be used; ``str(err)`` is one line naming the file and the value."""


def _name(value: Any) -> str:
    return {str: "a string", list: "a list", dict: "an object", bool: "true or false"}.get(type(value), "")


def _show(value: Any, limit: int = 40) -> str:
    """``value`` as JSON, cut to ``limit`` characters (a message stays one short line)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _number(where: str, value: Any, low: float, high: float | None = None, integer: bool = False) -> float | int:
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} in [{low}, {high}]" if high is not None else f"{kind} >= {low}"
    if high == 1 and low == 0 and not integer:
        allowed = "a fraction in [0, 1]"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool):
        of = _name(value)
        raise BadRecord(f"{where}={_show(value)} is not {allowed}{f' ({of})' if of else ''}")
    if (
        not math.isfinite(float(value) if abs(value) < 1e300 else math.inf)
        or value < low
        or (high is not None and value > high)
    ):
        hint = " (a percentage?)" if allowed.startswith("a fraction") and 1 < value <= 100 else ""
        raise BadRecord(f"{where}={value!r} is not {allowed}{hint}")
    return value


def _optional(record: dict, key: str, check) -> Any:
    """``check(key, value)`` of ``record[key]``, or None where the key is missing or null."""
    value = record.get(key)
    return None if value is None else check(key, value)


def _fraction(where: str, value: Any) -> float:
    return float(_number(where, value, 0, 1))


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{where}={_show(value)} is not a string")
    return value


def _table(where: str, value: Any, keys: tuple[str, ...], check) -> dict[str, Any]:
    """An object whose ``keys`` (each optional) pass ``check``; other keys are left out."""
    if not isinstance(value, dict):
        raise BadRecord(f"{where} is {_name(value) or _show(value)}, not an object")
    return {k: (None if value.get(k) is None else check(f"{where}.{k}", value[k])) for k in keys if k in value}


def _history(where: str, value: Any) -> dict[str, list[float | None]]:
    """Per-epoch series: lists of numbers or nulls; accuracies in [0, 1], the rest >= 0."""
    if not isinstance(value, dict):
        raise BadRecord(f"{where} is {_name(value) or _show(value)}, not an object")
    out = {}
    for key, series in value.items():
        if not isinstance(series, list):
            raise BadRecord(f"{where}.{key} is {_name(series) or _show(series)}, not a list")
        high = 1 if key.endswith("acc") else None
        out[key] = [None if v is None else _number(f"{where}.{key}[{i}]", v, 0, high) for i, v in enumerate(series)]
    return out


def _hparams(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRecord(f"{where} is {_name(value) or _show(value)}, not an object")
    for key, v in value.items():
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise BadRecord(f"{where}.{key}={_show(v)} is not a number, a string or true/false")
    return value


def check_metrics(record: Any) -> dict[str, Any]:
    """Check a job's ``metrics.json`` record (parsed JSON); return it unchanged.

    Raises:
        BadRecord: the first key whose value is missing, of another type or out of range
            (see the module doc), e.g. ``test_acc=97.5 is not a fraction in [0, 1] (a percentage?)``.
    """
    if not isinstance(record, dict):
        raise BadRecord(f"holds {_name(record) or _show(record)}, not a JSON object")
    status = record.get("status")
    if status not in STATUSES:
        raise BadRecord(
            f"status={_show(status)} is not one of {', '.join(STATUSES)}" if "status" in record else "has no status"
        )
    if status != "ok":  # no result to use: its error is shown as text, whatever it holds
        return record
    _optional(record, "model", _text)
    _optional(record, "seed", lambda w, v: _number(w, v, 0, MAX_SEED, integer=True))
    for key in ("model", "test_acc"):
        if record.get(key) is None:
            raise BadRecord(f"has no {key}" if key not in record else f"{key}=null in a record of status ok")
    _fraction("test_acc", record["test_acc"])
    n_test = _optional(record, "n_test", lambda w, v: _number(w, v, 1, integer=True))
    if record.get("test_errors") is not None:
        if n_test is None:
            raise BadRecord("has test_errors but no n_test to check them against")
        errors = _number("test_errors", record["test_errors"], 0, n_test, integer=True)
        if errors != n_test - round(record["test_acc"] * n_test):
            raise BadRecord(
                f"test_errors={errors} disagrees with test_acc={record['test_acc']!r} of n_test={n_test} "
                f"({n_test - round(record['test_acc'] * n_test)} errors)"
            )
    for key in ("train_acc", "val_acc"):
        _optional(record, key, _fraction)
    _optional(record, "digit_acc", lambda w, v: _table(w, v, SPLITS, _fraction))
    _optional(record, "rule_acc", lambda w, v: _table(w, v, RULES, lambda w2, v2: _table(w2, v2, SPLITS, _fraction)))
    _optional(record, "epochs", lambda w, v: _number(w, v, 0, integer=True))
    _optional(record, "wall_time_s", lambda w, v: _number(w, v, 0))
    for key in ("source", "precision", "data", "decision"):
        _optional(record, key, _text)
    _optional(record, "history", _history)
    _optional(record, "hparams", _hparams)
    return record


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A job's ``metrics.json``, parsed and checked (:func:`check_metrics`).

    Raises:
        BadRecord: ``metrics.json is not valid JSON: Expecting ',' delimiter (line 10, column 14)``,
            an unreadable file, or a value that fails :func:`check_metrics`, as one line
            starting with the file's name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadRecord(f"{path.name} cannot be read ({type(err).__name__}: {err})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecord(f"{path.name} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise BadRecord(f"{path.name} is not valid JSON: nested too deep") from None
    try:
        return check_metrics(record)
    except BadRecord as err:
        raise BadRecord(f"{path.name}: {err}") from None


def read_overrides(job_dir: str | Path) -> list[str]:
    """The overrides of a job, from Hydra's ``<job>/.hydra/overrides.yaml``: a YAML list of
    strings (``key=value``, ``+key=value``, ``~key``).

    Raises:
        BadRecord: a file that cannot be read, is not YAML, or is not a list of strings.
    """
    import yaml

    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    shown = ".hydra/overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BadRecord(f"{shown} cannot be read ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise BadRecord(f"{shown} is not valid YAML: {problem}{where}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise BadRecord(f"{shown} holds {_name(data) or _show(data)}, not a list of overrides")
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise BadRecord(f"{shown}: item {i} is {_name(item) or _show(item)}, not an override (key=value)")
    return data
