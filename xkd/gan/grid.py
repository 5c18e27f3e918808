"""The GAN's sample grid (``samples.png``): one row per class, or a sweep of 8 equally spaced
labels over the training range for regression, de-normalised with the dataset's mean/std."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from xkd.io import write_bytes


def grid_labels(generator: nn.Module, rows: int = 8, max_classes: int = 20) -> tuple[torch.Tensor, list[str]]:
    """Row labels of the grid: classes 0..K-1 (at most ``max_classes``) or a label sweep."""
    arch = generator.arch
    if arch["task"] == "classification":
        k = min(arch["num_classes"], max_classes)
        return torch.arange(k), [f"class {c}" for c in range(k)]
    ys = torch.linspace(arch["label_lo"], arch["label_hi"], rows)
    return ys, [f"y = {float(y):.3g}" for y in ys]


def save_sample_grid(generator: nn.Module, path: str | Path, mean: Sequence[float],
                     std: Sequence[float], seed: int = 0, per_row: int = 8,
                     device: torch.device | str = "cpu") -> None:
    """Write a PNG grid of generated images (rows = labels, ``per_row`` samples each), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xkd.gan.training import generate

    row_labels, names = grid_labels(generator)
    labels = row_labels.repeat_interleave(per_row)
    imgs = generate(generator, labels, seed=seed, device=device)
    c = imgs.shape[1]
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)
    imgs = (imgs * s + m).clamp(0, 1)
    rows, h, w = len(row_labels), imgs.shape[2], imgs.shape[3]
    tiled = imgs.view(rows, per_row, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, per_row * w, c)
    fig, ax = plt.subplots(figsize=(1.0 + per_row * 0.7, 0.4 + rows * 0.7))
    ax.imshow(tiled.squeeze(-1).numpy() if c == 1 else tiled.numpy(),
              cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * h for i in range(rows)])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xticks([])
    ax.set_title("GAN samples (EMA generator)", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
