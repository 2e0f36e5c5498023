"""A fused trial pack: K GAN trials of one shape trained in one process, one fused step at a time.

Each member is a solo `Trial` (tuner/training/trial.py) built from its own config and seed: its nets start
from the weights a solo trial of that seed starts from, its random stream (`trial.gen`) draws its
batches, noise and gradient-penalty mixes in the order the solo steps draw them (tuner/training/steps.py),
and its evaluations, sample grids, metrics.jsonl and checkpoints are the solo ones, written to its
own folder. Only the training step is fused (tuner/training/fused.py): the members' nets and optimisers
live as (K, ...) tensors while they train, and go back into the solo objects before a member is
evaluated or checkpointed.

Members must agree on every setting that decides a tensor's shape or the step's structure
(`tuner.config.pack_key`); they differ in `tuner.config.MEMBER_FIELDS` (learning rates, betas, clip
value, penalty weight, EMA decay, seed, budget, evaluation and checkpoint points).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.losses import LOSSES
from tuner.training.checkpoint import load_checkpoint, save_checkpoint
from tuner.config import TrainConfig, pack_key
from tuner.data import training_images
from tuner.training.evaluate import Evaluator
from tuner.training.families import EMA_NET
from tuner.training.fused import FusedNet, FusedOptimizer, fuse_optimizer
from tuner.training.loop import (DIVERGENCE_CHECK_EVERY, Report, check_divergence, checkpoint_record, diverged_record, eval_points,
                        kimg_tag, next_checkpoint, next_point, write_run_files)
from tuner.training.steps import sample_batch
from tuner.training.trial import Trial, build_trial, pick_device


def check_packable(cfgs: Sequence[TrainConfig]) -> None:
    if not cfgs:
        raise ValueError("a pack needs at least one member")
    if any(cfg.resolved().family != "gan" for cfg in cfgs):
        raise ValueError("packs train GANs only (family=gan)")
    keys = {pack_key(cfg) for cfg in cfgs}
    if len(keys) != 1:
        a, b = list(keys)[:2]
        differing = sorted({k for k, _ in set(a) ^ set(b)})
        raise ValueError(f"pack members must share every shape setting; they differ in {', '.join(differing)}")


def member_bytes(cfg: TrainConfig) -> int:
    """An estimate of one member's memory in training: weights, gradients and two optimiser moments
    (4 fp32 copies; the EMA adds one of G), plus every layer's output for a batch, kept for backward with
    its gradient (x2), for the three forward passes of a step. An estimate, not a measurement."""
    from tuner.training.trial import build_models

    cfg = cfg.resolved()
    g, d = build_models(cfg)
    params = sum(p.numel() for p in g.parameters()) * (5 if cfg.g_ema > 0 else 4) + sum(p.numel() for p in d.parameters()) * 4
    outputs = [0]

    def count(_module, _inputs, output):
        outputs[0] += output.numel()

    hooks = [m.register_forward_hook(count) for net in (g, d) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        d(g(torch.zeros(1, cfg.z_dim)))
    for h in hooks:
        h.remove()
    return 4 * (params + 3 * 2 * cfg.batch_size * outputs[0])


def memory_budget(on_gpu: bool, gpus: float, cpus: float) -> float:
    """Bytes one pack may use: its share of GPU 0's memory, or its share (cpus / cores) of the free RAM."""
    if on_gpu:
        return torch.cuda.get_device_properties(0).total_memory * min(1.0, gpus or 1.0)
    with open("/proc/meminfo") as fh:
        free_kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    return free_kib * 1024 * min(1.0, cpus / (os.cpu_count() or 1))


class FusedGAN:
    """The fused nets and optimisers of K member trials (built from, and stored back into, the trials)."""

    def __init__(self, trials: Sequence[Trial]) -> None:
        self.trials = list(trials)
        self.G = FusedNet([t.nets["G"] for t in trials])
        self.D = FusedNet([t.nets["D"] for t in trials])
        self.ema = FusedNet([t.nets[EMA_NET] for t in trials]) if EMA_NET in trials[0].nets else None
        self.opt_g: FusedOptimizer = fuse_optimizer(self.G, [t.opts["G"] for t in trials])
        self.opt_d: FusedOptimizer = fuse_optimizer(self.D, [t.opts["D"] for t in trials])
        cfgs = [t.cfg for t in trials]
        self.cfg = cfgs[0]  # the shared settings
        ref = next(self.D.parameters())
        self.clip = torch.tensor([c.clip_value for c in cfgs], device=ref.device) if self.cfg.clip_value is not None else None
        self.gp_lambda = torch.tensor([c.gp_lambda for c in cfgs], device=ref.device) if self.cfg.gp_lambda is not None else None
        self.ema_weight = torch.tensor([1.0 - c.g_ema for c in cfgs], device=ref.device)  # on the device: no copy per step

    @property
    def size(self) -> int:
        return len(self.trials)

    def store(self) -> None:
        """Write every member's nets and optimiser state back into its solo trial."""
        for net in (self.G, self.D, self.ema):
            if net is not None:
                net.store()
        self.opt_g.store()
        self.opt_d.store()


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """K per-member batches (B, ...) -> (B, K, ...)."""
    return torch.stack(tensors, dim=1)


def draw(trials: Sequence[Trial], images: torch.Tensor) -> dict[str, Any]:
    """Every random number one GAN step takes, drawn from each member's stream in the solo order
    (per critic step: real batch, noise, penalty mix; then the generator's noise)."""
    cfg = trials[0].cfg
    critic: list[dict[str, list[torch.Tensor]]] = [{"real": [], "z": [], "eps": []} for _ in range(cfg.n_critic)]
    z_g = []
    for t in trials:
        for c in range(cfg.n_critic):
            real = sample_batch(images, cfg.batch_size, t.gen, "tanh")
            critic[c]["real"].append(real)
            critic[c]["z"].append(torch.randn(cfg.batch_size, cfg.z_dim, generator=t.gen, device=t.device))
            if cfg.gp_lambda is not None:
                shape = (real.shape[0],) + (1,) * (real.dim() - 1)
                critic[c]["eps"].append(torch.rand(shape, generator=t.gen, device=t.gen.device, dtype=real.dtype).to(real.device))
        z_g.append(torch.randn(cfg.batch_size, cfg.z_dim, generator=t.gen, device=t.device))
    return {"critic": [{k: _stack(v) if v else None for k, v in c.items()} for c in critic], "z_g": _stack(z_g)}


def per_member(fn: Callable[..., torch.Tensor], *scores: torch.Tensor) -> torch.Tensor:
    """A solo loss (mean over its batch) applied to each member's (B,) scores: (B, K) -> (K,)."""
    return torch.func.vmap(fn, in_dims=1)(*scores)


def gradient_penalty(critic: FusedNet, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """models.losses.gradient_penalty for every member at once: (B, K, ...) -> (K,)."""
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores, x_hat, grad_outputs=torch.ones_like(scores), create_graph=True)
    return (grad.flatten(2).norm(2, dim=2) - 1).pow(2).mean(0)


def fused_gan_step(pack: FusedGAN, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """tuner.training.steps.gan_step for every member at once; each returned value has one entry per member."""
    cfg, lead = pack.cfg, pack.trials[0]
    loss = LOSSES[cfg.loss]
    draws = draw(pack.trials, images)
    for c in draws["critic"]:
        real = c["real"]
        with torch.no_grad(), lead.autocast():
            fake = pack.G(c["z"]).float()
        with lead.autocast():
            real_scores, fake_scores = pack.D(real).float(), pack.D(fake).float()
        loss_d = per_member(loss.d_loss, real_scores, fake_scores)
        if pack.gp_lambda is not None:
            loss_d = loss_d + pack.gp_lambda * gradient_penalty(pack.D, real, fake, c["eps"])
        pack.opt_d.zero_grad()
        loss_d.sum().backward()  # members share no parameter: each gets its own loss's gradient
        pack.opt_d.step()
        if pack.clip is not None:
            with torch.no_grad():  # models.losses.clip_weights_, each member at its own bound
                for p in pack.D.parameters():
                    bound = pack.clip.view(-1, *([1] * (p.dim() - 1)))
                    p.clamp_(-bound, bound)
        for t in pack.trials:
            t.images_seen += cfg.batch_size
        critic = {"loss_d": loss_d.detach(), "d_real": real_scores.detach().mean(0), "d_fake": fake_scores.detach().mean(0)}
    with lead.autocast():
        fake_scores_g = pack.D(pack.G(draws["z_g"])).float()
    loss_g = per_member(loss.g_loss, fake_scores_g)
    pack.opt_g.zero_grad()
    loss_g.sum().backward()
    pack.opt_g.step()
    if pack.ema is not None:
        with torch.no_grad():
            for p_ema, p in zip(pack.ema.parameters(), pack.G.parameters()):
                p_ema.lerp_(p.detach(), pack.ema_weight.view(-1, *([1] * (p.dim() - 1))).to(p.dtype))
            for b_ema, b in zip(pack.ema.buffers(), pack.G.buffers()):
                b_ema.copy_(b)
    return {"loss_d": critic["loss_d"], "loss_g": loss_g.detach(), "d_real": critic["d_real"], "d_fake": critic["d_fake"]}


# ------------------------------------------------------------------------------------------
# the pack's training loop: tuner.training.loop.train for K members at once


@dataclass
class Member:
    """One member's run: its solo trial, where its files go, whom it reports to, and its bookkeeping."""

    trial: Trial
    out_dir: Path
    ckpt_dir: Path
    report: Report | None
    points: list[int]
    target: int
    next_eval: int
    interval_steps: int = 0
    interval_images: int = 0
    interval_train_s: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    done: bool = False  # finished its budget or diverged
    next_ckpt: int | None = None  # images seen at its next checkpoint between evaluations (checkpoint_every_kimg)
    last_ckpt_s: float = 0.0  # its training time at its last checkpoint (checkpoint_every_min)

    def checkpoint_due(self) -> bool:
        """A checkpoint between evaluations is due (tuner.training.loop.train's schedule)."""
        seen, every_s = self.trial.images_seen, self.trial.cfg.checkpoint_every_min * 60
        due = (self.next_ckpt is not None and seen >= self.next_ckpt) or (every_s > 0 and self.trial.elapsed_s - self.last_ckpt_s >= every_s)
        return due and seen < self.target and seen < self.next_eval

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        self.trial.history.append(record)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class MemberSpec:
    """What `train_pack` needs of one member (the arguments `tuner.training.loop.train` takes for one trial)."""

    cfg: TrainConfig
    out_dir: str | Path
    report: Report | None = None
    resume_from: str | Path | None = None
    checkpoint_dir: str | Path | None = None


class PackLoop:
    """tuner.training.loop.train for a changing set of members: `add` and `remove` them between steps, `run`
    trains the current ones in one fused step until one of them leaves or `changed()` says the set is
    about to change. Every member evaluates, writes metrics.jsonl, sample grids and its checkpoint, and
    calls its `report`, exactly where a solo run of its config would (tuner/training/loop.py)."""

    def __init__(self, cfg: TrainConfig, hold_after_report: bool = False) -> None:
        """`cfg`: any member's config; the data, device and metric settings are shared by all members.
        `hold_after_report`: a member that reported an evaluation waits (out of the fused step) until
        `release(member)`, as a solo trial waits inside tune.report for the scheduler's decision."""
        self.cfg = cfg.resolved()
        self.hold_after_report = hold_after_report
        self.held: set[str] = set()
        self.device = pick_device(self.cfg)
        self.images = training_images(self.cfg.dataset, self.device, self.cfg.data_mirror, self.cfg.train_limit)
        self.evaluator = Evaluator(self.cfg, self.device)  # the backbone and real statistics, once for all members
        self.members: dict[str, Member] = {}

    def add(self, member_id: str, spec: MemberSpec) -> Member:
        """Build the member's solo trial (from its checkpoint, if it resumes) and its files. Raises
        CheckpointError for an unreadable checkpoint, ValueError for a config of another shape."""
        cfg = spec.cfg.resolved()
        check_packable([self.cfg, cfg])
        out_dir = Path(spec.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        trial = build_trial(cfg, self.device)
        if spec.resume_from is not None:
            load_checkpoint(trial, Path(spec.resume_from))
        write_run_files(trial, out_dir)
        points = eval_points(cfg)
        target = round(cfg.max_kimg * 1000)
        ckpt_dir = Path(spec.checkpoint_dir) if spec.checkpoint_dir is not None else out_dir / "checkpoint"
        member = Member(trial, out_dir, ckpt_dir, spec.report, points, target, next_point(points, trial.images_seen) or target)
        interval, trial.interval = trial.interval or {}, None  # resumed between two evaluations: that interval
        member.sums = {k: float(v) for k, v in interval.get("sums", {}).items()}
        member.interval_steps, member.interval_images = interval.get("steps", 0), interval.get("images", 0)
        member.interval_train_s = interval.get("train_s", 0.0)
        member.next_ckpt, member.last_ckpt_s = next_checkpoint(cfg, trial.images_seen), trial.elapsed_s
        self.members[member_id] = member
        return member

    def remove(self, member_id: str) -> None:
        self.members.pop(member_id, None)
        self.held.discard(member_id)

    def release(self, member_id: str) -> None:
        self.held.discard(member_id)

    def active(self) -> list[str]:
        return [i for i in self.members if i not in self.held]

    def run(self, changed: Callable[[], bool] = lambda: False) -> list[str]:
        """Train the members not held until one finishes, diverges or is held, or `changed()`; returns the
        members that finished or diverged (and are gone)."""
        finished = [i for i, m in self.members.items() if m.trial.images_seen >= m.target]
        ids = [i for i in self.active() if i not in finished]
        stop: list[int] = []
        if ids:
            run = FusedRun([self.members[i] for i in ids])
            try:
                while not stop and not changed():
                    stop = self._step(run)
            finally:
                run.pack.store()  # the members' solo trials hold the pack's state whenever it is not running
        for k in stop:
            m = self.members[ids[k]]
            if m.done:
                finished.append(ids[k])
            else:
                self.held.add(ids[k])
        for i in finished:
            self.remove(i)
        return finished

    def _step(self, run: "FusedRun") -> list[int]:
        """One fused step; at a member's evaluation point, or every DIVERGENCE_CHECK_EVERY steps, the
        members' bookkeeping. Returns the indices of members that finished, diverged, or are held."""
        seen_before = [m.trial.images_seen for m in run.members]
        run.add(fused_gan_step(run.pack, self.images))  # no host synchronisation here
        at_eval = []
        for m, before in zip(run.members, seen_before):
            m.trial.step += 1
            m.interval_steps += 1
            m.interval_images += m.trial.images_seen - before
            at_eval.append(m.trial.images_seen >= m.next_eval)
        run.steps += 1
        kimg_due = any(m.next_ckpt is not None and m.trial.images_seen >= m.next_ckpt for m in run.members)
        if not any(at_eval) and not kimg_due and run.steps % DIVERGENCE_CHECK_EVERY:
            return []
        run.sync()  # the one host synchronisation: loss sums and wall time of the steps since the last one
        leaving = []
        for k, m in enumerate(run.members):
            reason = check_divergence(m.sums)
            if reason is None and not at_eval[k] and m.checkpoint_due():
                run.pack.store()
                t_ckpt = time.perf_counter()
                _checkpoint(m)
                run.evaluated(k, time.perf_counter() - t_ckpt, reset=False)
            if reason is None and at_eval[k]:
                run.pack.store()
                t_eval = time.perf_counter()
                reason = _evaluate(m, self.evaluator, run.pack.size)
                run.evaluated(k, time.perf_counter() - t_eval)
            if reason is not None:
                _diverge(m, reason)
            m.done = reason is not None or m.trial.images_seen >= m.target
            if m.done or (at_eval[k] and self.hold_after_report):
                leaving.append(k)
        return leaving


class FusedRun:
    """The members of one fused pack while it trains: their loss sums as (K,) tensors on the device,
    read back (one synchronisation) only at evaluations and divergence checks, and the wall time between
    such reads, shared out to every member as training time."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.pack = FusedGAN([m.trial for m in members])
        self.carry = [dict(m.sums) for m in members]  # each member's sums from before this pack
        self.sums: dict[str, torch.Tensor] = {}
        self.read: list[dict[str, float]] = [{} for _ in members]  # each member's device sums at its last eval
        self.steps = 0
        self._values: tuple[list[str], list[list[float]]] = ([], [])
        self.t_sync = time.perf_counter()

    def add(self, out: dict[str, torch.Tensor]) -> None:
        for key, value in out.items():
            value = value.detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def sync(self) -> None:
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).tolist() if keys else []
        now = time.perf_counter()
        for k, m in enumerate(self.members):
            m.sums = {key: self.carry[k].get(key, 0.0) + values[i][k] - self.read[k].get(key, 0.0) for i, key in enumerate(keys)}
            m.interval_train_s += now - self.t_sync
            m.trial.elapsed_s += now - self.t_sync
        self._values = (keys, values)
        self.t_sync = now

    def evaluated(self, k: int, seconds: float, reset: bool = True) -> None:
        """Member k's evaluation (`reset`: its sums start again) or checkpoint took `seconds`, which are
        not training time of the others."""
        if reset:
            keys, values = self._values
            self.carry[k] = {}
            self.read[k] = {key: values[i][k] for i, key in enumerate(keys)}
        self.t_sync += seconds


def train_pack(specs: Sequence[MemberSpec]) -> list[list[dict[str, Any]]]:
    """Train K member configs of one shape in one fused step, from start to end; returns each member's
    evaluation records. A member that finishes or diverges leaves, and the others go on in a smaller pack."""
    cfgs = [s.cfg.resolved() for s in specs]
    check_packable(cfgs)
    loop = PackLoop(cfgs[0])
    members = [loop.add(str(i), spec) for i, spec in enumerate(specs)]
    while loop.members:
        loop.run()
    return [m.trial.history for m in members]


def _evaluate(m: Member, evaluator: Evaluator, pack_members: int) -> str | None:
    """tuner.training.loop.train's evaluation point for one member (its trial already holds the pack's state).
    The record also says how many members its pack trained at that step (`pack_members`)."""
    trial = m.trial
    t_eval = time.perf_counter()
    record: dict[str, Any] = {"kimg": trial.kimg, "step": trial.step, "precision": trial.precision, "pack_members": pack_members}
    record.update({k: v / m.interval_steps for k, v in m.sums.items()})
    with torch.random.fork_rng(devices=[trial.device] if trial.device.type == "cuda" else []):
        record.update(evaluator.evaluate(trial, m.out_dir, kimg_tag(m.next_eval / 1000)))
    trial.elapsed_s += time.perf_counter() - t_eval
    record["time_s"] = trial.elapsed_s
    record["checkpoint_s"] = trial.checkpoint_s  # of time_s, spent on checkpoints between evaluations
    record["img_per_s"] = m.interval_images / m.interval_train_s
    if not math.isfinite(record["fid"]):
        return f"fid became {record['fid']}"
    m.append(record)
    save_checkpoint(trial, m.ckpt_dir)
    if m.report is not None:
        m.report(record, m.ckpt_dir)
    m.sums, m.interval_steps, m.interval_images, m.interval_train_s = {}, 0, 0, 0.0
    m.next_eval = next_point(m.points, trial.images_seen) or m.target
    m.last_ckpt_s, m.next_ckpt = trial.elapsed_s, next_checkpoint(trial.cfg, trial.images_seen)
    return None


def _checkpoint(m: Member) -> None:
    """tuner.training.loop.train's checkpoint between evaluations: the state and the interval's partial sums,
    reported to Tune as a checkpoint-only record."""
    trial = m.trial
    t_ckpt = time.perf_counter()
    trial.interval = {"sums": {k: torch.tensor(v, dtype=torch.float64) for k, v in m.sums.items()},
                      "steps": m.interval_steps, "images": m.interval_images, "train_s": m.interval_train_s}
    save_checkpoint(trial, m.ckpt_dir)
    trial.interval = None
    if m.report is not None:
        m.report(checkpoint_record(trial), m.ckpt_dir)
    spent = time.perf_counter() - t_ckpt
    trial.elapsed_s += spent
    trial.checkpoint_s += spent
    m.last_ckpt_s = trial.elapsed_s
    m.next_ckpt = next_checkpoint(trial.cfg, trial.images_seen)


def _diverge(m: Member, reason: str) -> None:
    record = diverged_record(m.trial, reason)
    m.append(record)
    if m.report is not None:
        m.report(record, None)
