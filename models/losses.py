"""GAN losses as a registry: one entry per loss, with its published optimiser defaults.

Each `GANLoss` pairs the critic and generator objectives with the optimiser settings of the paper
that introduced it, so the search space, the CLI choices and `TrainConfig.resolved()` all read the
same table. Scores are the critic's raw outputs, shape (B,), never passed through a sigmoid.

The WGAN extras are not part of any loss: the trainer adds `gp_lambda * gradient_penalty(...)` to
the wgan-gp critic loss, and calls `clip_weights_` after each wgan critic optimiser step.

Importing this module does not import torch (each function imports it when first called): a config
is validated against the registry (`TrainConfig`), and a command line that fails on a bad value
must not pay torch's import, about 1.5 s, to say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from models.names import LOSS_KEYS, OPTIMIZERS

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


@dataclass(frozen=True)
class GANLoss:
    name: str
    d_loss: Callable[[Tensor, Tensor], Tensor]
    """(real_scores, fake_scores) -> scalar critic loss."""
    g_loss: Callable[[Tensor], Tensor]
    """fake_scores -> scalar generator loss."""
    optimizer: str
    """adam | rmsprop."""
    lr: float
    betas: tuple[float, float]
    """Adam betas; RMSprop ignores them (the field still holds valid Adam values)."""
    n_critic: int
    """Critic steps per generator step."""
    clip_value: float | None
    """Critic weight clipping bound (wgan only)."""
    gp_lambda: float | None
    """Gradient-penalty weight (wgan-gp only)."""
    reference: str
    """Paper the defaults come from."""

    def defaults(self) -> dict:
        """The loss's published value of every field in LOSS_KEYS."""
        values = (self.optimizer, self.lr, self.betas[0], self.betas[1], self.n_critic, self.clip_value, self.gp_lambda)
        return dict(zip(LOSS_KEYS, values, strict=True))


LOSSES: dict[str, GANLoss] = {}


def register_loss(loss: GANLoss) -> GANLoss:
    if loss.name in LOSSES:
        raise ValueError(f"GAN loss {loss.name!r} is already registered")
    if loss.optimizer not in OPTIMIZERS:
        raise ValueError(f"GAN loss {loss.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}")
    if not all(0 <= b < 1 for b in loss.betas):
        raise ValueError(f"GAN loss {loss.name!r}: betas must lie in [0, 1), got {loss.betas}")
    LOSSES[loss.name] = loss
    return loss


# ------------------------------------------------------------------------------------------
# objectives; softplus(-x) = -log(sigmoid(x)) without the overflow


def bce_d(real: Tensor, fake: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.softplus(-real).mean() + F.softplus(fake).mean()


def bce_g(fake: Tensor) -> Tensor:
    import torch.nn.functional as F

    # Non-saturating generator loss -log D(G(z)), not the minimax log(1 - D(G(z))).
    return F.softplus(-fake).mean()


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    import torch.nn.functional as F

    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def wasserstein_d(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (real - 1).pow(2).mean() + 0.5 * fake.pow(2).mean()


def lsgan_g(fake: Tensor) -> Tensor:
    return 0.5 * (fake - 1).pow(2).mean()


register_loss(GANLoss(
    name="bce", d_loss=bce_d, g_loss=bce_g,
    optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, clip_value=None, gp_lambda=None,
    reference="Goodfellow et al. 2014 (non-saturating loss); Radford et al. 2015 (DCGAN defaults)",
))
register_loss(GANLoss(
    name="hinge", d_loss=hinge_d, g_loss=wasserstein_g,
    optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, clip_value=None, gp_lambda=None,
    reference="Lim & Ye 2017 (Geometric GAN); Miyato et al. 2018 (SN-GAN)",
))
register_loss(GANLoss(
    name="wgan", d_loss=wasserstein_d, g_loss=wasserstein_g,
    optimizer="rmsprop", lr=5e-5, betas=(0.5, 0.999), n_critic=5, clip_value=0.01, gp_lambda=None,
    reference="Arjovsky et al. 2017 (WGAN, Algorithm 1)",
))
register_loss(GANLoss(
    name="wgan-gp", d_loss=wasserstein_d, g_loss=wasserstein_g,
    optimizer="adam", lr=1e-4, betas=(0.5, 0.9), n_critic=5, clip_value=None, gp_lambda=10.0,
    reference="Gulrajani et al. 2017 (WGAN-GP, Algorithm 1)",
))
register_loss(GANLoss(
    name="lsgan", d_loss=lsgan_d, g_loss=lsgan_g,
    optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, clip_value=None, gp_lambda=None,
    reference="Mao et al. 2017 (LSGAN, a=0 b=1 c=1 coding)",
))


# ------------------------------------------------------------------------------------------
# WGAN extras


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """mean((||grad critic(x_hat)||_2 - 1)^2) on random interpolates of real and fake, unweighted.

    One eps ~ U(0, 1) per sample, broadcast over the remaining dims, so any (B, ...) shape works.
    The graph is kept (create_graph) so the penalty trains the critic's parameters.
    """
    import torch

    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    device = generator.device if generator is not None else real.device
    eps = torch.rand(shape, generator=generator, device=device, dtype=real.dtype).to(real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores, x_hat, grad_outputs=torch.ones_like(scores), create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def clip_weights_(module: nn.Module, c: float) -> None:
    """Clamp every parameter of `module` to [-c, c] in place (WGAN's Lipschitz constraint)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.clamp_(-c, c)
