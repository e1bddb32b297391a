"""Sweeps: how a multirun is launched and what it leaves.

``launcher_plan`` (the fastest launcher settings for a machine), ``fleet`` (the fleet
launcher: packs of runs), ``slurm`` (SLURM time limits and the records of jobs that SLURM
killed), ``search``, ``search_space`` and ``search_report`` (the Optuna search),
``records`` (reading a job's records defensively), ``summary`` (``summary.csv``,
``ranking.csv``, ``best_overrides.txt``), ``report`` (the study's table, Welch tests and
figures), ``hparams_table`` (the sweep's TensorBoard columns) and ``sweep_end`` (the Hydra
callback that writes them when a multirun ends). None imports torch but ``fleet`` when it
launches.
"""
