"""Re-train the best configs of an experiment with other seeds: the ranking check and the final evaluation.

    python -m analysis.rerun EXPERIMENT_DIR --top 3 --seeds 3 [--first-seed 1] [--out DIR]
    python -m analysis.rerun EXPERIMENT_DIR --top 1 --final      # 1000 kimg, Inception, 10k samples, 3 seeds

The command line runs analysis.final.run_final: the top-K configs x seeds as one Ray Tune run
(grid, FIFO, checkpoints and retries as a study), continued by the same command after an interrupt;
--max-kimg, --fid-backbone and --fid-samples override the trials' own values, --final sets the
literature's protocol. rerun.parquet rows are keyed by (trial_id, seed, fid_backbone, fid_samples,
max_kimg). See analysis/final.py. The `rerun()` function below is the older in-process loop.

Takes the top-K trials by best FID from EXPERIMENT_DIR/trials.parquet (diverged trials and trials
without a finite FID are skipped), rebuilds each one's TrainConfig from its row, and trains it at
the full budget (its max_kimg) with seeds FIRST_SEED .. FIRST_SEED+S-1, one run after another on
this machine with `tuner.trainable.train`. Each run's files go to DIR/<trial_id>-seed<seed>/
(default DIR: EXPERIMENT_DIR/rerun); each run shows a progress bar over kimg on a terminal, or a plain
progress line every tenth of its budget elsewhere. Results are appended to EXPERIMENT_DIR/rerun.parquet after
every run (trial_id, seed, fid_final, fid_best, kimg, wall_time_s, diverged); runs already there
are skipped, so an interrupted re-run continues where it stopped. The report
(python -m analysis.report) then shows mean +- std FID per config and whether the ranking holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import fmt
from tuner.config import ArgumentParser

COLUMNS = ["trial_id", "seed", "fid_final", "fid_best", "kimg", "wall_time_s", "diverged"]


def top_trials(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k trials with the lowest finite best FID (diverged ones excluded), best first."""
    fid = pd.to_numeric(trials["fid_best"], errors="coerce")
    ok = trials[fid.notna() & fid.map(math.isfinite) & (trials["status"] != "diverged")]
    return ok.assign(fid_best=pd.to_numeric(ok["fid_best"])).sort_values("fid_best", kind="stable").head(k)


def config_of(row: dict[str, Any]):
    """The TrainConfig of a trials.parquet row (NaN -> None, numpy scalars -> Python)."""
    from tuner.config import TrainConfig

    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in row:
            continue
        v = row[f.name]
        if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:  # a list column (eval_at_kimg) comes back as an array
            v = tuple(v.tolist())
        elif hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = None
        values[f.name] = v
    # A column that is None for every trial may have come back as NaN in a float column: drop
    # optional fields that are None so their defaults apply.
    values = {k: v for k, v in values.items() if v is not None or TrainConfig.__dataclass_fields__[k].default is None}
    return TrainConfig.from_dict(values)


def run_one(cfg, out_dir: Path, label: str = "") -> dict[str, Any]:
    from tuner.progress import KimgProgress
    from tuner.trainable import train

    t0 = time.perf_counter()
    progress = KimgProgress(cfg.max_kimg, label=label)  # a bar on a terminal, plain lines in logs and CI
    try:
        history = train(cfg, out_dir, progress=progress)
    finally:
        progress.close()
    fids = [r["fid"] for r in history if isinstance(r.get("fid"), (int, float)) and math.isfinite(r["fid"])]
    last = history[-1] if history else {}
    return {
        "fid_final": fids[-1] if fids else math.nan,
        "fid_best": min(fids) if fids else math.nan,
        "kimg": float(last.get("kimg", 0.0)),
        "wall_time_s": time.perf_counter() - t0,
        "diverged": bool(last.get("diverged", False)),
    }


def rerun(exp_dir: str | Path, top: int, seeds: int, first_seed: int = 1, out: str | Path | None = None,
          device: str | None = None, log=print) -> pd.DataFrame:
    """Re-train the top configs with `seeds` seeds each; returns (and writes) rerun.parquet's frame."""
    exp_dir = Path(exp_dir).expanduser()
    trials_file = exp_dir / "trials.parquet"
    if not trials_file.is_file():
        raise FileNotFoundError(f"{trials_file} does not exist: run the study (or `python -m tuner.exports {exp_dir}`) first")
    out = Path(out) if out else exp_dir / "rerun"
    target = exp_dir / "rerun.parquet"
    done = pd.read_parquet(target) if target.is_file() else pd.DataFrame(columns=COLUMNS)
    best = top_trials(pd.read_parquet(trials_file), top)
    if best.empty:
        raise ValueError(f"{trials_file} has no trial with a finite FID to re-run")
    for row in best.to_dict("records"):
        cfg = config_of(row)
        for seed in range(first_seed, first_seed + seeds):
            if ((done["trial_id"] == row["trial_id"]) & (done["seed"] == seed)).any():
                continue
            run_cfg = cfg.replace(seed=seed, **({"device": device} if device else {}))
            log(f"rerun {row['trial_id']} ({row.get('family')}, {row.get('loss') or ''} z{row.get('z_dim')}) seed {seed}: "
                f"{run_cfg.max_kimg} kimg")
            result = {"trial_id": row["trial_id"], "seed": seed,
                      **run_one(run_cfg, out / f"{row['trial_id']}-seed{seed}", label=f"{row['trial_id']}-seed{seed}")}
            log(f"  fid_best {fmt.fid(result['fid_best'])} fid_final {fmt.fid(result['fid_final'])}")
            done = pd.concat([done, pd.DataFrame([result])], ignore_index=True) if len(done) else pd.DataFrame([result])
            tmp = target.with_name(target.name + ".tmp")
            done[COLUMNS].to_parquet(tmp, index=False)
            tmp.replace(target)
    return done


def rerun_summary(trials: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Mean +- std of the re-runs' FIDs per config, the original FID, and both rankings.

    Rankings are by best FID: the original trial's fid_best, and the mean fid_best of its re-runs.
    """
    runs = runs.copy()
    for col in ("fid_best", "fid_final"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    g = runs.groupby("trial_id")
    summary = pd.DataFrame({
        "seeds": g.size(),
        "mean_fid_best": g["fid_best"].mean(),
        "std_fid_best": g["fid_best"].std(),
        "mean_fid_final": g["fid_final"].mean(),
        "std_fid_final": g["fid_final"].std(),
        "diverged": g["diverged"].sum() if "diverged" in runs else 0,
    }).reset_index()
    info = trials.set_index("trial_id")
    summary["original_fid_best"] = summary["trial_id"].map(info["fid_best"])
    summary["label"] = summary["trial_id"].map(info["label"]) if "label" in info else summary["trial_id"]
    summary = summary.sort_values("original_fid_best", kind="stable").reset_index(drop=True)
    summary["original_rank"] = range(1, len(summary) + 1)
    summary["rerun_rank"] = summary["mean_fid_best"].rank(method="min").astype("Int64")
    rows = [{
        "config": r["label"],
        "trial": f"`{r['trial_id']}`",
        "original best FID": fmt.fid(r["original_fid_best"]),
        "seeds": fmt.count(r["seeds"]),
        "re-run best FID (mean ± std)": f"{fmt.fid(r['mean_fid_best'])} ± {fmt.fid(r['std_fid_best'])}",
        "re-run final FID (mean ± std)": f"{fmt.fid(r['mean_fid_final'])} ± {fmt.fid(r['std_fid_final'])}",
        "original rank": fmt.count(r["original_rank"]),
        "re-run rank": fmt.count(r["rerun_rank"]),
    } for r in summary.to_dict("records")]
    lines = [fmt.table(rows), ""]
    if len(summary) < 2:
        lines.append("Ranking: not enough data: one config only.")
    else:
        same = list(summary["original_rank"]) == list(summary["rerun_rank"])
        top_holds = summary.loc[summary["rerun_rank"] == 1, "original_rank"].tolist() == [1]
        if same:
            text = "holds exactly"
        else:
            text = "keeps its winner but reorders the rest" if top_holds else "does not hold: the winner changes"
        rho = None
        if len(summary) >= 3 and summary["mean_fid_best"].notna().all():
            from scipy.stats import spearmanr

            rho = float(spearmanr(summary["original_fid_best"], summary["mean_fid_best"]).statistic)
        corr = f" (Spearman rank correlation {rho:.2f} over {len(summary)} configs)" if rho is not None and math.isfinite(rho) else ""
        lines.append(f"Ranking by best FID: the original ranking {text}{corr}.")
    lines.append("")
    lines.append("_Method:_ each config retrained from scratch at its full budget with new seeds; std is the sample "
                 "standard deviation over seeds (n/a with one seed). Original FIDs were seed "
                 f"{', '.join(sorted({fmt.param(s) for s in trials.loc[trials['trial_id'].isin(summary['trial_id']), 'seed']}))}.")
    return summary, "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.rerun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from analysis import final

    p.add_argument("experiment", metavar="EXPERIMENT_DIR")
    p.add_argument("--top", type=int, default=3, help="how many of the best configs to re-train [3]")
    p.add_argument("--seeds", type=int, default=None, help="seeds per config [3]")
    p.add_argument("--first-seed", type=int, default=1, help="first seed; seeds are FIRST_SEED .. FIRST_SEED+S-1 [1]")
    p.add_argument("--out", default=None, help="folder for the runs' files [EXPERIMENT_DIR/rerun]")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override the trials' device")
    final.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from analysis import final

    args = build_parser().parse_args(argv)
    try:
        settings = final.resolve(args)
        runs = final.run_final(args.experiment, **settings)
    except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.experiment) / 'rerun.parquet'} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
