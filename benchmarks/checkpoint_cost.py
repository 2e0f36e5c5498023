"""Checkpoint cost: the share of a study trial's wall time spent on checkpoints between evaluations.

    python benchmarks/checkpoint_cost.py            # real run: one default study trial, 5-10 min on 2 CPU cores
    python benchmarks/checkpoint_cost.py --smoke    # tiny sizes

Runs `python tuner/search.py` with the study's defaults (Fashion-MNIST, 64 kimg, rungs at 8 and 24
kimg, domain FID of 1000 samples) and its default checkpoint schedule (`checkpoint_every_kimg` =
grace_kimg = 8, `checkpoint_every_min` = 2): checkpoints without evaluation at 16, 32, 40, 48 and 56
kimg. Every such checkpoint is timed inside the trial (tuner/training/loop.py: writing checkpoint.pt, then
`tune.report`, which copies it and the trial folder to storage and waits for the driver), summed in
each evaluation record as `checkpoint_s`. Share = checkpoint_s / the trial's wall time (Tune's
time_total_s). Also printed: the cost of one checkpoint, and what it is as a share of the 2 minutes
between checkpoints of a final evaluation (`--checkpoint-every-min 2`, one evaluation at the end).

Flags it does not know go to tuner/search.py. Target: < 2% of a trial's wall time at the default schedule. Results also go to
benchmarks/results/checkpoint_cost_<date>.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 0.02


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--num-samples", type=int, default=1, help="trials of the study [default: 1]")
    return p


def trial_rows(exp: Path) -> dict[str, list[dict]]:
    rows = {}
    for path in exp.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def measure(rows: list[dict]) -> dict:
    evals = [r for r in rows if not r.get("checkpoint_only")]
    last = evals[-1]
    n = sum(1 for r in rows if r.get("checkpoint_only"))
    wall = float(last["time_total_s"])
    spent = float(last.get("checkpoint_s", 0.0))
    return {"kimg": float(last["kimg"]), "evaluations": len(evals), "checkpoints_between": n, "checkpoint_s": spent,
            "trial_time_s": float(last["time_s"]), "wall_s": wall, "share": spent / wall if wall > 0 else math.nan,
            "per_checkpoint_s": spent / n if n else math.nan, "img_per_s": float(last.get("img_per_s", math.nan)),
            "precision": last.get("precision")}


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)  # other flags go to tuner/search.py
    root = Path(__file__).resolve().parent.parent
    store = Path(tempfile.mkdtemp(prefix="gentune-bench-ckpt-"))
    flags = ["--storage-path", str(store), "--name", "ckpt-cost", "--num-samples", str(args.num_samples)]
    if args.smoke:
        flags += ["--train-limit", "256", "--g-width", "8", "--d-width", "8", "--batch-size", "16", "--fid-samples", "64",
                  "--max-kimg", "1", "--grace-kimg", "0.5", "--checkpoint-every-kimg", "0.25", "--ranges",
                  "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--no-warm-start"]
    flags += extra
    command = [sys.executable, str(root / "tuner" / "search.py"), *flags]
    print("$", " ".join(command[1:]), flush=True)
    load = common.LoadMonitor()
    try:
        with load:
            proc = subprocess.run(command, cwd=root, env=dict(os.environ), capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        exp = store / "ckpt-cost"
        saved = json.loads((exp / "search_config.json").read_text())["base"]
        trials = {t: measure(rows) for t, rows in sorted(trial_rows(exp).items())}
    finally:
        shutil.rmtree(store, ignore_errors=True)  # the study was the instrument: what it measured is printed and saved
    rows, results = [], []
    for trial_id, m in trials.items():
        rows.append([trial_id, m["kimg"], m["evaluations"], m["checkpoints_between"], m["per_checkpoint_s"],
                     m["checkpoint_s"], m["wall_s"], f"{100 * m['share']:.2f}%"])
        results.append({"trial_id": trial_id, **m})
    total_spent = sum(m["checkpoint_s"] for m in trials.values())
    total_wall = sum(m["wall_s"] for m in trials.values())
    share = total_spent / total_wall if total_wall else math.nan
    n = sum(m["checkpoints_between"] for m in trials.values())
    per = total_spent / n if n else math.nan
    every_min = saved["checkpoint_every_min"]
    final_share = per / (every_min * 60 + per) if every_min > 0 and n else math.nan
    blocks = [
        f"Schedule: checkpoint_every_kimg {saved['checkpoint_every_kimg']:g} (a study's default: its grace_kimg), "
        f"checkpoint_every_min {every_min:g}; max_kimg {saved['max_kimg']:g}, evaluations at "
        f"{', '.join(f'{k:g}' for k in saved['eval_at_kimg'])} and the end; fid_samples {saved['fid_samples']}. checkpoint_s: time inside the trial spent on checkpoints between "
        "evaluations (write + tune.report); wall: Tune's time_total_s of the trial.",
        common.table(["trial", "kimg", "evaluations", "checkpoints between", "s per checkpoint", "checkpoint_s",
                      "wall (s)", "share"], rows),
        common.table(["measure", "value", "target", "verdict"], [
            ["checkpoint share of trial wall time (study default)", f"{100 * share:.2f}%", "< 2%", common.verdict(share < TARGET)],
            [f"one checkpoint vs the {every_min:g} min between checkpoints of a final evaluation",
             f"{100 * final_share:.2f}%" if final_share == final_share else "—", "< 2%",
             common.verdict(final_share < TARGET) if final_share == final_share else common.verdict(None)],
        ]),
    ]
    text = common.section("checkpoint_cost", args.smoke, blocks, load)
    if not args.smoke:
        out = root / "benchmarks" / "results" / f"checkpoint_cost_{common.stamp()}.json"
        out.write_text(json.dumps({"date": common.now(), "machine": common.machine(), "command": common.command(),
                                   "load": load.describe(), "schedule": {k: saved[k] for k in (
                                       "checkpoint_every_kimg", "checkpoint_every_min", "max_kimg", "eval_at_kimg")},
                                   "trials": results, "share": share, "per_checkpoint_s": per,
                                   "final_eval_share": final_share}, indent=2) + "\n")
        print(f"wrote {out}")
    common.publish(text, args)
    return 0 if share == share else 1


if __name__ == "__main__":
    sys.exit(main())
