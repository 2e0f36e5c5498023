"""Inception features per second by batch size: what the `cpu_batch` of tuner/metrics/backbones.py rests on.

    python benchmarks/inception_batch.py            # real run: 3 rounds x 4 batch sizes x 256 images, 2 threads, 6-8 min on a CPU
    python benchmarks/inception_batch.py --smoke    # tiny sizes

Times `InceptionBackbone.features` (the FID's feature pass: resize to 299x299, Inception-v3 in exact
fp32) on the same seeded uint8 images at each batch size, one warm-up pass first, in rounds that take
every size in turn (so a slow spell of a shared machine falls on all sizes alike; the median round
counts), and checks that the features do not depend on the batch size (max relative difference to the
first size's). The final
evaluation scores 10000 samples with it, so its speed sets the Inception half of a final evaluation's
time on a CPU. Target: the default batch of the device (`default_batch()`) within 10% of the fastest
size measured, with features equal to the last bit or within float32 round-off (1e-5 relative).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (it puts the repository on sys.path)


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--images", type=int, default=256, help="images timed per batch size and round [default: 256]")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 256],
                   help="batch sizes, timed in this order in each round [default: 16 32 64 256]")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all sizes [default: 3]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [default: 2, a final evaluation's]")
    p.add_argument("--device", default="cpu", help="cpu | cuda [default: cpu]")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.images < 1 or args.rounds < 1:
        parser.error("--batch-sizes, --images and --rounds must be integers >= 1")  # exit 2
    if args.smoke:
        args.images, args.batch_sizes, args.rounds = 8, [2, 8], 2
    torch.set_num_threads(args.threads)
    from tuner.metrics.backbones import get_backbone

    backbone = get_backbone("inception", device=args.device)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(args.images, 1, 28, 28), dtype=np.uint8))
    backbone.features(images[:min(args.batch_sizes)], batch_size=min(args.batch_sizes))  # warm-up
    rates: dict[int, list[float]] = {bs: [] for bs in args.batch_sizes}
    rel: dict[int, float] = {bs: 0.0 for bs in args.batch_sizes}
    first = None
    load = common.LoadMonitor()
    with load:
        for _ in range(args.rounds):
            for bs in args.batch_sizes:
                t0 = time.perf_counter()
                feats = backbone.features(images, batch_size=bs)
                common.sync(backbone.device)
                rates[bs].append(args.images / (time.perf_counter() - t0))
                first = feats if first is None else first
                rel[bs] = max(rel[bs], float(np.abs(feats - first).max() / np.abs(first).max()))
    speed = {bs: common.median(r) for bs, r in rates.items()}
    rows = [[bs, f"{speed[bs]:.2f}", common.spread(rates[bs]), f"{10000 / speed[bs] / 60:.1f}",
             f"{speed[bs] / speed[args.batch_sizes[-1]]:.2f}x", f"{rel[bs]:.1e}"] for bs in args.batch_sizes]
    default = backbone.default_batch()
    best = max(speed, key=speed.get)
    at_default = speed.get(default)
    targets = [[f"default batch ({default} on {backbone.device.type}) vs the fastest measured ({best})",
                f"{at_default / speed[best]:.0%} of its speed" if at_default else "default not measured",
                "≥ 90%", common.verdict(at_default / speed[best] >= 0.9) if at_default else "not measured"],
               ["features across batch sizes", f"{max(rel.values()):.1e} relative", "≤ 1e-5",
                common.verdict(max(rel.values()) <= 1e-5)]]
    blocks = [f"`InceptionBackbone.features` on {args.images} seeded uint8 images per batch size, {args.rounds} rounds "
              f"over all sizes, {torch.get_num_threads()} torch threads, after one warm-up pass; images/s is the "
              f"median round; the last column compares each size's features with the first size's.",
              common.table(["batch", "images/s (median)", "range", "10000 images (min)",
                            f"vs batch {args.batch_sizes[-1]}", "max rel. diff vs first"], rows),
              "Targets:\n\n" + common.table(["figure", "measured", "target", "verdict"], targets)]
    common.publish(common.section("inception_batch: Inception features per second by batch size", args.smoke,
                                  blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
