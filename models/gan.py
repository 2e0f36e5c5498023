"""GAN generators and discriminators for 28x28x1 images in [-1, 1].

conv: DCGAN (Radford et al. 2015) cut down to 28x28: two stride-2 (transposed) convolutions
between 7x7 and 28x28, N(0, 0.02) weights. mlp: the fully connected GAN of common tutorial code.
Discriminators return raw scores of shape (B,); the loss decides what to do with them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from models.names import D_NORMS
from models.registry import register_model

IMAGE_SHAPE = (1, 28, 28)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def spectral_norm_(module: nn.Module) -> None:
    """Wrap the weight of every conv/linear layer in `module` with spectral normalisation.

    The power iteration and the division by sigma run in fp32 even inside a bf16 autocast region
    (CUDA autocast would otherwise run its matrix-vector products in bf16)."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(m)
            parametrization = m.parametrizations.weight[0]
            parametrization.forward = _autocast_off(parametrization.forward)


def _autocast_off(forward):
    def run(weight: Tensor) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return forward(weight.float())

    return run


def _check_norm(norm: str) -> None:
    if norm not in D_NORMS:
        raise ValueError(f"invalid discriminator norm {norm!r}: allowed one of {', '.join(D_NORMS)}")


class Generator(nn.Module):
    """z (B, z_dim) -> (B, 1, 28, 28) in [-1, 1]."""

    def __init__(self, z_dim: int, width: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = nn.Sequential(
            nn.Linear(z_dim, 2 * width * 7 * 7, bias=False),  # bias is redundant before BatchNorm
            nn.Unflatten(1, (2 * width, 7, 7)),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 14 -> 28
            nn.Tanh(),
        )
        dcgan_init_(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """(B, 1, 28, 28) -> raw scores (B,)."""

    def __init__(self, width: int, norm: str = "none") -> None:
        super().__init__()
        _check_norm(norm)
        batch = norm == "batch"
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),  # 28 -> 14; no norm on the input layer, as in DCGAN
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=not batch),  # 14 -> 7
            *([nn.BatchNorm2d(2 * width)] if batch else []),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 1),
        )
        dcgan_init_(self)
        if norm == "spectral":
            spectral_norm_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class MLPGenerator(nn.Module):
    """z -> 4w -> 8w -> 16w -> 784 (256/512/1024 at width 64), LeakyReLU(0.2), tanh."""

    def __init__(self, z_dim: int, width: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        sizes = (z_dim, 4 * width, 8 * width, 16 * width)
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 28 * 28), nn.Tanh(), nn.Unflatten(1, IMAGE_SHAPE))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """784 -> 8w -> 4w -> 1 (512/256 at width 64), LeakyReLU(0.2); raw scores (B,)."""

    def __init__(self, width: int, norm: str = "none") -> None:
        super().__init__()
        _check_norm(norm)
        batch = norm == "batch"
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 8 * width),  # no norm on the input layer, as in the conv D
            nn.LeakyReLU(0.2, True),
            nn.Linear(8 * width, 4 * width, bias=not batch),
            *([nn.BatchNorm1d(4 * width)] if batch else []),
            nn.LeakyReLU(0.2, True),
            nn.Linear(4 * width, 1),
        )
        if norm == "spectral":
            spectral_norm_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


@register_model("gan", "conv")
def build_conv_gan(*, z_dim: int, g_width: int, d_width: int, d_norm: str = "none") -> tuple[nn.Module, nn.Module]:
    return Generator(z_dim, g_width), Discriminator(d_width, d_norm)


@register_model("gan", "mlp")
def build_mlp_gan(*, z_dim: int, g_width: int, d_width: int, d_norm: str = "none") -> tuple[nn.Module, nn.Module]:
    return MLPGenerator(z_dim, g_width), MLPDiscriminator(d_width, d_norm)
