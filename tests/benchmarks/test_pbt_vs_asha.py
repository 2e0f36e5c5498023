"""benchmarks/pbt_vs_asha.py's comparison: each arm's best FID at equal compute and at equal wall-clock."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pbt_vs_asha  # noqa: E402


def curve(kimg: list[float], best: list[float], wall_s: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"cum_kimg": kimg, "best_fid": best, "wall_s": wall_s})


def test_equal_compute_and_equal_wall_clock_can_disagree():
    # ASHA: 24 kimg in 30 s; PBT: 32 kimg in 80 s, better per kimg but slower per second
    asha = curve([8, 16, 24], [50.0, 40.0, 30.0], [10, 20, 30])
    pbt = curve([8, 16, 24, 32], [45.0, 35.0, 25.0, 20.0], [20, 40, 60, 80])
    rows, fig = pbt_vs_asha.compare({"asha": [asha], "pbt": [pbt]}, [0], {("asha", 0): 30.0, ("pbt", 0): 80.0})
    assert fig["asha"] == [{"seed": 0, "at_equal": 30.0, "at_wall": 30.0, "end": 30.0}]
    assert fig["pbt"] == [{"seed": 0, "at_equal": 25.0, "at_wall": 45.0, "end": 20.0}]  # at 24 kimg; by 30 s
    # arm, seed, total kimg, equal compute, best there, equal wall-clock, best by then, best at its end, wall-clock
    assert rows[1][1:] == [0, 32.0, 24.0, 25.0, 30, 45.0, 20.0, 80]


def test_an_arm_with_no_evaluation_by_the_other_arms_end_ranks_last():
    asha = curve([8], [50.0], [10])
    pbt = curve([8], [45.0], [40])  # its first evaluation comes after ASHA's whole run
    rows, fig = pbt_vs_asha.compare({"asha": [asha], "pbt": [pbt]}, [0], {("asha", 0): 10.0, ("pbt", 0): 40.0})
    assert fig["pbt"][0]["at_wall"] == math.inf and rows[1][6] == "no evaluation yet"


def test_without_wall_clocks_the_comparison_says_so():
    asha, pbt = curve([8], [50.0], [10]), curve([8], [45.0], [40])
    rows, fig = pbt_vs_asha.compare({"asha": [asha], "pbt": [pbt]}, [0], {})
    assert math.isnan(fig["pbt"][0]["at_wall"]) and rows[0][5:7] == ["not recorded", "not recorded"]
