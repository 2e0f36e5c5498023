"""Metric assets computed once on the driver and shipped to every trial.

The domain classifier and the real-image statistics are computed once per dataset, backbone and
sample count, on the driver, before Ray starts (so a missing dataset fails there, not in every
trial). Their cache files travel to the workers through Ray's object store
(`tune.with_parameters`), and each worker writes them into its own cache folder, so a trial on
another node never retrains the classifier or recomputes the statistics.
"""

from __future__ import annotations


from tuner.config.atomic import write_whole
from tuner.config import TrainConfig
from tuner.data import cache_root, load_split, resolve_mirror

ASSET_FOLDERS = ("domain", "stats")


def prepare_assets(cfg: TrainConfig) -> dict[str, bytes]:
    """Make sure the cache holds what trials of `cfg` need; return those files as {relpath: bytes}."""
    from tuner.metrics.backbones import get_backbone
    from tuner.metrics.fid import real_statistics

    mirror = resolve_mirror(cfg.data_mirror)
    for split in ("train", "test"):
        load_split(cfg.dataset, split, mirror)
    root = cache_root(cfg.cache_dir)
    for name in dict.fromkeys((cfg.fid_backbone, "domain")):
        backbone = get_backbone(name, cfg.dataset, device="cpu", cache_dir=cfg.cache_dir, mirror=mirror,
                                classifier=cfg.domain_classifier)
        if name == cfg.fid_backbone:
            real_statistics(cfg.dataset, "test", backbone, cfg.fid_samples, mirror=mirror, cache_dir=cfg.cache_dir)
    assets = {}
    for folder in ASSET_FOLDERS:
        for path in sorted((root / folder).glob(f"*{cfg.dataset}*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                assets[str(path.relative_to(root))] = path.read_bytes()
    return assets


def install_assets(assets: dict[str, bytes], cache_dir: str | None) -> None:
    """Write the shipped cache files that this machine's cache lacks (atomically)."""
    root = cache_root(cache_dir)
    for rel, data in assets.items():
        target = root / rel
        if target.is_file() and target.stat().st_size == len(data):
            continue
        write_whole(target, lambda tmp: tmp.write_bytes(data))
