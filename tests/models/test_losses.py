"""GAN loss registry: closed-form values, published defaults, gradient penalty, weight clipping."""

import math

import pytest
import torch
from torch import nn

from models.losses import LOSSES, GANLoss, clip_weights_, gradient_penalty, register_loss

LN2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Tolerances: the closed forms below run in float64 on 1-4 numbers, so they hold to ~1e-15 on any CPU;
# pytest.approx's default rel 1e-6 is loose for that but far below any wrong formula's error. Results
# that are 0 in exact arithmetic (hinge, lsgan) are exactly 0 in float too (abs 1e-12). The gradient
# penalty tests run in float32 over up to 784 inputs: a norm carries ~sqrt(784) eps32 = 3e-6 relative
# round-off, hence rel 1e-5 there.


# ------------------------------------------------------------------------------------------
# registry


def test_registry_names_in_order():
    assert list(LOSSES) == ["bce", "hinge", "wgan", "wgan-gp", "lsgan"]
    assert all(name == loss.name for name, loss in LOSSES.items())


def test_register_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_loss(LOSSES["hinge"])
    assert list(LOSSES) == ["bce", "hinge", "wgan", "wgan-gp", "lsgan"]


def test_register_bad_optimizer_raises():
    bad = GANLoss("sgd-loss", LOSSES["bce"].d_loss, LOSSES["bce"].g_loss, "sgd", 1e-3, (0.5, 0.999), 1, None, None, "-")
    with pytest.raises(ValueError, match="optimizer"):
        register_loss(bad)
    assert "sgd-loss" not in LOSSES


def test_wgan_defaults_match_arjovsky_2017():
    wgan = LOSSES["wgan"]
    assert wgan.optimizer == "rmsprop"
    assert wgan.lr == pytest.approx(5e-5)
    assert wgan.clip_value == pytest.approx(0.01)
    assert wgan.n_critic == 5
    assert wgan.gp_lambda is None


def test_wgan_gp_defaults_match_gulrajani_2017():
    gp = LOSSES["wgan-gp"]
    assert gp.optimizer == "adam"
    assert gp.lr == pytest.approx(1e-4)
    assert gp.betas == pytest.approx((0.5, 0.9))
    assert gp.gp_lambda == pytest.approx(10.0)
    assert gp.n_critic == 5
    assert gp.clip_value is None


@pytest.mark.parametrize("name", ["bce", "hinge", "lsgan"])
def test_dcgan_style_defaults(name):
    loss = LOSSES[name]
    assert (loss.optimizer, loss.n_critic, loss.clip_value, loss.gp_lambda) == ("adam", 1, None, None)
    assert loss.lr == pytest.approx(2e-4)
    assert loss.betas == pytest.approx((0.5, 0.999))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_has_valid_defaults(name):
    loss = LOSSES[name]
    assert loss.lr > 0 and loss.n_critic >= 1 and loss.reference
    assert all(0 <= b < 1 for b in loss.betas)


# ------------------------------------------------------------------------------------------
# closed forms


def test_bce_at_zero():
    bce = LOSSES["bce"]
    assert bce.d_loss(t(0, 0), t(0, 0)).item() == pytest.approx(2 * LN2)
    assert bce.g_loss(t(0, 0)).item() == pytest.approx(LN2)


def test_bce_general_and_stable():
    bce = LOSSES["bce"]
    r, f = (1.0, 2.0), (-1.0, 0.5)
    expected_d = (softplus(-1) + softplus(-2)) / 2 + (softplus(-1) + softplus(0.5)) / 2
    assert bce.d_loss(t(*r), t(*f)).item() == pytest.approx(expected_d)
    assert bce.g_loss(t(*f)).item() == pytest.approx((softplus(1) + softplus(-0.5)) / 2)
    # Extreme scores stay finite: log(sigmoid(-200)) would be -inf in float32.
    big = torch.tensor([200.0])
    assert bce.d_loss(big, -big).item() == pytest.approx(0.0, abs=1e-6)
    assert bce.g_loss(-big).item() == pytest.approx(200.0)


def test_hinge_closed_forms():
    hinge = LOSSES["hinge"]
    assert hinge.d_loss(t(2.0), t(-2.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert hinge.d_loss(t(0.0), t(0.0)).item() == pytest.approx(2.0)
    # relu(1 - [0.5, 3]) = [0.5, 0]; relu(1 + [-0.5, 2]) = [0.5, 3]
    assert hinge.d_loss(t(0.5, 3.0), t(-0.5, 2.0)).item() == pytest.approx(0.25 + 1.75)
    assert hinge.g_loss(t(1.0, -3.0)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["wgan", "wgan-gp"])
def test_wasserstein_closed_forms(name):
    loss = LOSSES[name]
    assert loss.d_loss(t(1.0, 3.0), t(0.0, -2.0)).item() == pytest.approx(-1.0 - 2.0)
    assert loss.g_loss(t(0.0, -2.0)).item() == pytest.approx(1.0)


def test_lsgan_closed_forms():
    lsgan = LOSSES["lsgan"]
    assert lsgan.d_loss(t(1.0), t(0.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert lsgan.d_loss(t(0.0), t(1.0)).item() == pytest.approx(1.0)
    assert lsgan.d_loss(t(3.0), t(2.0)).item() == pytest.approx(0.5 * 4 + 0.5 * 4)
    assert lsgan.g_loss(t(1.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert lsgan.g_loss(t(0.0, 3.0)).item() == pytest.approx(0.5 * (1 + 4) / 2)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_return_scalars(name):
    loss = LOSSES[name]
    r, f = torch.randn(5, generator=torch.Generator().manual_seed(0)), torch.zeros(5)
    assert loss.d_loss(r, f).shape == () and loss.g_loss(f).shape == ()


# ------------------------------------------------------------------------------------------
# gradient penalty


def linear_critic(shape: tuple[int, ...], norm: float, seed: int = 0) -> nn.Module:
    """Flatten -> Linear(., 1) whose weight has L2 norm `norm`: its input gradient is that weight."""
    torch.manual_seed(seed)
    layer = nn.Linear(math.prod(shape), 1)
    with torch.no_grad():
        layer.weight.mul_(norm / layer.weight.norm())
    return nn.Sequential(nn.Flatten(), layer, nn.Flatten(0))


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 28, 28), (10,)])
def test_gradient_penalty_zero_for_unit_norm_critic(shape):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, *shape, generator=g), torch.randn(4, *shape, generator=g)
    gp = gradient_penalty(linear_critic(shape, 1.0), real, fake, generator=g)
    assert gp.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 28, 28)])
def test_gradient_penalty_norm_k(shape, k):
    real, fake = torch.randn(4, *shape), torch.randn(4, *shape)
    gp = gradient_penalty(linear_critic(shape, k), real, fake)
    assert gp.item() == pytest.approx((k - 1) ** 2, rel=1e-5, abs=1e-6)


def test_gradient_penalty_trains_the_critic():
    # gp(w) = (||w|| - 1)^2, so d gp / d w = 2 (||w|| - 1) w / ||w||: needs create_graph=True.
    k, shape = 3.0, (2, 4, 4)
    critic = linear_critic(shape, k)
    gp = gradient_penalty(critic, torch.randn(3, *shape), torch.randn(3, *shape))
    gp.backward()
    weight = critic[1].weight
    torch.testing.assert_close(weight.grad, 2 * (k - 1) * weight.detach() / k)


def test_gradient_penalty_reproducible_with_generator():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    a = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(1))
    b = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(1))
    c = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(2))
    assert a.item() == b.item()  # bit for bit: the same ops on the same draws in one process
    assert a.item() != c.item()


# ------------------------------------------------------------------------------------------
# weight clipping


def test_clip_weights_clamps_and_keeps_in_range():
    layer = nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.5, 0.005, 0.02, -0.003]]))
        layer.bias.fill_(-0.01)
    clip_weights_(layer, 0.01)
    assert torch.equal(layer.weight, torch.tensor([[-0.01, 0.005, 0.01, -0.003]]))
    assert torch.equal(layer.bias, torch.tensor([-0.01]))


def test_clip_weights_bounds_every_parameter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 1))
    before = [p.detach().clone() for p in net.parameters()]
    clip_weights_(net, 0.05)
    for old, new in zip(before, net.parameters()):
        assert bool((new.abs() <= 0.05).all())
        inside = old.abs() <= 0.05
        assert torch.equal(new[inside], old[inside])
        assert torch.equal(new[~inside], 0.05 * old[~inside].sign())
