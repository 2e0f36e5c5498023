"""A resume never loses a study: damaged Tune state either recovers fully or stops before any trial runs.

A finished and an interrupted (driver SIGKILLed) study are made once per module with real
`python tuner/search.py` subprocesses (own Ray each, tiny IDX data); each test damages a copy of
the experiment folder and runs `--resume` as a subprocess. Either the study finishes with every
earlier trial kept (same trial ids, same FIDs) and `--num-samples` trials in all, or the command
exits 2 with one `error:` line and every file in the folder is unchanged (sha256 before/after).
docs/faults.md lists each case and what the user sees.
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

from conftest import TINY_TRIAL, load_study, write_idx_dataset
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
                          "--max-concurrent", "2"), env_for(work))
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
                                           "--max-concurrent", "1"),
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
# recovered: what Tune can rebuild from the Optuna journal


@pytest.mark.slow
@pytest.mark.parametrize("study", ["finished", "interrupted"])
def test_garbage_searcher_state_is_rebuilt_from_the_journal(study, work, tmp_path, request):
    exp = copy_study(request.getfixturevalue(study), tmp_path)
    earlier = result_fids(exp)
    newest(exp, "searcher-state-*.pkl").write_bytes(b"\x80\x04 not a pickle at all")
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert "rebuilt from the Optuna journal" in proc.stderr
    assert "Restarting experiment" not in proc.stderr


@pytest.mark.slow
def test_a_copied_study_resumes_into_its_own_folder_and_leaves_the_original_alone(interrupted, work, tmp_path):
    # Tune pickles the folder and journal of where a study started (the search generator's experiment,
    # the searcher's Optuna storage): a resumed copy wrote its new trials, their Optuna records and
    # sample grids into the original study.
    before = digest(interrupted)
    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert f"the experiment was moved from {interrupted} to {exp}" in proc.stderr
    assert digest(interrupted) == before


@pytest.mark.slow
def test_missing_searcher_state_is_rebuilt_from_the_journal(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    for path in exp.glob("searcher-state-*.pkl"):
        path.unlink()
    assert_recovered(resume(exp, work), earlier, exp)


@pytest.mark.slow
def test_half_copied_files_of_a_driver_killed_during_a_copy_are_removed(interrupted, work, tmp_path):
    # the driver copies each snapshot file beside its target and renames it over the target when whole
    # (tuner/study/storage.py): a kill in the middle leaves the partial copy, never a cut target
    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    state = newest(exp, "experiment_state-*.json")
    partials = [state.with_name(f".gentune-partial-{state.name}"),
                next(exp.glob("*/result.json")).with_name(".gentune-partial-result.json")]
    for path in partials:
        path.write_bytes(state.read_bytes()[:100])
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert "gentune: removed 2 half-copied file(s) the stopped driver left" in proc.stderr
    assert not list(exp.rglob(".gentune-partial-*"))


@pytest.mark.slow
def test_torn_snapshot_search_generator_count_is_repaired(finished, work, tmp_path):
    # A driver killed while Tune copies its snapshot into storage can leave search_gen_state from
    # before the newest trial was created (seen in the driver-kill test: 5 trials for --num-samples 4).
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    n_state = len(snapshot_records(exp))
    state = search_gen_state(exp)
    assert state["counter"] == n_state
    write_search_gen_state(exp, {**state, "counter": n_state - 1})
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)  # exactly N trials, not N + 1
    assert f"counted {n_state - 1} trials, the experiment state holds {n_state}" in proc.stderr


@pytest.mark.slow
def test_torn_snapshot_concurrency_limiter_is_set_to_the_experiment_states_running_trials(interrupted, work, tmp_path):
    # Seen in the driver-kill test: search_gen_state (which holds the ConcurrencyLimiter of
    # --max-concurrent) was older than the experiment state. Its limiter held a trial that had
    # finished since (a slot lost for the rest of the run; with --max-concurrent 1, no trial could
    # start) and lacked a restored running one (the limiter drops the completion of a trial it does
    # not hold, so that trial was never told to Optuna and was marked stale at the end). Here: the
    # limiter holds the finished trial, as it did before that trial ended.
    from tuner.study.resume import FINISHED, LIMITER_KEY

    exp = copy_study(interrupted, tmp_path)
    earlier = result_fids(exp)
    state = search_gen_state(exp)
    records = snapshot_records(exp)
    running = {r["trial_id"] for r in records if r["status"] not in FINISHED}
    done = sorted(r["trial_id"] for r in records if r["status"] == "TERMINATED")
    assert done  # the damage below replaces the limiter whatever the fixture's kill left in it
    limiter = {**state[LIMITER_KEY], "live_trials": {done[0]}, "num_unfinished_live_trials": 1}
    write_search_gen_state(exp, {**state, LIMITER_KEY: limiter})
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)  # with the slot lost, --max-concurrent 1 would start no trial
    assert f"held the trials ['{done[0]}'] as running, the experiment state {sorted(running)}" in proc.stderr
    limiter_after = search_gen_state(exp)[LIMITER_KEY]  # the repaired file the resume read
    assert limiter_after["live_trials"] == running and limiter_after["num_unfinished_live_trials"] == len(running)


@pytest.mark.slow
def test_garbage_search_generator_state_is_rebuilt_from_an_older_copy(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    earlier = result_fids(exp)
    gen = newest(exp, "search_gen_state-*.json")
    shutil.copy(gen, exp / "search_gen_state-2000-01-01_00-00-00.json")  # an earlier session's copy
    gen.write_bytes(b"garbage")
    proc = resume(exp, work)
    assert_recovered(proc, earlier, exp)
    assert f"{gen.name} is unreadable" in proc.stderr and "rebuilt from search_gen_state-2000" in proc.stderr
    assert (exp / f"{gen.name}.damaged").read_bytes() == b"garbage"


# ------------------------------------------------------------------------------------------
# refused: exit 2, one error line, nothing changed


@pytest.mark.slow
@pytest.mark.parametrize("study", ["finished", "interrupted"])
def test_truncated_experiment_state_is_refused_and_nothing_changes(study, work, tmp_path, request):
    exp = copy_study(request.getfixturevalue(study), tmp_path)
    state = newest(exp, "experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, state.name, "is unreadable", "nothing was run or changed")


@pytest.mark.slow
def test_missing_experiment_state_is_refused_and_nothing_changes(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    for path in exp.glob("experiment_state-*.json"):
        path.unlink()
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, "experiment_state-*.json is missing")


@pytest.mark.slow
def test_garbage_search_generator_state_is_refused_and_nothing_changes(interrupted, work, tmp_path):
    exp = copy_study(interrupted, tmp_path)
    gen = newest(exp, "search_gen_state-*.json")
    gen.write_bytes(b"garbage")
    before = digest(exp)
    assert_refused(resume(exp, work), before, exp, gen.name, "is unreadable")


@pytest.mark.slow
def test_unusable_lock_folder_is_refused_and_nothing_changes(finished, work, tmp_path):
    # Tune's restore lock folder is $RAY_TMPDIR/_ray_lockfiles; a regular file there makes it
    # uncreatable even for root (like another account's /tmp/_ray_lockfiles, ray#32776)
    exp = copy_study(finished, tmp_path)
    ray_tmp = Path(tempfile.mkdtemp(prefix="gtl", dir="/tmp"))
    (ray_tmp / "_ray_lockfiles").write_text("not a folder")
    before = digest(exp)
    line = assert_refused(resume(exp, work, env_for(work, ray_tmp)), before, exp, "_ray_lockfiles", "lock folder")
    assert "TMPDIR" in line


@pytest.mark.slow
def test_a_restore_tune_rejects_is_refused_instead_of_restarting(finished, work, tmp_path):
    # Valid JSON that Tune cannot turn back into trials: gentune's own checks pass, Tune's restore
    # fails inside TuneController and would restart the study ("Restarting experiment.")
    exp = copy_study(finished, tmp_path)
    path = newest(exp, "experiment_state-*.json")
    state = json.loads(path.read_text())
    state["trial_data"] = [[json.dumps({"trial_id": json.loads(t)["trial_id"]}), m] for t, m in state["trial_data"]]
    path.write_text(json.dumps(state))
    before = digest(exp)
    proc = resume(exp, work)
    assert_refused(proc, before, exp, "Ray Tune could not restore the run state")
    assert "Restarting experiment" not in proc.stderr


# ------------------------------------------------------------------------------------------
# exports never silently shrink


@pytest.mark.slow
def test_exports_refuse_to_shrink_unless_allowed(finished, work, tmp_path):
    exp = copy_study(finished, tmp_path)
    trials = read_trials_csv(exp / "trials.csv")
    extra = trials.iloc[:1].assign(trial_id="gone_00099")  # a trial the experiment no longer holds
    pd.concat([trials, extra]).to_csv(exp / "trials.csv", index=False)
    before = digest(exp)
    env = env_for(work)
    proc = run([sys.executable, "-m", "tuner.results.exports", str(exp)], env)
    line = assert_refused(proc, before, exp, "trials.csv", "gone_00099", "--allow-shrink")
    assert proc.stderr.strip() == line  # no Ray started: the one line is all

    proc = run([sys.executable, "-m", "tuner.results.exports", str(exp), "--allow-shrink"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(read_trials_csv(exp / "trials.csv")["trial_id"]) == set(trials["trial_id"])
    assert not list(exp.glob(".*.tmp"))  # no temporary file left behind
