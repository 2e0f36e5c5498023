"""Fused trial packs inside a study (`--pack K`): every member is a Ray Tune trial of its own, and the
members of one shape train together in one process.

- **Members are trials.** Each member is an ordinary Tune trial (`run_member`): its own Optuna trial,
  ASHA decisions, rows in trials.csv / history.parquet, sample grids, checkpoints and console line.
  It reserves 1/K of a trial's CPUs and GPU share, so Tune runs K members where one trial would run.
  It trains nothing itself: it joins a `PackServer` and turns each of its evaluations into a
  `tune.report`. When ASHA stops it, Tune ends it inside that report; its `finally` tells the server,
  which drops the member before its next step, and the slot is free for the next trial.
- **A server per pack.** `PackServer` is a Ray actor that runs `tuner.training.pack.PackLoop` in a thread: the
  fused step over its members, each member's evaluations and checkpoints (written into the member's own
  trial folder and staging folder, on the same node). It reserves nothing: its members hold the resources.
  `PackRegistry`, one named actor per study, places each member on a server of its shape (same node and
  GPU) with a free slot, or names a new server.
- **Packs form.** `PackingOptunaSearch` proposes a trial whose shape settings (`tuner.config.pack_key`)
  are those of a pack with a free slot, through Optuna's `PartialFixedSampler`; TPE proposes the member
  settings and still models every trial's full config. With no free slot it proposes freely: a new pack.
- **Resume.** A member's checkpoint is a solo trial's. After a driver kill Tune restores every member
  trial from its checkpoint, and each joins a server of the new run with it.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tuner.config import MEMBER_FIELDS, pack_key, trial_config
from tuner.study.optuna_bridge import HonestOptunaSearch

_REGISTRIES: list = []  # the driver's handles of its studies' registries
FINISHED = "finished"  # the member's last event: its run has ended (budget reached, or diverged)


def key_name(cfg) -> str:
    """A short, stable name for a config's pack key."""
    import hashlib

    return hashlib.sha1(repr(pack_key(cfg)).encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class PackRegistry:
    """Which pack server of a study has a free slot of which shape, per node and GPU."""

    def __init__(self, capacity: int, prefix: str, base: dict[str, Any], assets: dict[str, bytes], cpus: float,
                 env: dict[str, str]) -> None:
        self.capacity, self.prefix = capacity, prefix
        self.server_args = (base, assets, cpus, env)
        # name -> {"place": (key, node, gpu), "members": set, "handle": the server (owned here: it lives as long
        # as the study's registry, whichever member created it)}
        self.servers: dict[str, dict[str, Any]] = {}
        self.count = 0

    def place(self, member_id: str, key: str, node: str, gpu: str | None) -> str:
        """The name of the server the member joins (started here, on the member's node, if there is none)."""
        for name, server in self.servers.items():
            if member_id in server["members"]:
                return name
        for name, server in self.servers.items():
            if server["place"] == (key, node, gpu) and len(server["members"]) < self.capacity:
                server["members"].add(member_id)
                return name
        self.count += 1
        name = f"{self.prefix}-{self.count}"
        handle = PackServer.options(
            name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(*self.server_args, gpu)
        self.servers[name] = {"place": (key, node, gpu), "members": {member_id}, "handle": handle}
        return name

    def forget(self, name: str) -> None:
        """A server whose step failed: no member is placed there again (its retried trials get a new one)."""
        self.servers.pop(name, None)

    def release(self, member_id: str) -> None:
        """The member's trial has ended (the driver's searcher says so): free its slot, and tell its server,
        since a trial that Tune stops is ended without running its own `finally`."""
        for name, server in self.servers.items():
            if member_id in server["members"]:
                server["members"].discard(member_id)
                server["handle"].leave.remote(member_id)


@ray.remote(num_cpus=0, max_concurrency=1024)
class PackServer:
    """One pack: `tuner.training.pack.PackLoop` in a thread; members `join`, wait on `next_event` and `leave`."""

    def __init__(self, base: dict[str, Any], assets: dict[str, bytes], cpus: float, env: dict[str, str],
                 gpu: str | None) -> None:
        from tuner.study.worker import prepare_worker

        prepare_worker(base, assets, cpus, env)
        if gpu is not None:
            import torch

            torch.cuda.set_device(int(gpu))
        self.cond = threading.Condition()
        self.joins: list[tuple[str, Any]] = []
        self.leaves: set[str] = set()
        self.resumes: set[str] = set()
        self.events: dict[str, queue.Queue] = {}
        self.loop = None
        self.thread: threading.Thread | None = None
        self.failed: str | None = None  # the traceback of a step that failed: this pack trains no more

    def join(self, member_id: str, cfg: dict[str, Any], out_dir: str, checkpoint_root: str,
             resume_from: str | None) -> None:
        from tuner.config import TrainConfig

        events: queue.Queue = queue.Queue()
        with self.cond:
            self.events[member_id] = events
            if self.failed is not None:
                events.put(("error", self.failed))
                return
            self.joins.append((member_id, (TrainConfig.from_dict(cfg), out_dir, checkpoint_root, resume_from)))
            self.leaves.discard(member_id)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="gentune-pack", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def next_event(self, member_id: str) -> Any:
        """The member's next (record, checkpoint folder); FINISHED; ("refused", why) when it could not join
        (an unreadable checkpoint); or ("error", traceback) when the pack's step failed."""
        return self.events[member_id].get()

    def leave(self, member_id: str) -> None:
        with self.cond:
            self.leaves.add(member_id)
            self.cond.notify_all()

    def resume(self, member_id: str) -> None:
        """Tune took the member's last report and let it go on: it trains again from the next step."""
        with self.cond:
            self.resumes.add(member_id)
            self.cond.notify_all()

    # -- the training thread -----------------------------------------------------------------------

    def _changed(self) -> bool:
        return bool(self.joins or self.leaves or self.resumes)

    def _apply_changes(self) -> None:
        from tuner.training.checkpoint import CheckpointError
        from tuner.training.pack import MemberSpec, PackLoop

        with self.cond:
            while not self._changed() and not (self.loop and self.loop.active()):
                self.cond.wait()
            joins, self.joins = self.joins, []
            leaves, self.leaves = self.leaves, set()
            resumes, self.resumes = self.resumes, set()
        if self.loop is not None:
            for member_id in leaves:
                self.loop.remove(member_id)
            for member_id in resumes:
                self.loop.release(member_id)
        for member_id, (cfg, out_dir, checkpoint_root, resume_from) in joins:
            if member_id in leaves:
                continue
            if self.loop is None:
                self.loop = PackLoop(cfg, hold_after_report=True)
            events = self.events[member_id]
            spec = MemberSpec(cfg, out_dir, report=lambda record, ckpt, q=events: q.put((record, str(ckpt) if ckpt else None)),
                              resume_from=resume_from, checkpoint_dir=Path(checkpoint_root) / "checkpoint")
            try:
                self.loop.add(member_id, spec)
            except (CheckpointError, ValueError) as err:  # this member only: the pack trains on
                events.put(("refused", f"{type(err).__name__}: {err}"))

    def _run(self) -> None:
        try:
            while True:
                self._apply_changes()
                for member_id in self.loop.run(changed=self._changed):
                    self.events[member_id].put(FINISHED)
        except BaseException:  # a failed step fails every member's trial (Tune retries them from their checkpoints)
            with self.cond:
                self.failed = traceback.format_exc()
                for events in self.events.values():
                    events.put(("error", self.failed))


class PackFailed(RuntimeError):
    """The member's pack server failed; Tune retries the trial from its checkpoint."""


def run_member(config: dict[str, Any], base: dict[str, Any], registry: str, env: dict[str, str] | None = None) -> None:
    """A member trial: join a pack server of its shape, report each of its evaluations to Tune."""
    from ray import tune

    from tuner.study.staging import staging
    from tuner.study.worker import apply_env, make_report

    apply_env(env)
    cfg = trial_config(base, config)
    trial_id = tune.get_context().get_trial_id()
    out_dir = Path.cwd()
    node = ray.get_runtime_context().get_node_id()
    gpus = ray.get_gpu_ids()
    gpu = str(gpus[0]) if gpus else None
    places = ray.get_actor(registry)
    report, images = make_report(out_dir)
    server = None
    with staging(trial_id) as staged:
        try:
            name = ray.get(places.place.remote(trial_id, key_name(cfg), node, gpu))
            server = ray.get_actor(name)
            checkpoint = tune.get_checkpoint()
            resume_from = None
            if checkpoint is not None:
                resume_from = staged / "resume"
                shutil.rmtree(resume_from, ignore_errors=True)
                checkpoint.to_directory(str(resume_from))
            ray.get(server.join.remote(trial_id, cfg.to_dict(), str(out_dir), str(staged), str(resume_from) if resume_from else None))
            while True:
                event = ray.get(server.next_event.remote(trial_id))
                if event == FINISHED:
                    return
                if event[0] == "refused" and resume_from is not None:  # as run_trial's last resort
                    print(f"gentune: cannot resume from {checkpoint.path}: {event[1]}; restarting the trial from scratch",
                          file=sys.stderr, flush=True)
                    resume_from = None
                    ray.get(server.join.remote(trial_id, cfg.to_dict(), str(out_dir), str(staged), None))
                    continue
                if event[0] in ("error", "refused"):
                    print(f"gentune: pack {name} failed for trial {trial_id}:\n{event[1]}", file=sys.stderr, flush=True)
                    if event[0] == "error":
                        places.forget.remote(name)
                    raise PackFailed(f"pack {name}: {event[1].strip().splitlines()[-1]}")
                record, checkpoint_dir = event
                report(record, Path(checkpoint_dir) if checkpoint_dir else None)  # ASHA may end the trial in here
                server.resume.remote(trial_id)
        finally:  # also when ASHA stops the trial: Tune ends it with SystemExit inside report()
            if server is not None:
                server.leave.remote(trial_id)
            places.release.remote(trial_id)
            images.close()


def registry_name(experiment_dir: str) -> str:
    """The study's PackRegistry: the same name for a resumed study, whose restored searcher keeps it."""
    import hashlib

    return "gentune-packs-" + hashlib.sha1(experiment_dir.encode()).hexdigest()[:12]


def make_member_trainable(base: dict[str, Any], assets: dict[str, bytes], cpus: float, gpus: float, pack: int,
                          env: dict[str, str], experiment_dir: str):
    """The member trainable, and the study's registry: 1/pack of a trial's CPUs and GPU share per member."""
    from ray import tune

    registry = registry_name(experiment_dir)
    # the driver holds the handle: a named actor whose last handle goes away is ended
    _REGISTRIES.append(PackRegistry.options(name=registry, get_if_exists=True).remote(
        pack, f"{registry}-{os.getpid()}", base, assets, cpus, env))
    trainable = tune.with_parameters(run_member, base=base, registry=registry, env=env)
    return tune.with_resources(trainable, {"cpu": cpus / pack, "gpu": gpus / pack})


class PackingOptunaSearch(HonestOptunaSearch):
    """HonestOptunaSearch that fills packs: while a pack of some shape has a free slot, the next trial
    gets that shape (Optuna's PartialFixedSampler), and TPE proposes the rest."""

    def __init__(self, *args, pack: int, base: dict[str, Any], registry: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._pack = pack
        self._registry = registry
        self._base = base
        self._shapes: dict[str, tuple[str, dict[str, Any]]] = {}  # trial id -> (key name, shape params)
        self._running: set[str] = set()

    def _open_shape(self) -> dict[str, Any] | None:
        counts: dict[str, int] = {}
        for trial_id in self._running:
            key = self._shapes[trial_id][0]
            counts[key] = counts.get(key, 0) + 1
        for trial_id in sorted(self._running, key=list(self._shapes).index):  # the oldest pack first
            key, params = self._shapes[trial_id]
            if counts[key] % self._pack:
                return params
        return None

    def suggest(self, trial_id: str):
        import warnings

        import optuna

        fixed = self._open_shape() if trial_id not in self._ot_trials else None
        sampler = self._ot_study.sampler
        if fixed:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.4
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.sampler = optuna.samplers.PartialFixedSampler(fixed, sampler)
        try:
            config = super().suggest(trial_id)
        finally:
            self._ot_study.sampler = sampler
        if isinstance(config, dict) and trial_id not in self._shapes:
            shape = {k: v for k, v in config.items() if k not in MEMBER_FIELDS}
            self._shapes[trial_id] = (key_name(trial_config(self._base, config)), shape)
            self._running.add(trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._running.discard(trial_id)
        if getattr(self, "_registry", None):
            try:
                ray.get_actor(self._registry).release.remote(trial_id)  # its server drops it before its next step
            except ValueError:  # no registry (a restored searcher before the run started its own)
                pass
        super().on_trial_complete(trial_id, result, error)
