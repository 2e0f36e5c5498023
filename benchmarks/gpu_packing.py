"""Fused trial packs: K GAN trials in one fused step (tuner/training/pack.py) against the other ways to run K.

    python benchmarks/gpu_packing.py            # 5-10 min on 2 CPU cores; the section goes to a new dated file
                                                # in benchmarks/results/ (common.publish)
    python benchmarks/gpu_packing.py --smoke    # tiny sizes, one config, < 1 min

For each device (the CPU, and CUDA where torch sees it), each config and each pack size K:

  one at a time  K trials in one process, stepped in turn (tuner.training.steps.gan_step): what one slot of a
                 study gives K trials when they share it by time.
  fused          one pack of the K trials (tuner.training.pack.fused_gan_step): one fused step trains all K.
  K processes    K processes stepping one trial each at once, as K fractional Ray trials run
                 (trainer_throughput.run_processes: one torch thread each; on a GPU each capped to 1/K
                 of its memory).

Configs: the study's calibrated point (lsgan, z 24, G 32 / D 80, spectral norm, batch 32; tuner.config.space)
and the published hinge point at the throughput benchmark's size (width 64, batch 64). Members of a
pack differ in seed and learning rate, as a study's would. The in-process methods are timed in
interleaved rounds (so slow changes in machine load hit both alike); img/s counts real images seen by D,
summed over the K trials. The study-level rows (the no-flag study's wall time and best FID, packed and
unpacked) are GPU targets: without a GPU they say "not measured".

Targets: one H200, calibrated point, >= 100,000 img/s summed over a pack. On the CPU, packing becomes the
default only where `fused` beats both other methods (it does not: see BENCHMARKS.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import trainer_throughput  # noqa: E402

import torch  # noqa: E402

from tuner.config import TrainConfig  # noqa: E402
from tuner.data import load_split, resolve_mirror, training_images  # noqa: E402
from tuner.training.pack import FusedGAN, fused_gan_step  # noqa: E402
from tuner.config.space import CALIBRATED  # noqa: E402
from tuner.training.steps import gan_step  # noqa: E402
from tuner.training.trial import build_trial  # noqa: E402

DATASET = "fashion-mnist"
CONFIGS = {
    "calibrated lsgan": {k: v for k, v in CALIBRATED["lsgan"].items()},
    "hinge w64 b64": {"loss": "hinge", "g_width": 64, "d_width": 64, "z_dim": 64, "batch_size": 64},
}
NOT_MEASURED = "not measured: no GPU on this machine (the study rows are GPU targets)"


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--cpu-packs", type=int, nargs="+", default=[1, 2, 4], help="pack sizes K on the CPU [default: 1 2 4]")
    p.add_argument("--gpu-packs", type=int, nargs="+", default=[1, 4, 16, 64], help="pack sizes K on a GPU [default: 1 4 16 64]")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per method [default: 5]")
    p.add_argument("--steps", type=int, default=10, help="steps per round [default: 10]")
    p.add_argument("--process-seconds", type=float, default=10.0, help="timed seconds of the K-processes run [default: 10]")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the in-process methods [default: all cores]")
    p.add_argument("--precision", default="auto", help="training precision: auto | fp32 | bf16 [default: auto]")
    return p


def member_configs(params: dict, k: int, device: str, precision: str) -> list[TrainConfig]:
    """K members of one shape: seeds 0..K-1, learning rates spread over a factor of 2 around the point's."""
    base = TrainConfig(dataset=DATASET, device=device, precision=precision, **params).resolved()
    return [base.replace(seed=i, lr=base.lr * 2 ** (i / max(k - 1, 1) - 0.5)) for i in range(k)]


def time_rounds(step, images_per_call: int, device: torch.device, rounds: int, steps: int) -> list[float]:
    step()  # warm-up (first-call allocations, oneDNN primitive creation)
    common.sync(device)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        common.sync(device)
        rates.append(images_per_call * steps / (time.perf_counter() - t0))
    return rates


def bench(cfgs: list[TrainConfig], device: torch.device, images: torch.Tensor, args) -> tuple[dict[str, list[float]], str]:
    """img/s of each in-process method per round, and the precision the trials trained in."""
    solo = [build_trial(c, device) for c in cfgs]
    pack = FusedGAN([build_trial(c, device) for c in cfgs])
    per_call = len(cfgs) * cfgs[0].batch_size * cfgs[0].n_critic
    rates: dict[str, list[float]] = {"one at a time": [], "fused": []}
    for _ in range(args.rounds):  # interleaved: one round of each, in turn
        rates["one at a time"] += time_rounds(lambda: [gan_step(t, images) for t in solo], per_call, device, 1, args.steps)
        rates["fused"] += time_rounds(lambda: fused_gan_step(pack, images), per_call, device, 1, args.steps)
    return rates, pack.trials[0].precision


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.cpu_packs, args.gpu_packs, args.rounds, args.steps, args.process_seconds = [1, 2], [1, 2], 2, 2, 0.5
    if args.threads:
        torch.set_num_threads(args.threads)
    load_split(DATASET, "train", resolve_mirror(None))  # installs an offline mirror where torchvision reads it
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, targets = [], []
    load = common.LoadMonitor()
    with load:
        for device in devices:
            images = training_images(DATASET, device)
            packs = args.gpu_packs if device.type == "cuda" else args.cpu_packs
            for name, params in list(CONFIGS.items())[: 1 if args.smoke else None]:
                if args.smoke:
                    params = dict(params, g_width=8, d_width=8, batch_size=16)
                one = None
                for k in packs:
                    cfgs = member_configs(params, k, device.type, args.precision)
                    rates, precision = bench(cfgs, device, images, args)
                    procs = trainer_throughput.run_processes(k, cfgs[0], device.type, args.process_seconds, 1)
                    med = {m: common.median(v) for m, v in rates.items()} | {"K processes": sum(procs)}
                    one = one or med["one at a time"]
                    for m in ("one at a time", "fused", "K processes"):
                        spread = common.spread(rates[m]) if m in rates else f"{min(procs):.0f}–{max(procs):.0f} per process"
                        rows.append([device.type, name, k, precision, m, med[m], spread, f"{med[m] / one:.2f}x"])
                    if device.type == "cuda" and name == "calibrated lsgan":
                        targets.append(["GPU", f"fused, K = {k}", f"{med['fused']:.0f} img/s", ">= 100,000",
                                        common.verdict(med["fused"] >= 100_000)])
                    if device.type == "cpu":
                        faster = med["fused"] > max(med["one at a time"], med["K processes"])
                        targets.append(["CPU", f"{name}, fused vs best other, K = {k}",
                                        f"{med['fused'] / max(med['one at a time'], med['K processes']):.2f}x",
                                        "> 1 to make packs the CPU default", "faster" if faster else "not faster"])
        if not torch.cuda.is_available():
            targets.append(["GPU", "fused, K = " + ", ".join(map(str, args.gpu_packs)), common.NO_GPU, ">= 100,000", "not measured"])
        for what, target in (("no-flag study wall time, packed", "<= 45 s on one H200"),
                             ("256-trial study, packed", "<= 5 min, best domain FID <= 35")):
            targets.append(["study", what, NOT_MEASURED, target, "not measured"])

    blocks = [
        f"img/s = real images seen by D per second, summed over the K trials. In-process methods: median over "
        f"{args.rounds} interleaved rounds of {args.steps} steps, torch threads {torch.get_num_threads()}; "
        f"K processes: {args.process_seconds:g} s at once, one torch thread each. precision {args.precision}.",
        common.table(["device", "config", "K", "precision", "method", "img/s (median)", "range", "vs one at a time, K = 1"], rows),
        "Targets:\n\n" + common.table(["where", "figure", "measured", "target", "verdict"], targets),
    ]
    common.publish(common.section("gpu_packing: fused trial packs vs one at a time vs K processes", args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
