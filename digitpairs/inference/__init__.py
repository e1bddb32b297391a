"""Inference: trained checkpoints at work.

``evaluate`` (``evaluate.py``: checkpoints on fresh test pairs) and ``predict``
(``predict.py``: two image files -> MNIST digits -> the model's answer).
"""
