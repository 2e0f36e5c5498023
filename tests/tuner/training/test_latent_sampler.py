"""A VAE/AE's ex-post latent sampler (latent_sampler=gmm): the mixture's fit and draws, and a trial scored with it."""

import numpy as np
import pytest
import torch

from tuner.config import ConfigError, TrainConfig
from tuner.training.evaluate import LatentMixture
from tuner.training.loop import train


def test_mixture_recovers_two_gaussians_and_its_draws_follow_the_generator():
    rng = np.random.default_rng(0)
    a = rng.normal([-4.0, 0.0], 0.5, size=(3000, 2))
    b = rng.normal([4.0, 2.0], [1.0, 0.25], size=(7000, 2))
    codes = np.concatenate([a, b])
    mix = LatentMixture.fit(codes, seed=0, components=2)
    order = torch.argsort(mix.weights)
    assert mix.weights[order].tolist() == pytest.approx([0.3, 0.7], abs=1e-3)
    assert mix.means[order].numpy() == pytest.approx(np.stack([a.mean(0), b.mean(0)]), abs=1e-2)
    # EM's M-step keeps the data mean: sum_k w_k mu_k is the codes' mean, to rounding
    assert (mix.weights @ mix.means).numpy() == pytest.approx(codes.mean(0), abs=1e-9)
    z = mix.sample(20000, torch.Generator().manual_seed(1))
    assert z.dtype == torch.float32 and z.shape == (20000, 2)
    assert z.mean(0).numpy() == pytest.approx(codes.mean(0), abs=0.1)
    assert ((z[:, 0] > 0).float().mean().item()) == pytest.approx(0.7, abs=0.02)
    right = z[z[:, 0] > 0]
    assert right.std(0).numpy() == pytest.approx([1.0, 0.25], rel=0.05)  # the component's own covariance
    assert torch.equal(z, mix.sample(20000, torch.Generator().manual_seed(1)))
    assert not torch.equal(z, mix.sample(20000, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("values, allowed", [(dict(latent_sampler="gmm"), "prior unless family is vae or ae"),
                                             (dict(family="vae", latent_sampler="flow"), "one of prior, gmm")])
def test_bad_sampler_names_the_field(values, allowed):
    with pytest.raises(ConfigError, match=f"latent_sampler.*{allowed}"):
        TrainConfig(**values)


def test_a_vae_scored_with_the_mixture_trains_the_same_and_scores_other_samples(idx_mnist, tmp_path):
    tiny = dict(dataset="mnist", family="vae", z_dim=4, g_width=8, d_width=8, batch_size=16, train_limit=256,
                fid_samples=64, seed=1, max_kimg=0.125, eval_every_kimg=0.125)
    (prior,) = train(TrainConfig(**tiny), tmp_path / "prior")
    (gmm,) = train(TrainConfig(**tiny, latent_sampler="gmm"), tmp_path / "gmm")
    again = train(TrainConfig(**tiny, latent_sampler="gmm"), tmp_path / "again")[0]
    assert (prior["latent_sampler"], gmm["latent_sampler"]) == ("prior", "gmm")
    assert gmm["loss"] == prior["loss"] and gmm["elbo"] == prior["elbo"]  # the sampler touches the evaluation only
    assert np.isfinite(gmm["fid"]) and gmm["fid"] != prior["fid"]
    assert again["fid"] == gmm["fid"]  # seeded: the same mixture, the same draws
    assert (tmp_path / "gmm" / "samples" / "kimg_0000.125.png").is_file()
