"""TensorBoard's HPARAMS tab: one experiment description per sweep, session data per run.

How TensorBoard 2.21's hparams plugin reads a log folder
(``tensorboard/plugins/hparams/backend_context.py`` and the dashboard's ``index.js``):

- A run that holds a *session start* summary is one row of the table (a session); the
  metric columns read the scalars of that run.
- The columns come from an *experiment* summary. Where several runs hold one, the plugin
  takes the first it finds, as it is. Where there is none, it builds one from every
  session's values (every key, types guessed, and all scalar tags as metrics, so that a
  metric that one kind of run lacks shows as NaN and empties the parallel-coordinates view).
- The backend orders the hyperparameters by ``differs`` (True first), then by name; the
  dashboard ticks the first five hyperparameters and the first five metrics.

So a run writes its session start only (:func:`log_session`), and at the end of a
multirun :func:`digitpairs.sweeps.hparams_table.write_sweep_experiment` writes ONE
experiment summary at the sweep root:
the keys whose values differ between the jobs (marked ``differs``, so they come first and
are ticked), and only the metrics that the jobs have. A single run writes its own
experiment summary, its command-line overrides first (:func:`log_session` with
``experiment=True``). On ``tensorboard --logdir outputs`` (many sweeps and runs) the plugin
uses one of their experiment summaries for all; open one sweep folder to see its columns.

The plugin has no integer type: integers are numbers (``DATA_TYPE_FLOAT64``) with a
discrete domain of the values that occurred; booleans are ``DATA_TYPE_BOOL``.

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The final numbers, logged once by ``trainer.test`` (PairModule): the metric columns.
FINAL_METRICS = ("final/test_acc", "final/val_acc", "final/train_acc")


def _proto_value_type(values: list[Any]) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def hparam_infos(runs: list[dict[str, Any]], first: Iterable[str] = (), only_first: bool = False) -> list:
    """``api_pb2.HParamInfo`` messages for the keys of ``runs`` (flat dicts, one per run).

    Args:
        runs: each run's hyperparameters: key -> bool, int, float or str.
        first: keys marked ``differs`` (the backend shows them first, the dashboard ticks them).
        only_first: declare the ``first`` keys only (keys not in ``first`` are left out).

    Returns:
        One ``HParamInfo`` per key: booleans with the discrete domain ``[False, True]``
        subset, strings and integers with the discrete domain of their values, other
        numbers with an interval domain. A key whose values mix types is a string.
    """
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2

    first = list(dict.fromkeys(first))
    keys = list(first) + ([] if only_first else sorted({k for r in runs for k in r} - set(first)))
    infos = []
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            continue
        dtype = _proto_value_type(values)
        info = api_pb2.HParamInfo(name=key, type=dtype, differs=key in first)
        if dtype == api_pb2.DATA_TYPE_FLOAT64 and not all(isinstance(v, int) for v in values):
            info.domain_interval.min_value, info.domain_interval.max_value = min(values), max(values)
        else:
            if dtype == api_pb2.DATA_TYPE_STRING:
                values = [str(v) for v in values]
            for v in sorted(set(values)):
                value = struct_pb2.Value()
                if dtype == api_pb2.DATA_TYPE_BOOL:
                    value.bool_value = v
                elif dtype == api_pb2.DATA_TYPE_FLOAT64:
                    value.number_value = v
                else:
                    value.string_value = v
                info.domain_discrete.values.append(value)
        infos.append(info)
    return infos


def experiment_summary(
    runs: list[dict[str, Any]],
    metrics: Iterable[str],
    first: Iterable[str] = (),
    only_first: bool = False,
    description: str = "",
):
    """A TensorBoard ``Summary`` proto declaring the experiment: hyperparameter columns
    (see :func:`hparam_infos`) and the metric columns ``metrics`` (scalar tags, in order)."""
    import time

    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in metrics]
    experiment = api_pb2.Experiment(
        description=description,
        time_created_secs=time.time(),
        hparam_infos=hparam_infos(runs, first, only_first),
        metric_infos=metric_infos,
    )
    # summary_v2's proto builder (its summary.py twin imports TensorFlow)
    return summary_v2._summary_pb(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_summary(hparams: dict[str, Any], trial_id: str):
    """A TensorBoard ``Summary`` proto starting one session (one row of the table).

    ``hparams`` values must be bool, int, float or str (``None`` values are left out);
    ``trial_id`` names the row (the run's name).
    """
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2.hparams_pb({k: v for k, v in hparams.items() if v is not None}, trial_id=trial_id)


def write_summaries(logdir: Path, summaries: list) -> Path:
    """Write ``Summary`` protos into a new event file in ``logdir``; return the folder."""
    import time

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(logdir))
    for s in summaries:
        writer.add_event(event_pb2.Event(wall_time=time.time(), summary=s))
    writer.close()
    return Path(logdir)


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The keys set by ``key=value`` overrides, in order, Hydra's own keys left out
    (``model`` is shown as ``model_name``)."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        key = "model_name" if key == "model" else key
        if "=" in item and not key.startswith("hydra") and key not in keys:
            keys.append(key)
    return keys


def log_session(
    writer,
    hparams: dict[str, Any],
    trial_id: str,
    metrics: Iterable[str] = (),
    first: Iterable[str] = (),
    experiment: bool = False,
) -> None:
    """Write the session start of one run (and, for a single run, its experiment) with
    a ``torch.utils.tensorboard.SummaryWriter`` (``TensorBoardLogger.experiment``).

    Args:
        hparams: the run's flat hyperparameters (:func:`digitpairs.training.run.hparams`).
        trial_id: the run's name in the table.
        metrics: the metric tags this run will log (single run only).
        first: the keys to show first (its command-line overrides; single run only).
        experiment: also declare the experiment (a single run; a sweep's jobs leave that
            to :func:`digitpairs.sweeps.hparams_table.write_sweep_experiment`).
    """
    file_writer = writer._get_file_writer()
    if experiment:
        file_writer.add_summary(experiment_summary([hparams], metrics, [k for k in first if k in hparams]))
    file_writer.add_summary(session_summary(hparams, trial_id))
    file_writer.flush()
