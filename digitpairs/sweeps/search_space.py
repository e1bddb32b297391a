"""A search space in Hydra's sweep grammar, as Optuna distributions.

    tag(log, interval(0.01, 0.81))   ->  FloatDistribution(0.01, 0.81, log=True)
    interval(0.25, 1.25)             ->  FloatDistribution(0.25, 1.25)
    interval(1, 8)                   ->  IntDistribution(1, 8)
    range(1, 9, 2)                   ->  IntDistribution(1, 7, step=2)
    choice(a, b) or a,b              ->  CategoricalDistribution(("a", "b"))
    0.5                              ->  a fixed value, not searched

The same grammar as Hydra's own Optuna sweeper (``hydra-optuna-sweeper``). Imports
neither torch nor Lightning.
"""

from __future__ import annotations

from typing import Any

from digitpairs.utils.errors import ConfigError

GRAMMAR = "tag(log, interval(low, high)), interval(low, high), range(start, stop[, step]), choice(a, b, ...) or a value"


def parse_override(line: str, key: str):
    """One ``key=value`` in Hydra's override grammar, parsed.

    Raises:
        ConfigError: naming ``key`` when Hydra's grammar refuses it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([line])[0]
    except Exception as err:  # noqa: BLE001 - Hydra's OverrideParseException and its kin
        value = line.split("=", 1)[1] if "=" in line else line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(key, value, f"{GRAMMAR} ({first})") from None


def distribution(override, key: str) -> Any:
    """The Optuna distribution of a parsed override, or None when it is a plain value.

    Args:
        override: a Hydra ``Override`` (from :func:`parse_override`).
        key: the name used in messages, e.g. ``hydra.sweeper.params.optim.lr1``.

    Raises:
        ConfigError: an empty or reversed interval, a log scale that reaches 0 or below, a
            range with no value, a tag other than ``log``.
    """
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    text = override.input_line.split("=", 1)[1] if "=" in override.input_line else override.input_line
    if not override.is_sweep_override():
        return None
    tags = set(getattr(value, "tags", set()) or set())
    if tags - {"log"}:
        raise ConfigError(key, text, f"the tag log only, or none ({GRAMMAR})")
    log = "log" in tags
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise ConfigError(key, text, "an interval whose low end is below its high end")
        if log and low <= 0:
            raise ConfigError(key, text, "a log-scale interval above 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(key, text, "a range holding at least one value")
        if all(isinstance(v, int) for v in values) and not log:
            step = values[1] - values[0] if len(values) > 1 else 1
            return IntDistribution(min(values), max(values), step=abs(step))
        return CategoricalDistribution(tuple(values))
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(tuple(override.sweep_iterator()))
    raise ConfigError(key, text, GRAMMAR)  # a glob(...) sweep


def parse_space(params: dict[str, Any], arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The search space and the fixed overrides of a search.

    Args:
        params: ``hydra.sweeper.params``: key -> its space in Hydra's grammar (or a value).
        arguments: the command line's overrides. A sweep there (``optim.lr1=interval(0.05,
            0.5)``, ``loss.alpha=0.5,1``) is searched too, replacing the params' entry; a
            plain value (``loss.alpha=0.75``) fixes the key and takes it out of the space.

    Returns:
        ``(space, fixed)``: key -> Optuna distribution, and the overrides every job gets.

    Raises:
        ConfigError: see :func:`distribution` and :func:`parse_override`.
    """
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for key, value in (params or {}).items():
        dist = distribution(parse_override(f"{key}={value}", f"hydra.sweeper.params.{key}"), f"{key}")
        if dist is None:
            fixed.append(f"{key}={value}")
        else:
            space[str(key)] = dist
    for line in arguments:
        override = parse_override(line, line.split("=", 1)[0])
        key = override.get_key_element()
        dist = distribution(override, key)
        space.pop(key, None)
        fixed = [f for f in fixed if f.split("=", 1)[0] != key]
        if dist is None:
            fixed.append(line)
        else:
            space[key] = dist
    return space, fixed


def describe(dist: Any) -> str:
    """A distribution in words for logs and ``search.json``, e.g. ``log-uniform [0.01, 0.81]``."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in dist.choices)
    kind = "integer " if isinstance(dist, IntDistribution) else ""
    step = f" step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind}{'log-uniform' if dist.log else 'uniform'} [{dist.low:g}, {dist.high:g}]{step}"
