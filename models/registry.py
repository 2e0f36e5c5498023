"""Model builders keyed by (family, arch): `build_model(family, arch, **sizes)`.

Builders take what they need as keyword arguments: every family takes z_dim, g_width and d_width
(generator/decoder and discriminator/encoder widths); a GAN also d_norm, a VAE/AE regularize and
dropout. A GAN builder returns `(generator, discriminator)`; a VAE or AE builder returns one module.
Builders register themselves from `models.gan` and `models.vae` when `models` is imported. The
trainer maps its config onto these arguments in one place (tuner/training/trial.py:model_args).
"""

from __future__ import annotations

from typing import Any, Callable

Builder = Callable[..., Any]

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


def build_model(family: str, arch: str, **sizes: Any) -> Any:
    try:
        builder = MODELS[family][arch]
    except KeyError:
        known = ", ".join(f"{f}/{a}" for f, archs in MODELS.items() for a in archs)
        raise ValueError(f"no model registered for {family}/{arch}: known are {known}") from None
    return builder(**sizes)
