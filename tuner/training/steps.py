"""The training steps, one function per job: a critic (D) step, a generator (G) step, a GAN step
(n_critic D steps, then one G step), the generator's EMA update, and a VAE/AE step. `STEPS` maps a
model family to its step. With bf16, only forward passes run under autocast (tuner/training/precision.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.losses import LOSSES, GANLoss, clip_weights_, gradient_penalty
from models.vae import vae_loss
from tuner.training.families import EMA_NET
from tuner.training.trial import Trial


def sample_batch(images: torch.Tensor, batch_size: int, generator: torch.Generator, scale: str) -> torch.Tensor:
    """A random batch by index, converted to float on the images' device.

    scale: "tanh" -> [-1, 1] (GAN generators end in tanh); "unit" -> [0, 1] (Bernoulli VAEs).
    """
    idx = torch.randint(len(images), (batch_size,), generator=generator, device=generator.device)
    # index_select, not images[idx]: same rows, but advanced indexing stalled for ms per batch
    # with 2 torch threads on an oversubscribed CPU (BENCHMARKS.md, trainer throughput)
    batch = images.index_select(0, idx).float().div_(255.0)
    return batch.mul_(2.0).sub_(1.0) if scale == "tanh" else batch


def d_step(trial: Trial, loss: GANLoss, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One critic step on a real batch and a fresh fake batch: loss (+ gradient penalty), optimiser
    step, weight clipping. The gradient penalty (a double backward) runs outside autocast on fp32
    images; scores are cast to fp32 before the loss."""
    cfg, g, d = trial.cfg, trial.nets["G"], trial.nets["D"]
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
    return {"loss_d": loss_d.detach(), "d_real": real_scores.detach().mean(), "d_fake": fake_scores.detach().mean()}


def g_step(trial: Trial, loss: GANLoss) -> dict[str, torch.Tensor]:
    """One generator step on a fresh fake batch, then the EMA update (when g_ema > 0)."""
    cfg, g, d = trial.cfg, trial.nets["G"], trial.nets["D"]
    z = torch.randn(cfg.batch_size, cfg.z_dim, generator=trial.gen, device=trial.device)
    with trial.autocast():
        fake_scores_g = d(g(z)).float()
    loss_g = loss.g_loss(fake_scores_g)
    trial.opts["G"].zero_grad(set_to_none=True)
    loss_g.backward()
    trial.opts["G"].step()
    if cfg.g_ema > 0:
        update_ema(trial.nets[EMA_NET], g, cfg.g_ema)
    return {"loss_g": loss_g.detach()}


def gan_step(trial: Trial, images: torch.Tensor | None,
             next_real: Callable[[], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """n_critic critic steps, each on a fresh real batch, then one generator step.

    Real batches are sampled from `images`, or taken from `next_real()` when given (the
    throughput benchmark feeds a DataLoader through it)."""
    cfg = trial.cfg
    loss = LOSSES[cfg.loss]
    for _ in range(cfg.n_critic):
        real = next_real() if next_real is not None else sample_batch(images, cfg.batch_size, trial.gen, "tanh")
        critic = d_step(trial, loss, real)
    generator = g_step(trial, loss)
    return {"loss_d": critic["loss_d"], "loss_g": generator["loss_g"], "d_real": critic["d_real"], "d_fake": critic["d_fake"]}


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



STEPS: dict[str, Callable[[Trial, torch.Tensor], dict[str, torch.Tensor]]] = {
    "gan": gan_step, "vae": autoencoder_step, "ae": autoencoder_step}
