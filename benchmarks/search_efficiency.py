"""Search efficiency (the headline): the lab's grid vs the default study vs random search, over seeds.

    python benchmarks/search_efficiency.py            # real run: grid once, then 3 seeds x 2 studies
    python benchmarks/search_efficiency.py --smoke    # checks flags and the analysis on synthetic histories

Runs, one after the other, through the project's own CLI (`python -m tuner.search`, each in its own
process and local Ray), at the default per-trial budget of `python tuner/search.py`:

  grid:   --grid lab1-gan (hinge/bce x z 32/64/128, 6 trials, full budget, no early stopping), once
  study:  `python tuner/search.py --seed S` (the defaults: TPE + ASHA, warm start), for each seed S
  random: the same with --sampler random (Optuna's RandomSampler under the same ASHA), for each seed S

From each experiment's exports (history.parquet) and the per-evaluation timestamps Ray keeps in each
trial's result.json, it orders all evaluations by wall-clock and counts compute as cumulative kimg
(each evaluation adds the kimg its trial trained since its previous one; pruned and diverged trials
count what they used). Per seed it reports the best FID at the grid's compute, the cumulative kimg
needed to reach the grid's best, and wall-clock; then the median over seeds, and a plot of
best-FID-so-far against cumulative kimg with the median and the range over seeds (as Lucic et al.
2018, Fig. 5).

Targets, at equal compute: the study's best FID <= 0.4x the grid's in every seed; kimg to reach the
grid's best <= 0.2x the grid's (median); TPE better than random search (median).

`--baseline tpe-independent` replaces random search by TPE that models each parameter alone (Optuna's
default), to measure what the default's multivariate, grouped TPE adds. `--grid-exp DIR` reuses a
finished grid experiment; `--analyze GRID STUDY... --random BASELINE...` analyses finished
experiments without running anything.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path too)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402



BASELINES = {"random": "random search + ASHA", "tpe-independent": "independent TPE + ASHA"}  # --sampler -> label


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study seeds (TPE's and the trials') [default: 0 1 2]")
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "gentune-bench"),
                   help="where the Ray experiments are written [default: $TMPDIR/gentune-bench]")
    p.add_argument("--grid-exp", default=None, help="reuse this finished grid experiment (same budget) instead of running it")
    p.add_argument("--grid-wall", type=float, default=None, metavar="SECONDS",
                   help="with --grid-exp: the wall-clock seconds that grid run took (printed by its run)")
    p.add_argument("--study-flags", default="",
                   help="extra tuner.search flags for both studies, as one string (the headline run uses none)")
    p.add_argument("--analyze", nargs="+", metavar="EXP", default=None,
                   help="analyse finished experiments instead: GRID_EXP STUDY_EXP... (one per seed); with --random")
    p.add_argument("--random", nargs="+", metavar="EXP", default=None,
                   help="with --analyze: the baseline's experiments (random search, or --baseline's sampler)")
    p.add_argument("--baseline", default="random", choices=list(BASELINES),
                   help="the sampler the default study is compared with, under the same ASHA [default: random]")
    p.add_argument("--study-label", default=None,
                   help="the first arm's name in the table and plot [default: 'default study (TPE + ASHA)', "
                        "naming --study-flags when given]")
    p.add_argument("--baseline-label", default=None,
                   help="the second arm's name [default: the --baseline sampler's, e.g. 'random search + ASHA']")
    return p


# ------------------------------------------------------------------------------------------
# running the two experiments


COMMON = ["--dataset", "fashion-mnist", "--max-failures", "1"]


def grid_argv(storage: str, name: str) -> list[str]:
    return ["--grid", "lab1-gan", *COMMON, "--storage-path", storage, "--name", name]


def study_argv(args, storage: str, name: str, seed: int, sampler: str) -> list[str]:
    return [*COMMON, "--seed", str(seed), "--sampler", sampler, "--storage-path", storage, "--name", name,
            *shlex.split(args.study_flags)]


def run_search(argv: list[str], log: Path) -> float:
    """`python -m tuner.search ARGV` in its own process; returns its wall-clock seconds."""
    cmd = [sys.executable, "-m", "tuner.search", *argv]
    print("running:", " ".join(cmd), f"(log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, cwd=common.ROOT, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"tuner.search failed (exit {rc}); last lines of {log}:\n{tail}")
    print(f"finished in {seconds:.1f} s", flush=True)
    return seconds


# ------------------------------------------------------------------------------------------
# analysis: evaluations in wall-clock order -> cumulative kimg and best FID so far


def evaluation_times(exp: Path, trials: pd.DataFrame) -> pd.DataFrame:
    """(trial_id, kimg, timestamp) of every evaluation, from each trial's result.json."""
    rows = []
    for trial_id, trial_dir in zip(trials["trial_id"], trials["trial_dir"]):
        path = exp / str(trial_dir) / "result.json"
        if not trial_dir or not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "kimg" in rec:
                rows.append({"trial_id": trial_id, "kimg": float(rec["kimg"]), "timestamp": float(rec.get("timestamp", math.nan)),
                             "time_total_s": float(rec.get("time_total_s", math.nan))})
    return pd.DataFrame(rows, columns=["trial_id", "kimg", "timestamp", "time_total_s"])


def load_history(exp: Path) -> pd.DataFrame:
    """history.parquet joined with the evaluation timestamps; one row per evaluation."""
    trials = pd.read_parquet(exp / "trials.parquet")
    history = pd.read_parquet(exp / "history.parquet")
    times = evaluation_times(exp, trials).drop_duplicates(subset=["trial_id", "kimg"], keep="last")
    merged = history.merge(times[["trial_id", "kimg", "timestamp"]], on=["trial_id", "kimg"], how="left")
    if merged["timestamp"].isna().any():  # no result.json: fall back to trial order + time within the trial
        print(f"warning: {exp}: some evaluations have no timestamp; ordering them by trial wall time", file=sys.stderr)
        merged["timestamp"] = merged["timestamp"].fillna(merged["wall_time_s"])
    return merged


def compute_curve(history: pd.DataFrame) -> pd.DataFrame:
    """Evaluations in wall-clock order with cumulative kimg and best finite FID so far."""
    h = history.sort_values(["timestamp", "wall_time_s", "trial_id"], kind="stable").reset_index(drop=True)
    used = h.groupby("trial_id")["kimg"].diff().fillna(h["kimg"]).clip(lower=0)
    fid = h["fid"].where(np.isfinite(h["fid"]), np.inf)
    return pd.DataFrame({
        "trial_id": h["trial_id"],
        "kimg": h["kimg"],
        "fid": h["fid"],
        "cum_kimg": used.cumsum(),
        "best_fid": fid.cummin().replace(np.inf, np.nan),
        "timestamp": h["timestamp"],
    })


def best_at(curve: pd.DataFrame, kimg: float) -> float:
    """Best FID among evaluations made within `kimg` cumulative kimg (nan if none)."""
    within = curve[curve["cum_kimg"] <= kimg + 1e-9]["best_fid"].dropna()
    return float(within.iloc[-1]) if len(within) else math.nan


def kimg_to_reach(curve: pd.DataFrame, fid: float) -> float | None:
    hit = curve[curve["best_fid"] <= fid + 1e-12]
    return float(hit["cum_kimg"].iloc[0]) if len(hit) else None


def summarize(grid: pd.DataFrame, study: pd.DataFrame) -> dict:
    grid_total, study_total = float(grid["cum_kimg"].iloc[-1]), float(study["cum_kimg"].iloc[-1])
    grid_best = float(grid["best_fid"].dropna().iloc[-1])
    to_match = kimg_to_reach(study, grid_best)
    equal = min(grid_total, study_total)
    g_eq, s_eq = best_at(grid, equal), best_at(study, equal)
    quarter = grid_total / 4
    return {
        "grid_total": grid_total, "study_total": study_total, "grid_best": grid_best,
        "study_best": float(study["best_fid"].dropna().iloc[-1]) if study["best_fid"].notna().any() else math.nan,
        "to_match": to_match, "match_share": None if to_match is None else to_match / grid_total,
        "equal": equal, "grid_at_equal": g_eq, "study_at_equal": s_eq,
        "gain_at_equal": (g_eq - s_eq) / g_eq if g_eq == g_eq and s_eq == s_eq else math.nan,
        "quarter": quarter, "grid_at_quarter": best_at(grid, quarter), "study_at_quarter": best_at(study, quarter),
    }


def study_best_config(exp: Path) -> str:
    best = json.loads((exp / "best.json").read_text())
    if not best:
        return "—"
    cfg = best["config"]
    keys = ("loss", "z_dim", "lr", "lr_d_ratio", "beta1", "beta2", "n_critic", "clip_value", "gp_lambda", "batch_size",
            "g_width", "d_width", "d_norm")
    return ", ".join(f"{k}={cfg[k]:.3g}" if isinstance(cfg[k], float) else f"{k}={cfg[k]}" for k in keys if cfg.get(k) is not None)


# ------------------------------------------------------------------------------------------
# smoke: synthetic exports shaped like the real ones (no training, no Ray)


def synthetic_history(kind: str, max_kimg: float, every: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    n_trials = 6 if kind == "grid" else 8
    for i in range(n_trials):
        stop = max_kimg if kind == "grid" or i % 3 == 0 else every * (1 + i % 2)
        k, quality = every, rng.uniform(0.5, 2.0)
        while k <= stop + 1e-9:
            t += rng.uniform(1, 2)
            fid = float("inf") if kind == "study" and i == 5 else 50 * quality / (1 + k)
            rows.append({"trial_id": f"{kind}{i}", "kimg": k, "fid": fid, "wall_time_s": k, "timestamp": t})
            k += every
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------


def arm_labels(args) -> dict[str, str]:
    """What the table, the plot and the targets call each arm: an --analyze of other experiments
    (a candidate space, another sampler) names them with --study-label / --baseline-label."""
    study = "default study (TPE + ASHA)" if not args.study_flags else f"study (TPE + ASHA) with `{args.study_flags}`"
    return {"study": args.study_label or study, "baseline": args.baseline_label or BASELINES[args.baseline]}


def seed_rows(grid_c: pd.DataFrame, curves: dict[str, list[pd.DataFrame]], seeds: list[int], wall: dict,
              labels: dict[str, str]) -> tuple[list, dict]:
    """One table row per (arm, seed) and the per-arm lists of the figures the targets read."""
    rows, figures = [], {"study": [], "baseline": []}
    grid_total = float(grid_c["cum_kimg"].iloc[-1])
    for arm in ("study", "baseline"):
        for seed, curve in zip(seeds, curves[arm]):
            s = summarize(grid_c, curve)
            at_grid = best_at(curve, grid_total)
            figures[arm].append({"seed": seed, "at_grid": at_grid, "ratio": at_grid / s["grid_best"],
                                 "to_match_share": s["match_share"], "best": s["study_best"], "total": s["study_total"]})
            rows.append([labels[arm], seed, s["study_total"], at_grid, f"{at_grid / s['grid_best']:.2f}x",
                         "never" if s["match_share"] is None else f"{s['to_match']:.0f} ({s['match_share']:.2f})",
                         wall.get((arm, seed), "not recorded")])
    return rows, figures


def plot_seeds(grid_c: pd.DataFrame, curves: dict[str, list[pd.DataFrame]], path: Path, backbone: str, n: int,
               labels: dict[str, str]) -> None:
    """Best FID so far vs cumulative kimg: the grid, and the median and range over seeds of each study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    g = grid_c.dropna(subset=["best_fid"])
    ax.step(g["cum_kimg"], g["best_fid"], where="post", color="black", label="grid lab1-gan")
    top = max(float(grid_c["cum_kimg"].iloc[-1]), *(float(c["cum_kimg"].iloc[-1]) for cs in curves.values() for c in cs))
    xs = np.linspace(0, top, 200)
    colors = {"study": "tab:blue", "baseline": "tab:orange"}
    labels = {arm: text.replace("`", "") for arm, text in labels.items()}  # markdown quotes, not for a plot
    for arm, cs in curves.items():
        if not cs:
            continue
        ys = np.array([[best_at(c, x) for x in xs] for c in cs], dtype=float)
        with np.errstate(all="ignore"):
            med, lo, hi = np.nanmedian(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        ax.plot(xs, med, color=colors[arm], label=f"{labels[arm]}: median of {len(cs)} seeds")
        ax.fill_between(xs, lo, hi, color=colors[arm], alpha=0.2, label=f"{labels[arm]}: range")
    ax.axvline(float(grid_c["cum_kimg"].iloc[-1]), color="grey", ls="--", lw=1, label="grid's total compute")
    ax.set_yscale("log")
    ax.set(xlabel="cumulative kimg (all trials)", ylabel=f"best FID so far ({backbone}, {n} samples)",
           title="Best FID so far vs compute")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grid_wall is not None and not args.grid_exp:
        parser.error("--grid-wall needs --grid-exp (the grid run it describes)")
    if args.analyze and (len(args.analyze) < 2 or not args.random or len(args.random) != len(args.analyze) - 1):
        parser.error("--analyze GRID STUDY... needs --random with one experiment per study")
    from tuner.study.driver import parse

    st = common.stamp()
    storage = str(Path(args.storage) / st)
    seeds = list(args.seeds)
    # The flags must be valid for the CLI in every mode (the smoke test checks them without running).
    parse(grid_argv(storage, "grid"))
    for seed in seeds:
        for sampler in ("tpe", args.baseline):
            parse(study_argv(args, storage, f"x{seed}{sampler}", seed, sampler))

    notes: list[str] = []
    wall: dict = {}
    load = common.LoadMonitor()
    with load:
        if args.smoke:
            grid_h = synthetic_history("grid", 8.0, 2.0, 1)
            hists = {arm: [synthetic_history("study", 8.0, 2.0, 10 * i + k) for k in seeds] for i, arm in enumerate(("study", "baseline"))}
            out_dir = Path(tempfile.mkdtemp(prefix="gentune-bench-smoke-"))
            notes.append("SMOKE: synthetic histories; no trial was trained. The CLI flags of every run were validated.")
            budget_base = {"max_kimg": 8.0, "fid_samples": 1000, "fid_backbone": "domain"}
            best_cfgs = {}
        else:
            if args.analyze:
                grid_exp = Path(args.analyze[0])
                exps = {"study": [Path(e) for e in args.analyze[1:]], "baseline": [Path(e) for e in args.random]}
            else:
                Path(storage).mkdir(parents=True, exist_ok=True)
                out_logs = common.RESULTS_DIR / f"search_efficiency_{st}"
                out_logs.mkdir(parents=True, exist_ok=True)
                if args.grid_exp:
                    grid_exp = Path(args.grid_exp)
                    notes.append(f"The grid was not re-run: its experiment {grid_exp} was reused (--grid-exp).")
                    if args.grid_wall is not None:
                        wall["grid", 0] = args.grid_wall
                else:
                    grid_exp = Path(storage) / "grid"
                    wall["grid", 0] = run_search(grid_argv(storage, "grid"), out_logs / "grid.log")
                exps = {"study": [], "baseline": []}
                for seed in seeds:
                    for arm, sampler in (("study", "tpe"), ("baseline", args.baseline)):
                        name = f"{'study' if arm == 'study' else args.baseline}-seed{seed}"
                        wall[arm, seed] = run_search(study_argv(args, storage, name, seed, sampler), out_logs / f"{name}.log")
                        exps[arm].append(Path(storage) / name)
            grid_h = load_history(grid_exp)
            hists = {arm: [load_history(e) for e in es] for arm, es in exps.items()}
            budget_base = json.loads((exps["study"][0] / "search_config.json").read_text())["base"]
            best_cfgs = {(arm, seed): study_best_config(e) for arm, es in exps.items() for seed, e in zip(seeds, es)}
            out_dir = common.RESULTS_DIR
            notes.append("experiments: grid " + str(grid_exp) + "; " + "; ".join(
                f"{arm} " + ", ".join(str(e) for e in es) for arm, es in exps.items()))

    grid_c = compute_curve(grid_h)
    curves = {arm: [compute_curve(h) for h in hs] for arm, hs in hists.items()}
    grid_total, grid_best = float(grid_c["cum_kimg"].iloc[-1]), float(grid_c["best_fid"].dropna().iloc[-1])
    labels = arm_labels(args)
    rows, fig = seed_rows(grid_c, curves, seeds, wall, labels)
    png = out_dir / f"search_efficiency_{st}.png"
    plot_seeds(grid_c, curves, png, budget_base["fid_backbone"], budget_base["fid_samples"], labels)
    grid_c.to_csv(out_dir / f"search_efficiency_{st}_grid_curve.csv", index=False)
    for arm, cs in curves.items():
        for seed, c in zip(seeds, cs):
            c.to_csv(out_dir / f"search_efficiency_{st}_{arm}{seed}_curve.csv", index=False)

    ratios = [f["ratio"] for f in fig["study"]]
    shares = [f["to_match_share"] if f["to_match_share"] is not None else math.inf for f in fig["study"]]
    tpe_med = common.median([f["at_grid"] for f in fig["study"]])
    rnd_med = common.median([f["at_grid"] for f in fig["baseline"]])
    ratio_ok = all(r <= 0.4 for r in ratios)
    share_med = common.median(shares)
    share_ok = share_med <= 0.2
    tpe_ok = tpe_med < rnd_med
    per_seed = common.table(["run", "seed", "total kimg", "best FID at the grid's compute", "vs grid best",
                             "kimg to reach the grid's best (share)", "wall-clock (s)"],
                            [["grid lab1-gan", "—", grid_total, grid_best, "1.00x", f"{grid_total:.0f} (1.00)",
                              wall.get(("grid", 0), "not recorded")], *rows])
    targets = common.table(
        ["target (at the grid's compute)", "measured", "goal", "verdict"],
        [["study best / grid best, every seed", ", ".join(f"{r:.2f}x" for r in ratios), "≤ 0.40x", common.verdict(ratio_ok)],
         ["kimg to reach the grid's best / grid's kimg, median", "never" if share_med == math.inf else f"{share_med:.2f}",
          "≤ 0.20", common.verdict(share_ok)],
         [f"median best FID: {labels['study']} vs {labels['baseline']}", f"{tpe_med:.1f} vs {rnd_med:.1f}",
          "TPE lower", common.verdict(tpe_ok)]])
    budget = (f"Per-trial budget: the defaults of `python tuner/search.py` ({budget_base['max_kimg']:g} kimg, FID on "
              f"{budget_base['fid_samples']} samples vs as many test images, {budget_base['fid_backbone']} features). "
              f"Grid: lab1-gan (hinge/bce x z_dim 32/64/128, published optimiser settings), FIFO, full budget, scored at "
              f"its end. Studies: the default study with --seed S, and the same with --sampler {args.baseline}"
              + (f"; extra flags `{args.study_flags}`" if args.study_flags else "") + ".")
    blocks = [budget, per_seed, targets]
    if best_cfgs:
        blocks.append("Best config of each study: " + "; ".join(f"{arm} seed {seed}: {cfg}" for (arm, seed), cfg in best_cfgs.items()))
    blocks += [f"Plot: `{os.path.relpath(png, common.ROOT) if not args.smoke else png}` (best FID so far vs cumulative kimg; "
               "curves in the `_curve.csv` files beside it).",
               "Compute = cumulative kimg over all evaluations in wall-clock order (each evaluation adds what its trial "
               "trained since its previous one). Wall-clock includes Ray's start and the exports.", *notes]
    common.publish(common.section(f"search_efficiency: grid lab1-gan vs {labels['study']} vs {labels['baseline']}, over seeds",
                                  args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
