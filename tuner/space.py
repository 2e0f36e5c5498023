"""The search space: an Optuna define-by-run function, so conditional parameters work.

Ranges are defaults citable from the papers (DCGAN: Radford et al. 2016; WGAN: Arjovsky et al.
2017; WGAN-GP: Gulrajani et al. 2017; beta-VAE: Higgins et al. 2017) widened about one decade,
and overridable from a YAML file (`--space-file`) or the command line (`--ranges lr=1e-5:1e-3`).
`clip_value` is only sampled for loss=wgan and `gp_lambda` only for loss=wgan-gp, so those
parameters appear only in the trials where they apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from tuner.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Range:
    """A numeric range (low..high, optionally log-scaled) or a list of choices."""

    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


GAN_RANGES: dict[str, Range] = {
    "z_dim": Range("int", 16, 256, log=True),  # DCGAN uses 100
    "lr": Range("float", 1e-5, 1e-3, log=True),  # 5e-5 (WGAN) .. 2e-4 (DCGAN)
    "beta1": Range("float", 0.0, 0.9),  # 0.5 (DCGAN, WGAN-GP as published here), 0 (WGAN-GP paper)
    "batch_size": Range("choice", choices=(32, 64, 128)),
    "n_critic": Range("int", 1, 5),  # 1 (DCGAN) .. 5 (WGAN, WGAN-GP)
    "clip_value": Range("float", 1e-3, 1e-1, log=True),  # wgan only; 0.01 in the paper
    "gp_lambda": Range("float", 1.0, 100.0, log=True),  # wgan-gp only; 10 in the paper
    "g_width": Range("int", 16, 96, step=16),
    "d_width": Range("int", 16, 96, step=16),
}
AUTOENCODER_RANGES: dict[str, Range] = {
    "z_dim": Range("int", 2, 64, log=True),
    "lr": Range("float", 1e-4, 3e-3, log=True),
    "kl_beta": Range("float", 0.25, 4.0, log=True),  # VAE only
    "regularize": Range("choice", choices=(False, True)),
}
CONDITIONAL = {"clip_value": "wgan", "gp_lambda": "wgan-gp"}

# The published reference configurations, enqueued by --warm-start (GAN studies). They fix what
# the papers fix (loss, optimiser settings, n_critic, clip / lambda); TPE samples the rest (z_dim,
# widths, batch size). The optimiser and beta2 come from the loss's defaults (models/losses.py).
WARM_START = {
    "bce": {"loss": "bce", "lr": 2e-4, "beta1": 0.5, "n_critic": 1},  # DCGAN, Radford et al. 2016
    "wgan": {"loss": "wgan", "lr": 5e-5, "n_critic": 5, "clip_value": 0.01},  # WGAN, Arjovsky et al. 2017 (RMSprop)
    "wgan-gp": {"loss": "wgan-gp", "lr": 1e-4, "beta1": 0.5, "n_critic": 5, "gp_lambda": 10.0},  # Gulrajani et al. 2017
}


def default_ranges(family: str) -> dict[str, Range]:
    return dict(GAN_RANGES if family == "gan" else AUTOENCODER_RANGES)


def parse_range(name: str, spec: Any, default: Range) -> Range:
    """A YAML/CLI override: {low, high[, log]} or [choices] or "low:high"."""
    if isinstance(spec, str) and ":" in spec:
        low, high = spec.split(":", 1)
        spec = {"low": low, "high": high}
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"space: {name} has an empty list of choices")
        values = tuple(TrainConfig.__dataclass_fields__[name].type and _typed(name, v) for v in spec)
        return Range("choice", choices=values)
    if not isinstance(spec, dict):
        raise ConfigError(f"space: {name} must be low:high, {{low, high, log}} or a list of choices, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown:
        raise ConfigError(f"space: {name} has unknown key(s) {', '.join(unknown)}: allowed low, high, log")
    if default.kind == "choice":
        raise ConfigError(f"space: {name} takes a list of choices, e.g. {list(default.choices)}")
    try:
        low = float(spec.get("low", default.low))
        high = float(spec.get("high", default.high))
    except (TypeError, ValueError):
        raise ConfigError(f"space: {name} low/high must be numbers, got {spec!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"space: {name} range is inverted or not finite (low={low}, high={high}): need low <= high")
    log = bool(spec.get("log", default.log))
    if log and low <= 0:
        raise ConfigError(f"space: {name} is log-scaled, so low must be > 0 (got {low})")
    # Bounds must themselves be valid config values (e.g. lr > 0, beta1 < 1).
    _typed(name, low)
    _typed(name, high)
    if default.kind == "int":
        return Range("int", int(low), int(high), log=log, step=default.step if not log else None)
    return Range("float", low, high, log=log)


def _typed(name: str, value: Any) -> Any:
    from tuner.config import coerce

    if isinstance(value, str):
        value = float(value) if any(c in value for c in ".e") else int(value)
    value = coerce(TrainConfig, name, value)
    return value


def build_ranges(family: str, overrides: dict[str, Any] | None = None) -> dict[str, Range]:
    ranges = default_ranges(family)
    for name, spec in (overrides or {}).items():
        if name not in ranges:
            raise ConfigError(f"space: unknown parameter {name!r} for family={family}: allowed {', '.join(ranges)}")
        ranges[name] = parse_range(name, spec, ranges[name])
    return ranges


def load_space_file(path: str) -> dict[str, Any]:
    import yaml

    from tuner.paths import input_file

    input_file("space_file", path, "a YAML file of parameter ranges")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"space_file {path!r} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"space_file {path!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"space_file {path!r} must be a mapping of parameter -> range")
    return data


@dataclass(frozen=True)
class DefineByRun:
    """The function OptunaSearch calls with each new Optuna trial (a class, so the searcher pickles)."""

    family: str
    losses: tuple[str, ...]
    ranges: dict[str, Range]

    def __call__(self, trial) -> None:
        if self.family == "gan":
            loss = trial.suggest_categorical("loss", list(self.losses))
            for name, rng in self.ranges.items():
                if CONDITIONAL.get(name, loss) == loss:
                    rng.suggest(trial, name)
        else:
            for name, rng in self.ranges.items():
                if name == "kl_beta" and self.family != "vae":
                    continue
                rng.suggest(trial, name)
        return None


def define_by_run(family: str, losses: tuple[str, ...], ranges: dict[str, Range]) -> DefineByRun:
    return DefineByRun(family, tuple(losses), dict(ranges))


def warm_start_points(losses: tuple[str, ...]) -> list[dict[str, Any]]:
    return [dict(WARM_START[loss]) for loss in losses if loss in WARM_START]


# The reference lab's grid (lab1-report-by-hand.md): hinge/BCE x z 32/64/128 GANs, VAEs with
# latent 8/16/32. Each cell is a set of TrainConfig overrides.
_NOT_GAN = {"loss": None, "n_critic": None, "clip_value": None, "gp_lambda": None, "d_norm": "none"}
GRIDS: dict[str, list[dict[str, Any]]] = {
    "lab1-gan": [{"family": "gan", "loss": loss, "z_dim": z} for loss in ("hinge", "bce") for z in (32, 64, 128)],
    "lab1-vae": [{"family": "vae", "z_dim": z, **_NOT_GAN} for z in (8, 16, 32)],
}
GRIDS["lab1"] = GRIDS["lab1-gan"] + GRIDS["lab1-vae"]
