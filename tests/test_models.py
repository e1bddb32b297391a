"""The networks of Table 1 and the LightningModules (docs/design.md §2, §3).

Shapes and parameter counts, the losses computed by hand, the learning-rate switch,
and checkpoints that restore with ``<Class>.load_from_checkpoint(path)``.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from digitpairs.data import PairDataModule
from digitpairs.models.lightning_modules import ConvNetModule, WSAuxModule, WSModule
from digitpairs.models.nets import Comparator, ConvNet, Dropout, TwoBranchNet
from digitpairs.training.history import EpochHistory
from digitpairs.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # Lightning 2.6 on torch 2.14, harmless

# model name -> (class, constructor arguments, parameters of .net, has digit logits)
MODELS = {
    "convnet": (ConvNetModule, {}, 91_406, False),
    "ws": (WSModule, {"weight_sharing": True}, 103_128, True),
    "ws_aux": (WSAuxModule, {"weight_sharing": True}, 103_128, True),
    "aux": (WSAuxModule, {"weight_sharing": False}, 195_054, True),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def batch(b: int = 8, seed: int = 0):
    """A synthetic batch (shapes and losses only; nothing here learns from it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, 14, 14, generator=g)
    classes = torch.randint(0, 10, (b, 2), generator=g)
    return x, (classes[:, 0] <= classes[:, 1]).long(), classes


# ---- networks --------------------------------------------------------------------------
def test_convnet_trunk_layers_and_parameters():
    net = ConvNet(1, 10)
    assert n_params(net) == 91_926  # 320 + 18,496 + 51,400 + 400 + 20,100 + 200 + 1,010
    assert n_params(ConvNet(2, 2)) == 91_406
    assert n_params(Comparator()) == 11_202  # 3,150 + 300 + 7,550 + 100 + 102
    shapes = []
    for layer in net:
        layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    out = net.eval()(torch.zeros(3, 1, 14, 14))
    assert out.shape == (3, 10)
    assert shapes[:7] == [(32, 12, 12), (32, 6, 6), (32, 6, 6), (64, 4, 4), (64, 2, 2), (64, 2, 2), (256,)]
    widths = [m.num_features for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    assert widths == [200, 100]  # the printed table's 200 after a 100-wide layer is corrected
    drops = [m.p for m in net if isinstance(m, Dropout)]
    assert drops == [0.2, 0.2]
    for bad in ({"c_in": 0, "k": 2}, {"c_in": 1, "k": 0}, {"c_in": 1, "k": 2, "p_drop": 1.0}):
        with pytest.raises(ValueError):
            ConvNet(**bad)


def test_dropout_is_inverted_dropout_and_reproducible():
    torch.manual_seed(0)
    layer = Dropout(0.2)
    x = torch.ones(200, 500)
    y = layer.train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.01  # 100,000 draws: 4 standard errors is 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1.25))
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    again = Dropout(0.2).train()
    assert torch.equal(again(x), y)  # the same seed gives the same masks
    x.requires_grad_()
    layer.train()(x).sum().backward()
    assert set(x.grad.unique().tolist()) == {0.0, 1.25}


def test_two_branch_net_shares_weights_and_compares_probabilities():
    torch.manual_seed(0)
    shared, separate = TwoBranchNet(True).eval(), TwoBranchNet(False).eval()
    assert shared.branch1 is shared.branch2 and separate.branch1 is not separate.branch2
    x, _, _ = batch(6)
    swapped = x.flip(1)
    _, d = shared(x)
    _, d_swapped = shared(swapped)
    assert torch.allclose(d_swapped, d.flip(1), atol=1e-6)  # one trunk: swapping digits swaps logits
    _, d = separate(x)
    _, d_swapped = separate(swapped)
    assert not torch.allclose(d_swapped, d.flip(1), atol=1e-3)
    seen = []
    shared.comparator.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    shared(x)
    probs = seen[0]
    assert probs.shape == (6, 20) and (probs >= 0).all()
    assert torch.allclose(probs[:, :10].sum(1), torch.ones(6)) and torch.allclose(probs[:, 10:].sum(1), torch.ones(6))


@pytest.mark.parametrize("name", list(MODELS))
def test_model_shapes_and_parameter_counts(name):
    cls, kwargs, count, has_digits = MODELS[name]
    model = cls(**kwargs)
    assert sum(p.numel() for p in model.net.parameters()) == count
    assert model.has_aux == (name in ("ws_aux", "aux"))
    x, _, _ = batch(5)
    for mode in (model.train, model.eval):
        mode()
        logits, digits = model(x)
        assert logits.shape == (5, 2) and logits.dtype == torch.float32
        if has_digits:
            assert digits.shape == (5, 2, 10) and digits.dtype == torch.float32
        else:
            assert digits is None


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    a = ConvNetModule(channels_last=True).eval()
    b = ConvNetModule(channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x, _, _ = batch(4)
    assert torch.allclose(a(x)[0], b(x)[0], atol=1e-5)


# ---- losses ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_literal_softmax_changes_the_loss_not_the_predictions(name):
    cls, kwargs, _, _ = MODELS[name]
    torch.manual_seed(0)
    plain = cls(**kwargs).eval()
    literal = cls(literal_softmax=True, **kwargs).eval()
    literal.load_state_dict(plain.state_dict())
    x, target, classes = batch(16)
    logits, digits = plain(x)
    logits_l, digits_l = literal(x)
    assert torch.equal(logits.argmax(1), logits_l.argmax(1))
    loss_plain = plain.losses(logits, digits, target, classes)["main"]
    loss_literal = literal.losses(logits_l, digits_l, target, classes)["main"]
    assert loss_plain.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert loss_literal.item() == pytest.approx(F.cross_entropy(logits.softmax(1), target).item(), rel=1e-6)
    assert abs(loss_plain.item() - loss_literal.item()) > 1e-3


@pytest.mark.parametrize("weight_sharing", [True, False], ids=["ws_aux", "aux"])
def test_aux_loss_by_hand(weight_sharing):
    torch.manual_seed(0)
    alpha, gamma = 0.3, 2.0
    model = WSAuxModule(alpha=alpha, gamma=gamma, weight_sharing=weight_sharing).eval()  # eval: no dropout
    x, target, classes = batch(12, seed=1)
    logits, digits = model(x)
    main = F.cross_entropy(logits, target)
    d1, d2 = F.cross_entropy(digits[:, 0], classes[:, 0]), F.cross_entropy(digits[:, 1], classes[:, 1])
    expected = gamma * main + alpha * (d1 + d2)
    terms = model.losses(logits, digits, target, classes)
    assert set(terms) == {"main", "digit1", "digit2"}
    assert terms["main"].item() == pytest.approx(gamma * main.item(), rel=1e-6)
    assert terms["digit1"].item() == pytest.approx(alpha * d1.item(), rel=1e-6)
    assert terms["digit2"].item() == pytest.approx(alpha * d2.item(), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = model.training_step((x, target, classes), 0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_models_without_aux_use_only_the_main_loss():
    torch.manual_seed(0)
    x, target, classes = batch(10)
    for model in (ConvNetModule(gamma=0.5).eval(), WSModule(gamma=0.5).eval()):
        logits, digits = model(x)
        terms = model.losses(logits, digits, target, classes)
        assert list(terms) == ["main"]
        assert terms["main"].item() == pytest.approx(0.5 * F.cross_entropy(logits, target).item(), rel=1e-6)


def test_bad_hyperparameters_raise_config_errors():
    for cls, kwargs, msg in [
        (ConvNetModule, {"lr1": 0.0}, "optim.lr1=0.0"),
        (WSModule, {"lr2": -1e-3}, "optim.lr2=-0.001"),
        (WSAuxModule, {"gamma": -1.0}, "loss.gamma=-1.0"),
        (WSAuxModule, {"alpha": -0.5}, "loss.alpha=-0.5"),
        (ConvNetModule, {"switch_fraction": 1.5}, "optim.switch_fraction=1.5"),
    ]:
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.") + " is not allowed: expected"):
            cls(**kwargs)


# ---- learning rate ---------------------------------------------------------------------
def lr_per_epoch(model, max_epochs: int) -> list[float]:
    model.trainer = SimpleNamespace(max_epochs=max_epochs)  # what configure_optimizers reads
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(opt, torch.optim.SGD)
    lrs = []
    for _ in range(max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_lr_switch_of_the_study():
    model = WSAuxModule()
    lrs = lr_per_epoch(model, 50)
    assert lrs[:30] == pytest.approx([0.09] * 30, rel=1e-9)
    assert lrs[30:] == pytest.approx([0.001] * 20, rel=1e-9)
    opt = model.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["weight_decay"] == 5e-4 and opt.param_groups[0]["momentum"] == 0.0
    assert lr_per_epoch(ConvNetModule(lr1=0.05, lr2=0.01, switch_fraction=0.5), 7) == pytest.approx(
        [0.05] * 3 + [0.01] * 4,
        rel=1e-9,  # floor(0.5 * 7) = 3 epochs at lr1
    )
    assert lr_per_epoch(ConvNetModule(switch_fraction=1.0), 4) == pytest.approx([0.09] * 4)
    assert lr_per_epoch(ConvNetModule(switch_fraction=0.0), 4) == pytest.approx([0.001] * 4)


# ---- a short real training run: schedule, logged terms, checkpoints --------------------
def fit(model, tmp_path, max_epochs: int, **data):
    """Fit ``model`` on a few real MNIST pairs; returns (trainer, history, datamodule)."""
    L.seed_everything(0, verbose=False)
    dm = PairDataModule(**{"n_pairs": 200, "batch_size": 40, "seed": 0, **data})
    history = EpochHistory(["train/loss", "train/loss_main", "train/loss_digit1", "train/loss_digit2", "lr"], [])
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[history],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, history.history, dm


@pytest.mark.slow
def test_trainer_switches_lr_and_logs_each_loss_term(tmp_path):
    model = WSAuxModule(alpha=0.5, switch_fraction=0.6)
    trainer, history, _ = fit(model, tmp_path, max_epochs=5)
    assert history["lr"] == pytest.approx([0.09, 0.09, 0.09, 0.001, 0.001], rel=1e-6)  # switch at epoch 3
    assert len(history["train/loss"]) == 5
    for epoch in range(5):  # the total is the sum of the logged (weighted) terms
        parts = sum(history[f"train/loss_{k}"][epoch] for k in ("main", "digit1", "digit2"))
        assert history["train/loss"][epoch] == pytest.approx(parts, rel=1e-5)
    assert history["train/loss"][-1] < history["train/loss"][0]
    metrics = trainer.callback_metrics
    for k in ("train/acc", "val/acc", "val/loss", "val/digit_acc"):
        assert k in metrics, k


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_restores_identical_model(name, tmp_path):
    cls, kwargs, count, _ = MODELS[name]
    torch.manual_seed(0)
    extra = {"alpha": 0.4} if cls is WSAuxModule else {}
    model = cls(lr1=0.05, gamma=0.9, **extra, **kwargs)
    trainer, _, dm = fit(model, tmp_path, max_epochs=1, n_pairs=100, batch_size=50)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)

    restored = cls.load_from_checkpoint(path)  # no arguments: hyperparameters are in the file
    assert type(restored) is cls
    assert sum(p.numel() for p in restored.net.parameters()) == count
    assert restored.hparams.lr1 == 0.05 and restored.hparams.gamma == 0.9
    if cls is WSAuxModule:
        assert restored.hparams.alpha == 0.4 and restored.net.weight_sharing == kwargs["weight_sharing"]
    x = dm.sets["test"].tensors[0][:64]
    model.eval(), restored.eval()
    with torch.no_grad():
        out, out_restored = model(x), restored(x)
        torch.manual_seed(123)
        fresh = cls(**kwargs).eval()(x)
    assert torch.equal(out[0], out_restored[0])
    if out[1] is not None:
        assert torch.equal(out[1], out_restored[1])
    assert not torch.allclose(out[0], fresh[0]), "a fresh model gives the same outputs: the test proves nothing"
    # Training changed the BatchNorm running statistics; the checkpoint carries them.
    bn = [m for m in restored.net.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["PairDataModule"]["resolved_source"] == "idx"
    assert math.isclose(ckpt["PairDataModule"]["mean"], dm.mean)
