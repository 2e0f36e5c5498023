"""The one assembly of a Ray Tune run. The study (tuner/study/driver.py) and the final evaluation
(analysis/final.py) both run through `run_tune`, so both get the same guards:

    check the storage folder -> atomic snapshot uploads -> Ray with token auth -> GPUs per trial
    -> the trainable (tuner/study/worker.py:run_trial, or a pack member) -> a new Tuner, or a restored
    one (damaged snapshots repaired first) -> fit() with the full-disk guard (StorageGuard) and the
    restore guard (RestoreGuard) -> staging folders swept -> exports by the caller.

What differs between the two is the Tuner itself (searcher and ASHA, or a grid under FIFO) and what
is written beside it; the caller passes that as `build`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

from tuner.config import TrainConfig
from tuner.config.search import SearchConfig
from tuner.study.location import check_space, check_writable, is_remote
from tuner.study.resume import TUNE_CONTROLLER_LOGGER, RestoreFailed, RestoreGuard
from tuner.study.worker import run_trial


def run_tune(search: SearchConfig, base: TrainConfig, assets: dict[str, bytes], *, restore: bool,
             build: Callable[[SearchConfig, TrainConfig, Any, Any], Any], keep_best_fid: bool = True,
             num_samples: int | None = None, budget_s: float | None = None,
             resolve: Callable[[SearchConfig, TrainConfig], tuple[SearchConfig, TrainConfig]] | None = None):
    """Run a new Tune experiment at search.experiment_dir, or continue it (`restore`), to its end.

    `build(search, base, trainable, run_config)` returns the new Tuner; `resolve(search, base)` may set
    what needs Ray running (the pack size, packs per GPU). `keep_best_fid`: keep the 2 best-FID checkpoints besides the
    latest (a study: best.json points at the best), else the last two. Returns (grid, search, base),
    the last two as resolved (GPUs per trial, device, pack)."""
    from ray import tune

    from tuner.study.budget import TimeBudget
    from tuner.study.console import apply_to_restored, ray_output, run_config_options
    from tuner.study.staging import sweep_after
    from tuner.study.storage import StorageGuard, install_atomic_uploads

    exp = search.experiment_dir
    check_writable(search)
    install_atomic_uploads()  # Tune's snapshot copies: a full disk or a kill never leaves one cut short
    init_ray(search)
    search, base = resolve_gpus(search, base)
    if resolve is not None:
        search, base = resolve(search, base)
    trainable = make_trainable(search, base, assets)
    guards = () if is_remote(search) else (StorageGuard(exp),)  # a full local results disk: one error, --resume continues
    if restore:
        try:
            tuner = tune.Tuner.restore(exp, trainable=trainable, resume_errored=True)
        except Exception as err:  # tuner.pkl unreadable, or a trainable that no longer matches
            raise RestoreFailed(f"cannot resume {exp}: Ray Tune could not load it ({type(err).__name__}: "
                                f"{err}); nothing was run or changed") from None
        apply_to_restored(tuner, search.verbose, base.max_kimg, guards=guards, num_samples=num_samples, budget_s=budget_s)
    else:
        console = run_config_options(search.verbose, base.max_kimg, num_samples, budget_s)  # Ray's table + event lines
        checkpoints = (tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="fid", checkpoint_score_order="min")
                       if keep_best_fid else tune.CheckpointConfig(num_to_keep=2))  # run_trial falls back to an older one
        run_config = tune.RunConfig(
            name=search.name,
            storage_path=search.storage_path if is_remote(search) else os.path.dirname(exp),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=checkpoints,
            sync_config=tune.SyncConfig(sync_artifacts=True),
            verbose=console["verbose"],
            progress_reporter=console.get("progress_reporter"),
            callbacks=console["callbacks"] + list(guards),
            stop=TimeBudget(),  # every run has one, so that a --resume can give a budget to a run that had none
        )
        tuner = build(search, base, trainable, run_config)

    guard = RestoreGuard(exp)
    tune_logger = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    tune_logger.addFilter(guard)
    try:
        with ray_output(search.verbose):
            TimeBudget.start(budget_s)
            grid = tuner.fit()
    except Exception:
        if guard.error is not None:
            raise guard.error from None
        check_space(search)  # a full disk surfaces as any error (Ray cannot even write error files)
        raise
    finally:
        tune_logger.removeFilter(guard)
    sweep_after(grid, local=search.address is None and one_node())
    check_space(search)
    return grid, search, base


def one_node() -> bool:
    import ray

    return sum(bool(node.get("Alive")) for node in ray.nodes()) == 1


def make_trainable(search: SearchConfig, base: TrainConfig, assets: dict[str, bytes]):
    from ray import tune

    from tuner.study.console import VERBOSE_ENV

    env = {k: v for k, v in os.environ.items() if k.startswith("GENTUNE_")} | ({VERBOSE_ENV: "1"} if search.verbose else {})
    if (search.pack or 1) > 1:
        from tuner.study.packing import make_member_trainable

        return make_member_trainable(base.to_dict(), assets, search.cpus_per_trial, search.gpus_per_trial or 0,
                                     search.pack, env, search.experiment_dir)
    pbt = {}
    if search.scheduler == "pbt":
        from tuner.study.pbt import mutated_fields

        pbt = {"adopt": mutated_fields(base.family)}  # the fields an exploit's checkpoint may differ in
    trainable = tune.with_parameters(run_trial, base=base.to_dict(), assets=assets, cpus=search.cpus_per_trial, env=env, **pbt)
    return tune.with_resources(trainable, {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial or 0})


def init_ray(search: SearchConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Token authentication, locally and on a cluster (docs/ray-optuna.md §8); an explicit
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
        # address="local": a stale /tmp/ray/ray_current_cluster must not redirect us (docs/ray-optuna.md §8);
        # the dashboard, if installed, listens on loopback only, and so do no Prometheus endpoints.
        metrics_off_unless_asked()
        ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=True,
                 _system_config=LOCAL_RAY_CONFIG)


# No idle worker processes started ahead for the first driver: Ray starts one per CPU, with the
# default runtime env, and none can host a trial, whose actor has Tune's runtime env (docs/ray-optuna.md
# §14); they cost 0.35-0.5 s of CPU each and Ray ends them a second later.
LOCAL_RAY_CONFIG = {"prestart_worker_first_driver": False}


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


def is_experiment(path: str) -> bool:
    from ray import tune

    try:
        return tune.Tuner.can_restore(path)
    except Exception:
        return False
