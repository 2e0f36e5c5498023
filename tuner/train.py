"""Train one config without Ray: `python -m tuner.train --family gan --loss hinge --out runs/demo`.

Every flag is a field of tuner.config.TrainConfig (see --help). Prints one line per evaluation, with a
progress bar over kimg on a terminal or a plain progress line every tenth of the budget elsewhere, and
writes OUT/config.json, OUT/metrics.jsonl, OUT/samples/*.png and OUT/checkpoint/checkpoint.pt.
`--resume` continues from OUT/checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuner.config.cli import ArgumentParser, add_arguments, from_namespace
from tuner.config import ConfigError, TrainConfig, untyped_defaults
from tuner.config.paths import cache_folder, output_folder


def format_record(record: dict) -> str:
    if record.get("checkpoint_only"):
        return f"kimg {record['checkpoint_kimg']:7.2f}  checkpoint"
    if record.get("diverged"):
        return f"kimg {record['kimg']:7.2f}  DIVERGED: {record['diverge_reason']}"
    parts = [f"kimg {record['kimg']:7.2f}", f"fid[{record['fid_backbone']}] {record['fid']:9.3f}"]
    if "fid_ema" in record:  # --g-ema: the EMA of G, same backbone and samples
        parts.append(f"fid_ema {record['fid_ema']:.3f}")
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "loss", "recon", "kl", "elbo", "classes_covered"):
        if key in record:
            parts.append(f"{key} {record[key]:.4g}")
    parts.append(f"{record['img_per_s']:.0f} img/s")
    return "  ".join(parts)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tuner.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder of this run")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/checkpoint.pt")
    add_arguments(p, TrainConfig, "config (tuner.config.TrainConfig)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
        cfg = from_namespace(TrainConfig, args, **untyped_defaults({}, given))
        output_folder("out", args.out)
        cache_folder(cfg.cache_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tuner.data import DataError
    from tuner.training.checkpoint import CHECKPOINT_NAME, CheckpointError
    from tuner.training.loop import train

    out = Path(args.out)
    resume = out / "checkpoint" if args.resume else None
    if resume is not None and not (resume / CHECKPOINT_NAME).is_file():
        print(f"error: --resume: no checkpoint at {resume / CHECKPOINT_NAME}", file=sys.stderr)
        return 2
    print(f"training {cfg.family}/{cfg.arch} on {cfg.dataset} for {cfg.max_kimg} kimg -> {out}", flush=True)
    from tuner.training.progress import KimgProgress

    progress = KimgProgress(cfg.max_kimg)  # a bar on a terminal, plain lines in logs and CI
    try:
        history = train(cfg, out, report=lambda record, _: progress.write(format_record(record)), resume_from=resume,
                        progress=progress)
    except (DataError, CheckpointError) as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress.close()
    finite = [r["fid"] for r in history if not r.get("diverged")]
    if finite:
        print(f"done: best fid[{cfg.fid_backbone}] {min(finite):.3f}; metrics in {out / 'metrics.jsonl'}, grids in {out / 'samples'}")
    return 1 if history and history[-1].get("diverged") else 0


if __name__ == "__main__":
    sys.exit(main())
