"""The typed config: round trips, unknown keys, validation naming the field, CLI generation."""

import argparse
import json

import pytest

from tuner.config.cli import add_arguments, field_docs, from_namespace
from tuner.config import ConfigError, TrainConfig


def test_round_trip_through_dict_and_json():
    cfg = TrainConfig(family="gan", loss="wgan", clip_value=0.02, z_dim=32, regularize=False).resolved()
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_key_raises_and_names_it():
    with pytest.raises(ConfigError, match="unknown config key.*netD_lr"):
        TrainConfig.from_dict({"netD_lr": 1e-3})


@pytest.mark.parametrize(
    "values, field",
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"n_critic": 0}, "n_critic"),
        ({"loss": "hinge", "clip_value": 0.01}, "clip_value"),
        ({"loss": "wgan", "gp_lambda": 10.0}, "gp_lambda"),
        ({"z_dim": 0}, "z_dim"),
        ({"loss": "softmax"}, "loss"),
        ({"dataset": "cifar10"}, "dataset"),
        ({"family": "vae", "loss": "hinge"}, "loss"),
        ({"max_kimg": 1.0, "eval_every_kimg": 2.0}, "eval_every_kimg"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction"),
        ({"beta1": 1.0}, "beta1"),
        ({"z_dim": "64"}, "z_dim"),
        ({"regularize": 1}, "regularize"),
    ],
)
def test_invalid_values_name_field_and_allowed_values(values, field):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert f"{field}=" in str(err.value) and "allowed" in str(err.value)


def test_resolved_fills_the_loss_defaults_from_the_papers():
    wgan = TrainConfig(loss="wgan").resolved()
    assert (wgan.optimizer, wgan.lr, wgan.clip_value, wgan.n_critic, wgan.gp_lambda) == ("rmsprop", 5e-5, 0.01, 5, None)
    gp = TrainConfig(loss="wgan-gp").resolved()
    assert (gp.optimizer, gp.lr, gp.beta1, gp.beta2, gp.gp_lambda, gp.n_critic) == ("adam", 1e-4, 0.5, 0.9, 10.0, 5)
    explicit = TrainConfig(loss="wgan", lr=1e-4).resolved()
    assert explicit.lr == 1e-4  # an explicit value is never overwritten
    vae = TrainConfig(family="vae").resolved()
    assert (vae.loss, vae.n_critic, vae.optimizer, vae.lr) == (None, None, "adam", 1e-3)


def test_every_field_has_a_docstring_and_a_flag():
    docs = field_docs(TrainConfig)
    assert set(docs) == set(TrainConfig.__dataclass_fields__)
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    ns = parser.parse_args(["--loss", "wgan-gp", "--z-dim", "32", "--no-regularize", "--lr", "3e-4"])
    cfg = from_namespace(TrainConfig, ns)
    assert (cfg.loss, cfg.z_dim, cfg.regularize, cfg.lr) == ("wgan-gp", 32, False, 3e-4)
    assert from_namespace(TrainConfig, parser.parse_args([])) == TrainConfig()


def test_a_study_checkpoints_between_its_rungs_by_default(tmp_path):
    """Between evaluations a study trial checkpoints every grace_kimg (at most one rung's training
    lost) and every 2 minutes; flags given win, also against a budget below the grace period."""
    from tuner.study import driver as study

    common = ["--storage-path", str(tmp_path), "--name", "s", "--cache-dir", str(tmp_path / "cache")]
    _, base, _ = study.parse(common)
    assert (base.checkpoint_every_kimg, base.checkpoint_every_min, base.eval_at_kimg) == (8.0, 2.0, (8.0, 24.0))
    _, base, _ = study.parse([*common, "--checkpoint-every-kimg", "0", "--checkpoint-every-min", "5"])
    assert (base.checkpoint_every_kimg, base.checkpoint_every_min) == (0.0, 5.0)
    _, base, _ = study.parse([*common, "--max-kimg", "1"])
    assert base.checkpoint_every_kimg <= 1.0
    assert TrainConfig().checkpoint_every_kimg == 0.0 and TrainConfig().checkpoint_every_min == 2.0  # one run: by time
