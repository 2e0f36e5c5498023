"""Fréchet Inception Distance: features -> statistics -> score, with cached real statistics.

    feature_statistics(features)            -> (mu, sigma)      float64
    frechet_distance(mu1, s1, mu2, s2)      -> float            float64, symmetric eigh form
    Reference.from_moments(mu, s).distance  -> float            the same, one side factored once
    real_statistics(dataset, split, bb, n)  -> (mu, sigma)      cached .npz per (data, network, n)
    real_reference(dataset, split, bb, n)   -> Reference        factored once per process
    fid_of_images(images, dataset, bb, n)   -> float            generated images vs real stats

FID is biased by about 1/N: compare numbers only at equal sample counts and with the same
backbone (`inception` is the literature's; `domain` is a fast in-domain proxy).

Command line (tuner/metrics/fid/cli.py; see `python -m tuner.fid --help`):

    python -m tuner.fid fashion-mnist:train fashion-mnist:test --backbone inception --limit 1000
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuner.config.atomic import write_whole
from tuner.data import cache_root, load_split, resolve_mirror

if TYPE_CHECKING:  # torch and the backbones are imported by the functions that use them: the FID
    import torch   # command line refuses bad input before torch loads (tuner/metrics/fid/cli.py)

    from tuner.metrics.backbones import Backbone


# ------------------------------------------------------------------------------------------
# pure steps


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64, ddof=1."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"invalid features: shape {x.shape}, allowed (N, D) with N >= 2")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _clip_round_off(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues with round-off (below d * eps * max, as in numpy's matrix_rank) set to 0.

    Covariances of fewer samples than dimensions, or of ReLU features with dead units, are
    singular; their zero eigenvalues come back as +-1e-16-ish noise, whose square roots (1e-8)
    would otherwise add up to a biased, argument-order-dependent error of ~1e-6 in the FID.
    """
    tol = eigenvalues.size * np.finfo(np.float64).eps * max(float(eigenvalues.max(initial=0.0)), 0.0)
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


@dataclass(frozen=True)
class Reference:
    """One side of the Fréchet distance, factored once: mean, trace of the covariance, and a root
    R = U diag(sqrt(w)) of it, with (w, U) = eigh(sigma) and only the columns of nonzero w kept.

    The real images' statistics are fixed for a whole study, so every evaluation reuses this
    factorization and pays for one symmetric eigenvalue problem of size rank(sigma) only.
    """

    mu: np.ndarray
    trace: float
    root: np.ndarray  # (D, rank)

    @classmethod
    def from_moments(cls, mu: np.ndarray, sigma: np.ndarray) -> "Reference":
        mu, s = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        d = mu.shape[0]
        if mu.shape != (d,) or s.shape != (d, d):
            raise ValueError(f"inconsistent shapes: mu {mu.shape}, sigma {s.shape}")
        s = (s + s.T) / 2
        w, u = np.linalg.eigh(s)
        w = _clip_round_off(w)
        keep = w > 0
        return cls(mu=mu, trace=float(np.trace(s)), root=u[:, keep] * np.sqrt(w[keep]))

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        """|mu_ref - mu|^2 + tr S_ref + tr S - 2 tr sqrt(S_ref S), in float64.

        tr sqrt(S_ref S) = sum sqrt(eig(R^T S R)): R^T S R is symmetric PSD and has the nonzero
        eigenvalues of S_ref S. Eigenvalues at round-off level (negative, or below
        k * eps * the largest) are clipped to 0.
        """
        mu, s = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        d = self.mu.shape[0]
        if mu.shape != (d,) or s.shape != (d, d):
            raise ValueError(f"inconsistent shapes: reference mu {self.mu.shape}, mu {mu.shape}, sigma {s.shape}")
        s = (s + s.T) / 2
        lam = np.linalg.eigvalsh(self.root.T @ s @ self.root) if self.root.shape[1] else np.zeros(0)
        tr_covmean = float(np.sqrt(_clip_round_off(lam)).sum())
        diff = self.mu - mu
        return float(diff @ diff + self.trace + np.trace(s) - 2.0 * tr_covmean)

    def fid(self, features: np.ndarray) -> float:
        """FID of generated images' backbone features (N, dim) against this reference."""
        return self.distance(*feature_statistics(features))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), in float64, without sqrtm.

    Two symmetric eigendecompositions (see `Reference`) replace sqrtm: about 1e-13 relative to
    scipy's sqrtm. When one side is fixed (the real images of a study), factor it once with
    `Reference.from_moments` and call `.distance` for each evaluation.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"inconsistent shapes: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    return Reference.from_moments(mu1, s1).distance(mu2, s2)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# ------------------------------------------------------------------------------------------
# cached real-data statistics


def statistics_path(dataset: str, split: str, backbone: Backbone, n: int, cache_dir: str | None = None) -> Path:
    return cache_root(cache_dir) / "stats" / f"{dataset}-{split}-{backbone.cache_key}-n{n}.npz"


def real_statistics(dataset: str, split: str, backbone: Backbone | str, n: int, mirror: str | None = None,
                    cache_dir: str | None = None, *, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the backbone's features of the first `n` images of a split, cached on disk."""
    from tuner.metrics.backbones import get_backbone
    from tuner.metrics.domain import file_lock

    if isinstance(backbone, str):
        backbone = get_backbone(backbone, dataset, cache_dir=cache_dir, mirror=mirror)
    mirror = resolve_mirror(mirror)
    images, _ = load_split(dataset, split, mirror)
    if not 2 <= n <= len(images):
        raise ValueError(f"invalid n={n}: allowed 2 .. {len(images)} (the size of {dataset}:{split})")
    path = statistics_path(dataset, split, backbone, n, cache_dir)
    with file_lock(path):
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    mu, sigma = f["mu"], f["sigma"]
                if mu.shape == (backbone.dim,) and sigma.shape == (backbone.dim, backbone.dim):
                    return mu, sigma
            except (OSError, ValueError, KeyError):
                pass  # damaged file: recompute and overwrite it
        mu, sigma = feature_statistics(backbone.features(images[:n], batch_size=batch_size))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=mu, sigma=sigma, n=n, dataset=dataset, split=split, backbone=backbone.cache_key)

        write_whole(path, write)
    return mu, sigma


def real_floor(dataset: str, backbone: Backbone | str, n: int, mirror: str | None = None,
               cache_dir: str | None = None) -> float:
    """The real-vs-real floor: FID between the first n training and the first n test images.

    A perfect generator scores about this at N = n (FID's 1/N bias plus the train/test gap). Cached
    beside the real statistics, as is the training split's statistics it is computed from."""
    from tuner.metrics.backbones import get_backbone

    if isinstance(backbone, str):
        backbone = get_backbone(backbone, dataset, cache_dir=cache_dir, mirror=mirror)
    path = cache_root(cache_dir) / "stats" / f"{dataset}-floor-{backbone.cache_key}-n{n}.json"
    try:
        return float(json.loads(path.read_text())["fid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: compute it
    fid = frechet_distance(*real_statistics(dataset, "train", backbone, n, mirror, cache_dir),
                           *real_statistics(dataset, "test", backbone, n, mirror, cache_dir))
    write_whole(path, lambda tmp: tmp.write_text(json.dumps({"fid": fid, "dataset": dataset, "n": n,
                                                              "backbone": backbone.cache_key})))
    return fid


_REFERENCES: dict[tuple[str, int, int], Reference] = {}


def real_reference(dataset: str, split: str, backbone: Backbone, n: int, mirror: str | None = None,
                   cache_dir: str | None = None, *, batch_size: int | None = None) -> Reference:
    """`real_statistics`, factored once per process: kept in memory per cache file (path,
    modification time, size), so each evaluation of a trial reuses the real side's eigh."""
    path = statistics_path(dataset, split, backbone, n, cache_dir)

    def key() -> tuple[str, int, int] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return (str(path), stat.st_mtime_ns, stat.st_size)

    found = _REFERENCES.get(key())
    if found is None:
        mu, sigma = real_statistics(dataset, split, backbone, n, mirror, cache_dir, batch_size=batch_size)
        found = Reference.from_moments(mu, sigma)
        if len(_REFERENCES) >= 4:
            _REFERENCES.clear()
        _REFERENCES[key()] = found
    return found


def fid_of_images(images: torch.Tensor | np.ndarray, dataset: str, backbone: Backbone | str, n_real: int,
                  split: str = "test", mirror: str | None = None, cache_dir: str | None = None,
                  device: str = "cpu", batch_size: int | None = None) -> float:
    """FID of generated uint8 images (N, 28, 28) / (N, 1, 28, 28) against the first `n_real`
    images of `dataset:split` (cached statistics). Use N == n_real: FID is biased by 1/N."""
    from tuner.metrics.backbones import get_backbone

    if isinstance(backbone, str):
        backbone = get_backbone(backbone, dataset, device=device, cache_dir=cache_dir, mirror=mirror)
    return fid_of_features(backbone.features(images, batch_size=batch_size), dataset, backbone, n_real, split,
                           mirror, cache_dir)


def fid_of_features(features: np.ndarray, dataset: str, backbone: Backbone, n_real: int, split: str = "test",
                    mirror: str | None = None, cache_dir: str | None = None) -> float:
    """FID of the backbone's features (N, dim) of generated images against the first `n_real`
    images of `dataset:split` (cached statistics, factored once per process)."""
    return real_reference(dataset, split, backbone, n_real, mirror, cache_dir).fid(features)
