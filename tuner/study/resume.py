"""Resume: restore everything or nothing (docs/ray-optuna.md §10 and §11).

Before Ray starts, `check_restorable` reads what Tune's restore will read and either repairs it or
refuses with one line (RestoreFailed, exit 2) leaving every file unchanged. During `Tuner.fit`,
`RestoreGuard` turns Tune's silent restart after a failed restore into that same error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from tuner.config import ConfigError

TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


class RestoreFailed(ConfigError):
    """Ray Tune could not restore the experiment; nothing has run and nothing was written."""


FINISHED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial it will not run again on restore
LIMITER_KEY = "name:ConcurrencyLimiter"  # SearchGenerator's entry for the limiter --max-concurrent wraps the searcher in


def _newest(folder: Path, pattern: str) -> Path | None:
    """The file Tune restores from: the largest name matching `pattern` (names carry the session time)."""
    found = sorted(folder.glob(pattern), key=lambda p: p.name)
    return found[-1] if found else None


def check_restorable(exp: Path, searched: bool, *, where: PurePosixPath | None = None, shown: str | None = None,
                     exists: Callable[[str], bool] | None = None) -> set[str]:
    """Read, before Ray starts, what Tune's restore reads; refuse with one line naming the file, or repair.

    Tune restarts an experiment from scratch when its restore fails (docs/ray-optuna.md §10), so every part of a
    local experiment's state is checked here first:
    - the newest experiment_state-*.json (every trial's record): missing or unreadable -> refused;
    - search_gen_state-*.json (Ray's pickle of how many trials the searcher has created, read with
      Tune's own loader as its restore would): its count is set to the trials in the experiment
      state when they differ (a driver killed while Tune copied its snapshot files into storage
      leaves them from two moments); unreadable -> rebuilt from an older one, else refused;
    - Tune's lock folder in the system temp (docs/ray-optuna.md §11): unusable -> refused;
    - an unfinished trial's checkpoint that Tune deleted after the snapshot named it -> the trial is set to
      resume from its newest older checkpoint (deleted_checkpoint_repairs);
    - a stopper other than gentune's TimeBudget in the experiment state (a study started before
      2026-12-05) -> replaced by a TimeBudget (legacy_stopper_repairs);
    - half-copied files of a driver killed during a copy (tuner/study/storage.py) -> removed.
    The searcher's own state (searcher-state-*.pkl) is HonestOptunaSearch's to repair: the Optuna
    journal holds the study. Repairs are printed as `gentune:` lines. Returns the trial ids of the
    experiment state. `searched`: a study with a searcher (not a grid). `exp` is a local folder holding the
    state files; for an experiment in remote storage, a copy of them (check_restorable_remote), with
    `where` the experiment's path in its storage (for the storages pickled in the generator states),
    `shown` its URI (for the messages) and `exists(TRIAL_DIR/checkpoint_N)` looking in that storage.
    """
    where = where if where is not None else exp
    shown = shown if shown is not None else str(exp)
    exists = exists or (lambda rel: (exp / rel).is_dir())

    def refuse(what: str, why: str) -> RestoreFailed:
        return RestoreFailed(f"cannot resume {shown}: {what} {why}; nothing was run or changed")

    state_file = _newest(exp, "experiment_state-*.json")
    if state_file is None:
        raise refuse("experiment_state-*.json", "is missing (Ray Tune's record of the trials)")
    try:
        state = json.loads(state_file.read_bytes())
        trial_ids, unfinished = set(), set()
        for trial_json, _metadata in state["trial_data"]:
            record = json.loads(trial_json)
            trial_ids.add(record["trial_id"])
            if record.get("status") is None:  # not a record Tune can restore: its restore will say so
                unfinished = None
            elif unfinished is not None and record["status"] not in FINISHED:
                unfinished.add(record["trial_id"])
        state["runner_data"]  # noqa: B018 (Tune's restore reads it first)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise refuse(state_file.name, f"is unreadable ({type(err).__name__}: {err})") from None
    check_lock_folder(exp)  # before any repair: a refusal changes nothing
    if searched:
        repair_search_generator_state(exp, len(state["trial_data"]), refuse, unfinished, where)
    elif unfinished is not None:
        repair_grid_state(exp, where)
    repair_experiment_state(state_file, state, exists)
    remove_partial_copies(exp)
    return trial_ids


def _position(result) -> float | None:
    """Where a checkpoint Tune tracks was made: the kimg (or checkpoint_kimg) reported with it."""
    metrics = result.metrics or {}
    value = metrics.get("kimg", metrics.get("checkpoint_kimg"))
    return None if value is None else float(value)


def repair_experiment_state(state_file: Path, state: dict, exists: Callable[[str], bool]) -> None:
    """The repairs of the experiment state in `state_file` (deleted checkpoints, a legacy stopper): the
    repaired one is written whole."""
    from tuner.config.atomic import write_whole

    lines = legacy_stopper_repairs(state) + deleted_checkpoint_repairs(state, exists)
    if lines:
        write_whole(state_file, lambda tmp: tmp.write_text(json.dumps(state)))
        for line in lines:
            print(line, file=sys.stderr, flush=True)


PICKLED = "CLOUDPICKLE_FALLBACK"  # how Tune's JSON encoder embeds an object JSON cannot hold (a cloudpickle, hex)


def pickled_class(data: bytes) -> tuple[str, str] | None:
    """(module, name) of the class a pickle of an object makes, read from its opcodes: nothing is
    unpickled (a pickle runs code). None when the bytes are no pickle."""
    import pickletools

    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":  # protocols 0-3: "module name"
                module, _, name = arg.partition(" ")
                return module, name
            if op.name == "STACK_GLOBAL":  # protocol 4+: the two strings pushed before it
                return (strings[-2], strings[-1]) if len(strings) >= 2 else None
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 (not a pickle, or cut short)
        return None
    return None


def legacy_stopper_repairs(state: dict) -> list[str]:
    """Tune pickles the stopper into the experiment state, and its restore brings that one back, not the
    one the resuming command passes (tuner/study/budget.py). Studies started before gentune gave every
    run its TimeBudget (2026-12-05) hold Tune's own: a NoopStopper (so a --time-budget given to the
    resume was ignored) or the TimeoutStopper of their own --time-budget, which comes back spent (so the
    resumed run stopped at once, every time). Such a stopper is replaced by a TimeBudget, which takes
    this command's budget. Its class is read from the pickle's opcodes, never by unpickling it; an
    unreadable one is left to Tune's restore (RestoreGuard)."""
    from ray import cloudpickle

    from tuner.study.budget import TimeBudget

    packed = state["runner_data"].get("_stopper")
    if not (isinstance(packed, dict) and packed.get("_type") == PICKLED and isinstance(packed.get("value"), str)):
        return []
    try:
        found = pickled_class(bytes.fromhex(packed["value"]))
    except ValueError:  # not hex
        return []
    if found is None or found == (TimeBudget.__module__, TimeBudget.__qualname__):
        return []
    state["runner_data"]["_stopper"] = {"_type": PICKLED, "value": cloudpickle.dumps(TimeBudget()).hex()}
    return [f"gentune: the experiment state holds Ray Tune's {found[1]} (a study started before gentune's "
            "--time-budget stopper): replaced by it, so this run has this command's --time-budget (without one "
            "it runs to its end)"]


STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json")


def check_restorable_remote(uri: str, searched: bool) -> set[str]:
    """check_restorable for an experiment in remote storage (s3://...): Tune's state files of the experiment
    are copied into a local folder, checked and repaired there as a local experiment's are (the checkpoints
    looked up in the storage itself), and each file a repair changed or added is put back whole (one PUT:
    S3 replaces an object whole). Refused, nothing is put back."""
    import fnmatch
    import tempfile

    import pyarrow.fs

    from tuner.study.remote import read_remote, write_remote

    uri = uri.rstrip("/")
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    path = path.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    names = [i.base_name for i in infos
             if i.type == pyarrow.fs.FileType.File and any(fnmatch.fnmatch(i.base_name, p) for p in STATE_FILES)]

    def exists(rel: str) -> bool:
        return fs.get_file_info(f"{path}/{rel}").type == pyarrow.fs.FileType.Directory

    with tempfile.TemporaryDirectory(prefix="gentune-resume-") as tmp:
        local = Path(tmp) / PurePosixPath(path).name
        local.mkdir()
        before = {}
        for name in names:
            before[name] = read_remote(f"{uri}/{name}") or b""
            (local / name).write_bytes(before[name])
        trial_ids = check_restorable(local, searched, where=PurePosixPath(path), shown=uri, exists=exists)
        for file in sorted(local.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                data = file.read_bytes()
                if before.get(file.name) != data:
                    write_remote(f"{uri}/{file.name}", data)
    return trial_ids


def deleted_checkpoint_repairs(state: dict, exists: Callable[[str], bool]) -> list[str]:
    """Point each unfinished trial whose snapshotted checkpoint is gone at its newest older one still in storage.

    Tune deletes a trial's checkpoint as soon as a newer one pushes it out of the kept set (the 2 best
    FIDs and the latest: run_tune's CheckpointConfig), but it rewrites its snapshot only every few
    seconds or every 2 checkpoints: a driver killed in between leaves a snapshot whose latest checkpoint
    no longer exists, and Tune's restore of that trial fails on every retry ("Could not recover from
    checkpoint as it does not exist on storage anymore"): the trial ends errored. The trial's record in
    `state` (the experiment state, its records Ray's own pickles, read and written with Ray's own functions)
    is set to resume from the newest checkpoint of its kept set that exists and is older, else from scratch;
    a newer one in storage is not used, as its results are not in the snapshot (docs/ray-optuna.md §3).
    `exists(rel)`: whether the folder TRIAL_DIR/checkpoint_N is in the experiment's storage (checked where
    the experiment is now, wherever it was when the snapshot was written). Returns the lines to print."""
    from ray.tune.experiment.trial import _TrainingRunMetadata

    def present(result) -> bool:
        path = Path(result.checkpoint.path)
        return exists(f"{path.parent.name}/{path.name}")

    lines = []
    for entry in state["trial_data"]:
        record = json.loads(entry[0])
        if record.get("status") in FINISHED or record.get("status") is None:
            continue
        try:
            metadata = _TrainingRunMetadata.from_json_state(entry[1])
        except Exception:  # noqa: BLE001 (left to Tune's restore, and RestoreGuard)
            continue
        manager = metadata.checkpoint_manager
        latest = manager.latest_checkpoint_result
        if latest is None or present(latest):
            continue
        kept = [r for r in manager._checkpoint_results if r is not latest and present(r)]
        at = _position(latest)
        older = [r for r in kept if at is None or (_position(r) is not None and _position(r) < at)]
        instead = max(older, key=lambda r: _position(r) or 0.0, default=None)
        manager._checkpoint_results = kept
        manager._latest_checkpoint_result = instead
        entry[1] = metadata.get_json_state()
        if instead is None:
            where = "no older checkpoint of it is left: it starts again from scratch"
        else:
            kimg = _position(instead)
            where = f"it resumes from {Path(instead.checkpoint.path).name}" + (f" ({kimg:g} kimg)" if kimg is not None else "")
        lines.append(f"gentune: trial {record['trial_id']}: its checkpoint {Path(latest.checkpoint.path).name} in Tune's "
                     f"snapshot was deleted after the snapshot (Tune keeps the 2 best and the latest); {where}")
    return lines


def remove_partial_copies(exp: Path) -> None:
    """Remove the files a killed driver was copying into storage (never whole; their targets are)."""
    from tuner.study.storage import PARTIAL_PREFIX

    partial = sorted(exp.rglob(f"{PARTIAL_PREFIX}*"))
    for path in partial:
        path.unlink()
    if partial:
        print(f"gentune: removed {len(partial)} half-copied file(s) the stopped driver left "
              f"({', '.join(str(p.relative_to(exp)) for p in partial[:3])}{', ...' if len(partial) > 3 else ''}); "
              "the files they were copied over are whole", file=sys.stderr, flush=True)


def reachable(obj: Any, cls: type, seen: set[int] | None = None) -> list:
    """Every instance of `cls` reachable from `obj` through containers and attributes (a state Tune
    or Optuna pickled), each once; the search stops at an instance."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, cls):
        return [obj]
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    return [found for child in children for found in reachable(child, cls, seen)]


def _storages(obj: Any) -> list:
    """Every Ray Train StorageContext reachable from `obj` (a generator state Tune pickled)."""
    from ray.train._internal.storage import StorageContext

    return reachable(obj, StorageContext)


def moved_storage(state: Any, exp: PurePosixPath) -> str | None:
    """The experiment folder a generator state creates new trials in, when that is not `exp` (the
    experiment was moved or copied since): Tune points the trials it restores at the folder it
    resumes (TuneController._restore_trials), but its search generator and grid generator create
    each new trial with the storage they pickled, which would put new trials in the old folder (into
    another copy of the study, if one is there)."""
    for storage in _storages(state):
        if storage.experiment_fs_path != str(exp):
            return storage.experiment_fs_path
    return None


def follow_move(state: Any, moved_from: str, exp: PurePosixPath) -> None:
    """Point every storage in a generator state at `exp`, as Tune's restore does for its trials."""
    print(f"gentune: the experiment was moved from {moved_from} to {exp}: new trials are written to {exp}",
          file=sys.stderr, flush=True)
    for storage in _storages(state):
        storage.storage_fs_path, storage.experiment_dir_name = str(exp.parent), exp.name


def repair_grid_state(exp: Path, where: PurePosixPath) -> None:
    """A grid's generator state (basic-variant-state) in `exp`: new trials go to `where`, the experiment's
    path in its storage (moved_storage).
    Unreadable, it is left to Tune's restore (RestoreGuard)."""
    from ray.tune.utils.util import _atomic_save

    newest = _newest(exp, "basic-variant-state-*.json")
    if newest is None:
        return
    try:
        state = _load_tune_pickle(newest)
    except Exception:  # noqa: BLE001
        return
    moved_from = moved_storage(state, where)
    if moved_from is not None:
        follow_move(state, moved_from, where)
        _atomic_save(state=state, checkpoint_dir=str(exp), file_name=newest.name, tmp_file_name=f".tmp-{newest.name}")


def _load_tune_pickle(path: Path) -> Any:
    """One of Ray's own state pickles, read with Tune's own loader (as Tune's restore reads it)."""
    import glob

    from ray.tune.utils.util import _load_newest_checkpoint

    return _load_newest_checkpoint(str(path.parent), glob.escape(path.name))


def repair_search_generator_state(exp: Path, n_trials: int, refuse, unfinished: set[str] | None,
                                  where: PurePosixPath) -> None:
    """Make the newest search_gen_state agree with the experiment state: its count of trials, and the
    trials its ConcurrencyLimiter holds live (`unfinished`: the experiment state's trials that Tune
    will run again). The limiter forwards a trial's completion to the searcher only for a live trial,
    so a restored trial it did not know would finish without being told to Optuna, and a finished one
    it still held would keep a concurrency slot for the rest of the run. And the folder new trials are
    written to: `where`, the experiment's path in its storage now. And the searcher's "finished" mark of a run Tune stopped
    before its last trial, so that the resumed study creates trials again. `unfinished` is None when the
    experiment state holds records Tune cannot restore: its restore will refuse, so only a damaged file is
    rewritten."""
    from ray.tune.utils.util import _atomic_save

    files = sorted(exp.glob("search_gen_state-*.json"), key=lambda p: p.name, reverse=True)
    if not files:
        return
    newest, state, why = files[0], None, None
    for path in files:
        try:
            state = _load_tune_pickle(path)
            break
        except Exception as err:  # noqa: BLE001
            why = why or f"{type(err).__name__}: {err}"
    if state is None:
        raise refuse(newest.name, f"is unreadable ({why}), and no older copy is readable")
    limiter = state.get(LIMITER_KEY)
    live_ok = unfinished is None or limiter is None or set(limiter.get("live_trials", ())) == unfinished
    moved_from = moved_storage(state, where) if unfinished is not None else None
    trials_to_come = state.get("total_samples") is not None and n_trials < state["total_samples"]
    # Tune marks the searcher finished when a stopper ends a run early (a --time-budget spent) and
    # saves that mark: restored as it is, the run would start no new trial, whatever budget this command gives
    stopped_early = bool(state.get("finished")) and trials_to_come
    if path == newest and state.get("counter") == n_trials and live_ok and moved_from is None and not stopped_early:
        return
    old = state.get("counter")
    state = {**state, "counter": n_trials}
    if not live_ok:
        print(f"gentune: {newest.name} held the trials {sorted(limiter.get('live_trials', ()))} as running, the "
              f"experiment state {sorted(unfinished)} (the run ended before Tune told its searcher: a driver stopped "
              "while Tune copied its snapshot, or a --time-budget spent as a trial started): set to the experiment "
              "state's", file=sys.stderr, flush=True)
        state[LIMITER_KEY] = {**limiter, "live_trials": set(unfinished), "num_unfinished_live_trials": len(unfinished),
                              "cached_results": {}}
    if moved_from is not None:
        follow_move(state, moved_from, where)
    if trials_to_come:
        state["finished"] = False
    if stopped_early:
        print(f"gentune: the run stopped after {n_trials} of {state['total_samples']} trials (its --time-budget was "
              "spent); this run starts new trials again", file=sys.stderr, flush=True)
    if path != newest:
        newest.rename(newest.with_name(newest.name + ".damaged"))
        print(f"gentune: {newest.name} is unreadable ({why}); set aside as {newest.name}.damaged and rebuilt "
              f"from {path.name}", file=sys.stderr, flush=True)
    _atomic_save(state=state, checkpoint_dir=str(exp), file_name=newest.name, tmp_file_name=f".tmp-{newest.name}")
    if path == newest and old != n_trials:
        print(f"gentune: {newest.name} counted {old} trials, the experiment state holds {n_trials} (the driver "
              f"was stopped while Tune copied its snapshot): set to {n_trials}", file=sys.stderr, flush=True)


def check_lock_folder(exp: Path) -> None:
    """Take a lock the way Tune's restore does (TempFileLock in $RAY_TMPDIR, $TMPDIR or /tmp)."""
    from ray.air._internal.filelock import TempFileLock

    try:
        with TempFileLock(str(exp / ".gentune-resume-probe"), timeout=10):
            pass
    except Exception as err:  # noqa: BLE001
        import ray._common.utils

        folder = Path(ray._common.utils.get_default_system_temp_dir()) / "_ray_lockfiles"
        raise RestoreFailed(f"cannot resume {exp}: Ray Tune's lock folder {folder} is not usable "
                            f"({type(err).__name__}: {err}); allowed a lock folder this account can write: "
                            "set TMPDIR (or RAY_TMPDIR) to a folder of your own; nothing was run or changed") from None


class RestoreGuard(logging.Filter):
    """Turns Tune's silent restart after a failed restore into an error, before any trial runs.

    Tune logs "Failed to restore the run state." from TuneController.__init__ and then starts the
    experiment afresh (unless fail_fast, which also changes how failing trials end the run). This
    filter on Tune's logger raises RestoreFailed at that log call instead: the exception leaves
    TuneController.__init__ before any trial is created or any state file is written.
    """

    def __init__(self, exp: str):
        super().__init__()
        self.exp = exp
        self.error: RestoreFailed | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the run state"):
            cause = record.exc_info[1] if record.exc_info else None
            why = f"{type(cause).__name__}: {cause}" if cause is not None else "see Ray's log above"
            self.error = RestoreFailed(f"cannot resume {self.exp}: Ray Tune could not restore the run state "
                                       f"({why}); nothing was run")
            raise self.error
        return True
