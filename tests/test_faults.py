"""Faults injected for real: diverging configs, a lost worker node, a SIGKILLed driver, damaged storage.

Every test runs the real thing at tiny size (the `idx_mnist` data, widths 8, batch 16): a real Ray
runtime (in-process, a multi-node `ray.cluster_utils.Cluster`, or a `python tuner/search.py`
subprocess), a real Optuna journal, real checkpoints. Faults that must strike at a given point of a
trial (right after its first checkpoint) are placed there by a Ray worker setup hook
(`fault_hook`), not by timing: the hook wraps `tuner.trainable.train` inside the Ray workers and acts
after the trial's checkpoint has been reported, so nothing races against the trial's progress.

docs/faults.md lists every fault tested here and what the user sees.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import torch

from tuner import search
from tuner.config import TrainConfig
from tuner.optuna_bridge import HonestOptunaSearch, make_storage
from tuner.trainable import CheckpointError, build_trial, load_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--g-width", "8", "--d-width", "8", "--batch-size", "16", "--train-limit", "256",
        "--fid-samples", "64", "--cpus-per-trial", "1"]
TINY_CFG = dict(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1)
FINISHED = {"completed", "pruned", "diverged"}


# ------------------------------------------------------------------------------------------
# helpers


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail after `timeout` s (or if `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited (rc {proc.returncode}) while waiting for {what}")
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def result_rows(exp: Path) -> dict[str, list[dict]]:
    """Ray Tune's own record of every result: {trial_id: [result.json rows]}."""
    rows: dict[str, list[dict]] = {}
    for path in exp.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def load_study(exp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(str(exp / "optuna.journal")))


def fault_hook(control_dir: str):
    """A Ray `worker_process_setup_hook` that injects a fault right after a trial's first checkpoint.

    The test writes CONTROL/plan.json: {"action": "hold" | "corrupt_and_die", ...}. The first trial
    to report a checkpoint claims the plan (CONTROL/claimed, created atomically, so it happens once
    per plan) and then
      - hold: records its node id and trial id in CONTROL/claimed and blocks (the test removes its node);
      - corrupt_and_die: truncates its checkpoint in Ray's storage (plan["exp"]) and SIGKILLs its
        own worker process, so Tune restores the trial from that damaged checkpoint.
    The closure is pickled by value, so the workers need nothing from the tests folder.
    """

    def hook() -> None:
        import json as _json
        import os as _os
        import signal as _signal
        import time as _time
        from pathlib import Path as _Path

        import tuner.trainable as trainable

        original = trainable.train
        control = _Path(control_dir)

        def claim(info: dict) -> dict | None:
            plan_path = control / "plan.json"
            if not plan_path.is_file():
                return None
            plan = _json.loads(plan_path.read_text())
            tmp = control / f"claim.{_os.getpid()}.tmp"
            tmp.write_text(_json.dumps(info))
            try:
                _os.link(tmp, control / "claimed")  # atomic: exactly one trial wins
            except FileExistsError:
                return None
            finally:
                tmp.unlink()
            return plan

        def train(cfg, out_dir, report=None, resume_from=None):
            def hooked_report(record, checkpoint_dir):
                report(record, checkpoint_dir)
                if checkpoint_dir is None:
                    return
                import ray as _ray
                from ray import tune as _tune

                info = {"node_id": _ray.get_runtime_context().get_node_id(),
                        "trial_id": _tune.get_context().get_trial_id(), "kimg": record["kimg"]}
                plan = claim(info)
                if plan is None:
                    return
                if plan["action"] == "hold":
                    deadline = _time.monotonic() + 300
                    while not (control / "release").exists() and _time.monotonic() < deadline:
                        _time.sleep(0.1)
                elif plan["action"] == "corrupt_and_die":
                    (ckpt,) = _Path(plan["exp"]).glob(f"*{info['trial_id']}*/checkpoint_000000/checkpoint.pt")
                    data = ckpt.read_bytes()
                    ckpt.write_bytes(data[: len(data) // 3])  # a truncated zip
                    (control / "corrupted").write_text(str(ckpt))
                    _os.kill(_os.getpid(), _signal.SIGKILL)

            return original(cfg, out_dir, hooked_report if report is not None else None, resume_from)

        trainable.train = train

    return hook


# ------------------------------------------------------------------------------------------
# 1. divergence inside a real study


@pytest.fixture(scope="module")
def hooked_ray(tmp_path_factory):
    """A local Ray (2 CPUs) whose workers carry the fault hook; tests arm it with a plan file."""
    control = tmp_path_factory.mktemp("fault-control")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": fault_hook(str(control))})
    yield control
    ray.shutdown()


def arm(control: Path, **plan) -> None:
    for name in ("claimed", "release", "corrupted"):
        (control / name).unlink(missing_ok=True)
    (control / "plan.json").write_text(json.dumps(plan))


def disarm(control: Path) -> None:
    (control / "plan.json").unlink(missing_ok=True)
    (control / "release").touch()


@pytest.mark.slow
def test_diverging_configs_end_as_failed_trials_in_a_real_study(idx_mnist, tmp_path, hooked_ray):
    # lsgan at lr 1e4 turns non-finite within a few steps; lr 1e-4 trains normally. TPE's seeded
    # start-up sampling (seed 0) draws both values among the 4 trials.
    name = "diverge"
    rc = search.main(["--storage-path", str(tmp_path), "--name", name, *TINY, "--losses", "lsgan",
                      "--ranges", "lr=1e-4,1e4", "g_width=8:8", "d_width=8:8",
                      "batch_size=16,32", "--num-samples", "4", "--max-concurrent", "2",
                      "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.25"])
    assert rc == 0
    exp = tmp_path / name
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 4
    diverged = trials[trials["status"] == "diverged"]
    healthy = trials[trials["status"] != "diverged"]
    assert len(diverged) >= 1 and len(healthy) >= 1
    assert (diverged["lr"] == 1e4).all() and (healthy["lr"] == 1e-4).all()
    assert diverged["diverge_reason"].str.len().gt(0).all()
    assert diverged["fid_final"].isna().all()  # no finite FID: nothing to rank it by
    assert set(healthy["status"]) <= {"completed", "pruned"}

    study = load_study(exp, name)
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert len(study.trials) == 4
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for row in diverged.itertuples():
        ot = by_ray_id[row.trial_id]
        assert ot.state == optuna.trial.TrialState.FAIL and ot.value is None  # never a (good) score
        assert ot.user_attrs["status"] == "diverged" and ot.user_attrs["diverge_reason"] == row.diverge_reason
    for row in healthy.itertuples():
        assert by_ray_id[row.trial_id].state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[row.status]
    best = json.loads((exp / "best.json").read_text())
    assert best["trial_id"] in set(healthy["trial_id"])


# ------------------------------------------------------------------------------------------
# 3a. the searcher after a driver kill: a trial told to Optuna after the last snapshot


def make_searcher(journal: Path, max_kimg: float = 1.0) -> HonestOptunaSearch:
    from tuner.space import build_ranges, define_by_run

    return HonestOptunaSearch(space=define_by_run("gan", ("hinge",), build_ranges("gan")), metric="fid", mode="min",
                              sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                              storage=make_storage(str(journal)), max_kimg=max_kimg)


def test_restored_searcher_accepts_reruns_of_trials_finished_after_the_snapshot(tmp_path):
    """Tune snapshots the searcher with the experiment; a trial that finished (and was told to
    Optuna) after the last snapshot is RUNNING in that snapshot, so a resumed run re-runs it from its
    checkpoint and reports it again. Optuna refuses updates to finished trials; the searcher must not
    let that end the resumed run, nor leave a trial RUNNING."""
    journal = tmp_path / "optuna.journal"
    searcher = make_searcher(journal)
    searcher.suggest("t_done")
    searcher.suggest("t_stale")
    searcher.on_trial_result("t_done", {"fid": 30.0, "kimg": 0.5})
    searcher.save(str(tmp_path / "snapshot.pkl"))  # the last experiment snapshot
    searcher.on_trial_result("t_done", {"fid": 20.0, "kimg": 1.0})
    searcher.on_trial_complete("t_done", {"fid": 20.0, "kimg": 1.0})
    searcher.suggest("t_lost")  # asked after the snapshot: Tune will never hear of it again
    # -- SIGKILL here; the resumed driver restores the snapshot --
    resumed = make_searcher(journal)
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    resumed.on_trial_result("t_done", {"fid": 21.0, "kimg": 0.75})  # the re-run, from its 0.5 kimg checkpoint
    resumed.on_trial_result("t_done", {"fid": 19.0, "kimg": 1.0})
    resumed.on_trial_complete("t_done", {"fid": 19.0, "kimg": 1.0})
    resumed.on_trial_result("t_stale", {"fid": 40.0, "kimg": 1.0})
    resumed.on_trial_complete("t_stale", {"fid": 40.0, "kimg": 1.0})

    study = optuna.load_study(study_name="s", storage=make_storage(str(journal)))
    states = {t.number: t for t in study.trials}
    assert states[0].state.name == "COMPLETE" and states[0].value == 20.0  # its first record stands
    assert states[1].state.name == "COMPLETE" and states[1].value == 40.0
    assert states[2].state.name == "FAIL" and states[2].user_attrs["stale"] is True
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
