"""The analysis package on real, tiny experiments run by the real search driver.

Three experiments are built once per module (about a minute on 2 CPU cores): a TPE + ASHA GAN
search of 4 trials, the lab's `--grid lab1-vae` (3 VAEs) and a one-trial GAN search, all on the
tiny IDX MNIST of tests/conftest.py. The reports are checked against the exported frames: every
image they promise is a valid PNG, and every number they quote can be found in trials.parquet /
history.parquet (or is a count, sum or share of their rows) at the printed rounding.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ONE_AT_A_TIME, TINY_TRIAL, idx_mnist_env, run_study, start_local_ray
from PIL import Image

from analysis import fmt
from analysis.frames import UNTRAINED_FID, NotEnoughData, compute_curve, load_experiment, load_experiments, param_importances
from analysis.report import main as report_main
from analysis.report import write_report

TINY = [*TINY_TRIAL, *ONE_AT_A_TIME, "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.25"]
# The search space's default widths (up to 96) cost seconds per step on a CPU: keep them tiny.
SMALL_SPACE = ["--ranges", "g_width=8:24", "d_width=8:24", "batch_size=16,32"]
LAB_PLOTS = ("gan_losses", "gan_fid_by_config", "vae_losses", "vae_fid_by_latent", "gan_vs_vae")


# ------------------------------------------------------------------------------------------
# fixtures: real experiments, built once


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny IDX MNIST of conftest (module-wide, since idx_mnist is per test) and one local Ray."""
    import ray
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the re-runs train on this process next to Ray's workers: no oversubscription
    with idx_mnist_env(tmp_path_factory.mktemp("analysis")) as root:
        start_local_ray()
        try:
            yield root
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)


def run_search(root: Path, name: str, *flags: str) -> Path:
    return run_study(root / "exps", name, *flags, base=TINY)


@pytest.fixture(scope="module")
def gan_exp(env):
    return run_search(env, "gan", "--family", "gan", "--num-samples", "4", *SMALL_SPACE)


@pytest.fixture(scope="module")
def vae_exp(env):
    return run_search(env, "vae", "--grid", "lab1-vae")


@pytest.fixture(scope="module")
def one_exp(env):
    return run_search(env, "one", "--family", "gan", "--num-samples", "1", *SMALL_SPACE)


@pytest.fixture(scope="module")
def full_report(env, gan_exp, vae_exp):
    return write_report([gan_exp, vae_exp], env / "report-full")


@pytest.fixture(scope="module")
def gan_report(env, gan_exp):
    return write_report([gan_exp], env / "report-gan")


# ------------------------------------------------------------------------------------------
# helpers: what the report promises, and where its numbers come from


IMAGE_REF = re.compile(r'!\[[^\]]*\]\(([^)]+)\)|<img src="([^"]+)"')
NUMBER = re.compile(r"(?<![\w.#/])(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(%?)(?![\w.])")


def image_refs(report: Path) -> list[Path]:
    return [report.parent / (a or b) for a, b in IMAGE_REF.findall(report.read_text())]


def section(text: str, start: str, end: str | None) -> str:
    body = text.split(start, 1)[1]
    return body.split(end, 1)[0] if end and end in body else body


def quoted_numbers(text: str) -> list[tuple[str, bool]]:
    """(number, is_percent) of every number in text, outside code spans, links, tags and method notes."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"<[^>]+>|!\[[^\]]*\]\([^)]*\)", " ", text)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("_Method:_"))
    text = text.replace("=", " ")
    return [(m.group(1), m.group(2) == "%") for m in NUMBER.finditer(text)]


def tolerance(token: str) -> float:
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (-decimals + (int(exponent) if exponent else 0)) * (1 + 1e-9)


def frame_values(exp_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(values, shares in %): every number of the exports, plus counts, sums and shares of their rows."""
    values: list[float] = []
    trials_all = []
    for d in exp_dirs:
        trials = pd.read_parquet(d / "trials.parquet")
        history = pd.read_parquet(d / "history.parquet")
        trials_all.append(trials)
        for frame in (trials, history):
            for column in frame.columns:
                for v in frame[column]:
                    if isinstance(v, str) and v.startswith("["):
                        v = json.loads(v)
                    if isinstance(v, (list, tuple, np.ndarray)):
                        values.extend(float(x) for x in v)
                    elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v):
                        values.append(float(v))
        for column in ("kimg", "wall_time_s"):  # totals per experiment and per family
            values.append(float(trials[column].sum()))
            values.extend(float(s) for s in trials.groupby("family")[column].sum())
    trials = pd.concat(trials_all, ignore_index=True)
    for column in ("kimg", "wall_time_s"):
        values.extend(float(s) for s in trials.groupby(["dataset", "family"])[column].sum())
    n = len(trials)
    values.extend(range(0, n + 1))  # counts of trials and ranks are at most the number of trials
    shares = [100.0 * k / m for m in range(1, n + 1) for k in range(0, m + 1)]
    return np.array(values), np.array(shares)


def untraceable(text: str, exp_dirs: list[Path], extra: list[float] = ()) -> list[str]:
    values, shares = frame_values(exp_dirs)
    values = np.concatenate([values, np.array(list(extra), dtype=float)])
    missing = []
    for token, percent in quoted_numbers(text):
        pool = shares if percent else values
        if not np.any(np.abs(pool - float(token)) <= tolerance(token)):
            missing.append(token + ("%" if percent else ""))
    return missing


def importances(exp: Path) -> list[float]:
    try:
        frame, _ = param_importances(load_experiment(exp, rebuild=False).study)
    except NotEnoughData:
        return []
    return frame["importance"].tolist()


# ------------------------------------------------------------------------------------------
# fast unit checks (no experiment)


def test_formats_round_as_promised():
    assert fmt.fid(12.345) == "12.35" and fmt.fid(float("inf")) == "n/a" and fmt.fid(None) == "n/a"
    assert fmt.param(64.0) == "64" and fmt.param(0.000107) == "0.000107" and fmt.param(1.38e-5) == "1.38e-05"
    assert fmt.param(None) == "n/a" and fmt.param("hinge") == "hinge" and fmt.param(True) == "True"
    assert fmt.percent(1, 3) == "33%" and fmt.percent(0, 0) == "n/a"
    assert fmt.trials(1) == "1 trial" and fmt.trials(2) == "2 trials"
    assert fmt.table([{"a": "1", "b": "x"}]) == "| a | b |\n|---|---|\n| 1 | x |"


def test_importance_uses_complete_trials_only_and_scores_conditional_parameters():
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    from analysis.plots import plot_importance
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    rng = np.random.default_rng(0)
    dist = {"loss": CategoricalDistribution(["wgan", "hinge"]), "lr": FloatDistribution(1e-5, 1e-3, log=True),
            "clip_value": FloatDistribution(1e-3, 1e-1, log=True)}
    for i in range(12):
        loss = ["wgan", "hinge"][i % 2]
        params = {"loss": loss, "lr": float(10 ** rng.uniform(-5, -3))}
        if loss == "wgan":
            params["clip_value"] = float(10 ** rng.uniform(-3, -1))
        state = TrialState.COMPLETE if i < 8 else TrialState.PRUNED
        value = params["lr"] * 1e4 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(params=params, distributions={k: dist[k] for k in params}, value=value, state=state))
    frame, facts = param_importances(study)
    assert facts["complete_trials"] == 8 and facts["all_trials"] == 12
    assert set(frame["param"]) == {"loss", "lr", "clip_value"}
    assert frame.loc[frame["param"] == "clip_value", "trials_with_param"].item() == 4
    assert frame["importance"].sum() == pytest.approx(1.0)  # float64 normalised shares: 1 within a few eps64
    assert frame["param"].iloc[0] == "lr"  # the objective is lr alone
    fig = plot_importance(study)
    assert "8 COMPLETE trials of 12" in fig.axes[0].get_title()

    small = optuna.create_study()
    small.add_trial(create_trial(params={"lr": 1e-4}, distributions={"lr": dist["lr"]}, value=1.0))
    with pytest.raises(NotEnoughData, match="COMPLETE"):
        param_importances(small)
    with pytest.raises(NotEnoughData, match="no Optuna study"):
        param_importances(None)


def test_report_cli_refuses_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a gentune experiment" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# real experiments


@pytest.mark.slow
def test_frames_rebuilt_from_ray_records_equal_the_exports(gan_exp):
    rebuilt = load_experiment(gan_exp)  # Ray's experiment_state is there: rebuilt, as for a running study
    exported = load_experiment(gan_exp, rebuild=False)
    assert rebuilt.source == "ray" and exported.source == "exports"
    cols = ["trial_id", "status", "loss", "z_dim", "fid_best", "fid_final", "kimg"]
    a = rebuilt.trials[cols].sort_values("trial_id").reset_index(drop=True)
    b = exported.trials[cols].sort_values("trial_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert len(rebuilt.history) == len(exported.history)
    assert rebuilt.study is not None and len(rebuilt.study.trials) == 4
    # every evaluation has a clock; within a trial it grows with kimg
    h = exported.history
    assert h["clock_s"].notna().all()
    for _, g in h.groupby("trial_id"):
        assert g.sort_values("kimg")["clock_s"].is_monotonic_increasing


@pytest.mark.slow
def test_compute_curve_adds_up_each_trials_kimg(gan_exp, vae_exp):
    exps = load_experiments([gan_exp, vae_exp], rebuild=False)
    curve = compute_curve(exps.history)
    for exp in exps:
        c = curve[curve["experiment"] == exp.name]
        assert c["cum_kimg"].is_monotonic_increasing
        evaluated = exp.trials[exp.trials["trial_id"].isin(exp.history["trial_id"])]
        # float64 sums of the same numbers in another order (rel 1e-6 >> n eps64), and a min of copies
        assert c["cum_kimg"].iloc[-1] == pytest.approx(evaluated["kimg"].sum())
        assert c["best_so_far"].min() == pytest.approx(exp.trials["fid_best"].min())
    from analysis import plots

    fig = plots.plot_compute(list(exps))
    assert fig.axes[1].get_ylabel().startswith("best FID so far\n(domain backbone, 64 samples")  # says what FID it is


@pytest.mark.slow
def test_report_embeds_every_plot_and_sample_grid_as_a_valid_png(full_report, gan_exp, vae_exp):
    text = full_report.read_text()
    refs = image_refs(full_report)
    assert refs, "the report embeds no image"
    for path in refs:
        assert path.is_file(), f"missing image {path}"
        with Image.open(path) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0
    names = {p.stem for p in refs if p.parent.name == "plots"}
    promised = {*LAB_PLOTS, "learning_curves", "compute", "fid_vs_params-gan", "critic-gan", "diversity-gan",
                "diversity-vae", "parallel-gan-gan", "fid_vs_params-vae", "parallel-vae-vae"}
    assert promised <= names, f"plots not embedded: {sorted(promised - names)}"
    # importance: drawn when the study has enough full-budget trials, else the reason is stated
    importance = section(text, "#### Hyperparameter importance (gan)", "####")
    assert ("plots/importance-gan.png" in importance) or ("Not enough data" in importance)
    if "plots/importance-gan.png" in importance:
        assert "PED-ANOVA" in importance and "COMPLETE" in importance
    # sample grids of the best trials (first/middle/last evaluation) and the VAE images were copied
    copied = [p for p in refs if "images" in p.parts]
    assert any(p.name.startswith("kimg_") for p in copied)
    assert any(p.name.startswith("recon_kimg_") for p in copied) and any(p.name.startswith("interp_kimg_") for p in copied)
    # the FID backbone and sample count are always named
    assert "domain backbone, 64 samples" in text


@pytest.mark.slow
def test_every_number_in_the_tables_and_answers_is_in_the_frames(full_report, gan_exp, vae_exp):
    text = full_report.read_text()
    checked = section(text, "## Results", "## Samples") + section(text, "## Answers", "## Re-runs")
    assert len(quoted_numbers(checked)) > 20
    # besides the frames: the real-vs-real floor each study recorded, and the "not yet trained" threshold
    floors = [json.loads((d / "search_config.json").read_text())["fid_floor"]["fid"] for d in (gan_exp, vae_exp)]
    missing = untraceable(checked, [gan_exp, vae_exp], extra=[*importances(gan_exp), *floors, UNTRAINED_FID])
    assert not missing, f"numbers not found in the exported frames: {missing}"
    for floor in floors:
        assert f"real-vs-real floor: {floor:.2f}" in checked
    # and the answers quote real values: the best FID of each family, at 2 decimals
    trials = pd.concat([pd.read_parquet(d / "trials.parquet") for d in (gan_exp, vae_exp)])
    for family in ("gan", "vae"):
        best = trials.loc[trials["family"] == family, "fid_best"].min()
        assert f"{best:.2f}" in section(text, "### Q4", "## Re-runs")


@pytest.mark.slow
def test_gan_only_report_says_there_is_not_enough_data_for_vae(gan_report, gan_exp):
    text = gan_report.read_text()
    q3 = section(text, "### Q3", "### Q4")
    assert "Not enough data" in q3 and "no VAE trials" in q3
    assert "Not enough data" in section(text, "### Q4", "## Re-runs")
    assert "Not enough data" in section(text, "#### VAE loss components by latent size", "####")
    assert not untraceable(section(text, "## Answers", "## Re-runs"), [gan_exp], extra=[*importances(gan_exp), UNTRAINED_FID])


@pytest.mark.slow
def test_single_trial_experiment_gives_a_report(env, one_exp):
    report = write_report([one_exp], env / "report-one")
    text = report.read_text()
    for path in image_refs(report):
        assert path.is_file()
    assert "### Q1" in text and "### Q4" in text
    assert "Not enough data" in section(text, "#### Hyperparameter importance", "####")
    assert not untraceable(section(text, "## Answers", "## Re-runs"), [one_exp], extra=[UNTRAINED_FID])


@pytest.mark.slow
def test_rerun_retrains_the_top_configs_and_the_report_compares_rankings(env, vae_exp):
    from analysis.rerun import main as rerun_main

    exp = env / "exps" / "vae-rerun"  # the VAE grid: its width-8 models retrain in a second
    shutil.copytree(vae_exp, exp)  # keep the shared experiment free of rerun.parquet
    assert rerun_main([str(exp), "--top", "2", "--seeds", "2", "--first-seed", "5", *ONE_AT_A_TIME]) == 0
    runs = pd.read_parquet(exp / "rerun.parquet")
    trials = pd.read_parquet(exp / "trials.parquet")
    top2 = trials[trials["status"] != "diverged"].sort_values("fid_best")["trial_id"].head(2).tolist()
    assert sorted(runs["trial_id"].unique()) == sorted(top2)
    assert sorted(runs["seed"].unique()) == [5, 6] and len(runs) == 4
    assert {"trial_id", "seed", "fid_final", "fid_best", "kimg"} <= set(runs.columns)
    assert (runs["kimg"] >= 0.5).all()  # full budget
    assert rerun_main([str(exp), "--top", "2", "--seeds", "2", "--first-seed", "5", *ONE_AT_A_TIME]) == 0  # resumes: nothing new
    assert len(pd.read_parquet(exp / "rerun.parquet")) == 4

    report = write_report([exp], env / "report-rerun")
    reruns = section(report.read_text(), "## Re-runs", "## Notes")
    assert "mean ± std" in reruns and "Ranking" in reruns
    stats = runs.groupby("trial_id")["fid_best"].agg(["mean", "std"])
    for trial_id, row in stats.iterrows():
        assert f"{fmt.fid(row['mean'])} ± {fmt.fid(row['std'])}" in reruns, trial_id
    # the final evaluation's rows record their protocol; the literature section refuses to rank them
    # (domain backbone, 64 samples) and says why
    assert {"fid_backbone", "fid_samples", "max_kimg", "precision", "config"} <= set(runs.columns)
    literature = section(report.read_text(), "## Against the literature", "## Notes")
    assert "Lucic et al. 2018" in literature and "| VAE | 23.80 (std not transcribed) |" in literature
    assert "not ranked against Table 2: domain features, not Inception" in literature
    assert "would place" not in literature


def test_seeds_of_one_study_are_grouped_and_plotted_as_median_and_range(gan_exp):
    """Experiments that differ only in --seed form one group (the report's seed plot); any other
    difference, e.g. the sampler, keeps them apart."""
    import copy

    from analysis import plots
    from analysis.frames import load_experiment, seed_groups

    first = load_experiment(gan_exp, rebuild=False)
    second = copy.deepcopy(first)
    second.name, second.search["base"]["seed"], second.search["search"]["name"] = "gan-seed1", 7, "gan-seed1"
    other = copy.deepcopy(first)
    other.name, other.search["search"]["sampler"] = "gan-random", "random"
    groups = seed_groups([first, second, other])
    assert [[e.name for e in members] for members in groups.values()] == [[first.name, "gan-seed1"]]
    fig = plots.plot_seed_spread([first, second, other])
    assert "best FID so far (domain backbone, 64 samples" in fig.axes[0].get_ylabel()  # says what FID it is
    with pytest.raises(plots.NotEnoughData, match="several seeds"):
        plots.plot_seed_spread([first, other])
