"""The final evaluation of a study's winner, as a result file.

    python benchmarks/final_eval.py EXPERIMENT_DIR [--cpus-per-trial N --gpus-per-trial F --address A]
    python benchmarks/final_eval.py EXPERIMENT_DIR --smoke      # tiny sizes: 0.25 kimg, domain FID, 64 samples, 2 seeds

Runs `python -m analysis.rerun EXPERIMENT_DIR --top 1 --final` (1000 kimg, Inception FID of 10000
samples vs 10000 test images, 3 seeds; the same command continues an interrupted run), then writes
benchmarks/results/final-eval.json (with --smoke: final-eval-smoke.json, never the real file):
{dataset, fid_backbone, fid_samples, max_kimg, precision, seeds, fids (one per seed, in seed
order, each the LAST checkpoint's FID), fids_ema and g_ema (when a run kept an EMA of G: one FID per
seed, null for a seed run without one), latent_sampler (a VAE's: prior or gmm), config (the latest run's), trial_id,
experiment, and changes when the run re-trained the winner with `--set FIELD=VALUE`}. Extra flags are
passed to analysis.rerun, e.g. `--eval-every-kimg 1000` (one evaluation, at the end), `--set g_width=64`
and `--checkpoint-every-min M` / `--checkpoint-every-kimg K` (checkpoints between evaluations: a killed
run continues from the last one; default every 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMOKE_FLAGS = ["--max-kimg", "0.25", "--fid-backbone", "domain", "--fid-samples", "64", "--seeds", "2"]


def result(exp: Path) -> dict:
    """The winner's rows of the protocol just run, as the result file's dict."""
    import pandas as pd

    from analysis.final import row_changes, row_sampler, top_trials

    best = top_trials(pd.read_parquet(exp / "trials.parquet"), 1)["trial_id"].iloc[0]
    rows = pd.read_parquet(exp / "rerun.parquet")
    rows = rows[rows["trial_id"] == best]
    latest = rows.sort_values("finished_at").iloc[-1]  # the protocol of the run just made
    sampler, changes = row_sampler(latest.to_dict()), row_changes(latest.to_dict())
    records = rows.to_dict("records")
    same = rows[(rows["fid_backbone"] == latest["fid_backbone"]) & (rows["fid_samples"] == latest["fid_samples"])
                & (rows["max_kimg"] == latest["max_kimg"])
                & pd.Series([row_sampler(r) == sampler for r in records], index=rows.index)
                & pd.Series([row_changes(r) == changes for r in records], index=rows.index)  # --set: never mixed
                ].sort_values("seed")
    out = {
        "experiment": str(exp), "trial_id": str(best), "dataset": str(latest["dataset"]),
        "fid_backbone": str(latest["fid_backbone"]), "fid_samples": int(latest["fid_samples"]),
        "max_kimg": float(latest["max_kimg"]), "precision": sorted({str(p) for p in same["precision"].dropna()}),
        "seeds": [int(s) for s in same["seed"]], "fids": [float(f) for f in same["fid_final"]],
        "scored_checkpoint": "last", "latent_sampler": sampler, "config": json.loads(latest["config"]),
    }
    if changes:
        out["changes"] = changes  # the winner re-trained with these fields changed (--set)
    decays = pd.to_numeric(same["g_ema"], errors="coerce").fillna(0.0)
    emas = [float(f) if d > 0 and math.isfinite(f) else None
            for f, d in zip(pd.to_numeric(same["fid_ema_final"], errors="coerce"), decays)]
    if any(e is not None for e in emas):
        out["fids_ema"] = emas  # one per seed, in seed order; null: that seed's run kept no EMA
        out["g_ema"] = sorted({float(d) for d in decays if d > 0})
    out["precision"] = out["precision"][0] if len(out["precision"]) == 1 else out["precision"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", metavar="EXPERIMENT_DIR")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; writes final-eval-smoke.json")
    p.add_argument("--json", default=None, help="result file [benchmarks/results/final-eval(-smoke).json]")
    args, extra = p.parse_known_args(argv)
    exp = Path(args.experiment).expanduser().resolve()
    command = [sys.executable, "-m", "analysis.rerun", str(exp), "--top", "1", "--final",
               *(SMOKE_FLAGS if args.smoke else []), *extra]
    print("$", " ".join(command[1:]), flush=True)
    rc = subprocess.call(command, cwd=ROOT)
    if rc != 0:
        return rc
    out = result(exp)
    from tuner.config.atomic import write_whole

    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / ("final-eval-smoke.json" if args.smoke else "final-eval.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2, allow_nan=True) + "\n"))
    fids = ", ".join(f"{f:.2f}" if math.isfinite(f) else str(f) for f in out["fids"])
    print(f"wrote {path}: FID {fids} ({out['fid_backbone']}, {out['fid_samples']} samples, {out['max_kimg']:g} kimg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
