"""A resume never loses a study: damaged Tune state either recovers fully or stops before any trial runs.

This file damages the finished study, made once per module by damaged_studies.py, whose
docstring says what every test checks.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from damaged_studies import (  # noqa: F401 (the fixtures work and finished)
    N, assert_recovered, assert_refused, check_garbage_searcher_state_is_rebuilt,
    check_truncated_experiment_state_is_refused, copy_study, digest, env_for, finished, newest, result_fids,
    resume, run, search_gen_state, snapshot_records, work, write_search_gen_state,
)
from tuner.results.exports import read_trials_csv


# ------------------------------------------------------------------------------------------
# recovered: what Tune can rebuild from the Optuna journal


@pytest.mark.slow
def test_garbage_searcher_state_is_rebuilt_from_the_journal(finished, work, tmp_path):
    check_garbage_searcher_state_is_rebuilt(finished, work, tmp_path)


@pytest.mark.slow
def test_missing_searcher_state_is_rebuilt_from_the_journal(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    for path in exp.glob("searcher-state-*.pkl"):
        path.unlink()
    assert_recovered(resume(exp, work), earlier, exp)


@pytest.mark.slow
def test_torn_snapshot_search_generator_count_is_repaired(finished, work, tmp_path):
    # A driver killed while Tune copies its snapshot into storage can leave search_gen_state from
    # before the newest trial was created (seen in the driver-kill test: 5 trials for --num-samples 4).
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    n_state = len(snapshot_records(exp))
    state = search_gen_state(exp)
    assert state["counter"] == n_state
    write_search_gen_state(exp, {**state, "counter": n_state - 1})
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)  # exactly N trials, not N + 1
    assert f"counted {n_state - 1} trials, the experiment state holds {n_state}" in proc.stderr


@pytest.mark.slow
def test_garbage_search_generator_state_is_rebuilt_from_an_older_copy(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    gen = newest(exp, "search_gen_state-*.json")
    shutil.copy(gen, exp / "search_gen_state-2000-01-01_00-00-00.json")  # an earlier session's copy
    gen.write_bytes(b"garbage")
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert f"{gen.name} is unreadable" in proc.stderr and "rebuilt from search_gen_state-2000" in proc.stderr
    assert (exp / f"{gen.name}.damaged").read_bytes() == b"garbage"


@pytest.mark.slow
def test_a_snapshotted_checkpoint_deleted_since_is_replaced_by_the_older_one(finished, work, tmp_path):
    # Tune deletes a checkpoint as soon as a newer one pushes it out of the kept set, and rewrites its
    # snapshot seconds later: a driver killed in between leaves a snapshot that names a checkpoint no
    # longer in storage, and Tune's restore of that trial failed on every retry (the trial ended errored;
    # found from the PBT driver-kill test, 2026-12-05). Here: a trial as a snapshot taken while it ran
    # holds it (PAUSED, its last checkpoint the latest), with that checkpoint deleted.
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    state_file = newest(exp, "experiment_state-*.json")
    state = json.loads(state_file.read_text())
    trial_json, metadata = state["trial_data"][0]
    record = json.loads(trial_json)
    trial_id = record["trial_id"]
    state["trial_data"][0] = [json.dumps({**record, "status": "PAUSED"}), metadata]
    state_file.write_text(json.dumps(state))
    (trial_dir,) = exp.glob(f"run_trial_{trial_id}_*")
    checkpoints = sorted(trial_dir.glob("checkpoint_*"))
    assert [c.name for c in checkpoints] == ["checkpoint_000000", "checkpoint_000001"]  # its evaluations
    shutil.rmtree(checkpoints[-1])
    proc = resume(exp, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"gentune: trial {trial_id}: its checkpoint checkpoint_000001 in Tune's snapshot was deleted after the "
            "snapshot (Tune keeps the 2 best and the latest); it resumes from checkpoint_000000 (") in proc.stderr
    trials = read_trials_csv(exp / "trials.csv").set_index("trial_id")
    assert len(trials) == N and (trials["status"] == "completed").all()
    # it went on from the older checkpoint (not from scratch): its last evaluation made once more, and on
    # the CPU the same to the last bit
    assert result_fids(exp)[trial_id] == earlier[trial_id] + earlier[trial_id][-1:]
    assert trials.loc[trial_id, "fid_final"] == pytest.approx(earlier[trial_id][-1], rel=1e-9)


@pytest.mark.slow
def test_a_spent_stopper_of_a_study_from_before_gentunes_budget_is_replaced_by_one_that_takes_the_resumes(
        finished, tmp_path, capsys):
    # Studies started before 2026-12-05 hold Ray Tune's TimeoutStopper of their own --time-budget in the
    # experiment state; Tune's restore brings it back spent, and every resume stopped at once (the
    # resumed TimeBudget itself: test_study.py's time-budget test)
    from ray import cloudpickle
    from ray.tune.stopper import TimeoutStopper

    from tuner.study.budget import TimeBudget
    from tuner.study.resume import PICKLED, check_restorable, pickled_class

    exp = copy_study(finished, tmp_path)
    state_file = newest(exp, "experiment_state-*.json")
    state = json.loads(state_file.read_text())
    ours = {"_type": PICKLED, "value": cloudpickle.dumps(TimeBudget()).hex()}  # made by reference to the class
    assert state["runner_data"]["_stopper"] == ours  # today's studies have it
    assert pickled_class(bytes.fromhex(ours["value"])) == ("tuner.study.budget", "TimeBudget")
    spent = TimeoutStopper(60)
    spent._budget, spent._last_check = -0.5, None  # as a run its budget ended saved it
    assert spent.stop_all()  # restored as it is, the run stops before any trial
    state["runner_data"]["_stopper"] = {"_type": PICKLED, "value": cloudpickle.dumps(spent).hex()}
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    check_restorable(exp, searched=True)
    assert "the experiment state holds Ray Tune's TimeoutStopper" in capsys.readouterr().err
    repaired = json.loads(state_file.read_text())
    assert repaired["runner_data"].pop("_stopper") == ours  # what the resume restores: test_study's budget test
    del state["runner_data"]["_stopper"]
    assert repaired == state  # nothing else changed
    before = digest(exp)
    check_restorable(exp, searched=True)  # repaired once: nothing said or written again
    assert capsys.readouterr().err == "" and digest(exp) == before


# ------------------------------------------------------------------------------------------
# refused: exit 2, one error line, nothing changed


@pytest.mark.slow
def test_truncated_experiment_state_is_refused_and_nothing_changes(finished, work, tmp_path):
    check_truncated_experiment_state_is_refused(finished, work, tmp_path)


@pytest.mark.slow
def test_missing_experiment_state_is_refused_and_nothing_changes(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    for path in exp.glob("experiment_state-*.json"):
        path.unlink()
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, "experiment_state-*.json is missing")


@pytest.mark.slow
def test_unusable_lock_folder_is_refused_and_nothing_changes(finished, work, tmp_path):
    # Tune's restore lock folder is $RAY_TMPDIR/_ray_lockfiles; a regular file there makes it
    # uncreatable even for root (like another account's /tmp/_ray_lockfiles, ray#32776)
    exp = copy_study(finished, tmp_path)
    ray_tmp = Path(tempfile.mkdtemp(prefix="gtl", dir="/tmp"))
    (ray_tmp / "_ray_lockfiles").write_text("not a folder")
    before = digest(exp)
    line = assert_refused(resume(exp, work, env_for(work, ray_tmp)), before, exp, "_ray_lockfiles", "lock folder")
    assert "TMPDIR" in line


@pytest.mark.slow
def test_a_restore_tune_rejects_is_refused_instead_of_restarting(finished, work, tmp_path):
    # Valid JSON that Tune cannot turn back into trials: gentune's own checks pass, Tune's restore
    # fails inside TuneController and would restart the study ("Restarting experiment.")
    exp = copy_study(finished, tmp_path)
    path = newest(exp, "experiment_state-*.json")
    state = json.loads(path.read_text())
    state["trial_data"] = [[json.dumps({"trial_id": json.loads(t)["trial_id"]}), m] for t, m in state["trial_data"]]
    path.write_text(json.dumps(state))
    before = digest(exp)
    proc = resume(exp, work)
    assert_refused(proc, before, exp, "Ray Tune could not restore the run state")
    assert "Restarting experiment" not in proc.stderr


# ------------------------------------------------------------------------------------------
# exports never silently shrink


@pytest.mark.slow
def test_exports_refuse_to_shrink_unless_allowed(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    trials = read_trials_csv(exp / "trials.csv")
    extra = trials.iloc[:1].assign(trial_id="gone_00099")  # a trial the experiment no longer holds
    pd.concat([trials, extra]).to_csv(exp / "trials.csv", index=False)
    before = digest(exp)
    env = env_for(work)
    proc = run([sys.executable, "-m", "tuner.results.exports", str(exp)], env)
    line = assert_refused(proc, before, exp, "trials.csv", "gone_00099", "--allow-shrink")
    assert proc.stderr.strip() == line  # no Ray started: the one line is all

    proc = run([sys.executable, "-m", "tuner.results.exports", str(exp), "--allow-shrink"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(read_trials_csv(exp / "trials.csv")["trial_id"]) == set(trials["trial_id"])
    assert not list(exp.glob(".*.tmp"))  # no temporary file left behind
