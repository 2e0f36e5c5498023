"""Calibrate the default GAN search space from data: a wide random search at the default budget.

    python benchmarks/calibrate_space.py --seeds 101 --num-samples 96     # run, then analyse (hours on 2 cores)
    python benchmarks/calibrate_space.py --analyze EXP [EXP ...]           # analyse finished experiments

Each seed runs `python -m tuner.search --space wide --sampler random --no-warm-start --num-samples N
--seed S` on Fashion-MNIST: random configs from the wide space (published values widened about a
decade each way, tuner/config/space.py:WIDE_GAN_RANGES) under the default ASHA (64 kimg, rungs at 8 and
24 kimg, reduction factor 3). Random sampling keeps the evidence unbiased by a model of the results.

The analysis writes docs/search-space.md and docs/search-space/*.png:
- per loss: trials, diverged, FID at the first rung (8 kimg, every trial has it), how many reached
  24 and 64 kimg, the best FID at 64 kimg;
- per searched parameter: FID at the first rung against the parameter, coloured by loss, with the
  trials that completed marked; and the range the top quarter of trials (by first-rung FID) span;
- per loss: the median and span of each parameter over that loss's best quarter;
- the ten best trials at 64 kimg, with their FIDs at each rung and their configs.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DOC = common.ROOT / "docs" / "search-space.md"
PLOTS = common.ROOT / "docs" / "search-space"
NUMERIC = ("lr", "lr_d_ratio", "beta1", "beta2", "z_dim", "n_critic", "g_width", "d_width", "clip_value", "gp_lambda")
LOG = {"lr", "lr_d_ratio", "z_dim", "clip_value", "gp_lambda"}
CATEGORICAL = ("loss", "batch_size", "d_norm")


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[101])
    p.add_argument("--num-samples", type=int, default=96)
    p.add_argument("--storage", default="/tmp/gentune-calibration")
    p.add_argument("--analyze", nargs="+", metavar="EXP", default=None)
    p.add_argument("--tag", default="wide", help="names the plot files: docs/search-space/TAG_*.png [default: wide]")
    return p


def run(seed: int, args) -> Path:
    name = f"wide-s{seed}"
    cmd = [sys.executable, "-m", "tuner.search", "--space", "wide", "--sampler", "random", "--no-warm-start",
           "--num-samples", str(args.num_samples), "--seed", str(seed), "--dataset", "fashion-mnist",
           "--storage-path", args.storage, "--name", name]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(Path(args.storage) / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"tuner.search failed (exit {rc}); see {args.storage}/{name}.log")
    print(f"finished in {time.perf_counter() - t0:.0f} s", flush=True)
    return Path(args.storage) / name


def load(exps: list[Path]) -> pd.DataFrame:
    """One row per trial: its config, status, and FID at the first rung, at 24 kimg and at the end."""
    rows = []
    for exp in exps:
        trials = pd.read_parquet(exp / "trials.parquet")
        history = pd.read_parquet(exp / "history.parquet")
        for trial in trials.to_dict("records"):
            h = history[history["trial_id"] == trial["trial_id"]].sort_values("kimg")
            finite = h[np.isfinite(h["fid"])]
            row = {k: trial.get(k) for k in (*NUMERIC, *CATEGORICAL, "status", "trial_id")}
            row["experiment"] = exp.name
            row["fid_rung1"] = float(finite["fid"].iloc[0]) if len(finite) else math.inf
            row["fid_24"] = float(finite[finite["kimg"] >= 24]["fid"].iloc[0]) if (finite["kimg"] >= 24).any() else math.nan
            row["fid_64"] = float(finite[finite["kimg"] >= 64]["fid"].iloc[0]) if (finite["kimg"] >= 64).any() else math.nan
            row["classes_64"] = float(h[h["kimg"] >= 64]["classes_covered"].iloc[0]) if (h["kimg"] >= 64).any() else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def per_loss(df: pd.DataFrame) -> str:
    rows = []
    for loss, g in df.groupby("loss"):
        fin = g["fid_rung1"].replace(math.inf, np.nan)
        rows.append([loss, len(g), int((g["status"] == "diverged").sum()), fin.median(), fin.min(),
                     int(g["fid_24"].notna().sum()), int(g["fid_64"].notna().sum()), g["fid_64"].min()])
    return common.table(["loss", "trials", "diverged", "median FID at 8 kimg", "best FID at 8 kimg", "reached 24 kimg",
                         "reached 64 kimg", "best FID at 64 kimg"], rows)


def top_ranges(df: pd.DataFrame) -> str:
    ok = df[np.isfinite(df["fid_rung1"])]
    top = ok[ok["fid_rung1"] <= ok["fid_rung1"].quantile(0.25)]
    done = ok[ok["fid_64"].notna()]
    best = done[done["fid_64"] <= done["fid_64"].quantile(0.5)] if len(done) else done
    rows = []
    for p in NUMERIC:
        def span(frame):
            v = frame[p].dropna()
            return f"{common.fmt(v.min())} – {common.fmt(v.max())} (median {common.fmt(v.median())})" if len(v) else "—"
        rows.append([p, span(ok), span(top), span(best)])
    for p in CATEGORICAL:
        def counts(frame):
            return ", ".join(f"{k}: {n}" for k, n in frame[p].value_counts().items()) if len(frame) else "—"
        rows.append([p, counts(ok), counts(top), counts(best)])
    return common.table(["parameter", f"all finite trials ({len(ok)})", f"top quarter by FID at 8 kimg ({len(top)})",
                         f"better half of those that reached 64 kimg ({len(best)})"], rows)


def per_loss_ranges(df: pd.DataFrame, share: float = 0.25) -> str:
    """Where good configs live for each loss (one column each): the median and span of each parameter
    over that loss's best `share` of finite trials by FID at the first rung (at least one trial)."""
    columns, cells = [], {}
    params = (*NUMERIC, *CATEGORICAL[1:])
    for loss, g in df[np.isfinite(df["fid_rung1"])].groupby("loss"):
        top = g.nsmallest(max(1, math.ceil(share * len(g))), "fid_rung1")
        columns.append(loss)
        cells[loss] = {"top trials": f"{len(top)} of {len(g)}", "their FID at 8 kimg": f"≤ {common.fmt(top['fid_rung1'].max())}",
                       "best FID at 64 kimg": common.fmt(g["fid_64"].min())}
        for p in params:
            v = top[p].dropna()
            if p in CATEGORICAL:
                cells[loss][p] = ", ".join(f"{k}: {n}" for k, n in v.value_counts().items()) or "—"
            else:
                cells[loss][p] = f"{common.fmt(v.median())} ({common.fmt(v.min())} – {common.fmt(v.max())})" if len(v) else "—"
    rows = [[r, *(cells[c][r] for c in columns)] for r in ("top trials", "their FID at 8 kimg", "best FID at 64 kimg", *params)]
    return common.table(["median (span) of the best trials", *columns], rows)


def best_trials(df: pd.DataFrame, n: int = 10) -> str:
    """The `n` trials with the lowest FID at 64 kimg (the whole budget): their FIDs along the way and config."""
    done = df[df["fid_64"].notna()].nsmallest(n, "fid_64")
    cols = ["loss", "fid_rung1", "fid_24", "fid_64", "classes_64", *(p for p in (*NUMERIC, *CATEGORICAL[1:]) if done[p].notna().any())]
    rows = [[r[c] if not (isinstance(r[c], float) and math.isnan(r[c])) else "—" for c in cols] for r in done.to_dict("records")]
    names = {"fid_rung1": "FID at 8 kimg", "fid_24": "at 24", "fid_64": "at 64", "classes_64": "classes at 64"}
    return common.table([names.get(c, c) for c in cols], rows)


def plots(df: pd.DataFrame, tag: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    PLOTS.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid")
    ok = df[np.isfinite(df["fid_rung1"])].copy()
    params = [p for p in (*NUMERIC, "batch_size", "d_norm") if ok[p].notna().any()]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(params) / cols), cols, figsize=(4 * cols, 3.4 * math.ceil(len(params) / cols)),
                             constrained_layout=True)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    losses = sorted(ok["loss"].dropna().unique())
    palette = dict(zip(losses, sns.color_palette("tab10", len(losses))))
    for ax, p in zip(axes.flat, params):
        sub = ok[ok[p].notna()]
        reached = sub["fid_64"].notna().map({True: "reached 64 kimg", False: "stopped earlier"}).rename("trained")
        sns.scatterplot(data=sub, x=p, y="fid_rung1", hue="loss", hue_order=losses, palette=palette, style=reached,
                        style_order=["reached 64 kimg", "stopped earlier"], ax=ax, s=22, legend=ax is axes.flat[0])
        if p in LOG:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-") if v < 0.01 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(ylabel="FID at 8 kimg", xlabel=p)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    if axes.flat[0].get_legend():
        sns.move_legend(axes.flat[0], "upper left", bbox_to_anchor=(0, 1.6), ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"{tag}: FID (domain, 1000 samples) at the first ASHA rung against each parameter", y=1.04)
    out = PLOTS / f"{tag}_fid_vs_params.png"
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    done = ok[ok["fid_64"].notna()]
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(data=ok, x="fid_rung1", y="fid_24", hue="loss", ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="FID at 8 kimg", ylabel="FID at 24 kimg",
           title=f"Does the first rung predict the second? ({len(done)} reached 64 kimg)")
    out2 = PLOTS / f"{tag}_rung_agreement.png"
    fig.savefig(out2, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return [out, out2]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    load_mon = common.LoadMonitor()
    with load_mon:
        if args.analyze:
            exps = [Path(e) for e in args.analyze]
        else:
            Path(args.storage).mkdir(parents=True, exist_ok=True)
            exps = [run(seed, args) for seed in args.seeds]
    df = load(exps)
    pngs = plots(df, args.tag)
    df.to_csv(PLOTS / f"{args.tag}_trials.csv", index=False)
    text = "\n\n".join([
        "Experiments: " + ", ".join(str(e) for e in exps) + f" ({len(df)} trials).",
        "Per loss:", per_loss(df),
        "Where the good configs are (numeric: min – max (median); categorical: counts):", top_ranges(df),
        "Per loss, its best quarter by FID at 8 kimg:", per_loss_ranges(df),
        "The best trials at 64 kimg:", best_trials(df),
        *(f"![{p.stem}](search-space/{p.name})" for p in pngs),
    ])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
