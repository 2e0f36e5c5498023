"""The final evaluation (python -m analysis.rerun, analysis/final.py): flags, --final, a Ray Tune
run that a SIGKILL interrupts and the same command continues, protocol-keyed rows, skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.final import FINAL_PROTOCOL, Protocol, merge_rows, resolve
from analysis.rerun import build_parser
from analysis.rerun import main as rerun_main
from conftest import TINY_TRIAL, Driver, import_benchmark, run_study, wait_for



def settings(*argv: str) -> dict:
    return resolve(build_parser().parse_args(["EXP", *argv]))


def test_final_expands_to_the_literature_protocol_and_explicit_flags_win():
    s = settings("--top", "1", "--final")
    assert s["protocol"] == Protocol(max_kimg=1000.0, fid_backbone="inception", fid_samples=10000)
    assert s["seeds"] == 3 == FINAL_PROTOCOL["seeds"] and s["top"] == 1
    s = settings("--final", "--seeds", "5", "--fid-samples", "200", "--max-kimg", "2")
    assert s["protocol"] == Protocol(max_kimg=2.0, fid_backbone="inception", fid_samples=200) and s["seeds"] == 5
    s = settings()  # without --final: the trials' own values, 3 seeds
    assert s["protocol"] == Protocol() and s["seeds"] == 3
    s = settings("--final", "--g-ema", "0.999")
    assert s["protocol"] == Protocol(max_kimg=1000.0, fid_backbone="inception", fid_samples=10000, g_ema=0.999)


def test_protocol_applies_to_a_config_and_asks_again_for_a_missing_ema():
    from analysis.final import cell_key, done_keys, is_done
    from tuner.config import TrainConfig

    cfg = TrainConfig(dataset="mnist", loss="wgan", max_kimg=64, eval_at_kimg=(8.0, 24.0), fid_samples=1000)
    out = Protocol(max_kimg=1000.0, fid_backbone="inception", fid_samples=10000, g_ema=0.999).apply(cfg, 5)
    assert (out.seed, out.max_kimg, out.fid_backbone, out.fid_samples, out.g_ema) == (5, 1000.0, "inception", 10000, 0.999)
    assert out.eval_at_kimg == () and out.eval_every_kimg == 250.0  # the study's rungs dropped; 4 evaluations
    assert out.loss == "wgan" and out.lr == cfg.lr
    vae = Protocol(g_ema=0.999).apply(TrainConfig(dataset="mnist", family="vae"), 1)
    assert vae.g_ema == 0.0  # GAN only
    cell = {"trial_id": "a", "seed": 5, "config": out}
    row = dict(zip(["trial_id", "seed", "fid_backbone", "fid_samples", "max_kimg"], cell_key(cell)))
    assert not is_done(cell, done_keys(pd.DataFrame([{**row, "g_ema": 0.0}])))  # done without EMA: run again
    assert is_done(cell, done_keys(pd.DataFrame([{**row, "g_ema": 0.999}])))
    assert is_done({**cell, "config": out.replace(g_ema=0.0)}, done_keys(pd.DataFrame([{**row, "g_ema": 0.999}])))


@pytest.mark.parametrize("argv, field", [(["--max-kimg", "0"], "max_kimg"), (["--seeds", "0"], "seeds"),
                                         (["--fid-samples", "1"], "fid_samples"), (["--top", "0"], "top"),
                                         (["--gpus-per-trial", "2"], "gpus_per_trial"),
                                         (["--g-ema", "1"], "g_ema"),
                                         (["--checkpoint-every-min", "-1"], "checkpoint_every_min"),
                                         (["--set", "nosuch=1"], "g_width"),  # the allowed fields are named
                                         (["--set", "g_width"], "FIELD=VALUE"),
                                         (["--set", "g_width=wide"], "g_width='wide': allowed an integer"),
                                         (["--set", "lr=fast"], "lr='fast': allowed a number or none"),
                                         (["--set", "regularize=maybe"], "true or false")])
def test_bad_flags_give_one_error_line_and_exit_2(argv, field, tmp_path, capsys):
    assert rerun_main([str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0]


def test_set_changes_fields_of_the_config_and_its_rows_never_mix_with_the_configs_own(tmp_path):
    from analysis.final import cell_key, done_keys, is_done, parse_changes, protocol_groups
    from analysis.literature import literature_section
    from tuner.config import ConfigError, TrainConfig

    s = settings("--final", "--set", "lr=1e-3", "--set", "g_width=64", "--set", "clip_value=none", "--set", "g_width=48")
    changes = s["protocol"].changes
    assert changes == (("g_width", 48), ("lr", 0.001), ("clip_value", None))  # field order; the last g_width wins
    assert parse_changes(["regularize=True"]) == (("regularize", True),) and parse_changes([]) == ()
    cfg = TrainConfig(dataset="fashion-mnist", loss="lsgan", g_width=32, lr=5e-4)
    out = s["protocol"].apply(cfg, 2)
    assert (out.g_width, out.lr, out.seed, out.max_kimg, out.loss) == (48, 0.001, 2, 1000.0, "lsgan")
    with pytest.raises(ConfigError, match="g_width"):  # a changed config is validated as any other
        Protocol(changes=(("g_width", 0),)).apply(cfg, 1)
    with pytest.raises(ConfigError, match="seed"):
        Protocol(changes=(("seed", 3),))
    row = dict(trial_id="a", seed=1, fid_backbone="inception", fid_samples=10000, max_kimg=1000.0, g_ema=0.0,
               fid_final=20.0, dataset="fashion-mnist", family="gan", loss="lsgan", precision="bf16")
    own = {"trial_id": "a", "seed": 1, "config": Protocol(max_kimg=1000.0, fid_backbone="inception",
                                                         fid_samples=10000).apply(cfg, 1).resolved()}
    changed = {**own, "config": out.replace(seed=1).resolved(), "changes": "g_width=48, lr=0.001, clip_value=None"}
    assert cell_key(own)[-1] == "" and cell_key(changed)[-1] == changed["changes"]
    assert is_done(own, done_keys(pd.DataFrame([row]))) and not is_done(changed, done_keys(pd.DataFrame([row])))
    path = tmp_path / "rerun.parquet"
    merge_rows(path, [row])
    merge_rows(path, [{**row, "changes": "g_width=64", "fid_final": 17.0}])  # beside the config's own row
    rows = pd.read_parquet(path)
    assert sorted(rows["fid_final"]) == [17.0, 20.0]
    groups = protocol_groups(rows)
    assert [(d.endswith("changes g_width=64"), list(g["fid_final"])) for d, g in groups] == [(False, [20.0]), (True, [17.0])]
    text = literature_section("e", pd.DataFrame([{"trial_id": "a", "label": "lsgan a"}]), rows)
    table = [line for line in text.splitlines() if line.startswith("| lsgan a")]
    assert len(table) == 2 and sum("lsgan a, re-trained with g_width=64 |" in line for line in table) == 1


def test_rows_merge_by_protocol_key_and_never_shrink(tmp_path):
    path = tmp_path / "rerun.parquet"
    row = dict(trial_id="a", seed=1, fid_backbone="domain", fid_samples=64, max_kimg=0.5, fid_final=10.0)
    merge_rows(path, [row, {**row, "seed": 2}])
    merge_rows(path, [{**row, "fid_samples": 128, "fid_final": 9.0}])  # another protocol: a new row
    merge_rows(path, [{**row, "fid_final": 8.0}])  # the same key: updated in place
    rows = pd.read_parquet(path)
    assert len(rows) == 3
    assert sorted(rows["fid_final"]) == [8.0, 9.0, 10.0]


def test_a_domain_cell_done_with_another_classifier_runs_again_and_both_rows_stay(tmp_path):
    from analysis.final import cell_key, done_keys, is_done, with_classifier_ids
    from tuner.config import TrainConfig
    from tuner.metrics.domain import SHIPPED

    shipped = SHIPPED["fashion-mnist"]["weights_sha256"][:12]
    domain = TrainConfig(dataset="fashion-mnist", fid_backbone="domain", fid_samples=64, max_kimg=0.5, eval_every_kimg=0.5)
    inception = domain.replace(fid_backbone="inception")
    cells = with_classifier_ids([{"trial_id": "a", "seed": 1, "config": domain},
                                 {"trial_id": "a", "seed": 1, "config": inception}])
    assert cells[0]["classifier"] == shipped and "classifier" not in cells[1]  # Inception: no classifier
    row = dict(trial_id="a", seed=1, fid_backbone="domain", fid_samples=64, max_kimg=0.5, g_ema=0.0, fid_final=10.0)
    other, old = {**row, "domain_classifier_sha": "0123456789ab"}, {**row, "fid_final": 11.0}  # old: unrecorded
    assert not is_done(cells[0], done_keys(pd.DataFrame([other, old])))
    assert is_done(cells[0], done_keys(pd.DataFrame([other, {**row, "domain_classifier_sha": shipped}])))
    inception_row = {**row, "fid_backbone": "inception", "domain_classifier_sha": None}
    assert is_done(cells[1], done_keys(pd.DataFrame([inception_row]))) and cell_key(cells[1])[5] is None
    path = tmp_path / "rerun.parquet"
    merge_rows(path, [other, old])
    merge_rows(path, [{**row, "domain_classifier_sha": shipped, "fid_final": 9.0}])  # a third classifier: a new row
    merge_rows(path, [{**other, "fid_final": 8.0}])  # the same classifier again: updated in place
    assert sorted(pd.read_parquet(path)["fid_final"]) == [8.0, 9.0, 11.0]


def test_a_vae_cell_scored_with_another_latent_sampler_is_another_protocol(tmp_path):
    from analysis.final import done_keys, is_done, protocol_groups
    from tuner.config import TrainConfig

    vae = TrainConfig(dataset="fashion-mnist", family="vae", fid_backbone="inception", fid_samples=64, max_kimg=0.5,
                      eval_every_kimg=0.5)
    gmm = Protocol(latent_sampler="gmm").apply(vae, 1)
    assert gmm.latent_sampler == "gmm" and Protocol(latent_sampler="gmm").apply(TrainConfig(), 1).latent_sampler == "prior"
    old = dict(trial_id="a", seed=1, fid_backbone="inception", fid_samples=64, max_kimg=0.5, g_ema=0.0, fid_final=70.0)
    assert is_done({"trial_id": "a", "seed": 1, "config": vae}, done_keys(pd.DataFrame([old])))  # unrecorded = prior
    assert not is_done({"trial_id": "a", "seed": 1, "config": gmm}, done_keys(pd.DataFrame([old])))
    path = tmp_path / "rerun.parquet"
    merge_rows(path, [old])
    merge_rows(path, [{**old, "latent_sampler": "gmm", "fid_final": 40.0}])  # beside, not over, the prior row
    rows = pd.read_parquet(path)
    assert sorted(rows["fid_final"]) == [40.0, 70.0]
    assert [sorted(g["fid_final"]) for _, g in protocol_groups(rows)] == [[70.0], [40.0]]
    from analysis.literature import literature_section

    final = dict(old, fid_samples=10000, max_kimg=1000.0, dataset="fashion-mnist", family="vae", precision="bf16")
    text = literature_section("e", pd.DataFrame([{"trial_id": "a", "label": "vae a"}]),
                              pd.DataFrame([final, {**final, "seed": 2, "latent_sampler": "gmm", "fid_final": 40.0}]))
    table = [line for line in text.splitlines() if line.startswith("| vae a")]
    assert len(table) == 2 and sum("latent sampler gmm" in line for line in table) == 1  # two rows, never averaged
    assert "ex-post Gaussian mixture" in text and "Table 2's VAE samples its N(0, I) prior" in text


def test_an_interrupted_run_keeps_its_finished_cells_and_counts_the_pending_one(tmp_path):
    """Ctrl-C while a cell is still pending: Tune's Result for it has no metrics, so no config (seen on
    2026-12-06: run_final raised AttributeError and merged nothing, not even the finished seed)."""
    from ray.tune import Result

    from analysis.final import cell_params, finished_rows
    from tuner.config import TrainConfig

    cfg = TrainConfig(dataset="fashion-mnist", fid_samples=64, max_kimg=0.5, eval_every_kimg=0.5)
    cells = [{"trial_id": "a", "seed": s, "config": cfg.replace(seed=s)} for s in (1, 2)]
    done = pd.DataFrame([{"kimg": 0.5, "fid": 12.5, "fid_backbone": "domain", "fid_samples": 64}])
    grid = [Result(metrics={"config": {"cell": cell_params(cells[0]["config"])}}, checkpoint=None, error=None,
                   path=str(tmp_path / "a"), metrics_dataframe=done),
            Result(metrics=None, checkpoint=None, error=None, path=str(tmp_path / "b"))]  # never started
    rows, missing = finished_rows(grid, cells, log=lambda *_: None)
    assert missing == 1 and [(r["seed"], r["fid_final"]) for r in rows] == [(1, 12.5)]


@pytest.mark.slow
def test_rerun_runs_through_ray_continues_after_sigkill_and_skips_done_rows(idx_mnist, ray_local, tmp_path):
    # the study in this process (the module's Ray); each rerun is a driver of its own, killed or not
    exp = run_study(tmp_path / "store", "s", "--family", "gan", "--losses", "hinge", "--num-samples", "2",
                    "--max-kimg", "0.25", "--grace-kimg", "0.25", "--ranges", "g_width=8:8", "d_width=8:8",
                    "batch_size=16,32", "--g-ema", "0.9", base=TINY_TRIAL)
    rerun = ("-m", "analysis.rerun")
    argv = [str(exp), "--top", "1", "--seeds", "2", "--first-seed", "7", "--max-kimg", "0.5",
            "--fid-backbone", "domain", "--fid-samples", "48", "--eval-every-kimg", "0.125", "--max-concurrent", "1",
            "--cpus-per-trial", "1"]
    first = Driver(argv, tmp_path, "first", rerun)
    try:
        ckpt = wait_for(lambda: list((exp / "rerun").glob("final-*/*/checkpoint_000000")), 240,
                        "the first checkpoint", first.proc)
    finally:
        first.kill()
    assert not (exp / "rerun.parquet").exists()
    tune_dir = ckpt[0].parent.parent
    assert tune_dir.name.startswith("final-domain-n48-0.5kimg-")
    # the study's fault of tests/tuner/study/test_resume_damage.py, met by the final evaluation, which is
    # assembled by the same function (tuner/study/assembly.py): a driver killed while copying a file into
    # storage leaves a half-copied file beside a whole target; the continued run removes it, and says so
    from tuner.study.storage import PARTIAL_PREFIX

    partial = tune_dir / f"{PARTIAL_PREFIX}experiment_state-2026-12-04_00-00-00.json"
    partial.write_text('{"trial_data": [')

    second = Driver(argv, tmp_path, "second", rerun)
    assert second.wait(300) == 0, second.log.read_text()[-3000:]
    log = second.log.read_text()
    assert "continuing the interrupted run" in log and str(tune_dir) in log
    assert "removed 1 half-copied file(s)" in log and not partial.exists()
    assert [p.name for p in (exp / "rerun").iterdir()] == [tune_dir.name]  # one Tune experiment, restored
    rows = pd.read_parquet(exp / "rerun.parquet")
    trials = pd.read_parquet(exp / "trials.parquet")
    best = trials.sort_values("fid_best")["trial_id"].iloc[0]
    assert sorted(rows["seed"]) == [7, 8] and set(rows["trial_id"]) == {best}
    assert (rows["fid_backbone"] == "domain").all() and (rows["fid_samples"] == 48).all()
    assert (rows["max_kimg"] == 0.5).all() and (rows["kimg"] >= 0.5).all()
    assert rows["precision"].isin(["fp32", "bf16"]).all() and (rows["scored_checkpoint"] == "last").all()
    assert (rows["fid_final"] > 0).all() and (rows["fid_ema_final"] > 0).all()  # the study's g_ema carried over
    assert rows["fid_final"].nunique() == 2  # two seeds, two runs
    assert all('"g_ema": 0.9' in c and '"max_kimg": 0.5' in c for c in rows["config"])

    third = Driver(argv, tmp_path, "third", rerun)  # everything done: nothing runs, nothing changes
    assert third.wait(120) == 0
    assert "2 runs planned, 2 already in rerun.parquet" in third.log.read_text()
    assert not list(Path(third.ray_tmp).glob("ray/session_2*"))  # no Ray started
    pd.testing.assert_frame_equal(pd.read_parquet(exp / "rerun.parquet"), rows)

    # benchmarks/final_eval.py's result file, from these rows (the winner's, in seed order)
    result = import_benchmark("final_eval").result
    out = result(exp)
    assert {k: out[k] for k in ("dataset", "fid_backbone", "fid_samples", "max_kimg", "seeds")} == {
        "dataset": "mnist", "fid_backbone": "domain", "fid_samples": 48, "max_kimg": 0.5, "seeds": [7, 8]}
    by_seed = rows.set_index("seed")
    assert out["fids"] == [by_seed.loc[7, "fid_final"], by_seed.loc[8, "fid_final"]]
    assert out["fids_ema"] == [by_seed.loc[7, "fid_ema_final"], by_seed.loc[8, "fid_ema_final"]]
    assert out["precision"] in ("fp32", "bf16") and out["config"]["g_ema"] == 0.9 and "changes" not in out

    # the winner re-trained with a field changed (--set): its own row, beside the two; the result file is its
    fourth = Driver([*argv[:3], "--seeds", "1", *argv[5:], "--set", "g_width=12"], tmp_path, "fourth", rerun)
    assert fourth.wait(300) == 0, fourth.log.read_text()[-3000:]
    after = pd.read_parquet(exp / "rerun.parquet")
    assert len(after) == 3
    pd.testing.assert_frame_equal(after[after["changes"] == ""].reset_index(drop=True), rows.assign(changes=""),
                                  check_dtype=False)
    new = after[after["changes"] == "g_width=12"]
    assert list(new["seed"]) == [7] and '"g_width": 12' in new["config"].iloc[0]
    assert new["fid_final"].iloc[0] not in set(rows["fid_final"])  # another generator, another FID
    out = result(exp)
    assert out["changes"] == "g_width=12" and out["seeds"] == [7] and out["config"]["g_width"] == 12


def test_literature_section_shows_both_tables_and_ranks_only_comparable_rows():
    from analysis.literature import TABLE2, literature_section

    trials = pd.DataFrame({"trial_id": ["a", "b"], "label": ["wgan-gp z64 #1", "hinge z32 #2"]})
    base = dict(dataset="fashion-mnist", family="gan", precision="fp32", max_kimg=1000.0)
    runs = pd.DataFrame([
        {**base, "trial_id": "a", "seed": s, "loss": "wgan-gp", "fid_backbone": "inception", "fid_samples": 10000,
         "fid_final": f, "fid_ema_final": f - 1} for s, f in ((1, 20.0), (2, 22.0), (3, 24.0))] + [
        {**base, "trial_id": "a", "seed": 1, "loss": "wgan-gp", "fid_backbone": "domain", "fid_samples": 2000,
         "fid_final": 3.0, "fid_ema_final": None},
        {**base, "trial_id": "b", "seed": 1, "loss": "hinge", "fid_backbone": "inception", "fid_samples": 10000,
         "fid_final": 25.0, "fid_ema_final": None}])
    text = literature_section("exp", trials, runs)
    assert "22.00 ± 2.00" in text and "21.00 ± 2.00" in text  # G and its EMA, mean ± std over seeds 1, 2, 3
    assert "1, 2, 3" in text
    for model, (mean, std) in TABLE2["fashion-mnist"].items():
        assert f"| {model} | {mean:.2f} ± {std:.2f} |" in text
    assert "Lucic et al. 2018" in text and "10000 generated samples vs 10,000 test images" in text
    placements = text.split("Placement:", 1)[1]
    assert "n/a (no EMA)" in text  # trial b kept no EMA
    partial = runs.assign(fid_ema_final=[None, None, 23.0, None, None])  # only seed 3 kept one
    assert "| 23.00 (only seed 3) |" in literature_section("exp", trials, partial)
    assert "wgan-gp z64 #1: FID 22.00 would place 2 of 9" in placements  # only WGAN (21.5) is lower
    assert "(domain, 2000 samples): not ranked against Table 2: domain features, not Inception" in placements
    assert "2000 samples, not 10000" in placements
    assert "hinge z32 #2 (inception, 10000 samples): not ranked" in placements and "hinge" in placements
    assert "LAST checkpoint" in text


@pytest.mark.slow
def test_inception_metric_runs_in_fp32_under_bf16_training_and_its_statistics_are_cached(idx_mnist, tmp_path,
                                                                                         monkeypatch):
    """The final evaluation's metric on a tiny scale (16 samples): Inception features are computed
    outside autocast in fp32 while training runs in bf16, the row records bf16, and the test images'
    Inception statistics are computed once, then read from the cache."""
    import torch

    from tuner.metrics import backbones

    from tuner.metrics import fid
    from tuner.config import TrainConfig
    from tuner.training.loop import train

    calls = []
    forward = backbones.InceptionBackbone._forward

    def spy(self, images):
        out = forward(self, images)
        calls.append((torch.is_autocast_enabled("cpu"), out.dtype, len(images)))
        return out

    monkeypatch.setattr(backbones.InceptionBackbone, "_forward", spy)
    cfg = TrainConfig(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, seed=1, loss="hinge",
                      fid_backbone="inception", fid_samples=16, max_kimg=0.064, eval_every_kimg=0.064,
                      precision="bf16", g_ema=0.9)
    (record,) = train(cfg, tmp_path / "run")
    assert record["precision"] == "bf16" and record["fid_backbone"] == "inception" and record["fid_samples"] == 16
    assert record["fid"] > 0 and record["fid_ema"] > 0
    assert calls and all(not autocast and dtype == torch.float32 for autocast, dtype, _ in calls)
    assert sum(n for *_, n in calls) == 48  # 16 test images once, 16 samples of G, 16 of its EMA
    stats = list(Path(os.environ["GENTUNE_CACHE"]).glob("stats/mnist-test-inception-*-n16.npz"))
    assert len(stats) == 1
    calls.clear()
    backbone = backbones.get_backbone("inception", "mnist")
    mu, sigma = fid.real_statistics("mnist", "test", backbone, 16)
    assert calls == [] and mu.shape == (2048,)  # read from the cache, no Inception pass
