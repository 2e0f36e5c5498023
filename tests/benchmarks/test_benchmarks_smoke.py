"""Every benchmark runs alone in smoke mode, prints its table, and never writes under benchmarks/results/;
a real run writes its section to a new dated file there and never overwrites one.

Each script runs as a subprocess (`python benchmarks/NAME.py --smoke`) with $GENTUNE_BENCH_REPORT
pointing at a temporary file: the section must land there, not in benchmarks/results/ nor BENCHMARKS.md.
Nothing here asserts on a timing: the numbers of a smoke run mean nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import import_benchmark

ROOT = Path(__file__).resolve().parents[2]
SMOKE_MARK = "(SMOKE: tiny sizes"
SYSTEM_TMP = Path(tempfile.gettempdir())  # where a benchmark's own temporary folders go unless TMPDIR is set

# script -> (needs Fashion-MNIST, a line of the table it must print)
SCRIPTS = {
    "trainer_throughput": (True, "| device | loss | loop | img/s (median) |"),
    "fid_speed": (True, "| dims | method | time (s, median) |"),
    "search_efficiency": (False, "| run | seed | total kimg | best FID at the grid's compute |"),
    "scaling": (False, "| trainable | setup | slots |"),
    "gpu_packing": (True, "| device | config | K | precision | method | img/s (median) |"),
    "checkpoint_cost": (True, "| trial | kimg | evaluations | checkpoints between |"),
    "pbt_vs_asha": (False, "| best FID at equal wall-clock: PBT vs ASHA |"),
    "vs_plain_optuna": (True, "| arm | seed | total kimg | equal compute (kimg) | best FID at equal compute |"),
    "inception_batch": (False, "| batch | images/s (median) | range |"),
    "first_trial": (True, "| round | first trial started (s) |"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_smoke_run(name: str, request: pytest.FixtureRequest, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    needs_data, header = SCRIPTS[name]
    if needs_data:
        # skips where Fashion-MNIST is not installed; FIDs use the shipped classifier, as a user's run does
        request.getfixturevalue("fashion_mirror")
    report = tmp_path / "report.md"
    monkeypatch.setenv("GENTUNE_BENCH_REPORT", str(report))
    md = ROOT / "BENCHMARKS.md"
    results_before = {p.name for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    before_tmp = set(SYSTEM_TMP.glob("gentune-bench*"))
    if name in ("search_efficiency", "vs_plain_optuna"):  # their experiments and smoke plot go to $TMPDIR (the plot
        monkeypatch.setenv("TMPDIR", str(tmp_path))  # kept for a user to open): here, in tmp_path, not one more per suite
        ray_tmp = tempfile.mkdtemp(prefix="gtbs", dir=SYSTEM_TMP)  # Ray's sockets need a short path (107 bytes)
        request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
        monkeypatch.setenv("RAY_TMPDIR", ray_tmp)

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke"], cwd=tmp_path,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert header in proc.stdout
    assert "- command: `" in proc.stdout and "--smoke" in proc.stdout
    assert "- machine: " in proc.stdout and " cores; torch " in proc.stdout
    section = report.read_text()
    assert f"### {name}" in section and SMOKE_MARK in section and header in section
    assert not md.exists() or SMOKE_MARK not in md.read_text()
    assert {p.name for p in (ROOT / "benchmarks" / "results").glob("*.md")} == results_before
    assert set(SYSTEM_TMP.glob("gentune-bench*")) <= before_tmp  # nothing left in the system temp
    if name == "trainer_throughput" and not torch.cuda.is_available():
        # the fractional-trials code path runs on the CPU in smoke mode (k = 1, 2 processes at once);
        # a real run measures it only on a GPU and otherwise says so
        rows = [line for line in section.splitlines() if line.startswith(("| cpu | 1 | — |", "| cpu | 2 | — |"))]
        assert len(rows) == 2 and rows[0].endswith("| 1.00x |"), section
        assert "| GPU | 1, 2, 4 | — | not measured: no GPU on this machine |" in section


def test_a_real_run_goes_to_the_results_folder_and_a_smoke_run_nowhere(monkeypatch):
    common = import_benchmark("common")
    parse = common.parser("x").parse_args
    monkeypatch.delenv(common.REPORT_ENV, raising=False)
    assert common.report_path(parse([])) == common.RESULTS_DIR == ROOT / "benchmarks" / "results"
    assert common.report_path(parse(["--smoke"])) is None
    assert common.report_path(parse(["--no-report"])) is None
    monkeypatch.setenv(common.REPORT_ENV, "/some/report.md")
    assert common.report_path(parse(["--smoke"])) == Path("/some/report.md")


def test_a_real_run_writes_a_new_dated_file_and_never_overwrites_one(tmp_path, monkeypatch, capsys):
    """Three runs in the same minute into a folder that already holds that minute's file: that file keeps
    its content, the runs get -2, -3 and -4, each a whole section under a `# ` title, no temporary
    file is left, and each prints its path and the reminder to update BENCHMARKS.md."""
    import datetime as real_dt

    common = import_benchmark("common")

    class FixedClock:  # every call lands in the same minute
        timezone = real_dt.timezone

        class datetime:
            @staticmethod
            def now(tz=None):
                return real_dt.datetime(2026, 12, 5, 0, 30, 59, tzinfo=tz)

    monkeypatch.setattr(common, "dt", FixedClock)
    out = tmp_path / "results"
    out.mkdir()
    taken = out / "fake_bench-2026-12-05-0030.md"
    taken.write_text("an earlier run\n")
    args = common.parser("x").parse_args(["--report", str(out)])
    written = []
    for k in range(3):
        written.append(common.publish(f"### fake_bench: what it measures\n\n- date: now\n\n| a |\n| {k} |\n", args))
        printed = capsys.readouterr().out
        assert f"(written to {written[-1]})" in printed
        assert "Reminder: update the \"Latest result\" of `## fake_bench` in BENCHMARKS.md" in printed
    assert [p.name for p in written] == [f"fake_bench-2026-12-05-0030-{n}.md" for n in (2, 3, 4)]
    assert taken.read_text() == "an earlier run\n"
    assert [p.read_text() for p in written] == [
        f"# fake_bench: what it measures\n\n- date: now\n\n| a |\n| {k} |\n" for k in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted([taken.name] + [p.name for p in written])


def test_final_eval_result_names_the_seeds_that_kept_an_ema(tmp_path):
    """A third seed run with --g-ema beside two without: fids keeps every seed, fids_ema is null where
    a run kept no EMA (never a number it did not measure), and g_ema names the decay."""
    import pandas as pd

    result = import_benchmark("final_eval").result
    pd.DataFrame({"trial_id": ["w", "x"], "fid_best": [40.0, 50.0], "status": ["completed"] * 2}).to_parquet(
        tmp_path / "trials.parquet")
    base = dict(trial_id="w", dataset="fashion-mnist", fid_backbone="inception", fid_samples=10000, max_kimg=1000.0,
                precision="bf16")
    pd.DataFrame([{**base, "seed": 1, "fid_final": 21.0, "fid_ema_final": None, "g_ema": 0.0, "finished_at": 1.0,
                   "config": '{"g_ema": 0.0}'},
                  {**base, "seed": 3, "fid_final": 19.0, "fid_ema_final": 17.5, "g_ema": 0.999, "finished_at": 3.0,
                   "config": '{"g_ema": 0.999}'},
                  {**base, "seed": 2, "fid_final": 20.0, "fid_ema_final": None, "g_ema": 0.0, "finished_at": 2.0,
                   "config": '{"g_ema": 0.0}'}]).to_parquet(tmp_path / "rerun.parquet")
    out = result(tmp_path)
    assert (out["seeds"], out["fids"]) == ([1, 2, 3], [21.0, 20.0, 19.0])
    assert out["fids_ema"] == [None, None, 17.5] and out["g_ema"] == [0.999]
    assert out["precision"] == "bf16" and out["trial_id"] == "w"
