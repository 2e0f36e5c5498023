"""trials.csv keeps Ray's hex trial ids as text (CI once read "3e256774" as inf)."""

from __future__ import annotations

import pandas as pd

from tuner.results.exports import existing_trial_ids, read_trials_csv

IDS = ["3e256774", "00012345", "64076358"]  # each reads as a number: inf, 12345, 64076358


def test_hex_trial_ids_that_look_like_numbers_stay_text(tmp_path):
    frame = pd.DataFrame({"trial_id": IDS, "node_id": ["1e5", "0042", "7"], "fid_final": [1.0, 2.0, 3.0]})
    frame.to_csv(tmp_path / "trials.csv", index=False)
    assert pd.read_csv(tmp_path / "trials.csv")["trial_id"].tolist() != IDS  # pandas alone turns them into numbers
    back = read_trials_csv(tmp_path / "trials.csv")
    assert back["trial_id"].tolist() == IDS and back["node_id"].tolist() == ["1e5", "0042", "7"]
    assert back["fid_final"].tolist() == [1.0, 2.0, 3.0]


def test_the_shrink_guard_reads_the_same_ids_from_csv_and_parquet(tmp_path):
    # the guard refuses an export lacking an id the old files hold: "3e256774" read as "inf" would be lacking
    frame = pd.DataFrame({"trial_id": IDS})
    frame.to_csv(tmp_path / "trials.csv", index=False)
    frame.to_parquet(tmp_path / "trials.parquet", index=False)
    ids, _ = existing_trial_ids(tmp_path)
    assert ids == set(IDS)
