"""digitpairs: learn to compare pairs of handwritten MNIST digits (Lightning + Hydra).

The package follows the flow of a run::

    data/       digit pools, the pair protocol, augmentation, the LightningDataModule
    models/     the study's networks (nn.Module) and the LightningModules that train them
    training/   one run: config -> objects -> fit -> test -> run folder; checkpoints, resume
    sweeps/     a multirun's summary, the study's report, launch plans, SLURM
    inference/  evaluate checkpoints, predict on image files
    utils/      errors, atomic writes, project paths, Hydra config plumbing
"""
