"""Figures: image grids (generated beside real) and 2-D scatter plots, written as PNG (to a local path
or a gs:// URL, through `jaxgen.paths`)."""

from __future__ import annotations

import numpy as np

from jaxgen import paths


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> one (rows*(H+pad), cols*(W+pad), C) array in [0, 1]."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_samples_figure(path: str, generated: np.ndarray, real: np.ndarray, title: str = "",
                        ncols: int | None = None, max_images: int | None = 64) -> None:
    """Generated samples (left) beside real data (right): images (the first `max_images` of each, in grids
    of `ncols` columns; None: all, square grid) or 2-D points."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, x, name in zip(axes, (generated, real), ("generated", "real")):
        x = np.asarray(x)
        if x.ndim == 4:
            g = image_grid(x[:max_images], ncols=ncols)
            ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray" if g.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.axis("off")
        else:
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
            ax.set_aspect("equal")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths.save_figure(fig, path, dpi=100)
    plt.close(fig)
