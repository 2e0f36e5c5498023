"""PBT vs ASHA at equal compute, over seeds (issue 23, item 2's measurement).

    python benchmarks/pbt_vs_asha.py                 # real run: 3 seeds x 2 studies (hours on a CPU)
    python benchmarks/pbt_vs_asha.py --smoke         # checks the flags and the analysis on synthetic histories
    python benchmarks/pbt_vs_asha.py --analyze ASHA... --pbt PBT...   # finished experiments, one per seed

Runs, one after the other, through the project's own CLI (`python -m tuner.search`, each in its own
process and local Ray), at the default per-trial budget of `python tuner/search.py`:

  asha: `python tuner/search.py --seed S` (the defaults: TPE + ASHA, warm start), for each seed S
  pbt:  the same with `--scheduler pbt --num-samples P` (P = --population, default 8: Optuna proposes
        the population, every member trains the full budget, PBT perturbs lr, lr_d_ratio and betas
        every --perturbation-kimg, default max_kimg / 8), for each seed S

Compute is counted as in search_efficiency.py: evaluations in wall-clock order, each adding the kimg
its trial trained since its previous one (a PBT exploit restarts a trial at the donor's kimg: what it
trains after that counts). Per seed: the best FID at the smaller of the two arms' total compute, each
arm's best FID at its own end, the best FID within the shorter arm's wall-clock (from each study's
command start: STORAGE/STAMP/times.json, written as the run goes; an --analyze of a run without it
takes each study's log's creation and last change in benchmarks/results/pbt_vs_asha_STAMP/), and the
wall-clocks; then the medians. The verdict goes in BENCHMARKS.md, and the default scheduler should
follow it.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path too)
import search_efficiency as se  # noqa: E402  (its runner and compute curves)
import vs_plain_optuna as vpo  # noqa: E402  (wall-clock curves: with_wall, best_within_wall, file_times)

import pandas as pd  # noqa: E402

ARMS = {"asha": "default study (TPE + ASHA)", "pbt": "PBT (population from TPE)"}


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study seeds [default: 0 1 2]")
    p.add_argument("--population", type=int, default=8, help="PBT's population (--num-samples) [default: 8]")
    p.add_argument("--perturbation-kimg", type=float, default=None,
                   help="PBT's perturbation interval [default: tuner/search.py's, max_kimg / 8]")
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "gentune-bench"),
                   help="where the Ray experiments are written [default: $TMPDIR/gentune-bench]")
    p.add_argument("--study-flags", default="", help="extra tuner.search flags for both arms, as one string")
    p.add_argument("--analyze", nargs="+", metavar="EXP", default=None,
                   help="analyse finished ASHA experiments (one per seed) instead of running; with --pbt")
    p.add_argument("--pbt", nargs="+", metavar="EXP", default=None, help="with --analyze: the PBT experiments")
    return p


COMMON = ["--dataset", "fashion-mnist", "--max-failures", "1"]


def study_argv(args, storage: str, name: str, seed: int, arm: str) -> list[str]:
    argv = [*COMMON, "--seed", str(seed), "--storage-path", storage, "--name", name, *shlex.split(args.study_flags)]
    if arm == "pbt":
        argv += ["--scheduler", "pbt", "--num-samples", str(args.population)]
        if args.perturbation_kimg is not None:
            argv += ["--perturbation-kimg", str(args.perturbation_kimg)]
    return argv


def synthetic_history(arm: str, max_kimg: float, every: float, seed: int) -> pd.DataFrame:
    """Exports shaped like the real ones: ASHA stops most trials early, PBT trains all to the end."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    for i in range(8):
        stop = max_kimg if arm == "pbt" or i % 3 == 0 else every * (1 + i % 2)
        k, quality = every, rng.uniform(0.5, 2.0)
        while k <= stop + 1e-9:
            t += rng.uniform(1, 2)
            rows.append({"trial_id": f"{arm}{i}", "kimg": k, "fid": 50 * quality / (1 + k), "wall_time_s": k, "timestamp": t})
            k += every
    return pd.DataFrame(rows)


def compare(curves: dict[str, list[pd.DataFrame]], seeds: list[int], wall: dict) -> tuple[list[list], dict]:
    """Per seed and arm: the best FID at equal compute (the smaller total kimg), and, where both arms'
    wall-clocks are known (`wall[arm, seed]`, the curves holding wall_s), at equal wall-clock."""
    rows, figures = [], {"asha": [], "pbt": []}
    for i, seed in enumerate(seeds):
        a, b = curves["asha"][i], curves["pbt"][i]
        equal = min(float(a["cum_kimg"].iloc[-1]), float(b["cum_kimg"].iloc[-1]))
        timed = ("asha", seed) in wall and ("pbt", seed) in wall
        equal_wall = min(wall["asha", seed], wall["pbt", seed]) if timed else math.nan
        for arm, c in (("asha", a), ("pbt", b)):
            at_equal = se.best_at(c, equal)
            at_wall = vpo.best_within_wall(c, equal_wall) if timed else math.nan
            at_wall = math.inf if timed and math.isnan(at_wall) else at_wall  # timed, but no evaluation by then
            end = float(c["best_fid"].dropna().iloc[-1]) if c["best_fid"].notna().any() else math.nan
            figures[arm].append({"seed": seed, "at_equal": at_equal, "at_wall": at_wall, "end": end})
            rows.append([ARMS[arm], seed, float(c["cum_kimg"].iloc[-1]), equal, at_equal,
                         round(equal_wall) if timed else "not recorded",
                         "not recorded" if not timed else at_wall if math.isfinite(at_wall) else "no evaluation yet",
                         end, round(wall[arm, seed]) if (arm, seed) in wall else "not recorded"])
    return rows, figures


def arm_times(exps: dict[str, list[Path]]) -> tuple[dict, str | None]:
    """{(arm, seed): (start, seconds)} of an --analyze'd run: from times.json beside the experiments
    (written by a run of this script), else from the creation and last change of each study's log in
    benchmarks/results/pbt_vs_asha_<STAMP>/ (STAMP: the experiments' folder). A note says which."""
    times, from_logs = {}, False
    for arm, es in exps.items():
        for seed, exp in enumerate(es):
            saved = json.loads((exp.parent / "times.json").read_text()) if (exp.parent / "times.json").is_file() else {}
            log = common.RESULTS_DIR / f"pbt_vs_asha_{exp.parent.name}" / f"{exp.name}.log"
            if exp.name in saved:
                times[arm, seed] = tuple(saved[exp.name])
            elif log.is_file():
                start, end = vpo.file_times(exp, log)
                times[arm, seed], from_logs = (start, end - start), True
    note = ("wall-clocks from the creation and last change of each study's log (no times.json): "
            "they start a moment after the command and end with its summary") if from_logs else None
    return times, note


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.analyze and (not args.pbt or len(args.pbt) != len(args.analyze)):
        parser.error("--analyze ASHA... needs --pbt with one experiment per ASHA experiment")
    from tuner.study.driver import parse

    st = common.stamp()
    storage = str(Path(args.storage) / st)
    seeds = list(args.seeds) if not args.analyze else list(range(len(args.analyze)))
    for seed in seeds:  # the flags must be valid in every mode (the smoke run checks them without running)
        for arm in ARMS:
            parse(study_argv(args, storage, f"x{seed}{arm}", seed, arm))

    notes: list[str] = []
    times: dict = {}  # (arm, seed): (start, seconds) of each study's command
    load = common.LoadMonitor()
    with load:
        if args.smoke:
            hists = {arm: [synthetic_history(arm, 8.0, 2.0, 10 * i + k) for k in seeds] for i, arm in enumerate(ARMS)}
            times = {(arm, seed): (0.0, float(h["timestamp"].max())) for arm, hs in hists.items() for seed, h in zip(seeds, hs)}
            notes.append("SMOKE: synthetic histories; no trial was trained. The CLI flags of every run were validated.")
            base = {"max_kimg": 8.0, "fid_samples": 1000, "fid_backbone": "domain"}
        else:
            if args.analyze:
                exps = {"asha": [Path(e) for e in args.analyze], "pbt": [Path(e) for e in args.pbt]}
                times, how = arm_times(exps)
                notes += [how] if how else []
            else:
                Path(storage).mkdir(parents=True, exist_ok=True)
                logs = common.RESULTS_DIR / f"pbt_vs_asha_{st}"
                logs.mkdir(parents=True, exist_ok=True)
                exps, times, saved = {"asha": [], "pbt": []}, {}, {}
                for seed in seeds:
                    for arm in ARMS:
                        name, start = f"{arm}-seed{seed}", time.time()
                        seconds = se.run_search(study_argv(args, storage, name, seed, arm), logs / f"{name}.log")
                        times[arm, seed] = saved[name] = (start, seconds)
                        (Path(storage) / "times.json").write_text(json.dumps(saved, indent=1))
                        exps[arm].append(Path(storage) / name)
            hists = {arm: [se.load_history(e) for e in es] for arm, es in exps.items()}
            base = json.loads((exps["asha"][0] / "search_config.json").read_text())["base"]
            notes.append("experiments: " + "; ".join(f"{arm} " + ", ".join(str(e) for e in es) for arm, es in exps.items()))

    curves = {arm: [vpo.with_wall(se.compute_curve(h), times[arm, seeds[i]][0]) if (arm, seeds[i]) in times
                    else se.compute_curve(h) for i, h in enumerate(hs)] for arm, hs in hists.items()}
    rows, fig = compare(curves, seeds, {key: seconds for key, (_, seconds) in times.items()})
    asha_med = common.median([f["at_equal"] for f in fig["asha"]])
    pbt_med = common.median([f["at_equal"] for f in fig["pbt"]])
    per_seed = common.table(["arm", "seed", "total kimg", "equal compute (kimg)", "best FID at equal compute",
                             "equal wall-clock (s)", "best FID at equal wall-clock", "best FID at its end",
                             "wall-clock (s)"], rows)
    verdicts = [["best FID at equal compute: PBT vs ASHA", f"{pbt_med:.2f} vs {asha_med:.2f}",
                 "PBT better" if pbt_med < asha_med else "ASHA better or equal"]]
    if all(not math.isnan(f["at_wall"]) for arm in fig for f in fig[arm]):
        asha_wall, pbt_wall = (common.median([f["at_wall"] for f in fig[arm]]) for arm in ("asha", "pbt"))
        verdicts.append(["best FID at equal wall-clock: PBT vs ASHA", f"{pbt_wall:.2f} vs {asha_wall:.2f}",
                         "PBT better" if pbt_wall < asha_wall else "ASHA better or equal"])
    verdict = common.table(["comparison (median over seeds)", "measured", "verdict"], verdicts)
    budget = (f"Per-trial budget: the defaults of `python tuner/search.py` ({base['max_kimg']:g} kimg, FID on "
              f"{base['fid_samples']} samples, {base['fid_backbone']} features). ASHA: the default study with --seed S. "
              f"PBT: --scheduler pbt --num-samples {args.population}"
              + (f" --perturbation-kimg {args.perturbation_kimg:g}" if args.perturbation_kimg else "")
              + (f"; extra flags `{args.study_flags}`" if args.study_flags else "") + ".")
    common.publish(common.section("pbt_vs_asha: PBT vs ASHA at equal compute, over seeds", args.smoke,
                                  [budget, per_seed, verdict, *notes], load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
