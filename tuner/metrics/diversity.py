"""Class-diversity metrics of generated samples, from a domain classifier's softmax.

FID mixes quality and diversity into one number; these separate out mode collapse:

- `class_hist`      share of samples whose argmax prediction is each class (sums to 1).
- `classes_covered` number of classes holding a share >= 0.5 / C, i.e. at least half of the share
                    a perfectly balanced generator would give them (C = 10: >= 5% of the samples).
- `kl_uniform`      KL(class_hist || uniform) in nats: 0 = perfectly balanced, ln C = one class only.
- `class_is`        the Inception-Score analogue exp(E_x KL(p(y|x) || p(y))) with p(y) = E_x p(y|x):
                    1 = all samples predicted alike, C = confident predictions spread evenly.

All come from the classifier of one dataset (`DomainBackbone.probabilities`); compare them only
between runs that used the same classifier.
"""

from __future__ import annotations

import numpy as np

COVERED_FRACTION = 0.5
"""A class counts as covered when its share is >= COVERED_FRACTION / C."""


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y) with 0 * log(anything) = 0."""
    out = np.zeros(np.broadcast(x, y).shape, dtype=np.float64)
    mask = np.broadcast_to(x > 0, out.shape)
    xb, yb = np.broadcast_to(x, out.shape), np.broadcast_to(y, out.shape)
    out[mask] = xb[mask] * np.log(yb[mask])
    return out


def diversity_metrics(probs: np.ndarray) -> dict:
    """class_hist, classes_covered, kl_uniform, class_is of class probabilities (N, C)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"invalid probs: shape {p.shape}, allowed (N, C) with N >= 1, C >= 2")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("invalid probs: allowed finite, non-negative rows that sum to 1 (softmax outputs)")
    n, c = p.shape
    hist = np.bincount(p.argmax(axis=1), minlength=c) / n
    kl_uniform = float(_xlogy(hist, hist * c).sum())
    marginal = p.mean(axis=0)
    kl_per_sample = (_xlogy(p, p) - _xlogy(p, marginal[None, :])).sum(axis=1)
    return {
        "class_hist": [float(h) for h in hist],
        "classes_covered": int((hist >= COVERED_FRACTION / c).sum()),
        "kl_uniform": kl_uniform,
        "class_is": float(np.exp(kl_per_sample.mean())),
    }
