"""The study's own options: `SearchConfig` (the flags of `python tuner/search.py` that are not a trial's),
the trial defaults a study runs with, and the command line that joins both. What `--help` prints, what the
README's glossary lists and what a study runs with all come from here."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config import ConfigError, TrainConfig, parse_duration
from tuner.config.cli import ArgumentParser, add_arguments

USAGE = """Search: Ray Tune runs trials, Optuna's TPE proposes configs, ASHA stops weak ones on FID.

    python tuner/search.py [flags]                               # local: one GPU if there is one, else CPU
    ray submit cluster.yaml tuner/search.py -- --address auto [flags]   # on a Ray cluster

Flags: every field of SearchConfig below, plus every field of tuner.config.TrainConfig, which
sets the base config each trial starts from (the searched parameters override it).

The path of one study:
  flags -> SearchConfig + TrainConfig (validated before anything starts)
  -> prepare the metrics once on the driver (domain classifier, real-image statistics)
  -> Ray Tune: HonestOptunaSearch (TPE, define-by-run space) + ASHA on fid over kimg
  -> each trial: tuner/study/worker.py:run_trial -> tuner/training/loop.py:train -> tune.report at each evaluation
  -> exports (trials.csv/.parquet, history.parquet, best.json) and a summary.
"""

SAMPLERS = ("tpe", "tpe-independent", "random")
SCHEDULERS = ("asha", "pbt", "pb2")
PB2_MISSING = ("scheduler='pb2': Ray's PB2 needs GPy and scikit-learn, which gentune does not install; "
               "allowed asha or pbt")


@dataclass(frozen=True)
class SearchConfig:
    """Options of the study itself; each trial's options are TrainConfig's."""

    num_samples: int = 16
    """Number of trials to run (ignored with --grid, which runs exactly its cells)."""
    losses: tuple[str, ...] = ()
    """GAN losses to search over (e.g. --losses hinge wgan-gp). Default: every registered loss."""
    grace_kimg: float = 8.0
    """ASHA grace period: no trial is stopped before this many kimg. Rungs are at grace x r^k; trials
    are evaluated there (and at max_kimg), where ASHA decides."""
    reduction_factor: int = 3
    """ASHA reduction factor: keep the best 1/r of trials at each rung (>= 2)."""
    scheduler: str = "asha"
    """How trials are scheduled: asha (Optuna's sampler proposes each config, ASHA stops weak trials at its
    rungs) | pbt (population-based training, docs/pbt.md: Optuna proposes a population of --num-samples configs,
    all trained to max_kimg; every --perturbation-kimg the bottom quarter continues from a top-quarter
    trial's checkpoint with its lr, lr_d_ratio and betas perturbed) | pb2 (not available: it needs GPy and scikit-learn)."""
    perturbation_kimg: float | None = None
    """PBT only: kimg between two rankings of the population (each one an evaluation). Default: max_kimg / 8."""
    space: str = "default"
    """GAN search space: default (ranges calibrated on Fashion-MNIST, docs/search-space.md) | wide (the
    calibration study's space: published values widened about a decade each way)."""
    space_file: str | None = None
    """YAML file overriding search ranges, e.g. {lr: {low: 1e-5, high: 1e-3, log: true}, batch_size: [32, 64]}."""
    ranges: tuple[str, ...] = ()
    """Range overrides on the command line, e.g. --ranges lr=1e-5:1e-3 z_dim=16:128."""
    sampler: str = "tpe"
    """How configs are proposed: tpe (Optuna's TPE, multivariate over groups of parameters that occur
    together) | tpe-independent (TPE modelling each parameter alone, Optuna's default) | random (Optuna's
    RandomSampler, the baseline). ASHA stops weak trials with each of them."""
    n_startup_trials: int = 5
    """Trials TPE samples at random before it models the results (Optuna's n_startup_trials; warm-start
    points count). With fewer finished-or-pruned trials than this, TPE is random search."""
    warm_start: bool = True
    """Evaluate known configs first, for the searched losses: gentune's calibrated lsgan point
    (docs/search-space.md), then the published DCGAN, WGAN and WGAN-GP settings; --no-warm-start turns it off."""
    grid: str | None = None
    """Run a fixed grid instead of a search, with the full budget and no early stopping: lab1 | lab1-gan | lab1-vae."""
    cpus_per_trial: float = 1.0
    """CPUs reserved for each trial (also its torch thread count)."""
    gpus_per_trial: float | None = None
    """GPU share per trial, in [0, 1]: 0.25 runs four trials on one GPU, each capped to 25% of its memory.
    Default: 1 if the cluster has a GPU, else 0."""
    time_budget: str | None = None
    """Wall-clock budget of the run, e.g. 90s, 10m or 1h30m: no trial starts after it, running ones stop at
    it (Ray Tune's time_budget_s), and the exports and summary follow as at any end. Without --num-samples,
    trials keep coming until the budget is spent. Counted from this run's start (a --resume gets it anew)."""
    pack: int | None = None
    """Trials per fused pack (GAN only, docs/packs.md): trials of one shape train K at a time in one process and
    one fused step, each still a trial of its own (Optuna trial, ASHA decisions, rows, grids, checkpoints).
    Each member reserves 1/K of --cpus-per-trial and --gpus-per-trial. 1 = every trial alone. Default: 1 on a
    CPU (a pack is not faster there: BENCHMARKS.md, gpu_packing); on a GPU, the largest power of two up to 64
    whose members (at the space's largest shape) fit in a pack's share of GPU memory, and without
    --gpus-per-trial one pack per CPU the cluster has per GPU, up to 4 packs per GPU; printed at the start."""
    max_concurrent: int = 0
    """Maximum trials running at once (0 = as many as the resources allow)."""
    reuse_actors: bool = True
    """Start each new trial in the worker process of a finished one (Ray's reuse_actors): saves the
    process start and torch import, about 2.5 s per trial. --no-reuse-actors starts a fresh process each time."""
    storage_path: str = "~/gentune_results"
    """Where experiments are stored (a local folder, or s3://bucket/prefix on a cluster: the AWS credentials and,
    for an S3-compatible server, $AWS_ENDPOINT_URL come from the environment; docs/cluster.md)."""
    name: str = "study"
    """Experiment name: results go to STORAGE_PATH/NAME."""
    resume: bool = False
    """Continue the interrupted experiment STORAGE_PATH/NAME (finished trials are not re-run)."""
    address: str | None = None
    """Ray cluster to join ('auto' on a cluster's head node). Default: start a local Ray."""
    max_failures: int = 3
    """Times a trial is retried from its last checkpoint after its worker dies."""
    allow_shrink: bool = False
    """Let the exports replace trials.csv/.parquet files that hold trials the new ones lack (by trial_id).
    Default: such an export is refused with one error line, and the old files are kept."""
    verbose: bool = False
    """Print Ray's full output (each trial's config and result boxes, a line per checkpoint). Default: Ray's
    status table, gentune's one-line trial events (started, stopped by ASHA, finished, diverged) and the summary."""

    def __post_init__(self) -> None:
        from models.losses import LOSSES
        from tuner.config.space import GRIDS

        def require(ok: bool, field: str, allowed: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"invalid {field}={value!r}: allowed {allowed}")

        require(self.num_samples >= 1, "num_samples", "an integer >= 1", self.num_samples)
        for loss in self.losses:
            require(loss in LOSSES, "losses", "any of " + ", ".join(LOSSES), loss)
        from tuner.config.space import SPACES

        require(self.space in SPACES, "space", "one of " + ", ".join(SPACES), self.space)
        require(self.sampler in SAMPLERS, "sampler", "one of " + ", ".join(SAMPLERS), self.sampler)
        require(self.n_startup_trials >= 0, "n_startup_trials", "an integer >= 0", self.n_startup_trials)
        require(self.grace_kimg > 0, "grace_kimg", "a number > 0", self.grace_kimg)
        require(self.reduction_factor >= 2, "reduction_factor", "an integer >= 2", self.reduction_factor)
        require(self.scheduler in SCHEDULERS, "scheduler", "one of asha, pbt (pb2 needs GPy and scikit-learn)", self.scheduler)
        if self.scheduler == "pb2":
            raise ConfigError(f"invalid {PB2_MISSING}")
        if self.perturbation_kimg is not None:
            require(self.perturbation_kimg > 0, "perturbation_kimg", "a number > 0", self.perturbation_kimg)
            require(self.scheduler == "pbt", "perturbation_kimg", "only with --scheduler pbt", self.perturbation_kimg)
        if self.scheduler == "pbt":
            require(self.grid is None, "scheduler", "asha with --grid (a grid trains fixed cells, there is no population)",
                    self.scheduler)
            require(self.pack in (None, 1), "pack", "1 with --scheduler pbt (PBT restores one trial at a time from "
                    "another's checkpoint; a pack's members share one process)", self.pack)
            require(self.num_samples >= 2, "num_samples", "an integer >= 2 with --scheduler pbt (a population)",
                    self.num_samples)
            require(self.max_concurrent == 0, "max_concurrent", "0 with --scheduler pbt (the whole population is "
                    "created at once, and PBT shares the resources among its members)", self.max_concurrent)
        require(self.grid is None or self.grid in GRIDS, "grid", "one of " + ", ".join(GRIDS), self.grid)
        require(self.cpus_per_trial > 0, "cpus_per_trial", "a number > 0", self.cpus_per_trial)
        if self.gpus_per_trial is not None:
            require(0 <= self.gpus_per_trial <= 1, "gpus_per_trial", "a fraction in [0, 1]", self.gpus_per_trial)
        require(self.max_concurrent >= 0, "max_concurrent", "an integer >= 0", self.max_concurrent)
        require(self.pack is None or self.pack >= 1, "pack", "an integer >= 1", self.pack)
        if self.time_budget is not None:
            parse_duration("time_budget", self.time_budget)
        require(self.pack in (None, 1) or self.grid is None, "pack", "1 with --grid (a grid trains each cell alone)", self.pack)
        require(self.max_failures >= 0, "max_failures", "an integer >= 0", self.max_failures)
        require(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'", self.name)

    @property
    def experiment_dir(self) -> str:
        if "://" in self.storage_path:
            return self.storage_path.rstrip("/") + "/" + self.name
        return str(Path(os.path.expanduser(self.storage_path)).resolve() / self.name)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tuner/search.py", description=USAGE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, SearchConfig, "study (tuner.config.search.SearchConfig)")
    add_arguments(p, TrainConfig, "base trial config (tuner.config.TrainConfig); searched fields are overridden",
                  defaults=SEARCH_TRAIN_DEFAULTS)
    return p


# A study's trial defaults: a budget where models learn (64 kimg: recognisable garments with the
# published DCGAN settings), evaluations only at ASHA's rungs and at the end (eval_at_kimg, set
# in parse), and 1000 samples per FID.
SEARCH_TRAIN_DEFAULTS = {"max_kimg": 64.0, "eval_every_kimg": 0.0, "fid_samples": 1000}
BUDGET_SAMPLES = 100_000  # --num-samples under --time-budget when not given: trials until the budget is spent
