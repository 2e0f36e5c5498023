"""The study driver: flags -> SearchConfig + TrainConfig -> Ray Tune, where Optuna's TPE proposes
configs and ASHA stops weak trials on FID. `tuner/search.py` is its script; USAGE below (the
`--help` text) draws the path of one study."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.atomic import write_whole
from tuner.cli import ArgumentParser, add_arguments, from_namespace
from tuner.config import ConfigError, TrainConfig, build, parse_duration, untyped_defaults
from tuner.schema import METRIC, MODE, TIME_ATTR
from tuner.resume import TUNE_CONTROLLER_LOGGER, RestoreFailed, RestoreGuard, check_restorable
from tuner.worker import run_trial

USAGE = """Search: Ray Tune runs trials, Optuna's TPE proposes configs, ASHA stops weak ones on FID.

    python tuner/search.py [flags]                               # local: one GPU if there is one, else CPU
    ray submit cluster.yaml tuner/search.py -- --address auto [flags]   # on a Ray cluster

Flags: every field of SearchConfig below, plus every field of tuner.config.TrainConfig, which
sets the base config each trial starts from (the searched parameters override it).

The path of one study:
  flags -> SearchConfig + TrainConfig (validated before anything starts)
  -> prepare the metrics once on the driver (domain classifier, real-image statistics)
  -> Ray Tune: HonestOptunaSearch (TPE, define-by-run space) + ASHA on fid over kimg
  -> each trial: tuner/worker.py:run_trial -> tuner/loop.py:train -> tune.report at each evaluation
  -> exports (trials.csv/.parquet, history.parquet, best.json) and a summary.
"""

SAMPLERS = ("tpe", "tpe-independent", "random")


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
    whose members (at the space's largest shape) fit in a trial's share of GPU memory, printed at the start."""
    max_concurrent: int = 0
    """Maximum trials running at once (0 = as many as the resources allow)."""
    reuse_actors: bool = True
    """Start each new trial in the worker process of a finished one (Ray's reuse_actors): saves the
    process start and torch import, about 2.5 s per trial. --no-reuse-actors starts a fresh process each time."""
    storage_path: str = "~/gentune_results"
    """Where experiments are stored (a local folder, or s3://bucket/prefix on a cluster)."""
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
        from tuner.space import GRIDS

        def require(ok: bool, field: str, allowed: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"invalid {field}={value!r}: allowed {allowed}")

        require(self.num_samples >= 1, "num_samples", "an integer >= 1", self.num_samples)
        for loss in self.losses:
            require(loss in LOSSES, "losses", "any of " + ", ".join(LOSSES), loss)
        from tuner.space import SPACES

        require(self.space in SPACES, "space", "one of " + ", ".join(SPACES), self.space)
        require(self.sampler in SAMPLERS, "sampler", "one of " + ", ".join(SAMPLERS), self.sampler)
        require(self.n_startup_trials >= 0, "n_startup_trials", "an integer >= 0", self.n_startup_trials)
        require(self.grace_kimg > 0, "grace_kimg", "a number > 0", self.grace_kimg)
        require(self.reduction_factor >= 2, "reduction_factor", "an integer >= 2", self.reduction_factor)
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


# ------------------------------------------------------------------------------------------
# configuration


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tuner/search.py", description=USAGE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, SearchConfig, "study (tuner.study.SearchConfig)")
    add_arguments(p, TrainConfig, "base trial config (tuner.config.TrainConfig); searched fields are overridden",
                  defaults=SEARCH_TRAIN_DEFAULTS)
    return p


# A study's trial defaults: a budget where models learn (64 kimg: recognisable garments with the
# published DCGAN settings), evaluations only at ASHA's rungs and at the end (eval_at_kimg, set
# in parse), and 1000 samples per FID.
SEARCH_TRAIN_DEFAULTS = {"max_kimg": 64.0, "eval_every_kimg": 0.0, "fid_samples": 1000}
BUDGET_SAMPLES = 100_000  # --num-samples under --time-budget when not given: trials until the budget is spent


def parse(argv: list[str] | None) -> tuple[SearchConfig, TrainConfig, dict[str, Any]]:
    """Flags -> (study config, base trial config, space overrides). Raises ConfigError.

    With --resume, the study and base config saved with the experiment are used; only the study
    flags given again on this command line (e.g. --address, --max-failures) override them.
    """
    from tuner.paths import cache_folder
    from tuner.space import asha_rungs, build_ranges, load_space_file

    args = parser().parse_args(argv)
    search = from_namespace(SearchConfig, args)
    if search.resume:
        given_search = {f.name: getattr(search, f.name) for f in dataclasses.fields(SearchConfig) if f.name in vars(args)}
        saved = load_saved(search)
        # --allow-shrink is a decision for this command only: never taken over from the saved config
        search = build(SearchConfig, {**saved["search"], **given_search, "resume": True,
                                      "allow_shrink": given_search.get("allow_shrink", False)})
        return search, TrainConfig.from_dict(saved["base"]), saved.get("space_overrides", {})
    if search.time_budget is not None and "num_samples" not in vars(args):
        search = dataclasses.replace(search, num_samples=BUDGET_SAMPLES)  # the budget ends the study
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name in vars(args)}
    base = from_namespace(TrainConfig, args, **untyped_defaults(SEARCH_TRAIN_DEFAULTS, given))
    cache_folder(base.cache_dir)
    if "grace_kimg" not in vars(args) and search.grace_kimg > base.max_kimg:
        # the default, shortened to fit a budget the user gave
        grace = base.eval_every_kimg if base.eval_every_kimg > 0 else base.max_kimg / search.reduction_factor
        search = dataclasses.replace(search, grace_kimg=grace)
    if "checkpoint_every_kimg" not in vars(args):
        # checkpoints between the rungs too, at most one rung's training apart (the first rung's)
        base = base.replace(checkpoint_every_kimg=min(search.grace_kimg, base.max_kimg))
    if search.grace_kimg > base.max_kimg:
        raise ConfigError(f"invalid grace_kimg={search.grace_kimg}: allowed <= max_kimg ({base.max_kimg})")
    overrides: dict[str, Any] = {}
    if search.space_file:
        overrides.update(load_space_file(search.space_file))
    for item in search.ranges:
        if "=" not in item:
            raise ConfigError(f"invalid ranges item {item!r}: allowed NAME=LOW:HIGH or NAME=a,b,c")
        key, value = item.split("=", 1)
        overrides[key] = value.split(",") if "," in value else value
    if (search.pack or 1) > 1 and base.family != "gan":
        raise ConfigError(f"invalid pack={search.pack}: allowed 1 for family={base.family} (packs train GANs only)")
    if search.grid is None:
        build_ranges(base.family, overrides, search.space)  # validate now, before Ray starts
        # evaluate where ASHA decides: at its rungs (and at max_kimg, always)
        rungs = asha_rungs(base.max_kimg, search.grace_kimg, search.reduction_factor)
        base = base.replace(eval_at_kimg=tuple(sorted(set(base.eval_at_kimg) | set(rungs))))
    return search, base, overrides


def searched_losses(search: SearchConfig, base: TrainConfig) -> tuple[str, ...]:
    from models.losses import LOSSES

    if search.losses:
        return search.losses
    return (base.loss,) if base.loss else tuple(LOSSES)


# ------------------------------------------------------------------------------------------
# the study (runs on the driver)


def make_trainable(search: SearchConfig, base: TrainConfig, assets: dict[str, bytes]):
    from ray import tune

    from tuner.console import VERBOSE_ENV

    env = {k: v for k, v in os.environ.items() if k.startswith("GENTUNE_")} | ({VERBOSE_ENV: "1"} if search.verbose else {})
    if (search.pack or 1) > 1:
        from tuner.packing import make_member_trainable

        return make_member_trainable(base.to_dict(), assets, search.cpus_per_trial, search.gpus_per_trial or 0,
                                     search.pack, env, search.experiment_dir)
    trainable = tune.with_parameters(run_trial, base=base.to_dict(), assets=assets, cpus=search.cpus_per_trial, env=env)
    return tune.with_resources(trainable, {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial or 0})


def make_searcher(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]):
    """Optuna's TPE over the define-by-run space, told honestly about pruned and diverged trials."""
    import warnings

    import optuna

    from tuner.optuna_bridge import HonestOptunaSearch, make_storage
    from tuner.space import build_ranges, define_by_run, warm_start_points

    losses = searched_losses(search, base)
    ranges = build_ranges(base.family, overrides, search.space)
    if search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=base.seed)
    else:
        # multivariate + group: TPE models parameters that occur together jointly, and the conditional
        # ones (clip_value, gp_lambda) within their own group, instead of each one independently.
        # tpe-independent: each parameter on its own (Optuna's default TPE), the comparison for the above.
        joint = search.sampler == "tpe"
        with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=base.seed, constant_liar=True, multivariate=joint, group=joint,
                                                 n_startup_trials=search.n_startup_trials)
    kind, extra = HonestOptunaSearch, {}
    if (search.pack or 1) > 1:
        from tuner.packing import PackingOptunaSearch, registry_name

        kind, extra = PackingOptunaSearch, {"pack": search.pack, "base": base.to_dict(),
                                            "registry": registry_name(search.experiment_dir)}
    return kind(
        **extra,
        space=define_by_run(base.family, losses, ranges, small_n_critic="n_critic" not in overrides),
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=warm_start_points(losses, ranges, set(overrides)) if search.warm_start and base.family == "gan" else None,
        sampler=sampler,
        study_name=search.name,
        storage=make_storage(study_path(search)),
        max_kimg=base.max_kimg,
        experiment_dir=search.experiment_dir,  # sample grids -> Optuna artifacts in EXPERIMENT/artifacts
    )


def build_tuner(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], trainable):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner.console import run_config_options
    from tuner.space import GRIDS
    from tuner.storage import StorageGuard

    budget_s = parse_duration("time_budget", search.time_budget) if search.time_budget else None
    # Ray's table + gentune's event lines
    console = run_config_options(search.verbose, base.max_kimg, search.num_samples if not search.grid else None, budget_s)

    run_config = tune.RunConfig(
        name=search.name,
        storage_path=search.storage_path if "://" in search.storage_path else os.path.dirname(search.experiment_dir),
        failure_config=tune.FailureConfig(max_failures=search.max_failures),
        # the 2 best-FID checkpoints besides the latest: best.json points at the best, and a trial whose
        # latest is damaged resumes from an older one (run_trial)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="fid", checkpoint_score_order="min"),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=console["verbose"],
        progress_reporter=console.get("progress_reporter"),
        # a full local results disk stops the study with one error; --resume continues it
        callbacks=console["callbacks"] + ([] if is_remote(search) else [StorageGuard(search.experiment_dir)]),
    )
    if search.grid:
        tune_config = tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1, max_concurrent_trials=search.max_concurrent or None,
                                      reuse_actors=search.reuse_actors, time_budget_s=budget_s)
        space = {"cell": tune.grid_search(GRIDS[search.grid])}
        return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)

    searcher = make_searcher(search, base, overrides)
    scheduler = ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=base.max_kimg,
        grace_period=search.grace_kimg,
        reduction_factor=search.reduction_factor,
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        metric=METRIC,
        mode=MODE,
        num_samples=search.num_samples,
        max_concurrent_trials=search.max_concurrent or None,
        reuse_actors=search.reuse_actors,
        time_budget_s=budget_s,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def is_remote(search: SearchConfig) -> bool:
    return "://" in search.storage_path


def local_dir(search: SearchConfig) -> Path:
    """Where the driver keeps the study and writes exports: the experiment folder itself when it is
    local; with remote storage (s3://...) a folder beside the driver, uploaded when written."""
    return Path.home() / "gentune_studies" / search.name if is_remote(search) else Path(search.experiment_dir)


def upload(search: SearchConfig, names: list[str]) -> None:
    if not is_remote(search):
        return
    import pyarrow.fs

    for name in names:
        if not (local_dir(search) / name).is_file():
            continue
        pyarrow.fs.copy_files(str(local_dir(search) / name), f"{search.experiment_dir}/{name}")


def load_saved(search: SearchConfig) -> dict[str, Any]:
    if not is_experiment(search.experiment_dir):
        if not is_remote(search) and (local_dir(search) / "search_config.json").is_file():
            raise RestoreFailed(f"cannot resume {search.experiment_dir}: experiment_state-*.json is missing "
                                "(Ray Tune's record of the trials); nothing was run or changed")
        raise ConfigError(f"invalid resume: {search.experiment_dir} is not a gentune/Ray Tune experiment (no experiment_state file)")
    if is_remote(search):
        import pyarrow.fs

        local_dir(search).mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(f"{search.experiment_dir}/search_config.json", str(local_dir(search) / "search_config.json"))
    path = local_dir(search) / "search_config.json"
    if not path.is_file():
        raise ConfigError(f"invalid resume: {search.experiment_dir} has no search_config.json (not started by gentune)")
    return json.loads(path.read_text())


def study_path(search: SearchConfig) -> str:
    """The Optuna journal: inside the experiment folder when that is local, else beside the driver."""
    local_dir(search).mkdir(parents=True, exist_ok=True)
    return str(local_dir(search) / "optuna.journal")


def init_ray(search: SearchConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Token authentication, locally and on a cluster (RAY-OPTUNA.md pitfall 8); an explicit
    # $RAY_AUTH_MODE is respected. A local Ray gets Ray's own default: ray.init(address="local") turns
    # token mode on and makes ~/.ray/auth_token on first use. Setting $RAY_AUTH_MODE here instead would
    # not reach the Ray config this process has already read, and the new GCS would find no token.
    # The driver of a cluster study joins with the cluster's token (~/.ray/auth_token, copied there by
    # the cluster yaml, or $RAY_AUTH_TOKEN_PATH / $RAY_AUTH_TOKEN): ray.init turns token mode on by
    # itself only for address="auto" with a token file present, so it is turned on here, the way Ray
    # does it (the environment for the processes it starts, and this process's Ray config).
    if search.address:
        if "RAY_AUTH_MODE" not in os.environ:
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        ray.init(address=search.address, log_to_driver=True)
    else:
        # address="local": a stale /tmp/ray/ray_current_cluster must not redirect us (pitfall 8);
        # the dashboard, if installed, listens on loopback only, and so do no Prometheus endpoints.
        metrics_off_unless_asked()
        ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=True)


# Ray's Prometheus endpoints answer anyone, without the token, on every interface: Ray (2.60) never
# binds a local study to loopback (it replaces 127.0.0.1 by the machine's network address), and
# binds these servers to 0.0.0.0 unless that address is loopback. With ray[default] installed, a
# local study would start three: the agent's metrics export port (`RAY_enable_metrics_collection=0`
# makes the raylet start the agent with --disable-metrics-collection), and the dashboard's
# (DASHBOARD_METRIC_PORT, 44227) and autoscaler monitor's (AUTOSCALER_METRIC_PORT, 44217), which
# have no switch: an out-of-range port makes their start fail, and Ray logs that and carries on.
# The cluster yamls set the same three variables in every `ray start`. Whoever sets
# RAY_enable_metrics_collection themselves has asked for metrics, or set them off: left as it is.
METRICS_OFF = {"RAY_enable_metrics_collection": "0", "DASHBOARD_METRIC_PORT": "-1", "AUTOSCALER_METRIC_PORT": "-1"}


def metrics_off_unless_asked() -> None:
    """Switch Ray's Prometheus endpoints off for the Ray this process starts (its processes inherit
    the environment), unless $RAY_enable_metrics_collection is set."""
    if "RAY_enable_metrics_collection" not in os.environ:
        os.environ.update(METRICS_OFF)


def resolve_gpus(search: SearchConfig, base: TrainConfig) -> tuple[SearchConfig, TrainConfig]:
    import ray

    gpus = search.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and base.device != "cpu" else 0.0
    search = dataclasses.replace(search, gpus_per_trial=gpus)
    if gpus > 0:
        fraction = gpus if gpus < 1 else None
        base = base.replace(device="cuda", gpu_memory_fraction=base.gpu_memory_fraction or fraction)
    else:
        base = base.replace(device="cpu")
    return search, base


def pack_fits(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], on_gpu: bool) -> tuple[int, str]:
    """How many members of the space's largest shape fit in one pack's memory, and the sizes as words."""
    from tuner.pack import member_bytes, memory_budget
    from tuner.space import build_ranges, largest_shape

    need = member_bytes(largest_shape(base, build_ranges(base.family, overrides, search.space)))
    budget = memory_budget(on_gpu, search.gpus_per_trial or 0, search.cpus_per_trial)
    words = f"a member of the space's largest shape needs about {need / 2**20:.0f} MiB, a pack has {budget / 2**20:.0f} MiB"
    return max(1, int(budget // need)), words


def check_pack(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]) -> None:
    """Before Ray starts: --pack above what one pack's memory holds is bad input (GPU memory where this
    machine has a GPU a study would use, else its free RAM)."""
    if (search.pack or 1) == 1 or search.grid is not None:
        return
    import torch

    on_gpu = (search.gpus_per_trial > 0 if search.gpus_per_trial is not None
              else base.device != "cpu" and torch.cuda.is_available())
    if search.address is not None and on_gpu and not torch.cuda.is_available():
        return  # a cluster driver without a GPU cannot see the nodes' memory
    fits, words = pack_fits(search, base, overrides, on_gpu)
    if search.pack > fits:
        raise ConfigError(f"invalid pack={search.pack}: allowed at most {fits} on this machine ({words})")


def resolve_pack(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]) -> SearchConfig:
    """The pack size: --pack as given, else 1 on a CPU and, on a GPU, the largest power of two up to 64
    whose members fit in a trial's share of GPU memory. One line says what was chosen and why."""
    import math

    if search.grid is not None or base.family != "gan":
        return dataclasses.replace(search, pack=1)
    on_gpu = (search.gpus_per_trial or 0) > 0
    if search.pack is not None:
        pack, why = search.pack, "--pack"
    elif not on_gpu:
        pack, why = 1, "the default on a CPU, where a fused pack is not faster (BENCHMARKS.md, gpu_packing)"
    else:
        fits, words = pack_fits(search, base, overrides, on_gpu)
        pack = min(64, 2 ** int(math.log2(fits)))
        why = f"the default on a GPU: {words}; at most 64"
    share = f"{search.cpus_per_trial / pack:g} CPU" + (f" and {search.gpus_per_trial / pack:g} GPU" if on_gpu else "")
    print(f"[gentune] packs: {pack} trial{'s' if pack > 1 else ''} per pack ({why}); each trial reserves {share}", flush=True)
    return dataclasses.replace(search, pack=pack)


def fid_floor(base: TrainConfig) -> dict[str, Any]:
    """The real-vs-real FID floor of the study's metric (train vs test images, same backbone and N)."""
    from tuner.data import resolve_mirror
    from tuner.fid import real_floor

    fid = real_floor(base.dataset, base.fid_backbone, base.fid_samples, resolve_mirror(base.data_mirror), base.cache_dir)
    return {"fid": fid, "dataset": base.dataset, "fid_backbone": base.fid_backbone, "fid_samples": base.fid_samples}


def is_experiment(path: str) -> bool:
    from ray import tune

    try:
        return tune.Tuner.can_restore(path)
    except Exception:
        return False


def check_writable(search: SearchConfig) -> None:
    """Fail before Ray starts when the (local) storage folder cannot be created or written.

    Probes the deepest existing folder of STORAGE_PATH/NAME with a temporary file, so nothing is left
    behind: a path below a regular file, a regular file, a broken symbolic link, a read-only mount or a
    folder without write access fail here.
    """
    from tuner.paths import folder_problem
    from tuner.storage import FULL_BYTES, existing_folder, free_bytes

    if is_remote(search):
        return
    problem = folder_problem(search.experiment_dir)
    existing = existing_folder(search.experiment_dir)
    if problem:
        raise ConfigError(f"invalid storage_path={search.storage_path!r}: {problem}; "
                          "allowed a writable local folder or s3://bucket/prefix")
    free = free_bytes(existing)
    if free < FULL_BYTES:
        raise ConfigError(f"invalid storage_path={search.storage_path!r}: {existing} has only "
                          f"{free // 1024} KiB free; allowed a folder with at least {FULL_BYTES // 1024} KiB free")


def check_space(search: SearchConfig) -> None:
    """Raise StorageFull (one clear line, no exports half-written) if the local storage is full."""
    from tuner.storage import StorageFull, full_message, is_full

    if not is_remote(search) and is_full(search.experiment_dir):
        raise StorageFull(full_message(search.experiment_dir)) from None


def run(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]) -> Path:
    """Run (or resume) the study to its end; returns the local folder holding the experiment, from
    which tuner/search.py writes the exports."""
    from ray import tune

    exp = search.experiment_dir
    if not search.resume and is_experiment(exp):
        raise ConfigError(f"invalid name={search.name!r}: {exp} already holds an experiment; use --resume or another --name")
    check_writable(search)
    if search.resume:
        from tuner.optuna_bridge import expect_restored_trials

        expect_restored_trials(set() if is_remote(search) else check_restorable(Path(exp), search.grid is None),
                               journal=study_path(search), experiment_dir=exp)
    # Everything that can fail on bad input or missing data fails here, before Ray starts.
    check_pack(search, base, overrides)
    from tuner.metrics_cache import prepare_assets  # (torch: imported after the checks above, which refuse at once)

    assets = prepare_assets(base)

    from tuner.storage import install_atomic_uploads

    install_atomic_uploads()  # Tune's snapshot copies: a full disk or a kill never leaves one cut short
    init_ray(search)
    search, base = resolve_gpus(search, base)
    search = resolve_pack(search, base, overrides)
    trainable = make_trainable(search, base, assets)
    if search.resume:
        try:
            tuner = tune.Tuner.restore(exp, trainable=trainable, resume_errored=True)
        except Exception as err:  # tuner.pkl unreadable, or a trainable that no longer matches
            raise RestoreFailed(f"cannot resume {exp}: Ray Tune could not load it ({type(err).__name__}: "
                                f"{err}); nothing was run or changed") from None
        from tuner.console import apply_to_restored

        from tuner.storage import StorageGuard

        budget_s = parse_duration("time_budget", search.time_budget) if search.time_budget else None
        apply_to_restored(tuner, search.verbose, base.max_kimg, guards=() if is_remote(search) else (StorageGuard(exp),),
                          num_samples=search.num_samples if not search.grid else None, budget_s=budget_s)
        if getattr(tuner, "_local_tuner", None) is not None:  # the budget as this command gives it, from its start
            tuner._local_tuner._tune_config.time_budget_s = budget_s
    else:
        tuner = build_tuner(search, base, overrides, trainable)
        local = local_dir(search)
        local.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"search": dataclasses.asdict(search), "base": base.to_dict(), "space_overrides": overrides,
                           "fid_floor": fid_floor(base)}, indent=2, default=list)
        write_whole(local / "search_config.json", lambda tmp: tmp.write_text(text))
        upload(search, ["search_config.json"])
    from tuner.console import ray_output

    guard = RestoreGuard(exp)
    tune_logger = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    tune_logger.addFilter(guard)
    try:
        with ray_output(search.verbose):
            grid = tuner.fit()
    except Exception:
        if guard.error is not None:
            raise guard.error from None
        check_space(search)  # a full disk surfaces as any error (Ray cannot even write error files)
        raise
    finally:
        tune_logger.removeFilter(guard)
    from tuner.staging import sweep_after

    sweep_after(grid)
    check_space(search)
    if search.grid is None and Path(study_path(search)).is_file():
        import optuna

        from tuner.optuna_bridge import make_storage, mark_stale_trials

        study = optuna.load_study(study_name=search.name, storage=make_storage(study_path(search)))
        mark_stale_trials(study)  # everything has ended: nothing may stay RUNNING
    if is_remote(search):  # exports are built from a local copy of the experiment, then uploaded
        import pyarrow.fs

        pyarrow.fs.copy_files(exp, str(local_dir(search)))
    return local_dir(search)
