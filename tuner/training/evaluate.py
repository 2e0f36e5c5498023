"""Evaluation of a trial: samples, FID, class diversity, sample grids, and for a VAE/AE the held-out
ELBO terms and reconstruction/interpolation grids.

`Evaluator(cfg, device)` is built once per trial, before training: it holds the FID backbone, the
domain classifier, the real side of the Fréchet distance (cached statistics, factored once) and, for
a VAE/AE, the test split (and, with latent_sampler=gmm, the training images its latent mixture is
fitted to). The training loop calls `evaluator.evaluate(trial, out_dir, tag)` at its
evaluation points. FID backbones always run in fp32 on uint8 images, whatever the training precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.vae import vae_loss
from tuner.metrics.backbones import get_backbone
from tuner.config import TrainConfig
from tuner.data import load_split, resolve_mirror
from tuner.metrics.diversity import diversity_metrics
from tuner.training.families import EMA_NET, FAMILY_SPECS
from tuner.metrics.fid import real_reference
from tuner.training.trial import Trial

EVAL_CHUNK = 500  # evaluation noise is drawn in blocks of this many (it fixes which samples are scored)
FORWARD_CHUNK = 125  # samples per generator forward pass on a CPU, where 4x125 takes 0.7x the time of 1x500
HELDOUT_IMAGES = 1000  # test images of the VAE/AE held-out terms
# latent_sampler=gmm: ex-post density estimation (Ghosh et al. 2020, "From Variational to Deterministic
# Autoencoders", ICLR; their 10 components), fitted at each evaluation to the encoder's means of the
# first GMM_FIT_IMAGES training images
GMM_COMPONENTS = 10
GMM_FIT_IMAGES = 10000


def to_uint8(unit: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (clamped) -> uint8 (N, 28, 28)."""
    return unit.clamp(0, 1).mul(255).round().to(torch.uint8).reshape(-1, 28, 28).cpu()


GRID_PAD = 2  # white pixels around and between the images of a grid


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """uint8 (N, 28, 28) -> one PNG grid, `nrow` images a row, the same file as torchvision's
    `save_image(images / 255, nrow=nrow, padding=2, pad_value=1.0)` (tests/tuner/training/test_evaluate.py
    compares them). Written here so that a process that writes grids need not import torchvision
    (tuner/data's docstring)."""
    from PIL import Image

    n, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + GRID_PAD) + GRID_PAD, cols * (w + GRID_PAD) + GRID_PAD), 255, dtype=np.uint8)
    for k, image in enumerate(images.numpy()):
        top, left = (k // cols) * (h + GRID_PAD) + GRID_PAD, (k % cols) * (w + GRID_PAD) + GRID_PAD
        grid[top:top + h, left:left + w] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(grid[:, :, None], 3, axis=2)).save(path)  # RGB, as torchvision writes it


class LatentMixture:
    """A full-covariance Gaussian mixture over a VAE/AE's codes: fitted by scikit-learn's
    GaussianMixture, sampled with a torch generator (so an evaluation's samples follow the trial's seed)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, chol: torch.Tensor) -> None:
        self.weights, self.means, self.chol = weights, means, chol  # float64: (K,), (K, d), (K, d, d)

    @classmethod
    def fit(cls, codes: np.ndarray, seed: int, components: int = GMM_COMPONENTS) -> "LatentMixture":
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(min(components, len(codes)), covariance_type="full", random_state=seed).fit(codes)
        return cls(torch.as_tensor(gm.weights_), torch.as_tensor(gm.means_), torch.as_tensor(np.linalg.cholesky(gm.covariances_)))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n codes (float32, on the generator's device): a component by its weight, then its Gaussian."""
        device = generator.device
        k = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, device=device, dtype=torch.float64)
        z = self.means.to(device)[k] + (self.chol.to(device)[k] @ eps.unsqueeze(-1)).squeeze(-1)
        return z.float()


@torch.no_grad()
def generate(trial: Trial, n: int, generator: torch.Generator, net: str | None = None,
             latent: LatentMixture | None = None) -> torch.Tensor:
    """n samples as uint8 (n, 28, 28), z ~ N(0, I) (or from `latent`, a VAE/AE's fitted mixture):
    G(z) for GANs, sigmoid(decode(z)) for VAEs/AEs. `net`: another net that maps z to images the same
    way (the EMA generator)."""
    out = []
    per_pass = FORWARD_CHUNK if trial.device.type == "cpu" else EVAL_CHUNK  # a GPU wants the big batch
    for start in range(0, n, EVAL_CHUNK):
        size = min(EVAL_CHUNK, n - start)
        if latent is None:
            z = torch.randn(size, trial.cfg.z_dim, generator=generator, device=trial.device)
        else:
            z = latent.sample(size, generator).to(trial.device)
        out.extend(decode(trial, part, net) for part in z.split(per_pass))
    return torch.cat(out)


def decode(trial: Trial, z: torch.Tensor, net: str | None = None) -> torch.Tensor:
    family = FAMILY_SPECS[trial.cfg.family]
    return to_uint8(family.to_unit(trial.nets[net or family.sampler], z))


class Evaluator:
    """What every evaluation of one trial needs, fetched once."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.mirror = resolve_mirror(cfg.data_mirror)
        self.backbone = get_backbone(cfg.fid_backbone, cfg.dataset, device=str(device), cache_dir=cfg.cache_dir, mirror=self.mirror,
                                     classifier=cfg.domain_classifier)
        self.domain = get_backbone("domain", cfg.dataset, device=str(device), cache_dir=cfg.cache_dir, mirror=self.mirror,
                                   classifier=cfg.domain_classifier)
        # the real side: the first fid_samples test images (a first-time computation is not trial time)
        self.reference = real_reference(cfg.dataset, "test", self.backbone, cfg.fid_samples, self.mirror, cfg.cache_dir)
        self.autoencoder = FAMILY_SPECS[cfg.family].autoencoder
        self.test = load_split(cfg.dataset, "test", self.mirror) if self.autoencoder else None
        if cfg.latent_sampler == "gmm":  # the training images the trial sees (train_limit), the first GMM_FIT_IMAGES
            train = load_split(cfg.dataset, "train", self.mirror)[0]
            self.fit_images = train[:min(GMM_FIT_IMAGES, cfg.train_limit or len(train))]


    def evaluate(self, trial: Trial, out_dir: Path, tag: str) -> dict[str, Any]:
        cfg = trial.cfg
        for net in trial.nets.values():
            net.eval()
        try:
            eval_gen = torch.Generator(device=trial.device).manual_seed(cfg.seed + 2)  # same noise at every eval
            latent = self.fit_latent(trial) if cfg.latent_sampler == "gmm" else None
            samples = generate(trial, cfg.fid_samples, eval_gen, latent=latent)
            if self.backbone is self.domain:  # one forward pass gives the FID features and the class probabilities
                features, probabilities = self.domain.features_and_probabilities(samples)
            else:
                features, probabilities = self.backbone.features(samples), self.domain.probabilities(samples)
            metrics: dict[str, Any] = {
                "fid": self.reference.fid(features),
                "fid_backbone": cfg.fid_backbone,
                "fid_samples": cfg.fid_samples,
                "domain_classifier_sha": self.domain.classifier_id,  # its weights' SHA-256 prefix: which domain features
            }
            metrics.update(diversity_metrics(probabilities))
            if latent is None:
                save_grid(decode(trial, trial.fixed_noise), out_dir / "samples" / f"kimg_{tag}.png")
            else:  # the grid of the sampler that is scored: its own fixed draw
                grid_gen = torch.Generator(device=trial.device).manual_seed(cfg.seed + 3)
                save_grid(decode(trial, latent.sample(len(trial.fixed_noise), grid_gen).to(trial.device)),
                          out_dir / "samples" / f"kimg_{tag}.png")
            if EMA_NET in trial.nets:  # the EMA generator, scored on the same noise, backbone and samples
                ema_gen = torch.Generator(device=trial.device).manual_seed(cfg.seed + 2)
                metrics["fid_ema"] = self.reference.fid(self.backbone.features(generate(trial, cfg.fid_samples, ema_gen, EMA_NET)))
                save_grid(decode(trial, trial.fixed_noise, EMA_NET), out_dir / "samples" / f"ema_kimg_{tag}.png")
            if self.autoencoder:
                metrics["latent_sampler"] = cfg.latent_sampler
                metrics.update(self.heldout_vae_terms(trial))
                self.save_autoencoder_images(trial, out_dir / "samples", tag)
        finally:
            for net in trial.nets.values():
                net.train()
        return metrics

    @torch.no_grad()
    def fit_latent(self, trial: Trial) -> LatentMixture:
        """The mixture of this evaluation: fitted to the encoder's means (fp32) of the fit images."""
        model = trial.nets["model"]
        codes = torch.cat([model.encode(self.fit_images[i:i + 1000].unsqueeze(1).to(trial.device).float() / 255)[0]
                           for i in range(0, len(self.fit_images), 1000)])
        return LatentMixture.fit(codes.double().cpu().numpy(), trial.cfg.seed)

    @torch.no_grad()
    def heldout_vae_terms(self, trial: Trial, n: int = HELDOUT_IMAGES) -> dict[str, float]:
        """Reconstruction and KL on the first n test images; ELBO with beta = 1 (nats per image)."""
        model = trial.nets["model"]
        x = self.test[0][:n].unsqueeze(1).to(trial.device).float() / 255
        mu, logvar = model.encode(x)
        _, recon, kl = vae_loss(model.decode(mu), x, mu, logvar, 1.0)
        terms = {"test_recon": recon.item()}
        if logvar is not None:
            terms["test_kl"] = kl.item()
            terms["elbo"] = -(recon.item() + kl.item())
        return terms

    @torch.no_grad()
    def save_autoencoder_images(self, trial: Trial, folder: Path, tag: str) -> None:
        """Reconstructions (rows: real / reconstructed), a latent interpolation, a 2-D latent scatter."""
        cfg, model = trial.cfg, trial.nets["model"]
        test, labels = self.test
        x = test[:32].unsqueeze(1).to(trial.device).float() / 255
        mu, _ = model.encode(x)
        recon = to_uint8(torch.sigmoid(model.decode(mu)))
        real = test[:32]
        rows = torch.cat([torch.cat([real[i : i + 8], recon[i : i + 8]]) for i in range(0, 32, 8)])
        save_grid(rows, folder / f"recon_kimg_{tag}.png")
        # interpolate between the codes of 8 pairs of test images, 10 steps each
        alphas = torch.linspace(0, 1, 10, device=trial.device)
        a, b = mu[:8], mu[8:16]
        path = torch.stack([(1 - t) * a + t * b for t in alphas], dim=1).reshape(-1, cfg.z_dim)
        save_grid(to_uint8(torch.sigmoid(model.decode(path))), folder / f"interp_kimg_{tag}.png", nrow=10)
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
