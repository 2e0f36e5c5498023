"""Faults injected for real, between two checkpoints: a study's driver SIGKILLed between two ASHA rungs
and a final evaluation's driver between two checkpoints, each resumed from the last checkpoint and
ending bit for bit as an uninterrupted run. The drivers are `python tuner/search.py` and
`python -m analysis.rerun` subprocesses (conftest `Driver`) with their own local Ray, at tiny size.
test_faults_kill.py has the studies killed at rungs and evaluations (a file of its own, so that both
test workers run these long tests at once); docs/faults.md lists every fault and what the user sees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tuner.config import TrainConfig
from tuner.results.exports import read_trials_csv

from conftest import TINY_CFG, TINY_TRIAL, Driver, explained_on_failure, load_study, position, result_rows, snapshot, uninterrupted, wait_for

TINY = TINY_TRIAL


# ------------------------------------------------------------------------------------------
# checkpoints between evaluations: a driver SIGKILLed between two of them resumes from the last one


def snapshot_checkpoint_kimg(exp: Path) -> dict[str, float]:
    """trial id -> the position of the checkpoint Tune's newest snapshot restores it from (conftest.snapshot)."""
    return {t: s.checkpoint_kimg for t, s in snapshot(exp).items() if s.checkpoint_kimg is not None}


def resumed_from(rows: list[dict], killed_at: float, every: float) -> float:
    """The first position the trial reported after Tune restored it; checks that it is the first
    checkpoint after `killed_at` (the snapshot's): it resumed from that one, not from an earlier one."""
    restarts = [i for i, r in enumerate(rows) if i > 0 and r["iterations_since_restore"] == 1]
    assert len(restarts) == 1, [(position(r), r["iterations_since_restore"]) for r in rows]
    first = position(rows[restarts[0]])
    assert killed_at < first < killed_at + every + 0.2, (killed_at, first)  # from that checkpoint: not from zero
    return first


@pytest.mark.slow
def test_study_driver_killed_between_two_rungs_resumes_from_the_checkpoint_between_them(idx_mnist, tmp_path):
    # rungs at 2 and 6 kimg, the end at 12; checkpoints every 0.5 kimg. The driver is killed once
    # Tune's snapshot holds a checkpoint past the last rung; resumed, the trial continues from that
    # checkpoint (not from the 6-kimg rung, nor from zero; from the rung only if Tune deleted that one
    # between its snapshot and the kill) and ends with the uninterrupted run's FID.
    name = "between"
    exp = tmp_path / "store" / name
    flags = ["--storage-path", str(tmp_path / "store"), "--name", name, *TINY, "--losses", "hinge",
             "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", "1",
             "--max-kimg", "12", "--grace-kimg", "2", "--checkpoint-every-kimg", "0.5", "--checkpoint-every-min", "0"]
    drivers = [Driver(flags, tmp_path, "0")]
    try:
        snap = wait_for(lambda: {t: k for t, k in snapshot_checkpoint_kimg(exp).items() if k > 6.5}, 240,
                        "a checkpoint past the last rung in Tune's snapshot", drivers[0].proc)
        drivers[0].kill()
        (trial_id,) = snap
        # the snapshot at the kill (the driver may have written a newer one), and its checkpoint still in
        # storage: the rung's at 6 kimg if Tune had deleted the newer one since (conftest.snapshot)
        killed_at = snapshot_checkpoint_kimg(exp)[trial_id]
        assert 6 <= killed_at < 12
        drivers.append(Driver(["--storage-path", str(tmp_path / "store"), "--name", name, "--resume"], tmp_path, "1"))
        assert drivers[1].wait(300) == 0, drivers[1].log.read_text()[-3000:]
    finally:
        for driver in drivers:
            driver.kill()
    with explained_on_failure(exp, drivers):
        rows = result_rows(exp)[trial_id]
        resumed_from(rows, killed_at, 0.5)
        trials = read_trials_csv(exp / "trials.csv")
        assert list(trials["status"]) == ["completed"]
        history = pd.read_parquet(exp / "history.parquet")  # evaluations only: the rungs and the end
        assert len(history) == 3 and history["fid"].map(math.isfinite).all()
        assert "checkpoint_only" not in history and "checkpoint_kimg" not in history
        (ot,) = load_study(exp, name).trials
        assert ot.state.name == "COMPLETE" and ot.value == trials["fid_final"].iloc[0]
        assert sorted(ot.intermediate_values) == [round(k * 1000) for k in history["kimg"][:2]]  # no checkpoint
        (trial_dir,) = exp.glob(f"*{trial_id}*")
        cfg = TrainConfig.from_dict(json.loads((trial_dir / "config.json").read_text()))
        (*_, last) = uninterrupted(cfg, tmp_path / "uninterrupted")
        final = history.iloc[-1]
        assert (last["kimg"], last["fid"], last["loss_d"], last["loss_g"]) == \
               (final["kimg"], final["fid"], final["loss_d"], final["loss_g"])  # bit for bit, loss averages included


@pytest.mark.slow
def test_final_evaluation_killed_between_checkpoints_resumes_from_the_last_one(idx_mnist, tmp_path):
    # analysis.rerun with one evaluation, at the end (as --final: 1000 kimg, --eval-every-kimg 1000),
    # shrunk to 10 kimg with checkpoints every 0.5 kimg; killed mid-way, the same command continues.
    exp = tmp_path / "study"
    exp.mkdir()
    row = {**TrainConfig(**TINY_CFG, loss="hinge", max_kimg=2.0).to_dict(), "trial_id": "t0", "status": "completed",
           "fid_best": 100.0}
    row["eval_at_kimg"] = list(row["eval_at_kimg"])
    pd.DataFrame([row]).to_parquet(exp / "trials.parquet")
    argv = [str(exp), "--top", "1", "--seeds", "1", "--first-seed", "3", "--max-kimg", "10", "--fid-backbone", "domain",
            "--fid-samples", "48", "--eval-every-kimg", "10", "--checkpoint-every-kimg", "0.5",
            "--checkpoint-every-min", "0", "--cpus-per-trial", "1"]
    rerun = ("-m", "analysis.rerun")
    drivers = [Driver(argv, tmp_path, "first", rerun)]
    try:
        def snapshot():
            return {(tune_dir, t): k for tune_dir in (exp / "rerun").glob("final-*")
                    for t, k in snapshot_checkpoint_kimg(tune_dir).items() if k >= 3}

        ((tune_dir, trial_id), _), = wait_for(snapshot, 240, "a checkpoint in Tune's snapshot", drivers[0].proc).items()
        drivers[0].kill()
        killed_at = snapshot_checkpoint_kimg(tune_dir)[trial_id]  # the snapshot at the kill (and in storage)
        assert 2.5 <= killed_at < 10  # (the one before, if Tune had deleted the snapshot's since: conftest.snapshot)
        assert not (exp / "rerun.parquet").exists()
        drivers.append(Driver(argv, tmp_path, "second", rerun))
        assert drivers[1].wait(300) == 0, drivers[1].log.read_text()[-3000:]
    finally:
        for driver in drivers:
            driver.kill()
    assert "continuing the interrupted run" in drivers[1].log.read_text()
    rows = result_rows(tune_dir)[trial_id]
    resumed_from(rows, killed_at, 0.5)
    assert [position(r) for r in rows if "kimg" in r] == [rows[-1]["kimg"]]  # one evaluation, at the end
    (rerun_row,) = pd.read_parquet(exp / "rerun.parquet").to_dict("records")
    cfg = TrainConfig.from_dict(json.loads(rerun_row["config"]))
    assert (cfg.seed, cfg.max_kimg, cfg.eval_every_kimg, cfg.checkpoint_every_kimg) == (3, 10.0, 10.0, 0.5)
    (last,) = uninterrupted(cfg, tmp_path / "uninterrupted")
    assert (rerun_row["kimg"], rerun_row["fid_final"]) == (last["kimg"], last["fid"])  # bit for bit
