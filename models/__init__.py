"""Models and GAN losses. Importing the package registers every builder and loss."""

from models import gan, losses, vae  # noqa: F401  (imported for their registrations)
from models.losses import LOSSES, GANLoss, clip_weights_, gradient_penalty, register_loss
from models.registry import MODELS, build_model, register_model
from models.vae import vae_loss

__all__ = [
    "LOSSES",
    "MODELS",
    "GANLoss",
    "build_model",
    "clip_weights_",
    "gradient_penalty",
    "register_loss",
    "register_model",
    "vae_loss",
]
