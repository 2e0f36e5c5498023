"""One trial, top to bottom: config -> data -> models -> training steps -> evaluations.

`train(cfg, out_dir, report)` is the whole trial. It knows nothing about Ray: the search driver
passes a `report(metrics, checkpoint_dir)` callback (tuner/search.py), the CLI passes one that
prints (tuner/train.py). Training length is counted in kimg, thousands of real images seen by the
discriminator (GAN) or by the model (VAE/AE); every `eval_every_kimg` and at the end it

  1. samples `fid_samples` images and scores them (FID against the test split's statistics, plus
     class-diversity metrics from the domain classifier),
  2. appends one line to OUT/metrics.jsonl and writes sample grids to OUT/samples/,
  3. saves OUT/checkpoint/checkpoint.pt (models, optimisers, step, RNG state, config; the search
     stages it outside OUT, see tuner/search.py:run_trial),
  4. calls `report`.

A run whose losses or FID become non-finite ends cleanly: its last record has `diverged=True` and a
`diverge_reason`, and its FID is +inf so schedulers rank it last. It is not an exception, so a
study treats it as a finished, failed trial instead of retrying it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from models.losses import LOSSES, clip_weights_, gradient_penalty
from models.registry import build_model
from models.vae import vae_loss
from tuner.config import TrainConfig
from tuner.data import load_split, resolve_mirror, sample_batch, training_images
from tuner.precision import autocast, resolve_precision

Report = Callable[[dict[str, Any], Path | None], None]

CHECKPOINT_NAME = "checkpoint.pt"
GRID_SIZE = 64  # fixed noise batch drawn into every sample grid (8 x 8)
EVAL_CHUNK = 500  # evaluation noise is drawn in blocks of this many (it fixes which samples are scored)
FORWARD_CHUNK = 125  # samples per generator forward pass on a CPU, where 4x125 takes 0.7x the time of 1x500
LOSS_LIMIT = 1e6  # |loss| above this counts as divergence
DIVERGENCE_CHECK_EVERY = 10  # steps between (synchronising) finiteness checks
# Config fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = {"max_kimg", "device", "cache_dir", "data_mirror", "gpu_memory_fraction"}


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or belongs to another config."""


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was requested but torch sees no CUDA device")
        if cfg.gpu_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction)
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(cfg: TrainConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))


def to_uint8(images: torch.Tensor, scale: str) -> torch.Tensor:
    """Model output -> uint8 (N, 28, 28). scale: 'tanh' ([-1, 1]) or 'unit' ([0, 1])."""
    unit = (images + 1) / 2 if scale == "tanh" else images
    return unit.clamp(0, 1).mul(255).round().to(torch.uint8).reshape(-1, 28, 28).cpu()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """uint8 (N, 28, 28) -> one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(images.unsqueeze(1).float() / 255, path, nrow=nrow, padding=2, pad_value=1.0)


@dataclass
class Trial:
    """Everything that a checkpoint holds."""

    cfg: TrainConfig
    device: torch.device
    nets: dict[str, torch.nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    gen: torch.Generator
    fixed_noise: torch.Tensor
    precision: str = "fp32"  # what the model steps run in: fp32 | bf16 (resolved from cfg.precision)
    step: int = 0
    images_seen: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    def autocast(self):
        """The context of a model step's forward passes (bf16 autocast, or nothing for fp32)."""
        return autocast(self.device.type, self.precision)


EMA_NET = "G_ema"  # the generator's exponential moving average, a net of its own (no optimiser)


def build_trial(cfg: TrainConfig, device: torch.device) -> Trial:
    torch.manual_seed(cfg.seed)
    if cfg.family == "gan":
        g, d = build_model(cfg)
        nets = {"G": g.to(device), "D": d.to(device)}
        if cfg.g_ema > 0:
            # A plain copy of G (no RNG is drawn, so g_ema=0 and g_ema>0 runs train identically). It is
            # saved and restored with the other nets, so a resumed run continues the same average.
            nets[EMA_NET] = copy.deepcopy(nets["G"]).requires_grad_(False)
        opts = {"G": make_optimizer(cfg, nets["G"].parameters()),
                "D": make_optimizer(cfg, nets["D"].parameters(), lr=cfg.lr * cfg.lr_d_ratio)}
    else:
        nets = {"model": build_model(cfg).to(device)}
        opts = {"model": make_optimizer(cfg, nets["model"].parameters())}
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    fixed = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    fixed_noise = torch.randn(GRID_SIZE, cfg.z_dim, generator=fixed, device=device)
    return Trial(cfg, device, nets, opts, gen, fixed_noise, precision=resolve_precision(cfg.precision, device.type))


# ------------------------------------------------------------------------------------------
# checkpoints (torch.load(weights_only=True): tensors, numbers, strings, dicts and lists only)


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
        "history": json.dumps(trial.history),
    }
    path = directory / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint behind
    return path


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


def load_checkpoint(trial: Trial, path: Path) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
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
        k for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES and trial.cfg.to_dict()[k] != v
    )
    if differing:
        raise CheckpointError(f"checkpoint file {path} was written by another config (fields differ: {', '.join(differing)})")
    for k, net in trial.nets.items():
        net.load_state_dict(state["nets"][k])
    for k, opt in trial.opts.items():
        opt.load_state_dict(state["opts"][k])
    trial.gen.set_state(state["gen"].cpu() if trial.device.type == "cpu" else state["gen"])
    torch.set_rng_state(state["torch_rng"].cpu())
    trial.step = state["step"]
    trial.images_seen = state["images_seen"]
    trial.elapsed_s = state["elapsed_s"]
    trial.history = json.loads(state["history"])


# ------------------------------------------------------------------------------------------
# training steps


def gan_step(trial: Trial, images: torch.Tensor | None,
             next_real: Callable[[], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """n_critic critic steps, each on a fresh real batch, then one generator step.

    Real batches are sampled from `images`, or taken from `next_real()` when given (the
    throughput benchmark feeds a DataLoader through it). With bf16, only the forward passes run
    under autocast: scores are cast to fp32 before the loss, the gradient penalty (a double
    backward) runs outside autocast on fp32 images, and parameters and optimiser state stay fp32."""
    cfg, g, d = trial.cfg, trial.nets["G"], trial.nets["D"]
    loss = LOSSES[cfg.loss]
    for _ in range(cfg.n_critic):
        real = next_real() if next_real is not None else sample_batch(images, cfg.batch_size, trial.gen, "tanh")
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=trial.gen, device=trial.device)
        with torch.no_grad(), trial.autocast():
            fake = g(z).float()
        with trial.autocast():
            real_scores, fake_scores = d(real).float(), d(fake).float()
        loss_d = loss.d_loss(real_scores, fake_scores)
        if cfg.gp_lambda is not None:
            loss_d = loss_d + cfg.gp_lambda * gradient_penalty(d, real, fake, generator=trial.gen)
        trial.opts["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        trial.opts["D"].step()
        if cfg.clip_value is not None:
            clip_weights_(d, cfg.clip_value)
        trial.images_seen += cfg.batch_size
    z = torch.randn(cfg.batch_size, cfg.z_dim, generator=trial.gen, device=trial.device)
    with trial.autocast():
        fake_scores_g = d(g(z)).float()
    loss_g = loss.g_loss(fake_scores_g)
    trial.opts["G"].zero_grad(set_to_none=True)
    loss_g.backward()
    trial.opts["G"].step()
    if cfg.g_ema > 0:
        update_ema(trial.nets[EMA_NET], g, cfg.g_ema)
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": real_scores.detach().mean(),
        "d_fake": fake_scores.detach().mean(),
    }


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters (lerp_, in place); buffers (BatchNorm
    statistics) copied.

    Hand-written rather than torch.optim.swa_utils.AveragedModel: the average is a plain module of
    G's own class, so its state_dict has G's keys (no `module.` prefix, no n_averaged counter), loads
    into a bare generator, and goes into the checkpoint like every other net. AveragedModel's EMA
    also starts from the first update it sees, while this one starts from G's initial weights, the
    closed form ema_1 = d * G_0 + (1 - d) * G_1 that the tests check."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def autoencoder_step(trial: Trial, images: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg, model = trial.cfg, trial.nets["model"]
    x = sample_batch(images, cfg.batch_size, trial.gen, "unit")
    with trial.autocast():
        logits, mu, logvar = model(x, generator=trial.gen)
    logits, mu = logits.float(), mu.float()
    logvar = logvar.float() if logvar is not None else None
    loss, recon, kl = vae_loss(logits, x, mu, logvar, cfg.kl_beta)
    trial.opts["model"].zero_grad(set_to_none=True)
    loss.backward()
    trial.opts["model"].step()
    trial.images_seen += cfg.batch_size
    return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}


# ------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def generate(trial: Trial, n: int, generator: torch.Generator, net: str = "G") -> torch.Tensor:
    """n samples as uint8 (n, 28, 28): G(z) for GANs, sigmoid(decode(z)), z ~ N(0, I), for VAEs/AEs."""
    out = []
    per_pass = FORWARD_CHUNK if trial.device.type == "cpu" else EVAL_CHUNK  # a GPU wants the big batch
    for start in range(0, n, EVAL_CHUNK):
        z = torch.randn(min(EVAL_CHUNK, n - start), trial.cfg.z_dim, generator=generator, device=trial.device)
        out.extend(decode(trial, part, net) for part in z.split(per_pass))
    return torch.cat(out)


def decode(trial: Trial, z: torch.Tensor, net: str = "G") -> torch.Tensor:
    if trial.cfg.family == "gan":
        return to_uint8(trial.nets[net](z), "tanh")
    return to_uint8(torch.sigmoid(trial.nets["model"].decode(z)), "unit")


@torch.no_grad()
def heldout_vae_terms(trial: Trial, n: int = 1000) -> dict[str, float]:
    """Reconstruction and KL on the first n test images; ELBO with beta = 1 (nats per image)."""
    cfg, model = trial.cfg, trial.nets["model"]
    test, _ = load_split(cfg.dataset, "test", resolve_mirror(cfg.data_mirror))
    x = test[:n].unsqueeze(1).to(trial.device).float() / 255
    mu, logvar = model.encode(x)
    _, recon, kl = vae_loss(model.decode(mu), x, mu, logvar, 1.0)
    terms = {"test_recon": recon.item()}
    if logvar is not None:
        terms["test_kl"] = kl.item()
        terms["elbo"] = -(recon.item() + kl.item())
    return terms


def prepare_metrics(cfg: TrainConfig, device: torch.device) -> None:
    from tuner.backbones import get_backbone
    from tuner.fid import real_statistics

    mirror = resolve_mirror(cfg.data_mirror)
    for name in dict.fromkeys(("domain", cfg.fid_backbone)):
        backbone = get_backbone(name, cfg.dataset, device=str(device), cache_dir=cfg.cache_dir, mirror=mirror)
        if name == cfg.fid_backbone:
            real_statistics(cfg.dataset, "test", backbone, cfg.fid_samples, mirror=mirror, cache_dir=cfg.cache_dir)


def evaluate(trial: Trial, out_dir: Path, tag: str) -> dict[str, Any]:
    from tuner.backbones import get_backbone
    from tuner.diversity import diversity_metrics
    from tuner.fid import fid_of_features

    cfg = trial.cfg
    for net in trial.nets.values():
        net.eval()
    try:
        eval_gen = torch.Generator(device=trial.device).manual_seed(cfg.seed + 2)  # same noise at every eval
        samples = generate(trial, cfg.fid_samples, eval_gen)
        mirror = resolve_mirror(cfg.data_mirror)
        backbone = get_backbone(cfg.fid_backbone, cfg.dataset, device=str(trial.device), cache_dir=cfg.cache_dir, mirror=mirror)
        domain = get_backbone("domain", cfg.dataset, device=str(trial.device), cache_dir=cfg.cache_dir, mirror=mirror)
        if backbone is domain:  # one forward pass gives the FID features and the class probabilities
            features, probabilities = domain.features_and_probabilities(samples)
        else:
            features, probabilities = backbone.features(samples), domain.probabilities(samples)
        metrics: dict[str, Any] = {
            "fid": fid_of_features(features, cfg.dataset, backbone, n_real=cfg.fid_samples, mirror=mirror,
                                   cache_dir=cfg.cache_dir),
            "fid_backbone": cfg.fid_backbone,
            "fid_samples": cfg.fid_samples,
        }
        metrics.update(diversity_metrics(probabilities))
        save_grid(decode(trial, trial.fixed_noise), out_dir / "samples" / f"kimg_{tag}.png")
        if EMA_NET in trial.nets:  # the EMA generator, scored on the same noise, backbone and samples
            ema_gen = torch.Generator(device=trial.device).manual_seed(cfg.seed + 2)
            ema_samples = generate(trial, cfg.fid_samples, ema_gen, EMA_NET)
            metrics["fid_ema"] = fid_of_features(backbone.features(ema_samples), cfg.dataset, backbone,
                                                 n_real=cfg.fid_samples, mirror=mirror, cache_dir=cfg.cache_dir)
            save_grid(decode(trial, trial.fixed_noise, EMA_NET), out_dir / "samples" / f"ema_kimg_{tag}.png")
        if cfg.family != "gan":
            metrics.update(heldout_vae_terms(trial))
            save_autoencoder_images(trial, out_dir / "samples", tag)
    finally:
        for net in trial.nets.values():
            net.train()
    return metrics


@torch.no_grad()
def save_autoencoder_images(trial: Trial, folder: Path, tag: str) -> None:
    """Reconstructions (rows: real / reconstructed), a latent interpolation, a 2-D latent scatter."""
    cfg, model = trial.cfg, trial.nets["model"]
    test, labels = load_split(cfg.dataset, "test", resolve_mirror(cfg.data_mirror))
    x = test[:32].unsqueeze(1).to(trial.device).float() / 255
    mu, _ = model.encode(x)
    recon = to_uint8(torch.sigmoid(model.decode(mu)), "unit")
    real = test[:32]
    rows = torch.cat([torch.cat([real[i : i + 8], recon[i : i + 8]]) for i in range(0, 32, 8)])
    save_grid(rows, folder / f"recon_kimg_{tag}.png")
    # interpolate between the codes of 8 pairs of test images, 10 steps each
    alphas = torch.linspace(0, 1, 10, device=trial.device)
    a, b = mu[:8], mu[8:16]
    path = torch.stack([(1 - t) * a + t * b for t in alphas], dim=1).reshape(-1, cfg.z_dim)
    save_grid(to_uint8(torch.sigmoid(model.decode(path)), "unit"), folder / f"interp_kimg_{tag}.png", nrow=10)
    if cfg.z_dim == 2:
        save_latent_scatter(model, test[:2000], labels[:2000], trial.device, folder / f"latent_kimg_{tag}.png")


def save_latent_scatter(model, images, labels, device, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mu, _ = model.encode(images.unsqueeze(1).to(device).float() / 255)
    mu = mu.cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    points = ax.scatter(mu[:, 0], mu[:, 1], c=labels.numpy(), cmap="tab10", s=4)
    ax.set(title="2-D latent codes of 2000 test images", xlabel="z[0]", ylabel="z[1]")
    fig.colorbar(points, ax=ax, label="class")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# the trial


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


def check_divergence(sums: dict[str, torch.Tensor]) -> str | None:
    for key, value in sums.items():
        v = value.item()
        if not math.isfinite(v):
            return f"{key} became {v}"
        if abs(v) > LOSS_LIMIT * DIVERGENCE_CHECK_EVERY * 10:
            return f"{key} exploded (|sum| {abs(v):.3g})"
    return None


def train(cfg: TrainConfig, out_dir: str | Path, report: Report | None = None, resume_from: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Train one config, evaluating every eval_every_kimg; returns the list of evaluation records.

    Checkpoints go to `checkpoint_dir` (default OUT/checkpoint), overwritten at each evaluation.
    `progress(images_seen)`, if given, is called after every training step (tuner/progress.py).
    """
    cfg = cfg.resolved()
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoint"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)
    images = training_images(cfg.dataset, device, cfg.data_mirror, cfg.train_limit)
    prepare_metrics(cfg, device)  # a first-time domain classifier / statistics are not trial time
    trial = build_trial(cfg, device)
    if resume_from is not None:
        load_checkpoint(trial, Path(resume_from))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in trial.history))  # drop evals after the checkpoint

    step_fn = gan_step if cfg.family == "gan" else autoencoder_step
    target = round(cfg.max_kimg * 1000)
    points = eval_points(cfg)
    next_eval = next_point(points, trial.images_seen) or target
    sums: dict[str, torch.Tensor] = {}
    interval_steps, interval_images, interval_train_s = 0, 0, 0.0
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
            continue

        t_eval = time.perf_counter()
        record: dict[str, Any] = {"kimg": trial.kimg, "step": trial.step, "precision": trial.precision}
        record.update({k: v.item() / interval_steps for k, v in sums.items()})
        # Evaluation must not move the training RNG (dropout draws from it), or a resumed run would
        # differ from an uninterrupted one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            record.update(evaluate(trial, out_dir, kimg_tag(next_eval / 1000)))
        trial.elapsed_s += time.perf_counter() - t_eval
        record["time_s"] = trial.elapsed_s
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

    if diverged is not None:
        record = {
            "kimg": trial.kimg,
            "step": trial.step,
            "precision": trial.precision,
            "fid": float("inf"),
            "fid_backbone": cfg.fid_backbone,
            "fid_samples": cfg.fid_samples,
            "time_s": trial.elapsed_s,
            "diverged": True,
            "diverge_reason": diverged,
        }
        trial.history.append(record)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if report is not None:
            report(record, None)
    return trial.history
