"""The Ray side of `--scheduler pbt` (tuner/study/pbt.py says what it does): gentune's PopulationBasedTraining
and the callback that keeps a paused trial's result files. Imported only when a PBT study starts (it
imports Ray; tuner/study/pbt.py does not, so the flags are checked before Ray is imported)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from tuner.study.pbt import (PBT_LOGGER, ClipToRanges, _plain, bounds, change_words, explore_beta2, mutated_fields, mutations,
                       perturbation_kimg, record_exploit)
from tuner.config.schema import is_checkpoint_only

PBT_TIME = "pbt_point_kimg"  # the time PBT schedules on (GentunePBT.on_trial_result); never reported


class GentunePBT(PopulationBasedTraining):
    """Ray's PBT with gentune's records: checkpoints between evaluations are no results, explore stays
    inside the space, and every exploit is printed and appended to EXPERIMENT/pbt_exploits.jsonl."""

    def __init__(self, *args, fields: tuple[str, ...], bounds_: dict[str, tuple[float, float, bool]],
                 experiment_dir: str | None, max_kimg: float, quiet: bool = True, **kwargs):
        super().__init__(*args, custom_explore_fn=ClipToRanges(bounds_), **kwargs)
        self._max_kimg = max_kimg
        self._quiet = quiet
        self._fields = tuple(fields)
        self._bounds = dict(bounds_)
        self._experiment_dir = experiment_dir

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._quiet:  # (again after a --resume, which unpickles this scheduler)
            import logging

            logging.getLogger(PBT_LOGGER).setLevel(logging.WARNING)
        if is_checkpoint_only(result):  # no kimg, FID NaN: a checkpoint, never a result to rank
            return self.CONTINUE
        if result.get("kimg", 0.0) >= self._max_kimg - 1e-9 or result.get("diverged"):
            return self.CONTINUE  # its last result: the trial ends, nothing left to exploit into
        # PBT's clock: the perturbation point this evaluation belongs to. An evaluation lands on the first
        # step at or past its point (1.024 kimg for 1.0), and Ray's PBT compares the time since the last
        # perturbation with the interval: 1.504 - 1.024 < 0.5 would skip the point at 1.5.
        every = self._perturbation_interval
        point = math.floor(result.get("kimg", 0.0) / every + 1e-9) * every
        decision = super().on_trial_result(tune_controller, trial, {**result, PBT_TIME: point})
        self._next_sync_ahead()
        return decision

    def _next_sync_ahead(self) -> None:
        """Synchronous PBT sets its next sync point to max(previous + interval, the latest member's
        time) and lets only members strictly behind it run: when every member has reached that point
        (a resumed study, whose fresh scheduler starts at the first point while the population has
        passed it, or evaluations overshooting their point), none may run and the study hangs. Move
        the next sync point past them, to the next multiple of the interval (docs/ray-optuna.md §12)."""
        live = [state for t, state in self._trial_state.items() if not t.is_finished()]
        times = [state.last_train_time for state in live]
        if times and min(times) >= self._next_perturbation_sync:
            every = self._perturbation_interval
            self._next_perturbation_sync = (math.floor(max(times) / every + 1e-9) + 1) * every

    def choose_trial_to_run(self, tune_controller):
        if self._synch:
            self._release_abandoned_sync(tune_controller)
        return super().choose_trial_to_run(tune_controller)

    def _release_abandoned_sync(self, tune_controller) -> None:
        """Synchronous PBT ranks the population only in on_trial_result, when the last member behind
        the sync point reports reaching it. A member can end without ever reporting that point: its
        last result (CONTINUE above, it is not ranked), a divergence, an error; after a --resume, whose
        fresh scheduler knows nothing of the members' progress, the member the others wait for may be
        one perturbation point ahead and report its last result next. The members waiting at the point
        are then PAUSED at or past it, choose_trial_to_run lets only members behind it run, and nothing
        ever reports again: Tune's loop spins (is_finished / step) for ever. When no live member runs or
        waits to start and every one is paused at or past the point, the point is reached: rank them
        there, as the last member's result would have, and move the point on (docs/ray-optuna.md §12)."""
        from ray.tune.experiment import Trial

        live = [t for t in tune_controller.get_live_trials() if not t.is_finished() and t in self._trial_state]
        if not live or any(t.status != Trial.PAUSED for t in live):
            return  # a member runs (or starts): its next result moves the sync on
        if any(self._trial_state[t].last_train_time < self._next_perturbation_sync for t in live):
            return  # Ray lets this one run
        lower, upper = self._quantiles()
        middle = [t for t in live if t not in lower and t not in upper]
        for t in upper + middle + lower:  # the order of Ray's ranking: donors' checkpoints first
            state = self._trial_state[t]
            state.last_perturbation_time = state.last_train_time
            self._checkpoint_or_exploit(t, tune_controller, upper, lower)
        times = [self._trial_state[t].last_train_time for t in live]
        self._next_perturbation_sync = max(self._next_perturbation_sync + self._perturbation_interval, max(times))
        self._next_sync_ahead()

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        before = self._num_perturbations
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
        if trial in lower_quantile and self._num_perturbations == before:  # Ray found no donor checkpoint
            kimg = (self._trial_state[trial].last_result or {}).get("kimg")
            print(f"[gentune] trial {trial.trial_id} ranked in the bottom quarter at {kimg:g} kimg, but the trial it "
                  "drew to clone had no checkpoint yet: it continues as it is", flush=True)

    def _get_new_config(self, trial, trial_to_clone):
        new_config, operations = super()._get_new_config(trial, trial_to_clone)
        if "beta2" in self._bounds and "beta2" in new_config and operations.get("beta2", "").startswith("*"):
            old = trial_to_clone.config.get("beta2")
            if isinstance(old, (int, float)):
                low, high, _ = self._bounds["beta2"]
                # undo the clip of ClipToRanges first: the factor is new / old before clipping
                factor = float(operations["beta2"].lstrip("* ").strip() or 1.0)
                new_config["beta2"] = explore_beta2(old, old * factor, low, high)
        return new_config, operations

    def _exploit(self, tune_controller, trial, trial_to_clone):
        donor_state = self._trial_state[trial_to_clone]
        own_state = self._trial_state[trial]
        old = {k: _plain(trial.config.get(k)) for k in self._fields}
        donor = {k: _plain(trial_to_clone.config.get(k)) for k in self._fields}
        super()._exploit(tune_controller, trial, trial_to_clone)
        new = {k: _plain(trial.config.get(k)) for k in self._fields}
        last = donor_state.last_result or {}
        own = own_state.last_result or {}
        event = {"trial_id": trial.trial_id, "donor_id": trial_to_clone.trial_id,
                 "kimg": _plain(last.get("kimg")), "donor_fid": _plain(last.get("fid")),
                 "trial_kimg": _plain(own.get("kimg")), "trial_fid": _plain(own.get("fid")),
                 "old": old, "donor": donor, "new": new}
        print(f"[gentune] trial {trial.trial_id} cloned trial {trial_to_clone.trial_id} at "
              f"{event['kimg']:g} kimg (fid {event['donor_fid']:.3f} vs its {event['trial_fid']:.3f}), "
              f"{change_words(donor, new, self._fields)}", flush=True)
        record_exploit(self._experiment_dir, event)


def make_scheduler(search, base, ranges: dict[str, Any]):
    """The PBT scheduler of a study: time in kimg, perturbations every perturbation_kimg."""
    import logging

    if not search.verbose:  # gentune's one line per exploit replaces Ray's paragraph
        logging.getLogger(PBT_LOGGER).setLevel(logging.WARNING)

    fields = mutated_fields(base.family)
    limits = bounds(ranges, base.family)
    return GentunePBT(
        time_attr=PBT_TIME,  # the perturbation point of each result's kimg; metric and mode: the TuneConfig's
        perturbation_interval=perturbation_kimg(search, base),
        hyperparam_mutations=mutations(limits),
        quantile_fraction=0.25,
        resample_probability=0.25,
        require_attrs=False,
        log_config=False,  # pbt_exploits.jsonl is the record
        # synchronous: the whole population is ranked at each perturbation point, once every member has
        # reached it (asynchronous PBT ranks a member against the others' last scores, whatever their
        # kimg, and exploits only when the worst member happens to be the one reporting)
        synch=True,
        quiet=not search.verbose,
        fields=fields,
        bounds_=limits,
        experiment_dir=search.experiment_dir,
        max_kimg=base.max_kimg,
    )


class KeepResultFiles(tune.Callback):
    """A Tune callback: before a trial (re)starts, its result files in the driver's staging folder are
    copied to storage. PBT pauses and restarts its members; at each start Tune's JSON and CSV loggers
    copy result.json and progress.csv from storage over the staged ones (ray/tune/logger/json.py:
    log_trial_start), and storage holds them only as of the last experiment snapshot: every result
    reported since would be lost from the trial's record (and from history.parquet). A file in storage
    is never replaced by a shorter one."""

    FILES = ("result.json", "progress.csv")

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        import pyarrow.fs

        from tuner.study.storage import upload_atomically

        local = Path(trial.local_path)
        fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        for name in self.FILES:
            source = local / name
            if not source.is_file():
                continue
            target = f"{folder}/{name}"
            if isinstance(fs, pyarrow.fs.LocalFileSystem):
                if Path(target).is_file() and Path(target).stat().st_size > source.stat().st_size:
                    continue
            upload_atomically(str(source), fs, target)
