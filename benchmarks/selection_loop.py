"""A fast research loop for issue #7: digit-classifier variants scored on the validation split.

Bare PyTorch (no Lightning, no Hydra), so that a configuration costs only its training:
for each seed, the pairs of ``PairDataModule(source, root, val_fraction=--val, seed)``
are built as the project builds them; the networks are trained as digit classifiers on the
digits of the fit pairs (their classes, cross-entropy) with SGD, Nesterov momentum 0.9 and
a one-cycle schedule; they are scored on the **validation** digits and pairs (the pair by
the probability rule P(d1 <= d2) > 0.5, ``digitpairs.rules.prob_leq``). The test pairs are
never read. It prints one line per seed and, per test-time view setting, one ``RESULT``
line: digit errors, pair errors, the mean NLL of the true digit classes, seconds per run::

    python benchmarks/selection_loop.py --arch cp32,cp64,fc128 --ens 2 --joint --epochs 70 --tta --seeds 0-15
    python benchmarks/selection_loop.py --arch cp32,cp64,fc128 --ens 4 --joint --epochs 35 --tta --seeds 0-15

The README's table "Checked again, after the results below were read" is this loop on
seeds 0-15; its rows change the keys shown there (``--ens``/``--epochs``, ``--augp 0.5``,
``--bnrecal``, ``--shift 2 --rotate 15 --scale 0.15``, ``--shift 1 --rotate 8 --scale 0.07``,
``--drop 0.1``, ``--wd 1e-3``, ``--mutual 1`` (deep mutual learning, Zhang et al. 2018),
``--thick 0.5`` (random stroke width), ``--shear 10``, ``--sam 0.05`` (SAM, Foret et al. 2021),
``--arch "cp32,cp64,fc128|table1"`` (two different trunks), ``--deskew`` (moment deskewing),
``--resample bicubic``, ``--repeat 2`` (repeated augmentation, Hoffer et al. 2020), wider and
deeper ``--arch`` lists, ``--ls 0.1``, ``--ls 0.05``, ``--drop 0.5``, ``--wd 2.5e-4``, the
members apart (no ``--joint``), ``--pairloss 1`` (a probability-rule loss on every in-batch
pair), ``--ls 0.05 --pairloss 1``, 4 or 2 much wider members, ``--kd 0.5`` (born-again distillation:
students trained on the members' soft labels, Furlanello et al. 2018), ``--kd 0.5 --kd-keep``,
``--arch u,cp16,cp32,cp64,fc128`` (the digit upsampled 2x inside the network), ``--upsample``
(every digit upsampled to 28x28 before augmentation));
none of them beat the recipe there.

How it differs from ``train.py recipe=beyond`` (so its figures are not the project's):
the trunk is built from ``--arch`` (``cp32,cp64,fc128`` is the same network as
``model.trunk=compact``, initialised in another order); the augmentation is kornia's
``RandomAffine`` called directly (the same draws as ``data.augment=affine``); the
test-time views are drawn per digit (the project draws the same views for every digit).
Use it to rank ideas cheaply on validation; measure a chosen one with ``train.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitpairs.data import PairDataModule  # noqa: E402
from digitpairs.rules import prob_leq  # noqa: E402
from digitpairs.runtime import configure_cpu  # noqa: E402

# test-time view settings scored on the same trained networks: (name, views, strength factor)
VIEWS = [("tta8", 8, 1.0), ("tta16", 16, 1.0), ("tta32", 32, 1.0), ("tta16h", 16, 0.5), ("tta16x", 16, 1.5)]
VIEW_SEED = 1234


def make_net(arch: str, p_drop: float) -> nn.Sequential:
    """A digit classifier ``float (N, 1, H, W) -> logits float (N, 10)`` from a layer list
    (H = W = 14, or 28 with ``--upsample``).

    ``arch`` is ``table1`` (Table 1 of the study, ``digitpairs.nets.ConvNet``) or a comma
    list of: ``cpC`` (``cpCkK``: kernel K, default 3) conv to C channels, max-pool 2,
    BatchNorm, ReLU; ``cC`` (``cCkK``: kernel K) conv, BatchNorm, ReLU; ``p`` max-pool 2;
    ``u`` bilinear 2x upsampling; ``g`` global average pooling; ``fcN`` flatten, Linear to N,
    BatchNorm, ReLU. Dropout ``p_drop`` and Linear(., 10) close it. Linear layers are lazy:
    call the network once before use.

    Raises:
        SystemExit: an unknown layer in ``arch``.
    """
    if arch == "table1":
        from digitpairs.nets import ConvNet

        return ConvNet(1, 10, 0.2)
    try:
        return _make_layers(arch, p_drop)
    except ValueError:  # a count or kernel that is not an integer, e.g. cp32kx
        raise SystemExit(f"error: --arch {arch!r}: a channel count, unit count or kernel is not an integer; "
                         "expected cpC, cpCkK, cC, cCkK, p, u, g or fcN") from None


def _make_layers(arch: str, p_drop: float) -> nn.Sequential:
    """The network of :func:`make_net`; ``ValueError`` for a number that is not an integer."""
    layers: list[nn.Module] = []
    c = 1
    for s in arch.split(","):
        if s.startswith("cp"):  # the elementwise work on the pooled map (max-pool commutes with ReLU)
            co, _, k = s[2:].partition("k")
            co, k = int(co), int(k or 3)
            layers += [nn.Conv2d(c, co, k, padding=k // 2, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(co), nn.ReLU()]
            c = co
        elif s.startswith("fc"):
            n = int(s[2:])
            layers += [nn.Flatten(), nn.LazyLinear(n), nn.BatchNorm1d(n), nn.ReLU()]
            c = n
        elif s.startswith("c") and s[1:].split("k")[0].isdigit():
            co, _, k = s[1:].partition("k")
            k = int(k or 3)
            layers += [nn.Conv2d(c, int(co), k, padding=k // 2, bias=False), nn.BatchNorm2d(int(co)), nn.ReLU()]
            c = int(co)
        elif s == "p":
            layers.append(nn.MaxPool2d(2))
        elif s == "u":  # bilinear 2x upsampling: the following layers see a 28x28 digit
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        elif s == "g":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        else:
            raise SystemExit(f"error: --arch {arch!r}: unknown layer {s!r}: "
                             "expected cpC, cpCkK, cC, cCkK, p, u, g or fcN")
    layers += [nn.Flatten(), nn.Dropout(p_drop), nn.LazyLinear(10)]
    return nn.Sequential(*layers)


def random_affine(a: argparse.Namespace, f: float = 1.0, shear: float | None = None, p: float = 1.0) -> nn.Module:
    """kornia's ``RandomAffine`` at ``f`` times the strengths ``--shift``/``--rotate``/``--scale``
    (``--resample`` interpolation), for training (with shear and ``--augp``) and test-time views."""
    import kornia.augmentation as K

    return K.RandomAffine(degrees=a.rotate * f, translate=(a.shift * f / 14, a.shift * f / 14),
                          scale=(1 - a.scale * f, 1 + a.scale * f), shear=shear, p=p, resample=a.resample)


def make_augment(a: argparse.Namespace) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training augmentation of single digits ``float (N, 1, 14, 14)``, background 0:
    kornia's ``RandomAffine`` (probability ``--augp``), then optional elastic distortion and
    random erasing."""
    import kornia.augmentation as K

    augs = [random_affine(a, shear=a.shear if a.shear else None, p=a.augp)]
    if a.elastic:
        ks = int(4 * a.esigma) | 1
        augs.append(K.RandomElasticTransform(kernel_size=(ks, ks), sigma=(a.esigma, a.esigma),
                                             alpha=(a.elastic, a.elastic), p=1.0))
    if a.erase:
        augs.append(K.RandomErasing(scale=(0.02, a.erase), ratio=(0.5, 2.0), value=0.0, p=0.5))
    seq = K.AugmentationSequential(*augs)
    if not a.thick:
        return seq

    def with_stroke(x: torch.Tensor) -> torch.Tensor:
        """The affine draw, then a random stroke width per digit: a blend of the digit with its
        3x3 grey-level dilation (t > 0) or erosion (t < 0), t ~ U(-thick, thick)."""
        x = seq(x)
        t = (torch.rand(len(x), 1, 1, 1) * 2 - 1) * a.thick
        dil = F.max_pool2d(x, 3, 1, 1)
        ero = -F.max_pool2d(-x, 3, 1, 1)
        return x + t.clamp_min(0) * (dil - x) + (-t).clamp_min(0) * (ero - x)

    return with_stroke


def deskew(x: torch.Tensor, fill: float) -> torch.Tensor:
    """Moment deskewing of digits ``float (N, 1, H, W)``, background ``fill``: each digit is
    sheared so that its principal axis is vertical and shifted so that its centre of mass is
    the image centre (the classic MNIST preprocessing, e.g. LeCun et al. 1998, section on
    deslanting); the same for every split, since it reads the digit alone."""
    n, _, h, w = x.shape
    g = (x - fill).clamp_min(0)[:, 0]
    tot = g.sum((1, 2)).clamp_min(1e-6)
    rows = torch.arange(h, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype).view(1, 1, w)
    m0 = (g * rows).sum((1, 2)) / tot
    m1 = (g * cols).sum((1, 2)) / tot
    dr, dc = rows - m0.view(-1, 1, 1), cols - m1.view(-1, 1, 1)
    v00 = (g * dr ** 2).sum((1, 2)) / tot
    v01 = (g * dr * dc).sum((1, 2)) / tot
    alpha = v01 / v00.clamp_min(1e-6)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 0, 1] = alpha * (h - 1) / (w - 1)
    theta[:, 0, 2] = 2 * (m1 - (w - 1) / 2) / (w - 1)
    theta[:, 1, 1] = 1
    theta[:, 1, 2] = 2 * (m0 - (h - 1) / 2) / (h - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x - fill, grid, align_corners=True, padding_mode="zeros") + fill


def member_loss(a: argparse.Namespace, net: nn.Module, xb: torch.Tensor, cb: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The training loss of one member on the batch ``xb (N, 1, 14, 14)``, classes ``cb (N,)``,
    as a closure (SAM evaluates it twice): cross-entropy with ``--ls`` (plus ``--pairloss``
    times :func:`all_pairs_bce`), or with ``--mixup`` the mixup loss, its ``lam`` and partner
    order drawn once, here."""
    if not a.mixup:
        def plain() -> torch.Tensor:
            out = net(xb)
            ce = F.cross_entropy(out, cb, label_smoothing=a.ls)
            return ce + a.pairloss * all_pairs_bce(out, cb) if a.pairloss else ce

        return plain
    lam = float(torch.distributions.Beta(a.mixup, a.mixup).sample())
    j = torch.randperm(len(cb))

    def loss() -> torch.Tensor:
        out = net(lam * xb + (1 - lam) * xb[j])
        return lam * F.cross_entropy(out, cb) + (1 - lam) * F.cross_entropy(out, cb[j])

    return loss


def all_pairs_bce(logits: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (a float scalar, nats) of the probability rule P(d_a <= d_b)
    (``digitpairs.rules.prob_leq``) against the target (c_a <= c_b), averaged over every
    ordered pair a != b of a batch's ``N >= 2`` digits: ``logits float (N, K)``, classes
    ``cb int64 (N,)``. A pair loss on all N(N-1) pairs of the batch's digits, not only on
    the protocol's pairs (``--pairloss``; checked on 16 seeds, not kept)."""
    p = logits.softmax(1)
    prob = prob_leq(p[:, None], p[None, :]).clamp(1e-6, 1 - 1e-6)  # (N, N): row a, column b
    target = (cb[:, None] <= cb[None, :]).to(p.dtype)
    off = ~torch.eye(len(cb), dtype=torch.bool)
    return F.binary_cross_entropy(prob[off], target[off])


def kd_loss(logits: torch.Tensor, teacher_p: torch.Tensor, cb: torch.Tensor, w: float, t: float) -> torch.Tensor:
    """The distillation loss (Hinton et al. 2015), a float scalar in nats: ``(1 - w)`` times the
    cross-entropy of ``logits float (N, K)`` against the classes ``cb int64 (N,)``, plus
    ``w * t^2`` times the KL from the teachers' probabilities at temperature ``t``,
    ``teacher_p float (N, K)`` (rows sum to 1), to the student's ``softmax(logits / t)``."""
    kl = F.kl_div((logits / t).log_softmax(1), teacher_p, reduction="batchmean")
    return (1 - w) * F.cross_entropy(logits, cb) + w * t ** 2 * kl


def sam_gradient(net: nn.Module, loss: Callable[[], torch.Tensor], rho: float) -> None:
    """SAM (Foret et al. 2021): replace the gradients of ``net`` (already computed at ``w``)
    by those of ``loss`` at ``w + rho * g / ||g||``; the weights are left at ``w``."""
    params = [q for q in net.parameters() if q.grad is not None]
    with torch.no_grad():
        norm = torch.norm(torch.stack([q.grad.norm() for q in params])) + 1e-12
        eps = [rho * q.grad / norm for q in params]
        for q, e in zip(params, eps):
            q.add_(e)
    net.zero_grad(set_to_none=True)
    loss().backward()
    with torch.no_grad():
        for q, e in zip(params, eps):
            q.sub_(e)


def mutual_loss(a: argparse.Namespace, nets: list[nn.Module], view: Callable[[], torch.Tensor], xb: torch.Tensor,
                cb: torch.Tensor) -> torch.Tensor:
    """Deep mutual learning (Zhang et al. 2018): the sum over members of cross-entropy plus
    ``--mutual`` times the KL to the other members' mean probabilities (held constant).
    Member 0 sees ``xb``; with ``--member-aug`` each other member a fresh ``view()``."""
    outs = []
    for net in nets:
        if a.member_aug and net is not nets[0]:
            xb = view()
        outs.append(net(xb))
    logp = [o.log_softmax(1) for o in outs]
    loss = 0.0
    for m, o in enumerate(outs):
        peer = torch.stack([logp[j].detach() for j in range(len(outs)) if j != m]).exp().mean(0)
        loss = loss + F.cross_entropy(o, cb, label_smoothing=a.ls) + a.mutual * F.kl_div(logp[m], peer, reduction="batchmean")
    return loss


def train_group(a: argparse.Namespace, nets: list[nn.Module], xd: torch.Tensor, cd: torch.Tensor,
                aug: Callable[[torch.Tensor], torch.Tensor], fill: float,
                teachers: list[nn.Module] | None = None) -> None:
    """Train ``nets`` side by side on the same batches of digits ``xd float (N, 1, H, W)``
    with classes ``cd int64 (N,)``: ``--epochs`` epochs of ``2 * --bs`` digits per step.
    With ``teachers`` (trained, kept in eval mode), each net's loss is ``(1 - --kd)`` times
    cross-entropy plus ``--kd * T^2`` times the KL from the teachers' mean probabilities at
    temperature ``T = --kd-t`` on the same augmented batch (Hinton et al. 2015; born-again
    networks, Furlanello et al. 2018)."""
    cl = torch.channels_last
    opts, scheds = [], []
    steps_per_epoch = len(xd) // (2 * a.bs)
    for net in nets:
        opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=a.wd)
        opts.append(opt)
        scheds.append(torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps_per_epoch,
                                                          cycle_momentum=False))
    for _ in range(a.epochs):
        for net in nets:
            net.train()
        perm = torch.randperm(len(xd))
        per = 2 * a.bs // a.repeat  # distinct digits per step; each seen --repeat times, its own draw each
        for i in range(steps_per_epoch):
            idx = perm[i * per:(i + 1) * per].repeat(a.repeat)
            view = lambda: (aug(xd[idx] - fill) + fill).contiguous(memory_format=cl)  # noqa: E731
            xb, cb = view(), cd[idx]
            if a.mutual:  # one loss couples the members: one backward, then every member steps
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                mutual_loss(a, nets, view, xb, cb).backward()
                for opt, sched in zip(opts, scheds):
                    opt.step()
                    sched.step()
                continue
            if teachers:
                with torch.no_grad():
                    tp = torch.stack([t(xb) / a.kd_t for t in teachers]).softmax(2).mean(0)
            for net, opt, sched in zip(nets, opts, scheds):
                if a.member_aug and net is not nets[0]:
                    xb = view()
                if teachers:
                    def loss(net: nn.Module = net) -> torch.Tensor:
                        return kd_loss(net(xb), tp, cb, a.kd, a.kd_t)
                else:
                    loss = member_loss(a, net, xb, cb)
                opt.zero_grad(set_to_none=True)
                loss().backward()
                if a.sam:
                    sam_gradient(net, loss, a.sam)
                opt.step()
                sched.step()
    if a.bnrecal:  # BatchNorm statistics from the clean training digits
        for net in nets:
            for mod in net.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
                    mod.momentum = None
            net.train()
            with torch.no_grad():
                for i in range(0, len(xd), 200):
                    net(xd[i:i + 200].contiguous(memory_format=cl))


def view_probs(a: argparse.Namespace, net: nn.Module, xvd: torch.Tensor, fill: float) -> dict[str, torch.Tensor]:
    """Class probabilities ``float (N, 10)`` of the digits ``xvd (N, 1, 14, 14)`` in eval mode:
    ``plain`` and, with ``--tta``, each setting of ``VIEWS`` (the digit and K random affine
    views of it, one draw per digit and view, averaged). The global random state is kept."""
    net.eval()
    with torch.no_grad():
        p = net(xvd.contiguous(memory_format=torch.channels_last)).softmax(1)
        out = {"plain": p}
        if a.tta:
            state = torch.get_rng_state()
            torch.manual_seed(VIEW_SEED)
            for name, k, f in VIEWS:
                taug = random_affine(a, f)
                q = p.clone()
                for _ in range(k):
                    q = q + net((taug(xvd - fill) + fill).contiguous(memory_format=torch.channels_last)).softmax(1)
                out[name] = q / (k + 1)
            torch.set_rng_state(state)
    return out


def parse_seeds(text: str) -> list[int]:
    """``0-15`` or ``0,1,2``: the seeds."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="c32,c32,p,c64,c64,p,c128,g", help="layer list (make_net) or table1; "
                    "members of an ensemble: a|b|c, cycled")
    ap.add_argument("--seeds", default="0-3", help="0-15 or 0,1,2")
    ap.add_argument("--source", default="idx", help="data.source (idx: the study's exact protocol)")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "mnist"), help="data.root")
    ap.add_argument("--val", type=float, default=0.2, help="data.val_fraction")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--bs", type=int, default=100, help="pairs per batch (2x digits)")
    ap.add_argument("--lr", type=float, default=0.1, help="one-cycle peak lr")
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--drop", type=float, default=0.3)
    ap.add_argument("--ls", type=float, default=0.0, help="label smoothing")
    ap.add_argument("--shift", type=float, default=1.5, help="pixels")
    ap.add_argument("--rotate", type=float, default=12, help="degrees")
    ap.add_argument("--scale", type=float, default=0.1, help="relative")
    ap.add_argument("--shear", type=float, default=0.0, help="degrees")
    ap.add_argument("--augp", type=float, default=1.0, help="probability of the affine draw per digit")
    ap.add_argument("--elastic", type=float, default=0.0, help="elastic alpha (0: off)")
    ap.add_argument("--esigma", type=float, default=3.0)
    ap.add_argument("--thick", type=float, default=0.0, help="largest stroke-width blend toward the 3x3 "
                    "dilation or erosion (0: off)")
    ap.add_argument("--erase", type=float, default=0.0, help="largest erased area (0: off)")
    ap.add_argument("--pairloss", type=float, default=0.0, help="weight of the all-pairs probability-rule BCE (0: off)")
    ap.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(a, a) (0: off)")
    ap.add_argument("--ens", type=int, default=1, help="ensemble members (probabilities averaged)")
    ap.add_argument("--joint", action="store_true", help="members trained side by side on the same batches")
    ap.add_argument("--member-aug", action="store_true", help="joint: each member its own augmentation draw")
    ap.add_argument("--mutual", type=float, default=0.0, help="joint: weight of the KL to the other members' "
                    "mean probabilities (deep mutual learning; 0: off)")
    ap.add_argument("--sam", type=float, default=0.0, help="SAM radius rho (0: off; 2x the compute per step)")
    ap.add_argument("--bnrecal", action="store_true", help="recompute BatchNorm statistics on clean digits at the end")
    ap.add_argument("--tta", action="store_true", help="also score the test-time view settings of VIEWS")
    ap.add_argument("--repeat", type=int, default=1, help="repeated augmentation: each step 2*bs/R digits, R views each")
    ap.add_argument("--resample", default="bilinear", choices=["bilinear", "bicubic"], help="interpolation of the affine views")
    ap.add_argument("--deskew", action="store_true", help="moment deskewing of every digit (all splits)")
    ap.add_argument("--upsample", action="store_true", help="every digit (all splits) bilinearly upsampled to "
                    "28x28 before augmentation and the network")
    ap.add_argument("--kd", type=float, default=0.0, help="born-again distillation: after the members, train "
                    "as many students on (1 - KD) * CE + KD * T^2 * KL(teachers || student) (0: off)")
    ap.add_argument("--kd-t", type=float, default=2.0, help="distillation temperature T")
    ap.add_argument("--kd-keep", action="store_true", help="distillation: the teachers stay in the ensemble")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    if a.mutual and not (a.joint and a.ens >= 2 and not a.mixup and not a.sam):
        ap.error(f"--mutual {a.mutual}: needs --joint and --ens >= 2 (got --ens {a.ens}, --joint {a.joint}), "
                 f"and neither --mixup nor --sam (got {a.mixup}, {a.sam})")
    if a.pairloss and (a.mixup or a.mutual):
        ap.error(f"--pairloss {a.pairloss}: applies to the plain cross-entropy loss only "
                 f"(got --mixup {a.mixup}, --mutual {a.mutual})")
    if a.kd and not (0 < a.kd <= 1 and a.kd_t > 0):
        ap.error(f"--kd {a.kd} --kd-t {a.kd_t}: the distillation weight must be in (0, 1] and the temperature > 0")
    if a.kd and (a.mutual or a.mixup or a.sam or a.pairloss or a.ls or a.member_aug):
        ap.error(f"--kd {a.kd}: the students' loss is cross-entropy plus distillation on the teachers' batch only; "
                 f"it cannot be combined with --mutual, --mixup, --sam, --pairloss, --ls or --member-aug (got "
                 f"{a.mutual}, {a.mixup}, {a.sam}, {a.pairloss}, {a.ls}, {a.member_aug})")
    if a.repeat < 1 or (2 * a.bs) % a.repeat:
        ap.error(f"--repeat {a.repeat}: must be a positive divisor of the {2 * a.bs} digits of a step (2 * --bs)")
    configure_cpu(1, True, True)
    aug = make_augment(a)
    res: dict[str, list[tuple[int, int, float, float]]] = {}
    for seed in parse_seeds(a.seeds):
        dm = PairDataModule(source=a.source, root=a.root, val_fraction=a.val, seed=seed)
        dm.setup()
        x, _, c = dm.sets["train"].tensors
        xd, cd = x.reshape(-1, 1, 14, 14), c.reshape(-1)
        fill = -dm.mean / dm.std
        xv, tv, cv = dm.sets["val"].tensors
        if a.deskew:
            xd, xv = deskew(xd, fill), deskew(xv.reshape(-1, 1, 14, 14), fill).view(xv.shape)
        xvd = xv.reshape(-1, 1, 14, 14)
        if a.upsample:  # every digit bilinearly to 28x28 once: the training and test-time views are drawn there
            xd, xvd = (F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False) for t in (xd, xvd))
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        probs_all = []
        groups = [list(range(a.ens))] if a.joint else [[m] for m in range(a.ens)]
        archs = a.arch.split("|")
        def build(m: int) -> nn.Module:
            """Member ``m``: its ``--arch`` entry, lazy layers materialised, channels-last."""
            net = make_net(archs[m % len(archs)], a.drop)
            net(xd[:4])
            return net.to(memory_format=torch.channels_last)

        for group in groups:
            nets = [build(m) for m in group]
            train_group(a, nets, xd, cd, aug, fill)
            if a.kd:  # born-again students of this group's members, same architectures
                for t in nets:
                    t.eval()
                students = [build(m) for m in group]
                train_group(a, students, xd, cd, aug, fill, teachers=nets)
                nets = students + (nets if a.kd_keep else [])
            probs_all += [view_probs(a, net, xvd, fill) for net in nets]
        wall = time.perf_counter() - t0
        line = []
        for v in probs_all[0]:
            p = torch.stack([pa[v] for pa in probs_all]).mean(0).view(-1, 2, 10)
            derr = int((p.argmax(2) != cv).sum())
            perr = int(((prob_leq(p[:, 0], p[:, 1]) > 0.5).long() != tv).sum())
            nll = float(-p.clamp_min(1e-12).log().gather(2, cv.unsqueeze(2)).mean())
            res.setdefault(v, []).append((derr, perr, wall, nll))
            line.append(f"{v}: digit err {derr}, pair err {perr}, nll {nll:.4f}")
            if a.ens > 1:  # the first member alone
                q = probs_all[0][v].view(-1, 2, 10)
                line.append(f"[member0 {int((q.argmax(2) != cv).sum())}/"
                            f"{int(((prob_leq(q[:, 0], q[:, 1]) > 0.5).long() != tv).sum())}]")
        print(f"  seed {seed}: " + "  ".join(line) + f"  {wall:.1f}s", flush=True)
    nd, npair = cv.numel(), len(tv)
    for v, rs in res.items():
        n = len(rs)
        d, pe = sum(r[0] for r in rs), sum(r[1] for r in rs)
        print(f"RESULT {a.tag}[{v}] {' '.join(sys.argv[1:])} | digit err {d}/{n * nd} = {100 * d / (n * nd):.2f}% "
              f"| pair err {pe}/{n * npair} = {100 * pe / (n * npair):.2f}% | nll {sum(r[3] for r in rs) / n:.4f} "
              f"| {sum(r[2] for r in rs) / n:.1f}s/run", flush=True)


if __name__ == "__main__":
    main()
