"""Packed networks: K runs' networks of one architecture trained side by side as one network.

:func:`pack` takes the ``K`` networks of ``K`` runs (the same class, the same shapes, each
with its own weights) and returns one network whose input is the ``K`` runs' batches back
to back, ``(K * B, ...)``: rows ``k * B`` to ``(k + 1) * B - 1`` are run ``k``'s. It is
derived from the solo networks themselves, layer by layer, and holds **their** parameters,
buffers and dropout generators: training the packed network trains the ``K`` solo networks
in place, so each run's weights, optimiser and checkpoint stay those of an ordinary run.
Nothing mixes runs: each layer treats each run's rows with that run's weights and, for
BatchNorm, that run's batch statistics and running estimates (Packed-Ensembles,
Laurent et al., ICLR 2023, do the same with grouped convolutions; here the runs differ in
their data too, not only in their weights).

How each layer packs:

============================ ==============================================================
``Linear``                   one batched matmul over the K weights (``torch.baddbmm``)
``BatchNorm1d``              one BatchNorm over ``K * C`` channels, each run's statistics
                             its own, running estimates written back to each run's layer
``Dropout`` (ours)           each run's rows with a mask from that run's own generator: on
                             the CPU the solo layer's NumPy generator (the solo run's masks
                             exactly), elsewhere a per-run ``torch.Generator`` on the device
convolutional stages         a run of ``Conv2d``, ``BatchNorm2d``, pooling and activations
(:class:`PackedStage`)       in an ``nn.Sequential`` (through its ``Flatten``): ``loop``
                             runs each run's own layers on its rows (on the CPU each run's
                             activations then stay in cache: 1.1-1.2x faster per run than
                             one big tensor, ``benchmarks/speed/fleet_speed.py``); ``grouped``
                             moves the runs into channels, ``(B, K * C, H, W)``, and runs
                             grouped convolutions (``groups=K``) and one BatchNorm (few
                             kernels: for GPUs)
activations, pooling,        shared as they are: they treat each row alone
``Flatten``, containers      containers (``TwoBranchNet``, ``Sequential``) keep their own
                             ``forward``, with packed children
============================ ==============================================================

Any other layer with parameters or buffers, networks whose structures differ, or a torch
``nn.Dropout`` (its masks come from the global generator) raise :class:`NotPackable`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitpairs.models.nets import Dropout

STRATEGIES = ("loop", "grouped")
# layers of a convolutional stage (with Flatten ending one): each treats each sample alone
_STAGE_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
)
# parameter-free layers that treat each sample (row) alone: shared as they are
_SHARED_LAYERS = _STAGE_LAYERS[2:] + (nn.Flatten, nn.Softmax, nn.LogSoftmax)


class NotPackable(ValueError):
    """The networks cannot be packed; the message names the layer (by its path) and why."""


def _check_same(nets: Sequence[nn.Module], path: str) -> None:
    """Raise :class:`NotPackable` unless the ``nets`` have the same class, children and
    parameter and buffer shapes at ``path``."""
    first = nets[0]
    for other in nets[1:]:
        if type(other) is not type(first) or list(other._modules) != list(first._modules):
            raise NotPackable(f"{path or 'the network'}: the runs' networks differ in structure")
        for kind in ("_parameters", "_buffers"):
            a, b = getattr(first, kind), getattr(other, kind)
            if {k: None if v is None else v.shape for k, v in a.items()} != {
                k: None if v is None else v.shape for k, v in b.items()
            }:
                raise NotPackable(f"{path or 'the network'}: the runs' {kind[1:]} differ in shape")


def _rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """``x (k * B, ...)`` split into the ``k`` runs' rows (views)."""
    if x.shape[0] % k:
        raise ValueError(f"a packed batch of {x.shape[0]} rows does not split into {k} runs")
    return x.split(x.shape[0] // k)


class PackedLinear(nn.Module):
    """``K`` ``nn.Linear`` layers (``in -> out``) as one batched matmul.

    Input ``(K * B, in)``, output ``(K * B, out)``; run ``k``'s rows use run ``k``'s layer.
    The layers are the solo ones (not copies): their weights get the gradients.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.layers)
        weight = torch.stack([m.weight for m in self.layers]).transpose(1, 2)  # (K, in, out)
        rows = x.reshape(k, -1, x.shape[-1])
        if self.layers[0].bias is None:
            out = torch.bmm(rows, weight)
        else:
            out = torch.baddbmm(torch.stack([m.bias for m in self.layers]).unsqueeze(1), rows, weight)
        return out.reshape(-1, out.shape[-1])


def _packed_batch_norm(
    x: torch.Tensor, layers: Sequence[nn.modules.batchnorm._BatchNorm], training: bool
) -> torch.Tensor:
    """``F.batch_norm`` of ``x (N, K * C, ...)`` whose channel block ``k`` belongs to ``layers[k]``
    (each with ``C`` channels): each run's statistics and affine map, and in training its
    running estimates updated in place in its own layer, as ``nn.BatchNorm*d`` would."""
    first = layers[0]
    use_batch = training or not first.track_running_stats
    factor = 0.0 if first.momentum is None else first.momentum
    if training and first.track_running_stats:
        torch._foreach_add_([m.num_batches_tracked for m in layers], 1)  # one kernel for all runs
        if first.momentum is None:  # a cumulative moving average
            factor = 1.0 / float(first.num_batches_tracked)
    running = first.track_running_stats and first.running_mean is not None
    mean = torch.cat([m.running_mean for m in layers]) if running else None
    var = torch.cat([m.running_var for m in layers]) if running else None
    weight = torch.cat([m.weight for m in layers]) if first.affine else None
    bias = torch.cat([m.bias for m in layers]) if first.affine else None
    out = F.batch_norm(x, mean, var, weight, bias, use_batch, factor, first.eps)
    if running and training:  # the packed estimates back into each run's own buffers
        c = first.num_features
        torch._foreach_copy_(
            [buf for m in layers for buf in (m.running_mean, m.running_var)],
            [part for pair in zip(mean.split(c), var.split(c), strict=True) for part in pair],
        )
    return out


class PackedBatchNorm1d(nn.Module):
    """``K`` ``nn.BatchNorm1d(C)`` layers as one BatchNorm over ``K * C`` channels.

    Input and output ``(K * B, C)``: the rows are moved into channels, ``(B, K * C)``,
    normalised with each run's own batch statistics, weights and running estimates, and
    moved back.
    """

    def __init__(self, layers: Sequence[nn.BatchNorm1d]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, c = len(self.layers), x.shape[1]
        wide = x.reshape(k, -1, c).transpose(0, 1).reshape(-1, k * c)
        out = _packed_batch_norm(wide, self.layers, self.training)
        return out.reshape(-1, k, c).transpose(0, 1).reshape(-1, c)


class PackedDropout(nn.Module):
    """``K`` of our :class:`~digitpairs.models.nets.Dropout` layers: each run's rows get a mask
    from that run's own generator.

    On the CPU the masks come from the solo layers' NumPy generators, so they are the solo
    runs' masks exactly (and advance the generators that a checkpoint saves). On another
    device each run has a ``torch.Generator`` there, seeded once from its NumPy generator,
    and the masks are drawn on the device (no host work per step).
    """

    def __init__(self, layers: Sequence[Dropout]) -> None:
        super().__init__()
        self.layers = list(layers)  # not submodules: they hold no tensors
        self.p = layers[0].p
        self.device_masks = False  # True: the per-run torch generators on the CPU too (tests of the GPU path)
        self._device_generators: dict[torch.device, list[torch.Generator]] = {}

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        if device not in self._device_generators:
            gens = []
            for layer in self.layers:
                gen = torch.Generator(device=device)
                gen.manual_seed(int(layer.rng.integers(0, 2**62)))
                gens.append(gen)
            self._device_generators[device] = gens
        return self._device_generators[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        k = len(self.layers)
        shape = (x.shape[0] // k, *x.shape[1:])
        if x.device.type == "cpu" and not self.device_masks:
            keep = np.concatenate([layer.rng.random(shape, dtype=np.float32) for layer in self.layers]) >= self.p
            keep = torch.from_numpy(keep)
        else:
            draws = [torch.rand(shape, generator=g, device=x.device) for g in self._generators(x.device)]
            keep = torch.cat(draws) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, runs={len(self.layers)}"


class PackedStage(nn.Module):
    """A convolutional stage of ``K`` runs: an ``nn.Sequential``'s run of ``Conv2d``,
    ``BatchNorm2d``, pooling and activation layers, with the ``Flatten`` that ends it if any.

    Input ``(K * B, C, H, W)``; output ``(K * B, C', H', W')``, or ``(K * B, C' * H' * W')``
    after a ``Flatten``. ``strategy``:

    - ``loop``: each run's own layers on its own rows, one run after the other;
    - ``grouped``: the runs moved into channels, ``(B, K * C, H, W)`` (channels-last),
      convolutions with ``groups=K`` over the runs' stacked kernels, one BatchNorm over
      ``K * C`` channels (each run's statistics its own), the rest as it is; then back.

    Args:
        stages: per run, the stage's layers (the solo layers themselves).
        strategy: ``loop`` or ``grouped``.

    Raises:
        NotPackable: ``grouped`` with a convolution padded otherwise than with zeros.
    """

    def __init__(self, stages: Sequence[Sequence[nn.Module]], strategy: str = "loop") -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if strategy == "grouped":
            odd = [m for m in stages[0] if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros"]
            if odd:
                raise NotPackable(f"a Conv2d with padding_mode={odd[0].padding_mode!r} has no grouped form")
        self.strategy = strategy
        self.runs = nn.ModuleList(nn.Sequential(*layers) for layers in stages)
        self.flatten = isinstance(stages[0][-1], nn.Flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.runs)
        if self.strategy == "loop":
            return torch.cat([run(rows) for run, rows in zip(self.runs, _rows(x, k), strict=True)])
        n, c, h, w = x.shape
        b = n // k
        y = (
            x.reshape(k, b, c, h, w)
            .transpose(0, 1)
            .reshape(b, k * c, h, w)
            .contiguous(memory_format=torch.channels_last)
        )
        for i, layer in enumerate(self.runs[0]):
            layers = [run[i] for run in self.runs]
            if isinstance(layer, nn.Conv2d):
                weight = torch.cat([m.weight for m in layers])
                bias = None if layer.bias is None else torch.cat([m.bias for m in layers])
                y = F.conv2d(y, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups * k)
            elif isinstance(layer, nn.BatchNorm2d):
                y = _packed_batch_norm(y, layers, self.training)
            elif isinstance(layer, nn.Flatten):
                return y.reshape(b, k, -1).transpose(0, 1).reshape(n, -1)
            else:
                y = layer(y)
        c2, h2, w2 = y.shape[1] // k, y.shape[2], y.shape[3]
        return y.reshape(b, k, c2, h2, w2).transpose(0, 1).reshape(n, c2, h2, w2)


def _stage_end(children: list[nn.Module], start: int) -> int:
    """The index after the convolutional stage that starts at ``children[start]``."""
    end = start
    while end < len(children) and isinstance(children[end], _STAGE_LAYERS):
        end += 1
    if end < len(children) and isinstance(children[end], nn.Flatten):
        end += 1
    return end


def _pack(nets: Sequence[nn.Module], strategy: str, memo: dict[int, nn.Module], path: str) -> nn.Module:
    first = nets[0]
    if id(first) in memo:  # a module used twice (weight sharing: branch2 is branch1)
        return memo[id(first)]
    _check_same(nets, path)
    if isinstance(first, (nn.Conv2d, nn.BatchNorm2d)):
        packed: nn.Module = PackedStage([[m] for m in nets], strategy)
    elif isinstance(first, nn.Linear):
        packed = PackedLinear(nets)
    elif isinstance(first, nn.BatchNorm1d):
        packed = PackedBatchNorm1d(nets)
    elif isinstance(first, Dropout):
        packed = PackedDropout(nets)
    elif isinstance(first, nn.Dropout):
        if first.p:
            raise NotPackable(f"{path}: torch's nn.Dropout draws its masks from the global generator")
        packed = first
    elif isinstance(first, _SHARED_LAYERS):
        packed = first
    elif isinstance(first, nn.Sequential):
        names = list(first._modules)
        children = [first._modules[name] for name in names]
        parts: list[nn.Module] = []
        i = 0
        while i < len(children):
            if isinstance(children[i], (nn.Conv2d, nn.BatchNorm2d)):
                end = _stage_end(children, i)
                for j in range(i, end):
                    _check_same([net._modules[names[j]] for net in nets], f"{path}.{names[j]}")
                parts.append(PackedStage([[net._modules[n] for n in names[i:end]] for net in nets], strategy))
                i = end
            else:
                parts.append(_pack([net._modules[names[i]] for net in nets], strategy, memo, f"{path}.{names[i]}"))
                i += 1
        packed = nn.Sequential(*parts)
    elif first._parameters or first._buffers:
        raise NotPackable(f"{path or 'the network'}: {type(first).__name__} has weights and no packed form")
    elif first._modules:  # a container with its own forward (TwoBranchNet): the same, with packed children
        packed = copy.copy(first)
        packed._modules = {
            name: None
            if child is None
            else _pack([net._modules[name] for net in nets], strategy, memo, f"{path}.{name}".lstrip("."))
            for name, child in first._modules.items()
        }
        packed._parameters, packed._buffers = {}, {}
    else:
        raise NotPackable(f"{path or 'the network'}: {type(first).__name__} is not a layer that packs")
    memo[id(first)] = packed
    return packed


def pack(nets: Sequence[nn.Module], strategy: str = "loop") -> nn.Module:
    """One network over ``K`` runs' batches from the ``K`` solo networks ``nets``.

    Args:
        nets: ``K >= 1`` networks of one class and shapes (an ``nn.ModuleList`` of ensemble
            members packs member by member).
        strategy: how convolutional stages run, ``loop`` (the CPU's best) or ``grouped``
            (the GPU's); see :class:`PackedStage`.

    Returns:
        a module with the solo networks' forward, taking ``(K * B, ...)`` and returning what
        a solo network returns for ``B`` rows, for ``K * B`` rows (run ``k``'s block ``k``).
        Its parameters are the solo networks' own.

    Raises:
        NotPackable: networks of different structure, or a layer with weights that has no
            packed form (the message names its path).
        ValueError: an unknown ``strategy`` or no networks.
    """
    if not nets:
        raise ValueError("pack() needs at least one network")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if isinstance(nets[0], nn.ModuleList):
        _check_same(nets, "members")
        return nn.ModuleList(pack([net[i] for net in nets], strategy) for i in range(len(nets[0])))
    return _pack(list(nets), strategy, {}, "")
