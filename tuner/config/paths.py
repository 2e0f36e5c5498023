"""Checks of the paths given on a command line, made before anything starts.

Each check names the flag (or config field) and what is wrong in one line, raised as a ConfigError
(exit status 2 in every CLI): a folder where a file is expected, a file where a folder is expected
(also a file in the middle of the path), a broken symbolic link, an empty file, something that is not
a regular file (a FIFO would block the reader forever), a file that cannot be read, a folder that
cannot be written. Nothing is created: writability is probed with a temporary file that is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tuner.config import ConfigError


def _deepest_entry(path: Path) -> Path:
    """`path` or its deepest parent that exists as a directory entry (a broken link counts)."""
    return next(p for p in (path, *path.parents) if os.path.lexists(p))


def _broken_link(path: Path) -> str:
    return f"{path} is a broken symbolic link (to {os.readlink(path)})"


def folder_problem(path: str | Path) -> str | None:
    """Why a folder cannot be created (or used) and written at `path`; None when it can."""
    entry = _deepest_entry(Path(path))
    if entry.is_symlink() and not entry.exists():
        return _broken_link(entry)
    if not entry.is_dir():
        return f"{entry} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=entry):
            pass
    except OSError as err:
        return f"cannot write in {entry} ({err.strerror or err})"
    return None


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a non-empty regular file; None when it can."""
    path = Path(path)
    entry = _deepest_entry(path)
    if entry.is_symlink() and not entry.exists():
        return _broken_link(entry)
    if entry != path:
        return f"{entry} is not a folder" if not entry.is_dir() else "no such file"
    if path.is_dir():
        return "a folder, not a file"
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device)"
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return "an empty file" if empty else None


def output_folder(field: str, value: str | Path) -> None:
    """A folder the command creates or writes into."""
    problem = folder_problem(value)
    if problem:
        raise ConfigError(f"invalid {field}={str(value)!r}: {problem}; allowed a folder that can be created and written")


def input_file(field: str, value: str | Path, allowed: str) -> None:
    """A file the command reads."""
    problem = file_problem(value)
    if problem:
        raise ConfigError(f"invalid {field}={str(value)!r}: {problem}; allowed {allowed}")


def cache_folder(value: str | None, field: str = "cache_dir") -> None:
    """The cache folder (config field cache_dir, else $GENTUNE_CACHE; the home default is not checked)."""
    if value:
        output_folder(field, value)
    elif os.environ.get("GENTUNE_CACHE"):
        output_folder("$GENTUNE_CACHE", os.environ["GENTUNE_CACHE"])
