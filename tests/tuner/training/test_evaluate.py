"""Sample grids: gentune's own PNG writer against torchvision's save_image, the reference it replaces."""

from __future__ import annotations

import pytest
import torch

from tuner.training.evaluate import save_grid


@pytest.mark.parametrize("n, nrow", [(64, 8), (10, 10), (3, 8), (13, 5)])  # full, one row, short row, ragged last row
def test_grid_is_the_file_torchvision_writes(tmp_path, n, nrow):
    import torchvision

    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    images[0] = torch.arange(256 * 4, dtype=torch.int64).remainder(256).reshape(-1)[:784].reshape(28, 28).to(torch.uint8)
    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs.png"
    save_grid(images, ours, nrow=nrow)
    torchvision.utils.save_image(images.unsqueeze(1).float() / 255, theirs, nrow=nrow, padding=2, pad_value=1.0)
    assert ours.read_bytes() == theirs.read_bytes()
