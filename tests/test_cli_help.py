"""`--help` of every command line prints every flag and exits 0.

Help strings come from the config dataclasses' docstrings; argparse %-formats them, so a literal
"%" in a docstring once made `python tuner/search.py --help` crash with a TypeError.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.config.cli import flag
from tuner.config import TrainConfig
from tuner.config.search import SearchConfig

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "search": (["tuner/search.py"], (SearchConfig, TrainConfig)),
    "train": (["-m", "tuner.train"], (TrainConfig,)),
    "fid": (["-m", "tuner.fid"], ()),
    "report": (["analysis/report.py"], ()),
    "dashboard": (["-m", "tuner.study.dashboard"], ()),
    "rerun": (["analysis/rerun.py"], ()),
    "trainer_throughput": (["benchmarks/trainer_throughput.py"], ()),
    "fid_speed": (["benchmarks/fid_speed.py"], ()),
    "search_efficiency": (["benchmarks/search_efficiency.py"], ()),
    "scaling": (["benchmarks/scaling.py"], ()),
    "vs_plain_optuna": (["benchmarks/vs_plain_optuna.py"], ()),
    "pbt_vs_asha": (["benchmarks/pbt_vs_asha.py"], ()),
    "inception_batch": (["benchmarks/inception_batch.py"], ()),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_every_flag(name):
    argv, classes = COMMANDS[name]
    out = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and out.stderr == ""
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert flag(f.name) in out.stdout, f"{name} --help does not list {flag(f.name)}"


def test_percent_in_a_docstring_is_printed_literally():
    out = subprocess.run([sys.executable, "tuner/search.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "25% of its memory" in out.stdout
