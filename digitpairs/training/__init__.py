"""Training: one run from its Hydra config to its run folder, and a fleet's pack of runs.

``run`` (config -> objects -> fit -> test -> ``metrics.json``), ``pack`` (several runs
trained as one packed network, for the fleet launcher), ``history`` (the Lightning
callbacks that record per-epoch figures and log lines), ``checkpoints`` (the stored file
and its checks, resuming, SLURM's time-limit warning), ``process_settings`` (threads,
denormals, malloc, Lightning's console) and ``tboard`` (a run's TensorBoard HPARAMS row).
"""
