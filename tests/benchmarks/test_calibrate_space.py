"""benchmarks/calibrate_space.py's analysis: where good configs live, per loss."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import calibrate_space  # noqa: E402


def trials(loss: str, lrs: list[float], fids: list[float]) -> pd.DataFrame:
    n = len(lrs)
    # the best trial alone reached 64 kimg (its FID there equal to its first), and only the last used batch 64
    return pd.DataFrame({"loss": loss, "lr": lrs, "fid_rung1": fids, "fid_64": [f if f == min(fids) else math.nan for f in fids],
                         "fid_24": math.nan, "classes_64": 10, "batch_size": [16] * (n - 1) + [64], "d_norm": "none",
                         **{p: math.nan for p in calibrate_space.NUMERIC if p != "lr"}})


def test_per_loss_ranges_takes_each_losss_best_quarter_by_first_rung_fid():
    df = pd.concat([
        # hinge: 8 finite trials, its best quarter is the two lowest FIDs (lr 3e-4 and 5e-4); one diverged
        trials("hinge", [1e-5, 2e-5, 3e-4, 5e-4, 4e-5, 6e-5, 7e-5, 8e-5, 9e-5], [900, 800, 50, 60, 700, 600, 500, 400, math.inf]),
        # wgan: 2 trials, the best quarter rounds up to one
        trials("wgan", [1e-4, 2e-4], [300, 200]),
    ])
    table = calibrate_space.per_loss_ranges(df).splitlines()
    assert table[0] == "| median (span) of the best trials | hinge | wgan |"
    rows = {line.split(" | ")[0].strip("| "): [c.strip(" |") for c in line.split(" | ")[1:]] for line in table[2:]}
    assert rows["top trials"] == ["2 of 8", "1 of 2"]
    assert rows["their FID at 8 kimg"] == ["≤ 60", "≤ 200"]
    assert rows["best FID at 64 kimg"] == ["50", "200"]
    assert rows["lr"] == ["4.00e-04 (3.00e-04 – 5.00e-04)", "2.00e-04 (2.00e-04 – 2.00e-04)"]
    assert rows["beta1"] == ["—", "—"]
    assert rows["batch_size"] == ["16: 2", "64: 1"]


def test_best_trials_lists_the_lowest_fids_at_the_whole_budget_in_order():
    df = pd.concat([trials("hinge", [1e-4, 2e-4, 3e-4], [300, 100, 200]), trials("wgan", [4e-4, 5e-4], [90, 400])])
    df.loc[df["loss"] == "hinge", "fid_64"] = [math.nan, 60.0, 45.0]
    lines = calibrate_space.best_trials(df, n=2).splitlines()
    assert lines[0].startswith("| loss | FID at 8 kimg | at 24 | at 64 | classes at 64 | lr |")
    assert "beta1" not in lines[0]  # a parameter no listed trial has is left out
    assert [line.split(" | ")[3] for line in lines[2:]] == ["45", "60"]  # hinge 45 and 60; wgan's 90 is third
    assert [line.split(" | ")[5] for line in lines[2:]] == ["3.00e-04", "2.00e-04"]
