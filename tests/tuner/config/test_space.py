"""The search space alone, without Ray: ranges and their overrides, conditional parameters, ASHA's
rungs, the warm-start points, the largest shape a pack can meet."""

from __future__ import annotations

import optuna
import pytest

from models.losses import LOSSES
from tuner.config import ConfigError, TrainConfig
from tuner.config.space import (CALIBRATED, CRITIC_LOSSES, GAN_RANGES, PUBLISHED, SMALL_N_CRITIC, Range, asha_rungs,
                                build_ranges, define_by_run, largest_shape, warm_start_points)


@pytest.mark.parametrize("space", ["default", "wide"])
def test_space_fields_are_conditional_on_the_loss(space):
    """n_critic goes up to 5 only for the critic losses; clip_value only for wgan, gp_lambda only for
    wgan-gp; every trial gets d_norm, lr_d_ratio and beta2; every value lies in its range."""
    ranges = build_ranges("gan", {}, space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: define_by_run("gan", tuple(LOSSES), ranges)(t) or 0.0, n_trials=200)
    critic_max = {loss: max(t.params["n_critic"] for t in study.trials if t.params["loss"] == loss) for loss in LOSSES}
    for loss, top in critic_max.items():
        assert top <= (ranges["n_critic"].high if loss in CRITIC_LOSSES else SMALL_N_CRITIC), loss
    assert max(critic_max[loss] for loss in CRITIC_LOSSES) > SMALL_N_CRITIC
    for t in study.trials:
        assert ("clip_value" in t.params) == (t.params["loss"] == "wgan")
        assert ("gp_lambda" in t.params) == (t.params["loss"] == "wgan-gp")
        assert {"d_norm", "lr_d_ratio", "beta2"} <= set(t.params)
        assert all(ranges[k].allows(v) for k, v in t.params.items() if k != "loss")


def test_the_vae_space_draws_kl_beta_only_for_a_vae():
    for family, has_beta in (("vae", True), ("ae", False)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        study.optimize(lambda t: define_by_run(family, (), build_ranges(family))(t) or 0.0, n_trials=5)
        assert all(("kl_beta" in t.params) == has_beta for t in study.trials)
        assert all("loss" not in t.params for t in study.trials)


@pytest.mark.parametrize("max_kimg, grace, rf", [(64.0, 8.0, 3), (4.0, 1.0, 3), (100.0, 1.0, 2), (8.0, 8.0, 3), (30.0, 2.5, 4)])
def test_asha_rungs_are_those_of_rays_bracket(max_kimg, grace, rf):
    # the reference: Ray's own _Bracket (s = 0), whose rungs are where ASHA decides; the study evaluates there
    from ray.tune.schedulers.async_hyperband import _Bracket

    ray_rungs = sorted(milestone for milestone, _ in _Bracket(grace, max_kimg, rf, 0)._rungs)
    assert asha_rungs(max_kimg, grace, rf) == [r for r in ray_rungs if r < max_kimg]
    assert asha_rungs(64.0, 8.0, 3) == [8.0, 24.0]


@pytest.mark.parametrize("spec, message", [
    ("1e-3:1e-5", "inverted"),
    ({"low": 0, "high": 1e-3, "log": True}, "log-scaled"),
    ({"low": 1e-5, "hi": 1e-3}, "unknown key"),
    ([], "empty list"),
    ("a:b", "must be numbers"),
])
def test_a_bad_range_names_the_parameter_and_what_is_allowed(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_ranges("gan", {"lr": spec})
    assert "lr" in str(err.value)
    with pytest.raises(ConfigError, match="unknown parameter 'nosuch'.*allowed"):
        build_ranges("gan", {"nosuch": "1:2"})


def test_overrides_replace_one_range_and_keep_the_others():
    ranges = build_ranges("gan", {"lr": "1e-5:1e-4", "batch_size": [16, 64], "z_dim": {"low": 8, "high": 32}})
    assert ranges["lr"] == Range("float", 1e-5, 1e-4, log=True)  # the default's log scale is kept
    assert ranges["batch_size"] == Range("choice", choices=(16, 64))
    assert (ranges["z_dim"].low, ranges["z_dim"].high, ranges["z_dim"].log) == (8, 32, GAN_RANGES["z_dim"].log)
    assert ranges["beta1"] == GAN_RANGES["beta1"]
    assert Range("int", 16, 96, step=16).allows(48) and not Range("int", 16, 96, step=16).allows(40)


def test_warm_start_points_are_the_calibrated_then_the_published_points():
    points = warm_start_points(tuple(LOSSES))
    assert points[0] == CALIBRATED["lsgan"]
    assert [p["loss"] for p in points[1:]] == list(PUBLISHED)
    for point in points[1:]:
        loss = LOSSES[point["loss"]]
        assert point["lr"] == loss.lr and point.get("n_critic", loss.n_critic) == loss.n_critic
    assert warm_start_points(("hinge",)) == []  # no calibrated or published point for hinge
    # inside a search: only searched parameters; a value outside a narrowed range is left to the sampler
    ranges = build_ranges("gan", {"lr": "3e-4:1e-3"})
    narrowed = warm_start_points(("bce",), ranges, {"lr"})
    assert narrowed == [{k: v for k, v in points[1].items() if k in ranges and k != "lr"} | {"loss": "bce"}]


def test_the_largest_shape_takes_the_top_of_every_size_range():
    ranges = build_ranges("gan", {"batch_size": [16, 32], "z_dim": "8:40"})
    big = largest_shape(TrainConfig(), ranges)
    assert (big.batch_size, big.z_dim, big.g_width, big.d_width) == (32, 40, int(ranges["g_width"].high),
                                                                      int(ranges["d_width"].high))
