"""Faults injected for real: diverging configs, a lost worker node, damaged storage (a SIGKILLed driver:
test_faults_kill.py).

Every test runs the real thing at tiny size (the `idx_mnist` data, widths 8, batch 16): a real Ray
runtime (in-process, a multi-node `ray.cluster_utils.Cluster`, or a `python tuner/search.py`
subprocess), a real Optuna journal, real checkpoints. Faults that must strike at a given point of a
trial (right after its first checkpoint) are placed there by a Ray worker setup hook
(`fault_hook`), not by timing: the hook wraps `tuner.training.loop.train` inside the Ray workers and acts
after the trial's checkpoint has been reported, so nothing races against the trial's progress.

docs/faults.md lists every fault tested here and what the user sees.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import torch

from tuner import search
from tuner.config.search import SearchConfig
from tuner.study.assembly import init_ray
from tuner.config import TrainConfig
from tuner.study.optuna_bridge import HonestOptunaSearch, make_storage
from tuner.training.checkpoint import CheckpointError, load_checkpoint
from tuner.training.loop import train

from conftest import ONE_AT_A_TIME, REPO, TINY_CFG, TINY_MODEL, TINY_TRIAL, load_study, result_rows, start_local_ray, wait_for
from tuner.training.trial import build_trial

TINY = TINY_TRIAL


# ------------------------------------------------------------------------------------------
# helpers


def fault_hook(control_dir: str):
    """A Ray `worker_process_setup_hook` that injects a fault right after a trial's n-th checkpoint.

    The test writes CONTROL/plan.json: {"action": "hold" | "corrupt_and_die", "at_checkpoint": n (1 if
    absent), ...}. The first trial to report its n-th checkpoint claims the plan (CONTROL/claimed,
    created atomically, so it happens once per plan) and then
      - hold: records its node id and trial id in CONTROL/claimed and blocks (the test removes its node);
      - corrupt_and_die: truncates that checkpoint in Ray's storage (plan["exp"]) and SIGKILLs its
        own worker process, so Tune restores the trial from that damaged checkpoint.
    The closure is pickled by value, so the workers need nothing from the tests folder.
    """

    def hook() -> None:
        import json as _json
        import os as _os
        import signal as _signal
        import time as _time
        from pathlib import Path as _Path

        import tuner.training.loop as loop

        original = loop.train
        control = _Path(control_dir)

        def read_plan() -> dict | None:
            try:
                return _json.loads((control / "plan.json").read_text())
            except (FileNotFoundError, ValueError):  # not armed, or disarmed meanwhile
                return None

        def claim(info: dict) -> bool:
            # a name no other worker uses (pids repeat across the nodes of a test Cluster)
            tmp = control / f"claim.{_os.getpid()}.{_os.urandom(8).hex()}.tmp"
            try:
                tmp.write_text(_json.dumps(info))
                _os.link(tmp, control / "claimed")  # atomic, with its content: exactly one trial wins
            except (FileExistsError, FileNotFoundError):
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True

        def train(cfg, out_dir, report=None, resume_from=None, **kwargs):
            checkpoints = [0]  # checkpointed reports of this train() call

            def hooked_report(record, checkpoint_dir):
                report(record, checkpoint_dir)
                if checkpoint_dir is None:
                    return
                checkpoints[0] += 1
                plan = read_plan()
                if plan is None or checkpoints[0] != plan.get("at_checkpoint", 1):
                    return
                import ray as _ray
                from ray import tune as _tune

                info = {"node_id": _ray.get_runtime_context().get_node_id(),
                        "trial_id": _tune.get_context().get_trial_id(), "kimg": record["kimg"]}
                if not claim(info):
                    return
                if plan["action"] == "hold":
                    deadline = _time.monotonic() + 300
                    while not (control / "release").exists() and _time.monotonic() < deadline:
                        _time.sleep(0.1)
                elif plan["action"] == "corrupt_and_die":
                    index = plan.get("at_checkpoint", 1) - 1
                    (ckpt,) = _Path(plan["exp"]).glob(f"*{info['trial_id']}*/checkpoint_{index:06d}/checkpoint.pt")
                    data = ckpt.read_bytes()
                    ckpt.write_bytes(data[: len(data) // 3])  # a truncated zip
                    (control / "corrupted").write_text(str(ckpt))
                    _os.kill(_os.getpid(), _signal.SIGKILL)

            return original(cfg, out_dir, hooked_report if report is not None else None, resume_from, **kwargs)

        loop.train = train

    return hook


# ------------------------------------------------------------------------------------------
# security


def python_sources() -> list[Path]:
    skip = {".git", ".venv", "venv", "node_modules", "__pycache__"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    """Checkpoints and caches are read with torch.load(weights_only=True) only; no pickle, no
    np.load(allow_pickle=True). (Ray's own pickles of the experiment state are outside our code.)"""
    torch_loads, offenders = 0, []
    for path in python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno} {func}"
            if func == "torch.load":
                torch_loads += 1
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(where)
            elif func.split(".")[-1] in ("load", "loads") and func.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib"):
                offenders.append(where)
            elif func in ("np.load", "numpy.load", "pd.read_pickle", "pandas.read_pickle"):
                flag = kwargs.get("allow_pickle")
                if func.endswith("read_pickle") or (flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False)):
                    offenders.append(where)
    assert torch_loads >= 2  # the checkpoint loader and the domain-classifier cache are found
    assert not offenders, offenders


def test_local_ray_binds_the_dashboard_to_loopback(monkeypatch):
    # a local study keeps Ray's own default, token auth: init_ray leaves $RAY_AUTH_MODE to ray.init
    # (monkeypatch restores the session's setting after); tests/test_security.py checks the real Ray
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    init_ray(SearchConfig())
    (kwargs,) = calls
    assert kwargs["address"] == "local"  # never a stale /tmp/ray/ray_current_cluster
    assert kwargs["dashboard_host"] == "127.0.0.1"
    assert "RAY_AUTH_MODE" not in os.environ  # never "disabled"
    # the running dashboard process is checked in test_driver_killed_three_times_...
# ------------------------------------------------------------------------------------------
# the searcher after a driver kill: a trial told to Optuna after the last snapshot


def make_searcher(journal: Path, max_kimg: float = 1.0) -> HonestOptunaSearch:
    from tuner.config.space import build_ranges, define_by_run

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

    journal_study = optuna.load_study(study_name="s", storage=make_storage(str(journal)))
    states = {t.number: t for t in journal_study.trials}
    assert states[0].state.name == "COMPLETE" and states[0].value == 20.0  # its first record stands
    assert states[1].state.name == "COMPLETE" and states[1].value == 40.0
    assert states[2].state.name == "FAIL" and states[2].user_attrs["stale"] is True
    assert not [t for t in journal_study.trials if t.state.name == "RUNNING"]


@pytest.mark.parametrize("snapshot", ["older than the journal", "unreadable"])
def test_restored_searcher_never_repeats_a_config_it_drew_after_its_snapshot(snapshot, tmp_path, monkeypatch):
    """A driver killed while Tune copies its snapshot can leave the searcher's state older than the
    experiment state (a trial asked after it is restored by Tune and adopted from the journal), or
    unreadable (rebuilt from the journal, with the sampler at its seed). Its random stream was then
    the one that drew those trials: the next start-up trial repeated one of their configs (seen in
    the driver-kill test: two of four trials with the same config)."""
    import tuner.study.optuna_bridge as bridge

    journal = tmp_path / "optuna.journal"
    searcher = make_searcher(journal)
    drawn = [searcher.suggest("t0")]
    searcher.save_to_dir(str(tmp_path), session_str="s")  # the searcher's last snapshot
    if snapshot == "unreadable":
        (tmp_path / "searcher-state-s.pkl").write_bytes(b"garbage")
    drawn.append(searcher.suggest("t1"))  # asked after it; Tune's experiment state has it
    # -- SIGKILL here; the resumed driver restores both trials --
    monkeypatch.setattr(bridge, "_restored_ray_trials", frozenset({"t0", "t1"}))
    shutil.copy(journal, tmp_path / "journal-at-kill")
    nexts = []
    for _ in range(2):  # twice, from the same files: the next draw is new, and the same each time
        shutil.copy(tmp_path / "journal-at-kill", journal)
        resumed = make_searcher(journal)
        resumed.restore_from_dir(str(tmp_path))
        assert set(resumed._ot_trials) == {"t0", "t1"}
        nexts.append(resumed.suggest("t2"))
    assert nexts[0] == nexts[1]
    assert nexts[0] not in drawn, (nexts[0], drawn)


# ------------------------------------------------------------------------------------------
# damaged checkpoint files, unwritable storage


PAYLOAD = "import pickle, os\nclass E:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"


@pytest.mark.slow
def test_damaged_checkpoint_gives_one_line_error_naming_the_file(idx_mnist, tmp_path):
    flags = [*TINY_MODEL, "--seed", "1", "--max-kimg", "0.25", "--eval-every-kimg", "0.125"]
    cfg = TrainConfig(**TINY_CFG, max_kimg=0.125, eval_every_kimg=0.125)
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint" / "checkpoint.pt"
    good = ckpt.read_bytes()
    marker = tmp_path / "code-ran"
    damage = {
        "truncated": lambda: ckpt.write_bytes(good[: len(good) // 2]),
        # a pickle that runs a command when loaded without weights_only
        "malicious": lambda: subprocess.run([sys.executable, "-c", PAYLOAD.format(marker=marker) +
                                             f"pickle.dump({{'config': E()}}, open({str(ckpt)!r}, 'wb'), protocol=2)"],
                                            check=True),
    }
    for kind, write in damage.items():
        write()
        proc = subprocess.run([sys.executable, "-m", "tuner.train", "--out", str(tmp_path / "run"), "--resume", *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (kind, proc.stderr)
        assert lines[0].startswith(f"error: checkpoint file {ckpt} is unreadable or corrupt"), (kind, lines[0])
        assert "weights_only=False" not in lines[0]  # never advise loading it unsafely
        assert "fid[" not in proc.stdout  # no evaluation: nothing was trained
    assert not marker.exists()  # the malicious checkpoint's code never ran
    assert "GLOBAL" in lines[0] or "global" in lines[0]  # the refusal names what it refused


def test_unwritable_storage_fails_before_ray_starts(idx_mnist, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder")
    places = [blocker / "sub"]
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: a read-only mount bites, where mounting is allowed
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)],
                                 capture_output=True).returncode == 0
    else:
        readonly.chmod(0o500)
        mounted = True
    if mounted:
        places.append(readonly / "results")
    try:
        for place in places:
            ray_tmp = tmp_path / f"ray-{len(place.parts)}"
            proc = subprocess.run([sys.executable, "tuner/search.py", "--storage-path", str(place), "--name", "x",
                                   *TINY], cwd=REPO, capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, RAY_TMPDIR=str(ray_tmp)))
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr
            assert lines[0].startswith(f"error: invalid storage_path={str(place)!r}") and "writable" in lines[0]
            assert not ray_tmp.exists() and "Ray" not in proc.stdout + proc.stderr
            assert not place.exists()
    finally:
        if os.geteuid() == 0 and mounted:
            subprocess.run(["umount", str(readonly)], check=False)
        readonly.chmod(0o700)
    assert len(places) == 2 or os.geteuid() == 0  # as root without mount rights, only the file case runs


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                capture_output=True).returncode == 0


@pytest.mark.slow
def test_results_disk_full_mid_study_stops_with_one_error_and_resume_finishes_it(idx_mnist, tmp_path):
    # A 16 MiB tmpfs filled up to 1.5 MiB free: the first trials' checkpoints fill it mid-study.
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "16m"):
        pytest.skip("needs root with mount rights for a tiny tmpfs (a full disk cannot be simulated here)")
    try:
        filler = disk / "filler"
        storage = disk / "results"
        flags = ["tuner/search.py", "--storage-path", str(storage), "--name", "full", *TINY, "--losses", "hinge",
                 "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "z_dim=16:16", "--num-samples", "3",
                 "--max-concurrent", "2", "--max-kimg", "1", "--eval-every-kimg", "0.25", "--grace-kimg", "1",
                 "--max-failures", "1"]
        # already (nearly) full: refused before Ray starts, like any bad input
        filler.write_bytes(bytes(16 * 2**20 - 2**17))
        proc = subprocess.run([sys.executable, *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: invalid storage_path={str(storage)!r}: {disk} has only ")
        assert lines[0].endswith("KiB free; allowed a folder with at least 256 KiB free") and not storage.exists()

        filler.write_bytes(bytes(14 * 2**20 + 2**19))
        proc = subprocess.run([sys.executable, *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert errors == [f"error: storage_path {storage / 'full'} is full (0 KiB free, needs at least 256 KiB): the "
                          "study stopped; the trials finished so far are kept; free some space and run the same "
                          "command with --resume to continue"], proc.stderr[-3000:]
        assert "EOFError" not in proc.stderr  # the driver did not crash reading an empty error file (it used to)
        exp = storage / "full"
        assert not [p for p in ("trials.csv", "trials.parquet", "history.parquet", "best.json") if (exp / p).exists()]

        filler.unlink()  # the user frees space and resumes
        proc = subprocess.run([sys.executable, *flags, "--resume"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = pd.read_parquet(exp / "trials.parquet")
        assert len(trials) == 3 and (trials["status"] == "completed").all() and (trials["kimg"] >= 1.0).all()
        journal_study = load_study(exp, "full")
        assert sorted(t.user_attrs["ray_trial_id"] for t in journal_study.trials if t.state.name == "COMPLETE") == \
            sorted(trials["trial_id"])
        assert not [t for t in journal_study.trials if t.state.name == "RUNNING"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------------------
# a worker node is lost while it runs a trial


@pytest.mark.slow
def test_lost_worker_node_trial_resumes_from_its_checkpoint_on_another_node(idx_mnist, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("a Ray runtime from an earlier test is still connected")
    control = tmp_path / "control"
    control.mkdir()
    arm(control, action="hold")
    # Node deaths are noticed after a few missed health checks; make that quick.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    first = [cluster.add_node(num_cpus=1) for _ in range(2)]
    name = "nodeloss"
    flags = ["--storage-path", str(tmp_path), "--name", name, "--address", cluster.address, *TINY,
             "--losses", "hinge", "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32",
             "--num-samples", "3", "--max-concurrent", "2", "--max-kimg", "1", "--eval-every-kimg", "0.25",
             "--grace-kimg", "1", "--max-failures", "2"]
    outcome: dict[str, object] = {}

    def driver() -> None:  # Tune runs in a thread; the Cluster's nodes are started from the main thread
        try:
            outcome["rc"] = search.main(flags)
        except BaseException as err:
            outcome["error"] = err

    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": fault_hook(str(control))})
        thread = threading.Thread(target=driver, daemon=True)
        thread.start()
        try:
            claimed = wait_for(lambda: (control / "claimed").is_file() and (control / "claimed").read_text(),
                               240, "a trial to report its first checkpoint")
            removed = json.loads(claimed)
            (node,) = [n for n in cluster.list_all_nodes() if n.node_id == removed["node_id"]]
            cluster.remove_node(node, allow_graceful=False)
            cluster.add_node(num_cpus=1)  # capacity stays at two trials
        finally:
            (control / "release").touch()
        thread.join(timeout=300)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not thread.is_alive(), "the study did not end"
    assert outcome.get("rc") == 0, outcome

    exp = tmp_path / name
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 3 and (trials["status"] == "completed").all()  # every trial ended, none errored
    rows = result_rows(exp)
    # Tune numbers its trials in its folder names (run_trial_<id>_<n>_...): trials 1 and 2 started
    # together, one on each node; trial 3 started later, wherever a slot had freed.
    number = {row.trial_id: int(row.trial_dir.split("_")[3]) for row in trials.itertuples()}
    first_two = [t for t in rows if number[t] <= 2]
    assert {rows[t][0]["node_id"] for t in first_two} == {n.node_id for n in first}

    held = rows[removed["trial_id"]]
    victim = trials.set_index("trial_id").loc[removed["trial_id"]]
    # The reports an uninterrupted run of this config makes: a generator step shows D
    # batch_size * n_critic real images; evaluation runs at the first step at or past each 0.25 kimg.
    per_step = int(victim["batch_size"]) * int(victim["n_critic"])
    expected = [math.ceil(k * 250 / per_step) * per_step / 1000 for k in (1, 2, 3, 4)]
    # kimg is images / 1000 in float64: equal to the formula up to its last bit
    assert [r["kimg"] for r in held] == pytest.approx(expected)  # none repeated, none lost, whole budget
    assert removed["kimg"] == pytest.approx(expected[0])  # the node was removed after its first checkpoint
    after = held[1]
    assert after["node_id"] != removed["node_id"]  # resumed elsewhere ...
    assert after["iterations_since_restore"] == 1  # ... as a restored trial, from its checkpoint (from 0,
    # its first report would have been expected[0] again)
    assert all(r["node_id"] != removed["node_id"] for r in held[1:])
    history = pd.read_parquet(exp / "history.parquet")
    assert len(history[history["trial_id"] == removed["trial_id"]]) == len(held)


# ------------------------------------------------------------------------------------------
# divergence inside a real study (the tests from here on share one local Ray with the fault hook)


@pytest.fixture(scope="module")
def hooked_ray(tmp_path_factory):
    """A local Ray (2 CPUs) whose workers carry the fault hook; tests arm it with a plan file.

    It runs with the session's token auth (conftest.py): a driver process that has run a token-auth
    Ray and then starts one with another mode sees all its actors dropped (Ray 2.60), so no test
    switches the mode."""
    control = tmp_path_factory.mktemp("fault-control")
    start_local_ray(runtime_env={"worker_process_setup_hook": fault_hook(str(control))})
    yield control
    ray.shutdown()


def arm(control: Path, **plan) -> None:
    for name in ("claimed", "release", "corrupted"):
        (control / name).unlink(missing_ok=True)
    (control / "plan.tmp").write_text(json.dumps(plan))
    (control / "plan.tmp").replace(control / "plan.json")  # workers never read half a plan


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
                      "batch_size=16,32", "--num-samples", "4", *ONE_AT_A_TIME,
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

    journal_study = load_study(exp, name)
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in journal_study.trials}
    assert len(journal_study.trials) == 4
    assert not [t for t in journal_study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for row in diverged.itertuples():
        ot = by_ray_id[row.trial_id]
        assert ot.state == optuna.trial.TrialState.FAIL and ot.value is None  # never a (good) score
        assert ot.user_attrs["status"] == "diverged" and ot.user_attrs["diverge_reason"] == row.diverge_reason
    for row in healthy.itertuples():
        assert by_ray_id[row.trial_id].state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[row.status]
    best = json.loads((exp / "best.json").read_text())
    assert best["trial_id"] in set(healthy["trial_id"])


# ------------------------------------------------------------------------------------------
# a corrupt checkpoint in Ray's storage, restored after its worker died


@pytest.mark.slow
def test_trial_whose_latest_checkpoint_is_corrupt_resumes_from_the_previous_one(idx_mnist, tmp_path, hooked_ray):
    # The first trial to report its second checkpoint truncates it in Ray's storage and its worker
    # dies (SIGKILL). Tune restores it (max_failures 1) from that latest checkpoint: loading fails
    # with a CheckpointError naming the file, and the trial resumes from its previous checkpoint
    # (still in storage) instead of failing the same way on every retry.
    name = "corrupt"
    exp = tmp_path / name
    arm(hooked_ray, action="corrupt_and_die", exp=str(exp), at_checkpoint=2)
    try:
        rc = search.main(["--storage-path", str(tmp_path), "--name", name, *TINY, "--losses", "hinge",
                          "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", "2",
                          *ONE_AT_A_TIME, "--max-kimg", "0.75", "--eval-every-kimg", "0.25",
                          "--grace-kimg", "0.75", "--max-failures", "1"])
    finally:
        disarm(hooked_ray)
    assert rc == 0
    victim = json.loads((hooked_ray / "claimed").read_text())["trial_id"]
    corrupted = Path((hooked_ray / "corrupted").read_text())
    assert corrupted.parent.name == "checkpoint_000001"
    with pytest.raises(CheckpointError, match=str(corrupted)):  # the damage is real and named
        load_checkpoint(build_trial(TrainConfig(**TINY_CFG).resolved(), torch.device("cpu")), corrupted)

    trials = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    rows = result_rows(exp)[victim]
    k1, k2, k3 = (r["kimg"] for r in (rows[0], rows[1], rows[-1]))
    # evaluated at k1 and k2, died, restored, k2's checkpoint unreadable, resumed from k1's: k2 again, then k3
    assert [r["kimg"] for r in rows] == [k1, k2, k2, k3] and k1 < k2 < k3 and k3 >= 0.75
    assert rows[2]["iterations_since_restore"] == 1
    # resumed from k1's state: the same training again, on the same CPU with the same kernels, so the
    # same FID (equal in practice; approx's rel 1e-6 only spares the test a bit-for-bit claim across processes)
    assert rows[2]["fid"] == pytest.approx(rows[1]["fid"])
    history = pd.read_parquet(exp / "history.parquet")
    assert history.loc[history["trial_id"] == victim, "kimg"].is_monotonic_increasing
    messages = [p.read_text(errors="replace") for p in Path(ray._private.worker._global_node.get_logs_dir_path()).glob("worker-*.err")]
    assert any("cannot resume from" in m and "checkpoint_000001" in m and "is unreadable or corrupt" in m
               and "resuming from the older" in m for m in messages)
