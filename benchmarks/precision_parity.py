"""bf16 vs fp32 training: FID parity across seeds, and throughput (with channels_last, torch.compile).

    python benchmarks/precision_parity.py            # real run: 3 losses x 3 seeds x 2 precisions at 64 kimg
    python benchmarks/precision_parity.py --smoke    # tiny: 1 loss, 1 seed, 0.25 kimg

Part 1 (parity): for each loss (bce, hinge, wgan-gp) and seed, one `tuner.training.loop.train` run in
fp32 and one in bf16 (the `precision` field), the same config otherwise (published settings of the
loss, width 64, batch 64), scored once at the end with the domain FID on 1000 samples. Runs go two
at a time (one process and one thread each), as a study's trials do. The verdict per loss: is
|mean(bf16) - mean(fp32)| within the seed spread, max(std(fp32), std(bf16))?

Part 2 (throughput): training images/s of one hinge trial for a short run, one thread, in fp32,
bf16, bf16 + channels_last, and bf16 + torch.compile (compile time excluded: the first kimg is a
warm-up), to decide what the trainer adopts.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LOSSES = ("bce", "hinge", "wgan-gp")


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--losses", nargs="+", default=list(LOSSES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-kimg", type=float, default=64.0)
    p.add_argument("--fid-samples", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="runs at once, one thread each [default: 2]")
    p.add_argument("--throughput-kimg", type=float, default=6.0, help="length of each throughput run [default: 6]")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    return p


def one_run(job: dict) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(1)
    from tuner.config import TrainConfig
    from tuner.training.loop import train

    cfg = TrainConfig(**job["cfg"])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        history = train(cfg, out)
        wall = time.perf_counter() - t0
    last = history[-1]
    return {**job, "fid": last["fid"], "precision_used": last["precision"], "img_per_s": last.get("img_per_s"),
            "wall_s": wall, "classes_covered": last.get("classes_covered")}


def throughput(variant: str, kimg: float, smoke: bool) -> float:
    """Training images/s of one hinge trial (no evaluation inside the timed part)."""
    import torch

    torch.set_num_threads(1)
    from tuner.config import TrainConfig
    from tuner.data import training_images
    from tuner.training.steps import gan_step
    from tuner.training.trial import build_trial

    cfg = TrainConfig(dataset="fashion-mnist", loss="hinge", precision="fp32" if variant == "fp32" else "bf16",
                      train_limit=2048 if smoke else None).resolved()
    device = torch.device("cpu")
    images = training_images(cfg.dataset, device, cfg.data_mirror, cfg.train_limit)
    trial = build_trial(cfg, device)
    if variant == "bf16+channels_last":
        for net in trial.nets.values():
            net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if variant == "bf16+compile":
        trial.nets = {k: torch.compile(v) for k, v in trial.nets.items()}
    warm = max(1, int(1000 / cfg.batch_size))
    for _ in range(warm):  # warm-up (and compilation)
        gan_step(trial, images)
    steps = max(2, int(kimg * 1000 / cfg.batch_size))
    t0 = time.perf_counter()
    for _ in range(steps):
        gan_step(trial, images)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def _throughput_job(args: tuple) -> tuple[str, float | str]:
    variant, kimg, smoke = args
    try:
        return variant, throughput(variant, kimg, smoke)
    except Exception as err:  # e.g. torch.compile without a working C++ toolchain
        return variant, f"failed: {' '.join(str(err).split())[:160]}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.losses, args.seeds, args.max_kimg, args.fid_samples, args.throughput_kimg = ["hinge"], [0], 0.25, 64, 0.25
    base = dict(dataset="fashion-mnist", max_kimg=args.max_kimg, eval_every_kimg=0.0, fid_samples=args.fid_samples)
    if args.smoke:
        base["train_limit"] = 512
    blocks = []
    load = common.LoadMonitor()
    with load:
        if not args.skip_parity:
            jobs = [{"loss": loss, "seed": seed, "precision": p,
                     "cfg": {**base, "loss": loss, "seed": seed, "precision": p}}
                    for loss in args.losses for seed in args.seeds for p in ("fp32", "bf16")]
            with ProcessPoolExecutor(args.workers) as pool:
                results = list(pool.map(one_run, jobs))
            rows, verdict_rows = [], []
            for r in results:
                rows.append([r["loss"], r["seed"], r["precision_used"], r["fid"], r["classes_covered"], r["img_per_s"], r["wall_s"]])
            for loss in args.losses:
                fids = {p: [r["fid"] for r in results if r["loss"] == loss and r["precision"] == p] for p in ("fp32", "bf16")}
                means = {p: statistics.fmean(v) for p, v in fids.items()}
                stds = {p: statistics.stdev(v) if len(v) > 1 else float("nan") for p, v in fids.items()}
                gap, spread = means["bf16"] - means["fp32"], max(stds.values())
                ok = None if spread != spread else abs(gap) <= spread
                speed = {p: statistics.fmean(r["wall_s"] for r in results if r["loss"] == loss and r["precision"] == p)
                         for p in ("fp32", "bf16")}
                verdict_rows.append([loss, f"{means['fp32']:.1f} ± {stds['fp32']:.1f}", f"{means['bf16']:.1f} ± {stds['bf16']:.1f}",
                                     f"{gap:+.1f}", f"{spread:.1f}", f"{speed['fp32'] / speed['bf16']:.2f}x", common.verdict(ok)])
            blocks += [
                f"Part 1, parity: {args.max_kimg:g} kimg per run, published settings of each loss, width 64, batch 64, "
                f"domain FID on {args.fid_samples} samples at the end; {args.workers} runs at once, one thread each.",
                common.table(["loss", "seed", "precision", "FID", "classes covered", "img/s (last interval)", "wall (s)"], rows),
                common.table(["loss", "fp32 FID mean ± std", "bf16 FID mean ± std", "gap (bf16 - fp32)", "seed spread (max std)",
                              "wall-clock fp32 / bf16", "gap within spread"], verdict_rows),
            ]
        if not args.skip_throughput:
            variants = ["fp32", "bf16", "bf16+channels_last", "bf16+compile"]
            with ProcessPoolExecutor(1) as pool:  # one at a time: a throughput figure needs the core to itself
                speeds = dict(pool.map(_throughput_job, [(v, args.throughput_kimg, args.smoke) for v in variants]))
            ref = speeds["fp32"] if isinstance(speeds["fp32"], float) else None
            rows = [[v, s, f"{s / ref:.2f}x" if ref and isinstance(s, float) else "—"] for v, s in speeds.items()]
            blocks += [f"Part 2, throughput: hinge, width 64, batch 64, one thread, {args.throughput_kimg:g} kimg after a "
                       "1-kimg warm-up (which also holds torch.compile's compilation), D and G steps only.",
                       common.table(["variant", "img/s", "vs fp32"], rows)]
    common.publish(common.section("precision_parity: bf16 vs fp32 (FID across seeds, throughput)", args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
