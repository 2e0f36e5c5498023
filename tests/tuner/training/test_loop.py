"""The single-trial trainer: determinism, bit-for-bit resume, outputs, divergence, real training."""

import json

import pytest
import torch

from tuner.config import TrainConfig
from tuner.training.checkpoint import CheckpointError, load_checkpoint
from tuner.training.loop import train
from tuner.training.precision import resolve_precision
from tuner.training.steps import gan_step
from tuner.training.trial import build_trial

TINY = dict(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1)


def states(out):
    return torch.load(out / "checkpoint" / "checkpoint.pt", weights_only=True)


def test_d_step_changes_only_d_and_g_step_only_g(idx_mnist):
    cfg = TrainConfig(**TINY, loss="hinge", n_critic=1).resolved()
    trial = build_trial(cfg, torch.device("cpu"))
    g0 = {k: v.clone() for k, v in trial.nets["G"].state_dict().items()}
    d0 = {k: v.clone() for k, v in trial.nets["D"].state_dict().items()}
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    opt_g_step = trial.opts["G"].step
    trial.opts["G"].step = lambda *a, **k: None  # run only the critic update of the step
    gan_step(trial, images)
    assert all(torch.equal(g0[k], v) for k, v in trial.nets["G"].state_dict().items() if "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(d0[k], v) for k, v in trial.nets["D"].state_dict().items())
    trial.opts["G"].step = opt_g_step
    d1 = {k: v.clone() for k, v in trial.nets["D"].state_dict().items()}
    trial.opts["D"].step = lambda *a, **k: None
    gan_step(trial, images)
    assert all(torch.equal(d1[k], v) for k, v in trial.nets["D"].state_dict().items())


def test_same_seed_same_run_and_files(idx_mnist, tmp_path):
    cfg = TrainConfig(**TINY, loss="wgan-gp", max_kimg=0.25, eval_every_kimg=0.125)
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    drop = {"time_s", "img_per_s"}  # the rest is compared bit for bit: two seeded runs in one process
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [{k: v for k, v in r.items() if k not in drop} for r in b]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[-1])
    for key in ["kimg", "step", "fid", "fid_backbone", "fid_samples", "time_s", "img_per_s",
                "loss_d", "loss_g", "d_real", "d_fake", "classes_covered", "kl_uniform", "class_is", "class_hist"]:
        assert key in record
    assert record["kimg"] >= 0.25 and record["fid_backbone"] == "domain" and record["fid_samples"] == 64
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == ["kimg_0000.125.png", "kimg_0000.250.png"]
    assert TrainConfig.from_dict(json.loads((tmp_path / "a" / "config.json").read_text())) == cfg.resolved()


@pytest.mark.parametrize("family, extra", [("gan", {"loss": "wgan"}), ("vae", {"regularize": True})])
def test_resume_equals_an_uninterrupted_run(idx_mnist, tmp_path, family, extra):
    base = TrainConfig(**TINY, family=family, **extra, eval_every_kimg=0.125, max_kimg=0.25)
    full = train(base, tmp_path / "full")
    half = train(base.replace(max_kimg=0.125), tmp_path / "resumed")
    resumed = train(base, tmp_path / "resumed", resume_from=tmp_path / "resumed" / "checkpoint")
    a, b = states(tmp_path / "full"), states(tmp_path / "resumed")
    # Bit for bit on any CPU: both runs are in this process, so every step runs the same kernels on the
    # same shapes with the same thread count, and the checkpoint restores the exact weights, optimiser
    # state and RNG state. (A run on another CPU or ISA would round differently; that is not compared.)
    for net in a["nets"]:
        for key, value in a["nets"][net].items():
            assert torch.equal(value, b["nets"][net][key]), (net, key)
    assert a["step"] == b["step"] and len(half) == 1
    assert [r["fid"] for r in full] == [r["fid"] for r in resumed]
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2


class Killed(Exception):
    pass


def test_a_checkpoint_between_evaluations_resumes_bit_for_bit(idx_mnist, tmp_path):
    """checkpoint_every_kimg checkpoints without evaluating (a report with checkpoint_only and no
    kimg/fid, nothing in metrics.jsonl); a run stopped after one continues from it, not from zero,
    and its next evaluation record (loss averages over the whole interval included) equals the
    uninterrupted run's."""
    cfg = TrainConfig(**TINY, loss="hinge", max_kimg=0.25, eval_every_kimg=0.0, checkpoint_every_kimg=0.064,
                      checkpoint_every_min=0.0)
    reports = []
    full = train(cfg, tmp_path / "full", report=lambda record, ckpt: reports.append(dict(record)))
    only = [r for r in reports if r.get("checkpoint_only")]
    assert [r["checkpoint_kimg"] for r in only] == [0.064, 0.128, 0.192]  # 4 steps of 16 images each
    assert all("fid" not in r and "kimg" not in r for r in only)
    assert len(full) == 1 and len((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()) == 1

    seen = []

    def kill_after_second_checkpoint(record, ckpt):
        seen.append(record)
        if len(seen) == 2:
            raise Killed  # as a SIGKILL right after the checkpoint was written

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", report=kill_after_second_checkpoint)
    assert states(tmp_path / "resumed")["images_seen"] == 128
    resumed_reports = []
    resumed = train(cfg, tmp_path / "resumed", resume_from=tmp_path / "resumed" / "checkpoint",
                    report=lambda record, ckpt: resumed_reports.append(dict(record)))
    assert [r.get("checkpoint_kimg") for r in resumed_reports] == [0.192, None]  # from 0.128 kimg, not from zero
    drop = {"time_s", "img_per_s", "checkpoint_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in full] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed]
    a, b = states(tmp_path / "full"), states(tmp_path / "resumed")
    for net in a["nets"]:
        for key, value in a["nets"][net].items():
            assert torch.equal(value, b["nets"][net][key]), (net, key)


def test_checkpoint_of_another_config_or_corrupt_file_is_refused(idx_mnist, tmp_path):
    cfg = TrainConfig(**TINY, max_kimg=0.125, eval_every_kimg=0.125)
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint" / "checkpoint.pt"
    other = build_trial(cfg.replace(z_dim=8).resolved(), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="fields differ: z_dim"):
        load_checkpoint(other, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(ckpt)):
        load_checkpoint(build_trial(cfg.resolved(), torch.device("cpu")), ckpt)


def test_vae_writes_reconstructions_interpolations_and_latent_scatter(idx_mnist, tmp_path):
    cfg = TrainConfig(**TINY, family="vae", z_dim=2, max_kimg=0.125, eval_every_kimg=0.125)
    (record,) = train(cfg, tmp_path)
    for key in ("loss", "recon", "kl", "test_recon", "test_kl", "elbo", "fid"):
        assert key in record
    assert record["elbo"] == pytest.approx(-(record["test_recon"] + record["test_kl"]))
    names = {p.name for p in (tmp_path / "samples").iterdir()}
    assert names == {"kimg_0000.125.png", "recon_kimg_0000.125.png", "interp_kimg_0000.125.png", "latent_kimg_0000.125.png"}


def test_absurd_learning_rate_diverges_cleanly(idx_mnist, tmp_path):
    cfg = TrainConfig(**TINY, loss="lsgan", lr=1e4, max_kimg=0.5, eval_every_kimg=0.25)
    history = train(cfg, tmp_path)
    last = history[-1]
    assert last["diverged"] is True and last["fid"] == float("inf") and last["diverge_reason"]
    assert last["kimg"] < 0.5


@pytest.mark.slow
def test_real_fashion_training_lowers_domain_fid(fashion_mirror, tmp_path):
    # scored with the shipped Fashion-MNIST classifier, as a user's run is (fashion_mirror sets no train limit)
    cfg = TrainConfig(dataset="fashion-mnist", data_mirror=str(fashion_mirror), loss="hinge", g_width=32, d_width=32,
                      max_kimg=3.0, eval_every_kimg=1.0, fid_samples=500, cache_dir=str(tmp_path / "cache"))
    history = train(cfg, tmp_path / "run")
    fids = [r["fid"] for r in history]
    assert len(fids) == 3 and all(f > 0 for f in fids)
    assert fids[-1] < fids[0]


def test_evaluations_land_on_the_given_points_with_the_exact_kimg(idx_mnist, tmp_path):
    """eval_every_kimg 0 + eval_at_kimg (a study's ASHA rungs): one evaluation at the first step at or past
    each point and at max_kimg, each reporting the images actually seen (batch 16: ceil(p / 16) * 16)."""
    from tuner.training.loop import eval_points

    cfg = TrainConfig(**TINY, loss="hinge", max_kimg=1.0, eval_every_kimg=0.0, eval_at_kimg=(0.25, 0.75))
    assert eval_points(cfg) == [250, 750, 1000]
    assert eval_points(cfg.replace(eval_every_kimg=0.5)) == [250, 500, 750, 1000]
    history = train(cfg, tmp_path / "run")
    assert [r["kimg"] for r in history] == [0.256, 0.752, 1.008]  # images / 1000: correctly rounded, exact
    assert [r["step"] for r in history] == [16, 47, 63]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "kimg_0000.250.png", "kimg_0000.750.png", "kimg_0001.png"]
    # what auto resolves to here: bf16 on an AVX512-BF16 CPU, fp32 on AVX2 or when torch is capped to it
    assert {r["precision"] for r in history} == {resolve_precision("auto", "cpu")}
