"""Model registry, shapes of every model, one D and one G step, and the VAE objective."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from models import LOSSES, MODELS, build_model, register_model, vae_loss
from models.vae import AutoEncoder, VAE
from tuner.config import ARCHS, D_NORMS, FAMILIES, TrainConfig
from tuner.training.steps import d_step, g_step
from tuner.training.trial import build_models, build_trial

Z_DIM, WIDTH = 4, 8


def cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"g_width": WIDTH, "d_width": WIDTH, "z_dim": Z_DIM, **changes})


def images(batch: int, seed: int = 0, low: float = -1.0) -> torch.Tensor:
    """Random images in [low, 1]: [-1, 1] for GANs, [0, 1] for VAEs."""
    g = torch.Generator().manual_seed(seed)
    return low + (1 - low) * torch.rand(batch, 1, 28, 28, generator=g)


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(old, new) for old, new in zip(before, module.parameters()))


GAN_CASES = [(arch, norm) for arch in ARCHS for norm in D_NORMS]
AE_CASES = [(family, arch, reg) for family in ("vae", "ae") for arch in ARCHS for reg in (False, True)]


# ------------------------------------------------------------------------------------------
# registry


def test_registry_covers_every_family_and_arch():
    assert set(MODELS) == set(FAMILIES)
    for family in FAMILIES:
        assert set(MODELS[family]) == set(ARCHS)


def test_register_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("gan", "conv", lambda c: None)
    with pytest.raises(ValueError, match="already registered"):
        register_model("vae", "mlp")(lambda c: None)


def test_build_unknown_model_raises():
    with pytest.raises(ValueError, match="no model registered for gan/resnet"):
        build_model("gan", "resnet", z_dim=Z_DIM, g_width=WIDTH, d_width=WIDTH)


# ------------------------------------------------------------------------------------------
# GAN shapes and structure


@pytest.mark.parametrize("arch,norm", GAN_CASES)
def test_gan_shapes(arch, norm):
    torch.manual_seed(0)
    G, D = build_models(cfg(family="gan", arch=arch, d_norm=norm))
    fake = G(torch.randn(2, Z_DIM))
    assert fake.shape == (2, 1, 28, 28)
    assert fake.min().item() >= -1 and fake.max().item() <= 1
    assert D(fake).shape == (2,)
    assert D(images(2)).shape == (2,)


@pytest.mark.parametrize("arch,norm", GAN_CASES)
def test_discriminator_norm(arch, norm):
    _, D = build_models(cfg(family="gan", arch=arch, d_norm=norm))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    batch_norms = [m for m in D.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(layers) == 3
    assert all(parametrize.is_parametrized(m, "weight") == (norm == "spectral") for m in layers)
    assert len(batch_norms) == (1 if norm == "batch" else 0)


def test_mlp_gan_sizes_at_width_64():
    G, D = build_models(TrainConfig(family="gan", arch="mlp", g_width=64, d_width=64, z_dim=100))
    g_sizes = [(m.in_features, m.out_features) for m in G.modules() if isinstance(m, nn.Linear)]
    d_sizes = [(m.in_features, m.out_features) for m in D.modules() if isinstance(m, nn.Linear)]
    assert g_sizes == [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    assert d_sizes == [(784, 512), (512, 256), (256, 1)]


def test_dcgan_init():
    torch.manual_seed(0)
    G, D = build_models(cfg(family="gan", arch="conv", g_width=16, d_width=16))
    for net in (G, D):
        weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))])
        # sampling error, not round-off: thousands of seeded N(0, 0.02^2) draws; the mean's standard
        # error is 0.02 / sqrt(n) < 5e-4 and the std's relative one 1 / sqrt(2n) < 1.5%
        assert weights.mean().item() == pytest.approx(0.0, abs=2e-3)
        assert weights.std().item() == pytest.approx(0.02, rel=0.05)


# ------------------------------------------------------------------------------------------
# the trainer's real steps (tuner/training/steps.py): each side's step changes only its own parameters


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_d_step_then_g_step(name, arch):
    loss = LOSSES[name]
    config = cfg(family="gan", arch=arch, loss=name, batch_size=8,
                 d_norm="batch" if arch == "conv" else "spectral").resolved()
    trial = build_trial(config, torch.device("cpu"))
    G, D = trial.nets["G"], trial.nets["D"]

    g_before, d_before = snapshot(G), snapshot(D)
    out = d_step(trial, loss, images(8))
    assert set(out) == {"loss_d", "d_real", "d_fake"} and all(torch.isfinite(v) for v in out.values())
    if loss.clip_value is not None:  # wgan: clipped after the step
        assert all(bool((p.abs() <= loss.clip_value).all()) for p in D.parameters())
    assert unchanged(G, g_before)
    assert all(p.grad is None for p in G.parameters())
    assert not unchanged(D, d_before)
    assert trial.images_seen == 8  # a critic step counts its real batch

    d_before = snapshot(D)
    out = g_step(trial, loss)
    assert set(out) == {"loss_g"} and torch.isfinite(out["loss_g"])
    assert unchanged(D, d_before)
    assert not unchanged(G, g_before)
    assert all(p.grad is not None for p in G.parameters())
    assert trial.images_seen == 8  # a generator step sees no real images


# ------------------------------------------------------------------------------------------
# VAE / AE


@pytest.mark.parametrize("family,arch,regularize", AE_CASES)
def test_autoencoder_shapes(family, arch, regularize):
    torch.manual_seed(0)
    model = build_models(cfg(family=family, arch=arch, regularize=regularize))
    x = images(2, low=0.0)
    logits, code, logvar = model(x, generator=torch.Generator().manual_seed(0))
    assert model.z_dim == Z_DIM
    assert logits.shape == (2, 1, 28, 28)
    assert code.shape == (2, Z_DIM)
    assert model.decode(torch.randn(3, Z_DIM)).shape == (3, 1, 28, 28)
    if family == "vae":
        assert isinstance(model, VAE) and model.variational
        assert logvar.shape == (2, Z_DIM)
    else:
        assert isinstance(model, AutoEncoder) and not isinstance(model, VAE) and not model.variational
        assert logvar is None
        assert model.encode(x)[1] is None


@pytest.mark.parametrize("family,arch,regularize", AE_CASES)
def test_regularize_adds_batchnorm_and_dropout(family, arch, regularize):
    model = build_models(cfg(family=family, arch=arch, regularize=regularize, dropout=0.3))
    for part in (model.encoder, model.decoder):
        norms = [m for m in part.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        drops = [m for m in part.modules() if isinstance(m, nn.Dropout)]
        assert len(norms) == len(drops) == (2 if regularize else 0)
        assert all(m.p == pytest.approx(0.3) for m in drops)


def test_conv_vae_widths_come_from_d_width_and_g_width():
    model = build_models(cfg(family="vae", arch="conv", d_width=8, g_width=16))
    enc = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    dec = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in enc] == [8, 16]
    assert [m.in_channels for m in dec] == [32, 16]


def test_vae_forward_is_reparameterised_and_seeded():
    torch.manual_seed(0)
    model = build_models(cfg(family="vae", arch="conv"))
    x = images(3, low=0.0)
    a = model(x, generator=torch.Generator().manual_seed(7))
    b = model(x, generator=torch.Generator().manual_seed(7))
    c = model(x, generator=torch.Generator().manual_seed(8))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])

    mu, logvar = model.encode(x)
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    # float32 defaults (rtol 1.3e-6, atol 1e-5): the same ops in the same order; only the reparameterised
    # sum may round differently (a few eps32)
    torch.testing.assert_close(a[0], model.decode(mu + torch.exp(0.5 * logvar) * noise))


def test_ae_forward_ignores_generator():
    torch.manual_seed(0)
    model = build_models(cfg(family="ae", arch="mlp"))
    x = images(3, low=0.0)
    a = model(x, generator=torch.Generator().manual_seed(1))
    b = model(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------------------
# vae_loss closed forms


def test_vae_loss_standard_normal_posterior_has_zero_kl():
    x, logits = images(2, low=0.0), torch.zeros(2, 1, 28, 28)
    loss, recon, kl = vae_loss(logits, x, torch.zeros(2, 3), torch.zeros(2, 3), kl_beta=1.0)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)  # exp(0) = 1 exactly: the terms are exactly 0
    # Zero logits predict p = 1/2 for every pixel, whatever x: ln 2 nats per pixel. A float32 sum of
    # 2 x 784 terms: torch's cascade summation keeps its error near log2(1568) x 6e-8 = 6.6e-7 on any ISA.
    assert recon.item() == pytest.approx(784 * math.log(2), rel=1e-6)
    assert loss.item() == pytest.approx(recon.item())


def test_vae_loss_kl_for_known_mu_and_logvar():
    x, logits = images(2, low=0.0), torch.zeros(2, 1, 28, 28)
    mu = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    _, _, kl = vae_loss(logits, x, mu, torch.zeros(2, 2))
    assert kl.item() == pytest.approx((0.5 * 5 + 0.5 * 9) / 2)

    # mu = 0, sigma^2 = 4: 0.5 (sigma^2 - 1 - ln sigma^2) per dimension.
    logvar = torch.full((2, 2), math.log(4.0))
    _, _, kl = vae_loss(logits, x, torch.zeros(2, 2), logvar)
    assert kl.item() == pytest.approx(2 * 0.5 * (4 - 1 - math.log(4)))


def test_vae_loss_recon_and_beta():
    g = torch.Generator().manual_seed(0)
    x, logits = images(4, low=0.0), torch.randn(4, 1, 28, 28, generator=g)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss, recon, kl = vae_loss(logits, x, mu, logvar, kl_beta=0.25)
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="sum").item() / 4
    assert recon.item() == pytest.approx(expected, rel=1e-6)  # float32, the same kernel: a few eps32 at most
    assert kl.item() > 0
    assert loss.item() == pytest.approx(recon.item() + 0.25 * kl.item(), rel=1e-6)


def test_vae_loss_autoencoder_has_no_kl():
    x, logits = images(2, low=0.0), torch.randn(2, 1, 28, 28)
    loss, recon, kl = vae_loss(logits, x, torch.randn(2, 3), None, kl_beta=1.0)
    assert kl.item() == 0.0 and kl.shape == ()
    assert loss.item() == pytest.approx(recon.item())
