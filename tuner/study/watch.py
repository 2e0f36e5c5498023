"""See a study's samples where you already look: TensorBoard and optuna-dashboard.

Worker side (`TrialImages`, used by tuner/study/worker.py:run_trial): after each evaluation, the sample
grids that the trainer has just written to the trial's working dir (samples/kimg_*.png; VAEs also
recon_kimg_*.png, interp_kimg_*.png and, with z_dim 2, latent_kimg_*.png) are

- written as TensorBoard image summaries (tensorboardX) into the trial's own folder, tags `samples`,
  `reconstructions`, `interpolation`, `latent`, global step = images seen (kimg x 1000), so that
  `tensorboard --logdir EXPERIMENT` shows them beside Ray's scalars;
- named in the result as `grid_<tag>` = the PNG's path relative to the experiment folder.

Driver side (`upload_grids`, called by tuner/study/optuna_bridge.py:HonestOptunaSearch): for each
`grid_<tag>` of a result, the PNG is read from the trial folder on storage (Ray syncs the working
dir there before a result with a checkpoint reaches the driver) and uploaded as an artifact of the
trial's Optuna trial with `optuna.artifacts.upload_artifact`. The store is EXPERIMENT/artifacts/
(FileSystemArtifactStore) beside optuna.journal, or, with s3:// storage, Optuna's
Boto3ArtifactStore under s3://bucket/prefix/NAME/artifacts/. Only the driver writes the journal.
A failed upload logs one line and never fails a trial.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("gentune.watch")

# TensorBoard tag / Optuna artifact role -> file name prefix written by tuner.training.evaluate.Evaluator
GRID_PREFIXES = {
    "samples": "kimg_",
    "reconstructions": "recon_kimg_",
    "interpolation": "interp_kimg_",
    "latent": "latent_kimg_",
}
RESULT_PREFIX = "grid_"  # result key: grid_samples, grid_reconstructions, ...


def role_of(name: str) -> str | None:
    """The tag of a grid file name (kimg_0002.png -> samples), None for other files."""
    if not name.endswith(".png"):
        return None
    for role, prefix in GRID_PREFIXES.items():
        if name.startswith(prefix):
            return role
    return None


def grid_keys(result: dict[str, Any]) -> dict[str, str]:
    """The grid paths a result points at: {tag: path relative to the experiment folder}."""
    return {k[len(RESULT_PREFIX):]: v for k, v in result.items()
            if k.startswith(RESULT_PREFIX) and k[len(RESULT_PREFIX):] in GRID_PREFIXES and isinstance(v, str) and v}


# ------------------------------------------------------------------------------------------
# worker side


class TrialImages:
    """Finds the grids written since the previous evaluation and logs them to TensorBoard.

    `on_eval(record)` returns the result keys to add ({"grid_samples": "TRIAL_DIR/samples/kimg_0002.png"}).
    Grids are found by modification time, not by name, so this does not depend on the trainer's
    evaluation schedule: a file written (or rewritten) since the previous call belongs to this one.
    """

    def __init__(self, out_dir: Path, trial_dir_name: str | None = None):
        self.out_dir = Path(out_dir)
        self.trial_dir_name = trial_dir_name if trial_dir_name is not None else self.out_dir.name
        self._seen: dict[str, int] = self._scan()  # grids already there (a retried trial's folder)
        self._writer = None

    def _scan(self) -> dict[str, int]:
        folder = self.out_dir / "samples"
        if not folder.is_dir():
            return {}
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if role_of(p.name)}

    def new_grids(self) -> dict[str, Path]:
        """{tag: path} of the grids written since the last call (the newest one per tag)."""
        now = self._scan()
        fresh = [name for name, mtime in now.items() if self._seen.get(name) != mtime]
        self._seen = now
        out: dict[str, Path] = {}
        for name in sorted(fresh, key=lambda n: now[n]):
            out[role_of(name)] = self.out_dir / "samples" / name
        return out

    def on_eval(self, record: dict[str, Any]) -> dict[str, str]:
        grids = self.new_grids()
        if not grids:
            return {}
        step = int(round(float(record["kimg"]) * 1000))
        try:
            self._log_tensorboard(grids, step)
        except Exception as err:  # images are a convenience: never fail a trial for them
            print(f"gentune: tensorboard images at step {step} not written: {' '.join(str(err).split())}", flush=True)
        return {RESULT_PREFIX + role: f"{self.trial_dir_name}/samples/{path.name}" for role, path in grids.items()}

    def _log_tensorboard(self, grids: dict[str, Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        import time

        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import image

        if self._writer is None:
            # tensorboardX's own SummaryWriter hands events to a background thread, and its flush() does not
            # wait for that queue: the last images of an evaluation could still be queued when tune.report
            # synced the folder to storage (a flaky missing image). EventsWriter writes synchronously.
            # Ray's TBXLoggerCallback writes events.out.tfevents.<second>.<host> for the same trial folder
            # (from the driver): a file of ours created in the same second would have the same name, and
            # one would overwrite the other when both are synced to storage. The suffix keeps them apart.
            self._writer = EventsWriter(str(self.out_dir / "events"), ".gentune")
        for role, path in grids.items():
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
            self._writer.write_event(Event(summary=image(role, pixels, dataformats="HWC"), step=step, wall_time=time.time()))
        self._writer.flush()  # on disk before tune.report syncs the folder to storage

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ------------------------------------------------------------------------------------------
# driver side


def artifact_location(experiment_dir: str) -> str:
    """Where the study's artifacts go: EXPERIMENT/artifacts (a local folder or s3://.../artifacts)."""
    return experiment_dir.rstrip("/") + "/artifacts"


class _PrefixedBoto3Store:
    """Optuna's Boto3ArtifactStore with every key under a prefix (it writes at the bucket root)."""

    def __init__(self, bucket: str, prefix: str):
        from optuna.artifacts import Boto3ArtifactStore

        self._store = Boto3ArtifactStore(bucket)
        self._prefix = prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str):
        return self._store.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self._store.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self._prefix + artifact_id)


@functools.lru_cache(maxsize=4)
def artifact_store(location: str):
    """The Optuna artifact store at `location` (a local folder, or s3://bucket/prefix)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        return _PrefixedBoto3Store(bucket, prefix)
    if "://" in location:
        raise ValueError(f"no Optuna artifact store for {location} (local folders and s3:// only)")
    from optuna.artifacts import FileSystemArtifactStore

    os.makedirs(location, exist_ok=True)
    return FileSystemArtifactStore(location)


def read_storage_file(experiment_dir: str, relative: str) -> bytes:
    """A file of the experiment folder, local or remote (any filesystem pyarrow knows)."""
    if "://" not in experiment_dir:
        return (Path(experiment_dir) / relative).read_bytes()
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_dir)
    with fs.open_input_stream(f"{root.rstrip('/')}/{relative}") as fh:
        return fh.read()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk: the last 8 bytes of every PNG


def read_complete_png(experiment_dir: str, relative: str, timeout_s: float = 10.0) -> bytes:
    """The PNG at `relative`, once it is complete. Ray syncs a trial's whole working dir to storage at
    every checkpoint, rewriting files already there: the grid of an earlier evaluation can be caught
    mid-copy (empty or cut short) while the trial reports its next one. A complete PNG starts with
    its signature and ends with its IEND chunk; anything else is read again until `timeout_s`."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        data = read_storage_file(experiment_dir, relative)
        if data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END):
            return data
        if time.monotonic() > deadline:
            raise ValueError(f"not a complete PNG after {timeout_s:g} s ({len(data)} bytes)")
        time.sleep(0.1)


def upload_grids(study, trial_number_id: int, experiment_dir: str, result: dict[str, Any], trial_label: str = "") -> int:
    """Upload the grids `result` points at to the Optuna trial (storage id `trial_number_id`).

    Skips files the trial already holds (same file name: a resumed trial reporting an evaluation
    again). Returns how many were uploaded; failures are logged on one line each, never raised.
    """
    grids = grid_keys(result)
    if not grids:
        return 0
    import optuna

    storage = study._storage
    uploaded = 0
    try:
        frozen = storage.get_trial(trial_number_id)
        have = {meta.filename for meta in optuna.artifacts.get_all_artifact_meta(frozen, storage=storage)}
        store = artifact_store(artifact_location(experiment_dir))
    except Exception as err:
        log.warning("gentune: artifact upload for trial %s skipped: %s", trial_label, " ".join(str(err).split()))
        return 0
    for role, relative in grids.items():
        name = relative.rsplit("/", 1)[-1]
        if name in have:
            continue
        try:
            data = read_complete_png(experiment_dir, relative)  # read first: no artifact entry without its file
            _upload_bytes(store, frozen, storage, name, data)
            uploaded += 1
        except Exception as err:
            log.warning("gentune: artifact upload of %s for trial %s failed: %s", relative, trial_label,
                        " ".join(str(err).split()))
    return uploaded


def _upload_bytes(store, frozen, storage, name: str, data: bytes) -> None:
    import tempfile

    import optuna

    with tempfile.TemporaryDirectory(prefix="gentune-artifact-") as tmp:
        path = Path(tmp) / name  # upload_artifact names the artifact after the file
        path.write_bytes(data)
        optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=frozen,
                                         storage=storage, mimetype="image/png")
