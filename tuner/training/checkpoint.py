"""Checkpoint I/O: one file, CHECKPOINT_NAME, holding everything a `Trial` needs to continue bit for
bit (models, optimisers, step, RNG states, config, history, and, for a checkpoint taken between
evaluations, the partial loss sums and counters of the evaluation interval it interrupts, so that the
next evaluation record of a resumed run equals the uninterrupted one's). torch.load(weights_only=True): tensors,
numbers, strings, dicts and lists only; an unreadable file or another config's raises CheckpointError."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from tuner.config.atomic import write_whole
from tuner.config import TrainConfig
from tuner.training.trial import Trial

CHECKPOINT_NAME = "checkpoint.pt"
# Config fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = {"max_kimg", "device", "cache_dir", "data_mirror", "gpu_memory_fraction", "checkpoint_every_kimg",
                     "checkpoint_every_min"}


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or belongs to another config."""


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file itself, given it or the folder holding it."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(trial: Trial, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "config": trial.cfg.to_dict(),
        "nets": {k: v.state_dict() for k, v in trial.nets.items()},
        "opts": {k: v.state_dict() for k, v in trial.opts.items()},
        "gen": trial.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": trial.step,
        "images_seen": trial.images_seen,
        "elapsed_s": trial.elapsed_s,
        "checkpoint_s": trial.checkpoint_s,
        "history": json.dumps(trial.history),
    }
    if trial.interval is not None:  # a checkpoint between evaluations: the interval's partial sums
        state["interval"] = trial.interval
    path = directory / CHECKPOINT_NAME
    return write_whole(path, lambda tmp: torch.save(state, tmp))  # a crash mid-write never leaves a truncated checkpoint


def _load_failure(err: Exception) -> str:
    """torch.load's reason on one line. Its weights_only refusal spans a page and suggests retrying
    with weights_only=False, which would run whatever code the file holds: keep only the reason."""
    if isinstance(err, KeyError):  # a readable file without our entries
        return f"not a gentune checkpoint (no {err} entry)"
    if isinstance(err, TypeError):  # e.g. a list where a dict belongs
        return f"not a gentune checkpoint ({err})"
    text = str(err)
    if text.startswith("Weights only load failed"):
        detail = text.split("Check the documentation", 1)[0].split("trusted source.", 1)[-1]
        detail = detail.split("WeightsUnpickler error:", 1)[-1]
        return "torch.load(weights_only=True) refused it (" + " ".join(detail.split()) + ")"
    return " ".join(text.split(". ")[0].split()) or type(err).__name__


def load_checkpoint(trial: Trial, path: Path, adopt: tuple[str, ...] = ()) -> None:
    """Restore `trial` from the checkpoint at `path`. `adopt`: config fields the checkpoint may differ
    in, the trial's own values replacing the checkpoint's in its optimisers (a PBT exploit continues
    another trial's checkpoint with perturbed settings, tuner/study/pbt.py); () for a plain resume."""
    path = checkpoint_file(path)
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a foreign pickle protocol: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=trial.device, weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except Exception as err:  # truncated zip, wrong format, missing keys, objects weights_only refuses
        raise CheckpointError(f"checkpoint file {path} is unreadable or corrupt: {_load_failure(err)}") from err
    differing = sorted(
        k for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES and k not in adopt and trial.cfg.to_dict()[k] != v
    )
    if differing:
        raise CheckpointError(f"checkpoint file {path} was written by another config (fields differ: {', '.join(differing)})")
    for k, net in trial.nets.items():
        net.load_state_dict(state["nets"][k])
    for k, opt in trial.opts.items():
        opt.load_state_dict(state["opts"][k])
    if adopt:
        apply_optimizer_settings(trial)
    trial.gen.set_state(state["gen"].cpu() if trial.device.type == "cpu" else state["gen"])
    torch.set_rng_state(state["torch_rng"].cpu())
    trial.step = state["step"]
    trial.images_seen = state["images_seen"]
    trial.elapsed_s = state["elapsed_s"]
    trial.checkpoint_s = state.get("checkpoint_s", 0.0)
    trial.history = json.loads(state["history"])
    interval = state.get("interval")  # absent: written at an evaluation (or by an older gentune)
    if interval is not None:
        interval = dict(interval)
        interval["sums"] = {k: v.to(trial.device) for k, v in interval["sums"].items()}
    trial.interval = interval


def apply_optimizer_settings(trial: Trial) -> None:
    """Set each optimiser's learning rate (and Adam's betas) to the trial's config, keeping its state
    (moments, step counts): what a PBT exploit changes in a restored trial."""
    from tuner.training.families import FAMILY_SPECS

    cfg = trial.cfg
    for name, lr in FAMILY_SPECS[cfg.family].learning_rates(cfg).items():
        for group in trial.opts[name].param_groups:
            group["lr"] = lr
            if "betas" in group and cfg.beta1 is not None and cfg.beta2 is not None:
                group["betas"] = (cfg.beta1, cfg.beta2)
