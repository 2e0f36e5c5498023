"""--time-budget: the stopper of every study and final-evaluation run (tuner/study/assembly.py)."""

from __future__ import annotations

import time

from ray.tune.stopper import Stopper


class TimeBudget(Stopper):
    """--time-budget as Tune's stopper, counted from this command's `fit`: no trial starts after it, running
    ones stop at it. Tune pickles its stopper into the experiment state and a restore brings that one back,
    not the one the resuming command passes: its own TimeoutStopper (time_budget_s) then comes back with the
    budget already spent, so a study ended by its budget and resumed stopped again at once, and a run started
    without a budget could not be given one. This stopper keeps no state of its own: restored, it takes the
    budget of the command that resumes (`start`), as --time-budget's help says."""

    _deadline: float | None = None  # time.monotonic() at which this process's run ends; None: no budget
    _said = False

    @classmethod
    def start(cls, budget_s: float | None) -> None:
        cls._deadline = None if budget_s is None else time.monotonic() + budget_s
        cls._said = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        spent = TimeBudget._deadline is not None and time.monotonic() >= TimeBudget._deadline
        if spent and not TimeBudget._said:
            TimeBudget._said = True
            print("[gentune] the --time-budget is spent: no new trial starts, the running ones stop", flush=True)
        return spent

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass
