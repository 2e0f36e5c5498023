"""Tune's copies of its snapshot into a local storage folder leave every file whole.

A write that fails half-way is made real with RLIMIT_FSIZE: every write past 64 KiB fails with
EFBIG, as a write to a full disk fails with ENOSPC. The copies are made by Ray's own syncer (the
one that copies the driver's staging folder into storage during a study), in a subprocess that
holds the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SYNC = """
import resource, signal, sys
import pyarrow.fs
from ray.train._internal.storage import _FilesystemSyncer
from tuner.study.storage import install_atomic_uploads

staging, dest, atomic, limit = sys.argv[1], sys.argv[2], sys.argv[3] == "atomic", int(sys.argv[4])
if atomic:
    install_atomic_uploads()
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=0, sync_timeout=60)
syncer.sync_up(staging, dest)
try:
    syncer.wait()
except Exception as err:
    print(f"failed: {err}")
else:
    print("copied")
"""


def sync_up(staging: Path, dest: Path, atomic: bool, limit: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-c", SYNC, str(staging), str(dest), "atomic" if atomic else "ray",
                           str(limit)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot(tmp_path) -> tuple[Path, Path]:
    """A storage folder holding a study's snapshot, and the driver's staging folder with the next one
    (a 256 KiB experiment state, a trial's results, a new trial's folder)."""
    dest, staging = tmp_path / "storage" / "exp", tmp_path / "staging"
    for folder, version in ((dest, 1), (staging, 2)):
        (folder / "trial_a").mkdir(parents=True)
        records = [json.dumps({"trial_id": f"t{i}", "version": version, "pad": "x" * 200}) for i in range(version * 600)]
        (folder / "experiment_state-2026.json").write_text(json.dumps({"trial_data": records}))
        (folder / "trial_a" / "result.json").write_text(f'{{"kimg": {version}}}\n' * version)
    (staging / "trial_b" / "checkpoint_000000").mkdir(parents=True)
    (staging / "trial_b" / "params.json").write_text("{}")
    assert (staging / "experiment_state-2026.json").stat().st_size > 256 * 1024
    return staging, dest


def test_ray_s_own_copy_cuts_the_snapshot_short_when_a_write_fails(snapshot):
    # the failure this module guards against, shown with Ray's own upload (and the limit really bites)
    staging, dest = snapshot
    assert sync_up(staging, dest, atomic=False, limit=64 * 1024).startswith("failed:")
    with pytest.raises(ValueError):
        json.loads((dest / "experiment_state-2026.json").read_bytes())


def test_a_failed_copy_leaves_every_file_whole_as_it_was(snapshot):
    staging, dest = snapshot
    before = files(dest)
    out = sync_up(staging, dest, atomic=True, limit=64 * 1024)
    assert out.startswith("failed:") and "File too large" in out
    after, new = files(dest), files(staging)
    assert after["experiment_state-2026.json"] == before["experiment_state-2026.json"]  # the old version, whole
    for name, content in after.items():  # every file is one whole version: the one before or the new one
        assert content in (before.get(name), new.get(name)), name
    assert not [name for name in after if ".gentune-partial-" in name]  # no half-written file left behind


def test_a_copy_replaces_every_file_with_its_new_version_and_adds_new_folders(snapshot):
    staging, dest = snapshot
    assert sync_up(staging, dest, atomic=True) == "copied"
    assert files(dest) == files(staging)
    assert (dest / "trial_b" / "checkpoint_000000").is_dir()  # an empty folder is copied as Ray copies it


def test_remote_storage_goes_through_ray_s_own_upload(tmp_path, monkeypatch):
    import ray.train._internal.storage as ray_storage

    import tuner.study.storage as storage

    calls = []
    monkeypatch.setattr(ray_storage, "_upload_to_fs_path", lambda *args: calls.append(args))
    monkeypatch.setattr(storage, "_ray_upload", None)
    storage.install_atomic_uploads()
    storage.install_atomic_uploads()  # idempotent: Ray's upload is kept, not the wrapper
    assert ray_storage._upload_to_fs_path is storage.upload_atomically and storage._ray_upload is not None
    fs = pyarrow_sub_tree(tmp_path)
    ray_storage._upload_to_fs_path(str(tmp_path), fs, "exp", None)
    assert calls == [(str(tmp_path), fs, "exp", None)]


def pyarrow_sub_tree(path: Path):
    """A file system that is not pyarrow's LocalFileSystem (as s3:// or gs:// storage is not)."""
    import pyarrow.fs

    return pyarrow.fs.SubTreeFileSystem(str(path), pyarrow.fs.LocalFileSystem())
