"""The training steps' batch draw: by index on the trial's generator, scaled for the family."""

import torch

from tuner import data
from tuner.training.steps import sample_batch


def test_sample_batch_is_deterministic_and_scaled(idx_mnist):
    images = data.training_images("mnist", torch.device("cpu"))
    a = sample_batch(images, 16, torch.Generator().manual_seed(3), "tanh")
    b = sample_batch(images, 16, torch.Generator().manual_seed(3), "tanh")
    assert torch.equal(a, b) and a.shape == (16, 1, 28, 28)
    assert a.min() >= -1 and a.max() <= 1
    u = sample_batch(images, 16, torch.Generator().manual_seed(3), "unit")
    assert torch.allclose(u * 2 - 1, a)  # float32 x/255*2-1 vs x/127.5-1: a few eps32 apart (rtol 1e-5)
