"""Ray's OptunaSearch, made honest about early stopping and divergence.

Ray's OptunaSearch tells Optuna COMPLETE for every trial that ends without error, so a trial that
ASHA stopped at its first rung lands in the study with a low-budget FID as if it were final, and TPE
learns from it (docs/ray-optuna.md §1). This subclass tells Optuna:

- PRUNED for a trial that ended before max_kimg (its intermediate FIDs stay as reported),
- FAIL for a trial that diverged (with the reason as a user attribute),
- FAIL for a trial that errored,
- COMPLETE only for a trial that trained the whole budget.

Intermediate values are keyed by images seen (kimg x 1000), the same clock ASHA uses.

With `experiment_dir`, each result's sample grids (the `grid_*` paths run_trial reports) become
artifacts of the Optuna trial, read from the trial folder on storage (tuner/study/watch.py).

On restore after a killed driver, Optuna trials that were asked but never recorded in the
searcher's snapshot stay RUNNING for ever (docs/ray-optuna.md §3); `restore` marks them FAIL with the user
attribute `stale=True`, so nothing is left RUNNING and the dashboard shows what happened. Trials
that Tune re-runs from an older checkpoint report evaluations the study already holds (skipped), or
finished after the snapshot and were told then (their first record stands: Optuna refuses updates).
A searcher whose snapshot is older than the journal (or unreadable, and rebuilt from it) moves its
sampler's random streams past the draws it made since, so that no config is drawn twice.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sys
import warnings

import optuna
from optuna.trial import TrialState
from optuna.storages.journal._file import BaseJournalFileLock  # not exported; JournalFileBackend's lock_obj type
from ray.tune.search.optuna import OptunaSearch

from tuner.config.schema import is_checkpoint_only

log = logging.getLogger(__name__)


class HonestOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_kimg: float, experiment_dir: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_kimg = max_kimg
        self._experiment_dir = experiment_dir  # None: no sample grids as artifacts

    def _upload_grids(self, trial_id: str, result: dict | None) -> None:
        """The sample grids this result points at -> artifacts of the Optuna trial (tuner/study/watch.py)."""
        if result and getattr(self, "_experiment_dir", None):
            from tuner.study.watch import upload_grids

            upload_grids(self._ot_study, self._ot_trials[trial_id]._trial_id, self._experiment_dir, result, trial_id)

    def suggest(self, trial_id: str):
        new = trial_id not in self._ot_trials
        with warnings.catch_warnings():
            # a warm-start point keeps values outside the default ranges on purpose (tuner/config/space.py:
            # warm_start_points; WGAN's lr 5e-5): Optuna's warning about each is noise on the console
            warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range", category=UserWarning)
            config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            # recorded at once, so that the journal alone maps Ray trials to Optuna trials
            # (restore_from_dir rebuilds the searcher's state from it when that state is unreadable)
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or is_checkpoint_only(result):
            return  # (a checkpoint between evaluations carries fid=NaN only for Tune's metric check)
        if not self._stored(trial_id).state.is_finished():
            self._upload_grids(trial_id, result)
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        step = int(round(result["kimg"] * 1000))
        stored = self._stored(trial_id)
        if stored.state.is_finished() or step in stored.intermediate_values:
            return  # a trial resumed from an older checkpoint reports the same evaluation again
        self._ot_trials[trial_id].report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if self._stored(trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return
        self._upload_grids(trial_id, result)  # Tune skips on_trial_result for the result ASHA stops on
        trial = self._ot_trials[trial_id]
        result = result or {}
        value = result.get(self.metric)
        if error:
            state, values, status = TrialState.FAIL, None, "errored"
        elif result.get("diverged"):
            state, values, status = TrialState.FAIL, None, "diverged"
            trial.set_user_attr("diverge_reason", result.get("diverge_reason", ""))
        elif value is None or result.get("kimg", 0.0) < self._max_kimg - 1e-9:
            state, values, status = TrialState.PRUNED, None, "pruned"
            # Tune skips on_trial_result for the result on which ASHA stops a trial: record that
            # last FID as an intermediate value here, so TPE sees it as a partial result.
            if value is not None and math.isfinite(value):
                trial.report(value, int(round(result["kimg"] * 1000)))
        else:
            state, values, status = TrialState.COMPLETE, value, "completed"
        trial.set_user_attr("status", status)
        trial.set_user_attr("ray_trial_id", trial_id)
        try:
            self._ot_study.tell(trial, values, state=state)
        except Exception as exc:  # e.g. already finished by a stale-trial cleanup
            log.warning("optuna tell failed for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The trial as the study holds it now (not as the searcher's snapshot remembers it).

        After a killed driver, Tune re-runs from its checkpoint a trial that finished after the last
        experiment snapshot; its Optuna trial was told then, and Optuna refuses any update to it
        (UpdateFinishedTrialError), which would end the whole run: its first record stands.
        """
        return self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.follow_move()
        known = {t._trial_id for t in self._ot_trials.values()}
        self.adopt_from_study(self._ot_study)
        trials = self._ot_study.get_trials(deepcopy=False)
        if any(t._trial_id not in known for t in trials):
            advance_random_streams(self._ot_study.sampler, len(trials))
        mark_stale_trials(self._ot_study, keep={t._trial_id for t in self._ot_trials.values()})

    def adopt_from_study(self, study: optuna.Study, only_restored: bool = True) -> None:
        """Map the Optuna trials of the Ray trials being restored (expect_restored_trials) that the
        snapshot lacks, by their user attribute ray_trial_id.

        A driver killed while Tune copied its snapshot files can leave a searcher snapshot older
        than the experiment state: its Ray trials would otherwise never be told to Optuna. Trials
        asked for Ray trials that Tune will not restore are left out (marked stale)."""
        for frozen in study.get_trials(deepcopy=False):
            ray_id = frozen.user_attrs.get("ray_trial_id")
            if ray_id is None or ray_id in self._ot_trials or (only_restored and ray_id not in _restored_ray_trials):
                continue
            self._ot_trials[ray_id] = optuna.Trial(study, frozen._trial_id)
            if frozen.state.is_finished():
                self._completed_trials.add(ray_id)

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Restore the searcher's snapshot; when it is missing or unreadable, rebuild it from the study.

        Tune restarts the whole experiment when this raises (docs/ray-optuna.md §10). The Optuna
        journal holds everything the snapshot does that matters: which Ray trial each Optuna trial
        belongs to (user attribute ray_trial_id, set when the trial is asked) and which were told.
        """
        try:
            super().restore_from_dir(checkpoint_dir)
        except Exception as err:  # noqa: BLE001 (a truncated pickle raises anything)
            print(f"gentune: the searcher state in {checkpoint_dir} is unreadable ({type(err).__name__}: {err}); "
                  "rebuilt from the Optuna journal", file=sys.stderr, flush=True)
            self.rebuild_from_study()

    def follow_move(self) -> None:
        """Point the restored searcher at the study being resumed: its journal and experiment folder.

        The snapshot (and tuner.pkl) pickle the storage and folder of where the study was started. After the
        experiment folder was moved or copied, they would record every trial in the old journal (or in
        another copy's) and upload sample grids there."""
        if _resumed_paths is None:
            return
        journal, self._experiment_dir = _resumed_paths
        if journal_file(self._storage) == journal:
            return
        self._storage = make_storage(journal)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {ray_id: optuna.Trial(self._ot_study, trial._trial_id) for ray_id, trial in self._ot_trials.items()}

    def rebuild_from_study(self) -> None:
        self.follow_move()
        study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_study = study
        self._ot_trials, self._completed_trials = {}, set()
        # without the list of restored Ray trials (remote storage), every named trial is mapped; those
        # Tune does not restore stay RUNNING until the end of the run, then are marked stale
        self.adopt_from_study(study, only_restored=bool(_restored_ray_trials))
        trials = study.get_trials(deepcopy=False)
        if trials:  # the sampler is the one built afresh, at its seed
            advance_random_streams(study.sampler, len(trials))
        # warm-start points are asked first: drop those the study has already asked
        if self._points_to_evaluate:
            self._points_to_evaluate = self._points_to_evaluate[len(trials):]
        mark_stale_trials(study, keep={t._trial_id for t in self._ot_trials.values()})


_restored_ray_trials: frozenset[str] = frozenset()
_resumed_paths: tuple[str, str] | None = None  # (journal, experiment folder) of the study being resumed


def expect_restored_trials(trial_ids, journal: str | None = None, experiment_dir: str | None = None) -> None:
    """Tell the searcher restored in this (driver) process which Ray trials Tune restores (the ids in
    the experiment state), and where the study being resumed keeps its journal and experiment folder.
    Tune gives the searcher no list of its trials when it restores it, and its pickle holds the paths
    of where the study was started."""
    global _restored_ray_trials, _resumed_paths
    _restored_ray_trials = frozenset(trial_ids)
    _resumed_paths = (journal, experiment_dir) if journal is not None else None


def journal_file(storage) -> str | None:
    """The file a journal storage (make_storage) writes to."""
    return getattr(getattr(storage, "_backend", None), "_file_path", None)


def advance_random_streams(sampler: optuna.samplers.BaseSampler, n_trials: int) -> None:
    """Move the sampler's random streams past the draws it made for trials its restored state
    does not know (asked after the searcher's snapshot, or every trial when the searcher was rebuilt
    from the journal at its seed). Left as restored, its next draws would repeat theirs: the same
    config twice (a start-up trial is drawn from the stream alone). Deterministic: each stream is
    reseeded from its own next draw and the study's trial count."""
    from optuna.samplers._lazy_random_state import LazyRandomState

    from tuner.study.resume import reachable

    for stream in reachable(sampler, LazyRandomState):
        stream.rng.seed((int(stream.rng.randint(2**31 - 1)) + 1_000_003 * n_trials) % 2**32)


def mark_stale_trials(study: optuna.Study, keep: set[int] = frozenset()) -> int:
    """FAIL every RUNNING Optuna trial not in `keep`; returns how many were marked."""
    marked = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen._trial_id in keep:
            continue
        study._storage.set_trial_user_attr(frozen._trial_id, "stale", True)
        study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
        marked += 1
    return marked


def load_journal_study(journal: str, name: str) -> optuna.Study:
    """The Optuna study of an experiment's journal. It is named after the experiment as it was started
    (--name), and a folder moved or renamed since keeps that name inside its journal (the searcher Tune
    restores keeps it too), so the study a journal holds is the one; `name` only when it holds several."""
    storage = make_storage(journal)
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[0] if len(names) == 1 else name, storage=storage)


def make_storage(path: str) -> optuna.storages.BaseStorage:
    """A journal file: optuna.load_study and optuna-dashboard can read it while the search runs."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path, lock_obj=KernelJournalLock(path)))


class KernelJournalLock(BaseJournalFileLock):
    """The journal's write lock as a kernel lock (flock) on `<journal>.flock`, which the kernel releases
    when its holder ends, however it ends. Optuna's own locks (a symlink, or a file made with O_EXCL)
    outlive a driver SIGKILLed while it writes: the resumed driver then waited out their 30 s grace
    period ("It is taking longer than 10.0 seconds to acquire the lock file ... Forcibly releasing the
    lock file"), seen on resumes after a kill (docs/ray-optuna.md §13). Each acquire opens its own
    descriptor, so the driver's threads exclude each other as processes do. The file is made on the
    first write: a resume refused before it writes leaves the folder as it was."""

    def __init__(self, journal_path: str) -> None:
        self._path = f"{journal_path}.flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
