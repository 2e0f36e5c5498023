"""Search efficiency (the headline): the lab's grid vs an ASHA + TPE study, on equal per-trial budgets.

    python benchmarks/search_efficiency.py            # real run: ~15-40 min on 2 CPU cores
    python benchmarks/search_efficiency.py --smoke    # checks flags and the analysis on synthetic histories

Runs, one after the other, through the project's own CLI (`python -m tuner.search`, each in its own
process and local Ray):

  grid:  --grid lab1-gan (hinge/bce x z 32/64/128, 6 trials, full budget, no early stopping)
  study: TPE (Optuna) + ASHA over --losses, widths, lr, beta1, z_dim, batch size, n_critic, ...

both with the same TrainConfig budget (max_kimg, eval_every_kimg, fid_samples, fid_backbone). Then,
from each experiment's exports (history.parquet) and the per-evaluation timestamps Ray keeps in
each trial's result.json, it orders all evaluations by wall-clock and counts compute as cumulative
kimg (each evaluation adds the kimg its trial trained since its previous one; pruned and diverged
trials count what they used). It reports:

  - the cumulative kimg the study needed to reach the grid's best FID, as a share of the grid's total;
  - the best FID of each at equal total kimg (and at 1/4 of the grid's compute);
  - a plot of best-FID-so-far vs cumulative kimg (benchmarks/results/search_efficiency_<stamp>.png).

Targets: the study matches the grid's best with <= 1/4 of its compute; at equal compute it beats it
by >= 20% FID.

`--analyze GRID_EXP STUDY_EXP` skips the runs and analyses two existing experiment folders.
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

REFERENCE_EPOCH_KIMG = 60.0  # one Fashion-MNIST epoch = 60k images
REFERENCE_EPOCHS = 10  # the reference lab trains each grid cell for 10 epochs


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--max-kimg", type=float, default=16.0, help="per-trial budget, both runs [default: 16]")
    p.add_argument("--eval-every-kimg", type=float, default=2.0, help="evaluation interval, both runs; also ASHA's grace period [default: 2]")
    p.add_argument("--fid-samples", type=int, default=1000, help="samples per FID [default: 1000]")
    p.add_argument("--fid-backbone", default="domain", help="domain | inception [default: domain]")
    p.add_argument("--num-samples", type=int, default=16, help="trials of the study [default: 16]")
    p.add_argument("--losses", nargs="+", default=["hinge", "bce", "wgan-gp"], help="losses the study searches [default: hinge bce wgan-gp]")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction factor [default: 2]")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (2 trials at once on 2 cores) [default: 1]")
    p.add_argument("--seed", type=int, default=0, help="base seed of both runs (TPE's seed too) [default: 0]")
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "gentune-bench"),
                   help="where the two Ray experiments are written [default: $TMPDIR/gentune-bench]")
    p.add_argument("--analyze", nargs=2, metavar=("GRID_EXP", "STUDY_EXP"), default=None,
                   help="analyse two finished experiment folders instead of running them")
    p.add_argument("--grid-exp", default=None,
                   help="reuse this finished grid experiment (same budget flags) and run only the study")
    p.add_argument("--grid-wall", type=float, default=None, metavar="SECONDS",
                   help="with --grid-exp: the wall-clock seconds that grid run took (printed by its run), so the "
                        "wall-clock row compares the two; give it only when both ran on the same quiet machine")
    p.add_argument("--study-flags", default="",
                   help="extra tuner.search flags for the study, as one string: --study-flags=\"--warm-start --ranges n_critic=1:2\"")
    p.add_argument("--wall", nargs=2, type=float, metavar=("GRID_S", "STUDY_S"), default=None,
                   help="with --analyze: the wall-clock seconds the two runs took (printed by the run)")
    return p


# ------------------------------------------------------------------------------------------
# running the two experiments


def budget_flags(args) -> list[str]:
    return ["--dataset", "fashion-mnist", "--max-kimg", str(args.max_kimg), "--eval-every-kimg", str(args.eval_every_kimg),
            "--fid-samples", str(args.fid_samples), "--fid-backbone", args.fid_backbone, "--seed", str(args.seed),
            "--cpus-per-trial", str(args.cpus_per_trial), "--max-failures", "1"]


def grid_argv(args, storage: str, name: str) -> list[str]:
    return ["--grid", "lab1-gan", *budget_flags(args), "--storage-path", storage, "--name", name]


def study_argv(args, storage: str, name: str) -> list[str]:
    return ["--num-samples", str(args.num_samples), "--losses", *args.losses, "--grace-kimg", str(args.eval_every_kimg),
            "--reduction-factor", str(args.reduction_factor), *budget_flags(args), "--storage-path", storage, "--name", name,
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


def plot(grid: pd.DataFrame, study: pd.DataFrame, s: dict, path: Path, labels: tuple[str, str], backbone: str, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for curve, label in ((grid, labels[0]), (study, labels[1])):
        c = curve.dropna(subset=["best_fid"])
        frames.append(pd.DataFrame({"cumulative kimg": c["cum_kimg"], "best FID so far": c["best_fid"], "run": label}))
    df = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=df, x="cumulative kimg", y="best FID so far", hue="run", drawstyle="steps-post", marker="o", ax=ax)
    ax.axhline(s["grid_best"], color="grey", ls=":", lw=1, label=f"grid best {s['grid_best']:.2f}")
    ax.axvline(s["quarter"], color="grey", ls="--", lw=1, label="1/4 of grid compute")
    ax.set_yscale("log")
    ax.set_title(f"Best FID so far ({backbone} features, {n} samples) vs compute")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def adopt_saved_settings(args, study_exp: Path) -> None:
    """Describe what was run, not the flags' defaults: read the study's saved search and base config."""
    path = study_exp / "search_config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    base, search = saved.get("base", {}), saved.get("search", {})
    for key in ("max_kimg", "eval_every_kimg", "fid_samples", "fid_backbone", "seed"):
        if key in base:
            setattr(args, key, base[key])
    for key in ("num_samples", "reduction_factor", "cpus_per_trial"):
        if key in search:
            setattr(args, key, search[key])
    if search.get("losses"):
        args.losses = list(search["losses"])
    if "grace_kimg" in search:
        args.grace_kimg = search["grace_kimg"]


def study_best_config(exp: Path) -> str:
    best = json.loads((exp / "best.json").read_text())
    if not best:
        return "—"
    cfg = best["config"]
    keys = ("loss", "z_dim", "lr", "beta1", "n_critic", "gp_lambda", "batch_size", "g_width", "d_width")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grid_wall is not None and not args.grid_exp:
        parser.error("--grid-wall needs --grid-exp (the grid run it describes)")
    from tuner.search import parse

    st = common.stamp()
    storage = str(Path(args.storage) / st)
    names = (f"grid-{st}", f"study-{st}")
    # The flags must be valid for the CLI in every mode (the smoke test checks them without running).
    parse(grid_argv(args, storage, names[0]))
    parse(study_argv(args, storage, names[1]))

    notes: list[str] = []
    wall = {"grid": math.nan, "study": math.nan}
    load = common.LoadMonitor()
    with load:
        if args.smoke:
            grid_h = synthetic_history("grid", args.max_kimg, args.eval_every_kimg, 1)
            study_h = synthetic_history("study", args.max_kimg, args.eval_every_kimg, 2)
            best_cfg = "— (synthetic)"
            out_dir = Path(tempfile.mkdtemp(prefix="gentune-bench-smoke-"))
            notes.append("SMOKE: synthetic histories; no trial was trained. The CLI flags of both runs were validated.")
            trial_s = {"grid": math.nan, "study": math.nan}
            counts = {"grid": "6 synthetic", "study": "8 synthetic"}
        else:
            if args.analyze:
                grid_exp, study_exp = Path(args.analyze[0]), Path(args.analyze[1])
                if args.wall:
                    wall = {"grid": args.wall[0], "study": args.wall[1]}
            else:
                Path(storage).mkdir(parents=True, exist_ok=True)
                out_logs = common.RESULTS_DIR / f"search_efficiency_{st}"
                out_logs.mkdir(parents=True, exist_ok=True)
                if args.grid_exp:
                    grid_exp = Path(args.grid_exp)
                    notes.append(f"The grid was not re-run: its experiment {grid_exp} was reused (--grid-exp)"
                                 + (f"; its wall-clock ({args.grid_wall:.0f} s) is the one printed by that run (--grid-wall)."
                                    if args.grid_wall is not None else "."))
                    wall["grid"] = args.grid_wall if args.grid_wall is not None else math.nan
                else:
                    wall["grid"] = run_search(grid_argv(args, storage, names[0]), out_logs / "grid.log")
                    grid_exp = Path(storage) / names[0]
                wall["study"] = run_search(study_argv(args, storage, names[1]), out_logs / "study.log")
                study_exp = Path(storage) / names[1]
            adopt_saved_settings(args, study_exp)
            grid_h, study_h = load_history(grid_exp), load_history(study_exp)
            best_cfg = study_best_config(study_exp)
            out_dir = common.RESULTS_DIR
            trials = {k: pd.read_parquet(e / "trials.parquet") for k, e in (("grid", grid_exp), ("study", study_exp))}
            trial_s = {k: float(t["wall_time_s"].sum()) for k, t in trials.items()}
            counts = {k: ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items()) for k, t in trials.items()}
            notes.append(f"experiments: {grid_exp}, {study_exp}")

    grid_c, study_c = compute_curve(grid_h), compute_curve(study_h)
    s = summarize(grid_c, study_c)
    png = out_dir / f"search_efficiency_{st}.png"
    plot(grid_c, study_c, s, png, ("grid lab1-gan", f"ASHA+TPE ({args.num_samples} trials{', ' + args.study_flags if args.study_flags else ''})"), args.fid_backbone, args.fid_samples)
    for curve, kind in ((grid_c, "grid"), (study_c, "study")):
        curve.to_csv(out_dir / f"search_efficiency_{st}_{kind}_curve.csv", index=False)

    match_ok = s["match_share"] is not None and s["match_share"] <= 0.25
    gain_ok = s["gain_at_equal"] == s["gain_at_equal"] and s["gain_at_equal"] >= 0.20
    budget = (f"Per-trial budget {args.max_kimg:g} kimg (evaluation every {args.eval_every_kimg:g} kimg, FID on "
              f"{args.fid_samples} samples vs {args.fid_samples} test images, {args.fid_backbone} features), "
              f"vs the reference lab's {REFERENCE_EPOCHS} epochs = {REFERENCE_EPOCHS * REFERENCE_EPOCH_KIMG:.0f} kimg per "
              f"trial: scaled down {REFERENCE_EPOCHS * REFERENCE_EPOCH_KIMG / args.max_kimg:.0f}x so both runs fit in "
              f"< 1 h on 2 CPU cores. Study: {args.num_samples} trials, TPE over losses {' '.join(args.losses)} and the "
              f"default space (z_dim, lr, beta1, batch size, n_critic, gp_lambda, g/d widths 16-96), ASHA grace "
              f"{getattr(args, 'grace_kimg', args.eval_every_kimg):g} kimg, reduction factor {args.reduction_factor}. Grid: lab1-gan (hinge/bce x "
              f"z_dim 32/64/128, widths 64, published optimiser settings), FIFO, full budget. "
              f"{args.cpus_per_trial:g} CPU per trial."
              + (f" Extra study flags: `{args.study_flags}`." if args.study_flags else ""))
    headline = common.table(
        ["figure", "grid lab1-gan", "ASHA+TPE study", "ratio / gain", "target", "verdict"],
        [
            ["trials", counts["grid"], counts["study"], "", "", ""],
            ["total compute (kimg)", s["grid_total"], s["study_total"], f"{s['study_total'] / s['grid_total']:.2f}x", "", ""],
            ["wall-clock of the run (s)", wall["grid"], wall["study"],
             f"{wall['study'] / wall['grid']:.2f}x" if wall["grid"] == wall["grid"] else "—", "", ""],
            ["summed trial time (s)", trial_s["grid"], trial_s["study"],
             f"{trial_s['study'] / trial_s['grid']:.2f}x" if trial_s["grid"] == trial_s["grid"] else "—", "", ""],
            ["best FID (whole run)", s["grid_best"], s["study_best"], "", "", ""],
            ["kimg to reach the grid's best", s["grid_total"], s["to_match"],
             "never" if s["match_share"] is None else f"{s['match_share']:.2f} of grid", "≤ 0.25", common.verdict(match_ok)],
            [f"best FID at equal compute ({s['equal']:.1f} kimg)", s["grid_at_equal"], s["study_at_equal"],
             f"{100 * s['gain_at_equal']:+.1f}% (lower FID = +)", "≥ +20%", common.verdict(gain_ok)],
            [f"best FID at 1/4 of grid compute ({s['quarter']:.1f} kimg)", s["grid_at_quarter"], s["study_at_quarter"], "", "", ""],
        ],
    )
    blocks = [budget, headline, f"Study's best config: {best_cfg}",
              f"Plot: `{os.path.relpath(png, common.ROOT) if not args.smoke else png}` (best FID so far vs cumulative kimg; "
              "curves and per-evaluation rows in the `_curve.csv` files beside it).",
              "Compute = cumulative kimg over all evaluations in wall-clock order (each evaluation adds what its trial "
              "trained since its previous one). The grid's best is its best evaluation at any kimg, not only final ones.",
              *notes]
    common.publish(common.section("search_efficiency: grid lab1-gan vs ASHA+TPE study", args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
