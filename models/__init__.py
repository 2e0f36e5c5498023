"""Models and GAN losses. `from models import X` imports the modules that define X when it is first
asked for (and with them torch), so the names in models.names stay cheap for command lines."""

from __future__ import annotations

import importlib

_WHERE = {
    "LOSSES": "models.losses", "GANLoss": "models.losses", "clip_weights_": "models.losses",
    "gradient_penalty": "models.losses", "register_loss": "models.losses",
    "MODELS": "models.registry", "build_model": "models.registry", "register_model": "models.registry",
    "vae_loss": "models.vae",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    importlib.import_module("models.gan")  # every builder and loss registers itself on import
    importlib.import_module("models.vae")
    return getattr(importlib.import_module(_WHERE[name]), name)
