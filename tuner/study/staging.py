"""Checkpoint staging folders of running trials, and the removal of the ones whose trial has ended.

A trial writes each checkpoint to `$TMPDIR/gentune-trial-<trial id>/` on its node before
`tune.report` copies it to storage. The folder cannot live in the trial's working dir: Ray syncs
that to storage as artifacts, and every checkpoint would be stored twice.

The trial's own `finally` cannot be the only cleanup. When ASHA (or the end of the budget) stops a
trial, Tune raises SystemExit inside `tune.report` in the trial's thread and ends the actor without
waiting for that thread (`FunctionTrainable.cleanup` calls `session.finish(timeout=0)`), and a
killed worker runs no `finally` at all. So each folder has an owner: the process holding an
exclusive `flock` on `gentune-trial-<id>.lock` beside it. The kernel releases the lock when that
process ends, however it ends, so a folder whose lock can be taken belongs to nobody and is removed:
by every trial that starts on the node, and by the driver on every node when a study ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

PREFIX = "gentune-trial-"
LOCK_SUFFIX = ".lock"
LEGACY_AGE_S = 3600  # a lock-less folder this old was left by an older gentune (owners lock before they create)


def staging_dir(trial_id: str) -> Path:
    """Where a trial's checkpoints are written before Tune copies them to storage (on the worker's node)."""
    return Path(tempfile.gettempdir()) / f"{PREFIX}{trial_id}"


def lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK_SUFFIX)


def _try_lock(path: Path) -> int | None:
    """An open fd holding the exclusive lock on `path`, or None while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # a sweeper removed the file between our open and our lock: take the new one


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


@contextlib.contextmanager
def staging(trial_id: str, timeout_s: float = 120.0) -> Iterator[Path]:
    """The trial's staging folder, empty, owned by this process until the block ends. An earlier
    attempt of the same trial that still runs on this node (an actor being stopped) is waited for."""
    folder = staging_dir(trial_id)
    lock = lock_path(folder)
    deadline = time.monotonic() + timeout_s
    while (fd := _try_lock(lock)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{lock} is still held by another process after {timeout_s:g} s")
        time.sleep(0.2)
    try:
        shutil.rmtree(folder, ignore_errors=True)  # what a killed attempt of this trial left
        sweep()  # and what other trials that ended on this node left
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _release(lock, fd)


def sweep(wait_for: Iterable[str] = (), wait_s: float = 0.0, root: Path | None = None) -> list[str]:
    """Remove the staging folders (and locks) no process owns; returns their trial ids. Folders of
    the trials in `wait_for` that are still owned are retried until `wait_s` has passed (actors
    that Tune is still stopping); others' owned folders are left alone (trials still running)."""
    root = root or Path(tempfile.gettempdir())
    waiting = set(wait_for)
    deadline = time.monotonic() + wait_s
    removed: list[str] = []
    while True:
        owned = []
        for lock in sorted(root.glob(f"{PREFIX}*{LOCK_SUFFIX}")):
            trial_id = lock.name[len(PREFIX):-len(LOCK_SUFFIX)]
            try:
                fd = _try_lock(lock)
            except OSError:
                continue  # not ours to take (another account's file): leave it
            if fd is None:
                owned.append(trial_id)
                continue
            shutil.rmtree(root / f"{PREFIX}{trial_id}", ignore_errors=True)
            _release(lock, fd)
            removed.append(trial_id)
        for folder in root.glob(f"{PREFIX}*"):  # left by gentune before the locks: no owner to ask
            if folder.is_dir() and not lock_path(folder).exists() and time.time() - folder.stat().st_mtime > LEGACY_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        if not waiting.intersection(owned) or time.monotonic() > deadline:
            return removed
        time.sleep(0.2)


def sweep_nodes(trial_ids: Iterable[str], wait_s: float = 60.0) -> None:
    """Run `sweep` on every alive node of the connected Ray cluster, waiting for `trial_ids`' owners
    to end (Tune stops actors without waiting for their trial threads)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(sweep)
    ids = list(trial_ids)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(ids, wait_s)
            for node in ray.nodes() if node.get("Alive")]
    ray.get(refs)


def sweep_after(grid, local: bool = False) -> None:
    """After `Tuner.fit()` returned `grid`: remove every node's ownerless staging folders, waiting for
    the trials of `grid` whose actors Tune is still stopping. `local`: the Ray of this process runs on
    this machine alone (a local study), so this process sweeps, as a task on its one node would; a
    task would need a new worker process (Ray's idle ones are gone by then), 0.8 s of CPU. A failure
    is one line, never an error: the study's results are already in storage."""
    import sys

    ids = [r.metrics["trial_id"] for r in grid if r.metrics and "trial_id" in r.metrics]
    try:
        if local:
            sweep(ids, wait_s=60.0)
        else:
            sweep_nodes(ids)
    except Exception as err:  # noqa: BLE001
        print(f"gentune: could not remove the trials' checkpoint staging folders: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
