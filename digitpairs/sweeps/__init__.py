"""Sweeps: what a multirun leaves and how it is launched.

``summary`` (``summary.csv``, ``ranking.csv``, ``best_overrides.txt``), ``report`` (the
study's table, Welch tests and figures), ``callback`` (the Hydra callback that writes them),
``plan`` (the fastest launcher settings for a machine) and ``slurm`` (SLURM time limits
and the records of jobs that SLURM killed). None imports torch.
"""
