"""Packed networks (digitpairs/models/packed.py) against the solo networks they are made of.

The oracle: K=3 solo modules are copied; the originals are packed; the pack on the three
runs' batches back to back must give what each copy gives alone on its own batch:
outputs, losses and gradients, in training mode (dropout masks from the same generators,
BatchNorm on each run's own batch) and in evaluation mode (running estimates, test-time
views, ensembles), for every model and both strategies.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from digitpairs.data import PairDataModule
from digitpairs.models.lightning_modules import ConvNetModule, DigitClassifierModule, WSAuxModule, WSModule
from digitpairs.models.nets import Dropout
from digitpairs.models.packed import NotPackable, PackedDropout, PackedStage, pack

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

K, B = 3, 12
MODELS = {
    "convnet": (ConvNetModule, {}),
    "ws": (WSModule, {"weight_sharing": True}),
    "ws_aux": (WSAuxModule, {"weight_sharing": True, "alpha": 0.5}),
    "aux": (WSAuxModule, {"weight_sharing": False}),
    "ws_aux wide": (WSAuxModule, {"trunk": "wide"}),
    "digit_classifier": (DigitClassifierModule, {}),
    "beyond's networks": (DigitClassifierModule, {"members": 2, "tta": 2}),
}


@pytest.fixture(scope="module")
def digits():
    """Three runs' batches of real pairs (normalised), back to back: ``(K * B, 2, 14, 14)``."""
    dm = PairDataModule(n_pairs=K * B, val_fraction=0.0, seed=0)
    dm.setup()
    return dm.sets["train"].tensors


def _solo_modules(name: str, **extra) -> list:
    cls, kwargs = MODELS[name]
    modules = []
    for seed in range(K):
        torch.manual_seed(seed)
        modules.append(cls(**kwargs, **extra))
    return modules


def _rows(t: torch.Tensor, k: int, dim: int = 0) -> torch.Tensor:
    return t.narrow(dim, k * B, B)


@pytest.mark.parametrize("strategy", ["loop", "grouped"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pack_gives_each_runs_outputs_losses_and_gradients(name, strategy, digits):
    x, target, classes = digits
    modules = _solo_modules(name, lr1=0.05)
    oracle = copy.deepcopy(modules)  # the same weights, BatchNorm estimates and dropout generators
    packed = pack([m.net for m in modules], strategy)
    for m in modules + oracle:
        m.train()
    packed.train()
    # training mode: each run's loss on its own rows
    outputs = modules[0].forward_with(packed, x)
    total = 0
    for k, m in enumerate(modules):
        out_k = tuple(None if t is None else _rows(t, k, t.dim() - (2 if i == 0 else 3)) for i, t in enumerate(outputs))
        loss_k, _ = m.step_loss(out_k, _rows(target, k), _rows(classes, k))
        solo_out = oracle[k](_rows(x, k))
        solo_loss, _ = oracle[k].step_loss(solo_out, _rows(target, k), _rows(classes, k))
        torch.testing.assert_close(out_k[0], solo_out[0], rtol=1e-4, atol=1e-5)
        if solo_out[1] is not None:
            torch.testing.assert_close(out_k[1], solo_out[1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss_k, solo_loss, rtol=1e-5, atol=1e-6)
        solo_loss.backward()
        total = total + loss_k
    total.backward()
    for m, o in zip(modules, oracle, strict=True):
        for (pname, p), q in zip(m.named_parameters(), o.parameters(), strict=True):
            assert p.grad is not None, pname
            where = f"{name}: gradient of {pname}"
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=5e-5, msg=lambda m, w=where: f"{w}: {m}")
        for (bname, b), c in zip(m.named_buffers(), o.buffers(), strict=True):  # BatchNorm's running estimates
            where = f"{name}: {bname}"
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=lambda m, w=where: f"{w}: {m}")
    # evaluation mode: running estimates, test-time views, an ensemble's mean
    for m in modules + oracle:
        m.eval()
    packed.eval()
    with torch.no_grad():
        outputs = modules[0].forward_with(packed, x)
        for k, m in enumerate(modules):
            logits, digit_logits = m.finish(
                _rows(x, k), _rows(outputs[0], k), None if outputs[1] is None else _rows(outputs[1], k)
            )
            solo_logits, solo_digits = oracle[k](_rows(x, k))
            torch.testing.assert_close(logits, solo_logits, rtol=1e-4, atol=1e-5)
            if solo_digits is not None:
                torch.testing.assert_close(digit_logits, solo_digits, rtol=1e-4, atol=1e-5)


def test_pack_holds_the_solo_parameters_themselves():
    modules = _solo_modules("ws_aux")
    packed = pack([m.net for m in modules])
    own = {id(p) for m in modules for p in m.net.parameters()}
    assert {id(p) for p in packed.parameters()} == own  # no copies: training the pack trains the runs
    with torch.no_grad():
        modules[1].net.comparator[0].weight.zero_()
    assert any(torch.equal(p, modules[1].net.comparator[0].weight) for p in packed.parameters())


def test_cpu_dropout_masks_are_the_solo_runs_masks():
    layers = [Dropout(0.5) for _ in range(K)]
    twins = copy.deepcopy(layers)
    x = torch.ones(K * B, 7)
    out = PackedDropout(layers).train()(x)
    for k, twin in enumerate(twins):
        torch.testing.assert_close(_rows(out, k), twin.train()(torch.ones(B, 7)))
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_stage_of_table1_trunk_runs_conv_pool_relu_through_flatten():
    modules = _solo_modules("convnet")
    packed = pack([m.net for m in modules])
    stage = packed[0]
    assert isinstance(stage, PackedStage) and stage.flatten
    assert [type(layer).__name__ for layer in stage.runs[0]] == [
        "Conv2d",
        "MaxPool2d",
        "ReLU",
        "Conv2d",
        "MaxPool2d",
        "ReLU",
        "Flatten",
    ]


def test_networks_that_do_not_pack_say_which_layer():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(NotPackable, match=r"body\.1: Odd has weights and no packed form"):
        pack([_wrap(nn.Sequential(nn.Linear(3, 3), Odd())) for _ in range(2)])
    with pytest.raises(NotPackable, match="differ in shape"):
        pack([nn.Linear(3, 4), nn.Linear(3, 5)])
    with pytest.raises(NotPackable, match="global generator"):
        pack([nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)) for _ in range(2)])


def _wrap(seq: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.body = seq
    return holder
