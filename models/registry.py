"""Model builders keyed by (family, arch); `build_model(cfg)` is the only way the trainer makes models.

A GAN builder returns `(generator, discriminator)`; a VAE or AE builder returns one module.
Builders register themselves from `models.gan` and `models.vae` when `models` is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from tuner.config import TrainConfig

Builder = Callable[["TrainConfig"], Any]

MODELS: dict[str, dict[str, Builder]] = {"gan": {}, "vae": {}, "ae": {}}


def register_model(family: str, arch: str, builder: Builder | None = None) -> Any:
    """Register `builder` for (family, arch); without `builder`, return a decorator that does."""
    if builder is None:
        return lambda fn: register_model(family, arch, fn)
    archs = MODELS.setdefault(family, {})
    if arch in archs:
        raise ValueError(f"model {family}/{arch} is already registered")
    archs[arch] = builder
    return builder


def build_model(cfg: "TrainConfig") -> Any:
    try:
        builder = MODELS[cfg.family][cfg.arch]
    except KeyError:
        known = ", ".join(f"{f}/{a}" for f, archs in MODELS.items() for a in archs)
        raise ValueError(f"no model registered for {cfg.family}/{cfg.arch}: known are {known}") from None
    return builder(cfg)
