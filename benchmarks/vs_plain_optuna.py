"""gentune's default study against what a user would pick instead: plain Optuna, at the same budget.

    python benchmarks/vs_plain_optuna.py            # real run: 3 seeds x 2 arms, one after the other
    python benchmarks/vs_plain_optuna.py --smoke    # tiny sizes, 1 seed, both arms for real (< 60 s)

For each seed S, one after the other (never both arms at once, so each has the machine's cores):

  gentune:      `python tuner/search.py --seed S` (no other flags but where it writes: --storage-path,
                --name): Ray Tune, multivariate TPE with the warm start, ASHA on fid over kimg.
  plain Optuna: one study in one JournalStorage file (JournalFileBackend), driven by two worker
                processes that each call study.optimize, with no Ray at all.

The plain-Optuna arm is built from gentune's own parse() of the same flags, so everything but the
scheduling is the same:
- the trials: gentune's define-by-run space (tuner.config.space.define_by_run over the same losses and
  ranges), each trial's TrainConfig from tuner.config.trial_config(base, trial.params), trained by
  tuner.training.loop.train: the same 64 kimg, evaluated (domain FID, 1000 samples) at the same points,
  gentune's ASHA rungs 8 and 24 kimg and 64 kimg, with the same checkpoints, the same trial seed S,
  torch.set_num_threads(1) per process (gentune reserves 1 CPU per trial, so it runs 2 at a time here);
- the sampler: TPESampler(seed, multivariate=True, group=True, constant_liar=True,
  n_startup_trials=5), gentune's settings. The two workers cannot share one sampler: with one seed both
  would draw the same random start-up configs, so worker 0 seeds it with S and worker 1 with S + 10007
  (what Optuna's docs advise for parallel workers; gentune has one sampler on its driver, seeded S);
- the warm start: the same points (the calibrated lsgan point, then DCGAN, WGAN, WGAN-GP as published),
  study.enqueue_trial'd before the workers start, as gentune's OptunaSearch enqueues them;
- the pruner: optuna.pruners.HyperbandPruner(min_resource=grace, max_resource=max_kimg,
  reduction_factor=3), gentune's ASHA grace and reduction factor. Steps are images seen (kimg x 1000,
  the clock gentune's own journal uses; Optuna needs integer steps), so the resources are 8000 and
  64000. Each evaluation below max_kimg calls trial.report(fid, step) and raises optuna.TrialPruned
  when trial.should_prune(); the 64-kimg FID is the trial's value. Optuna's Hyperband runs 2 brackets
  here (rungs 8 and 24 kimg; 24 kimg only), each trial in one of them by a hash of its number;
- the number of trials: gentune's num_samples (16), enforced with optuna.study.MaxTrialsCallback over
  every state (a trial that still starts past it, when both workers end a trial at the same instant,
  stops before training and is not counted);
- divergence: as gentune, a diverged trial (non-finite losses or FID) is FAIL, not a number.

Measured per seed, from every evaluation of every trial ((wall-clock since the arm's start, cumulative
kimg, fid); gentune's from its exports and Ray's result.json timestamps, read with search_efficiency's
helpers): the best FID at equal compute (the smaller of the two arms' total cumulative kimg), the best
FID at equal wall-clock (the shorter arm's total), both arms' totals. Wall-clock counts from the start
of each arm's command (gentune: Ray's start-up and the exports included; Optuna: the metric assets, the
two processes' start-up). The curves go to one CSV, and a plot shows best FID so far against
cumulative kimg and against wall-clock, both arms, every seed.

Targets: gentune's median (over seeds) best FID at equal compute <= plain Optuna's, and the same at
equal wall-clock: Ray's scheduling and ASHA's asynchrony must pay for themselves.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path too)

import pandas as pd  # noqa: E402

from search_efficiency import best_at, compute_curve, load_history, run_search  # noqa: E402

WORKERS = 2
SECOND_SEED = 10007  # worker k's sampler seed is S + k * SECOND_SEED
ARMS = {"gentune": "gentune default study (Ray Tune + TPE + ASHA)",
        "optuna": "plain Optuna (TPE + HyperbandPruner, 2 processes, JournalStorage)"}
# --smoke: tiny trials, both arms for real (gentune's one at a time: its later trials reuse the first
# one's worker process, which saves a process start, about 5 s of CPU, in the test suite)
SMOKE_FLAGS = ["--train-limit", "256", "--fid-samples", "64", "--max-kimg", "0.2", "--grace-kimg", "0.1",
               "--num-samples", "4", "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32",
               "--losses", "hinge", "lsgan", "--max-concurrent", "1"]


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study seeds [default: 0 1 2]")
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "gentune-bench"),
                   help="where both arms' experiments are written, in a dated folder [default: $TMPDIR/gentune-bench]")
    p.add_argument("--analyze", metavar="DIR", default=None,
                   help="analyse the finished seeds of an earlier run's dated folder (STORAGE/STAMP) without running "
                        "anything; wall-clocks come from its times.json, else from the files' creation and last "
                        "modification times (said so in the result)")
    return p


def gentune_argv(storage: str, seed: int, smoke: bool) -> list[str]:
    """The default study's flags: --seed and where it writes (and, with --smoke, tiny sizes)."""
    return ["--seed", str(seed), "--storage-path", storage, "--name", f"gentune-seed{seed}",
            *(SMOKE_FLAGS if smoke else [])]


# ------------------------------------------------------------------------------------------
# the plain-Optuna arm


class Diverged(Exception):
    """A trial whose losses or FID became non-finite: Optuna records it as FAIL (as gentune does)."""


def make_sampler(search, base: dict, seed: int):
    """gentune's own sampler for the study's flags (tuner.study.driver.make_sampler), seeded `seed`."""
    from tuner.config import TrainConfig
    from tuner.study.driver import make_sampler as gentune_sampler

    return gentune_sampler(search, TrainConfig.from_dict(base).replace(seed=seed))


def make_pruner(grace_kimg: float, max_kimg: float, reduction_factor: int):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=round(grace_kimg * 1000), max_resource=round(max_kimg * 1000),
                                          reduction_factor=reduction_factor)


def journal_storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path))


def optuna_worker(rank: int, plan: dict) -> None:
    """One of the two processes: study.optimize until the study holds plan['n_trials'] trials."""
    import optuna
    import torch

    from tuner.config import trial_config
    from tuner.training import loop

    torch.set_num_threads(1)  # gentune's 1 CPU per trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range", category=UserWarning)
    base, n_trials, max_kimg = plan["base"], plan["n_trials"], plan["base"]["max_kimg"]
    study = optuna.load_study(study_name=plan["study_name"], storage=journal_storage(plan["journal"]),
                              sampler=make_sampler(plan["search"], base, plan["seed"] + rank * SECOND_SEED),
                              pruner=make_pruner(plan["grace_kimg"], max_kimg, plan["reduction_factor"]))
    events = open(Path(plan["dir"]) / f"events-{rank}.jsonl", "a")

    def objective(trial: optuna.Trial) -> float:
        if trial.number >= n_trials:  # both workers ended a trial at once and both started another
            study.stop()
            trial.set_user_attr("over_budget", True)
            raise optuna.TrialPruned("past the study's number of trials; not trained")
        plan["space"](trial)
        cfg = trial_config(base, trial.params)
        out = Path(plan["dir"]) / f"trial_{trial.number:03d}"
        diverged: list[str] = []

        def report(record: dict, checkpoint_dir) -> None:
            if record.get("checkpoint_only"):
                return
            events.write(json.dumps({"t": time.time(), "trial": trial.number, "kimg": record["kimg"],
                                     "fid": record["fid"], "time_s": record["time_s"],
                                     "diverged": bool(record.get("diverged"))}) + "\n")
            events.flush()
            if record.get("diverged"):
                diverged.append(str(record.get("diverge_reason", "")))
                return
            if record["kimg"] < max_kimg - 1e-9:  # an ASHA rung: the pruner decides here
                trial.report(record["fid"], step=int(round(record["kimg"] * 1000)))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at {record['kimg']:.2f} kimg")

        history = loop.train(cfg, out, report=report, checkpoint_dir=out / "checkpoint")
        if diverged:
            trial.set_user_attr("diverge_reason", diverged[0])
            raise Diverged(diverged[0])
        return float(history[-1]["fid"])

    callback = optuna.study.MaxTrialsCallback(n_trials, states=None)
    try:
        study.optimize(objective, callbacks=[callback], catch=(Diverged,), gc_after_trial=False)
    finally:
        events.close()


def run_optuna(search, base, overrides, seed: int, folder: Path) -> float:
    """The plain-Optuna arm for one seed; returns its wall-clock seconds (the assets, both processes)."""
    import optuna

    from tuner.config.space import build_ranges, define_by_run, warm_start_points
    from tuner.metrics.metrics_cache import prepare_assets
    from tuner.study.driver import searched_losses

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare_assets(base)  # as gentune's driver does: the classifier and real statistics, cached once
    losses = searched_losses(search, base)
    ranges = build_ranges(base.family, overrides, search.space)
    journal = str(folder / "optuna.journal")
    study = optuna.create_study(study_name=folder.name, storage=journal_storage(journal), direction="minimize",
                                sampler=make_sampler(search, base.to_dict(), seed),
                                pruner=make_pruner(search.grace_kimg, base.max_kimg, search.reduction_factor))
    if search.warm_start and base.family == "gan":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for point in warm_start_points(losses, ranges, set(overrides)):
                study.enqueue_trial(point)
    plan = {"journal": journal, "study_name": folder.name, "seed": seed, "search": search,
            "grace_kimg": search.grace_kimg, "reduction_factor": search.reduction_factor, "n_trials": search.num_samples,
            "base": base.to_dict(), "dir": str(folder),
            "space": define_by_run(base.family, losses, ranges, small_n_critic="n_critic" not in overrides)}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=optuna_worker, args=(rank, plan), name=f"optuna-worker-{rank}") for rank in range(WORKERS)]
    print(f"running: plain Optuna, seed {seed}, {WORKERS} processes, {search.num_samples} trials", flush=True)
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a plain-Optuna worker failed (exit codes {[p.exitcode for p in procs]})")
    print(f"finished in {seconds:.1f} s", flush=True)
    return seconds


def optuna_history(folder: Path) -> pd.DataFrame:
    """Every evaluation the workers logged, shaped like gentune's history (search_efficiency.compute_curve)."""
    rows = [json.loads(line) for f in sorted(folder.glob("events-*.jsonl")) for line in f.read_text().splitlines() if line]
    return pd.DataFrame({"trial_id": [f"o{r['trial']:03d}" for r in rows], "kimg": [float(r["kimg"]) for r in rows],
                         "fid": [float(r["fid"]) for r in rows], "wall_time_s": [float(r["time_s"]) for r in rows],
                         "timestamp": [float(r["t"]) for r in rows]})


def optuna_states(folder: Path) -> dict[str, int]:
    import optuna

    study = optuna.load_study(study_name=folder.name, storage=journal_storage(str(folder / "optuna.journal")))
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("over_budget"):
            states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def gentune_states(exp: Path) -> dict[str, int]:
    trials = pd.read_parquet(exp / "trials.parquet")
    return {str(k).upper(): int(v) for k, v in trials["status"].value_counts().items()}


# ------------------------------------------------------------------------------------------
# analysis


def with_wall(curve: pd.DataFrame, t0: float) -> pd.DataFrame:
    """compute_curve's table plus wall_s: seconds since the arm's command started."""
    return curve.assign(wall_s=curve["timestamp"] - t0)


def best_within_wall(curve: pd.DataFrame, seconds: float) -> float:
    within = curve[curve["wall_s"] <= seconds + 1e-9]["best_fid"].dropna()
    return float(within.iloc[-1]) if len(within) else math.nan


def plot(curves: dict[tuple[str, int], pd.DataFrame], path: Path, backbone: str, n: int) -> None:
    """Best FID so far vs cumulative kimg (left) and vs wall-clock (right): both arms, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    colors = {"gentune": "tab:blue", "optuna": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({seed for _, seed in curves})
    for (arm, seed), c in sorted(curves.items()):
        c = c.dropna(subset=["best_fid"])
        style = styles[seeds.index(seed) % len(styles)]
        for ax, x in zip(axes, ("cum_kimg", "wall_s")):
            ax.step(c[x], c["best_fid"], where="post", color=colors[arm], ls=style, label=f"{ARMS[arm]}, seed {seed}")
    axes[0].set(xlabel="cumulative kimg (all trials)", ylabel=f"best FID so far ({backbone}, {n} samples)",
                title="vs compute")
    axes[1].set(xlabel="wall-clock since the arm's start (s)", title="vs wall-clock")
    axes[0].set_yscale("log")
    axes[0].legend(loc="upper center", bbox_to_anchor=(1.05, -0.15), ncol=2, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def file_times(exp: Path, log: Path | None) -> tuple[float, float]:
    """(start, end) of an arm from its files, for --analyze of a run without times.json: the creation time
    of its first file (the gentune log, opened as its command started; the Optuna folder, made as its arm
    started) and the last modification of what it wrote last (the log: the summary; the Optuna events)."""
    first = log if log is not None else exp
    born = os.stat(first).st_birthtime if hasattr(os.stat(first), "st_birthtime") else None
    if born is None:  # Linux: statx's birth time through the stat command
        import subprocess

        born = float(subprocess.run(["stat", "-c", "%W", str(first)], capture_output=True, text=True).stdout)
    ends = [log] if log is not None else [*exp.glob("events-*.jsonl"), exp / "optuna.journal"]
    return born, max(os.stat(f).st_mtime for f in ends)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuner.study.driver import parse

    st = common.stamp()
    storage = Path(args.analyze) if args.analyze else Path(args.storage) / st
    seeds = list(args.seeds[:1] if args.smoke else args.seeds)
    if args.analyze:  # the seeds whose both arms finished
        seeds = [s for s in seeds if any((storage / f"optuna-seed{s}").glob("events-*.jsonl"))
                 and (storage / f"gentune-seed{s}" / "trials.parquet").is_file()]
        if not seeds:
            raise SystemExit(f"{storage}: no seed with both arms finished")
    times_file = storage / "times.json"
    times = json.loads(times_file.read_text()) if args.analyze and times_file.is_file() else {}
    from_files = bool(args.analyze) and not times
    curves: dict[tuple[str, int], pd.DataFrame] = {}
    wall: dict[tuple[str, int], float] = {}
    states: dict[tuple[str, int], dict[str, int]] = {}
    load = common.LoadMonitor()
    with load:
        for seed in seeds:
            argv_g = gentune_argv(str(storage if not args.analyze else storage.parent), seed, args.smoke)
            search, base, overrides = parse(argv_g)
            exp, folder = storage / f"gentune-seed{seed}", storage / f"optuna-seed{seed}"
            for arm in ("gentune", "optuna"):
                key = f"{arm}-seed{seed}"
                if from_files:
                    t0, t1 = file_times(exp if arm == "gentune" else folder,
                                        storage / f"{key}.log" if arm == "gentune" else None)
                    times[key] = [t0, t1 - t0]
                elif not args.analyze:
                    storage.mkdir(parents=True, exist_ok=True)
                    t0 = time.time()
                    seconds = (run_search(argv_g, storage / f"{key}.log") if arm == "gentune"
                               else run_optuna(search, base, overrides, seed, folder))
                    times[key] = [t0, seconds]
                    times_file.write_text(json.dumps(times, indent=1))
                t0, wall[arm, seed] = times[key]
                history = load_history(exp) if arm == "gentune" else optuna_history(folder)
                curves[arm, seed] = with_wall(compute_curve(history), t0)
                states[arm, seed] = gentune_states(exp) if arm == "gentune" else optuna_states(folder)

    out_dir = Path(tempfile.mkdtemp(prefix="gentune-bench-smoke-")) if args.smoke else common.RESULTS_DIR
    png, csv = out_dir / f"vs_plain_optuna_{st}.png", out_dir / f"vs_plain_optuna_{st}_curves.csv"
    plot(curves, png, base.fid_backbone, base.fid_samples)
    pd.concat([c.assign(arm=arm, seed=seed) for (arm, seed), c in curves.items()]).to_csv(csv, index=False)

    rows, fig = [], {"gentune": {"kimg": [], "wall": []}, "optuna": {"kimg": [], "wall": []}}
    for seed in seeds:
        g, o = curves["gentune", seed], curves["optuna", seed]
        equal_kimg = min(float(g["cum_kimg"].iloc[-1]), float(o["cum_kimg"].iloc[-1]))
        equal_wall = min(wall["gentune", seed], wall["optuna", seed])
        for arm, c in (("gentune", g), ("optuna", o)):
            at_kimg, at_wall = best_at(c, equal_kimg), best_within_wall(c, equal_wall)
            # no evaluation yet counts as worse than any FID in the medians (inf)
            fig[arm]["kimg"].append(math.inf if math.isnan(at_kimg) else at_kimg)
            fig[arm]["wall"].append(math.inf if math.isnan(at_wall) else at_wall)
            s = states[arm, seed]
            rows.append([ARMS[arm], seed, float(c["cum_kimg"].iloc[-1]), equal_kimg, at_kimg, equal_wall,
                         "no evaluation yet" if math.isnan(at_wall) else at_wall,
                         float(c["best_fid"].dropna().iloc[-1]) if c["best_fid"].notna().any() else math.nan,
                         wall[arm, seed], ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.items()))])
    med = {arm: {k: common.median(v) for k, v in d.items()} for arm, d in fig.items()}
    per_seed = common.table(["arm", "seed", "total kimg", "equal compute (kimg)", "best FID at equal compute",
                             "equal wall-clock (s)", "best FID at equal wall-clock", "best FID (whole run)",
                             "wall-clock (s)", "trials"], rows)
    ok_kimg = med["gentune"]["kimg"] <= med["optuna"]["kimg"]
    ok_wall = med["gentune"]["wall"] <= med["optuna"]["wall"]
    targets = common.table(["target (median over seeds)", "gentune", "plain Optuna", "goal", "verdict"], [
        ["best FID at equal compute", med["gentune"]["kimg"], med["optuna"]["kimg"], "gentune ≤ Optuna",
         common.verdict(ok_kimg)],
        ["best FID at equal wall-clock (inf: no evaluation yet)", med["gentune"]["wall"],
         med["optuna"]["wall"], "gentune ≤ Optuna", common.verdict(ok_wall)],
        ["wall-clock of the whole run (s)", common.median(wall["gentune", s] for s in seeds),
         common.median(wall["optuna", s] for s in seeds), "reported", "—"]])
    budget = (f"Both arms: {search.num_samples} trials of {base.max_kimg:g} kimg, evaluated at "
              f"{', '.join(f'{k:g}' for k in base.eval_at_kimg)} and {base.max_kimg:g} kimg, FID on {base.fid_samples} "
              f"samples ({base.fid_backbone} features), 1 torch thread per trial, 2 trials at a time. gentune: "
              f"`python tuner/search.py --seed S` (ASHA, grace {search.grace_kimg:g} kimg, reduction factor "
              f"{search.reduction_factor}). Plain Optuna: the same TPE settings and warm start, "
              f"HyperbandPruner(min_resource={search.grace_kimg:g} kimg, max_resource={base.max_kimg:g} kimg, "
              f"reduction_factor={search.reduction_factor}), {WORKERS} processes on one JournalStorage file "
              "(the script's docstring has every detail). The arms ran one after the other, never at once."
              + (f" SMOKE flags: `{' '.join(SMOKE_FLAGS)}`." if args.smoke else ""))
    shown = (lambda p: str(p)) if args.smoke else (lambda p: os.path.relpath(p, common.ROOT))
    notes = [f"Plot: `{shown(png)}` (best FID so far vs cumulative kimg and vs wall-clock); every evaluation of both "
             f"arms in `{shown(csv)}` (columns arm, seed, trial_id, kimg, fid, cum_kimg, best_fid, wall_s).",
             "Compute = cumulative kimg over all evaluations in wall-clock order (each evaluation adds what its trial "
             "trained since its previous one; pruned and failed trials count what they used). Equal compute = the "
             "smaller of the two arms' totals; equal wall-clock = the shorter arm's whole run.",
             f"Experiments: under --storage, in the folder {storage.name}: gentune-seedS (Ray) and optuna-seedS "
             "(journal, trial folders, events-*.jsonl); times.json: each arm's start and wall-clock."]
    if args.analyze:
        notes.append(f"Analysed afterwards with --analyze (seeds {', '.join(map(str, seeds))}: those whose both arms "
                     "finished)" + ("; wall-clocks from the files' creation and modification times, not timed by "
                                    "the run (a few seconds off)." if from_files else "."))
    common.publish(common.section("vs_plain_optuna: gentune's default study vs plain Optuna at the same budget",
                                  args.smoke, [budget, per_seed, targets, *notes], load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
