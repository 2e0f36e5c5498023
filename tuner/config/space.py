"""The search space: an Optuna define-by-run function, so conditional parameters work.

Ranges are defaults citable from the papers (DCGAN: Radford et al. 2016; WGAN: Arjovsky et al.
2017; WGAN-GP: Gulrajani et al. 2017; beta-VAE: Higgins et al. 2017) widened about one decade,
and overridable from a YAML file (`--space-file`) or the command line (`--ranges lr=1e-5:1e-3`).
`clip_value` is only sampled for loss=wgan and `gp_lambda` only for loss=wgan-gp, so those
parameters appear only in the trials where they apply.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from tuner.config import D_NORMS, ConfigError, TrainConfig


@dataclass(frozen=True)
class Range:
    """A numeric range (low..high, optionally log-scaled) or a list of choices."""

    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def allows(self, value: Any) -> bool:
        """Whether `value` is one this range can draw."""
        if self.kind == "choice":
            return value in self.choices
        if not self.low <= value <= self.high:
            return False
        return self.kind != "int" or (value - self.low) % (self.step or 1) == 0

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


# The wide space: the calibration study's (docs/search-space.md, benchmarks/calibrate_space.py).
# Published values widened about one decade each way.
WIDE_GAN_RANGES: dict[str, Range] = {
    "z_dim": Range("int", 16, 256, log=True),  # DCGAN uses 100
    "lr": Range("float", 1e-5, 1e-3, log=True),  # 5e-5 (WGAN) .. 2e-4 (DCGAN)
    "lr_d_ratio": Range("float", 0.25, 4.0, log=True),  # TTUR (Heusel et al. 2017) used 1.5 .. 4
    "beta1": Range("float", 0.0, 0.9),  # 0.5 (DCGAN, WGAN-GP as published here), 0 (WGAN-GP paper)
    "beta2": Range("float", 0.9, 0.999),  # 0.999 (Adam), 0.9 (WGAN-GP)
    "batch_size": Range("choice", choices=(16, 32, 64, 128)),
    "n_critic": Range("int", 1, 5),  # 1 (DCGAN) .. 5 (WGAN, WGAN-GP); critic losses only, see below
    "clip_value": Range("float", 1e-3, 1e-1, log=True),  # wgan only; 0.01 in the paper
    "gp_lambda": Range("float", 1.0, 100.0, log=True),  # wgan-gp only; 10 in the paper
    "g_width": Range("int", 16, 96, step=16),
    "d_width": Range("int", 16, 96, step=16),
    "d_norm": Range("choice", choices=("none", "batch", "spectral")),
}
# The default space (docs/search-space.md has the evidence and its limits): Lucic et al. 2018's narrow
# ranges where they exist, Kurach et al. 2019 (spectral norm in D, beta1 <= 0.5), and what a trial
# costs on a CPU at a fixed kimg budget (widths of 96 run at about half the images per second of 64).
GAN_RANGES: dict[str, Range] = {
    "z_dim": Range("int", 32, 128, log=True),
    "lr": Range("float", 1e-4, 1e-3, log=True),  # Lucic et al. narrow range
    "lr_d_ratio": Range("float", 0.5, 4.0, log=True),
    "beta1": Range("float", 0.0, 0.6),  # Kurach et al.: 0.5 or lower
    "beta2": Range("float", 0.9, 0.999),
    "batch_size": Range("choice", choices=(16, 32, 64)),
    "n_critic": Range("int", 1, 5),  # bce / hinge / lsgan: 1..2 (SMALL_N_CRITIC)
    "clip_value": Range("float", 1e-2, 1e-1, log=True),  # wgan only
    "gp_lambda": Range("float", 1.0, 20.0, log=True),  # wgan-gp only
    "g_width": Range("int", 32, 64, step=16),
    "d_width": Range("int", 32, 64, step=16),
    "d_norm": Range("choice", choices=("none", "spectral")),  # Kurach et al.: spectral norm in D
}
AUTOENCODER_RANGES: dict[str, Range] = {
    "z_dim": Range("int", 2, 64, log=True),
    "lr": Range("float", 1e-4, 3e-3, log=True),
    "kl_beta": Range("float", 0.25, 4.0, log=True),  # VAE only
    "regularize": Range("choice", choices=(False, True)),
}
CONDITIONAL = {"clip_value": "wgan", "gp_lambda": "wgan-gp"}
# Losses whose critic is trained several steps per generator step. The other losses (bce, hinge,
# lsgan) draw n_critic from at most 1..SMALL_N_CRITIC unless the user overrides the n_critic range.
CRITIC_LOSSES = ("wgan", "wgan-gp")
SMALL_N_CRITIC = 2
SPACES = ("default", "wide")
# Every parameter a range or a grid may vary: those drawn on a log axis, and all of them in the order
# the report lists them (optimizer is left out: it follows the loss, nobody searches it).
LOG_SCALED = tuple(dict.fromkeys(name for ranges in (WIDE_GAN_RANGES, GAN_RANGES, AUTOENCODER_RANGES)
                                 for name, r in ranges.items() if r.log))
SEARCHABLE = ("loss", "z_dim", "lr", "lr_d_ratio", "beta1", "beta2", "batch_size", "n_critic", "clip_value",
              "gp_lambda", "g_width", "d_width", "d_norm", "arch", "kl_beta", "regularize", "dropout")

# The published reference configurations, enqueued by default after the calibrated point (CALIBRATED,
# below; --no-warm-start turns both off).
# Each fixes what its paper fixes, read from the loss registry (models/losses.py): the optimiser
# settings, n_critic, clip / lambda, one learning rate for D and G, and no normalisation in D (as
# DCGAN's discriminator here has none). TPE samples the rest (z_dim, widths, batch size).
PUBLISHED = ("bce", "wgan", "wgan-gp")  # DCGAN (Radford et al. 2016), WGAN (Arjovsky et al. 2017), WGAN-GP (Gulrajani et al. 2017)


def published_point(loss_name: str) -> dict[str, Any]:
    from models.losses import LOSSES

    loss = LOSSES[loss_name]
    point: dict[str, Any] = {"loss": loss.name, "lr": loss.lr, "lr_d_ratio": 1.0, "n_critic": loss.n_critic,
                             "d_norm": "none"}
    if loss.optimizer == "adam":
        point.update(beta1=loss.betas[0], beta2=loss.betas[1])
    if loss.clip_value is not None:
        point["clip_value"] = loss.clip_value
    if loss.gp_lambda is not None:
        point["gp_lambda"] = loss.gp_lambda
    return point


def default_ranges(family: str, space: str = "default") -> dict[str, Range]:
    if family != "gan":
        return dict(AUTOENCODER_RANGES)
    return dict(WIDE_GAN_RANGES if space == "wide" else GAN_RANGES)


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
    from tuner.config import coerce, field_types

    kind = field_types(TrainConfig)[name][0]
    if isinstance(value, str) and kind is bool:
        value = {"true": True, "false": False}.get(value.lower(), value)
    elif isinstance(value, str) and kind in (int, float):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            raise ConfigError(f"space: {name} must be a number, got {value!r}") from None
    value = coerce(TrainConfig, name, value)
    if name == "d_norm" and value not in D_NORMS:
        raise ConfigError(f"space: invalid d_norm choice {value!r}: allowed {', '.join(D_NORMS)}")
    return value


def build_ranges(family: str, overrides: dict[str, Any] | None = None, space: str = "default") -> dict[str, Range]:
    ranges = default_ranges(family, space)
    for name, spec in (overrides or {}).items():
        if name not in ranges:
            raise ConfigError(f"space: unknown parameter {name!r} for family={family}: allowed {', '.join(ranges)}")
        ranges[name] = parse_range(name, spec, ranges[name])
    return ranges


def largest_shape(base: TrainConfig, ranges: dict[str, Range]) -> TrainConfig:
    """The base config at the largest sizes the ranges can draw (z_dim, widths, batch size): what a
    pack member can cost at most."""
    sizes = {}
    for name in ("z_dim", "g_width", "d_width", "batch_size"):
        rng = ranges.get(name)
        if rng is not None:
            sizes[name] = int(max(rng.choices) if rng.kind == "choice" else rng.high)
    return base.replace(**sizes)


def load_space_file(path: str) -> dict[str, Any]:
    import yaml

    from tuner.config.paths import input_file

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
    small_n_critic: bool = True  # bce/hinge/lsgan draw n_critic from 1..SMALL_N_CRITIC

    def __call__(self, trial) -> None:
        if self.family == "gan":
            loss = trial.suggest_categorical("loss", list(self.losses))
            for name, rng in self.ranges.items():
                if CONDITIONAL.get(name, loss) != loss:
                    continue
                if name == "n_critic" and self.small_n_critic and loss not in CRITIC_LOSSES and rng.kind == "int":
                    rng = Range("int", rng.low, max(rng.low, min(rng.high, SMALL_N_CRITIC)))
                rng.suggest(trial, name)
        else:
            for name, rng in self.ranges.items():
                if name == "kl_beta" and self.family != "vae":
                    continue
                rng.suggest(trial, name)
        return None


def define_by_run(family: str, losses: tuple[str, ...], ranges: dict[str, Range],
                  small_n_critic: bool = True) -> DefineByRun:
    return DefineByRun(family, tuple(losses), dict(ranges), small_n_critic)


def asha_rungs(max_kimg: float, grace_kimg: float, reduction_factor: int) -> list[float]:
    """The kimg at which ASHA decides, below max_kimg: the same formula as Ray's _Bracket (s = 0)."""
    import numpy as np

    count = int(np.log(max_kimg / grace_kimg) / np.log(reduction_factor) + 1)
    return sorted(r for r in (grace_kimg * reduction_factor ** k for k in range(count)) if r < max_kimg)


# gentune's own measured point, evaluated before the published ones: the best of 288 random trials in
# the wide space at the default budget of 64 kimg (docs/search-space.md, "The ten best trials": seed
# 102, trial 6ba7e5dc, FID 41.7), rounded to three digits. Rounded, it was re-trained with three other
# seeds: FID 98.1 / 92.8 / 97.4 at 24 kimg and 45.2 / 47.1 / 42.7 at 64 kimg (docs/search-space.md, "A
# calibrated warm-start point"). Its z_dim, lr_d_ratio and d_width lie outside the default ranges and
# stay, as published values do.
CALIBRATED: dict[str, dict[str, Any]] = {
    "lsgan": {"loss": "lsgan", "lr": 5.78e-4, "lr_d_ratio": 0.364, "beta1": 0.13, "beta2": 0.957, "z_dim": 24,
              "n_critic": 1, "g_width": 32, "d_width": 80, "batch_size": 32, "d_norm": "spectral"},
}


def warm_start_points(losses: tuple[str, ...], ranges: dict[str, Range] | None = None,
                      narrowed: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    """The warm start of the searched losses: gentune's calibrated point, then the published points,
    keeping only parameters the space searches.

    A value outside a range the user set (`narrowed`: `--ranges d_norm=batch,spectral` leaves out
    DCGAN's d_norm none), or outside a list of choices, is left to the sampler, which draws it inside
    the range. Outside a default numeric range it stays: the points are evaluated as published or
    measured (WGAN's lr 5e-5 lies below the default 1e-4 – 1e-3)."""
    points = [("calibrated", dict(CALIBRATED[loss])) for loss in losses if loss in CALIBRATED]
    points += [("published", published_point(loss)) for loss in losses if loss in PUBLISHED]
    if ranges is None:
        return [point for _, point in points]
    kept = []
    for kind, point in points:
        outside = [k for k, v in point.items() if k != "loss" and k in ranges and not ranges[k].allows(v)
                   and (k in narrowed or ranges[k].kind == "choice")]
        if outside:
            print(f"gentune: warm start: the {kind} {point['loss']} point's "
                  + ", ".join(f"{k}={point[k]!r}" for k in outside) + " is outside the searched range; drawn by the sampler",
                  file=sys.stderr, flush=True)
        kept.append({k: v for k, v in point.items() if k == "loss" or (k in ranges and k not in outside)})
    return kept


# The reference lab's grid (lab1-report-by-hand.md): hinge/BCE x z 32/64/128 GANs, VAEs with
# latent 8/16/32. Each cell is a set of TrainConfig overrides.
_NOT_GAN = {"loss": None, "n_critic": None, "clip_value": None, "gp_lambda": None, "d_norm": "none"}
GRIDS: dict[str, list[dict[str, Any]]] = {
    "lab1-gan": [{"family": "gan", "loss": loss, "z_dim": z} for loss in ("hinge", "bce") for z in (32, 64, 128)],
    "lab1-vae": [{"family": "vae", "z_dim": z, **_NOT_GAN} for z in (8, 16, 32)],
}
GRIDS["lab1"] = GRIDS["lab1-gan"] + GRIDS["lab1-vae"]
