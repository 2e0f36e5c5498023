"""The names a study's results use, in one place: the metric and its time axis, and the trial
statuses. The Ray worker reports them, the driver schedules on them, the exports write them and the
analysis reads them."""

METRIC = "fid"  # what ASHA and the searcher minimise (each evaluation's FID)
MODE = "min"
TIME_ATTR = "kimg"  # the time axis of every result: thousands of real images seen
# A checkpoint taken between evaluations reports {METRIC: nan, CHECKPOINT_ONLY: True, CHECKPOINT_KIMG: k,
# step, time_s, node_id} and no TIME_ATTR (tuner/study/worker.py:checkpoint_metrics): a checkpoint, not a result.
CHECKPOINT_ONLY = "checkpoint_only"
CHECKPOINT_KIMG = "checkpoint_kimg"


def is_checkpoint_only(result) -> bool:
    """A result reported by a checkpoint between evaluations (a dict, or a row of Tune's dataframes)."""
    value = (result or {}).get(CHECKPOINT_ONLY)
    return value is True or value == 1.0  # (a dataframe holds NaN for the other rows)


def evaluations(frame):
    """The rows of a Tune results dataframe that are evaluations (checkpoint-only rows dropped)."""
    if frame is None or CHECKPOINT_ONLY not in frame:
        return frame
    return frame[~frame[CHECKPOINT_ONLY].map(lambda v: v is True or v == 1.0)].drop(columns=[CHECKPOINT_ONLY, CHECKPOINT_KIMG],
                                                                                   errors="ignore")

# A trial's status in the exports (tuner/results/exports.py:trial_status), in the order tables list them:
#   completed  trained its whole budget (max_kimg)
#   pruned     stopped early by ASHA
#   diverged   a loss or the FID became non-finite: ended cleanly, ranked last
#   errored    its worker failed more often than max_failures
#   running / pending  the study has not finished it (an interrupted study)
STATUSES = ("completed", "pruned", "diverged", "errored", "running", "pending")
