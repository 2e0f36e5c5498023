"""--scheduler pbt on a real Ray runtime, a real Optuna journal and the tiny MNIST: the population,
the exploits (recorded by the driver, and in each trial's history as its schedule), the exports, the
Optuna trials told at the end, and a resume after the driver is killed."""

import json
import math
import time

import pandas as pd
import pytest
import torch

from tuner.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tuner.config import TrainConfig
from tuner.results.exports import read_trials_csv
from tuner.study.pbt import ClipToRanges, explore_beta2, mutated_fields, read_exploits
from tuner.training.trial import build_trial

from conftest import TINY_TRIAL, Driver, load_study, result_rows, run_study, snapshot, wait_for

TINY_PBT = [*TINY_TRIAL, "--losses", "hinge", "--ranges", "g_width=8:8", "d_width=8:8",
            "batch_size=16,32", "--no-warm-start"]


def test_exploit_restores_another_config_with_the_new_optimiser_settings(idx_mnist, tmp_path):
    """A checkpoint of one config, loaded by a trial whose lr and betas differ: refused for a plain
    resume; with adopt, the optimisers keep their state (Adam's moments) and take the new settings."""
    donor = TrainConfig(dataset="mnist", g_width=8, d_width=8, batch_size=16, loss="hinge", lr=2e-4, beta1=0.5,
                        beta2=0.99).resolved()
    trial = build_trial(donor, torch.device("cpu"))
    for opt in trial.opts.values():  # give Adam a state to keep
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
    save_checkpoint(trial, tmp_path / "ckpt")
    taker_cfg = donor.replace(lr=3e-4, lr_d_ratio=2.0, beta1=0.4, beta2=0.95)
    taker = build_trial(taker_cfg, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="fields differ: beta1, beta2, lr, lr_d_ratio"):
        load_checkpoint(taker, tmp_path / "ckpt")
    taker = build_trial(taker_cfg, torch.device("cpu"))
    load_checkpoint(taker, tmp_path / "ckpt", adopt=("lr", "lr_d_ratio", "beta1", "beta2"))
    assert taker.opts["G"].param_groups[0]["lr"] == 3e-4
    assert taker.opts["D"].param_groups[0]["lr"] == pytest.approx(6e-4)
    assert all(g["betas"] == (0.4, 0.95) for o in taker.opts.values() for g in o.param_groups)
    state = taker.opts["G"].state_dict()["state"][0]
    assert int(state["step"]) == 1 and float(state["exp_avg"].abs().sum()) > 0  # the donor's moments
    assert taker.cfg.lr == 3e-4  # the trial's own config stays in force (and is saved with it)


def test_explore_stays_inside_the_space():
    clip = ClipToRanges({"lr": (1e-4, 1e-3, True), "beta1": (0.0, 0.6, False), "beta2": (0.9, 0.999, False)})
    assert clip({"lr": 1.2e-3, "beta1": 0.72, "beta2": 0.95}) == {"lr": 1e-3, "beta1": 0.6, "beta2": 0.95}
    # beta2 is perturbed on 1 - beta2: x1.2 moves 0.99 to 0.988, never past 1
    assert explore_beta2(0.99, 0.99 * 1.2, 0.9, 0.999) == pytest.approx(0.988)
    assert explore_beta2(0.95, 0.95 * 0.8, 0.9, 0.999) == pytest.approx(0.96)


class _Controller:
    """What Ray's PBT asks of Tune's controller: the trials, the live ones, a checkpoint, a pause."""
    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return {t for t in self.trials if not t.is_finished()}

    def _schedule_trial_save(self, trial, result=None):
        return trial.checkpoint

    def pause_trial(self, trial, should_checkpoint=True):
        from ray.tune.experiment import Trial

        trial.set_status(Trial.PAUSED)


def _population(tmp_path, n):
    """A fresh GentunePBT (as after a --resume: Tune does not save its state) and n running members,
    each with a checkpoint, and a controller that runs them."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

    from tuner.study.pbt import mutations
    from tuner.study.pbt_scheduler import PBT_TIME, GentunePBT

    limits = {"lr": (1e-4, 1e-3, True)}
    scheduler = GentunePBT(time_attr=PBT_TIME, metric="fid", mode="min", perturbation_interval=0.25,
                           hyperparam_mutations=mutations(limits), quantile_fraction=0.25, resample_probability=0.25,
                           require_attrs=False, log_config=False, synch=True, fields=("lr",), bounds_=limits,
                           experiment_dir=str(tmp_path), max_kimg=0.75)
    trials = [Trial("run_trial", config={"lr": 2e-4 * (i + 1)}, trial_id=f"t{i}", stub=True) for i in range(n)]
    controller = _Controller(trials)
    for i, trial in enumerate(trials):
        scheduler.on_trial_add(controller, trial)
        (tmp_path / f"ckpt{i}").mkdir()
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=Checkpoint.from_directory(str(tmp_path / f"ckpt{i}")), metrics={})
        trial.set_status(Trial.RUNNING)
    return scheduler, controller, trials


def _end(scheduler, controller, trial, result):
    """A member's last result: gentune's PBT lets it continue (nothing to rank), and Tune ends it."""
    from ray.tune.experiment import Trial

    assert scheduler.on_trial_result(controller, trial, result) == scheduler.CONTINUE
    scheduler.on_trial_complete(controller, trial, result)
    trial.set_status(Trial.TERMINATED)


def test_synchronous_pbt_goes_on_when_the_member_it_waits_for_ends_first(tmp_path):
    """The resume hang (fresh-clone CI, 2026-12-05): resumed, one member restarts from its 0.25 kimg
    checkpoint, the other from its 0.5 one. The first reports 0.5 and is paused to wait for the other
    (whose fresh PBT state is at 0); the other reports its last result (0.75) and ends. Ray's PBT
    ranks only when the last member behind the sync point reports it: nobody does, the paused member
    was never chosen again, and Tune's loop spun for ever."""
    from ray.tune.experiment import Trial

    scheduler, controller, (ahead, waiting) = _population(tmp_path, 2)
    assert scheduler.on_trial_result(controller, waiting, {"kimg": 0.512, "fid": 300.0}) == scheduler.PAUSE
    waiting.set_status(Trial.PAUSED)
    assert scheduler.choose_trial_to_run(controller) is None  # the other member still runs
    _end(scheduler, controller, ahead, {"kimg": 0.768, "fid": 250.0})
    assert scheduler.choose_trial_to_run(controller) is waiting


def test_synchronous_pbt_ranks_the_waiting_members_when_the_last_one_ends_before_the_point(tmp_path, capsys):
    """A member that ends before the sync point (diverged here, or its last result after a resume):
    the members waiting there are ranked at it (the bottom one clones the top one) and go on."""
    from ray.tune.experiment import Trial

    scheduler, controller, (best, worst, ends) = _population(tmp_path, 3)
    for trial, fid in ((best, 100.0), (worst, 400.0)):
        assert scheduler.on_trial_result(controller, trial, {"kimg": 0.256, "fid": fid}) == scheduler.PAUSE
        trial.set_status(Trial.PAUSED)
    assert scheduler.choose_trial_to_run(controller) is None
    _end(scheduler, controller, ends, {"kimg": 0.128, "fid": float("nan"), "diverged": True})
    chosen = scheduler.choose_trial_to_run(controller)
    assert chosen in (best, worst)
    exploits = read_exploits(tmp_path)
    assert [(e["trial_id"], e["donor_id"], e["kimg"]) for e in exploits] == [("t1", "t0", 0.256)]
    assert "trial t1 cloned trial t0 at 0.256 kimg" in capsys.readouterr().out
    assert worst.checkpoint.path == best.checkpoint.path  # it continues from the donor's checkpoint
    assert scheduler._next_perturbation_sync == 0.5  # the next point: both may run to it
    assert scheduler.choose_trial_to_run(controller) is not None


def test_pbt_study_evaluates_and_checkpoints_at_its_perturbation_points(tmp_path, monkeypatch):
    from tuner.study import driver as study

    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    search, base, _ = study.parse(["--scheduler", "pbt", "--num-samples", "4", "--max-kimg", "8", "--perturbation-kimg", "2"])
    assert base.eval_at_kimg == (2.0, 4.0, 6.0) and base.checkpoint_every_kimg == 2.0
    search, base, _ = study.parse(["--scheduler", "pbt", "--max-kimg", "64", "--time-budget", "1h"])
    assert base.eval_at_kimg == tuple(8.0 * k for k in range(1, 8))  # default: every max_kimg / 8
    assert search.num_samples == 16  # a time budget keeps the default population (ASHA's asks trials until it ends)
    search, base, _ = study.parse(["--family", "vae", "--scheduler", "pbt", "--num-samples", "2"])
    assert search.scheduler == "pbt" and mutated_fields("vae") == ("lr",)
    search, base, _ = study.parse(["--max-kimg", "64"])  # the default: ASHA, evaluated at its rungs
    assert search.scheduler == "asha" and base.eval_at_kimg == (8.0, 24.0) and base.checkpoint_every_kimg == 8.0


@pytest.mark.slow
def test_tiny_pbt_study_records_every_trial_its_schedule_and_its_exploits(idx_mnist, tmp_path, ray_local, capsys):
    n = 3  # on 2 CPUs: the members take turns (PBT pauses and resumes them from their checkpoints)
    exp = run_study(tmp_path, "pbt", "--scheduler", "pbt", "--num-samples", str(n), "--max-kimg", "2",
                    "--perturbation-kimg", "0.5", base=TINY_PBT)
    out = capsys.readouterr().out
    trials = read_trials_csv(exp / "trials.csv")
    assert len(trials) == n and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "diverged"}  # PBT stops no trial early
    history = pd.read_parquet(exp / "history.parquet")
    assert set(history["trial_id"]) == set(trials["trial_id"])
    for column in ("hp_lr", "hp_lr_d_ratio", "hp_beta1", "hp_beta2", "cloned_from"):
        assert column in history.columns
    # every trial's record holds every evaluation it made, though PBT paused and restarted it: one at each
    # of 0.5, 1, 1.5 kimg and the end (each at the first step past it: at most 64 images later)
    for trial_id, rows in history.groupby("trial_id"):
        assert [math.floor(k / 0.5) for k in rows["kimg"]] == [1, 2, 3, 4], (trial_id, rows.to_string())

    exploits = read_exploits(exp)
    assert len(exploits) == 3, out[-3000:]  # 3 perturbation points (0.5, 1, 1.5 kimg): the bottom member exploits at each
    ids = set(trials["trial_id"])
    for event in exploits:
        assert event["trial_id"] in ids and event["donor_id"] in ids and event["trial_id"] != event["donor_id"]
        assert event["donor_fid"] <= event["trial_fid"]  # the donor ranked above it
        line = f"trial {event['trial_id']} cloned trial {event['donor_id']} at {event['kimg']:g} kimg"
        assert line in out
        # the trial's next evaluation continues the donor's checkpoint, with the new settings in force
        rows = history[(history["trial_id"] == event["trial_id"]) & (history["cloned_from"] == event["donor_id"])]
        assert len(rows), (event, history[history["trial_id"] == event["trial_id"]].to_string())
    last = exploits[-1]
    after = history[(history["trial_id"] == last["trial_id"]) & (history["kimg"] > last["kimg"])]
    assert len(after) and after.iloc[0]["hp_lr"] == pytest.approx(last["new"]["lr"])
    assert after.iloc[0]["hp_beta2"] == pytest.approx(last["new"]["beta2"])
    assert all(0.9 <= e["new"]["beta2"] <= 0.999 and 0.0 <= e["new"]["beta1"] <= 0.6 for e in exploits)
    # the final config in trials.csv is the schedule's last one
    for row in trials.itertuples():
        final = history[history["trial_id"] == row.trial_id].iloc[-1]
        assert final["hp_lr"] == pytest.approx(row.lr)

    # Optuna proposed the population (pbt_member 0..n-1) and was told what each member reached
    study = load_study(exp, "pbt")
    assert sorted(t.user_attrs["pbt_member"] for t in study.trials) == list(range(n))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray) == ids
    for row in trials.itertuples():
        told = by_ray[row.trial_id]
        if row.status == "completed":
            assert told.state.name == "COMPLETE" and told.value == pytest.approx(row.fid_final)
    assert json.loads((exp / "best.json").read_text())["trial_id"] in ids

    # the report's PBT section: the exploits and the best trial's schedule
    from analysis.frames import load_experiments
    from analysis.report import Report

    report = Report(load_experiments([exp]), tmp_path / "report")
    report.section_experiments()
    report.section_pbt()  # (the other sections, plots and images, are the analysis tests')
    text = "\n".join(report.lines)
    section = text.split("## Population-based training", 1)[1].split("\n## ", 1)[0]
    assert f"{len(exploits)} exploit(s)" in section and f"`{exploits[0]['donor_id']}`" in section
    best = json.loads((exp / "best.json").read_text())["trial_id"]
    assert f"The schedule of the best trial, `{best}`" in section
    assert f"population-based training (PBT) of a population of {n}" in text


@pytest.mark.slow
def test_pbt_study_resumes_after_its_driver_is_killed(idx_mnist, tmp_path, monkeypatch):
    """A population of 2 (the worse member clones the better at each of 2 perturbation points): the
    driver is SIGKILLed once an exploit is recorded and Tune's snapshot holds an unfinished member's
    checkpoint, then resumed; the study ends with every member trained to max_kimg, each from the
    checkpoint the snapshot holds (its own or its donor's), and told to Optuna."""
    name, n = "pbtkill", 2
    # Tune snapshots a PBT study (which keeps every checkpoint, so no checkpoint forces a snapshot) every
    # 10 s by default: on a quiet machine the tiny study ended before a snapshot held an unfinished trial
    # (CI, 2026-12-05). Every 0.5 s, a snapshot follows each evaluation closely; the study is unchanged.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")
    exp = tmp_path / "store" / name
    flags = ["--storage-path", str(tmp_path / "store"), "--name", name, *TINY_PBT, "--scheduler", "pbt",
             "--num-samples", str(n), "--max-kimg", "0.75", "--perturbation-kimg", "0.25"]

    def unfinished() -> dict:  # members with training left and a checkpoint, in Tune's newest snapshot
        return {t: s for t, s in snapshot(exp).items() if s.kimg < 0.75 and s.checkpoint_kimg is not None}

    drivers = [Driver(flags, tmp_path, "0")]
    try:
        # (a trial that has reached max_kimg in the snapshot is finished: a resume does not run it again)
        wait_for(lambda: read_exploits(exp) and unfinished(), 240,
                 "an exploit and an unfinished member's checkpoint in Tune's snapshot", drivers[0].proc)
        drivers[0].kill()
        snapshotted = snapshot(exp)  # the snapshot at the kill
        killed_at = time.time()
        drivers.append(Driver(["--storage-path", str(tmp_path / "store"), "--name", name, "--resume"], tmp_path, "1"))
        assert drivers[1].wait(300) == 0, drivers[1].log.read_text()[-4000:]
    finally:
        for driver in drivers:
            driver.kill()
    assert drivers[0].started_its_own_ray() and drivers[1].started_its_own_ray()
    trials = read_trials_csv(exp / "trials.csv")
    assert len(trials) == n and trials["trial_id"].is_unique
    assert (trials["status"] == "completed").all(), trials.to_string()
    history = pd.read_parquet(exp / "history.parquet")
    assert not history.duplicated(subset=["trial_id", "kimg"]).any()
    assert (history.groupby("trial_id")["kimg"].max() >= 0.75).all()
    rows = result_rows(exp)
    resumed = {t: s for t, s in snapshotted.items() if s.kimg < 0.75 and s.checkpoint_kimg is not None}
    assert resumed, snapshotted
    for trial_id, at in resumed.items():  # resumed from that checkpoint, not from scratch
        # (the snapshot's last evaluation may be past it, its checkpoint not yet recorded: conftest.snapshot)
        after = [r["kimg"] for r in rows[trial_id] if "kimg" in r and r["timestamp"] >= killed_at]
        assert after and min(after) > at.checkpoint_kimg, (trial_id, at, after)
    # the resume asked for no new population, and every member was told what it reached
    study = load_study(exp, name)
    assert sorted(t.user_attrs["pbt_member"] for t in study.trials) == list(range(n))
    assert all(t.state.name == "COMPLETE" and math.isfinite(t.value) for t in study.trials)
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for row in trials.itertuples():
        assert by_ray[row.trial_id].value == pytest.approx(row.fid_final, rel=1e-9)
    exploits = read_exploits(exp)
    assert len(exploits) == len({(e["trial_id"], e["kimg"]) for e in exploits}) >= 1
