"""The generator's exponential moving average (TrainConfig.g_ema): off changes nothing, one step
is the closed form, it is scored beside G, and a resumed run continues the same average."""

import pytest
import torch

from tuner.config import ConfigError, TrainConfig
from tuner.training.loop import train
from tuner.training.steps import gan_step
from tuner.training.families import EMA_NET
from tuner.training.trial import build_trial

@pytest.fixture(scope="module")
def _cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ema-cache")


@pytest.fixture
def data(idx_mnist, _cache, monkeypatch):
    """idx_mnist (the same images in every test) with one cache for the module: the domain classifier
    and the real statistics are computed once, not in each test."""
    monkeypatch.setenv("GENTUNE_CACHE", str(_cache))
    return idx_mnist


TINY = dict(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1,
            loss="hinge", eval_every_kimg=0.125, max_kimg=0.25)


def test_decay_zero_changes_nothing(data, tmp_path):
    plain = train(TrainConfig(**TINY), tmp_path / "plain")
    off = train(TrainConfig(**TINY, g_ema=0.0), tmp_path / "off")
    # bit for bit: two seeded runs in one process use the same kernels, shapes and thread count, so
    # they round the same way on any CPU
    assert [r["fid"] for r in plain] == [r["fid"] for r in off]
    assert all("fid_ema" not in r for r in off)
    assert not list((tmp_path / "off" / "samples").glob("ema_*"))


def test_one_step_is_the_closed_form(data):
    d = 0.9
    trial = build_trial(TrainConfig(**TINY, g_ema=d, d_norm="batch").resolved(), torch.device("cpu"))
    ema0 = {k: v.clone() for k, v in trial.nets[EMA_NET].named_parameters()}
    assert all(torch.equal(ema0[k], v) for k, v in trial.nets["G"].named_parameters())  # starts at G
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    gan_step(trial, images)
    g1 = dict(trial.nets["G"].named_parameters())
    moved = 0
    for k, v in trial.nets[EMA_NET].named_parameters():
        expected = d * ema0[k] + (1 - d) * g1[k].detach()
        # float32 weights of magnitude < 1: the EMA update and this formula round differently by ~eps32
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-6)
        moved += not torch.equal(v, g1[k]) and not torch.equal(v, ema0[k])
    assert moved > 0  # the average lies strictly between the old and new weights
    for (k, b_ema), (_, b) in zip(trial.nets[EMA_NET].named_buffers(), trial.nets["G"].named_buffers()):
        assert torch.equal(b_ema, b), k


def test_ema_is_scored_and_resumes_bit_for_bit(data, tmp_path):
    cfg = TrainConfig(**TINY, g_ema=0.99)
    full = train(cfg, tmp_path / "full")
    assert all(r["fid_ema"] > 0 and r["fid_ema"] != r["fid"] for r in full)
    assert sorted(p.name for p in (tmp_path / "full" / "samples").glob("ema_*")) == [
        "ema_kimg_0000.125.png", "ema_kimg_0000.250.png"]
    train(cfg.replace(max_kimg=0.125), tmp_path / "resumed")
    resumed = train(cfg, tmp_path / "resumed", resume_from=tmp_path / "resumed" / "checkpoint")
    a = torch.load(tmp_path / "full" / "checkpoint" / "checkpoint.pt", weights_only=True)["nets"]
    b = torch.load(tmp_path / "resumed" / "checkpoint" / "checkpoint.pt", weights_only=True)["nets"]
    assert EMA_NET in a
    for net in a:
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), (net, key)
    # bit for bit, as the plain resume test (test_loop.py): one process, the same kernels, any CPU
    assert [(r["fid"], r["fid_ema"]) for r in full] == [(r["fid"], r["fid_ema"]) for r in resumed]


@pytest.mark.parametrize("values", [dict(g_ema=1.0), dict(g_ema=-0.1), dict(family="vae", g_ema=0.999)])
def test_bad_decay_names_the_field(values):
    with pytest.raises(ConfigError, match="g_ema"):
        TrainConfig(**values)
