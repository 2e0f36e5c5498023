"""`python -m tuner.fid A B`: the FID between two sets of 28x28 grayscale images (dataset splits,
.npz/.npy arrays or PNG folders), a thin command line over the library in tuner/metrics/fid/__init__.py.

torch and the backbones are imported where they are first needed, after the flags and paths are
checked: a typo is refused in a tenth of a second, not two."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from tuner.config import BACKBONES
from tuner.data import DATASET_CLASSES, SPLITS, DataError, load_split, resolve_mirror

if TYPE_CHECKING:
    from tuner.metrics.backbones import Backbone


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


SOURCE_HELP = ("a dataset split DATASET:SPLIT (dataset " + "|".join(DATASET_CLASSES) + ", split "
               + "|".join(SPLITS) + "), an .npz/.npy file of uint8 images N×28×28 (or N×1×28×28; "
               "in an .npz the array 'images', else the first), or a folder of 28×28 grayscale PNGs")


def _check_array(arr: np.ndarray, arg: str, what: str) -> np.ndarray:
    from tuner.metrics.backbones import as_uint8_images

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
    from tuner.config.paths import file_problem

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
    return _check_array(images, arg, spec)


def _statistics(source: tuple[str, str] | np.ndarray, arg: str, backbone: Backbone, limit: int | None,
                args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, int]:
    from tuner.metrics.fid import feature_statistics, real_statistics

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
    from tuner.config.cli import ArgumentParser

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
    parser.add_argument("--domain-classifier", default="shipped",
                        help="the domain backbone's classifier: shipped (the package's, one per dataset) | train (train one on this machine, cached) | PATH of a classifier file "
                             "[default: shipped]")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--data-mirror", dest="mirror", default=None,
                        help="folder with the original *-ubyte.gz files, or the same files uncompressed "
                             "[default: $GENTUNE_DATA_MIRROR]")
    parser.add_argument("--cache-dir", default=None, help="cache folder [default: $GENTUNE_CACHE, else ~/.cache/gentune]")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda [default: auto]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass [default: the backbone's own: 32 for inception on a CPU, else 256]")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Compute the FID the parsed command line asks for; raises UsageError on bad input."""
    from tuner.config import ConfigError
    from tuner.config.paths import cache_folder

    try:
        cache_folder(args.cache_dir, field="--cache-dir")
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if args.backbone not in BACKBONES:
        raise UsageError(f"invalid --backbone={args.backbone!r}: allowed one of {', '.join(BACKBONES)}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"invalid --device={args.device!r}: allowed one of auto, cpu, cuda")
    if args.limit is not None and args.limit < 2:
        raise UsageError(f"invalid --limit={args.limit}: allowed an integer >= 2")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"invalid --batch-size={args.batch_size}: allowed an integer >= 1")
    if args.dataset is not None and args.dataset not in DATASET_CLASSES:
        raise UsageError(f"invalid --dataset={args.dataset!r}: allowed one of {', '.join(DATASET_CLASSES)}")
    args.mirror = resolve_mirror(args.mirror)
    src_a = parse_source(args.a, "A", args.limit)
    src_b = parse_source(args.b, "B", args.limit)
    import torch

    from tuner.metrics.backbones import BACKBONE_CLASSES, get_backbone
    from tuner.metrics.fid import frechet_distance

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("invalid --device='cuda': CUDA is not available here; allowed auto or cpu")
    dataset = args.dataset or next((s[0] for s in (src_a, src_b) if isinstance(s, tuple)), None)
    if BACKBONE_CLASSES[args.backbone].dataset_specific and dataset is None:
        raise UsageError(f"missing --dataset: the {args.backbone} backbone needs one when neither A nor B is a "
                         f"dataset split; allowed one of {', '.join(DATASET_CLASSES)}")
    if args.domain_classifier not in ("shipped", "train") and not args.domain_classifier.endswith(".pt"):
        raise UsageError(f"invalid --domain-classifier={args.domain_classifier!r}: allowed shipped, train or the "
                         f"path of a .pt classifier file")
    backbone = get_backbone(args.backbone, dataset, device=args.device, cache_dir=args.cache_dir, mirror=args.mirror,
                            classifier=args.domain_classifier)
    mu_a, sigma_a, n_a = _statistics(src_a, "A", backbone, args.limit, args)
    mu_b, sigma_b, n_b = _statistics(src_b, "B", backbone, args.limit, args)
    fid = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    result = {"fid": fid, "backbone": args.backbone, "n_a": n_a, "n_b": n_b,
              "backbone_key": backbone.cache_key, "a": args.a, "b": args.b}
    if getattr(backbone, "classifier_id", None):
        result["domain_classifier_sha"] = backbone.classifier_id
    return result


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
        which = result["backbone"] + (f" classifier {result['domain_classifier_sha']}" if "domain_classifier_sha" in result else "")
        print(f"FID ({which}, {result['n_a']} vs {result['n_b']}): {result['fid']:.4f}")
    return 0 if math.isfinite(result["fid"]) else 1


if __name__ == "__main__":
    sys.exit(main())
