"""Fused trial packs: the fused nets and optimisers against the solo ones, members that never touch
each other, a pack's runs against solo runs, divergence, resume.

Tolerances. A fused layer runs other kernels than the solo one (a grouped convolution instead of a
plain one, `bmm` instead of `addmm`), so fp32 results differ by rounding: a few float32 ulps per
output (eps 1.2e-7 times the sum length). The forward and gradient checks allow 1e-5 of the
tensor's scale, two orders above that and five below any real mistake (a wrong member, a shared
BatchNorm statistic or a missed power iteration moves values by 1e-2 and more). Where the same
kernels run on the same numbers (members of two packs of one size), results are compared exactly.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tuner.config import TrainConfig
from tuner.training.fused import FusedNet, fuse_optimizer
from tuner.training.loop import train
from tuner.config import pack_key
from tuner.training.pack import FusedGAN, MemberSpec, check_packable, fused_gan_step, train_pack
from tuner.training.steps import gan_step
from tuner.training.trial import build_trial

CPU = torch.device("cpu")
SHAPE = dict(dataset="mnist", z_dim=8, g_width=8, d_width=8, batch_size=16, precision="fp32", device="cpu")
MEMBERS = [dict(seed=0, lr=2e-4, beta1=0.5), dict(seed=1, lr=1e-3, beta1=0.0), dict(seed=2, lr=5e-4, beta1=0.3, lr_d_ratio=2.0)]
VARIANTS = {  # every layer kind and step part a pack fuses
    "conv-none-hinge": dict(arch="conv", d_norm="none", loss="hinge"),
    "conv-spectral-lsgan": dict(arch="conv", d_norm="spectral", loss="lsgan"),
    "conv-batch-bce-ema": dict(arch="conv", d_norm="batch", loss="bce", g_ema=0.9),
    "conv-wgan-clip": dict(arch="conv", d_norm="none", loss="wgan"),
    "conv-wgan-gp": dict(arch="conv", d_norm="none", loss="wgan-gp"),
    "mlp-batch-hinge": dict(arch="mlp", d_norm="batch", loss="hinge"),
    "mlp-spectral-bce": dict(arch="mlp", d_norm="spectral", loss="bce"),
}
# How far a fused step's optimiser moments may be from the solo step's, relative to the net's largest entry.
# float32 rounding (the fused nets' grouped convolutions sum in another order): 1e-5. wgan-gp: its gradient
# penalty differentiates D's input gradient, which holds LeakyReLU's slope (0.2 or 1, a step function of the
# pre-activation): a pre-activation within rounding of 0 flips one sample's penalty gradient by a finite
# amount, and with n_critic 5 a flip in an early step moves the later ones. Measured 7e-4 (D) and 4e-5 (G)
# with one torch thread (a flip in the member with lr 1e-3, beta1 0), 3e-7 with two; members that mixed
# their penalties would differ by O(1).
def moment_rel(loss: str) -> float:
    return 1e-2 if loss == "wgan-gp" else 1e-5


IMAGES = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def configs(variant: str, members=MEMBERS) -> list[TrainConfig]:
    return [TrainConfig(**SHAPE, **VARIANTS[variant], **m).resolved() for m in members]


def trials(cfgs):
    return [build_trial(c, CPU) for c in cfgs]


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    return (a - b).abs().max().item() <= rel * scale


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_nets_compute_each_members_solo_net(variant):
    solo = trials(configs(variant))
    x = torch.randn(16, 3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    z = torch.randn(16, 3, 8, generator=torch.Generator().manual_seed(2))
    for name, inputs in (("G", z), ("D", x)):
        fused = FusedNet([t.nets[name] for t in copy.deepcopy(solo)])
        out = fused(inputs)
        for k, t in enumerate(solo):
            expected = t.nets[name](inputs[:, k])
            assert out[:, k].shape == expected.shape
            assert close(out[:, k], expected), (name, k)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_fused_step_gives_each_member_its_solo_gradients_and_update(variant):
    cfgs = configs(variant)
    solo, packed = trials(cfgs), trials(cfgs)
    pack = FusedGAN(packed)
    for t in solo:
        gan_step(t, IMAGES)
    fused_gan_step(pack, IMAGES)
    pack.store()
    for a, b in zip(solo, packed):
        assert a.images_seen == b.images_seen == cfgs[0].batch_size * cfgs[0].n_critic
        assert torch.equal(a.gen.get_state(), b.gen.get_state())  # the same draws, in the solo order
        for name, opt in a.opts.items():
            lr = opt.param_groups[0]["lr"]
            pairs = [(opt.state[p], b.opts[name].state[q]) for p, q in zip(a.nets[name].parameters(), b.nets[name].parameters())]
            for key in pairs[0][0].keys() - {"step"}:  # Adam's moments, RMSprop's square average: the gradients' record
                # against the net's largest entry: a bias gradient sums B*H*W terms that mostly cancel,
                # so its own relative error can be far above the terms' rounding
                scale = max(sa[key].abs().max().item() for sa, _ in pairs)
                assert all((sa[key] - sb[key]).abs().max().item() <= moment_rel(cfgs[0].loss) * scale for sa, sb in pairs), (name, key)
            for (sa, sb), (p, q) in zip(pairs, zip(a.nets[name].parameters(), b.nets[name].parameters())):
                assert float(sa["step"]) == float(sb["step"]) == (cfgs[0].n_critic if name == "D" else 1)
                # a first move is lr * grad / |grad| (Adam) or 10 lr * grad / |grad| (RMSprop, alpha 0.99): a gradient within
                # rounding of 0 may flip its sign, so a weight may differ by up to 2 lr per step
                assert (p - q).abs().max().item() <= 2 * lr * float(sa["step"]) * 10, name
        for name in a.nets:
            state_a, state_b = a.nets[name].state_dict(), b.nets[name].state_dict()
            for (key, u), (_, v) in zip(state_a.items(), state_b.items()):
                if key.endswith(("_u", "_v")):
                    # spectral norm's power-iteration vectors, computed from the layer's weight after the D steps:
                    # they follow that weight's own difference (a first move of a gradient within rounding of 0,
                    # allowed above), measured at 0.01-0.1 times its relative size (7.5e-6 on a weight of 0.037
                    # moved _v by 1.3e-5: Intel Xeon with AMX, 1 thread). A missed or shared power iteration
                    # moves them by 4e-2 and more on the hidden layers (one step's change, measured here).
                    weight = key.rsplit(".", 2)[0] + ".original"
                    rel_w = ((state_a[weight] - state_b[weight]).abs().max() / state_a[weight].abs().max()).item()
                    assert close(u, v, rel=1e-5 + rel_w), (name, key, rel_w)
                elif key.endswith(("running_mean", "running_var")):
                    assert close(u, v), (name, key)
                elif not u.is_floating_point():
                    assert torch.equal(u, v), (name, key)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_members_never_touch_each_other(variant):
    """Members 0 and 2 of [A, B, C] and of [A, B', C] train to the same bits, whatever B is: no state,
    statistic or random draw crosses from one member to another."""
    other = dict(MEMBERS[1], seed=7, lr=3e-3, beta1=0.9)
    first = FusedGAN(trials(configs(variant)))
    second = FusedGAN(trials(configs(variant, [MEMBERS[0], other, MEMBERS[2]])))
    for _ in range(5):
        fused_gan_step(first, IMAGES)
        fused_gan_step(second, IMAGES)
    first.store()
    second.store()
    for k in (0, 2):
        for name in first.trials[k].nets:
            a, b = first.trials[k].nets[name].state_dict(), second.trials[k].nets[name].state_dict()
            assert all(torch.equal(a[key], b[key]) for key in a), (k, name)
    assert not torch.equal(next(first.G.parameters())[1], next(second.G.parameters())[1])  # B did train differently


def test_fused_optimizers_match_torchs_on_the_same_gradients():
    cfgs = configs("conv-wgan-clip") + configs("conv-none-hinge")  # RMSprop, then Adam
    for group in (cfgs[:3], cfgs[3:]):
        solo = trials(group)
        fused = FusedNet([t.nets["D"] for t in copy.deepcopy(solo)])
        opt = fuse_optimizer(fused, [t.opts["D"] for t in copy.deepcopy(solo)])
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            grads = [[torch.randn(p.shape, generator=gen) for p in t.nets["D"].parameters()] for t in solo]
            for t, g in zip(solo, grads):
                for p, gp in zip(t.nets["D"].parameters(), g):
                    p.grad = gp.clone()
                t.opts["D"].step()
            for (param, _), per_member in zip(opt.links, zip(*grads)):
                param.grad = torch.stack(per_member)
            opt.step()
        for k, t in enumerate(solo):
            for (param, _), p in zip(opt.links, t.nets["D"].parameters()):
                assert close(param[k], p, rel=1e-6)


def test_pack_key_separates_shapes_and_step_parts():
    base = TrainConfig(**SHAPE, loss="hinge")
    assert pack_key(base) == pack_key(base.replace(lr=1e-3, beta1=0.1, seed=5, lr_d_ratio=3.0, max_kimg=2.0))
    for change in (dict(z_dim=9), dict(d_width=16), dict(batch_size=8), dict(loss="lsgan"), dict(d_norm="spectral"),
                   dict(g_ema=0.99), dict(arch="mlp")):
        assert pack_key(base) != pack_key(base.replace(**change)), change
    with pytest.raises(ValueError, match="z_dim"):
        check_packable([base, base.replace(z_dim=9)])
    with pytest.raises(ValueError, match="GANs only"):
        check_packable([TrainConfig(**SHAPE, family="vae")])


TINY_RUN = dict(train_limit=256, fid_samples=64, max_kimg=0.25, eval_every_kimg=0.125)


def records(history):
    drop = {"time_s", "img_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in history]


def test_a_pack_member_writes_and_reports_what_its_solo_run_does(idx_mnist, tmp_path):
    """Same FIDs as the member's config trained alone, within rounding's reach (the module docstring):
    at these learning rates over 0.25 kimg the fused kernels' rounding moves an FID by under 1e-4."""
    cfgs = [TrainConfig(**SHAPE, **TINY_RUN, loss="hinge", seed=s, lr=2e-4, beta1=0.5) for s in (0, 1)]
    reported = {0: [], 1: []}
    packed = train_pack([MemberSpec(c, tmp_path / f"m{i}", report=lambda r, d, i=i: reported[i].append((r, d)))
                         for i, c in enumerate(cfgs)])
    for i, (cfg, history) in enumerate(zip(cfgs, packed)):
        solo = train(cfg, tmp_path / f"solo{i}")
        assert [r["kimg"] for r in history] == [r["kimg"] for r in solo]
        assert [r["fid"] for r in history] == pytest.approx([r["fid"] for r in solo], rel=1e-3)
        out = tmp_path / f"m{i}"
        assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == history
        assert sorted(p.name for p in (out / "samples").iterdir()) == ["kimg_0000.125.png", "kimg_0000.250.png"]
        assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg.resolved()
        assert [r for r, _ in reported[i]] == history and all(d == out / "checkpoint" for _, d in reported[i])
        state = torch.load(out / "checkpoint" / "checkpoint.pt", weights_only=True)
        assert state["images_seen"] == round(history[-1]["kimg"] * 1000) and state["config"]["seed"] == cfg.seed


def test_a_diverging_member_is_recorded_and_the_others_go_on(idx_mnist, tmp_path):
    good = TrainConfig(**SHAPE, **TINY_RUN, loss="hinge", seed=0, lr=2e-4, beta1=0.5)
    bad = good.replace(seed=1, lr=1e30)  # its first steps overflow
    histories = train_pack([MemberSpec(bad, tmp_path / "bad"), MemberSpec(good, tmp_path / "good")])
    assert histories[0][-1]["diverged"] and histories[0][-1]["fid"] == float("inf")
    assert histories[0][-1]["kimg"] < 0.25
    assert [r["kimg"] for r in histories[1]] == [0.128, 0.256] and not any(r.get("diverged") for r in histories[1])
    alone = train_pack([MemberSpec(good, tmp_path / "alone")])[0]
    assert [r["fid"] for r in histories[1]] == pytest.approx([r["fid"] for r in alone], rel=1e-3)


def test_a_killed_pack_resumes_every_member_from_its_checkpoint(idx_mnist, tmp_path):
    """A pack stopped after its first evaluation and resumed from the members' checkpoints ends with
    the same records, to the last bit, as one that ran through (the same kernels on the same state)."""
    cfgs = [TrainConfig(**SHAPE, **TINY_RUN, loss="lsgan", d_norm="spectral", seed=s, lr=lr) for s, lr in ((0, 2e-4), (1, 4e-4))]
    full = train_pack([MemberSpec(c, tmp_path / f"full{i}") for i, c in enumerate(cfgs)])
    train_pack([MemberSpec(c.replace(max_kimg=0.125), tmp_path / f"cut{i}") for i, c in enumerate(cfgs)])
    resumed = train_pack([MemberSpec(c, tmp_path / f"cut{i}", resume_from=tmp_path / f"cut{i}" / "checkpoint")
                          for i, c in enumerate(cfgs)])
    assert [records(h) for h in resumed] == [records(h) for h in full]
    for i in range(2):
        lines = (tmp_path / f"cut{i}" / "metrics.jsonl").read_text().splitlines()
        assert records(json.loads(line) for line in lines) == records(full[i])


class Killed(Exception):
    """Stands for a kill right after a checkpoint between two evaluations."""


def test_a_pack_killed_between_evaluations_resumes_from_the_checkpoints_between_them(idx_mnist, tmp_path):
    """Checkpoints between evaluations (checkpoint_every_kimg) hold each member's state and partial loss
    sums: a pack stopped right after one and resumed from the members' checkpoints ends with the records
    of one that ran through, to the last bit (loss averages included)."""
    cfgs = [TrainConfig(**SHAPE, **TINY_RUN, loss="hinge", seed=s, lr=lr, checkpoint_every_kimg=0.048, checkpoint_every_min=0)
            for s, lr in ((0, 2e-4), (1, 4e-4))]
    full = train_pack([MemberSpec(c, tmp_path / f"full{i}") for i, c in enumerate(cfgs)])

    def kill_at_second_interval(record, _checkpoint):  # the last member's: both have a checkpoint at that step
        if record.get("checkpoint_only") and record["checkpoint_kimg"] > 0.15:
            raise Killed

    with pytest.raises(Killed):
        train_pack([MemberSpec(c, tmp_path / f"cut{i}", report=kill_at_second_interval if i == 1 else None)
                    for i, c in enumerate(cfgs)])
    states = [torch.load(tmp_path / f"cut{i}" / "checkpoint" / "checkpoint.pt", weights_only=True) for i in range(2)]
    assert all("interval" in st and 0.128 < st["images_seen"] / 1000 < 0.256 for st in states)  # between the evaluations
    resumed = train_pack([MemberSpec(c, tmp_path / f"cut{i}", resume_from=tmp_path / f"cut{i}" / "checkpoint")
                          for i, c in enumerate(cfgs)])
    drop = {"time_s", "img_per_s", "checkpoint_s"}
    assert [[{k: v for k, v in r.items() if k not in drop} for r in h] for h in resumed] == \
        [[{k: v for k, v in r.items() if k not in drop} for r in h] for h in full]
