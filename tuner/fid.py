"""Fréchet Inception Distance: features -> statistics -> score, with cached real statistics.

    feature_statistics(features)            -> (mu, sigma)      float64
    frechet_distance(mu1, s1, mu2, s2)      -> float            float64, symmetric eigh form
    Reference.from_moments(mu, s).distance  -> float            the same, one side factored once
    real_statistics(dataset, split, bb, n)  -> (mu, sigma)      cached .npz per (data, network, n)
    real_reference(dataset, split, bb, n)   -> Reference        factored once per process
    fid_of_images(images, dataset, bb, n)   -> float            generated images vs real stats

FID is biased by about 1/N: compare numbers only at equal sample counts and with the same
backbone (`inception` is the literature's; `domain` is a fast in-domain proxy).

Command line (see `python -m tuner.fid --help`):

    python -m tuner.fid fashion-mnist:train fashion-mnist:test --backbone inception --limit 1000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tuner.backbones import BACKBONES, Backbone, as_uint8_images, get_backbone
from tuner.data import DATASET_CLASSES, SPLITS, DataError, cache_root, load_split, resolve_mirror
from tuner.domain import atomic_write, file_lock


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
                    cache_dir: str | None = None, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the backbone's features of the first `n` images of a split, cached on disk."""
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

        atomic_write(path, write)
    return mu, sigma


def real_floor(dataset: str, backbone: Backbone | str, n: int, mirror: str | None = None,
               cache_dir: str | None = None) -> float:
    """The real-vs-real floor: FID between the first n training and the first n test images.

    A perfect generator scores about this at N = n (FID's 1/N bias plus the train/test gap). Cached
    beside the real statistics, as is the training split's statistics it is computed from."""
    if isinstance(backbone, str):
        backbone = get_backbone(backbone, dataset, cache_dir=cache_dir, mirror=mirror)
    path = cache_root(cache_dir) / "stats" / f"{dataset}-floor-{backbone.cache_key}-n{n}.json"
    try:
        return float(json.loads(path.read_text())["fid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: compute it
    fid = frechet_distance(*real_statistics(dataset, "train", backbone, n, mirror, cache_dir),
                           *real_statistics(dataset, "test", backbone, n, mirror, cache_dir))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"fid": fid, "dataset": dataset, "n": n,
                                                              "backbone": backbone.cache_key})))
    return fid


_REFERENCES: dict[tuple[str, int, int], Reference] = {}


def real_reference(dataset: str, split: str, backbone: Backbone, n: int, mirror: str | None = None,
                   cache_dir: str | None = None, *, batch_size: int = 256) -> Reference:
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
                  device: str = "cpu", batch_size: int = 256) -> float:
    """FID of generated uint8 images (N, 28, 28) / (N, 1, 28, 28) against the first `n_real`
    images of `dataset:split` (cached statistics). Use N == n_real: FID is biased by 1/N."""
    if isinstance(backbone, str):
        backbone = get_backbone(backbone, dataset, device=device, cache_dir=cache_dir, mirror=mirror)
    return fid_of_features(backbone.features(images, batch_size=batch_size), dataset, backbone, n_real, split,
                           mirror, cache_dir)


def fid_of_features(features: np.ndarray, dataset: str, backbone: Backbone, n_real: int, split: str = "test",
                    mirror: str | None = None, cache_dir: str | None = None) -> float:
    """FID of the backbone's features (N, dim) of generated images against the first `n_real`
    images of `dataset:split` (cached statistics, factored once per process)."""
    reference = real_reference(dataset, split, backbone, n_real, mirror, cache_dir)
    return reference.distance(*feature_statistics(features))


# ------------------------------------------------------------------------------------------
# command line


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


SOURCE_HELP = ("a dataset split DATASET:SPLIT (dataset " + "|".join(DATASET_CLASSES) + ", split "
               + "|".join(SPLITS) + "), an .npz/.npy file of uint8 images N×28×28 (or N×1×28×28; "
               "in an .npz the array 'images', else the first), or a folder of 28×28 grayscale PNGs")


def _check_array(arr: np.ndarray, arg: str, what: str) -> np.ndarray:
    try:
        return as_uint8_images(arr, name=f"{arg} ({what})").numpy()
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None


def _read_array_file(path: Path, arg: str) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return _check_array(np.load(path, allow_pickle=False), arg, str(path))
        with np.load(path, allow_pickle=False) as f:
            if not f.files:
                raise UsageError(f"invalid {arg}: {path} holds no arrays; allowed {SOURCE_HELP}")
            key = "images" if "images" in f.files else f.files[0]
            return _check_array(f[key], arg, f"array {key!r} in {path}")
    except (OSError, ValueError) as err:
        raise UsageError(f"invalid {arg}: cannot read {path} ({err}); allowed {SOURCE_HELP}") from None


def _read_png_folder(path: Path, arg: str, limit: int | None) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise UsageError(f"invalid {arg}: folder {path} holds no .png files; allowed {SOURCE_HELP}")
    images = []
    for p in files[:limit]:
        try:
            with Image.open(p) as im:
                if im.mode in ("1", "L", "P"):
                    arr = np.asarray(im.convert("L"))
                elif im.mode in ("RGB", "RGBA"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                        raise UsageError(f"invalid {arg}: {p} is a colour image; allowed 28×28 grayscale PNGs")
                    arr = rgb[..., 0]
                else:
                    raise UsageError(f"invalid {arg}: {p} has mode {im.mode}; allowed 8-bit 28×28 grayscale PNGs")
        except OSError as err:
            raise UsageError(f"invalid {arg}: cannot read {p} ({err})") from None
        if arr.shape != (28, 28):
            raise UsageError(f"invalid {arg}: {p} is {arr.shape[1]}×{arr.shape[0]}; allowed 28×28 grayscale PNGs")
        images.append(arr)
    return np.stack(images).astype(np.uint8)


def parse_source(spec: str, arg: str, limit: int | None) -> tuple[str, str] | np.ndarray:
    """("dataset", "split") for a dataset spec, else the uint8 images (N, 1, 28, 28) it names."""
    from tuner.paths import file_problem

    path = Path(spec)
    # a FIFO would block the reader, an empty or unreadable file would fail deep inside numpy
    problem = None if path.is_dir() else file_problem(path)
    if problem not in (None, "no such file"):
        raise UsageError(f"invalid {arg}={spec!r}: {problem}; allowed {SOURCE_HELP}")
    if path.is_dir():
        images = _read_png_folder(path, arg, limit)
    elif path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise UsageError(f"invalid {arg}={spec!r}: unknown file type; allowed {SOURCE_HELP}")
        images = _read_array_file(path, arg)
    elif ":" in spec and "/" not in spec:
        dataset, _, split = spec.partition(":")
        if dataset not in DATASET_CLASSES:
            raise UsageError(f"invalid {arg}={spec!r}: unknown dataset {dataset!r}; allowed one of "
                             f"{', '.join(DATASET_CLASSES)} (as DATASET:SPLIT)")
        if split not in SPLITS:
            raise UsageError(f"invalid {arg}={spec!r}: unknown split {split!r}; allowed one of {', '.join(SPLITS)}")
        return dataset, split
    else:
        raise UsageError(f"invalid {arg}={spec!r}: no such file or folder; allowed {SOURCE_HELP}")
    images = images[:limit] if limit is not None else images
    return as_uint8_images(images).numpy()


def _statistics(source: tuple[str, str] | np.ndarray, arg: str, backbone: Backbone, limit: int | None,
                args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, int]:
    if isinstance(source, tuple):
        dataset, split = source
        size = len(load_split(dataset, split, args.mirror)[0])
        n = size if limit is None else min(limit, size)
        mu, sigma = real_statistics(dataset, split, backbone, n, args.mirror, args.cache_dir, batch_size=args.batch_size)
        return mu, sigma, n
    if len(source) < 2:
        raise UsageError(f"invalid {arg}: {len(source)} image(s); allowed at least 2")
    mu, sigma = feature_statistics(backbone.features(source, batch_size=args.batch_size))
    return mu, sigma, len(source)


def build_parser() -> argparse.ArgumentParser:
    from tuner.cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m tuner.fid",
        description="FID between two sets of 28×28 grayscale images. Each of A and B is " + SOURCE_HELP + ".",
    )
    parser.add_argument("a", metavar="A", help="first image set")
    parser.add_argument("b", metavar="B", help="second image set")
    parser.add_argument("--backbone", default="inception",
                        help=f"feature network: {' | '.join(BACKBONES)} [default: inception]")
    parser.add_argument("--dataset", default=None,
                        help="dataset whose classifier the domain backbone uses when neither A nor B is a dataset split")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--data-mirror", dest="mirror", default=None,
                        help="folder with the original *-ubyte.gz files [default: $GENTUNE_DATA_MIRROR]")
    parser.add_argument("--cache-dir", default=None, help="cache folder [default: $GENTUNE_CACHE, else ~/.cache/gentune]")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda [default: auto]")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass [default: 256]")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Compute the FID the parsed command line asks for; raises UsageError on bad input."""
    from tuner.config import ConfigError
    from tuner.paths import cache_folder

    try:
        cache_folder(args.cache_dir, field="--cache-dir")
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if args.backbone not in BACKBONES:
        raise UsageError(f"invalid --backbone={args.backbone!r}: allowed one of {', '.join(BACKBONES)}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"invalid --device={args.device!r}: allowed one of auto, cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("invalid --device='cuda': CUDA is not available here; allowed auto or cpu")
    if args.limit is not None and args.limit < 2:
        raise UsageError(f"invalid --limit={args.limit}: allowed an integer >= 2")
    if args.batch_size < 1:
        raise UsageError(f"invalid --batch-size={args.batch_size}: allowed an integer >= 1")
    if args.dataset is not None and args.dataset not in DATASET_CLASSES:
        raise UsageError(f"invalid --dataset={args.dataset!r}: allowed one of {', '.join(DATASET_CLASSES)}")
    args.mirror = resolve_mirror(args.mirror)
    src_a = parse_source(args.a, "A", args.limit)
    src_b = parse_source(args.b, "B", args.limit)
    dataset = args.dataset or next((s[0] for s in (src_a, src_b) if isinstance(s, tuple)), None)
    if BACKBONES[args.backbone].dataset_specific and dataset is None:
        raise UsageError(f"missing --dataset: the {args.backbone} backbone needs one when neither A nor B is a "
                         f"dataset split; allowed one of {', '.join(DATASET_CLASSES)}")
    backbone = get_backbone(args.backbone, dataset, device=args.device, cache_dir=args.cache_dir, mirror=args.mirror)
    mu_a, sigma_a, n_a = _statistics(src_a, "A", backbone, args.limit, args)
    mu_b, sigma_b, n_b = _statistics(src_b, "B", backbone, args.limit, args)
    fid = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    return {"fid": fid, "backbone": args.backbone, "n_a": n_a, "n_b": n_b,
            "backbone_key": backbone.cache_key, "a": args.a, "b": args.b}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        if result["n_a"] != result["n_b"]:
            print("note: FID is biased by 1/N; compare only numbers made at equal sample counts", file=sys.stderr)
        print(f"FID ({result['backbone']}, {result['n_a']} vs {result['n_b']}): {result['fid']:.4f}")
    return 0 if math.isfinite(result["fid"]) else 1


if __name__ == "__main__":
    sys.exit(main())
