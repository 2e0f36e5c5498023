"""What a study prints: Ray's status table and gentune's one-line events, or Ray's full output.

By default (`verbose=False`):
- Ray's status table (its legacy CLIReporter: RAY_AIR_NEW_OUTPUT=0 while the study runs, verbose=1),
  at most every 30 s and at the end. A trial between evaluations whose latest report is a checkpoint
  shows that checkpoint's kimg with its last evaluation's FID. Its FID column is labelled `fid (last)`: the trial's last
  reported FID. Ray's own "Current best trial" line is left out, because it ranks trials by that
  last FID while gentune's summary ranks them by their lowest one.
- One line per event from `EventLines`, prefixed `[gentune]`: a trial started (with its searched
  parameters), stopped by ASHA at k kimg (with its FIDs), finished, diverged, errored, retried.
  An ended trial that holds the study's lowest FID so far says `new best`.
- Workers keep Ray's "Checkpoint successfully created" lines to themselves.

With `verbose=True` Ray's own output comes back as before (per-trial config and result boxes, a
line per checkpoint); gentune's event lines are printed as well.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import time
from typing import Any

from ray import tune
from ray.tune import CLIReporter

from tuner.config.schema import CHECKPOINT_KIMG, is_checkpoint_only

VERBOSE_ENV = "GENTUNE_VERBOSE"  # passed to the workers: "1" keeps Ray's per-checkpoint log lines
TABLE_METRICS = {"kimg": "kimg", "fid": "fid (last)", "classes_covered": "classes", "img_per_s": "img/s"}


class TableReporter(CLIReporter):
    """Ray's status table, without the "Current best trial" line (ranked by the last FID).

    A trial whose latest report is a checkpoint between evaluations (tuner/config/schema.py) is shown with
    its last evaluation's metrics and the checkpoint's kimg, never with the checkpoint's NaN FID."""

    def __init__(self) -> None:
        # print_intermediate_tables: Ray decides it from its process-wide verbosity when the reporter is built,
        # and a Tuner.fit earlier in the process (verbose=1) leaves that below the level of the tables
        super().__init__(metric_columns=dict(TABLE_METRICS), max_report_frequency=30, max_progress_rows=20,
                         print_intermediate_tables=True)
        self._evaluations: dict[str, dict] = {}  # trial id -> its last evaluation seen

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        return True  # no metric: no "Current best trial" line

    def _remember(self, trials) -> None:
        for trial in trials:
            if trial.last_result and not is_checkpoint_only(trial.last_result):
                self._evaluations[trial.trial_id] = trial.last_result

    def should_report(self, trials, done: bool = False) -> bool:
        self._remember(trials)  # called at every step of Tune's loop: no evaluation goes unseen
        return super().should_report(trials, done)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        self._remember(trials)
        shown = [BetweenEvaluations(t, self._evaluations.get(t.trial_id, {})) if is_checkpoint_only(t.last_result) else t
                 for t in trials]
        super().report(shown, done, *sys_info)


class BetweenEvaluations:
    """A trial as the table shows it while its latest report is a checkpoint between evaluations."""

    def __init__(self, trial, evaluation: dict) -> None:
        self._trial = trial
        checkpoint = trial.last_result
        where = {k: checkpoint[k] for k in ("node_ip", "pid", "trial_id") if k in checkpoint}
        self.last_result = {**evaluation, **where, "kimg": checkpoint[CHECKPOINT_KIMG]}

    def __getattr__(self, name: str):
        return getattr(self._trial, name)

    def __str__(self) -> str:
        return str(self._trial)


def run_config_options(verbose: bool, max_kimg: float, num_samples: int | None = None,
                       budget_s: float | None = None) -> dict[str, Any]:
    """The RunConfig arguments (verbose, progress_reporter) and the callback for the chosen console."""
    options: dict[str, Any] = {"verbose": 1, "callbacks": [EventLines(max_kimg, num_samples, budget_s)]}
    if not verbose:
        options["progress_reporter"] = TableReporter()
    return options


def apply_to_restored(tuner, verbose: bool, max_kimg: float, guards: tuple = (), num_samples: int | None = None,
                      budget_s: float | None = None) -> None:
    """--resume: the console this command asks for, not the one pickled with the experiment; and
    `guards` (callbacks) in place of the pickled callbacks of their types, which watch the folder where
    the experiment started (it may have been moved since)."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:  # Ray client mode: keep the restored settings
        return
    run_config = internal.get_run_config()
    options = run_config_options(verbose, max_kimg, num_samples, budget_s)
    run_config.verbose = options["verbose"]
    run_config.progress_reporter = options.get("progress_reporter")
    replaced = (EventLines, *(type(g) for g in guards))
    kept = [c for c in (run_config.callbacks or []) if not isinstance(c, replaced)]
    run_config.callbacks = options["callbacks"] + list(guards) + kept


@contextlib.contextmanager
def ray_output(verbose: bool):
    """While the study runs: Ray's legacy output engine (the plain table) unless verbose."""
    if verbose:
        yield
        return
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def quiet_worker_logs(env: dict[str, str]) -> None:
    """In a worker: Ray's "Checkpoint successfully created" info lines only with --verbose."""
    level = logging.INFO if env.get(VERBOSE_ENV) == "1" else logging.WARNING
    logging.getLogger("ray.train._internal.storage").setLevel(level)


def reached_kimg(result: dict | None) -> float:
    """How far a trial got: its last result's kimg, or a checkpoint's between evaluations."""
    result = result or {}
    return float(result.get(CHECKPOINT_KIMG, 0.0) if is_checkpoint_only(result) else result.get("kimg", 0.0))


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _fid(v: float | None, backbone: str) -> str:
    return f"fid[{backbone}] " + ("n/a" if v is None else f"{v:.3f}")


class EventLines(tune.Callback):
    """gentune's one-line trial events on the driver's console."""

    def __init__(self, max_kimg: float, num_samples: int | None = None, budget_s: float | None = None) -> None:
        self.max_kimg = max_kimg
        self.num_samples, self.budget_s = num_samples, budget_s
        self._best: dict[str, float] = {}  # trial_id -> its lowest finite FID
        self._study_best: float = math.inf
        self._start = time.time()
        self._ended = 0  # trials ended in this run

    def setup(self, **info) -> None:
        self._start = time.time()

    def _expected_finish(self, trials: list) -> None:
        """After the 1st, 2nd, 4th, 8th, ... trial to end in this run: when the run is expected to end,
        from the rate at which trials have ended so far (and the --time-budget, when sooner)."""
        self._ended += 1
        if self._ended & (self._ended - 1):
            return
        now = time.time()
        elapsed = now - self._start
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        left = None if self.num_samples is None else max(0, self.num_samples - ended)
        finish = now + elapsed / self._ended * left if left is not None else None
        why = f"{self._ended} trial{'s' if self._ended > 1 else ''} ended in {elapsed / 60:.1f} min"
        if self.budget_s is not None and (finish is None or finish > self._start + self.budget_s):
            finish, why = self._start + self.budget_s, why + "; the --time-budget ends it sooner"
        if finish is None:
            return
        when = datetime.datetime.fromtimestamp(finish).astimezone().strftime("%H:%M:%S %Z")
        self._say(f"expected finish {when}, in about {max(0.0, finish - now) / 60:.1f} min ({why})")

    def _say(self, text: str) -> None:
        print(f"[gentune] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = dict(trial.config or {})
        config = config.get("cell", config)
        params = " ".join(f"{k}={_value(v)}" for k, v in sorted(config.items()))
        self._say(f"trial {trial.trial_id} started: {params}".rstrip())

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._track(trial.trial_id, result)

    def _track(self, trial_id: str, result: dict | None) -> None:
        if is_checkpoint_only(result):  # a checkpoint between evaluations: no FID
            return
        fid = (result or {}).get("fid")
        if isinstance(fid, (int, float)) and math.isfinite(fid):
            self._best[trial_id] = min(fid, self._best.get(trial_id, math.inf))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._report_trial(trial)
        self._expected_finish(trials)

    def _report_trial(self, trial) -> None:
        last = dict(trial.last_result or {})
        self._track(trial.trial_id, last)
        kimg = float(last.get("kimg", 0.0))
        backbone = last.get("fid_backbone", "?")
        best = self._best.get(trial.trial_id)
        if last.get("diverged"):
            self._say(f"trial {trial.trial_id} diverged at {kimg:.2f} kimg: {last.get('diverge_reason', '')}")
            return
        fids = f"{_fid(last.get('fid'), backbone)}, best {'n/a' if best is None else f'{best:.3f}'}"
        if best is not None and best < self._study_best:
            self._study_best = best
            fids += " (new best)"
        if kimg >= self.max_kimg - 1e-9:
            self._say(f"trial {trial.trial_id} finished at {kimg:.2f} kimg: {fids}")
        else:
            self._say(f"trial {trial.trial_id} stopped by ASHA at {kimg:.2f} kimg: {fids}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        kimg = reached_kimg(trial.last_result)
        self._say(f"trial {trial.trial_id} errored at {kimg:.2f} kimg (see {trial.error_file or 'its folder'})")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        kimg = reached_kimg(trial.last_result)
        self._say(f"trial {trial.trial_id} failed at {kimg:.2f} kimg; retrying from its last checkpoint")
