"""A second kind of digit classifier: an RBF SVM on scattering features (``model.second=scatter_svm``).

Copies of one CNN make the same mistakes; a classifier built another way makes others, and
averaging its digit probabilities into the CNN's removes some of both (``docs/results.md``).

- **Features**: the 2D scattering transform (Bruna & Mallat, "Invariant scattering
  convolution networks", TPAMI 2013): Morlet wavelet moduli averaged over 2^J pixels. With
  ``J=2`` and ``L=8`` angles a 14x14 digit gives 81 paths x 3 x 3 positions = 729 numbers,
  standardised with the training features' mean and std. Computed with kymatio's 2D torch
  frontend (``kymatio.scattering2d.frontend.torch_frontend``; the package's ``kymatio.torch``
  entry point imports its 3D code, which needs a SciPy function removed in SciPy 1.15).
- **Classifier**: an RBF support vector machine fitted by scikit-learn's ``SVC`` (libsvm)
  with Platt's pairwise probabilities (``probability=True``), one-vs-one over the 10 classes.
- **Storage**: everything the classifier needs is kept as tensors (buffers): support
  vectors, their one-vs-one coefficients, intercepts, the 45 Platt sigmoids, the feature
  scaling and the kernel width. A checkpoint holding it loads with ``weights_only=True``,
  and :meth:`KernelSVM.forward` computes libsvm's probabilities in torch (float64): sklearn
  is needed to fit, not to predict.
"""

from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn

N_CLASSES = 10
PAIRS = list(itertools.combinations(range(N_CLASSES), 2))  # libsvm's one-vs-one order: (0,1), (0,2), ...
MIN_PROB = 1e-7  # libsvm clamps each pairwise probability to [MIN_PROB, 1 - MIN_PROB]


class Scattering(nn.Module):
    """Scattering features of digits: ``float32 (N, 1, 14, 14)`` -> ``float32 (N, 81 * 3 * 3)``
    with ``J=2`` (in general ``(1 + J L + L^2 J (J - 1) / 2) * (14 / 2^J)^2`` with ``L=8``).

    The filters are rebuilt on first use and never saved: they follow from ``J`` and the
    image size.

    Args:
        J: the number of scales, 1 or 2 (a 14x14 digit has no room for more).

    Raises:
        ImportError: kymatio is not installed.
    """

    def __init__(self, J: int = 2, size: int = 14) -> None:
        super().__init__()
        self.J, self.size = J, size
        self._op: list = []  # not a submodule: its filters stay out of the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._op:
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

            self._op.append(ScatteringTorch2D(J=self.J, shape=(self.size, self.size)))
        op = self._op[0].to(x.device)
        return op(x.reshape(-1, self.size, self.size).float().contiguous()).flatten(1)


class KernelSVM(nn.Module):
    """A fitted multi-class RBF SVM with Platt probabilities, held as tensors.

    ``forward(features float64 or float32 (N, F))`` returns ``float64 (N, 10)`` class
    probabilities: libsvm's one-vs-one decision values, its 45 Platt sigmoids and its
    pairwise coupling (Wu, Lin & Weng, JMLR 2004, method 2), as ``SVC.predict_proba``
    computes them (tested to 1e-9). Before :meth:`fit` (or loading) it holds no support
    vectors and :attr:`fitted` is False.
    """

    def __init__(self) -> None:
        super().__init__()
        for name in ("support", "coef", "intercept", "prob_a", "prob_b"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))
        self.register_buffer("gamma", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        return self.support.numel() > 0

    def fit(self, features: torch.Tensor, classes: torch.Tensor, C: float, seed: int = 0) -> KernelSVM:
        """Fit ``SVC(kernel="rbf", C=C, gamma="scale", probability=True)`` on
        ``features (N, F)`` and ``classes int64 (N,)`` (every class 0-9 present), then copy
        what prediction needs into the buffers.

        Raises:
            ValueError: a class of 0-9 is missing from ``classes``.
        """
        from sklearn.svm import SVC

        present = torch.unique(classes).tolist()
        if present != list(range(N_CLASSES)):
            raise ValueError(f"the SVM needs every digit 0-9 among its training digits; it has {present}")
        with warnings.catch_warnings():  # probability=True: deprecated in scikit-learn 1.9, removed in 1.11
            warnings.simplefilter("ignore", FutureWarning)
            # cache_size: the whole kernel matrix of 8,000 images (256 MB of float32); 27 % faster than 200 MB
            svc = SVC(kernel="rbf", C=C, gamma="scale", probability=True, random_state=seed, cache_size=512)
            svc.fit(features.double().numpy(), classes.numpy())
            prob_a, prob_b = svc.probA_, svc.probB_
        n_sv = svc.n_support_.tolist()
        start = [sum(n_sv[:k]) for k in range(N_CLASSES + 1)]
        dual = torch.from_numpy(svc.dual_coef_)  # (9, S): class i's SVs against class j in row j-1 (j > i) or j
        coef = torch.zeros(start[-1], len(PAIRS), dtype=torch.float64)
        for p, (i, j) in enumerate(PAIRS):
            coef[start[i] : start[i + 1], p] = dual[j - 1, start[i] : start[i + 1]]
            coef[start[j] : start[j + 1], p] = dual[i, start[j] : start[j + 1]]
        self.support = torch.from_numpy(svc.support_vectors_).double()
        self.coef = coef
        self.intercept = torch.from_numpy(svc.intercept_).double()
        self.prob_a = torch.from_numpy(prob_a).double()
        self.prob_b = torch.from_numpy(prob_b).double()
        self.gamma = torch.tensor(float(svc._gamma), dtype=torch.float64)
        return self

    def decision(self, features: torch.Tensor) -> torch.Tensor:
        """libsvm's 45 one-vs-one decision values ``float64 (N, 45)`` (pair ``(i, j)``
        positive for class ``i``), as ``SVC.decision_function`` with ``decision_function_shape="ovo"``."""
        x = features.double()
        sq = (x * x).sum(1, keepdim=True) - 2 * x @ self.support.T + (self.support * self.support).sum(1)
        return torch.exp(-self.gamma * sq.clamp_min(0)) @ self.coef + self.intercept

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("KernelSVM: not fitted")
        r_ij = torch.sigmoid(-(self.decision(features) * self.prob_a + self.prob_b)).clamp(MIN_PROB, 1 - MIN_PROB)
        n = r_ij.shape[0]
        r = torch.zeros(n, N_CLASSES, N_CLASSES, dtype=torch.float64, device=r_ij.device)
        i, j = (torch.tensor(c, device=r_ij.device) for c in zip(*PAIRS, strict=True))
        r[:, i, j], r[:, j, i] = r_ij, 1 - r_ij
        return couple(r)


def couple(r: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """libsvm's ``multiclass_probability``: class probabilities from pairwise ones.

    Args:
        r: ``float64 (N, k, k)``, ``r[n, i, j]`` = P(class i | i or j) for i != j.

    Returns:
        ``float64 (N, k)``, rows summing to 1; each row iterated until its own error is
        below ``0.005 / k`` (or ``max(100, k)`` sweeps), as libsvm does per example.
    """
    n, k, _ = r.shape
    eye = torch.eye(k, dtype=torch.bool, device=r.device)
    q = torch.where(eye, (r**2).masked_fill(eye, 0).sum(1).diag_embed(), -r.transpose(1, 2) * r)
    # q[t, t] = sum_{j != t} r[j, t]^2 ; q[t, j] = -r[j, t] r[t, j]
    p = torch.full((n, k), 1.0 / k, dtype=torch.float64, device=r.device)
    active = torch.ones(n, dtype=torch.bool, device=r.device)
    for _ in range(max(max_iter, k)):
        qp = (q @ p.unsqueeze(2)).squeeze(2)
        pqp = (p * qp).sum(1)
        active &= (qp - pqp.unsqueeze(1)).abs().amax(1) >= 0.005 / k
        if not active.any():
            break
        for t in range(k):  # a converged row takes diff = 0, which leaves its p, qp and pqp exactly as they are
            diff = torch.where(active, (-qp[:, t] + pqp) / q[:, t, t], torch.zeros_like(pqp))
            p[:, t] += diff
            pqp = (pqp + diff * (diff * q[:, t, t] + 2 * qp[:, t])) / (1 + diff) ** 2
            qp = (qp + diff.unsqueeze(1) * q[:, t, :]) / (1 + diff).unsqueeze(1)
            p = p / (1 + diff).unsqueeze(1)
    return p


class ScatterSVM(nn.Module):
    """The second member: scattering features, standardised, into an RBF SVM.

    ``forward(digits float32 (N, 1, 14, 14) or (N, 14, 14), normalised as the pairs are)``
    returns ``float32 (N, 10)`` class probabilities (rows sum to 1).

    Args:
        J: scattering scales (1 or 2).
        C: the SVM's penalty, > 0.

    Raises:
        RuntimeError: ``forward`` before :meth:`fit` or loading a fitted state.
    """

    def __init__(self, J: int = 2, C: float = 10.0) -> None:
        super().__init__()
        self.C = C
        self.scattering = Scattering(J)
        self.svm = KernelSVM()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.zeros(0))

    @property
    def fitted(self) -> bool:
        return self.svm.fitted

    def features(self, digits: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Scattering features ``float32 (N, F)`` of ``digits``, in batches (before scaling)."""
        return torch.cat([self.scattering(digits[i : i + batch]) for i in range(0, len(digits), batch)])

    @torch.no_grad()
    def fit(self, digits: torch.Tensor, classes: torch.Tensor, seed: int = 0) -> ScatterSVM:
        """Standardise the features of ``digits (N, 1, 14, 14)`` and fit the SVM on them and
        ``classes int64 (N,)``. Raises ``ValueError`` if a class of 0-9 is missing."""
        f = self.features(digits)
        self.mean, self.std = f.mean(0), f.std(0).clamp_min(1e-6)
        self.svm.fit(((f - self.mean) / self.std).cpu(), classes.cpu(), self.C, seed)  # libsvm: on the CPU
        self.svm.to(f.device)
        return self

    @torch.no_grad()
    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("ScatterSVM: not fitted")
        f = (self.features(digits) - self.mean) / self.std
        return self.svm(f).float()

    def expected_shapes(self, n_support: int) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer of a state fitted with ``n_support`` support vectors."""
        J = self.scattering.J
        n = (1 + 8 * J + 64 * J * (J - 1) // 2) * (self.scattering.size // 2**J) ** 2  # 81 x 3 x 3 = 729 for J=2
        pairs = len(PAIRS)
        return {
            "mean": (n,),
            "std": (n,),
            "svm.support": (n_support, n),
            "svm.coef": (n_support, pairs),
            "svm.intercept": (pairs,),
            "svm.prob_a": (pairs,),
            "svm.prob_b": (pairs,),
            "svm.gamma": (),
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        # A fitted state is checked whole (a checkpoint is untrusted input: mismatched sizes
        # would fail deep inside a matrix product later), then its buffers take its sizes
        # (the number of support vectors), so that a fresh module loads any fitted state.
        support = state_dict.get(prefix + "svm.support")
        if isinstance(support, torch.Tensor) and support.numel() > 0:
            shapes = self.expected_shapes(support.shape[0] if support.dim() == 2 else -1)
            problems = []
            for key, shape in shapes.items():
                value = state_dict.get(prefix + key)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or not value.is_floating_point():
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    problems.append(f"{prefix}{key}: a floating-point tensor of shape {shape} expected, not {got}")
            if problems:
                errors.extend(problems)
                return
        for module_prefix, module in ((prefix, self), (prefix + "svm.", self.svm)):
            for name, buf in module._buffers.items():
                value = state_dict.get(module_prefix + name)
                if isinstance(value, torch.Tensor) and buf is not None and value.shape != buf.shape:
                    module._buffers[name] = torch.empty_like(value, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
