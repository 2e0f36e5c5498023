"""The names a study's results use, in one place: the metric and its time axis, and the trial
statuses. The Ray worker reports them, the driver schedules on them, the exports write them and the
analysis reads them."""

METRIC = "fid"  # what ASHA and the searcher minimise (each evaluation's FID)
MODE = "min"
TIME_ATTR = "kimg"  # the time axis of every result: thousands of real images seen

# A trial's status in the exports (tuner/exports.py:trial_status), in the order tables list them:
#   completed  trained its whole budget (max_kimg)
#   pruned     stopped early by ASHA
#   diverged   a loss or the FID became non-finite: ended cleanly, ranked last
#   errored    its worker failed more often than max_failures
#   running / pending  the study has not finished it (an interrupted study)
STATUSES = ("completed", "pruned", "diverged", "errored", "running", "pending")
