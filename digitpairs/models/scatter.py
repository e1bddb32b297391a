"""A second kind of digit classifier: scattering features into a classifier that is not a CNN.

Copies of one CNN make the same mistakes; a classifier built another way makes others, and
averaging its digit probabilities into the CNN's removes some of both (``docs/results.md``).

- **Features**: the 2D scattering transform (Bruna & Mallat, "Invariant scattering
  convolution networks", TPAMI 2013): Morlet wavelet moduli averaged over 2^J pixels. With
  ``J=2`` and ``L=8`` angles a 14x14 digit gives 81 paths x 3 x 3 positions = 729 numbers,
  standardised with the training features' mean and std. Computed with kymatio's 2D torch
  frontend (``kymatio.scattering2d.frontend.torch_frontend``; the package's ``kymatio.torch``
  entry point imports its 3D code, which needs a SciPy function removed in SciPy 1.17).
- **Classifiers** (:class:`ScatterMember` subclasses, ``model.second=``):

  - ``scatter_pca`` (:class:`ScatterPCA`): the paper's affine space ("PCA") classifier, a
    mean and ``dim`` principal directions per class, the probabilities a softmax of minus
    the squared distances over a temperature. Fitted in about a second; the best on the
    validation split.
  - ``scatter_svm`` (:class:`ScatterSVM`): an RBF support vector machine fitted by
    scikit-learn's ``SVC`` (libsvm) with Platt's pairwise probabilities (``probability=True``),
    one-vs-one over the 10 classes.

- **Storage**: everything a classifier needs is kept as tensors (buffers), so a checkpoint
  holding it loads with ``weights_only=True``; the SVM's probabilities are computed in torch
  (float64) as libsvm computes them: sklearn is needed to fit, not to predict.
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
    with ``J=2`` (in general ``(1 + J L + L^2 J (J - 1) / 2) * (14 // 2^J)^2`` with ``L=8``).

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
            # cache_size: the kernel matrix of 8,000 images (800 pairs) is 256 MB of float32; 27 % faster than 200 MB
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


def n_scattering(J: int, size: int = 14, L: int = 8) -> int:
    """The number of scattering features of a ``size`` x ``size`` image: paths x positions,
    ``(1 + J L + L^2 J (J - 1) / 2) * (size // 2^J)^2`` (729 for ``J=2``, 441 for ``J=1``)."""
    return (1 + L * J + L * L * J * (J - 1) // 2) * (size // 2**J) ** 2


class AffinePCA(nn.Module):
    """The affine space classifier of Bruna & Mallat (TPAMI 2013, section 5.1): per class the
    mean of its training features and their first ``dim`` principal directions; a digit goes
    to the class whose affine space is nearest.

    ``distances(features float (N, F))`` returns ``float32 (N, 10)`` squared distances to the
    10 affine spaces; ``forward(features, temperature)`` their softmax ``exp(-d / T)``,
    normalised: ``float32 (N, 10)`` class probabilities. Before :meth:`fit` (or loading) the
    buffers are empty and :attr:`fitted` is False.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(0))  # (10, F)
        self.register_buffer("basis", torch.zeros(0))  # (10, dim, F): orthonormal rows (zero past min(its images, F))

    @property
    def fitted(self) -> bool:
        return self.centre.numel() > 0

    def fit(self, features: torch.Tensor, classes: torch.Tensor, dim: int) -> AffinePCA:
        """Fit on ``features float (N, F)`` and ``classes int64 (N,)``: per class the mean and
        the top ``dim`` right singular vectors of the centred features (fewer where a class
        has fewer images; the missing directions are zero and change no distance).

        Raises:
            ValueError: a class of 0-9 is missing from ``classes``.
        """
        present = torch.unique(classes).tolist()
        if present != list(range(N_CLASSES)):
            raise ValueError(
                f"the affine space classifier needs every digit 0-9 among its training digits; it has {present}"
            )
        f = features.float()
        centre = torch.zeros(N_CLASSES, f.shape[1], device=f.device)
        basis = torch.zeros(N_CLASSES, dim, f.shape[1], device=f.device)
        for c in range(N_CLASSES):
            fc = f[classes == c]
            centre[c] = fc.mean(0)
            _, _, v = torch.linalg.svd((fc - centre[c]).double(), full_matrices=False)
            k = min(dim, v.shape[0])
            basis[c, :k] = v[:k].float()
        self.centre, self.basis = centre, basis
        return self

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        r = features.float().unsqueeze(1) - self.centre  # (N, 10, F)
        return (r * r).sum(-1) - torch.einsum("ncf,cdf->ncd", r, self.basis).pow(2).sum(-1)

    def forward(self, features: torch.Tensor, temperature: float) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("AffinePCA: not fitted")
        return torch.softmax(-self.distances(features) / temperature, dim=-1)


class ScatterMember(nn.Module):
    """A second member: scattering features of digits, standardised with the training
    features' mean and std, into a classifier (:class:`ScatterPCA`, :class:`ScatterSVM`).

    ``forward(digits float32 (N, 1, 14, 14) or (N, 14, 14), normalised as the pairs are)``
    returns ``float32 (N, 10)`` class probabilities (rows sum to 1).

    A fitted state in a checkpoint is checked whole when it loads (it is untrusted input:
    mismatched sizes would fail deep inside a matrix product later): every buffer of
    :meth:`expected_shapes` must be a floating-point tensor of that shape, else
    ``load_state_dict`` reports each one. Then the buffers take the stored sizes.

    Args:
        J: scattering scales (1 or 2).

    Raises:
        RuntimeError: ``forward`` before :meth:`fit` or loading a fitted state.
    """

    marker = ""  # the buffer whose being non-empty marks a fitted state

    def __init__(self, J: int = 2) -> None:
        super().__init__()
        self.scattering = Scattering(J)
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.zeros(0))

    @property
    def n_features(self) -> int:
        return n_scattering(self.scattering.J, self.scattering.size)

    @property
    def fitted(self) -> bool:
        return self.get_buffer(self.marker).numel() > 0

    def features(self, digits: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Scattering features ``float32 (N, F)`` of ``digits``, in batches (before scaling)."""
        return torch.cat([self.scattering(digits[i : i + batch]) for i in range(0, len(digits), batch)])

    @torch.no_grad()
    def fit(self, digits: torch.Tensor, classes: torch.Tensor, seed: int = 0) -> ScatterMember:
        """Standardise the features of ``digits (N, 1, 14, 14)`` and fit the classifier on
        them and ``classes int64 (N,)``. Raises ``ValueError`` if a class of 0-9 is missing."""
        f = self.features(digits)
        self.mean, self.std = f.mean(0), f.std(0).clamp_min(1e-6)
        self.fit_classifier((f - self.mean) / self.std, classes, seed)
        return self

    @torch.no_grad()
    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}: not fitted")
        return self.classify((self.features(digits) - self.mean) / self.std).float()

    def fit_classifier(self, features: torch.Tensor, classes: torch.Tensor, seed: int) -> None:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expected_shapes(self, state: dict, prefix: str) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer (key without ``prefix``) of the fitted ``state``."""
        n = self.n_features
        return {"mean": (n,), "std": (n,)}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        marker = state_dict.get(prefix + self.marker)
        if isinstance(marker, torch.Tensor) and marker.numel() > 0:
            problems = []
            for key, shape in self.expected_shapes(state_dict, prefix).items():
                value = state_dict.get(prefix + key)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or not value.is_floating_point():
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    problems.append(f"{prefix}{key}: a floating-point tensor of shape {shape} expected, not {got}")
            if problems:
                errors.extend(problems)
                return
        for name, module in self.named_modules():
            module_prefix = prefix + (name + "." if name else "")
            for buf_name, buf in module._buffers.items():
                value = state_dict.get(module_prefix + buf_name)
                if isinstance(value, torch.Tensor) and buf is not None and value.shape != buf.shape:
                    module._buffers[buf_name] = torch.empty_like(value, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


class ScatterPCA(ScatterMember):
    """``model.second=scatter_pca``: scattering features into the affine space classifier
    (:class:`AffinePCA`), probabilities ``softmax(-d / temperature)``.

    The features are standardised, so the squared distances ``d`` are in units of one
    feature's variance; with ``J=2`` and ``dim=120`` a validation digit's nearest space is
    about 28 away, and the second nearest about 42 further (``docs/design.md``).

    Args:
        J: scattering scales (1 or 2).
        dim: principal directions per class, >= 1.
        temperature: ``T`` of the softmax, > 0 (in the units of ``d``).
    """

    marker = "pca.centre"

    def __init__(self, J: int = 2, dim: int = 120, temperature: float = 6.0) -> None:
        super().__init__(J)
        self.dim, self.temperature = dim, temperature
        self.pca = AffinePCA()

    def fit_classifier(self, features: torch.Tensor, classes: torch.Tensor, seed: int) -> None:
        self.pca.fit(features, classes.to(features.device), self.dim)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.pca(features, self.temperature)

    def expected_shapes(self, state: dict, prefix: str) -> dict[str, tuple[int, ...]]:
        n = self.n_features
        return {
            **super().expected_shapes(state, prefix),
            "pca.centre": (N_CLASSES, n),
            "pca.basis": (N_CLASSES, self.dim, n),
        }


class ScatterSVM(ScatterMember):
    """``model.second=scatter_svm``: scattering features into an RBF SVM with Platt
    probabilities (:class:`KernelSVM`, fitted by libsvm on the CPU).

    Args:
        J: scattering scales (1 or 2).
        C: the SVM's penalty, > 0.
    """

    marker = "svm.support"

    def __init__(self, J: int = 2, C: float = 10.0) -> None:
        super().__init__(J)
        self.C = C
        self.svm = KernelSVM()

    def fit_classifier(self, features: torch.Tensor, classes: torch.Tensor, seed: int) -> None:
        self.svm.fit(features.cpu(), classes.cpu(), self.C, seed)
        self.svm.to(features.device)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.svm(features)

    def expected_shapes(self, state: dict, prefix: str) -> dict[str, tuple[int, ...]]:
        support = state.get(prefix + "svm.support")
        n_support = support.shape[0] if isinstance(support, torch.Tensor) and support.dim() == 2 else -1
        n, pairs = self.n_features, len(PAIRS)
        return {
            **super().expected_shapes(state, prefix),
            "svm.support": (n_support, n),
            "svm.coef": (n_support, pairs),
            "svm.intercept": (pairs,),
            "svm.prob_a": (pairs,),
            "svm.prob_b": (pairs,),
            "svm.gamma": (),
        }
