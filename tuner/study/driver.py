"""The study driver: flags -> SearchConfig + TrainConfig -> Ray Tune, where Optuna's TPE proposes
configs and ASHA stops weak trials on FID. `tuner/search.py` is its script; the path of one study is
drawn in tuner/config/search.py's USAGE (the `--help` text). The Tune run itself is assembled by
tuner/study/assembly.py, which the final evaluation (analysis/final.py) shares."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tuner.config import ConfigError, TrainConfig, build, parse_duration, untyped_defaults
from tuner.config.atomic import write_whole
from tuner.config.cli import from_namespace
from tuner.config.schema import METRIC, MODE, TIME_ATTR
from tuner.config.search import BUDGET_SAMPLES, SEARCH_TRAIN_DEFAULTS, SearchConfig, parser
from tuner.study.assembly import is_experiment, run_tune
from tuner.study.location import check_writable, is_remote, local_dir, study_path, upload
from tuner.study.resume import RestoreFailed, check_restorable, check_restorable_remote


def check_data_mirror(base: TrainConfig) -> None:
    """A mirror folder that is not one, or lacks a file, is refused here, before torch is imported
    (a tenth of a second, not three); its checksums are checked where it is installed."""
    from tuner.data import check_mirror_files, resolve_mirror

    if mirror := resolve_mirror(base.data_mirror):
        check_mirror_files(base.dataset, mirror)


def parse(argv: list[str] | None) -> tuple[SearchConfig, TrainConfig, dict[str, Any]]:
    """Flags -> (study config, base trial config, space overrides). Raises ConfigError.

    With --resume, the study and base config saved with the experiment are used; only the study
    flags given again on this command line (e.g. --address, --max-failures) override them.
    """
    from tuner.config.paths import cache_folder
    from tuner.config.space import asha_rungs, build_ranges, load_space_file

    args = parser().parse_args(argv)
    search = from_namespace(SearchConfig, args)
    if is_remote(search):  # an unusable bucket, endpoint or credentials: one line, before anything starts
        from tuner.study.remote import check_remote_storage

        check_remote_storage(search.storage_path)
    if search.resume:
        given_search = {f.name: getattr(search, f.name) for f in dataclasses.fields(SearchConfig) if f.name in vars(args)}
        saved = load_saved(search)
        # --allow-shrink is a decision for this command only: never taken over from the saved config
        search = build(SearchConfig, {**saved["search"], **given_search, "resume": True,
                                      "allow_shrink": given_search.get("allow_shrink", False)})
        base = TrainConfig.from_dict(saved["base"])
        check_data_mirror(base)
        return search, base, saved.get("space_overrides", {})
    if search.time_budget is not None and "num_samples" not in vars(args) and search.scheduler != "pbt":
        search = dataclasses.replace(search, num_samples=BUDGET_SAMPLES)  # the budget ends the study
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name in vars(args)}
    base = from_namespace(TrainConfig, args, **untyped_defaults(SEARCH_TRAIN_DEFAULTS, given))
    cache_folder(base.cache_dir)
    check_data_mirror(base)
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
    if search.grid is None and search.scheduler == "pbt":
        return search, pbt_schedule(search, base, overrides, set(vars(args))), overrides
    if search.grid is None:
        build_ranges(base.family, overrides, search.space)  # validate now, before Ray starts
        # evaluate where ASHA decides: at its rungs (and at max_kimg, always)
        rungs = asha_rungs(base.max_kimg, search.grace_kimg, search.reduction_factor)
        base = base.replace(eval_at_kimg=tuple(sorted(set(base.eval_at_kimg) | set(rungs))))
    return search, base, overrides


def pbt_schedule(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], given: set[str]) -> TrainConfig:
    """--scheduler pbt: evaluations (and checkpoints) at every perturbation point, where PBT decides."""
    from tuner.study.pbt import perturbation_kimg, perturbation_points
    from tuner.config.space import build_ranges

    build_ranges(base.family, overrides, search.space)  # validate now, before Ray starts
    every = perturbation_kimg(search, base)
    if every > base.max_kimg:
        raise ConfigError(f"invalid perturbation_kimg={every}: allowed <= max_kimg ({base.max_kimg})")
    base = base.replace(eval_at_kimg=tuple(sorted(set(base.eval_at_kimg) | set(perturbation_points(search, base)))))
    if "checkpoint_every_kimg" not in given:
        base = base.replace(checkpoint_every_kimg=every)
    return base


def searched_losses(search: SearchConfig, base: TrainConfig) -> tuple[str, ...]:
    from models.losses import LOSSES

    if search.losses:
        return search.losses
    return (base.loss,) if base.loss else tuple(LOSSES)


# ------------------------------------------------------------------------------------------
# the study (runs on the driver)


def make_sampler(search: SearchConfig, base: TrainConfig):
    """The study's Optuna sampler (--sampler)."""
    import warnings

    import optuna

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
    return sampler


def make_searcher(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]):
    """Optuna's TPE over the define-by-run space, told honestly about pruned and diverged trials."""
    from tuner.study.optuna_bridge import HonestOptunaSearch, make_storage
    from tuner.config.space import build_ranges, define_by_run, warm_start_points

    losses = searched_losses(search, base)
    ranges = build_ranges(base.family, overrides, search.space)
    sampler = make_sampler(search, base)
    kind, extra = HonestOptunaSearch, {}
    if (search.pack or 1) > 1:
        from tuner.study.packing import PackingOptunaSearch, registry_name

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


def build_tuner(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], trainable, run_config):
    """A new study's Tuner: Optuna's searcher under ASHA, or a grid's cells under FIFO."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner.config.space import GRIDS

    if search.grid:
        tune_config = tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1, max_concurrent_trials=search.max_concurrent or None,
                                      reuse_actors=search.reuse_actors)
        space = {"cell": tune.grid_search(GRIDS[search.grid])}
        return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)

    if search.scheduler == "pbt":
        return build_pbt_tuner(search, base, overrides, trainable, run_config)
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
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


class InterruptWatch(logging.Filter):
    """Notes Tune's "Experiment has been interrupted" (Ctrl-C: Tune saves its state and `fit` returns).
    Its trials are then marked TERMINATED in memory, though `--resume` runs them again: their Optuna
    trials must stay RUNNING (the resume marks stale only those it does not run), or the resumed trials
    would have no Optuna trial to report to."""

    LOGGER = "ray.tune.tune"

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Experiment has been interrupted"):
            self.seen = True
        return True


def journal_mirror(search: SearchConfig):
    """With remote storage, a running JournalMirror of the driver's journal into the experiment
    folder (tuner/study/remote.py); None for a local (or shared) folder, which holds the journal itself."""
    if not is_remote(search) or search.grid is not None:
        return None
    from tuner.study.remote import JournalMirror

    return JournalMirror(study_path(search), f"{search.experiment_dir}/optuna.journal").start()


def build_pbt_tuner(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], trainable, run_config):
    """--scheduler pbt (tuner/study/pbt.py): the population Optuna proposes, as fixed points, under PBT."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner.config.space import build_ranges, define_by_run, warm_start_points
    from tuner.study.pbt import initial_population
    from tuner.study.pbt_scheduler import KeepResultFiles, make_scheduler

    losses = searched_losses(search, base)
    ranges = build_ranges(base.family, overrides, search.space)
    points = warm_start_points(losses, ranges, set(overrides)) if search.warm_start and base.family == "gan" else None
    population = initial_population(search, study_path(search), make_sampler(search, base),
                                    define_by_run(base.family, losses, ranges, small_n_critic="n_critic" not in overrides),
                                    points)
    # PBT's exploits point a trial at another's checkpoint: Tune must not delete any while the study runs
    run_config.checkpoint_config = tune.CheckpointConfig(num_to_keep=None)
    # PBT pauses and restarts its members: their result files must survive each restart
    run_config.callbacks = [*(run_config.callbacks or []), KeepResultFiles()]
    tune_config = tune.TuneConfig(
        search_alg=BasicVariantGenerator(points_to_evaluate=population),
        scheduler=make_scheduler(search, base, ranges),
        metric=METRIC,
        mode=MODE,
        num_samples=len(population),  # the whole population at once: PBT time-shares the resources among it
        reuse_actors=search.reuse_actors,
    )
    # Tune takes preset points only for keys of the param space: every key a member has (a conditional one,
    # e.g. clip_value, is None, its default, where a member lacks it)
    space = {key: None for point in population for key in point}
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)


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


def pack_fits(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any], on_gpu: bool) -> tuple[int, str]:
    """How many members of the space's largest shape fit in one pack's memory, and the sizes as words."""
    from tuner.training.pack import member_bytes, memory_budget
    from tuner.config.space import build_ranges, largest_shape

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


# At most this many packs share one GPU by default: one GPU trial per CPU process hid host overhead up
# to 4 processes (4.13x at 4 on an H200, 2026-12-04); more is unmeasured.
MAX_PACKS_PER_GPU = 4


def packs_per_gpu(cluster_cpus: float, cluster_gpus: float, cpus_per_trial: float) -> int:
    """Packs that share one GPU by default: one per `cpus_per_trial` CPUs the cluster has per GPU (each
    pack is a process that feeds its GPU from a CPU), at most MAX_PACKS_PER_GPU, at least 1."""
    if cluster_gpus <= 0:
        return 1
    return max(1, min(MAX_PACKS_PER_GPU, int(cluster_cpus / cluster_gpus // cpus_per_trial)))


def resolve_pack(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any],
                 gpus_given: bool = True) -> tuple[SearchConfig, TrainConfig]:
    """The pack size: --pack as given, else 1 on a CPU and, on a GPU, the largest power of two up to 64
    whose members fit in a pack's share of GPU memory. Without --gpus-per-trial, a GPU is shared by
    `packs_per_gpu` packs (from the CPUs per GPU), each capped to its share of the GPU's memory. One line
    says what was chosen and why."""
    import math

    if search.grid is not None or base.family != "gan" or search.scheduler == "pbt":
        return dataclasses.replace(search, pack=1), base
    on_gpu = (search.gpus_per_trial or 0) > 0
    per_gpu = ""
    if on_gpu and search.pack != 1 and not gpus_given:
        import ray

        resources = ray.cluster_resources()
        packs = packs_per_gpu(resources.get("CPU", 1), resources.get("GPU", 0), search.cpus_per_trial)
        if packs > 1:
            search = dataclasses.replace(search, gpus_per_trial=1 / packs)
            base = base.replace(gpu_memory_fraction=1 / packs)
        per_gpu = f"; {packs} pack{'s' if packs > 1 else ''} per GPU (one per {search.cpus_per_trial:g} CPU the cluster has per GPU, at most {MAX_PACKS_PER_GPU})"
    if search.pack is not None:
        pack, why = search.pack, "--pack"
    elif not on_gpu:
        pack, why = 1, "the default on a CPU, where a fused pack is not faster (BENCHMARKS.md, gpu_packing)"
    else:
        fits, words = pack_fits(search, base, overrides, on_gpu)
        pack = min(64, 2 ** int(math.log2(fits)))
        why = f"the default on a GPU: {words}; at most 64"
    share = f"{search.cpus_per_trial / pack:g} CPU" + (f" and {search.gpus_per_trial / pack:g} GPU" if on_gpu else "")
    print(f"[gentune] packs: {pack} trial{'s' if pack > 1 else ''} per pack ({why}){per_gpu}; each trial reserves {share}",
          flush=True)
    return dataclasses.replace(search, pack=pack), base


def fid_floor(base: TrainConfig) -> dict[str, Any]:
    """The real-vs-real FID floor of the study's metric (train vs test images, same backbone and N)."""
    from tuner.data import resolve_mirror
    from tuner.metrics.backbones import get_backbone
    from tuner.metrics.fid import real_floor

    mirror = resolve_mirror(base.data_mirror)
    backbone = get_backbone(base.fid_backbone, base.dataset, cache_dir=base.cache_dir, mirror=mirror,
                            classifier=base.domain_classifier)
    fid = real_floor(base.dataset, backbone, base.fid_samples, mirror, base.cache_dir)
    domain_id = get_backbone("domain", base.dataset, cache_dir=base.cache_dir, mirror=mirror,
                             classifier=base.domain_classifier).classifier_id
    return {"fid": fid, "dataset": base.dataset, "fid_backbone": base.fid_backbone, "fid_samples": base.fid_samples,
            "domain_classifier_sha": domain_id}


def run(search: SearchConfig, base: TrainConfig, overrides: dict[str, Any]) -> Path:
    """Run (or resume) the study to its end; returns the local folder holding the experiment, from
    which tuner/search.py writes the exports."""
    exp = search.experiment_dir
    if not search.resume and is_experiment(exp):
        raise ConfigError(f"invalid name={search.name!r}: {exp} already holds an experiment; use --resume or another --name")
    check_writable(search)
    if search.resume:
        from tuner.study.optuna_bridge import expect_restored_trials

        if is_remote(search) and search.grid is None:  # a new head: the journal comes from the experiment storage
            from tuner.study.remote import restore_journal

            said = restore_journal(study_path(search), f"{exp}/optuna.journal")
            if said:
                print(said, file=sys.stderr, flush=True)
        searched = search.grid is None and search.scheduler != "pbt"
        restored = check_restorable_remote(exp, searched) if is_remote(search) else check_restorable(Path(exp), searched)
        expect_restored_trials(restored, journal=study_path(search), experiment_dir=exp)
    # Everything that can fail on bad input or missing data fails here, before Ray starts.
    check_pack(search, base, overrides)
    from tuner.metrics.metrics_cache import prepare_assets  # (torch: imported after the checks above, which refuse at once)

    assets = prepare_assets(base)

    def new_tuner(search: SearchConfig, base: TrainConfig, trainable, run_config):
        tuner = build_tuner(search, base, overrides, trainable, run_config)
        local = local_dir(search)
        local.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"search": dataclasses.asdict(search), "base": base.to_dict(), "space_overrides": overrides,
                           "fid_floor": fid_floor(base)}, indent=2, default=list)
        write_whole(local / "search_config.json", lambda tmp: tmp.write_text(text))
        upload(search, ["search_config.json"])
        return tuner

    budget_s = parse_duration("time_budget", search.time_budget) if search.time_budget else None
    gpus_given = search.gpus_per_trial is not None
    mirror = journal_mirror(search)  # remote storage: the journal follows every write into it
    interrupt = InterruptWatch()
    logging.getLogger(InterruptWatch.LOGGER).addFilter(interrupt)
    try:
        grid, search, base = run_tune(search, base, assets, restore=search.resume, build=new_tuner, budget_s=budget_s,
                                      num_samples=search.num_samples if not search.grid else None,
                                      resolve=lambda search, base: resolve_pack(search, base, overrides, gpus_given))
    except BaseException:
        if mirror is not None:
            mirror.stop()
        raise
    finally:
        logging.getLogger(InterruptWatch.LOGGER).removeFilter(interrupt)
    if search.grid is None and search.scheduler == "pbt" and Path(study_path(search)).is_file():
        from tuner.study.pbt import tell_population

        tell_population(search, study_path(search), grid, base.max_kimg)  # each member's Optuna trial: what it reached
    if search.grid is None and Path(study_path(search)).is_file() and not interrupt.seen:
        from tuner.study.optuna_bridge import load_journal_study, mark_stale_trials

        study = load_journal_study(study_path(search), search.name)
        mark_stale_trials(study)  # everything has ended: nothing may stay RUNNING
    if mirror is not None:
        mirror.stop()
        print(f"gentune: the Optuna journal was copied to {exp}/optuna.journal {len(mirror.lags)} times, each write "
              f"at most {mirror.max_lag_s:.2f} s after it was made", file=sys.stderr, flush=True)
    if is_remote(search):  # exports are built from a local copy of the experiment, then uploaded
        import pyarrow.fs

        pyarrow.fs.copy_files(exp, str(local_dir(search)))
    return local_dir(search)
