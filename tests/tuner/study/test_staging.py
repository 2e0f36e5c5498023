"""Checkpoint staging folders: owned by the process that holds their lock, removed once it has ended,
however it ended (tuner/study/staging.py). Real processes, real SIGKILL; no Ray needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tuner.study import staging

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def owner(root: Path, trial_id: str, then: str) -> subprocess.Popen:
    """A process that stages a checkpoint for `trial_id`, says 'ready', then runs `then` inside the block."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from tuner.study.staging import staging
        with staging({trial_id!r}) as folder:
            (folder / "checkpoint").mkdir()
            (folder / "checkpoint" / "state.pt").write_bytes(b"x" * 1000)
            print("ready", flush=True)
            {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(root), PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "ready"
    return proc


def present(root: Path, trial_id: str) -> tuple[bool, bool]:
    folder = root / f"gentune-trial-{trial_id}"
    return folder.exists(), staging.lock_path(folder).exists()


def test_the_block_removes_its_folder_and_lock(tmp_root):
    with staging.staging("a1") as folder:
        assert folder == tmp_root / "gentune-trial-a1" and folder.is_dir() and not any(folder.iterdir())
        (folder / "checkpoint").mkdir()
    assert present(tmp_root, "a1") == (False, False)


def test_a_running_owner_is_left_alone_and_a_killed_ones_folder_is_removed(tmp_root):
    proc = owner(tmp_root, "b2", "time.sleep(600)")
    try:
        assert staging.sweep() == []
        assert present(tmp_root, "b2") == (True, True)
        proc.send_signal(signal.SIGKILL)  # no finally runs
        proc.wait(timeout=30)
        assert present(tmp_root, "b2") == (True, True)
        assert staging.sweep() == ["b2"]
        assert present(tmp_root, "b2") == (False, False)
    finally:
        proc.kill()


def test_sweep_waits_for_the_named_trials_whose_owner_is_ending(tmp_root):
    # os._exit inside the block: as a Ray actor that ends while its trial thread is in report()
    proc = owner(tmp_root, "c3", "time.sleep(1.5); os._exit(0)")
    other = owner(tmp_root, "d4", "time.sleep(600)")  # another study's running trial: not waited for
    try:
        start = time.monotonic()
        assert staging.sweep(wait_for=["c3"], wait_s=60) == ["c3"]
        assert time.monotonic() - start < 30
        assert proc.wait(timeout=30) == 0
        assert present(tmp_root, "c3") == (False, False)
        assert present(tmp_root, "d4") == (True, True)
        assert staging.sweep(wait_for=["d4"], wait_s=0.5) == []  # a deadline, then the owned folder stays
    finally:
        other.kill()
        proc.kill()


def test_a_new_attempt_waits_for_the_old_one_and_sweeps_what_ended_trials_left(tmp_root):
    dead = owner(tmp_root, "e5", "os._exit(0)")
    dead.wait(timeout=30)
    old = owner(tmp_root, "f6", "time.sleep(1.0); os._exit(0)")
    with staging.staging("f6") as folder:  # blocks until the old attempt's process has ended
        assert old.poll() is not None
        assert not (folder / "checkpoint").exists()  # the old attempt's files are gone
        assert present(tmp_root, "e5") == (False, False)  # swept when this attempt started
    assert present(tmp_root, "f6") == (False, False)


def test_an_attempt_that_cannot_get_the_lock_says_which(tmp_root):
    proc = owner(tmp_root, "g7", "time.sleep(600)")
    try:
        with pytest.raises(RuntimeError, match=r"gentune-trial-g7\.lock is still held by another process after 0\.5 s"):
            with staging.staging("g7", timeout_s=0.5):
                pass
        assert present(tmp_root, "g7") == (True, True)
    finally:
        proc.kill()


def test_folders_an_older_gentune_left_without_a_lock_are_removed_once_old(tmp_root):
    old, new = tmp_root / "gentune-trial-h8", tmp_root / "gentune-trial-i9"
    for folder in (old, new):
        (folder / "checkpoint").mkdir(parents=True)
    hour_ago = time.time() - staging.LEGACY_AGE_S - 10
    os.utime(old, (hour_ago, hour_ago))
    staging.sweep()
    assert not old.exists() and new.exists()
