"""One trial, top to bottom: config -> data -> models -> training steps -> evaluations.

`train(cfg, out_dir, report)` is the whole trial. It knows nothing about Ray: the Ray worker
passes a `report(metrics, checkpoint_dir)` callback (tuner/study/worker.py), the CLI passes one that
prints (tuner/train.py). Training length is counted in kimg, thousands of real images seen by the
discriminator (GAN) or by the model (VAE/AE). At every evaluation point (every `eval_every_kimg`,
each of `eval_at_kimg`, and the end) it

  1. samples `fid_samples` images and scores them (tuner/training/evaluate.py: FID against the test split's
     statistics, plus class-diversity metrics from the domain classifier),
  2. appends one line to OUT/metrics.jsonl and writes sample grids to OUT/samples/,
  3. saves OUT/checkpoint/checkpoint.pt (tuner/training/checkpoint.py; the Ray worker stages it outside OUT,
     see tuner/study/staging.py),
  4. calls `report`.

Between evaluations it also checkpoints on its own schedule (`checkpoint_every_kimg`, on a fixed grid
of images seen, and `checkpoint_every_min` of the trial's time since the last checkpoint): it saves
the checkpoint, with the partial loss sums of the evaluation interval in progress, and calls
`report(checkpoint_record(...), checkpoint_dir)` with a record that has `checkpoint_only=True` and
no `kimg` or `fid`: nothing is scored or written to metrics.jsonl. Where the checkpoints fall does not
change the training: a run resumed from any of them continues bit for bit on the CPU.

A run whose losses or FID become non-finite ends cleanly: its last record has `diverged=True` and a
`diverge_reason`, and its FID is +inf so schedulers rank it last. It is not an exception, so a
study treats it as a finished, failed trial instead of retrying it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuner.config.atomic import write_whole
from tuner.training.checkpoint import load_checkpoint, save_checkpoint
from tuner.config import TrainConfig
from tuner.data import training_images
from tuner.training.evaluate import Evaluator
from tuner.training.steps import STEPS
from tuner.training.trial import build_trial, pick_device

Report = Callable[[dict[str, Any], Path | None], None]

LOSS_LIMIT = 1e6  # |loss| above this counts as divergence
DIVERGENCE_CHECK_EVERY = 10  # steps between (synchronising) finiteness checks


def kimg_tag(kimg: float) -> str:
    return f"{kimg:04.0f}" if float(kimg).is_integer() else f"{kimg:08.3f}"


def eval_points(cfg: TrainConfig) -> list[int]:
    """Images seen at which to evaluate: every eval_every_kimg (if > 0), each eval_at_kimg, and max_kimg."""
    target = round(cfg.max_kimg * 1000)
    points = {target} | {round(k * 1000) for k in cfg.eval_at_kimg}
    every = round(cfg.eval_every_kimg * 1000)
    if every > 0:
        points |= set(range(every, target, every))
    return sorted(p for p in points if 0 < p <= target)


def next_point(points: list[int], seen: int) -> int | None:
    """The first evaluation point past `seen` images (None: training is done)."""
    return next((p for p in points if p > seen), None)


def next_checkpoint(cfg: TrainConfig, seen: int) -> int | None:
    """The first point of the checkpoint_every_kimg grid past `seen` images (None: off)."""
    every = round(cfg.checkpoint_every_kimg * 1000)
    return (seen // every + 1) * every if every > 0 else None


def checkpoint_record(trial) -> dict[str, Any]:
    """What a checkpoint between evaluations reports: where it is, never a result (tuner/config/schema.py)."""
    return {"checkpoint_only": True, "checkpoint_kimg": trial.kimg, "step": trial.step, "time_s": trial.elapsed_s}


def write_run_files(trial, out_dir: Path) -> Path:
    """A run's config.json, and its metrics.jsonl holding the trial's history (a resumed run drops the
    evaluations made after its checkpoint), each written whole. Returns the metrics.jsonl path."""
    write_whole(out_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(trial.cfg.to_dict(), indent=2)))
    history_text = "".join(json.dumps(r) + "\n" for r in trial.history)
    return write_whole(out_dir / "metrics.jsonl", lambda tmp: tmp.write_text(history_text))


def diverged_record(trial, reason: str) -> dict[str, Any]:
    """The last record of a run that diverged: FID +inf, so that schedulers rank it last."""
    cfg = trial.cfg
    return {"kimg": trial.kimg, "step": trial.step, "precision": trial.precision, "fid": float("inf"),
            "fid_backbone": cfg.fid_backbone, "fid_samples": cfg.fid_samples, "time_s": trial.elapsed_s,
            "diverged": True, "diverge_reason": reason}


def check_divergence(sums: dict[str, torch.Tensor | float]) -> str | None:
    for key, value in sums.items():
        v = float(value)
        if not math.isfinite(v):
            return f"{key} became {v}"
        if abs(v) > LOSS_LIMIT * DIVERGENCE_CHECK_EVERY * 10:
            return f"{key} exploded (|sum| {abs(v):.3g})"
    return None


def train(cfg: TrainConfig, out_dir: str | Path, report: Report | None = None, resume_from: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, progress: Callable[[int], None] | None = None,
          adopt: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Train one config, evaluating every eval_every_kimg; returns the list of evaluation records.

    Checkpoints go to `checkpoint_dir` (default OUT/checkpoint), overwritten at each evaluation.
    `progress(images_seen)`, if given, is called after every training step (tuner/training/progress.py).
    `adopt`: the config fields `resume_from` may differ in (PBT's exploit, tuner/training/checkpoint.py:load_checkpoint).
    """
    cfg = cfg.resolved()
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoint"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)
    images = training_images(cfg.dataset, device, cfg.data_mirror, cfg.train_limit)
    evaluator = Evaluator(cfg, device)  # a first-time domain classifier / statistics are not trial time
    trial = build_trial(cfg, device)
    if resume_from is not None:
        load_checkpoint(trial, Path(resume_from), adopt=adopt)
    metrics_path = write_run_files(trial, out_dir)

    step_fn = STEPS[cfg.family]
    target = round(cfg.max_kimg * 1000)
    points = eval_points(cfg)
    next_eval = next_point(points, trial.images_seen) or target
    # the evaluation interval in progress: empty at an evaluation, restored from a checkpoint between two
    interval, trial.interval = trial.interval or {}, None
    sums: dict[str, torch.Tensor] = dict(interval.get("sums", {}))
    interval_steps, interval_images = interval.get("steps", 0), interval.get("images", 0)
    interval_train_s = interval.get("train_s", 0.0)
    next_ckpt = next_checkpoint(cfg, trial.images_seen)
    ckpt_every_s = cfg.checkpoint_every_min * 60
    last_ckpt_s = trial.elapsed_s  # the trial's time at its last checkpoint (or at its start)
    diverged: str | None = None

    while trial.images_seen < target:
        t0 = time.perf_counter()
        seen_before = trial.images_seen
        for key, value in step_fn(trial, images).items():
            sums[key] = sums.get(key, 0) + value
        trial.step += 1
        interval_steps += 1
        if interval_steps % DIVERGENCE_CHECK_EVERY == 0:
            diverged = check_divergence(sums)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        interval_train_s += dt
        trial.elapsed_s += dt
        interval_images += trial.images_seen - seen_before
        if progress is not None:
            progress(trial.images_seen)
        at_eval = trial.images_seen >= next_eval
        if diverged is None and at_eval:
            diverged = check_divergence(sums)
        if diverged is not None:
            break
        if not at_eval:
            due_kimg = next_ckpt is not None and trial.images_seen >= next_ckpt
            due_time = ckpt_every_s > 0 and trial.elapsed_s - last_ckpt_s >= ckpt_every_s
            if (due_kimg or due_time) and trial.images_seen < target:
                t_ckpt = time.perf_counter()
                trial.interval = {"sums": {k: torch.as_tensor(v).detach().clone() for k, v in sums.items()},
                                  "steps": interval_steps, "images": interval_images, "train_s": interval_train_s}
                save_checkpoint(trial, ckpt_dir)
                trial.interval = None
                if report is not None:
                    report(checkpoint_record(trial), ckpt_dir)
                spent = time.perf_counter() - t_ckpt
                trial.elapsed_s += spent
                trial.checkpoint_s += spent
                last_ckpt_s = trial.elapsed_s
                next_ckpt = next_checkpoint(cfg, trial.images_seen)
            continue

        t_eval = time.perf_counter()
        record: dict[str, Any] = {"kimg": trial.kimg, "step": trial.step, "precision": trial.precision}
        record.update({k: v.item() / interval_steps for k, v in sums.items()})
        # Evaluation must not move the training RNG (dropout draws from it), or a resumed run would
        # differ from an uninterrupted one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            record.update(evaluator.evaluate(trial, out_dir, kimg_tag(next_eval / 1000)))
        trial.elapsed_s += time.perf_counter() - t_eval
        record["time_s"] = trial.elapsed_s
        record["checkpoint_s"] = trial.checkpoint_s  # of time_s, spent on checkpoints between evaluations
        record["img_per_s"] = interval_images / interval_train_s
        if not math.isfinite(record["fid"]):
            diverged = f"fid became {record['fid']}"
            break
        trial.history.append(record)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        save_checkpoint(trial, ckpt_dir)
        if report is not None:
            report(record, ckpt_dir)
        sums, interval_steps, interval_images, interval_train_s = {}, 0, 0, 0.0
        next_eval = next_point(points, trial.images_seen) or target
        last_ckpt_s = trial.elapsed_s
        next_ckpt = next_checkpoint(cfg, trial.images_seen)

    if diverged is not None:
        record = diverged_record(trial, diverged)
        trial.history.append(record)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if report is not None:
            report(record, None)
    return trial.history
