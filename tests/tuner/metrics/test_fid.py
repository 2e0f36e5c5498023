import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from tuner.metrics.fid import cli as fid_cli
from tuner.metrics.backbones import get_backbone
from tuner.data import load_split
from tuner.metrics.fid import (
    Reference,
    feature_statistics,
    fid_from_features,
    fid_of_images,
    frechet_distance,
    real_reference,
    real_statistics,
    statistics_path,
)

REPO = Path(__file__).resolve().parents[3]


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def reference_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ------------------------------------------------------------------------------------------
# the pure steps
#
# Tolerances: these run in float64 on fixed inputs (no network). Closed forms and the symmetric eigh
# form hold to ~d kappa eps64 (d <= 64, well-conditioned random SPD: kappa ~ 40, so ~1e-12), on any
# CPU and LAPACK kernel. scipy's sqrtm, the reference implementation, takes a Schur root of the
# non-symmetric S1 S2 and is less accurate: rel 1e-6 for d = 64, and for a singular product, whose
# square root is only accurate to ~sqrt(eps64) = 1.5e-8 relative.


@pytest.mark.parametrize("d", [4, 16, 64])
def test_frechet_distance_matches_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference_fid(mu1, s1, mu2, s2), rel=1e-6)


def test_a_factored_reference_scores_many_generated_sides_like_sqrtm():
    rng = np.random.default_rng(7)
    d = 32
    mu_r, s_r = rng.normal(size=d), random_spd(rng, d)
    reference = Reference.from_moments(mu_r, s_r)
    for _ in range(3):  # one factorization, several evaluations
        mu_g, s_g = rng.normal(size=d), random_spd(rng, d)
        assert reference.distance(mu_g, s_g) == pytest.approx(reference_fid(mu_g, s_g, mu_r, s_r), rel=1e-9)


def test_a_rank_deficient_reference_keeps_only_its_nonzero_directions():
    # 10 samples in 32 dims: the covariance has rank 9, so the root has 9 columns, and the
    # score still equals sqrtm's (computed on the full matrices).
    rng = np.random.default_rng(3)
    mu_r, s_r = feature_statistics(rng.normal(size=(10, 32)))
    reference = Reference.from_moments(mu_r, s_r)
    assert reference.root.shape == (32, 9)
    mu_g, s_g = rng.normal(size=32), random_spd(rng, 32)
    assert reference.distance(mu_g, s_g) == pytest.approx(reference_fid(mu_g, s_g, mu_r, s_r), rel=1e-6)
    assert Reference.from_moments(np.zeros(4), np.zeros((4, 4))).distance(np.ones(4), np.eye(4)) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        reference.distance(np.zeros(31), np.eye(31))


def test_frechet_distance_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # |dmu|^2 + sum (sqrt a - sqrt b)^2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert isinstance(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), float)


def test_frechet_distance_identical_equal_cov_and_symmetry():
    rng = np.random.default_rng(1)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_frechet_distance_singular_covariance_clips_round_off():
    v = np.arange(1.0, 9.0)
    s = np.outer(v, v)  # rank 1: eigh returns round-off negatives that must not become NaN
    value = frechet_distance(np.zeros(8), s, np.zeros(8), s)
    # the exact answer is 0. Unclipped, a round-off eigenvalue of R^T S R (8e-12 here, ~d eps64
    # lambda_max^2) adds its square root: -5.7e-6. Clipped, what is left is round-off of the traces
    # (~408 eps64 ~ 1e-13). abs 1e-6 lies between the two on any CPU.
    assert value == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="inconsistent shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_statistics_float64_and_unbiased():
    feats = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], dtype=np.float32)
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu == pytest.approx([2.0, 2.0], abs=1e-12)
    assert sigma == pytest.approx(np.array([[4.0, 3.0], [3.0, 3.0]]), abs=1e-12)  # ddof = 1
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------
# cached real statistics and the trainer's entry point (tiny MNIST, domain backbone)


def test_real_statistics_are_cached_per_n(idx_mnist, monkeypatch):
    bb = get_backbone("domain", "mnist")
    images, _ = load_split("mnist", "test")
    mu, sigma = real_statistics("mnist", "test", bb, 100)
    path = statistics_path("mnist", "test", bb, 100)
    assert path.is_file() and path.parent.name == "stats"
    exp_mu, exp_sigma = feature_statistics(bb.features(images[:100]))
    # the same images in the same batch in one process: the same float32 features, bit for bit on any CPU
    assert mu == pytest.approx(exp_mu, abs=1e-12)
    assert sigma == pytest.approx(exp_sigma, abs=1e-12)

    def no_features(*args, **kwargs):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(bb, "features", no_features)
    mu2, sigma2 = real_statistics("mnist", "test", bb, 100)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)

    assert statistics_path("mnist", "test", bb, 50) != path
    with pytest.raises(AssertionError, match="recomputed"):
        real_statistics("mnist", "test", bb, 50)  # another n is another file
    with pytest.raises(ValueError, match="allowed 2 .. 256"):
        real_statistics("mnist", "test", bb, 257)


def test_real_reference_is_factored_once_per_cache_file(idx_mnist, monkeypatch):
    bb = get_backbone("domain", "mnist")
    first = real_reference("mnist", "test", bb, 64)
    assert first.distance(*real_statistics("mnist", "test", bb, 64)) == pytest.approx(0.0, abs=1e-6 * first.trace)
    assert real_reference("mnist", "test", bb, 64) is first  # reused: no second eigh
    # a rewritten cache file (here: statistics of other images under the same name) is re-read
    path = statistics_path("mnist", "test", bb, 64)
    images, _ = load_split("mnist", "train")
    mu, sigma = feature_statistics(bb.features(images[:64]))
    np.savez(path, mu=mu, sigma=sigma, n=64, dataset="mnist", split="test", backbone=bb.cache_key)
    again = real_reference("mnist", "test", bb, 64)
    assert again is not first and np.array_equal(again.mu, mu)


def test_real_statistics_recompute_a_damaged_cache_file(idx_mnist):
    bb = get_backbone("domain", "mnist")
    mu, sigma = real_statistics("mnist", "train", bb, 20)
    path = statistics_path("mnist", "train", bb, 20)
    path.write_bytes(b"not an npz")
    mu2, sigma2 = real_statistics("mnist", "train", bb, 20)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    with np.load(path) as f:
        assert str(f["backbone"]) == bb.cache_key and int(f["n"]) == 20


def test_fid_of_images_matches_the_pure_steps(idx_mnist):
    bb = get_backbone("domain", "mnist")
    train, _ = load_split("mnist", "train")
    generated = train[:120].numpy()  # stands in for generator samples
    value = fid_of_images(generated, "mnist", "domain", 120)
    real, _ = load_split("mnist", "test")
    # The pure steps in fid_of_images' order: the real side is the factored one (the first argument).
    # Same images, same batches, same kernels in one process: the float32 features are the same bits,
    # and the float64 steps after them are the same operations, so the two are equal (rel 1e-12
    # only allows for the last bits of float64 math). The other argument order is a different float64
    # computation: with 120 samples in 128-d both covariances are singular (rank 68 here), and the
    # order changes the FID by 2e-11 (OpenBLAS's SkylakeX kernels) to 1.0e-9 (Haswell) or 3.4e-9
    # (Prescott) relative, so the order matters at this tolerance; see docs/testing.md.
    expected = fid_from_features(bb.features(real[:120]), bb.features(generated))
    assert value == pytest.approx(expected, rel=1e-12)
    noise = torch.randint(0, 256, (120, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert fid_of_images(noise, "mnist", bb, 120) > 10 * value


# ------------------------------------------------------------------------------------------
# command line


def run_cli(capsys, *argv):
    code = fid_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_npz_vs_npz_json_equals_library(idx_mnist, tmp_path, capsys):
    train, _ = load_split("mnist", "train")
    a, b = train[:100].numpy(), train[100:180].unsqueeze(1).numpy()
    np.savez(tmp_path / "a.npz", images=a, labels=np.zeros(100))
    np.savez(tmp_path / "b.npz", b)  # no 'images' key: the first array
    code, out, err = run_cli(capsys, tmp_path / "a.npz", tmp_path / "b.npz", "--backbone", "domain",
                             "--dataset", "mnist", "--json")
    assert code == 0, err
    result = json.loads(out)
    bb = get_backbone("domain", "mnist")
    # the same features (same images, same batches, one process) and the same float64 steps in the same order
    assert result["fid"] == pytest.approx(fid_from_features(bb.features(a), bb.features(b)), rel=1e-12)
    assert (result["backbone"], result["n_a"], result["n_b"]) == ("domain", 100, 80)
    assert result["backbone_key"] == bb.cache_key

    code, out, _ = run_cli(capsys, tmp_path / "a.npz", tmp_path / "b.npz", "--backbone", "domain",
                           "--dataset", "mnist", "--limit", "50")
    assert code == 0
    expected = fid_from_features(bb.features(a[:50]), bb.features(b[:50]))
    assert out.strip() == f"FID (domain classifier {bb.classifier_id}, 50 vs 50): {expected:.4f}"
    assert result["domain_classifier_sha"] == bb.classifier_id == bb.meta["weights_sha256"][:12]


def test_cli_dataset_spec_and_png_folder(idx_mnist, tmp_path, capsys):
    train, _ = load_split("mnist", "train")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(train[i].numpy(), mode="L").save(folder / f"{i:03d}.png")
    np.save(tmp_path / "same.npy", train[:60].numpy())

    # the domain classifier's dataset comes from the dataset spec on the other side
    code, out, err = run_cli(capsys, "mnist:test", folder, "--backbone", "domain", "--json")
    assert code == 0, err
    from_folder = json.loads(out)
    assert (from_folder["n_a"], from_folder["n_b"]) == (256, 60)
    # the same computation as fid_of_images: the same 60 images (PNG is lossless) in one batch, the same
    # cached real statistics, factored as the first argument: equal up to float64's last bits
    assert from_folder["fid"] == pytest.approx(fid_of_images(train[:60], "mnist", "domain", 256), rel=1e-12)

    code, out, _ = run_cli(capsys, "mnist:test", tmp_path / "same.npy", "--backbone", "domain", "--json")
    assert json.loads(out)["fid"] == pytest.approx(from_folder["fid"], rel=1e-12)


@pytest.mark.parametrize(
    "make, args, pattern",
    [
        (lambda d: np.savez(d / "x.npz", images=np.zeros((5, 28, 28), np.float32)), ["{d}/x.npz", "mnist:test"],
         "invalid A .*'images'.*dtype float32.*allowed uint8"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((5, 32, 32), np.uint8)), ["mnist:test", "{d}/x.npz"],
         r"invalid B .*shape \(5, 32, 32\).*allowed uint8 images shaped N×28×28"),
        (None, ["cifar:train", "mnist:test"], "invalid A='cifar:train': unknown dataset 'cifar'.*allowed one of mnist"),
        (None, ["mnist:valid", "mnist:test"], "unknown split 'valid'.*allowed one of train, test"),
        (None, ["mnist:test", "{d}/missing.npz"], "invalid B=.*no such file or folder"),
        (None, ["mnist:test", "mnist:train", "--backbone", "resnet"], "invalid --backbone='resnet': allowed one of"),
        (lambda d: np.savez(d / "x.npz", images=np.zeros((5, 28, 28), np.uint8)), ["{d}/x.npz", "{d}/x.npz"],
         "missing --dataset.*allowed one of mnist, fashion-mnist"),
        (None, ["mnist:test", "mnist:train", "--limit", "1"], "invalid --limit=1"),
    ],
)
def test_cli_bad_input_exits_2(idx_mnist, tmp_path, capsys, make, args, pattern):
    if make:
        make(tmp_path)
    argv = [a.format(d=tmp_path) for a in args]
    if "--backbone" not in argv:
        argv += ["--backbone", "domain"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(pattern, err), err


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 28, 28), np.int64))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tuner.fid", str(tmp_path / "bad.npz"), "mnist:test"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid A" in proc.stderr and "int64" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------
# real data


@pytest.mark.slow
def test_fashion_domain_fid_is_small_for_real_and_large_for_noise(fashion_mirror, monkeypatch):
    from tuner.metrics import domain

    monkeypatch.setenv(domain.TRAIN_LIMIT_ENV, "4000")
    bb = get_backbone("domain", "fashion-mnist")
    assert bb.meta["n_train"] == 4000 and bb.meta["full_data"] is False
    assert bb.meta["test_accuracy"] > 0.75  # 4000 images; the full-data classifier reaches > 0.90

    train, _ = load_split("fashion-mnist", "train")
    real = fid_of_images(train[:500], "fashion-mnist", bb, 500, split="test")
    noise = torch.randint(0, 256, (500, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fake = fid_of_images(noise, "fashion-mnist", bb, 500, split="test")
    assert math.isfinite(real) and real > 0
    assert fake > 20 * real
