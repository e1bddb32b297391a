"""digitpairs: learn to compare pairs of handwritten MNIST digits (Lightning + Hydra).

Modules: ``data`` (pair protocol, PairDataModule), ``nets`` (Table 1 networks),
``modules`` (LightningModules), ``task`` (one run), ``sweep`` and ``report`` (the study).
"""
