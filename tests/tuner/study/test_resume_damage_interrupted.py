"""A resume never loses a study: damaged Tune state either recovers fully or stops before any trial runs.

This file damages the interrupted study (driver SIGKILLed), made once per module by
damaged_studies.py, whose docstring says what every test checks.
"""

from __future__ import annotations

import pytest

from damaged_studies import (  # noqa: F401 (the fixtures work and interrupted)
    assert_recovered, assert_refused, check_garbage_searcher_state_is_rebuilt,
    check_truncated_experiment_state_is_refused, copy_study, digest, interrupted, newest, result_fids, resume,
    search_gen_state, snapshot_records, work, write_search_gen_state,
)


# ------------------------------------------------------------------------------------------
# recovered: what Tune can rebuild from the Optuna journal


@pytest.mark.slow
def test_garbage_searcher_state_is_rebuilt_from_the_journal(interrupted, work, tmp_path):
    check_garbage_searcher_state_is_rebuilt(interrupted, work, tmp_path)


@pytest.mark.slow
def test_a_copied_study_resumes_into_its_own_folder_and_leaves_the_original_alone(interrupted, work, tmp_path):
    # Tune pickles the folder and journal of where a study started (the search generator's experiment,
    # the searcher's Optuna storage): a resumed copy wrote its new trials, their Optuna records and
    # sample grids into the original study.
    before = digest(interrupted)
    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert f"the experiment was moved from {interrupted} to {exp}" in proc.stderr
    assert digest(interrupted) == before


@pytest.mark.slow
def test_half_copied_files_of_a_driver_killed_during_a_copy_are_removed(interrupted, work, tmp_path):
    # the driver copies each snapshot file beside its target and renames it over the target when whole
    # (tuner/study/storage.py): a kill in the middle leaves the partial copy, never a cut target
    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    state = newest(exp, "experiment_state-*.json")
    partials = [state.with_name(f".gentune-partial-{state.name}"),
                next(exp.glob("*/result.json")).with_name(".gentune-partial-result.json")]
    for path in partials:
        path.write_bytes(state.read_bytes()[:100])
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert "gentune: removed 2 half-copied file(s) the stopped driver left" in proc.stderr
    assert not list(exp.rglob(".gentune-partial-*"))


@pytest.mark.slow
def test_torn_snapshot_concurrency_limiter_is_set_to_the_experiment_states_running_trials(interrupted, work, tmp_path):
    # Seen in the driver-kill test: search_gen_state (which holds the ConcurrencyLimiter of
    # --max-concurrent) was older than the experiment state. Its limiter held a trial that had
    # finished since (a slot lost for the rest of the run; with --max-concurrent 1, no trial could
    # start) and lacked a restored running one (the limiter drops the completion of a trial it does
    # not hold, so that trial was never told to Optuna and was marked stale at the end). Here: the
    # limiter holds the finished trial, as it did before that trial ended.
    from tuner.study.resume import FINISHED, LIMITER_KEY

    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    state = search_gen_state(exp)
    records = snapshot_records(exp)
    running = {r["trial_id"] for r in records if r["status"] not in FINISHED}
    done = sorted(r["trial_id"] for r in records if r["status"] == "TERMINATED")
    assert done  # the damage below replaces the limiter whatever the fixture's kill left in it
    limiter = {**state[LIMITER_KEY], "live_trials": {done[0]}, "num_unfinished_live_trials": 1}
    write_search_gen_state(exp, {**state, LIMITER_KEY: limiter})
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)  # with the slot lost, --max-concurrent 1 would start no trial
    assert f"held the trials ['{done[0]}'] as running, the experiment state {sorted(running)}" in proc.stderr
    limiter_after = search_gen_state(exp)[LIMITER_KEY]  # the repaired file the resume read
    assert limiter_after["live_trials"] == running and limiter_after["num_unfinished_live_trials"] == len(running)


# ------------------------------------------------------------------------------------------
# refused: exit 2, one error line, nothing changed


@pytest.mark.slow
def test_truncated_experiment_state_is_refused_and_nothing_changes(interrupted, work, tmp_path):
    check_truncated_experiment_state_is_refused(interrupted, work, tmp_path)


@pytest.mark.slow
def test_garbage_search_generator_state_is_refused_and_nothing_changes(interrupted, work, tmp_path):
    exp = copy_study(interrupted, tmp_path)
    gen = newest(exp, "search_gen_state-*.json")
    gen.write_bytes(b"garbage")
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, gen.name, "is unreadable")
