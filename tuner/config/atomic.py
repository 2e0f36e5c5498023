"""Whole-file writes: a file the project writes is always its old version or its new one, never a part.

The new content goes to a temporary file beside the target (the same folder, so the same file
system), is flushed to disk, and is renamed over the target with os.replace, which is atomic on
POSIX. A crash, a kill or a full disk leaves at most the temporary file: its name starts with
`prefix` and ends with `.tmp`, and it is removed whenever the writer lives to see the failure.
This module imports nothing heavy: refusals and the driver use it before torch is loaded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def write_whole(path: str | Path, write: Callable[[Path], object], *, prefix: str = ".",
                fsync: bool = True) -> Path:
    """Call `write(tmp)` on a fresh path beside `path`, flush it (`fsync`), rename it over `path`.

    `write` creates the file itself (torch.save, to_parquet, write_bytes), so it gets the usual
    permissions. The temporary name is unique per call: concurrent writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{prefix}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
