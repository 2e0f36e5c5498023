"""Remote experiment storage (s3://bucket/prefix): checked before anything starts, the Optuna journal
mirrored into it while the study runs, and local copies for the exports and the report.

- `check_remote_storage`: the bucket must exist and answer to these credentials at this endpoint,
  or the study stops with one `error:` line (exit 2) before Ray starts and before anything is
  written. Only reads are made (HeadBucket, ListObjectsV2). The endpoint and credentials are the
  ones pyarrow, Ray and boto3 all take from the environment: the AWS credential chain
  (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance profile) and, for an
  S3-compatible server (MinIO, Ceph, a test server), AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3.
- `JournalMirror`: the driver writes the Optuna journal to a local file (Optuna's journal file
  storage needs a file system with locks, which S3 is not) and a thread in the driver copies it
  to EXPERIMENT/optuna.journal in S3 within a fraction of a second of every write. Each copy is
  one PUT of the whole journal up to its last complete line: an S3 object is replaced whole (a
  reader sees the old journal or the new one, never a mix), and a line Optuna is still appending
  is left for the next copy. A lost head loses at most the writes of the last copy interval
  (docs/faults.md gives the measured lag).
- `restore_journal`: `--resume` on a head that lacks the journal (a new head, a fresh home folder)
  takes it from the experiment storage; one whose copy is behind S3's takes S3's.
- `local_copy`: an s3:// experiment folder copied to a local folder without its checkpoints, for
  `python -m tuner.results.exports` and `python -m analysis.report`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from tuner.config.atomic import write_whole
from tuner.config import ConfigError

JOURNAL = "optuna.journal"
MIRROR_INTERVAL_S = 0.25  # how often the mirror looks at the local journal (a stat; a PUT only on change)


def is_remote(path: str) -> bool:
    return "://" in str(path)


def endpoint_words() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"endpoint {url} ($AWS_ENDPOINT_URL)" if url else "AWS's own endpoint (no $AWS_ENDPOINT_URL)"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text.split(" (Request ID:")[0]


def _why(err: BaseException) -> str:
    text = str(err)
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not resolve" in text:
        return "the endpoint cannot be reached"
    if any(code in text for code in ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
                                     "SignatureDoesNotMatch", "ExpiredToken", "EXPIRED_TOKEN", "MISSING_AUTHENTICATION")):
        return "the credentials were refused"
    if "ACCESS_DENIED" in text or "AccessDenied" in text:
        return "access was denied (wrong credentials, or no permission on this bucket)"
    return "the storage cannot be read"


ALLOWED = ("allowed s3://BUCKET/PREFIX of an existing bucket that the AWS credentials in the environment can read "
           "and write (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance profile; an S3-compatible "
           "server via AWS_ENDPOINT_URL), or a local folder")


def check_remote_storage(storage_path: str, field: str = "storage_path") -> None:
    """Refuse (ConfigError, one line) remote storage that cannot be used: a query in the URI, a
    scheme pyarrow does not know, an unreachable endpoint, refused credentials, a missing bucket.
    Reads only: nothing is created."""
    bad = f"invalid {field}={storage_path!r}"
    if "?" in storage_path:
        raise ConfigError(f"{bad}: options in the URI are not supported (gentune appends the study name to it); "
                          "allowed s3://BUCKET/PREFIX, with the endpoint of an S3-compatible server in $AWS_ENDPOINT_URL")
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    except Exception as err:  # noqa: BLE001 (an unknown scheme, a malformed URI)
        raise ConfigError(f"{bad}: {_one_line(err)}; {ALLOWED}") from None
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"{bad}: no bucket in the URI; {ALLOWED}")
    where = endpoint_words()
    if isinstance(fs, pyarrow.fs.S3FileSystem):  # the same file system, answering within seconds: no 4 retries
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        scheme, _, host = url.rpartition("://") if url else ("https", "", None)
        fs = pyarrow.fs.S3FileSystem(region=fs.region, endpoint_override=host, scheme=scheme or "https",
                                     connect_timeout=5, request_timeout=20,
                                     retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=2))
    try:
        # ListObjectsV2 first: it names refused credentials (HeadBucket answers a bare 403)
        fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:  # HeadBucket
            raise ConfigError(f"{bad}: the bucket {bucket!r} does not exist at {where}; {ALLOWED} "
                              f"(create it first, e.g. aws s3 mb s3://{bucket})")
    except OSError as err:
        raise ConfigError(f"{bad}: {_why(err)} at {where} ({_one_line(err)}); {ALLOWED}") from None


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def read_remote(uri: str) -> bytes | None:
    """The object at `uri`, or None when there is none."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_remote(uri: str, data: bytes) -> None:
    """Put `data` at `uri` as one object (S3 replaces an object whole, when the upload completes)."""
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def complete_lines(data: bytes) -> bytes:
    """`data` up to its last newline: the journal without a line Optuna is still writing."""
    end = data.rfind(b"\n")
    return data[:end + 1] if end >= 0 else b""


class JournalMirror:
    """Copies a local journal file to `remote_uri` whenever it has grown, from a daemon thread.

    `max_lag_s` is an upper bound of how late each write reached the remote copy: for each copy, the
    time from the previous look at the file (which did not see the write yet) to the end of the PUT.
    `lags` keeps that bound for every copy."""

    def __init__(self, local: str | Path, remote_uri: str, interval_s: float = MIRROR_INTERVAL_S):
        self.local, self.remote_uri, self.interval_s = Path(local), remote_uri, interval_s
        self.synced = 0  # bytes of the local journal known to be in the remote copy
        self.lags: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_look = time.monotonic()

    @property
    def max_lag_s(self) -> float:
        return max(self.lags, default=0.0)

    def start(self) -> JournalMirror:
        self._thread = threading.Thread(target=self._run, name="gentune-journal-mirror", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()

    def sync(self) -> bool:
        """Copy the journal if it has grown; returns whether a copy was made. Never raises: a failed
        copy is one line on stderr, and the next look copies again."""
        with self._lock:
            look = time.monotonic()
            since, self._last_look = self._last_look, look
            try:
                if not self.local.is_file() or self.local.stat().st_size <= self.synced:
                    return False
                data = complete_lines(self.local.read_bytes())
                if len(data) <= self.synced:
                    return False
                write_remote(self.remote_uri, data)
            except Exception as err:  # noqa: BLE001
                self.errors += 1
                if self.errors in (1, 10, 100):
                    print(f"gentune: could not copy the Optuna journal to {self.remote_uri} "
                          f"({type(err).__name__}: {_one_line(err)}); retrying", file=sys.stderr, flush=True)
                return False
            self.synced = len(data)
            self.lags.append(time.monotonic() - since)
            return True

    def stop(self) -> None:
        """Stop the thread after a last copy."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.sync()


def restore_journal(local: str | Path, remote_uri: str) -> str | None:
    """Before a resume with remote storage: make the local journal the newest whole copy.

    - no local journal (a new head): S3's is copied here;
    - the local one is S3's plus more (the usual case: the same head): kept;
    - S3's is the local one plus more (this head's copy is older): S3's replaces it;
    - they differ (another head wrote both): S3's is used, the local one set aside beside it.
    Returns a line saying what was done, or None when nothing was."""
    local = Path(local)
    remote = read_remote(remote_uri)
    if remote is None:
        return None
    remote = complete_lines(remote)
    mine = local.read_bytes() if local.is_file() else None
    if mine is not None and mine.startswith(remote):
        return None
    if mine is not None and not remote.startswith(mine):
        aside = local.with_name(f"{local.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(local, aside)
        what = f"this head's journal differs from it and was set aside as {aside}"
    elif mine is not None:
        what = f"this head's copy held {len(mine)} of its {len(remote)} bytes"
    else:
        what = "this head had none"
    write_whole(local, lambda tmp: tmp.write_bytes(remote))
    return f"gentune: the Optuna journal was restored from {remote_uri} ({what})"


def local_copy(uri: str, dest: str | Path, skip_checkpoints: bool = True) -> Path:
    """Copy the experiment folder at `uri` into `dest` (created), without the trials' checkpoint_*
    folders unless asked; returns `dest`. Files are written whole."""
    import pyarrow.fs

    fs, root = _fs(uri)
    root = root.rstrip("/")
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        raise ConfigError(f"invalid EXPERIMENT_DIR={uri!r}: nothing is stored there; allowed a gentune experiment folder")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        relative = info.path[len(root) + 1:]
        parts = relative.split("/")
        if skip_checkpoints and any(p.startswith("checkpoint_") for p in parts[:-1] if p):
            continue
        if info.type == pyarrow.fs.FileType.Directory:
            if not (skip_checkpoints and parts[-1].startswith("checkpoint_")):
                (dest / relative).mkdir(parents=True, exist_ok=True)
            continue
        if info.type != pyarrow.fs.FileType.File:
            continue
        with fs.open_input_stream(info.path) as fh:
            data = fh.read()
        write_whole(dest / relative, lambda tmp, data=data: tmp.write_bytes(data), fsync=False)
    return dest
