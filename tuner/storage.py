"""A full results disk stops the study at once, with one clear error, and `--resume` continues it.

Without this, Ray's trials fail one after another with ENOSPC while the driver cannot even write
their error files, and the driver ends in a traceback (EOFError from an empty error file). The
guard checks the free space of a local storage folder before every step of Tune's loop and aborts
the run like a killed driver would, so the last experiment snapshot still lists the unfinished
trials as running and `--resume` restarts them from their checkpoints once space is freed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune

FULL_BYTES = 256 * 1024  # less than this free: a checkpoint or a snapshot would not fit


class StorageFull(RuntimeError):
    """The local storage folder ran out of space during a study."""


def existing_folder(path: str | Path) -> Path:
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or its deepest existing parent)."""
    return shutil.disk_usage(existing_folder(path)).free


def full_message(folder: str | Path) -> str:
    free = free_bytes(folder)
    return (f"storage_path {existing_folder(folder)} is full ({free // 1024} KiB free, "
            f"needs at least {FULL_BYTES // 1024} KiB): the study stopped; the trials finished so far "
            "are kept; free some space and run the same command with --resume to continue")


def is_full(folder: str | Path) -> bool:
    return free_bytes(folder) < FULL_BYTES


class StorageGuard(tune.Callback):
    """Raise StorageFull in the driver as soon as the local storage folder is (nearly) full."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if is_full(self.folder):
            raise StorageFull(full_message(self.folder))
