"""The Optuna bridge alone, without a Ray runtime: how each way a Ray trial ends reaches Optuna.

A trial ASHA stopped is PRUNED with its FIDs as intermediate values (never COMPLETE with an early FID),
one that reached max_kimg is COMPLETE with its last FID, a diverged one FAIL with its reason, an errored
one FAIL; each is told once, and a checkpoint between evaluations reports nothing."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from tuner.config.space import build_ranges, define_by_run
from tuner.study.optuna_bridge import HonestOptunaSearch, load_journal_study, make_storage, mark_stale_trials

MAX_KIMG = 4.0


@pytest.fixture
def searcher(tmp_path):
    return HonestOptunaSearch(space=define_by_run("gan", ("hinge",), build_ranges("gan")), metric="fid", mode="min",
                              sampler=optuna.samplers.RandomSampler(seed=0), study_name="bridge",
                              storage=make_storage(str(tmp_path / "optuna.journal")), max_kimg=MAX_KIMG)


def frozen(searcher, trial_id):
    return searcher._ot_study._storage.get_trial(searcher._ot_trials[trial_id]._trial_id)


def test_each_way_a_trial_ends_maps_to_one_optuna_state(searcher):
    for t in ("pruned", "completed", "diverged", "errored"):
        assert searcher.suggest(t)["loss"] == "hinge"
        searcher.on_trial_result(t, {"fid": 300.0, "kimg": 1.0})
    searcher.on_trial_result("pruned", {"fid": math.nan, "kimg": 1.5, "checkpoint_only": True})  # no FID: not told
    searcher.on_trial_complete("pruned", {"fid": 250.0, "kimg": 2.0})  # ASHA's stop: Tune skips on_trial_result
    searcher.on_trial_result("completed", {"fid": 120.0, "kimg": MAX_KIMG})
    searcher.on_trial_complete("completed", {"fid": 120.0, "kimg": MAX_KIMG})
    searcher.on_trial_complete("diverged", {"fid": math.inf, "kimg": 2.0, "diverged": True, "diverge_reason": "loss_d nan"})
    searcher.on_trial_complete("errored", {"fid": 300.0, "kimg": 1.0}, error=True)

    pruned, completed, diverged, errored = (frozen(searcher, t) for t in ("pruned", "completed", "diverged", "errored"))
    assert pruned.state == TrialState.PRUNED and pruned.value == 250.0  # Optuna's rule: a pruned trial's last intermediate
    assert pruned.intermediate_values == {1000: 300.0, 2000: 250.0}
    assert completed.state == TrialState.COMPLETE and completed.value == 120.0
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["diverge_reason"] == "loss_d nan"
    assert errored.state == TrialState.FAIL
    assert {t: frozen(searcher, t).user_attrs["status"] for t in searcher._ot_trials} == {
        "pruned": "pruned", "completed": "completed", "diverged": "diverged", "errored": "errored"}
    assert all(frozen(searcher, t).user_attrs["ray_trial_id"] == t for t in searcher._ot_trials)


def test_a_trial_is_told_once_and_a_repeated_evaluation_is_not_reported_twice(searcher):
    searcher.suggest("a")
    searcher.on_trial_result("a", {"fid": 200.0, "kimg": 1.0})
    searcher.on_trial_result("a", {"fid": 190.0, "kimg": 1.0})  # resumed from an older checkpoint: the same step
    searcher.on_trial_complete("a", {"fid": 100.0, "kimg": MAX_KIMG})
    searcher.on_trial_complete("a", {"fid": 999.0, "kimg": 1.0}, error=True)  # Tune again, after a restore
    a = frozen(searcher, "a")
    assert a.intermediate_values == {1000: 200.0}
    assert (a.state, a.value) == (TrialState.COMPLETE, 100.0)


def test_trials_a_killed_driver_left_running_are_marked_failed_and_stale(searcher):
    searcher.suggest("asked")
    searcher.suggest("told")
    searcher.on_trial_complete("told", {"fid": 80.0, "kimg": MAX_KIMG})
    assert mark_stale_trials(searcher._ot_study) == 1
    asked = frozen(searcher, "asked")
    assert asked.state == TrialState.FAIL and asked.user_attrs.get("stale") is True
    assert frozen(searcher, "told").state == TrialState.COMPLETE


# a child that takes the journal's write lock, says so, and waits to be killed while holding it
HOLD_LOCK = """
import sys, time
from tuner.study.optuna_bridge import KernelJournalLock
KernelJournalLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_journal_lock_does_not_stall_the_next(tmp_path):
    """docs/ray-optuna.md §13: Optuna's own lock file outlives a killed writer (the next one waits 30 s);
    the kernel lock ends with its holder."""
    journal = str(tmp_path / "optuna.journal")
    optuna.create_study(study_name="s", storage=make_storage(journal))
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, journal], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        writer = optuna.load_study(study_name="s", storage=make_storage(journal))
        # held: a write from here waits (in a thread, so the test can look while it blocks)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (writer.enqueue_trial({"x": 1.0}), done.set()), daemon=True)
        thread.start()
        assert not done.wait(1.0)
        child.kill()
        child.wait()
        assert done.wait(10.0)  # Optuna's own lock would hold it for its 30 s grace period
    finally:
        child.kill()
        child.wait()
    assert len(optuna.load_study(study_name="s", storage=make_storage(journal)).trials) == 1


def test_a_renamed_studys_journal_opens_under_its_first_name_and_a_shared_one_by_the_name_given(tmp_path):
    """A study folder renamed since it started keeps the Optuna study of its first --name in its journal:
    looked up by the new name it would not be found (KeyError), so the study the journal holds is opened."""
    journal = str(tmp_path / "optuna.journal")
    first = optuna.create_study(study_name="first-name", storage=make_storage(journal))
    first.enqueue_trial({"x": 1.0})
    assert load_journal_study(journal, "renamed").study_name == "first-name"
    with pytest.raises(KeyError):
        optuna.load_study(study_name="renamed", storage=make_storage(journal))
    optuna.create_study(study_name="other", storage=make_storage(journal))
    assert load_journal_study(journal, "other").study_name == "other"  # several: the name given
    assert load_journal_study(journal, "first-name").study_name == "first-name"
