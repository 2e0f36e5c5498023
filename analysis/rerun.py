"""Re-train the best configs of an experiment with other seeds: the ranking check and the final evaluation.

    python -m analysis.rerun EXPERIMENT_DIR --top 3 --seeds 3 [--first-seed 1] [--out DIR]
    python -m analysis.rerun EXPERIMENT_DIR --top 1 --final      # 1000 kimg, Inception, 10k samples, 3 seeds

Runs analysis.final.run_final: the top-K trials by best FID (diverged trials and trials without a
finite FID skipped) x seeds FIRST_SEED .. FIRST_SEED+S-1, as one Ray Tune run (grid, FIFO,
checkpoints and retries as a study), continued by the same command after an interrupt.
--max-kimg, --fid-backbone and --fid-samples override the trials' own values, --final sets the
literature's protocol; `--set FIELD=VALUE` re-trains them with a model or optimiser field changed (an
ablation: `--set g_width=64`). Each run's files go to DIR/ (default EXPERIMENT_DIR/rerun); its rows are
appended to EXPERIMENT_DIR/rerun.parquet, keyed by (trial_id, seed, the protocol, the changes), so runs
with different protocols, or of a changed config, never mix. The report (python -m analysis.report) then
shows mean +- std FID per config and whether the ranking holds. See analysis/final.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis import final
from tuner.config.cli import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.rerun", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", metavar="EXPERIMENT_DIR")
    p.add_argument("--top", type=int, default=3, help="how many of the best configs to re-train [3]")
    p.add_argument("--seeds", type=int, default=None, help="seeds per config [3]")
    p.add_argument("--first-seed", type=int, default=1, help="first seed; seeds are FIRST_SEED .. FIRST_SEED+S-1 [1]")
    p.add_argument("--out", default=None, help="folder for the runs' files [EXPERIMENT_DIR/rerun]")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override the trials' device")
    final.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
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
