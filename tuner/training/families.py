"""The model families, each written once: what a GAN and an autoencoder (VAE, AE) trial hold and how
their samples are drawn. `FAMILY_SPECS[cfg.family]` is read by `tuner.training.trial` (the nets and optimisers) and
`tuner.training.evaluate` (samples, and the autoencoders' held-out terms); `tuner.training.steps.STEPS` holds each
family's training step beside the other steps."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuner.config import TrainConfig

EMA_NET = "G_ema"  # the generator's exponential moving average, a net of its own (no optimiser)


@dataclass(frozen=True)
class Family:
    """How the trainer handles one model family."""

    model_args: Callable[[TrainConfig], dict[str, Any]]
    """The model builder's family-specific arguments (every family also gets z_dim and the widths)."""
    nets: Callable[[Any, TrainConfig], dict[str, torch.nn.Module]]
    """What the builder returned -> the trial's named nets (saved and restored by name)."""
    learning_rates: Callable[[TrainConfig], dict[str, float]]
    """The nets that get an optimiser, with its learning rate."""
    sampler: str
    """The net that turns noise into images."""
    to_unit: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    """(that net, z) -> images in [0, 1]."""
    autoencoder: bool
    """Evaluations add the held-out ELBO terms, reconstructions and interpolations (on the test split)."""


def _gan_nets(models: tuple[torch.nn.Module, torch.nn.Module], cfg: TrainConfig) -> dict[str, torch.nn.Module]:
    g, d = models
    nets = {"G": g, "D": d}
    if cfg.g_ema > 0:
        # A plain copy of G (no RNG is drawn, so g_ema=0 and g_ema>0 runs train identically). It is
        # saved and restored with the other nets, so a resumed run continues the same average.
        nets[EMA_NET] = copy.deepcopy(g).requires_grad_(False)
    return nets


GAN = Family(
    model_args=lambda cfg: {"d_norm": cfg.d_norm},
    nets=_gan_nets,
    learning_rates=lambda cfg: {"G": cfg.lr, "D": cfg.lr * cfg.lr_d_ratio},  # TTUR: D's rate is lr * lr_d_ratio
    sampler="G",
    to_unit=lambda g, z: (g(z) + 1) / 2,  # tanh output
    autoencoder=False,
)

AUTOENCODER = Family(
    model_args=lambda cfg: {"regularize": cfg.regularize, "dropout": cfg.dropout},
    nets=lambda model, cfg: {"model": model},
    learning_rates=lambda cfg: {"model": cfg.lr},
    sampler="model",
    to_unit=lambda model, z: torch.sigmoid(model.decode(z)),  # Bernoulli logits; z ~ N(0, I) for an AE too
    autoencoder=True,
)

FAMILY_SPECS: dict[str, Family] = {"gan": GAN, "vae": AUTOENCODER, "ae": AUTOENCODER}  # keys: tuner.config.FAMILIES
