"""The two damaged-study fixtures and their helpers, shared by test_resume_damage.py (the finished
study) and test_resume_damage_interrupted.py (the interrupted one): two files, so that the two
studies are made and resumed on both test workers at once. Each study is made once per module with
real `python tuner/search.py` subprocesses (own Ray each, tiny IDX data).

Each test damages a copy of the experiment folder and runs `--resume` as a subprocess. Either the
study finishes with every earlier trial kept (same trial ids, same FIDs) and `--num-samples` trials
in all, or the command exits 2 with one `error:` line and every file in the folder is unchanged
(sha256 before/after). docs/faults.md lists each case and what the user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ONE_AT_A_TIME, TINY_TRIAL, load_study, write_idx_dataset
from tuner.results.exports import read_trials_csv

REPO = Path(__file__).resolve().parents[3]
TINY = [*TINY_TRIAL, "--losses", "hinge", "--ranges", "g_width=8:8", "d_width=8:8",
        "batch_size=16,32", "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.5"]
N = 2  # trials per study


# ------------------------------------------------------------------------------------------
# helpers


def env_for(root: Path, ray_tmp: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENTUNE_")}
    ray_tmp = ray_tmp or Path(tempfile.mkdtemp(prefix="gtr", dir="/tmp"))  # short: Ray's socket paths
    env.update(GENTUNE_DATA_ROOT=str(root / "data"), GENTUNE_CACHE=str(root / "cache"), RAY_TMPDIR=str(ray_tmp),
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return env


def search_cmd(*flags: str) -> list[str]:
    return [sys.executable, "tuner/search.py", *flags]


def run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path -> hex digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def result_fids(exp: Path) -> dict[str, list[float]]:
    """Ray Tune's own record: trial id -> the FIDs in its result.json."""
    out = {}
    for path in exp.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [r["fid"] for r in rows]
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def newest(exp: Path, pattern: str) -> Path:
    return max(exp.glob(pattern), key=lambda p: p.name)


def snapshot_records(exp: Path) -> list[dict]:
    """Every trial's record in Tune's newest experiment state."""
    return [json.loads(t) for t, _ in json.loads(newest(exp, "experiment_state-*.json").read_text())["trial_data"]]


def search_gen_state(exp: Path) -> dict:
    """The newest search_gen_state, read with Tune's own loader."""
    from ray.tune.utils.util import _load_newest_checkpoint

    return _load_newest_checkpoint(str(exp), newest(exp, "search_gen_state-*.json").name)


def write_search_gen_state(exp: Path, state: dict) -> None:
    """Replace the newest search_gen_state, written with Tune's own saver (a torn snapshot's damage)."""
    from ray.tune.utils.util import _atomic_save

    name = newest(exp, "search_gen_state-*.json").name
    _atomic_save(state, str(exp), name, f"tmp-{name}")


# ------------------------------------------------------------------------------------------
# the two studies (made once per module)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-damage")
    write_idx_dataset(root / "data", "MNIST")
    return root


@pytest.fixture(scope="module")
def finished(work) -> Path:
    store = work / "finished-store"
    proc = run(search_cmd("--storage-path", str(store), "--name", "a", *TINY, "--num-samples", str(N),
                          *ONE_AT_A_TIME), env_for(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = store / "a"
    assert len(read_trials_csv(exp / "trials.csv")) == N
    return exp


@pytest.fixture(scope="module")
def interrupted(work) -> Path:
    """A study whose driver was SIGKILLed once the first trial had finished in Tune's snapshot
    (one trial at a time, so the second one has work left)."""
    store = work / "interrupted-store"
    exp = store / "b"
    ray_tmp = Path(tempfile.mkdtemp(prefix="gtk", dir="/tmp"))
    log = work / "interrupted-driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(search_cmd("--storage-path", str(store), "--name", "b", *TINY, "--num-samples", str(N),
                                           *ONE_AT_A_TIME),
                                cwd=REPO, env=env_for(work, ray_tmp), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def finished_in_snapshot() -> bool:
        """A finished trial in a whole snapshot: the driver copies experiment_state-*.json, then
        search_gen_state-*.json (tuner/study/storage.py), and a kill between the two (a few ms, more under
        load) leaves a torn snapshot, which these tests make on purpose, not by chance."""
        from tuner.study.resume import FINISHED, LIMITER_KEY

        files = sorted(exp.glob("experiment_state-*.json"))
        try:
            state = json.loads(files[-1].read_text()) if files else {"trial_data": []}
            records = [json.loads(t) for t, _ in state["trial_data"]]
            limiter = search_gen_state(exp)[LIMITER_KEY] if records else {}
        except Exception:  # being written
            return False
        running = {r["trial_id"] for r in records if r["status"] not in FINISHED}
        return any(r["status"] == "TERMINATED" for r in records) and limiter.get("live_trials") == running

    deadline = time.monotonic() + 240
    try:
        while not finished_in_snapshot():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no finished trial in the snapshot after 240 s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kill_processes_of(ray_tmp)
    assert not (exp / "trials.csv").exists()  # killed before the exports
    return exp


def kill_processes_of(ray_tmp: Path) -> None:
    """SIGKILL what the killed driver's Ray left running (its processes inherited RAY_TMPDIR)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RAY_TMPDIR={ray_tmp}".encode() in environ or str(ray_tmp).encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def copy_study(exp: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "store" / exp.name
    shutil.copytree(exp, dest, symlinks=True)
    return dest


def resume(exp: Path, work: Path, env: dict[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess:
    return run(search_cmd("--storage-path", str(exp.parent), "--name", exp.name, "--resume", *extra),
               env or env_for(work))


def assert_refused(proc: subprocess.CompletedProcess, before: dict[str, str], exp: Path, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in line, line
    assert digest(exp) == before  # every file unchanged, none added or removed
    return line


def assert_recovered(proc: subprocess.CompletedProcess, earlier: dict[str, list[float]], exp: Path) -> pd.DataFrame:
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = read_trials_csv(exp / "trials.csv")
    parquet = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == N and trials["trial_id"].is_unique
    assert set(parquet["trial_id"]) == set(trials["trial_id"])
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    fids = trials.set_index("trial_id")["fid_final"]
    for trial_id, results in earlier.items():  # every earlier trial kept, with its FID
        assert trial_id in fids.index
        if len(results) == 2:  # it had finished: not re-run
            # the same float64, copied into trials.csv (rel 1e-9 allows only for its decimal text)
            assert fids[trial_id] == pytest.approx(results[-1], rel=1e-9)
            assert result_fids(exp)[trial_id] == results
    # every trial is in this experiment's own folder and Optuna journal, told with its final FID
    assert set(result_fids(exp)) == set(trials["trial_id"])
    told = {t.user_attrs.get("ray_trial_id"): t for t in load_study(exp, exp.name).trials}
    for trial_id, fid in fids.items():
        assert trial_id in told, f"{trial_id} is not in {exp}/optuna.journal"
        # the same float64 copied into the journal (JSON) and the CSV: rel 1e-9 allows only for their text
        assert told[trial_id].state.name == "COMPLETE" and told[trial_id].value == pytest.approx(fid, rel=1e-9)
    return trials


# ------------------------------------------------------------------------------------------
# the checks both studies get (each file calls them on its own study)


def check_garbage_searcher_state_is_rebuilt(study: Path, work: Path, tmp_path: Path) -> None:
    exp = copy_study(study, tmp_path)
    earlier = result_fids(exp)
    newest(exp, "searcher-state-*.pkl").write_bytes(b"\x80\x04 not a pickle at all")
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert "rebuilt from the Optuna journal" in proc.stderr
    assert "Restarting experiment" not in proc.stderr


def check_truncated_experiment_state_is_refused(study: Path, work: Path, tmp_path: Path) -> None:
    exp = copy_study(study, tmp_path)
    state = newest(exp, "experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, state.name, "is unreadable", "nothing was run or changed")
