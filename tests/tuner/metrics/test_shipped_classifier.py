"""The shipped domain classifiers (tuner/metrics/assets, `tuner.metrics.domain.SHIPPED`): pinned checksums, loaded
instead of trained, the real-vs-real floors pinned (Fashion-MNIST; MNIST where real MNIST is present), a user's own classifier (`--domain-classifier
train` or a file), every evaluation naming its classifier, and a file that fails its checksum."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import shutil
import tomllib
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import REPO, write_idx_dataset
from tuner.metrics import domain
from tuner.metrics.backbones import get_backbone
from tuner.metrics.fid import cli as fid_cli

FASHION = domain.SHIPPED["fashion-mnist"]
FASHION_ID = FASHION["weights_sha256"][:domain.ID_LENGTH]
MNIST_ID = domain.SHIPPED["mnist"]["weights_sha256"][:domain.ID_LENGTH]
# `python -m tuner.fid fashion-mnist:train fashion-mnist:test --backbone domain --limit 1000` with the shipped
# classifier, measured 2026-12-04 on an AMD EPYC (AVX512): 6.257614483 with the CPU's own instruction sets
# (1 or 2 threads, batch 256 or 1000), 6.257614388 capped to AVX2 (ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2), 6.257614232 capped to SSE4.1, and up to 6.257614824
# with 2 threads at batch 7. float32 round-off in the features moves the float64 FID by < 1e-6: the floor is
# pinned to 6 significant digits (and prints as 6.2576 everywhere).
FLOOR_1000 = 6.2576145
FLOOR_TOLERANCE = 2e-6
# The same for MNIST (`mnist:train mnist:test`), measured 2026-12-06 on an Intel Xeon (AVX512-BF16):
# 67.648062334 with the CPU's own instruction sets (2 threads), 67.648062870 with 1 thread, 67.648059976
# capped to AVX2, 67.648061598 capped to SSE4.1. Ten times Fashion-MNIST's floor: the features are larger
# (their covariance's trace 1335 against 558), and the first 1000 test images are from other writers than
# the first 1000 training images (train[:1000] against train[1000:2000] gives 19.8).
MNIST_FLOOR_1000 = 67.648061
MNIST_FLOOR_TOLERANCE = 5e-6
TOOL = REPO / "tools" / "train_domain_classifier.py"


@pytest.fixture
def clean_backbones(tmp_path, monkeypatch):
    """A temporary cache, no train limit, and no backbone built by another test."""
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(domain.TRAIN_LIMIT_ENV, raising=False)
    get_backbone.cache_clear()
    yield tmp_path / "cache"
    get_backbone.cache_clear()


def tool():
    spec = importlib.util.spec_from_file_location("train_domain_classifier", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*argv: str) -> int:
    """The script's main in this process; it sets one thread and deterministic algorithms: restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return tool().main(list(argv))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


# ------------------------------------------------------------------------------------------
# the shipped files


def test_shipped_files_match_their_pinned_checksums_and_are_package_data():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tuner.metrics"]
    for dataset, entry in domain.SHIPPED.items():
        path = domain.shipped_path(dataset)
        assert path.parent == REPO / "tuner" / "metrics" / "assets"
        assert domain.file_sha256(path) == entry["sha256"]
        assert path.stat().st_size < 2_000_000  # 128-d features, 421,642 float32 weights: about 1.7 MB
        assert any(fnmatch.fnmatch(f"assets/{path.name}", pattern) for pattern in package_data)
        state, meta = domain.load_classifier_file(path, entry["sha256"], dataset)
        assert meta["weights_sha256"] == entry["weights_sha256"] == domain.weights_sha256(state)
        assert (meta["dataset"], meta["n_train"], meta["full_data"]) == (dataset, 60000, True)
        assert (meta["epochs"], meta["seed"]) == (domain.DEFAULT_EPOCHS, domain.DEFAULT_SEED)
        assert meta["test_accuracy"] >= domain.TARGET_ACCURACY[dataset] and meta["meets_target"]
        # the file is exactly what classifier_bytes makes of its contents: no time or host inside
        blob = torch.load(path, weights_only=True)
        assert domain.classifier_bytes(blob["state_dict"], blob["meta"]) == path.read_bytes()
    assert set(domain.SHIPPED) == set(domain.TARGET_ACCURACY)  # one for every dataset gentune knows


def test_weights_sha256_covers_names_shapes_and_values():
    a = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    assert domain.weights_sha256(a) == domain.weights_sha256({"b": torch.ones(3), "w": torch.zeros(2, 3)})  # order-free
    assert domain.weights_sha256(a) != domain.weights_sha256({"w": torch.zeros(3, 2), "b": torch.ones(3)})  # shape
    assert domain.weights_sha256(a) != domain.weights_sha256({"v": torch.zeros(2, 3), "b": torch.ones(3)})  # name
    flipped = {"w": torch.zeros(2, 3), "b": torch.nextafter(torch.ones(3), torch.tensor([1.0, 1.0, 2.0]))}
    assert domain.weights_sha256(a) != domain.weights_sha256(flipped)  # one ulp of one value


@pytest.mark.parametrize("dataset, classifier_id", [("fashion-mnist", FASHION_ID), ("mnist", MNIST_ID)])
def test_the_shipped_classifier_is_loaded_not_trained(dataset, classifier_id, clean_backbones, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained (or read the data) despite the shipped classifier")

    monkeypatch.setattr(domain, "train_classifier", no_training)
    monkeypatch.setattr(domain, "load_split", no_training)
    bb = get_backbone("domain", dataset)
    assert bb.meta["source"] == "shipped" and bb.classifier_id == classifier_id
    assert bb.cache_key == f"domain-{dataset}-n60000-v{domain.VERSION}-{classifier_id}"
    assert not (clean_backbones / "domain").exists()  # nothing trained, nothing cached
    assert get_backbone("domain", dataset, classifier="shipped") is bb


def test_a_train_limit_trains_instead_of_the_shipped_mnist_classifier(idx_mnist, monkeypatch):
    """idx_mnist's tests score with the classifier of its own tiny data ($GENTUNE_DOMAIN_TRAIN_LIMIT); without
    the variable the same data is scored with the shipped one, trained on real MNIST."""
    get_backbone.cache_clear()
    own = get_backbone("domain", "mnist")
    assert own.meta["source"] == "trained" and own.meta["n_train"] == 512
    assert own.classifier_id == domain.weights_sha256(own.model.state_dict())[:12] != MNIST_ID
    monkeypatch.delenv(domain.TRAIN_LIMIT_ENV)
    shipped = get_backbone("domain", "mnist")
    assert shipped.meta["source"] == "shipped" and shipped.classifier_id == MNIST_ID
    assert shipped.cache_key != own.cache_key
    get_backbone.cache_clear()


def test_train_flag_trains_its_own_classifier_with_its_own_id(clean_backbones, tmp_path, monkeypatch):
    # a tiny stand-in Fashion-MNIST (IDX files), so that training takes seconds
    root = tmp_path / "data"
    write_idx_dataset(root, "FashionMNIST", n_train=256, n_test=128)
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(root))
    monkeypatch.delenv("GENTUNE_DATA_MIRROR", raising=False)
    from tuner.data import load_split

    load_split.cache_clear()
    try:
        own = get_backbone("domain", "fashion-mnist", classifier="train")
        shipped = get_backbone("domain", "fashion-mnist")
        assert own.meta["source"] == "trained" and own.meta["n_train"] == 256
        assert own.classifier_id != shipped.classifier_id == FASHION_ID
        assert own.cache_key != shipped.cache_key  # their real statistics never share a cache file
    finally:
        load_split.cache_clear()


# ------------------------------------------------------------------------------------------
# the floor


@pytest.mark.slow
@pytest.mark.parametrize("dataset, mirror, classifier_id, floor, tolerance, printed", [
    ("fashion-mnist", "fashion_mirror", FASHION_ID, FLOOR_1000, FLOOR_TOLERANCE, "6.2576"),
    ("mnist", "mnist_mirror", MNIST_ID, MNIST_FLOOR_1000, MNIST_FLOOR_TOLERANCE, "67.6481"),
])
def test_real_vs_real_floor_is_pinned(dataset, mirror, classifier_id, floor, tolerance, printed, request,
                                      clean_backbones, capsys):
    request.getfixturevalue(mirror)  # the real data (skips where absent)
    argv = [f"{dataset}:train", f"{dataset}:test", "--backbone", "domain", "--limit", "1000"]
    assert fid_cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["domain_classifier_sha"] == classifier_id
    assert result["fid"] == pytest.approx(floor, abs=tolerance)
    assert fid_cli.main(argv) == 0  # the sentence, from the cached statistics
    assert capsys.readouterr().out.strip() == f"FID (domain classifier {classifier_id}, 1000 vs 1000): {printed}"


# ------------------------------------------------------------------------------------------
# the script, a user's file, every record naming its classifier


def test_the_script_is_deterministic_and_its_file_is_usable(idx_mnist, tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for out in (a, b):
        assert run_tool("--dataset", "mnist", "--train-limit", "128", "--epochs", "1", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert a.read_bytes() == b.read_bytes()
    assert f"file sha256:    {domain.file_sha256(a)}" in printed
    state, meta = domain.load_classifier_file(a, domain.file_sha256(a), "mnist")
    assert meta["n_train"] == 128 and meta["epochs"] == 1 and not meta["full_data"]

    get_backbone.cache_clear()
    argv = ["mnist:test", "mnist:train", "--backbone", "domain", "--limit", "100", "--json"]
    assert fid_cli.main([*argv, "--domain-classifier", str(a)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["domain_classifier_sha"] == meta["weights_sha256"][:12]
    monkeypatch.delenv(domain.TRAIN_LIMIT_ENV)
    assert fid_cli.main(argv) == 0  # MNIST's default: the shipped classifier, another feature space
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["domain_classifier_sha"] == MNIST_ID != from_file["domain_classifier_sha"]
    assert shipped["fid"] != from_file["fid"]
    with pytest.raises(domain.ClassifierError, match="allowed a fashion-mnist classifier"):
        domain.load_classifier("fashion-mnist", str(a))
    # a relative path is made absolute once, where the command runs: trials run in their own folders
    from tuner.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    assert TrainConfig(domain_classifier="a.pt").domain_classifier == str(a)
    get_backbone.cache_clear()


def test_every_evaluation_records_its_classifier(idx_mnist, tmp_path):
    from tuner.config import TrainConfig
    from tuner.training.loop import train

    get_backbone.cache_clear()
    cfg = TrainConfig(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1,
                      max_kimg=0.25, eval_every_kimg=0.125)
    history = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = get_backbone("domain", "mnist").classifier_id
    assert len(history) == 2 and [r["domain_classifier_sha"] for r in records] == [expected, expected]
    get_backbone.cache_clear()


# ------------------------------------------------------------------------------------------
# a file that fails its checksum: one error line, exit 2, nothing started


def damaged_copy(folder):
    """The shipped Fashion-MNIST file with one byte of its weights changed, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FASHION["file"]
    shutil.copyfile(domain.shipped_path("fashion-mnist"), target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def test_a_damaged_shipped_file_is_one_error_line_and_exit_2(clean_backbones, tmp_path, monkeypatch, capsys):
    target = damaged_copy(tmp_path / "assets")
    monkeypatch.setattr(domain, "ASSET_DIR", tmp_path / "assets")
    code = fid_cli.main(["fashion-mnist:train", "fashion-mnist:test", "--backbone", "domain", "--limit", "1000"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(target) in err and f"expected {FASHION['sha256']}" in err and "fails its checksum" in err
    assert not (clean_backbones / "stats").exists()  # nothing computed, nothing written


def test_a_damaged_shipped_file_stops_a_study_before_ray(clean_backbones, tmp_path, monkeypatch, capsys):
    import ray

    from tuner import search

    root = tmp_path / "data"
    write_idx_dataset(root, "FashionMNIST", n_train=64, n_test=32)  # data present: the classifier is what fails
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(root))
    monkeypatch.delenv("GENTUNE_DATA_MIRROR", raising=False)
    from tuner.data import load_split

    load_split.cache_clear()
    damaged_copy(tmp_path / "assets")
    monkeypatch.setattr(domain, "ASSET_DIR", tmp_path / "assets")
    was_running = ray.is_initialized()
    try:
        code = search.main(["--storage-path", str(tmp_path / "store"), "--name", "s", "--dataset", "fashion-mnist",
                            "--max-kimg", "0.25", "--num-samples", "1", "--grace-kimg", "0.25", "--batch-size", "16"])
    finally:
        load_split.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fails its checksum" in err, err
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "store").exists()


def test_a_user_file_that_fails_its_recorded_checksum(idx_mnist, tmp_path, capsys):
    torch.manual_seed(0)
    state = domain.DomainCNN().state_dict()
    wrong = "0" * 64
    path = tmp_path / "mine.pt"
    path.write_bytes(domain.classifier_bytes(state, {"dataset": "mnist", "weights_sha256": wrong}))
    code = fid_cli.main(["mnist:test", "mnist:train", "--backbone", "domain", "--domain-classifier", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"domain classifier {path} fails its checksum" in err and f"expected {wrong}" in err
    code = fid_cli.main(["mnist:test", "mnist:train", "--backbone", "domain", "--domain-classifier", "trian"])
    assert code == 2 and "allowed shipped, train or the path of a .pt classifier file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# tables never mix two classifiers


def test_classifier_mix_is_one_line_and_analysis_refuses_it(monkeypatch, tmp_path):
    from analysis import frames
    from tuner.results.exports import classifier_mix

    one = pd.DataFrame({"fid_backbone": ["domain", "domain"], "fid": [10.0, 9.0],
                        "domain_classifier_sha": [FASHION_ID, FASHION_ID]})
    other = one.assign(domain_classifier_sha="0123456789ab")
    inception = pd.DataFrame({"fid_backbone": ["inception"], "fid": [30.0], "domain_classifier_sha": ["fedcba987654"]})
    legacy = pd.DataFrame({"fid_backbone": ["domain"], "fid": [12.0]})  # before gentune recorded it
    assert classifier_mix(one) is None and classifier_mix(pd.concat([one, inception])) is None
    assert classifier_mix(legacy) is None
    line = classifier_mix(pd.concat([one, other]), "these")
    assert line.startswith("these scored the domain FID with 2 different domain classifiers")
    assert FASHION_ID in line and "0123456789ab" in line and "\n" not in line
    assert "unrecorded" in classifier_mix(pd.concat([one, legacy]))

    fake = {"a": one, "b": other}
    monkeypatch.setattr(frames, "load_experiment", lambda path, rebuild=None, name=None: SimpleNamespace(
        name=name, trials=pd.DataFrame({"trial_id": ["t"]}), history=fake[path.name]))
    with pytest.raises(RuntimeError, match=r"the experiments a, b scored the domain FID with 2 different"):
        frames.load_experiments(["/nowhere/a", "/nowhere/b"])
    from analysis.report import write_report

    with pytest.raises(RuntimeError, match="2 different domain classifiers"):  # the report refuses it too,
        write_report(["/nowhere/a", "/nowhere/b"], tmp_path / "report")
    assert not (tmp_path / "report").exists()  # ... before its folder exists
    assert len(frames.load_experiments(["/nowhere/a"]).experiments) == 1


def test_domain_fids_of_two_classifiers_are_never_summarised_together():
    """A domain FID's classifier is part of its protocol (issue: FIDs of two classifiers are never mixed
    in one table): the re-run tables and the literature table keep each classifier's seeds apart; an
    Inception FID involves no domain classifier, so its seeds stay together whatever the trial recorded."""
    from analysis.final import protocol_groups, with_classifier
    from analysis.literature import literature_section

    trials = pd.DataFrame({"trial_id": ["a"], "label": ["hinge #1"]})
    base = dict(trial_id="a", dataset="fashion-mnist", family="gan", loss="hinge", precision="fp32", max_kimg=64.0,
                fid_samples=1000, fid_ema_final=None)
    runs = pd.DataFrame([
        {**base, "seed": 1, "fid_backbone": "domain", "domain_classifier_sha": "aaaa1111", "fid_final": 40.0},
        {**base, "seed": 2, "fid_backbone": "domain", "domain_classifier_sha": "aaaa1111", "fid_final": 42.0},
        {**base, "seed": 3, "fid_backbone": "domain", "domain_classifier_sha": "bbbb2222", "fid_final": 60.0},
        {**base, "seed": 4, "fid_backbone": "domain", "domain_classifier_sha": None, "fid_final": 50.0},
        {**base, "seed": 1, "fid_backbone": "inception", "domain_classifier_sha": "aaaa1111", "fid_final": 30.0},
        {**base, "seed": 2, "fid_backbone": "inception", "domain_classifier_sha": "bbbb2222", "fid_final": 32.0}])
    assert list(with_classifier(runs)["classifier"]) == ["aaaa1111", "aaaa1111", "bbbb2222", "unrecorded", None, None]
    groups = {protocol: sorted(part["seed"]) for protocol, part in protocol_groups(runs)}
    assert groups == {"fid_backbone domain, fid_samples 1000, max_kimg 64.0, classifier aaaa1111": [1, 2],
                      "fid_backbone domain, fid_samples 1000, max_kimg 64.0, classifier bbbb2222": [3],
                      "fid_backbone domain, fid_samples 1000, max_kimg 64.0, classifier unrecorded": [4],
                      "fid_backbone inception, fid_samples 1000, max_kimg 64.0": [1, 2]}
    rows = [line.split(" | ") for line in literature_section("exp", trials, runs).splitlines() if line.startswith("| hinge #1 |")]
    assert {row[2]: (row[4], row[5]) for row in rows} == {  # protocol: (seeds, mean ± sample std)
        "domain, 1000 samples, 64.00 kimg, classifier aaaa1111": ("1, 2", "41.00 ± 1.41"),
        "domain, 1000 samples, 64.00 kimg, classifier bbbb2222": ("3", "60.00 ± n/a"),
        "domain, 1000 samples, 64.00 kimg, classifier unrecorded": ("4", "50.00 ± n/a"),
        "inception, 1000 samples, 64.00 kimg": ("1, 2", "31.00 ± 1.41")}


def test_a_final_evaluation_row_names_its_classifier():
    from analysis.final import row_of
    from tuner.config import TrainConfig

    cfg = TrainConfig(dataset="mnist", max_kimg=0.5, eval_every_kimg=0.25, fid_samples=64)
    metrics = pd.DataFrame([{"kimg": 0.25, "fid": 12.0, "domain_classifier_sha": FASHION_ID},
                            {"kimg": 0.5, "fid": 10.0, "domain_classifier_sha": FASHION_ID}])
    cell = {"config": cfg, "trial_id": "t", "seed": 1}
    assert row_of(cell, metrics)["domain_classifier_sha"] == FASHION_ID
    assert row_of(cell, metrics.drop(columns="domain_classifier_sha"))["domain_classifier_sha"] is None  # legacy
