"""A trial's state: its config, device, nets, optimisers, RNG and progress (`Trial`), and how it is
built from a `TrainConfig`. The one place that maps the config onto the models' arguments (the
family-specific ones, and which nets a family trains, come from `tuner.training.families`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from models import build_model  # imports every builder (they register themselves)
from tuner.config import TrainConfig
from tuner.training.families import FAMILY_SPECS
from tuner.training.precision import autocast, resolve_precision

GRID_SIZE = 64  # fixed noise batch drawn into every sample grid (8 x 8)


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was requested but torch sees no CUDA device")
        if cfg.gpu_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction)
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(cfg: TrainConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))


@dataclass
class Trial:
    """Everything that a checkpoint holds."""

    cfg: TrainConfig
    device: torch.device
    nets: dict[str, torch.nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    gen: torch.Generator
    fixed_noise: torch.Tensor
    precision: str = "fp32"  # what the model steps run in: fp32 | bf16 (resolved from cfg.precision)
    step: int = 0
    images_seen: int = 0
    elapsed_s: float = 0.0
    checkpoint_s: float = 0.0  # of elapsed_s: saving and reporting checkpoints between evaluations
    history: list[dict[str, Any]] = field(default_factory=list)
    # Between evaluations only: the evaluation interval in progress ({"sums": {loss: tensor}, "steps",
    # "images", "train_s"}), saved by a checkpoint taken there; None at an evaluation.
    interval: dict[str, Any] | None = None

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    def autocast(self):
        """The context of a model step's forward passes (bf16 autocast, or nothing for fp32)."""
        return autocast(self.device.type, self.precision)


def model_args(cfg: TrainConfig) -> dict[str, Any]:
    """The model builder's arguments (models/registry.py) from a trial config."""
    sizes: dict[str, Any] = {"z_dim": cfg.z_dim, "g_width": cfg.g_width, "d_width": cfg.d_width}
    return sizes | FAMILY_SPECS[cfg.family].model_args(cfg)


def build_models(cfg: TrainConfig) -> Any:
    """(G, D) for a GAN, one module for a VAE/AE."""
    return build_model(cfg.family, cfg.arch, **model_args(cfg))


def build_trial(cfg: TrainConfig, device: torch.device) -> Trial:
    torch.manual_seed(cfg.seed)
    family = FAMILY_SPECS[cfg.family]
    nets = {name: net.to(device) for name, net in family.nets(build_models(cfg), cfg).items()}
    opts = {name: make_optimizer(cfg, nets[name].parameters(), lr=lr) for name, lr in family.learning_rates(cfg).items()}
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    fixed = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    fixed_noise = torch.randn(GRID_SIZE, cfg.z_dim, generator=fixed, device=device)
    return Trial(cfg, device, nets, opts, gen, fixed_noise, precision=resolve_precision(cfg.precision, device.type))
