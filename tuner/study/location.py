"""Where an experiment lives: its storage path (a local folder, or s3://... on a cluster) and the local
folder the driver works in. Imports no Ray: the command line's checks run before Ray starts."""

from __future__ import annotations

from pathlib import Path

from tuner.config import ConfigError
from tuner.config.search import SearchConfig


def is_remote(search: SearchConfig) -> bool:
    return "://" in search.storage_path


def local_dir(search: SearchConfig) -> Path:
    """Where the driver keeps the study and writes exports: the experiment folder itself when it is
    local; with remote storage (s3://...) a folder beside the driver, uploaded when written."""
    return Path.home() / "gentune_studies" / search.name if is_remote(search) else Path(search.experiment_dir)


def upload(search: SearchConfig, names: list[str]) -> None:
    if not is_remote(search):
        return
    import pyarrow.fs

    for name in names:
        if not (local_dir(search) / name).is_file():
            continue
        pyarrow.fs.copy_files(str(local_dir(search) / name), f"{search.experiment_dir}/{name}")


def study_path(search: SearchConfig) -> str:
    """The Optuna journal: inside the experiment folder when that is local, else beside the driver."""
    local_dir(search).mkdir(parents=True, exist_ok=True)
    return str(local_dir(search) / "optuna.journal")


def check_writable(search: SearchConfig) -> None:
    """Fail before Ray starts when the (local) storage folder cannot be created or written.

    Probes the deepest existing folder of STORAGE_PATH/NAME with a temporary file, so nothing is left
    behind: a path below a regular file, a regular file, a broken symbolic link, a read-only mount or a
    folder without write access fail here.
    """
    from tuner.config.paths import folder_problem
    from tuner.study.storage import FULL_BYTES, existing_folder, free_bytes

    if is_remote(search):
        return
    problem = folder_problem(search.experiment_dir)
    existing = existing_folder(search.experiment_dir)
    if problem:
        raise ConfigError(f"invalid storage_path={search.storage_path!r}: {problem}; "
                          "allowed a writable local folder or s3://bucket/prefix")
    free = free_bytes(existing)
    if free < FULL_BYTES:
        raise ConfigError(f"invalid storage_path={search.storage_path!r}: {existing} has only "
                          f"{free // 1024} KiB free; allowed a folder with at least {FULL_BYTES // 1024} KiB free")


def check_space(search: SearchConfig) -> None:
    """Raise StorageFull (one clear line, no exports half-written) if the local storage is full."""
    from tuner.study.storage import StorageFull, full_message, is_full

    if not is_remote(search) and is_full(search.experiment_dir):
        raise StorageFull(full_message(search.experiment_dir)) from None
