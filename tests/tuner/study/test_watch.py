"""Issue 15, "see the samples where you already look", on real tiny studies (real Ray, a real Optuna
journal, tensorboard's own event reader):
- every evaluation's sample grids as TensorBoard images in the trial folder and as Optuna artifacts;
- what `python tuner/search.py` prints: Ray's table and one gentune line per trial event by default,
  Ray's full output with --verbose (subprocess studies: their own local Ray, log_to_driver on)."""

import functools
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from tuner.study.optuna_bridge import make_storage
from tuner.study.watch import artifact_location, artifact_store, upload_grids

from conftest import TINY_STUDY, run_study

pytestmark = pytest.mark.slow

run_search = run_study


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


def tensorboard_images(trial_dir: Path) -> dict[str, dict[int, bytes]]:
    """{tag: {step: encoded PNG}} read back with tensorboard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    acc = EventAccumulator(str(trial_dir), size_guidance={IMAGES: 0})
    acc.Reload()
    return {tag: {e.step: e.encoded_image_string for e in acc.Images(tag)} for tag in acc.Tags()[IMAGES]}


def tensorboard_scalar_tags(trial_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    return acc.Tags()[SCALARS]


def check_trial_images(exp: Path, tags: dict[str, str]) -> None:
    """Every evaluation of every trial: TensorBoard images (tag, step = images seen) and Optuna
    artifacts, both with exactly the pixels / bytes of the trial's PNGs."""
    trials = pd.read_parquet(exp / "trials.parquet")
    history = pd.read_parquet(exp / "history.parquet")
    study = optuna.load_study(study_name=exp.name, storage=make_storage(str(exp / "optuna.journal")))
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    store = artifact_store(artifact_location(str(exp)))
    assert (exp / "artifacts").is_dir()
    for row in trials.itertuples():
        trial_dir = exp / row.trial_dir
        evals = history[history["trial_id"] == row.trial_id]
        assert len(evals)
        images = tensorboard_images(trial_dir)
        assert set(images) == set(tags), images.keys()
        # Ray's scalars are there too, from its own event file (never overwritten by ours)
        events = [p.name for p in trial_dir.glob("events.out.tfevents.*")]
        assert any(n.endswith(".gentune") for n in events) and any(not n.endswith(".gentune") for n in events), events
        assert "ray/tune/fid" in tensorboard_scalar_tags(trial_dir)
        ot = by_ray_id[row.trial_id]
        metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(ot, storage=study._storage)}
        expected_names = set()
        for ev in evals.itertuples():
            step = round(ev.kimg * 1000)
            for tag, prefix in tags.items():
                relative = getattr(ev, f"grid_{tag}")
                png = exp / relative
                assert png.parent.name == "samples" and png.name.startswith(prefix) and png.is_file()
                assert png.parent.parent == trial_dir
                # TensorBoard: the decoded image equals the PNG's pixels
                assert step in images[tag], (tag, step, sorted(images[tag]))
                assert np.array_equal(pixels(images[tag][step]), pixels(png.read_bytes()))
                # Optuna: the artifact is the PNG, byte for byte
                meta = metas[png.name]
                assert meta.mimetype == "image/png"
                out = trial_dir.parent / "downloaded" / row.trial_id / png.name
                out.parent.mkdir(parents=True, exist_ok=True)
                optuna.artifacts.download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(out))
                assert out.read_bytes() == png.read_bytes()
                expected_names.add(png.name)
        # one artifact per grid file, none twice; every grid on disk was uploaded
        assert set(metas) == expected_names
        on_disk = {p.name for p in (trial_dir / "samples").glob("*.png") if any(p.name.startswith(x) for x in tags.values())}
        assert on_disk == expected_names


# ------------------------------------------------------------------------------------------
# the console (and, on the same study, the images)

ROOT = Path(__file__).resolve().parents[3]
FLAGS = ["--family", "gan", "--losses", "hinge", "--num-samples", "3", "--max-kimg", "0.5", "--eval-every-kimg", "0.25",
         "--grace-kimg", "0.25"]


def study(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    proc = subprocess.run([sys.executable, "tuner/search.py", "--storage-path", str(tmp_path), "--name", name, *TINY_STUDY,
                           *FLAGS, *extra], cwd=ROOT, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, pd.read_parquet(tmp_path / name / "trials.parquet")


def test_gan_study_console_tensorboard_and_optuna_artifacts(idx_mnist, tmp_path):
    """A real GAN study run as `python tuner/search.py` (3 trials, ASHA): its console, and every
    evaluation's sample grid in TensorBoard and in the Optuna study."""
    proc, trials = study(tmp_path, "quiet")
    print(proc.stdout[-8000:], "\n---- stderr ----\n", proc.stderr[-4000:])  # shown if an assertion fails
    assert len(trials) == 3
    check_trial_images(tmp_path / "quiet", {"samples": "kimg_"})
    out, everything = proc.stdout, proc.stdout + proc.stderr
    started = re.findall(r"^\[gentune\] trial (\w+) started: (.*)$", out, re.M)
    ended = re.findall(r"^\[gentune\] trial (\w+) (finished|stopped by ASHA|diverged) at ([\d.]+) kimg", out, re.M)
    assert sorted(t for t, _ in started) == sorted(trials["trial_id"])
    assert sorted(t for t, _, _ in ended) == sorted(trials["trial_id"])
    status = {"completed": "finished", "pruned": "stopped by ASHA", "diverged": "diverged"}
    for trial_id, how, kimg in ended:
        row = trials.set_index("trial_id").loc[trial_id]
        # the event line prints kimg with 2 decimals: abs 0.005 is that rounding, not float error
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
    proc, trials = study(tmp_path, "loud", "--verbose", "--num-samples", "2", "--max-kimg", "0.25")
    out, everything = proc.stdout, proc.stdout + proc.stderr
    assert "Checkpoint successfully created" in everything
    assert out.count("started with configuration") == len(trials)
    assert len(re.findall(r"^\[gentune\] trial \w+ started", out, re.M)) == len(trials)


# ------------------------------------------------------------------------------------------
# in-process studies and units


def test_vae_study_also_uploads_reconstructions_and_interpolations(idx_mnist, tmp_path, ray_local):
    exp = run_search(tmp_path, "vae", "--family", "vae", "--num-samples", "1", "--max-kimg", "0.5",
                     "--eval-every-kimg", "0.25", "--grace-kimg", "0.25", "--ranges", "z_dim=4:8")
    check_trial_images(exp, {"samples": "kimg_", "reconstructions": "recon_kimg_", "interpolation": "interp_kimg_"})


def test_a_failed_upload_is_one_logged_line_and_never_raises(tmp_path, caplog):
    """A result pointing at a grid that is not on storage: one warning line, nothing uploaded, no entry."""
    study = optuna.create_study(storage=make_storage(str(tmp_path / "optuna.journal")), study_name="s")
    trial = study.ask()
    png = tmp_path / "t1" / "samples" / "kimg_0001.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(png)
    result = {"grid_samples": "t1/samples/kimg_0001.png", "grid_reconstructions": "t1/samples/recon_kimg_0001.png"}
    with caplog.at_level(logging.WARNING, logger="gentune.watch"):
        assert upload_grids(study, trial._trial_id, str(tmp_path), result, "t1") == 1
    failures = [r.getMessage() for r in caplog.records if r.name == "gentune.watch"]
    assert len(failures) == 1 and "recon_kimg_0001.png" in failures[0] and "\n" not in failures[0]
    metas = optuna.artifacts.get_all_artifact_meta(trial)
    assert [m.filename for m in metas] == ["kimg_0001.png"]
    # the same evaluation reported again (a resumed trial) is not uploaded twice
    assert upload_grids(study, trial._trial_id, str(tmp_path), result, "t1") == 0
    assert len(optuna.artifacts.get_all_artifact_meta(trial)) == 1


def test_a_grid_caught_mid_copy_is_read_again_until_complete(tmp_path, caplog):
    """Ray rewrites a trial's files on storage at every checkpoint sync: the driver may find an earlier
    grid empty or cut short. It waits for the complete PNG; one that never completes is one log line."""
    import threading

    from tuner.study import watch

    study = optuna.create_study(storage=make_storage(str(tmp_path / "optuna.journal")), study_name="s")
    trial = study.ask()
    full = tmp_path / "full.png"
    Image.new("RGB", (8, 8), (200, 10, 30)).save(full)
    png = tmp_path / "t1" / "samples" / "kimg_0001.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"")  # being copied: truncated to zero
    timer = threading.Timer(0.5, lambda: png.write_bytes(full.read_bytes()))
    timer.start()
    try:
        assert upload_grids(study, trial._trial_id, str(tmp_path), {"grid_samples": "t1/samples/kimg_0001.png"}, "t1") == 1
    finally:
        timer.join()
    (meta,) = optuna.artifacts.get_all_artifact_meta(trial)
    out = tmp_path / "downloaded.png"
    optuna.artifacts.download_artifact(artifact_store=watch.artifact_store(watch.artifact_location(str(tmp_path))),
                                       artifact_id=meta.artifact_id, file_path=str(out))
    assert out.read_bytes() == full.read_bytes()

    cut = tmp_path / "t1" / "samples" / "kimg_0002.png"
    cut.write_bytes(full.read_bytes()[:-20])  # never completed
    with caplog.at_level(logging.WARNING, logger="gentune.watch"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(watch, "read_complete_png", functools.partial(watch.read_complete_png, timeout_s=0.3))
            assert upload_grids(study, trial._trial_id, str(tmp_path), {"grid_samples": "t1/samples/kimg_0002.png"}, "t1") == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gentune.watch"]
    assert "kimg_0002.png" in line and "not a complete PNG" in line
    assert len(optuna.artifacts.get_all_artifact_meta(trial)) == 1
