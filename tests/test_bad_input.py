"""Bad input to every command line: one clear line, exit status 2, nothing started, nothing written.

Each case runs the real CLI as a subprocess (`python tuner/search.py`, `python -m tuner.train`,
`python -m tuner.fid`, `python -m analysis.report`) and checks that
  - it exits with status 2,
  - stderr is exactly one line, `error: ...`, naming the field or flag and what is allowed,
  - no Ray runtime was started: each case gets its own empty $RAY_TMPDIR, where `ray.init` would
    create `ray/session_*` (test_faults.py's driver test shows that signal firing), and nothing says
    "Started a local Ray instance",
  - nothing was created under --storage-path (or --out), and a folder that existed is unchanged.

The cases run concurrently (a few at a time) in one module fixture; each test reads its outcome.
A typo in cluster.yaml is covered by tests/test_cluster_yaml.py. docs/faults.md lists every case.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import FASHION_DIR, TINY_MODEL, write_idx_dataset

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["tuner/search.py"]
TRAIN = ["-m", "tuner.train"]
FID = ["-m", "tuner.fid"]
REPORT = ["-m", "analysis.report"]
RERUN = ["-m", "analysis.rerun"]
# Valid tiny settings first, the bad flag after (argparse keeps the last value): a case that were
# wrongly accepted would run a short study instead of hanging the suite.
TRAIN_BASE = [*TINY_MODEL, "--max-kimg", "0.25", "--eval-every-kimg", "0.25"]
BASE = [*TRAIN_BASE, "--num-samples", "1", "--grace-kimg", "0.25"]
FOLDER_ALLOWED = "allowed a folder that can be created and written"
IS_ROOT = os.geteuid() == 0


@dataclass
class Case:
    cli: list[str]
    args: list[str]  # "{tmp}" is replaced by the case's folder
    expect: list[str]  # substrings of the error line
    base: bool = True  # prepend BASE (search only)
    needs_fashion: bool = False
    existing: list[str] = field(default_factory=list)  # folders (relative to the case folder) that exist before
    env: dict[str, str] = field(default_factory=dict)  # "{tmp}" is replaced by the case's folder
    needs_non_root: bool = False  # root reads a chmod 000 file all the same


CASES: dict[str, Case] = {
    "unknown-flag": Case(SEARCH, ["--lerning-rate", "1e-3"], ["unrecognized arguments: --lerning-rate", "--help"]),
    "flag-type": Case(SEARCH, ["--batch-size", "sixteen"], ["--batch-size", "invalid int value: 'sixteen'"]),
    "unknown-loss": Case(SEARCH, ["--loss", "wasserstein"], ["loss='wasserstein'", "bce, hinge, wgan, wgan-gp, lsgan"]),
    "negative-lr": Case(SEARCH, ["--lr", "-0.001"], ["lr=-0.001", "a finite number > 0"]),
    "zero-lr": Case(SEARCH, ["--lr", "0"], ["lr=0.0", "a finite number > 0"]),
    "n-critic-0": Case(SEARCH, ["--n-critic", "0"], ["n_critic=0", "an integer >= 1"]),
    "clip-without-wgan": Case(SEARCH, ["--loss", "hinge", "--clip-value", "0.01"], ["clip_value=0.01", "only with loss=wgan"]),
    "vae-latent-0": Case(SEARCH, ["--family", "vae", "--z-dim", "0"], ["z_dim=0", "an integer >= 1"]),
    "gpus-1.5": Case(SEARCH, ["--gpus-per-trial", "1.5"], ["gpus_per_trial=1.5", "a fraction in [0, 1]"]),
    "time-budget-text": Case(SEARCH, ["--time-budget", "ten minutes"], ["time_budget='ten minutes'", "a duration like 90s, 10m or 1h30m"]),
    "time-budget-0": Case(SEARCH, ["--time-budget", "0m"], ["time_budget='0m'", "a duration like 90s, 10m or 1h30m"]),
    "pack-0": Case(SEARCH, ["--pack", "0"], ["pack=0", "an integer >= 1"]),
    "pack-grid": Case(SEARCH, ["--pack", "4", "--grid", "lab1-gan"], ["pack=4", "1 with --grid"]),
    "pack-vae": Case(SEARCH, ["--family", "vae", "--pack", "2"], ["pack=2", "1 for family=vae (packs train GANs only)"]),
    "pack-memory": Case(SEARCH, ["--pack", "100000"], ["pack=100000", "allowed at most", "MiB"]),
    "scheduler-unknown": Case(SEARCH, ["--scheduler", "nosuch"], ["scheduler='nosuch'", "one of asha, pbt"]),
    "scheduler-pbt-grid": Case(SEARCH, ["--scheduler", "pbt", "--grid", "lab1"], ["scheduler='pbt'", "asha with --grid"]),
    "scheduler-pb2": Case(SEARCH, ["--scheduler", "pb2"], ["scheduler='pb2'", "needs GPy and scikit-learn", "asha or pbt"]),
    "scheduler-pbt-pack": Case(SEARCH, ["--scheduler", "pbt", "--pack", "2"], ["pack=2", "1 with --scheduler pbt"]),
    "scheduler-pbt-one": Case(SEARCH, ["--scheduler", "pbt"], ["num_samples=1", "an integer >= 2 with --scheduler pbt"]),
    "scheduler-pbt-concurrent": Case(SEARCH, ["--scheduler", "pbt", "--num-samples", "2", "--max-concurrent", "2"],
                                     ["max_concurrent=2", "0 with --scheduler pbt"]),
    "perturbation-without-pbt": Case(SEARCH, ["--perturbation-kimg", "0.25"],
                                     ["perturbation_kimg=0.25", "only with --scheduler pbt"]),
    "perturbation-above-max": Case(SEARCH, ["--scheduler", "pbt", "--num-samples", "2", "--perturbation-kimg", "5"],
                                   ["perturbation_kimg=5.0", "<= max_kimg (0.25)"]),
    "startup-negative": Case(SEARCH, ["--n-startup-trials", "-1"], ["n_startup_trials=-1", "an integer >= 0"]),
    "grace-above-max": Case(SEARCH, ["--max-kimg", "1", "--eval-every-kimg", "0.5", "--grace-kimg", "5"],
                            ["grace_kimg=5.0", "<= max_kimg (1.0)"]),
    "eval-above-max": Case(SEARCH, ["--max-kimg", "1", "--eval-every-kimg", "2"], ["eval_every_kimg=2.0", "<= max_kimg (1.0)"]),
    "unknown-dataset": Case(SEARCH, ["--dataset", "cifar10"], ["dataset='cifar10'", "mnist, fashion-mnist"]),
    "mirror-absent": Case(SEARCH, ["--dataset", "fashion-mnist", "--data-mirror", "{tmp}/no-such-mirror"],
                          ["{tmp}/no-such-mirror", "is not a folder", "To get fashion-mnist", "dataset-fashion-mnist"]),
    "mirror-missing-files": Case(SEARCH, ["--dataset", "fashion-mnist", "--data-mirror", "{tmp}/partial"],
                                 ["{tmp}/partial", "lacks train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz",
                                  "GENTUNE_DATA_MIRROR"]),
    "mirror-bad-checksum-mnist": Case(SEARCH, ["--data-mirror", "{tmp}/mnist-mirror"],
                                      ["{tmp}/mnist-mirror/train-images-idx3-ubyte.gz", "bad checksum"]),
    "mirror-bad-checksum-fashion": Case(SEARCH, ["--dataset", "fashion-mnist", "--data-mirror", "{tmp}/fashion"],
                                        ["{tmp}/fashion/t10k-labels-idx1-ubyte.gz", "bad checksum"], needs_fashion=True),
    # no data anywhere and no way to download it: every proxy points at a closed port
    "no-data-offline": Case(SEARCH, [], ["mnist not found under {tmp}/no-data", "Error downloading", "To get mnist"],
                            env={"GENTUNE_DATA_ROOT": "{tmp}/no-data", "HTTP_PROXY": "http://127.0.0.1:9",
                                 "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
                                 "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}),
    "space-typo-key": Case(SEARCH, ["--space-file", "{tmp}/typo.yaml"], ["space: lr", "hihg", "allowed low, high, log"]),
    "space-unknown-parameter": Case(SEARCH, ["--space-file", "{tmp}/unknown.yaml"], ["'learning_rate'", "allowed z_dim, lr"]),
    "space-inverted-range": Case(SEARCH, ["--space-file", "{tmp}/inverted.yaml"], ["space: lr", "low=0.001, high=1e-05", "low <= high"]),
    "space-not-yaml": Case(SEARCH, ["--space-file", "{tmp}/broken.yaml"], ["space_file", "broken.yaml", "not valid YAML"]),
    "ranges-not-a-range": Case(SEARCH, ["--ranges", "lr=fast"], ["space: lr", "low:high"]),
    "resume-not-an-experiment": Case(SEARCH, ["--storage-path", "{tmp}/store", "--name", "notes", "--resume"],
                                     ["{tmp}/store/notes", "not a gentune/Ray Tune experiment"], base=False,
                                     existing=["store/notes"]),
    "name-taken": Case(SEARCH, ["--storage-path", "{tmp}/store", "--name", "taken"],
                       ["name='taken'", "already holds an experiment", "--resume"], existing=["store/taken"]),
    "checkpoint-interval-negative": Case(SEARCH, ["--checkpoint-every-kimg", "-1"],
                                         ["checkpoint_every_kimg=-1.0", "a finite number >= 0 (0 = off)"]),
    "checkpoint-minutes-not-a-number": Case(SEARCH, ["--checkpoint-every-min", "often"],
                                            ["--checkpoint-every-min", "invalid float value: 'often'"]),
    "train-checkpoint-minutes-nan": Case(TRAIN, ["--out", "{tmp}/store/run", "--checkpoint-every-min", "nan"],
                                         ["checkpoint_every_min=nan", "a finite number >= 0"], base=False),
    "rerun-checkpoint-interval-negative": Case(RERUN, ["{tmp}/store/taken", "--checkpoint-every-kimg", "-0.5"],
                                               ["checkpoint_every_kimg=-0.5", "a finite number >= 0"], base=False,
                                               existing=["store/taken"]),
    "train-kl-beta": Case(TRAIN, ["--out", "{tmp}/store/run", "--family", "vae", "--kl-beta", "-1"],
                          ["kl_beta=-1.0", "a finite number >= 0"], base=False),
    "train-missing-out": Case(TRAIN, ["--max-kimg", "1"], ["the following arguments are required: --out"], base=False),
    "train-resume-without-checkpoint": Case(TRAIN, ["--out", "{tmp}/store/run", "--resume", "--dataset", "mnist"],
                                            ["--resume", "{tmp}/store/run/checkpoint/checkpoint.pt"], base=False),
    "fid-wrong-shape": Case(FID, ["{tmp}/shape.npz", "mnist:test", "--backbone", "domain"],
                            ["shape.npz", "shape (10, 32, 32)", "N×28×28"], base=False),
    "fid-wrong-dtype": Case(FID, ["{tmp}/dtype.npz", "mnist:test", "--backbone", "domain"],
                            ["dtype.npz", "dtype float32", "uint8"], base=False),
    # path flags: a folder where a file is expected and the reverse, a file in the middle of the path,
    # an empty file, and files that cannot be read: a broken symbolic link, a FIFO (it would block the
    # reader forever), chmod 000 (not for root, who reads it all the same)
    "space-file-folder": Case(SEARCH, ["--space-file", "{tmp}/partial"],
                              ["space_file='{tmp}/partial'", "a folder, not a file", "allowed a YAML file"]),
    "space-file-empty": Case(SEARCH, ["--space-file", "{tmp}/empty.yaml"],
                             ["space_file='{tmp}/empty.yaml'", "an empty file", "allowed a YAML file"]),
    "space-file-below-a-file": Case(SEARCH, ["--space-file", "{tmp}/typo.yaml/space.yaml"],
                                    ["space_file='{tmp}/typo.yaml/space.yaml'", "{tmp}/typo.yaml is not a folder"]),
    "space-file-broken-link": Case(SEARCH, ["--space-file", "{tmp}/dangling.yaml"],
                                   ["space_file='{tmp}/dangling.yaml'", "is a broken symbolic link"]),
    "space-file-fifo": Case(SEARCH, ["--space-file", "{tmp}/fifo.yaml"],
                            ["space_file='{tmp}/fifo.yaml'", "not a regular file (a FIFO, socket or device)"]),
    "space-file-unreadable": Case(SEARCH, ["--space-file", "{tmp}/locked.yaml"],
                                  ["space_file='{tmp}/locked.yaml'", "cannot be read (Permission denied)"],
                                  needs_non_root=True),
    "mirror-is-a-file": Case(SEARCH, ["--dataset", "fashion-mnist", "--data-mirror", "{tmp}/typo.yaml"],
                             ["data_mirror '{tmp}/typo.yaml' is not a folder", "To get fashion-mnist"]),
    "mirror-below-a-file": Case(SEARCH, ["--dataset", "fashion-mnist", "--data-mirror", "{tmp}/typo.yaml/mirror"],
                                ["data_mirror '{tmp}/typo.yaml/mirror' is not a folder"]),
    "storage-is-a-file": Case(SEARCH, ["--storage-path", "{tmp}/typo.yaml"],
                              ["storage_path='{tmp}/typo.yaml'", "typo.yaml is not a folder",
                               "allowed a writable local folder"]),
    "cache-dir-is-a-file": Case(SEARCH, ["--cache-dir", "{tmp}/typo.yaml"],
                                ["cache_dir='{tmp}/typo.yaml'", "{tmp}/typo.yaml is not a folder", FOLDER_ALLOWED]),
    "cache-dir-broken-link": Case(SEARCH, ["--cache-dir", "{tmp}/dangling-dir/cache"],
                                  ["cache_dir='{tmp}/dangling-dir/cache'", "{tmp}/dangling-dir is a broken symbolic link"]),
    "cache-env-is-a-file": Case(SEARCH, [], ["$GENTUNE_CACHE='{tmp}/typo.yaml'", "is not a folder"],
                                env={"GENTUNE_CACHE": "{tmp}/typo.yaml"}),
    "train-out-is-a-file": Case(TRAIN, ["--out", "{tmp}/typo.yaml", *TRAIN_BASE],
                                ["out='{tmp}/typo.yaml'", "{tmp}/typo.yaml is not a folder", FOLDER_ALLOWED], base=False),
    "train-out-below-a-file": Case(TRAIN, ["--out", "{tmp}/typo.yaml/run", *TRAIN_BASE],
                                   ["out='{tmp}/typo.yaml/run'", "{tmp}/typo.yaml is not a folder"], base=False),
    "train-out-broken-link": Case(TRAIN, ["--out", "{tmp}/dangling-dir", *TRAIN_BASE],
                                  ["out='{tmp}/dangling-dir'", "is a broken symbolic link"], base=False),
    "train-cache-dir-is-a-file": Case(TRAIN, ["--out", "{tmp}/store/run", "--cache-dir", "{tmp}/typo.yaml", *TRAIN_BASE],
                                      ["cache_dir='{tmp}/typo.yaml'", "is not a folder"], base=False),
    "report-out-is-a-file": Case(REPORT, ["{tmp}/store/taken", "--out", "{tmp}/typo.yaml"],
                                 ["out='{tmp}/typo.yaml'", "{tmp}/typo.yaml is not a folder", FOLDER_ALLOWED],
                                 base=False, existing=["store/taken"]),
    "report-out-below-a-file": Case(REPORT, ["{tmp}/store/taken", "--out", "{tmp}/typo.yaml/report"],
                                    ["out='{tmp}/typo.yaml/report'", "{tmp}/typo.yaml is not a folder"],
                                    base=False, existing=["store/taken"]),
    "fid-input-empty": Case(FID, ["{tmp}/empty.npz", "mnist:test", "--backbone", "domain"],
                            ["A='{tmp}/empty.npz'", "an empty file", "allowed a dataset split"], base=False),
    "fid-input-below-a-file": Case(FID, ["mnist:test", "{tmp}/shape.npz/images.npz", "--backbone", "domain"],
                                   ["B='{tmp}/shape.npz/images.npz'", "{tmp}/shape.npz is not a folder"], base=False),
    "fid-input-broken-link": Case(FID, ["{tmp}/dangling.npz", "mnist:test", "--backbone", "domain"],
                                  ["A='{tmp}/dangling.npz'", "is a broken symbolic link"], base=False),
    "fid-input-fifo": Case(FID, ["mnist:test", "{tmp}/fifo.yaml", "--backbone", "domain"],
                           ["B='{tmp}/fifo.yaml'", "not a regular file"], base=False),
    "fid-cache-dir-is-a-file": Case(FID, ["mnist:test", "mnist:train", "--backbone", "domain", "--cache-dir", "{tmp}/typo.yaml"],
                                    ["--cache-dir='{tmp}/typo.yaml'", "is not a folder", FOLDER_ALLOWED], base=False),
    # a domain classifier file whose weights no longer match the SHA-256 it records (one value changed)
    "domain-classifier-checksum": Case(SEARCH, ["--domain-classifier", "{tmp}/damaged-classifier.pt"],
                                       ["domain classifier {tmp}/damaged-classifier.pt fails its checksum",
                                        "expected {classifier_sha}"]),
    "fid-domain-classifier-checksum": Case(FID, ["mnist:test", "mnist:train", "--backbone", "domain",
                                                 "--domain-classifier", "{tmp}/damaged-classifier.pt"],
                                           ["domain classifier {tmp}/damaged-classifier.pt fails its checksum",
                                            "expected {classifier_sha}"], base=False),
    "domain-classifier-typo": Case(SEARCH, ["--domain-classifier", "trian"],
                                   ["domain_classifier='trian'", "allowed shipped, train or the path of a .pt classifier file"]),
}


def damaged_classifier(path: Path) -> str:
    """A classifier file whose weights differ (one value) from those its recorded SHA-256 was taken of;
    returns that recorded (expected) checksum."""
    import torch

    from tuner.metrics import domain

    torch.manual_seed(0)
    state = domain.DomainCNN().state_dict()
    expected = domain.weights_sha256(state)
    state["fc2.bias"][0] += 1.0
    path.write_bytes(domain.classifier_bytes(state, {"dataset": "mnist", "weights_sha256": expected}))
    return expected


CLASSIFIER_SHA: dict[str, str] = {}  # the damaged classifier's expected checksum, once prepare() wrote it


def prepare(tmp: Path) -> None:
    """The files the cases read."""
    CLASSIFIER_SHA["expected"] = damaged_classifier(tmp / "damaged-classifier.pt")
    (tmp / "typo.yaml").write_text("lr: {low: 1.0e-5, hihg: 1.0e-3}\n")
    (tmp / "unknown.yaml").write_text("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n")
    (tmp / "inverted.yaml").write_text("lr: {low: 1.0e-3, high: 1.0e-5, log: true}\n")
    (tmp / "broken.yaml").write_text("lr: [1.0e-4,\n  batch_size: 32\n")
    (tmp / "empty.yaml").write_text("")
    (tmp / "empty.npz").write_bytes(b"")
    (tmp / "locked.yaml").write_text("lr: {low: 1.0e-5, high: 1.0e-3}\n")
    (tmp / "locked.yaml").chmod(0)
    os.mkfifo(tmp / "fifo.yaml")
    for name in ("dangling.yaml", "dangling.npz", "dangling-dir"):
        (tmp / name).symlink_to(tmp / ("nowhere-" + name))
    np.savez(tmp / "shape.npz", images=np.zeros((10, 32, 32), np.uint8))
    np.savez(tmp / "dtype.npz", images=np.zeros((10, 28, 28), np.float32))
    partial = tmp / "partial"
    partial.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (partial / name).write_bytes(gzip.compress(b"\0" * 16))
    # an MNIST mirror whose files are valid gzip'd IDX, but not the published ones
    raw = write_idx_dataset(tmp / "mnist-raw", "MNIST", n_train=64, n_test=32)
    mirror = tmp / "mnist-mirror"
    mirror.mkdir()
    for path in raw.iterdir():
        (mirror / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    if all((FASHION_DIR / name).is_file() for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        fashion = tmp / "fashion"
        shutil.copytree(FASHION_DIR, fashion)
        labels = fashion / "t10k-labels-idx1-ubyte.gz"
        content = bytearray(gzip.decompress(labels.read_bytes()))
        content[100] = (content[100] + 1) % 10  # one flipped label: valid IDX, wrong data
        labels.write_bytes(gzip.compress(bytes(content)))
    (tmp / "store" / "notes").mkdir(parents=True)
    (tmp / "store" / "notes" / "notes.txt").write_text("not an experiment")
    (tmp / "store" / "taken").mkdir(parents=True)
    (tmp / "store" / "taken" / "tuner.pkl").write_bytes(b"")  # what Ray Tune looks for to restore


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad-input")
    data = root / "data"
    write_idx_dataset(data, "MNIST")  # valid data where a case needs some (e.g. the FID command's mnist:test)
    shared = root / "shared"
    shared.mkdir()
    prepare(shared)
    fashion = (shared / "fashion").is_dir()

    def run(name: str, case: Case) -> dict:
        tmp = root / name
        tmp.mkdir()
        for item in shared.iterdir():  # each case sees the same inputs in its own folder
            (tmp / item.name).symlink_to(item) if item.name != "store" else shutil.copytree(item, tmp / "store")
        if not case.existing:
            shutil.rmtree(tmp / "store")
        before = snapshot(tmp / "store") if (tmp / "store").exists() else None
        args = [a.replace("{tmp}", str(tmp)) for a in case.args]
        if case.cli is SEARCH and case.base:
            args = BASE + (["--storage-path", str(tmp / "store")] if "--storage-path" not in args else []) + args
        env = dict(os.environ, RAY_TMPDIR=str(tmp / "ray-tmp"), GENTUNE_DATA_ROOT=str(data),
                   GENTUNE_CACHE=str(root / "cache"))
        env.pop("GENTUNE_DATA_MIRROR", None)
        env.update({k: v.replace("{tmp}", str(tmp)) for k, v in case.env.items()})
        proc = subprocess.run([sys.executable, *case.cli, *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        after = snapshot(tmp / "store") if (tmp / "store").exists() else None
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "tmp": tmp,
                "store_before": before, "store_after": after, "ray_started": (tmp / "ray-tmp").exists()}

    todo = {n: c for n, c in CASES.items() if (fashion or not c.needs_fashion) and not (c.needs_non_root and IS_ROOT)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {n: pool.submit(run, n, c) for n, c in todo.items()}
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line_and_starts_nothing(name, outcomes):
    case = CASES[name]
    if case.needs_non_root and IS_ROOT:
        pytest.skip("runs as root, who reads a chmod 000 file all the same: no unreadable file to give")
    if name not in outcomes:
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR}")
    out = outcomes[name]
    lines = out["stderr"].strip().splitlines()
    assert out["rc"] == 2, out["stderr"]
    assert len(lines) == 1 and lines[0].startswith("error: "), out["stderr"]
    for text in case.expect:
        text = text.replace("{classifier_sha}", CLASSIFIER_SHA.get("expected", "?"))
        assert text.replace("{tmp}", str(out["tmp"])) in lines[0], lines[0]
    assert "Traceback" not in out["stdout"] + out["stderr"]
    assert not out["ray_started"] and "Ray instance" not in out["stdout"] + out["stderr"]
    assert out["store_after"] == out["store_before"]  # None (never created) or unchanged


def test_every_case_is_distinct():
    """Guard against a copy-paste case that tests nothing new."""
    keys = [tuple(c.cli) + tuple(c.args) + tuple(sorted(c.env.items())) for c in CASES.values()]
    assert len(keys) == len(set(keys)) and len(CASES) >= 15
