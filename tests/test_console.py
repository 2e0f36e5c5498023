"""What `python tuner/search.py` prints: by default Ray's table and one gentune line per trial event;
with --verbose, Ray's full output. Real studies in subprocesses (their own local Ray, log_to_driver on)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--g-width", "8", "--d-width", "8", "--batch-size", "16", "--train-limit", "256",
        "--fid-samples", "64", "--cpus-per-trial", "1", "--max-concurrent", "2",
        "--ranges", "g_width=8,16", "d_width=8,16", "batch_size=16,32"]
FLAGS = ["--family", "gan", "--losses", "hinge", "--num-samples", "3", "--max-kimg", "0.5", "--eval-every-kimg", "0.25",
         "--grace-kimg", "0.25"]


def study(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    proc = subprocess.run([sys.executable, "tuner/search.py", "--storage-path", str(tmp_path), "--name", name, *TINY,
                           *FLAGS, *extra], cwd=ROOT, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, pd.read_parquet(tmp_path / name / "trials.parquet")


def test_default_console_is_a_table_and_one_line_per_trial_event(idx_mnist, tmp_path):
    proc, trials = study(tmp_path, "quiet")
    out, everything = proc.stdout, proc.stdout + proc.stderr
    started = re.findall(r"^\[gentune\] trial (\w+) started: (.*)$", out, re.M)
    ended = re.findall(r"^\[gentune\] trial (\w+) (finished|stopped by ASHA|diverged) at ([\d.]+) kimg", out, re.M)
    assert sorted(t for t, _ in started) == sorted(trials["trial_id"])
    assert sorted(t for t, _, _ in ended) == sorted(trials["trial_id"])
    status = {"completed": "finished", "pruned": "stopped by ASHA", "diverged": "diverged"}
    for trial_id, how, kimg in ended:
        row = trials.set_index("trial_id").loc[trial_id]
        assert how == status[row["status"]] and float(kimg) == pytest.approx(row["kimg"], abs=0.005)
    for _, params in started:  # the searched parameters, not a box
        assert "loss=hinge" in params and "lr=" in params and "z_dim=" in params
    # the best FID: the summary's, and the "new best" line of the trial that holds it
    best = trials.loc[trials["fid_best"].idxmin()]
    assert f"best trial: {best['trial_id']}" in out
    assert re.search(rf"^\[gentune\] trial {best['trial_id']} .*best {best['fid_best']:.3f} \(new best\)$", out, re.M)
    # Ray's table, labelled, without its last-FID "Current best trial" and without the per-trial boxes
    assert "== Status ==" in out and "fid (last)" in out
    assert "Current best trial" not in out
    assert "Checkpoint successfully created" not in everything
    assert "started with configuration" not in out and "Trial run_trial_" not in out
    assert "== gentune study summary ==" in out


def test_verbose_brings_back_rays_full_output(idx_mnist, tmp_path):
    proc, trials = study(tmp_path, "loud", "--verbose")
    out, everything = proc.stdout, proc.stdout + proc.stderr
    assert "Checkpoint successfully created" in everything
    assert out.count("started with configuration") == len(trials)
    assert len(re.findall(r"^\[gentune\] trial \w+ started", out, re.M)) == len(trials)
