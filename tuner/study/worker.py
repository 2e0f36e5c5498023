"""The Ray worker: `run_trial` runs one trial of a study (or of a final evaluation) inside a Ray
Tune function trainable. It installs the metric assets the driver prepared, builds the trial config
(tuner/config/__init__.py:trial_config), trains it (tuner/training/loop.py:train) with a `report` that hands each
evaluation and its checkpoint to Tune, and resumes from the checkpoint Tune restores after a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tuner.config import trial_config


def apply_env(env: dict[str, str] | None) -> None:
    """The driver's GENTUNE_* settings (data root, mirror, cache) replace whatever the worker process
    inherited when Ray started it: a stale mirror must not reach another dataset's trial. Ray's
    "Checkpoint successfully created" lines only with --verbose."""
    from tuner.study.console import quiet_worker_logs

    env = env or {}
    for key in [k for k in os.environ if k.startswith("GENTUNE_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    quiet_worker_logs(env)


def prepare_worker(base: dict[str, Any], assets: dict[str, bytes], cpus: float, env: dict[str, str] | None) -> None:
    """What every process that trains does first: apply_env, the metric assets, the torch thread count."""
    import torch

    from tuner.metrics.metrics_cache import install_assets

    apply_env(env)
    install_assets(assets, base.get("cache_dir"))
    torch.set_num_threads(max(1, int(cpus)))


def make_report(out_dir: Path):
    """The `report(record, checkpoint_dir)` a trial hands its trainer, and the TrialImages to close."""
    import ray
    from ray import tune

    from tuner.study.watch import TrialImages

    node_id = ray.get_runtime_context().get_node_id()  # which Ray node ran each evaluation
    images = TrialImages(out_dir)

    def report(record: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if record.get("checkpoint_only"):  # a checkpoint between evaluations: never a result
            tune.report(checkpoint_metrics(record, node_id), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
            return
        # Ray's progress table shows the first four metrics: put the ones a reader scans first.
        first = [k for k in ("fid", "kimg", "classes_covered", "img_per_s") if k in record]
        metrics = {k: record[k] for k in first} | {k: v for k, v in record.items() if k not in first}
        metrics.setdefault("diverged", False)
        metrics["node_id"] = node_id
        metrics.update(images.on_eval(record))  # sample grids -> TensorBoard, and grid_* paths for Optuna
        if checkpoint_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    return report, images


def run_trial(config: dict[str, Any], base: dict[str, Any], assets: dict[str, bytes], cpus: float = 1.0,
              env: dict[str, str] | None = None, adopt: tuple[str, ...] = ()) -> None:
    """`adopt` (a PBT study, tuner/study/pbt.py): the fields a restored checkpoint may differ in (another
    trial's, with perturbed settings); each evaluation then also reports the settings in force."""
    from ray import tune

    from tuner.training import loop  # looked up at call time: the fault tests wrap loop.train inside the workers
    from tuner.training.checkpoint import CheckpointError

    prepare_worker(base, assets, cpus, env)
    cfg = trial_config(base, config)
    out_dir = Path.cwd()  # the trial's working dir; Ray syncs it (samples/, metrics.jsonl) to storage
    report, images = make_report(out_dir)

    from tuner.study.staging import staging

    # Checkpoints are staged outside the working dir (tuner/study/staging.py says why, and who removes them).
    with staging(tune.get_context().get_trial_id()) as staged:
        try:
            # Resume from the checkpoint Tune restores (its latest). If that one is damaged, every retry
            # would fail the same way: try the trial's older checkpoints still in storage, newest first
            # (Tune keeps the best-FID ones besides the latest), then start again from scratch.
            # train() loads the checkpoint before its first step, so a CheckpointError means nothing was
            # reported from it.
            checkpoint = tune.get_checkpoint()
            candidates = [checkpoint, *older_checkpoints(checkpoint)] if checkpoint is not None else []
            for i, candidate in enumerate(candidates):
                resume_from = staged / "resume"
                shutil.rmtree(resume_from, ignore_errors=True)
                candidate.to_directory(str(resume_from))
                try:
                    reporter = report if not adopt else schedule_report(report, cfg, adopt, str(candidate.path))
                    loop.train(cfg, out_dir, report=reporter, resume_from=resume_from, checkpoint_dir=staged / "checkpoint",
                               **({"adopt": adopt} if adopt else {}))
                    return
                except CheckpointError as err:
                    instead = f"resuming from the older {candidates[i + 1].path}" if i + 1 < len(candidates) else "restarting the trial from scratch"
                    print(f"gentune: cannot resume from {candidate.path}: {err}; {instead}", file=sys.stderr, flush=True)
            reporter = report if not adopt else schedule_report(report, cfg, adopt, "")
            loop.train(cfg, out_dir, report=reporter, resume_from=None, checkpoint_dir=staged / "checkpoint")
        finally:  # also when ASHA stops the trial: Tune ends it with SystemExit inside report()
            images.close()


def schedule_report(report, cfg, fields: tuple[str, ...], restored_from: str):
    """PBT: `report` with the settings in force added to every evaluation (hp_lr, hp_beta1, ...), and
    `cloned_from` (the donor trial's id; '' otherwise) on the first one after restoring another trial's
    checkpoint. The record itself is left as the trainer keeps it (its history, metrics.jsonl)."""
    from ray import tune

    from tuner.study.pbt import cloned_from

    donor = [cloned_from(restored_from, tune.get_context().get_trial_id())] if restored_from else [""]
    settings = {f"hp_{name}": getattr(cfg, name) for name in fields}

    def reporter(record: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if record.get("checkpoint_only"):
            report(record, checkpoint_dir)
            return
        report({**record, **settings, "cloned_from": donor[0]}, checkpoint_dir)
        donor[0] = ""

    return reporter


def checkpoint_metrics(record: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The metrics a checkpoint between evaluations reports to Tune (docs/faults.md, "Checkpoints between
    evaluations"). Tune checks every result for the metric key (TuneController._validate_result_metrics),
    so `fid` is there, as NaN: Tune's checkpoint bookkeeping ranks a NaN score below every FID, and the
    searcher, the exports and the console skip results marked `checkpoint_only`. There is no `kimg`,
    ASHA's time attribute, so ASHA returns CONTINUE before it reads the result
    (AsyncHyperBandScheduler.on_trial_result); its position is `checkpoint_kimg`."""
    from tuner.config.schema import CHECKPOINT_KIMG, CHECKPOINT_ONLY, METRIC

    return {METRIC: float("nan"), CHECKPOINT_ONLY: True, CHECKPOINT_KIMG: record[CHECKPOINT_KIMG],
            "step": record["step"], "time_s": record["time_s"], "node_id": node_id}


def older_checkpoints(checkpoint) -> list:
    """The trial's checkpoints in storage older than `checkpoint`, newest first (any filesystem
    Ray supports: local, NFS, S3). Tune names them checkpoint_000000, checkpoint_000001, ..."""
    import pyarrow.fs
    from ray import tune

    path = checkpoint.path.rstrip("/")
    parent, name = path.rsplit("/", 1)
    try:
        infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        return []
    older = sorted((info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory
                    and info.base_name.startswith("checkpoint_") and info.base_name < name), reverse=True)
    return [tune.Checkpoint(f"{parent}/{older_name}", filesystem=checkpoint.filesystem) for older_name in older]
