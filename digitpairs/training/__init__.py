"""Training: one run from its Hydra config to its run folder.

``task`` (config -> objects -> fit -> test -> ``metrics.json``), ``callbacks`` (per-epoch
history and log lines), ``checkpoint`` (read, check and write checkpoints), ``resume`` and
``resume_args`` (continue a run), ``preemption`` (SLURM's time-limit warning),
``runtime`` (process settings) and ``tboard`` (TensorBoard's HPARAMS tab).
"""
