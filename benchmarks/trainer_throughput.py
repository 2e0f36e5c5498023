"""Trainer throughput: gentune's GAN step on the in-memory uint8 tensor vs the usual DataLoader loop.

    python benchmarks/trainer_throughput.py            # real run: about 3-6 min on 2 CPU cores
    python benchmarks/trainer_throughput.py --smoke    # tiny sizes, < 20 s

Three loops, each with its own copy of the same DCGAN (models.registry.build_model via
tuner.trials.build_trial, same seed), the same loss and optimiser settings, the same batch size
and device, run interleaved (order rotated every repeat, warm-up excluded):

  gentune      tuner.training.steps.gan_step(trial, images): batches drawn by index from the uint8 training
               tensor held on the device (tuner.training.steps.sample_batch), n_critic D steps + 1 G step.
  gentune+loop the same step plus the bookkeeping of tuner.training.loop.train's loop (metric sums, a
               synchronising finiteness check every DIVERGENCE_CHECK_EVERY steps).
  DataLoader   the usual lab loop: torchvision FashionMNIST with ToTensor + Normalize((0.5,), (0.5,)),
               DataLoader(batch 128, shuffle, drop_last, num_workers 0), the same n_critic D steps
               (each on a fresh loader batch) + G step: gan_step itself, fed by the loader.

Throughput is in real images seen by D per second (the unit of kimg). The share of step time spent
outside the model is measured with perf_counter around the batch fetch (sample_batch, or next() on
the loader + .to(device)) inside the timed steps, and as the extra time of the train-loop bookkeeping.

Fractional trials (GPU): k = 1, 2 and 4 trials sharing one GPU, run as `--gpus-per-trial 1/k` runs
them: one process per trial, each with its memory capped to 1/k of the GPU (TrainConfig
gpu_memory_fraction -> tuner.trials.pick_device), all stepping gan_step (hinge) at once for the
same wall time after a barrier. Ray itself is not started: its fractional GPUs only decide where
processes go, and the GPU machines have no Ray. Reported: the sum of the trials' img/s, and per trial.
Without CUDA the section says "not measured"; --smoke runs k = 1, 2 on the CPU to check the code path.

Targets (CPU): gentune >= 1.4x the DataLoader loop; data path + bookkeeping <= 5% of step time.
GPU targets are measured only where CUDA is available.
"""

from __future__ import annotations

import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

import tuner.training.loop as trainloop  # noqa: E402
import tuner.training.steps as trainsteps  # noqa: E402
import tuner.training.trial as trials  # noqa: E402
from tuner.config import TrainConfig  # noqa: E402
from tuner.data import data_root, load_split, resolve_mirror, training_images  # noqa: E402

DATASET = "fashion-mnist"
METHODS = ("gentune", "gentune+loop", "DataLoader")


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--losses", nargs="+", default=["hinge", "wgan-gp"], help="GAN losses [default: hinge wgan-gp]")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of all loops [default: 128, as the lab's loop]")
    p.add_argument("--width", type=int, default=64, help="g_width = d_width [default: 64]")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds; each round times every loop once [default: 30]")
    p.add_argument("--images-per-repeat", type=int, default=1024, help="D images per loop per round [default: 1024]")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps per loop first [default: 5]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [default: all cores]")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers [default: 0, as in the lab code]")
    p.add_argument("--fraction-seconds", type=float, default=20.0,
                   help="timed wall time of each fractional-trials run (GPU only) [default: 20]")
    return p


# ------------------------------------------------------------------------------------------
# the loops


class TimedSampler:
    """tuner.training.steps.sample_batch with perf_counter around each call (synchronised on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.inner = trainsteps.sample_batch
        self.device = device
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        common.sync(self.device)
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        common.sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


class GentuneLoop:
    def __init__(self, cfg: TrainConfig, device: torch.device, images: torch.Tensor, bookkeeping: bool) -> None:
        self.trial = trials.build_trial(cfg, device)
        self.images, self.bookkeeping, self.device = images, bookkeeping, device
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.sampler = TimedSampler(device)
        self.book_seconds = 0.0

    def step(self) -> None:
        out = trainsteps.gan_step(self.trial, self.images)
        if self.bookkeeping:  # what tuner.training.loop.train does around every step
            t0 = time.perf_counter()
            for key, value in out.items():
                self.sums[key] = self.sums.get(key, 0) + value
            self.trial.step += 1
            self.steps += 1
            if self.steps % trainloop.DIVERGENCE_CHECK_EVERY == 0:
                trainloop.check_divergence(self.sums)  # .item(): on CUDA this waits for the queued step
            self.book_seconds += time.perf_counter() - t0

    @property
    def data_seconds(self) -> float:
        return self.sampler.seconds


class DataLoaderLoop:
    """The lab's loop: the same models, loss and step structure, real batches from a DataLoader."""

    def __init__(self, cfg: TrainConfig, device: torch.device, workers: int) -> None:
        from torchvision import datasets, transforms

        self.trial = trials.build_trial(cfg, device)
        self.device = device
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        ds = datasets.FashionMNIST(str(data_root()), train=True, download=False, transform=tf)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                                  num_workers=workers, persistent_workers=workers > 0)
        self.it = iter(self.loader)
        self.data_seconds = 0.0
        self.book_seconds = 0.0

    def next_batch(self) -> torch.Tensor:
        common.sync(self.device)
        t0 = time.perf_counter()
        try:
            x, _ = next(self.it)
        except StopIteration:  # next epoch
            self.it = iter(self.loader)
            x, _ = next(self.it)
        x = x.to(self.device)
        common.sync(self.device)
        self.data_seconds += time.perf_counter() - t0
        return x

    def step(self) -> None:
        trainsteps.gan_step(self.trial, None, next_real=self.next_batch)


def timed(loop, steps: int, device: torch.device) -> tuple[float, float, float, int]:
    """(seconds, data-path seconds, bookkeeping seconds, D images) of `steps` steps."""
    data0, book0, seen0 = loop.data_seconds, loop.book_seconds, loop.trial.images_seen
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loop.step()
    common.sync(device)
    return (time.perf_counter() - t0, loop.data_seconds - data0, loop.book_seconds - book0,
            loop.trial.images_seen - seen0)


def bench_loss(loss: str, device: torch.device, images: torch.Tensor, args) -> dict[str, dict[str, list[float]]]:
    cfg = TrainConfig(dataset=DATASET, loss=loss, batch_size=args.batch_size, g_width=args.width, d_width=args.width,
                      device=device.type).resolved()
    loops = {
        "gentune": GentuneLoop(cfg, device, images, bookkeeping=False),
        "gentune+loop": GentuneLoop(cfg, device, images, bookkeeping=True),
        "DataLoader": DataLoaderLoop(cfg, device, args.workers),
    }
    steps = max(1, round(args.images_per_repeat / (cfg.batch_size * cfg.n_critic)))
    # gan_step looks sample_batch up in tuner.training.steps' namespace: time it there, per loop.
    original = trainsteps.sample_batch
    results = {m: {"img_s": [], "data_share": [], "book_share": []} for m in METHODS}
    try:
        for repeat in range(-1, args.repeats):  # repeat -1: warm-up, not recorded
            order = METHODS[repeat % 3:] + METHODS[:repeat % 3]
            for name in order:
                loop = loops[name]
                if isinstance(loop, GentuneLoop):
                    trainsteps.sample_batch = loop.sampler
                n = args.warmup_steps if repeat < 0 else steps
                seconds, data_s, book_s, seen = timed(loop, n, device)
                trainsteps.sample_batch = original
                if repeat >= 0:
                    results[name]["img_s"].append(seen / seconds)
                    results[name]["data_share"].append(data_s / seconds)
                    results[name]["book_share"].append(book_s / seconds)
    finally:
        trainsteps.sample_batch = original
    return {"steps": steps, "n_critic": cfg.n_critic, **results}


def bench_data_path(device: torch.device, images: torch.Tensor, args) -> dict[str, list[float]]:
    """Microseconds per image of the data path alone: sample_batch vs the DataLoader, interleaved."""
    cfg = TrainConfig(dataset=DATASET, batch_size=args.batch_size, device=device.type).resolved()
    loader = DataLoaderLoop(cfg, device, args.workers)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = 2 if args.smoke else 16
    out = {"gentune": [], "DataLoader": []}
    for repeat in range(-1, args.repeats):
        for name in (("gentune", "DataLoader") if repeat % 2 else ("DataLoader", "gentune")):
            common.sync(device)
            t0 = time.perf_counter()
            for _ in range(batches):
                if name == "gentune":
                    trainsteps.sample_batch(images, cfg.batch_size, gen, "tanh")
                else:
                    loader.next_batch()
            common.sync(device)
            if repeat >= 0:
                out[name].append(1e6 * (time.perf_counter() - t0) / (batches * cfg.batch_size))
    return out


# ------------------------------------------------------------------------------------------
# fractional trials: k processes share one device


def fractional_trial(rank: int, cfg_dict: dict, seconds: float, warmup_steps: int, barrier, results) -> None:
    """One of k trials sharing a device (a spawned process, as a Ray trial is)."""
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(cfg_dict)
    device = trials.pick_device(cfg)  # caps this process's GPU memory to gpu_memory_fraction
    images = training_images(DATASET, device)
    trial = trials.build_trial(cfg, device)
    for _ in range(warmup_steps):
        trainsteps.gan_step(trial, images)
    common.sync(device)
    barrier.wait()
    seen0, t0 = trial.images_seen, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainsteps.gan_step(trial, images)
    common.sync(device)
    results.put((rank, (trial.images_seen - seen0) / (time.perf_counter() - t0)))


def bench_fractional(k: int, device_type: str, args) -> list[float]:
    """img/s of each of k hinge trials stepping at once on one device."""
    cfg = TrainConfig(dataset=DATASET, loss="hinge", batch_size=args.batch_size, g_width=args.width, d_width=args.width)
    return run_processes(k, cfg, device_type, args.fraction_seconds, args.warmup_steps)


def run_processes(k: int, cfg: TrainConfig, device_type: str, seconds: float, warmup_steps: int) -> list[float]:
    """img/s of each of k trials of `cfg` (seeds 0..k-1), one process each, stepping at once for `seconds`."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    fraction = 1.0 / k if device_type == "cuda" else None
    cfgs = [cfg.replace(device=device_type, gpu_memory_fraction=fraction, seed=rank).resolved() for rank in range(k)]
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=fractional_trial, args=(rank, cfgs[rank].to_dict(), seconds, warmup_steps,
                                                         barrier, results)) for rank in range(k)]
    for proc in procs:
        proc.start()
    rates: dict[int, float] = {}
    try:
        while len(rates) < k:
            try:
                rank, rate = results.get(timeout=1.0)
                rates[rank] = rate
            except queue.Empty:  # a trial that died (e.g. out of its memory share) would leave the
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]  # others at the barrier
                if failed:
                    raise SystemExit(f"a fractional trial (of {k} sharing the {device_type}) exited with "
                                     f"{failed[0]}; its traceback is above") from None
    finally:
        for proc in procs:
            if len(rates) < k:
                proc.terminate()
            proc.join()
    return [rates[rank] for rank in range(k)]


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.batch_size, args.width, args.repeats, args.images_per_repeat, args.warmup_steps = 16, 8, 3, 32, 1
        args.fraction_seconds = 0.5
    if args.threads:
        torch.set_num_threads(args.threads)
    load_split(DATASET, "train", resolve_mirror(None))  # installs an offline mirror where torchvision reads it

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, targets, data_rows = [], [], []
    load = common.LoadMonitor()
    with load:
        for device in devices:
            images = training_images(DATASET, device)
            dp = bench_data_path(device, images, args)
            per = {m: common.median(v) for m, v in dp.items()}
            for m in ("gentune", "DataLoader"):
                data_rows.append([device.type, m, per[m], common.spread(dp[m])])
            data_rows.append([device.type, "DataLoader − gentune (the most the tensor path can save)",
                              per["DataLoader"] - per["gentune"], "—"])
            for loss in args.losses:
                r = bench_loss(loss, device, images, args)
                med = {m: common.median(r[m]["img_s"]) for m in METHODS}
                # Paired ratios: each round's loops ran back to back, so they saw the same contention.
                paired = {m: [a / b for a, b in zip(r[m]["img_s"], r["DataLoader"]["img_s"])] for m in METHODS}
                pmed = {m: common.median(paired[m]) for m in METHODS}
                share = {m: common.median(r[m]["data_share"]) for m in METHODS}
                bookkeeping = common.median(r["gentune+loop"]["book_share"])
                outside = common.median(d + b for d, b in zip(r["gentune+loop"]["data_share"], r["gentune+loop"]["book_share"]))
                ratio, ratio_loop = pmed["gentune"], pmed["gentune+loop"]
                for m in METHODS:
                    rows.append([device.type, loss, m, med[m], common.spread(r[m]["img_s"]), f"{pmed[m]:.2f}x",
                                 common.quartiles(paired[m]) if m != "DataLoader" else "—", f"{100 * share[m]:.1f}%"])
                kind = device.type.upper()
                targets.append([kind, loss, "gentune step vs DataLoader loop", f"{ratio:.2f}x (with loop bookkeeping {ratio_loop:.2f}x)",
                                "≥ 1.4x" if device.type == "cpu" else "(GPU: report)",
                                common.verdict(ratio >= 1.4) if device.type == "cpu" else "measured"])
                targets.append([kind, loss, "outside the model: data path + bookkeeping",
                                f"{100 * outside:.1f}% (sampling {100 * share['gentune+loop']:.1f}%, bookkeeping {100 * bookkeeping:.1f}%)",
                                "≤ 5%", common.verdict(outside <= 0.05)])
        if not torch.cuda.is_available():
            for what in ("gentune step vs DataLoader loop", "outside the model: data path + bookkeeping"):
                targets.append(["GPU", " / ".join(args.losses), what, common.NO_GPU, "—", "not measured"])
        frac_rows = []
        if torch.cuda.is_available() or args.smoke:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            base = None
            for k in ((1, 2) if args.smoke else (1, 2, 4)):
                rates = bench_fractional(k, device_type, args)
                base = base or sum(rates)
                frac_rows.append([device_type, k, f"1/{k}" if device_type == "cuda" else "—", sum(rates),
                                  f"{min(rates):.0f}–{max(rates):.0f}", f"{sum(rates) / base:.2f}x"])
        if not torch.cuda.is_available():
            frac_rows.append(["GPU", "1, 2, 4", "—", common.NO_GPU, "—", "—"])

    setup = (f"DCGAN g_width = d_width = {args.width}, batch {args.batch_size}, z_dim 64, each loss's published optimiser "
             f"settings (hinge: Adam 2e-4, n_critic 1; wgan-gp: Adam 1e-4, n_critic 5, lambda 10). {args.repeats} timed "
             f"rounds; in each round every loop trains ~{args.images_per_repeat} D images, back to back, in an order "
             f"rotated every round, after one warm-up round of {args.warmup_steps} steps. img/s: median (range) over "
             f"rounds. vs DataLoader: median over rounds of the ratio of a loop's img/s to the DataLoader loop's in "
             f"the same round (paired, so slow changes in machine load cancel), with its interquartile range. "
             f"DataLoader num_workers={args.workers}, torch threads {torch.get_num_threads()}. "
             f"img/s = real images seen by D per second (n_critic x batch per step).")
    blocks = [
        setup,
        common.table(["device", "loss", "loop", "img/s (median)", "range", "vs DataLoader (paired median)",
                      "paired IQR", "data path share"], rows),
        "Data path alone (no model), µs per image, interleaved rounds of %d batches:\n\n" % (2 if args.smoke else 16)
        + common.table(["device", "data path", "µs/image (median)", "range"], data_rows)
        + "\n\nA loop at r img/s spends 1e6/r µs per image; the tensor path can speed it up by at most "
        "(1e6/r) / (1e6/r − saving), e.g. 1.4x only if the DataLoader's data path is ≥ 29% of its step.",
        "Fractional trials: k processes stepping gan_step (hinge) at once on one device for "
        f"{args.fraction_seconds:g} s each, memory capped to 1/k on a GPU (as --gpus-per-trial 1/k):\n\n"
        + common.table(["device", "trials k", "memory cap", "img/s, sum of k trials", "per trial", "sum vs k = 1"],
                       frac_rows),
        "Targets:\n\n" + common.table(["device", "loss", "figure", "measured", "target", "verdict"], targets),
        "Data path share = perf_counter time around the batch fetch / step time (gentune: sample_batch; "
        "DataLoader: next() + .to(device)). Outside the model = (sampling + bookkeeping) / step time of the "
        "gentune+loop loop, where bookkeeping is perf_counter time around the train() loop body after the "
        "step (metric sums, finiteness check every 10 steps), median over repeats.",
    ]
    common.publish(common.section("trainer_throughput: gan_step on the in-memory tensor vs DataLoader loop",
                                  args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
