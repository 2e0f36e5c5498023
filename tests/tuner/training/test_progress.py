"""Progress over kimg: plain lines when the output is not a terminal, a tqdm bar when it is."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL
from tuner.training.progress import KimgProgress, use_bar

ROOT = Path(__file__).resolve().parents[3]


def one_per_tenth(lines: list[str]) -> bool:
    """Ten lines, the k-th at the first step reaching k tenths of the budget (its actual percentage)."""
    percents = [int(re.search(r"(\d+)%", line).group(1)) for line in lines]
    return len(percents) == 10 and percents[-1] == 100 and all(10 * k <= p < 10 * k + 10 for k, p in enumerate(percents[:-1], 1))


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_an_interactive_terminal():
    assert use_bar(FakeTTY(), {"TERM": "xterm"})
    assert not use_bar(FakeTTY(), {"TERM": "dumb"})
    assert not use_bar(io.StringIO(), {"TERM": "xterm"})  # a pipe, a log file, CI
    closed = io.StringIO()
    closed.close()
    assert not use_bar(closed, {"TERM": "xterm"})
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as pipe:
        assert not use_bar(pipe, {"TERM": "xterm"})
    os.close(read_end)


def test_plain_lines_every_tenth_and_a_redrawn_bar_on_a_tty(monkeypatch):
    plain = io.StringIO()
    progress = KimgProgress(1.0, label="run", stream=plain)
    for seen in range(0, 1025, 64):  # steps of 64 images, to the end
        progress(min(seen, 1000))
    progress.write("eval line")
    progress.close()
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
    assert one_per_tenth(lines[:-1])
    assert all(line.startswith("run  progress ") and "kimg" in line and "img/s" in line for line in lines[:-1])
    assert lines[-1] == "eval line"

    monkeypatch.setenv("TERM", "xterm")
    tty = FakeTTY()
    bar = KimgProgress(1.0, stream=tty)
    assert bar.bar
    for seen in range(0, 1001, 250):
        bar(seen)
    bar.write("eval line")
    bar.close()
    assert "\r" in tty.getvalue() and "kimg" in tty.getvalue() and "eval line" in tty.getvalue()
    assert "progress " not in tty.getvalue()  # no plain lines on a terminal


@pytest.mark.slow
def test_train_cli_prints_plain_progress_lines_when_piped(idx_mnist, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.train", *TINY_MODEL, "--family", "gan", "--max-kimg", "0.5",
         "--eval-every-kimg", "0.25", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"},  # a terminal type, but stdout is a pipe
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    progress = [line for line in lines if line.startswith("progress ")]
    assert one_per_tenth(progress)
    evals = [i for i, line in enumerate(lines) if line.startswith("kimg ")]
    assert len(evals) == 2
    # the evaluation at 0.25 kimg (256 images, half the budget) comes after the 5th line, the last one after the 10th
    at = [lines.index(line) for line in progress]  # the lines of the 1st .. 10th tenth
    assert at[4] < evals[0] < at[5] and at[9] < evals[1]
    assert lines[-1].startswith("done: best fid")


def test_an_evaluation_line_shows_the_ema_fid_when_there_is_one():
    from tuner.train import format_record

    record = {"kimg": 4.0, "fid_backbone": "domain", "fid": 31.25, "img_per_s": 900.0, "loss_d": 0.5}
    assert "fid_ema" not in format_record(record)
    line = format_record({**record, "fid_ema": 28.5})
    assert "fid[domain]    31.250" in line and "fid_ema 28.500" in line
