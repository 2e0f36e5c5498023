"""tuner/study/console.py: what a resumed study keeps of the callbacks pickled with its experiment."""

from __future__ import annotations

from types import SimpleNamespace

from ray import tune

from tuner.study.console import EventLines, apply_to_restored, run_config_options
from tuner.study.storage import StorageGuard


class Other(tune.Callback):
    pass


def test_a_resumed_study_guards_its_own_folder_and_keeps_other_callbacks():
    # as Tuner.restore unpickles them: the console and storage guard of where the study started
    other = Other()
    run_config = tune.RunConfig(callbacks=[*run_config_options(False, 1.0)["callbacks"], StorageGuard("/old/exp"), other])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config))
    apply_to_restored(tuner, verbose=False, max_kimg=2.0, guards=(StorageGuard("/new/exp"),))
    guards = [c for c in run_config.callbacks if isinstance(c, StorageGuard)]
    assert [g.folder for g in guards] == ["/new/exp"]
    assert sum(isinstance(c, EventLines) for c in run_config.callbacks) == 1
    assert other in run_config.callbacks


def test_the_table_shows_a_trial_between_evaluations_with_its_last_fid_and_never_a_checkpoints_nan(tmp_path, monkeypatch):
    from ray.tune.experiment import Trial
    from ray.tune.utils import log as tune_log

    # Ray's verbosity is process-wide, and each Tuner.fit sets it from its RunConfig: after a study (verbose=1)
    # a reporter built for the next study in the same process must still print its table (seen in the suite)
    monkeypatch.setattr(tune_log, "verbosity", tune_log.Verbosity.V1_EXPERIMENT)

    from tuner.study.console import TableReporter

    class LocalTrial(Trial):  # the table's header names the experiment folder (a running Ray's, otherwise)
        local_experiment_path = local_path = str(tmp_path)

    trial = LocalTrial("run_trial", config={"lr": 1e-3}, trial_id="abc12345", stub=True)
    trial.set_status(Trial.RUNNING)
    printed = []
    reporter = TableReporter()
    reporter._print = printed.append
    trial.update_last_result({"fid": 123.456, "kimg": 8.0, "classes_covered": 7, "img_per_s": 300.0, "trial_id": "abc12345"})
    reporter.should_report([trial])  # Tune asks at every step: the evaluation is seen
    trial.update_last_result({"fid": float("nan"), "checkpoint_only": True, "checkpoint_kimg": 16.0, "trial_id": "abc12345"})
    reporter.report([trial], False)
    rows = [line for line in printed[-1].splitlines() if "abc12345" in line]
    assert len(rows) == 1, printed
    row = rows[0]
    assert "123.456" in row and "16" in row and "nan" not in row.lower()
