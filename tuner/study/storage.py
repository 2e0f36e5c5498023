"""A full results disk stops the study at once, with one clear error, and `--resume` continues it.

Without this, Ray's trials fail one after another with ENOSPC while the driver cannot even write
their error files, and the driver ends in a traceback (EOFError from an empty error file). The
guard checks the free space of a local storage folder before every step of Tune's loop and aborts
the run like a killed driver would, so the last experiment snapshot still lists the unfinished
trials as running and `--resume` restarts them from their checkpoints once space is freed.

The guard alone cannot keep the snapshot whole: trials fill the disk between two of its checks,
and Tune copies its snapshot into storage over the previous one, in a background thread. A copy
that meets a full disk (or a driver killed in the middle of it) left `experiment_state-*.json` cut
short, and the study could not be resumed. So the driver's copies into a local storage folder go
through `upload_atomically`: each file is written beside its target and renamed over it, and a
file in storage is always one whole version of it, the new one or the one before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs
from ray import tune

from tuner.config.atomic import write_whole

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


PARTIAL_PREFIX = ".gentune-partial-"  # a file being copied into storage, renamed over its target when whole
_ray_upload = None  # Ray's own upload, for remote storage (and excluded patterns), set by install_atomic_uploads


def replace_whole(source: Path, target: Path) -> None:
    """Copy `source` over `target` so that `target` is always whole: the old file or the new one."""
    # no fsync: Tune copies its snapshot every few seconds, and a killed driver needs none
    write_whole(target, lambda partial: shutil.copyfile(source, partial), prefix=PARTIAL_PREFIX, fsync=False)


def upload_atomically(local_path: str, fs: pyarrow.fs.FileSystem, fs_path: str, exclude: list | None = None) -> None:
    """Ray's `_upload_to_fs_path` (a file or a folder's contents into (fs, fs_path)) for a local
    storage folder, with every file replaced whole (`replace_whole`). Other storage goes to Ray's."""
    if exclude or not isinstance(fs, pyarrow.fs.LocalFileSystem):
        return _ray_upload(local_path, fs, fs_path, exclude)
    source, dest = Path(local_path), Path(fs_path)
    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        return replace_whole(source, dest)
    dest.mkdir(parents=True, exist_ok=True)
    # parents before their contents, and the experiment's own state files last, one after another:
    # a driver killed in between leaves them from two moments (tuner/study/resume.py repairs that), so the
    # window is kept short (trial folders hold every result and log file)
    for path in sorted(source.rglob("*"), key=lambda p: (p.parent == source and p.is_file(), str(p))):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.is_file():
            try:
                replace_whole(path, target)
            except FileNotFoundError:
                if path.exists():
                    raise
                # Tune removed the file while it was copied: skipped, as the next copy would skip it


def install_atomic_uploads() -> None:
    """Send the copies of Tune's syncer in this process (the driver's snapshots, trial results and
    logs) through `upload_atomically`. Idempotent."""
    global _ray_upload
    import ray.train._internal.storage as ray_storage

    if ray_storage._upload_to_fs_path is not upload_atomically:
        _ray_upload = ray_storage._upload_to_fs_path
        ray_storage._upload_to_fs_path = upload_atomically
