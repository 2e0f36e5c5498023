"""tuner/console.py: what a resumed study keeps of the callbacks pickled with its experiment."""

from __future__ import annotations

from types import SimpleNamespace

from ray import tune

from tuner.console import EventLines, apply_to_restored, run_config_options
from tuner.storage import StorageGuard


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
