"""VAEs and plain autoencoders for 28x28x1 images in [0, 1], with Bernoulli (logit) decoders.

Both families share one encoder and decoder per arch; the VAE's encoder emits (mu, logvar) and
samples z with the reparameterisation trick, the AE's emits z directly. The encoder width is
d_width and the decoder width g_width, so one width vocabulary serves GANs and VAEs.
With regularize=True every hidden layer gets BatchNorm and Dropout ("regularised VAE").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model

IMAGE_SHAPE = (1, 28, 28)


def _hidden(n: int, conv: bool, regularize: bool, dropout: float) -> list[nn.Module]:
    """The block after a hidden layer with n units/channels: [BatchNorm] ReLU [Dropout]."""
    norm = nn.BatchNorm2d(n) if conv else nn.BatchNorm1d(n)
    return [norm, nn.ReLU(True), nn.Dropout(dropout)] if regularize else [nn.ReLU(True)]


def conv_encoder(width: int, out_dim: int, regularize: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 4, 2, 1),  # 28 -> 14
        *_hidden(width, True, regularize, dropout),
        nn.Conv2d(width, 2 * width, 4, 2, 1),  # 14 -> 7
        *_hidden(2 * width, True, regularize, dropout),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, out_dim),
    )


def conv_decoder(width: int, z_dim: int, regularize: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(z_dim, 2 * width * 7 * 7),
        nn.Unflatten(1, (2 * width, 7, 7)),
        *_hidden(2 * width, True, regularize, dropout),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # 7 -> 14
        *_hidden(width, True, regularize, dropout),
        nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 14 -> 28
    )


def mlp_encoder(width: int, out_dim: int, regularize: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 8 * width),
        *_hidden(8 * width, False, regularize, dropout),
        nn.Linear(8 * width, 4 * width),
        *_hidden(4 * width, False, regularize, dropout),
        nn.Linear(4 * width, out_dim),
    )


def mlp_decoder(width: int, z_dim: int, regularize: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(z_dim, 4 * width),
        *_hidden(4 * width, False, regularize, dropout),
        nn.Linear(4 * width, 8 * width),
        *_hidden(8 * width, False, regularize, dropout),
        nn.Linear(8 * width, 28 * 28),
        nn.Unflatten(1, IMAGE_SHAPE),
    )


class AutoEncoder(nn.Module):
    """Deterministic autoencoder: encode(x) -> (z, None); decode(z) -> logits (B, 1, 28, 28);
    forward(x) -> (logits, z, None)."""

    variational = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.z_dim = z_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.encoder(x), None

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        z, _ = self.encode(x)
        return self.decode(z), z, None


class VAE(AutoEncoder):
    """encode(x) -> (mu, logvar); forward(x, generator) -> (logits, mu, logvar), z sampled by
    the reparameterisation trick."""

    variational = True

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        mu, logvar = self.encode(x)
        # The noise comes from `generator` (when given) so a seeded run is reproducible.
        device = generator.device if generator is not None else mu.device
        noise = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * noise
        return self.decode(z), mu, logvar


class _ConvNets:
    """Mixin: build the conv encoder/decoder pair for an AutoEncoder or VAE."""

    variational: bool

    def __init__(self, z_dim: int, enc_width: int, dec_width: int, regularize: bool = False, dropout: float = 0.2) -> None:
        code = 2 * z_dim if self.variational else z_dim
        super().__init__(  # type: ignore[call-arg]
            conv_encoder(enc_width, code, regularize, dropout),
            conv_decoder(dec_width, z_dim, regularize, dropout),
            z_dim,
        )


class _MLPNets:
    """Mixin: build the MLP encoder/decoder pair for an AutoEncoder or VAE."""

    variational: bool

    def __init__(self, z_dim: int, enc_width: int, dec_width: int, regularize: bool = False, dropout: float = 0.2) -> None:
        code = 2 * z_dim if self.variational else z_dim
        super().__init__(  # type: ignore[call-arg]
            mlp_encoder(enc_width, code, regularize, dropout),
            mlp_decoder(dec_width, z_dim, regularize, dropout),
            z_dim,
        )


class ConvVAE(_ConvNets, VAE):
    pass


class MLPVAE(_MLPNets, VAE):
    pass


class ConvAE(_ConvNets, AutoEncoder):
    pass


class MLPAE(_MLPNets, AutoEncoder):
    pass


def vae_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor | None, kl_beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, recon, kl) in nats per image: Bernoulli NLL summed over pixels, KL to N(0, I).

    loss = recon + kl_beta * kl, the negative (beta-)ELBO. For an AE (logvar None) kl is 0.
    """
    batch = x.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
    if logvar is None:
        return recon, recon, recon.new_zeros(())
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum() / batch
    return recon + kl_beta * kl, recon, kl


def _builder(cls: type[AutoEncoder]):
    def build(*, z_dim: int, g_width: int, d_width: int, regularize: bool = False, dropout: float = 0.2) -> nn.Module:
        return cls(z_dim, d_width, g_width, regularize, dropout)

    build.__name__ = build.__qualname__ = f"build_{cls.__name__}"
    return build


register_model("vae", "conv", _builder(ConvVAE))
register_model("vae", "mlp", _builder(MLPVAE))
register_model("ae", "conv", _builder(ConvAE))
register_model("ae", "mlp", _builder(MLPAE))
