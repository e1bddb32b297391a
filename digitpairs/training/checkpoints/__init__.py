"""A run's checkpoints: the stored file and its checks (store), the per-epoch checkpoint and
resuming (resume, resume_command), and the checkpoint on SLURM's time-limit warning (preemption)."""
