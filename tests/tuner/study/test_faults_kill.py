"""Faults injected for real: a study's or a final evaluation's driver SIGKILLed, then resumed.

Each driver is a `python tuner/search.py` or `python -m analysis.rerun` subprocess in its own session
(conftest `Driver`), with its own local Ray, a real Optuna journal and real checkpoints, at tiny size
(the `idx_mnist` data, widths 8, batch 16); the kill waits for a state in Tune's snapshot, not for a
time. test_faults.py has the other faults and test_faults_kill_checkpoints.py the kills between two
checkpoints (files of their own, so that the test workers run them at once);
docs/faults.md lists every fault and what the user sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tuner.study import staging
from tuner.results.exports import read_trials_csv

from conftest import TINY_TRIAL, Driver, explained_on_failure, load_study, processes_under, result_rows, snapshot, wait_for

TINY = TINY_TRIAL


# ------------------------------------------------------------------------------------------
# the driver is SIGKILLed at three points of one study, and resumed each time


def snapshot_statuses(exp: Path) -> dict[str, str]:
    """Trial statuses in the newest experiment snapshot (what a resumed run starts from)."""
    newest = max(exp.glob("experiment_state-*.json"), key=lambda p: p.name, default=None)
    if newest is None:
        return {}
    try:
        state = json.loads(newest.read_text())
    except json.JSONDecodeError:  # being written
        return {}
    return {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in state["trial_data"]}


@pytest.mark.slow
def test_driver_killed_three_times_resumes_without_rerunning_or_losing_trials(idx_mnist, tmp_path):
    name, n = "killed", 4
    exp = tmp_path / "store" / name
    flags = ["--storage-path", str(tmp_path / "store"), "--name", name, *TINY, "--losses", "hinge",
             "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", str(n),
             "--max-concurrent", "2", "--max-kimg", "0.75", "--eval-every-kimg", "0.25", "--grace-kimg", "0.75"]
    resume = ["--storage-path", str(tmp_path / "store"), "--name", name, "--resume"]

    def total_results() -> int:
        return sum(len(r) for r in result_rows(exp).values())

    def finished_in_snapshot() -> list[str]:
        return [t for t, s in snapshot_statuses(exp).items() if s == "TERMINATED"]

    # Every trial needs 3 evaluations and none is stopped early (grace = max), so the kill points
    # fall where work is left whatever the timing: (1) the study's first evaluation is on disk (no
    # trial has two); (2) the first resumed run adds one evaluation (no trial has three: none has
    # finished); (3) the second resumed run's snapshot records a finished trial (two trials at least
    # have not started yet: two run at a time). A fourth run resumes to the end.
    drivers: list[Driver] = []
    done_at_kill: dict[str, int] = {}  # trial id -> result rows when a snapshot already had it TERMINATED
    try:
        for k, args in enumerate([flags, resume, resume, resume]):
            before = total_results()
            drivers.append(driver := Driver(args, tmp_path, str(k)))
            if k == 0:
                wait_for(lambda: list(exp.glob("*/checkpoint_000000")), 240, "the first checkpoint", driver.proc)
                dashboards = [c for c in processes_under(driver.ray_tmp).values() if "dashboard/dashboard.py" in c]
                assert dashboards and all("--host=127.0.0.1" in c for c in dashboards)  # loopback only
            elif k == 1:
                wait_for(lambda: total_results() > before, 240, "an evaluation by the resumed run", driver.proc)
            elif k == 2:
                wait_for(finished_in_snapshot, 240, "a finished trial in the snapshot", driver.proc)
            else:
                assert driver.wait(300) == 0, driver.log.read_text()[-3000:]
                break
            driver.kill()
            assert driver.started_its_own_ray()
            rows = result_rows(exp)
            for trial_id in finished_in_snapshot():
                done_at_kill.setdefault(trial_id, len(rows[trial_id]))
            journal_study = load_study(exp, name)
            running = [t for t in journal_study.trials if t.state.name == "RUNNING"]
            assert running  # the kill leaves Optuna trials RUNNING: the resume must clean them up
            assert k == 2 or not finished_in_snapshot()
    finally:
        for driver in drivers:
            driver.kill()
    with explained_on_failure(exp, drivers):
        check_killed_study(exp, name, n, drivers, done_at_kill)


@pytest.mark.slow
def test_driver_of_a_packed_study_killed_resumes_every_member_from_its_checkpoint(idx_mnist, tmp_path):
    """--pack 2 in a space of one shape: the driver is SIGKILLed once a member has a checkpoint, then
    resumed; every member trial resumes from its checkpoint in a new pack and the study ends complete."""
    name, n = "packed", 4
    exp = tmp_path / "store" / name
    space = tmp_path / "one-shape.yaml"
    space.write_text("{g_width: [8], d_width: [8], batch_size: [16], z_dim: [8], n_critic: [1], d_norm: [none]}")
    flags = ["--storage-path", str(tmp_path / "store"), "--name", name, *TINY, "--losses", "hinge", "--space-file",
             str(space), "--no-warm-start", "--pack", "2", "--num-samples", str(n), "--max-kimg", "0.75",
             "--eval-every-kimg", "0.25", "--grace-kimg", "0.75"]
    resume = ["--storage-path", str(tmp_path / "store"), "--name", name, "--resume"]
    drivers = [Driver(flags, tmp_path, "0")]
    try:
        def checkpointed() -> dict[str, float]:  # member -> its checkpoint in Tune's newest snapshot
            return {t: s.checkpoint_kimg for t, s in snapshot(exp).items() if s.checkpoint_kimg is not None}

        wait_for(checkpointed, 240, "a member's checkpoint in Tune's snapshot", drivers[0].proc)
        drivers[0].kill()
        at_kill = checkpointed()
        drivers.append(Driver(resume, tmp_path, "1"))
        assert drivers[1].wait(300) == 0, drivers[1].log.read_text()[-3000:]
    finally:
        for driver in drivers:
            driver.kill()
    with explained_on_failure(exp, drivers):
        trials = read_trials_csv(exp / "trials.csv")
        assert len(trials) == n and trials["trial_id"].is_unique and (trials["status"] == "completed").all()
        history = pd.read_parquet(exp / "history.parquet")
        assert not history.duplicated(subset=["trial_id", "kimg"]).any()
        assert (history.groupby("trial_id")["kimg"].max() >= 0.75).all()
        assert history["pack_members"].max() == 2
        rows = result_rows(exp)
        for trial_id, kimg in at_kill.items():  # it went on from that checkpoint: no evaluation up to it twice
            # (an evaluation after it, reported before the kill but not in the snapshot, or in it without its
            # checkpoint (conftest.snapshot), is made and reported again)
            reported = [r["kimg"] for r in rows[trial_id]]
            assert kimg in reported and all(reported.count(k) == 1 for k in reported if k <= kimg), (trial_id, reported)
        journal_study = load_study(exp, name)
        assert not [t for t in journal_study.trials if t.state.name == "RUNNING"]
        told = {t.user_attrs["ray_trial_id"]: t for t in journal_study.trials if "status" in t.user_attrs}
        assert set(told) == set(trials["trial_id"]) and all(t.state.name == "COMPLETE" for t in told.values())


def check_killed_study(exp: Path, name: str, n: int, drivers: list[Driver], done_at_kill: dict[str, int]) -> None:
    assert all(d.started_its_own_ray() for d in drivers)
    assert not any(processes_under(d.ray_tmp) for d in drivers)
    assert done_at_kill  # kill point 3 happened after a trial had finished

    trials = read_trials_csv(exp / "trials.csv")
    assert len(trials) == n and trials["trial_id"].is_unique
    assert not trials.duplicated(subset=["lr", "beta1", "z_dim", "n_critic", "batch_size"]).any()
    assert (trials["status"] == "completed").all()
    rows = result_rows(exp)
    for trial_id, count in done_at_kill.items():
        assert len(rows[trial_id]) == count, f"finished trial {trial_id} was run again"
    history = pd.read_parquet(exp / "history.parquet")
    assert set(history["trial_id"]) == set(trials["trial_id"])
    assert not history.duplicated(subset=["trial_id", "kimg"]).any()
    assert json.loads((exp / "best.json").read_text())["trial_id"] in set(trials["trial_id"])
    # a killed worker (or one Tune ended inside report()) leaves its trial's checkpoint staging folder;
    # later trials on the node and the driver's sweep at the end remove it
    left = [staging.staging_dir(t) for t in trials["trial_id"]]
    assert not [p for p in left if p.exists() or staging.lock_path(p).exists()]

    journal_study = load_study(exp, name)
    assert not [t for t in journal_study.trials if t.state.name == "RUNNING"]
    # every Optuna trial names its Ray trial right after it is asked (a second journal write: a SIGKILL
    # between the two leaves an unnamed trial, which the resume marks stale like any asked, unsnapshotted
    # one); the told ones carry a status
    unnamed = [t for t in journal_study.trials if "ray_trial_id" not in t.user_attrs]
    assert all(t.state.name == "FAIL" and t.user_attrs.get("stale") and "status" not in t.user_attrs for t in unnamed)
    assert len(unnamed) <= len(drivers) - 1  # at most one ask cut short per kill
    told = [t for t in journal_study.trials if "status" in t.user_attrs]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in told}
    assert len(by_ray_id) == len(told)
    assert set(by_ray_id) == set(trials["trial_id"])  # each trial told exactly once, to its own Optuna trial
    for row in trials.itertuples():
        # a trial re-run from an older checkpoint reproduces its results exactly (seeded, CPU: the same
        # machine and environment, so the same kernels); the journal and the CSV hold copies of one
        # float64, and rel 1e-9 allows only for their decimal text
        assert by_ray_id[row.trial_id].state.name == "COMPLETE"
        assert by_ray_id[row.trial_id].value == pytest.approx(row.fid_final, rel=1e-9)
    others = [t for t in journal_study.trials if "status" not in t.user_attrs]  # asked, never snapshotted: stale
    assert all(t.state.name == "FAIL" and t.user_attrs.get("stale") for t in others)
    assert not set(trials["trial_id"]) & {t.user_attrs.get("ray_trial_id") for t in others}
    # sample grids as Optuna artifacts survive the kills: never one twice, and every trial holds its final one
    for row in trials.itertuples():
        names = [m.filename for m in optuna.artifacts.get_all_artifact_meta(by_ray_id[row.trial_id], storage=journal_study._storage)]
        assert len(names) == len(set(names)), names
        final = max(p.name for p in (exp / row.trial_dir / "samples").glob("kimg_*.png"))
        assert final in names, (final, names)
