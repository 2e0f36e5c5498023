"""Packs inside a study (`--pack K`): every member stays a trial of its own, packs form and refill, and
the members' files are their own. Bad --pack values: tests/test_bad_input.py. The fused training: test_pack.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import TINY_TRIAL, load_study, run_study
from tuner.config import pack_key, trial_config
from tuner.results.exports import read_trials_csv

# a space of one shape (one loss, one choice of each size), so every trial joins a pack of it and the
# members differ in lr, lr_d_ratio and betas
ONE_SHAPE = "{g_width: [8], d_width: [8], batch_size: [16], z_dim: [8], n_critic: [1], d_norm: [none]}"


def pack_study(tmp_path):
    space = tmp_path / "one-shape.yaml"
    space.write_text(ONE_SHAPE)
    return [*TINY_TRIAL, "--losses", "hinge", "--space-file", str(space), "--no-warm-start"]


@pytest.mark.slow
def test_a_packed_study_keeps_every_member_a_trial_of_its_own(idx_mnist, tmp_path, capsys, ray_local):
    exp = run_study(tmp_path, "packed", "--pack", "2", "--num-samples", "6", "--max-kimg", "0.5", "--grace-kimg", "0.125",
                    "--reduction-factor", "2", base=pack_study(tmp_path))
    out = capsys.readouterr().out
    assert "[gentune] packs: 2 trials per pack (--pack); each trial reserves 0.5 CPU" in out
    trials = read_trials_csv(exp / "trials.csv")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    history = pd.read_parquet(exp / "history.parquet")
    study = load_study(exp, "packed")
    assert len(study.trials) == 6
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert any(t.state.name == "PRUNED" for t in study.trials)  # ASHA stopped some members, per member
    assert any(t.state.name == "COMPLETE" for t in study.trials)
    base = json.loads((exp / "search_config.json").read_text())["base"]
    shapes = {pack_key(trial_config(base, t.params)) for t in study.trials}
    assert len(shapes) == 1  # the space has one shape: every trial was a member of a pack of it
    assert len({(t.params["lr"], t.params["beta1"]) for t in study.trials}) == 6  # members differ
    for trial_id, rows in history.groupby("trial_id"):
        folder = next(exp.glob(f"*{trial_id}*"))
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["kimg"] for r in lines] == sorted(rows["kimg"].tolist())  # its own records, in its own folder
        assert (folder / "samples").is_dir() and any((folder / "samples").iterdir())
    assert history["pack_members"].max() == 2  # members trained two at a time
    assert "stopped by ASHA" in out



def test_packs_per_gpu_come_from_the_cpus_per_gpu():
    from tuner.study.driver import MAX_PACKS_PER_GPU, packs_per_gpu

    assert packs_per_gpu(16, 1, 1.0) == MAX_PACKS_PER_GPU == 4  # an H200 box: 16 CPUs for one GPU
    assert packs_per_gpu(16, 8, 1.0) == 2  # 2 CPUs per GPU
    assert packs_per_gpu(3, 1, 1.0) == 3
    assert packs_per_gpu(16, 1, 8.0) == 2  # each pack takes 8 CPUs
    assert packs_per_gpu(4, 8, 1.0) == 1  # fewer CPUs than GPUs: still one pack each
    assert packs_per_gpu(2, 0, 1.0) == 1  # no GPU
