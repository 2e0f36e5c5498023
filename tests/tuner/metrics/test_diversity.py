import math

import numpy as np
import pytest

from tuner.metrics.diversity import diversity_metrics

# Tolerances: everything here is float64 math on fixed inputs (no network, no float32), over at most
# 50 x 10 numbers: sums and logs carry at most ~50 eps64 ~ 1e-14 of round-off on any CPU (numpy's
# SIMD log/exp differ between ISAs by a few ulps, ~1e-15), so 1e-12 holds with a 100x margin.


def one_hot(labels, num_classes):
    return np.eye(num_classes)[np.asarray(labels)]


@pytest.mark.parametrize("num_classes", [2, 10])
def test_balanced_one_hot_predictions(num_classes):
    probs = one_hot(np.arange(5 * num_classes) % num_classes, num_classes)
    m = diversity_metrics(probs)
    assert m["class_hist"] == pytest.approx([1 / num_classes] * num_classes, abs=1e-12)
    assert m["classes_covered"] == num_classes
    assert m["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert m["class_is"] == pytest.approx(num_classes, rel=1e-12)


def test_all_one_class():
    m = diversity_metrics(one_hot([3] * 40, 10))
    assert m["class_hist"] == pytest.approx([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], abs=1e-12)
    assert m["classes_covered"] == 1
    assert m["kl_uniform"] == pytest.approx(math.log(10), rel=1e-12)
    assert m["class_is"] == pytest.approx(1.0, rel=1e-12)


def test_two_of_four_classes():
    m = diversity_metrics(one_hot([0, 1] * 10, 4))
    assert m["class_hist"] == pytest.approx([0.5, 0.5, 0, 0], abs=1e-12)
    assert m["classes_covered"] == 2
    assert m["kl_uniform"] == pytest.approx(math.log(2), rel=1e-12)  # sum 0.5 ln(0.5 * 4)
    assert m["class_is"] == pytest.approx(2.0, rel=1e-12)  # exp(H(p(y))) for confident predictions


def test_coverage_threshold_is_half_the_uniform_share():
    # C = 4: threshold share 0.125. Shares 0.45, 0.425, 0.125, 0.0 -> 3 covered; 0.1 would not count.
    labels = [0] * 18 + [1] * 17 + [2] * 5
    assert diversity_metrics(one_hot(labels, 4))["classes_covered"] == 3
    labels = [0] * 18 + [1] * 18 + [2] * 4  # share 0.1 < 0.125
    assert diversity_metrics(one_hot(labels, 4))["classes_covered"] == 2


def test_uncertain_predictions_give_inception_score_one():
    probs = np.full((30, 10), 0.1)
    probs[:, 0] += 1e-3  # argmax 0 everywhere, but p(y|x) = p(y): no information
    probs /= probs.sum(1, keepdims=True)
    m = diversity_metrics(probs)
    assert m["class_is"] == pytest.approx(1.0, abs=1e-12)
    assert m["classes_covered"] == 1


def test_soft_predictions_match_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    marginal = probs.mean(0)
    expected = math.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(marginal)), axis=1)))
    assert diversity_metrics(probs)["class_is"] == pytest.approx(expected, rel=1e-12)
    assert sum(diversity_metrics(probs)["class_hist"]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad", [np.ones(10) / 10, np.ones((5, 1)), np.full((5, 3), 0.5), -np.eye(3)])
def test_rejects_non_probabilities(bad):
    with pytest.raises(ValueError, match="probs"):
        diversity_metrics(bad)
