"""The search driver on a real Ray runtime and a real Optuna journal, with tiny models and data."""

import json
import warnings

import optuna
import pandas as pd
import pytest

from tuner.study import staging

from tuner.config.search import SearchConfig
from tuner.study import driver as study
from tuner.results.exports import read_trials_csv

from conftest import load_study, run_study

pytestmark = pytest.mark.slow

run_search = run_study


def test_asha_stops_trials_and_optuna_records_them_as_pruned(idx_mnist, tmp_path, ray_local):
    exp = run_search(tmp_path, "asha", "--family", "gan", "--losses", "hinge", "wgan", "wgan-gp",
                     "--num-samples", "6", "--max-kimg", "1", "--eval-every-kimg", "0.25",
                     "--grace-kimg", "0.25", "--reduction-factor", "3")
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 6
    assert set(trials["status"]) <= {"completed", "pruned", "diverged"}
    pruned = trials[trials["status"] == "pruned"]
    assert len(pruned) >= 1 and (pruned["kimg"] < 1.0).all()
    completed = trials[trials["status"] == "completed"]
    assert len(completed) >= 1 and (completed["kimg"] >= 1.0).all()

    journal_study = load_study(exp, "asha")
    states = {t.user_attrs["ray_trial_id"]: t for t in journal_study.trials}
    assert len(journal_study.trials) == 6
    assert not [t for t in journal_study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # The FIDs below are copies of one float64 (Ray's results, the Optuna journal, the exports): equal but
    # for the decimal text of CSV/JSON; approx's default rel 1e-6 is loose for that, but any mix-up of
    # trials or evaluations is far larger.
    for row in trials.itertuples():
        ot = states[row.trial_id]
        expected = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL"}[row.status]
        assert ot.state.name == expected
        if row.status == "pruned":
            # the FID at which ASHA stopped it is its last intermediate value (at images seen)
            last_step = max(ot.intermediate_values)
            assert last_step == round(row.kimg * 1000)
            assert ot.intermediate_values[last_step] == pytest.approx(row.fid_final)
        if row.status == "completed":
            assert ot.value == pytest.approx(row.fid_final)

    # conditional parameters appear only where they apply
    for t in journal_study.trials:
        assert ("clip_value" in t.params) == (t.params["loss"] == "wgan")
        assert ("gp_lambda" in t.params) == (t.params["loss"] == "wgan-gp")
    assert trials.loc[trials["loss"] != "wgan", "clip_value"].isna().all()
    assert trials.loc[trials["loss"] != "wgan-gp", "gp_lambda"].isna().all()

    # exports: documented columns, one history row per evaluation, best.json pointing at a checkpoint
    for column in ["trial_id", "status", "loss", "z_dim", "lr", "fid_final", "fid_best", "kimg", "wall_time_s",
                   "trial_dir", "samples_dir", "classes_covered"]:
        assert column in trials.columns
    assert (exp / "trials.csv").is_file()
    history = pd.read_parquet(exp / "history.parquet")
    assert set(history["trial_id"]) == set(trials["trial_id"])
    for row in trials.itertuples():
        evals = history[history["trial_id"] == row.trial_id]
        assert evals["fid"].min() == pytest.approx(row.fid_best)
        assert (exp / row.samples_dir).is_dir() and list((exp / row.samples_dir).glob("kimg_*.png"))
        # each trial wrote its own folder, also when it ran in a reused worker process
        written = [json.loads(line) for line in (exp / row.trial_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["kimg"] for r in written] == pytest.approx(list(evals["kimg"]))
        assert json.loads((exp / row.trial_dir / "config.json").read_text())["z_dim"] == row.z_dim
        # checkpoints are stored once, as Tune's checkpoint_00000N (kept: the latest + 2 best), not
        # also as a synced copy of a checkpoint/ folder in the working dir
        kept = sorted(p.name for p in (exp / row.trial_dir).iterdir() if "checkpoint" in p.name or p.name == "resume")
        assert kept and all(name.startswith("checkpoint_") for name in kept), kept
        assert len(kept) <= min(3, len(evals))
        folder = staging.staging_dir(row.trial_id)  # the staging copy and its lock are removed when a trial ends
        assert not folder.exists() and not staging.lock_path(folder).exists()
    # reuse_actors (the default): 6 trials, one at a time (TINY_STUDY), ran in one worker process
    pids = {json.loads(line)["pid"] for path in exp.glob("*/result.json") for line in path.read_text().splitlines()}
    assert len(pids) == 1
    best = json.loads((exp / "best.json").read_text())
    assert best["metrics"]["fid_best"] == pytest.approx(trials["fid_best"].min())
    assert best["checkpoint"] and (exp / best["checkpoint"]).exists() or __import__("os").path.exists(best["checkpoint"])


def test_warm_start_trials_have_the_published_configs(idx_mnist, tmp_path, ray_local):
    exp = run_search(tmp_path, "warm", "--family", "gan", "--losses", "bce", "wgan", "wgan-gp", "--warm-start",
                     "--num-samples", "3", "--max-kimg", "0.25", "--eval-every-kimg", "0.25", "--grace-kimg", "0.25")
    trials = pd.read_parquet(exp / "trials.parquet").set_index("loss")
    bce, wgan, gp = trials.loc["bce"], trials.loc["wgan"], trials.loc["wgan-gp"]
    assert (bce.optimizer, bce.lr, bce.beta1, bce.beta2, bce.n_critic) == ("adam", 2e-4, 0.5, 0.999, 1)
    assert (wgan.optimizer, wgan.lr, wgan.clip_value, wgan.n_critic) == ("rmsprop", 5e-5, 0.01, 5)
    assert (gp.optimizer, gp.lr, gp.beta1, gp.beta2, gp.gp_lambda, gp.n_critic) == ("adam", 1e-4, 0.5, 0.9, 10.0, 5)
    assert len(trials) == 3  # the three reference points, then nothing else (num_samples 3)


def test_grid_mode_runs_exactly_the_grid(idx_mnist, tmp_path, ray_local, capsys):
    exp = run_search(tmp_path, "grid", "--grid", "lab1-gan", "--max-kimg", "0.25", "--eval-every-kimg", "0.25",
                     "--grace-kimg", "0.25")
    trials = pd.read_parquet(exp / "trials.parquet")
    cells = sorted(zip(trials["loss"], trials["z_dim"]))
    assert cells == sorted((loss, z) for loss in ("hinge", "bce") for z in (32, 64, 128))
    assert (trials["status"] == "completed").all()  # a fixed budget: nothing is stopped early
    assert not (exp / "optuna.journal").exists()

    # moved, then resumed: the grid generator (which creates the trials not yet started) writes them to
    # the new folder, not to where the grid started
    import shutil

    from ray.tune.utils.util import _load_newest_checkpoint

    from tuner.study.resume import _storages, check_restorable

    moved = tmp_path / "moved" / "grid"
    shutil.copytree(exp, moved)
    check_restorable(moved, searched=False)
    assert f"the experiment was moved from {exp} to {moved}" in capsys.readouterr().err
    state = _load_newest_checkpoint(str(moved), "basic-variant-state-*.json")
    assert {s.experiment_fs_path for s in _storages(state)} == {str(moved)}
    assert {s.experiment_fs_path for s in _storages(_load_newest_checkpoint(str(exp), "basic-variant-state-*.json"))} == {str(exp)}


def test_vae_study_searches_the_vae_space(idx_mnist, tmp_path, ray_local):
    exp = run_search(tmp_path, "vae", "--family", "vae", "--num-samples", "2", "--max-kimg", "0.25",
                     "--eval-every-kimg", "0.25", "--grace-kimg", "0.25", "--ranges", "z_dim=2:8")
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 2 and (trials["family"] == "vae").all()
    assert trials["loss"].isna().all() and trials["n_critic"].isna().all()
    journal_study = load_study(exp, "vae")
    for t in journal_study.trials:
        assert set(t.params) == {"z_dim", "lr", "kl_beta", "regularize"}
        assert 2 <= t.params["z_dim"] <= 8
    assert {"elbo", "test_recon", "recon", "kl"} <= set(trials.columns)


def test_tpe_models_results_after_n_startup_trials(tmp_path):
    """--n-startup-trials k: the first k configs are TPE's random start-up draws, the (k+1)-th is
    modelled on the finished trials. With k=2 and k=100 and one seed, the first two configs are the
    same random draws and the third differs (random draw vs TPE's proposal)."""
    from tuner.config import TrainConfig

    base = TrainConfig(max_kimg=1.0, eval_every_kimg=1.0)
    proposals = {}
    for k in (2, 100):
        cfg = SearchConfig(n_startup_trials=k, storage_path=str(tmp_path), name=f"k{k}")
        searcher = study.make_searcher(cfg, base, {})
        proposals[k] = []
        for i, fid in enumerate((300.0, 100.0, None)):
            proposals[k].append(searcher.suggest(f"t{i}"))
            if fid is not None:
                searcher.on_trial_result(f"t{i}", {"fid": fid, "kimg": 1.0})
                searcher.on_trial_complete(f"t{i}", {"fid": fid, "kimg": 1.0})
    assert proposals[2][:2] == proposals[100][:2]
    assert proposals[2][2] != proposals[100][2]
    with pytest.raises(Exception, match="n_startup_trials"):
        SearchConfig(n_startup_trials=-1)


def _proposals(tmp_path, name, feedback, overrides=None, **fields):
    """The first len(feedback) configs a searcher proposes, told `feedback` FIDs as full-budget results."""
    from tuner.config import TrainConfig

    base = TrainConfig(max_kimg=1.0, eval_every_kimg=1.0)
    cfg = SearchConfig(storage_path=str(tmp_path), name=name, **fields)
    searcher = study.make_searcher(cfg, base, overrides or {})
    out = []
    for i, fid in enumerate(feedback):
        out.append(searcher.suggest(f"t{i}"))
        searcher.on_trial_result(f"t{i}", {"fid": fid, "kimg": 1.0})
        searcher.on_trial_complete(f"t{i}", {"fid": fid, "kimg": 1.0})
    return out


def test_random_sampler_ignores_results_and_tpe_does_not(tmp_path):
    """--sampler random: the proposals do not depend on the FIDs the trials got (TPE's do)."""
    up, down = [float(v) for v in range(10, 130, 10)], [float(v) for v in range(120, 0, -10)]
    flags = dict(warm_start=False, n_startup_trials=3)
    assert _proposals(tmp_path, "r1", up, sampler="random", **flags) == _proposals(tmp_path, "r2", down, sampler="random", **flags)
    tpe_up, tpe_down = _proposals(tmp_path, "t1", up, **flags), _proposals(tmp_path, "t2", down, **flags)
    assert tpe_up[:3] == tpe_down[:3] and tpe_up != tpe_down  # random start-up, then modelled on the results
    with pytest.raises(Exception, match="sampler"):
        SearchConfig(sampler="grid")


def test_tpe_independent_models_each_parameter_alone(tmp_path):
    """--sampler tpe-independent: the same seeded start-up as tpe, then proposals modelled on the
    results, but not the joint model's."""
    up, down = [float(v) for v in range(10, 130, 10)], [float(v) for v in range(120, 0, -10)]
    flags = dict(warm_start=False, n_startup_trials=3)
    alone_up = _proposals(tmp_path, "i1", up, sampler="tpe-independent", **flags)
    alone_down = _proposals(tmp_path, "i2", down, sampler="tpe-independent", **flags)
    joint_up = _proposals(tmp_path, "j1", up, **flags)
    assert alone_up[:3] == alone_down[:3] == joint_up[:3]
    assert alone_up != alone_down and alone_up[3:] != joint_up[3:]


def test_warm_start_points_come_first_by_default(tmp_path):
    from models.losses import LOSSES
    from tuner.config.space import CALIBRATED

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _proposals(tmp_path, "w", [100.0] * 5)
    assert not [w for w in caught if "out of range" in str(w.message)]  # kept on purpose: no Optuna warning
    assert [p["loss"] for p in first[:4]] == ["lsgan", "bce", "wgan", "wgan-gp"]
    # the calibrated point as measured, every field, also those outside the default ranges (z_dim 24)
    assert first[0] == CALIBRATED["lsgan"] and first[0]["z_dim"] == 24 and first[0]["d_width"] == 80
    for proposal in first[1:4]:
        loss = LOSSES[proposal["loss"]]
        assert proposal["lr"] == loss.lr and proposal["n_critic"] == loss.n_critic
        assert proposal["lr_d_ratio"] == 1.0 and proposal["d_norm"] == "none"
    assert (first[1]["beta1"], first[1]["beta2"]) == (0.5, 0.999)
    assert first[2]["clip_value"] == 0.01 and first[3]["gp_lambda"] == 10.0 and first[3]["beta2"] == 0.9
    assert first[4]["lr"] not in [p["lr"] for p in first[:4]]  # then the sampler
    off = _proposals(tmp_path, "nw", [100.0] * 4, warm_start=False)
    assert [p.get("lr") for p in off] != [p["lr"] for p in first[:4]]


def test_published_values_outside_a_narrowed_range_are_drawn_inside_it(tmp_path, capsys):
    # DCGAN's d_norm none, and every published lr, lie outside these ranges: an Optuna categorical
    # refused the fixed value and ended the study with a traceback
    first = _proposals(tmp_path, "n", [100.0] * 4, overrides={"d_norm": ["batch", "spectral"], "lr": "3e-4:1e-3",
                                                            "z_dim": "32:64"})
    assert [p["loss"] for p in first] == ["lsgan", "bce", "wgan", "wgan-gp"]  # still the warm-start points, first
    for proposal in first:
        assert proposal["d_norm"] in ("batch", "spectral") and 3e-4 <= proposal["lr"] <= 1e-3
        assert 32 <= proposal["z_dim"] <= 64
    for proposal in first[1:]:
        assert proposal["lr_d_ratio"] == 1.0  # published values inside the ranges stay fixed
    assert first[0]["lr_d_ratio"] == 0.364 and first[0]["d_width"] == 80  # outside a default range: kept
    assert (first[1]["beta1"], first[2]["clip_value"], first[3]["gp_lambda"]) == (0.5, 0.01, 10.0)
    err = capsys.readouterr().err
    assert "the published bce point's lr=0.0002, d_norm='none' is outside the searched range" in err
    assert "the calibrated lsgan point's z_dim=24 is outside the searched range" in err


def test_a_time_budget_ends_the_study_with_its_exports_and_an_expected_finish(idx_mnist, tmp_path, capsys, ray_local):
    """--time-budget without --num-samples: trials keep coming until the budget is spent, then the
    study ends as any study does (exports, summary); the expected finish is printed along the way. A
    --resume gets a budget of its own and starts new trials (Tune restores the stopper it pickled, with
    the budget spent, and the searcher marked finished: tuner/study/budget.py, resume.py)."""
    import time
    from datetime import datetime

    t0, wall0 = time.monotonic(), datetime.now().astimezone()  # before the study: its budget's clock starts later
    # 40 s: a trial's first evaluation came 19 s after its start in CI (worker start-up, data, the FID's
    # reference statistics), and with 25 s no trial had ended when the budget did (CI, 2026-12-05). One
    # trial at a time: the later ones reuse its worker process and take seconds, and the budget keeps
    # one core busy, not both (the other test worker needs it)
    exp = run_study(tmp_path, "budget", "--time-budget", "40s", "--max-kimg", "0.25", "--grace-kimg", "0.125",
                    "--no-warm-start", "--max-concurrent", "1")
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    trials = read_trials_csv(exp / "trials.csv")
    assert len(trials) >= 1 and trials["trial_id"].is_unique
    assert json.loads((exp / "search_config.json").read_text())["search"]["time_budget"] == "40s"
    assert "expected finish " in out and "the --time-budget ends it sooner" in out
    assert "== gentune study summary ==" in out
    study = load_study(exp, "budget")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    # Trials keep coming while the budget lasts: every trial that ended more than 5 s before the budget
    # did had a successor, one trial at a time. The budget ends 40 s after its clock starts, which is
    # after wall0, so a trial that ended before wall0 + 35 s ended at least 5 s before it. Not a count of
    # trials: how many fit in 40 s depends on the machine's load (in a CI run on 2026-12-06 the first
    # trial's first evaluation came only at 40 s, under the suite's heaviest files; on a quiet machine
    # later trials take seconds).
    ended_early = [t for t in study.trials if t.datetime_complete is not None
                   and (t.datetime_complete.astimezone() - wall0).total_seconds() < 40 - 5]
    assert len(study.trials) >= len(ended_early) + 1
    assert took < 40 + 60  # Ray's start-up and the exports on top of the budget, not 100,000 trials
    assert "the --time-budget is spent" in out

    n_before, t1 = len(study.trials), time.monotonic()
    run_study(tmp_path, "budget", "--time-budget", "15s", "--max-kimg", "0.25", "--grace-kimg", "0.125",
              "--no-warm-start", "--max-concurrent", "1", "--resume")
    # Before, the resumed run stopped at once: its restored stopper had no budget left
    assert time.monotonic() - t1 >= 15
    assert "the --time-budget is spent" in capsys.readouterr().out
    resumed = load_study(exp, "budget")
    assert len(resumed.trials) > n_before  # new trials: the searcher is no longer marked finished
    assert not [t for t in resumed.trials if t.state.name == "RUNNING"]
