"""2-D toy distributions for fast CPU experiments, sampled with NumPy.

Every distribution is centred and isotropically rescaled so that its mean is 0 and its
average per-coordinate variance is 1 (E||x||^2 = 2); one scalar is used for both coordinates
so the shape is not distorted. The centring and scaling constants are the exact moments of
the un-normalised distribution (closed form or Gauss-Legendre quadrature), not empirical
ones, so every draw uses the same map.

- ``gmm_grid``: 25 isotropic Gaussians on the 5x5 grid {-2..2}^2 (spacing 1, std 0.1 before
  scaling), equal weights; label = component index (row-major over (i, j)).
  ``gmm_grid_params()`` gives the exact mixture for oracle denoisers.
- ``two_moons``: the two interleaved half circles of scikit-learn's ``make_moons``
  (upper (cos t, sin t), lower (1 - cos t, 1/2 - sin t), t ~ U[0, pi]) plus N(0, 0.1^2)
  noise; label = moon (0 upper, 1 lower).
- ``checkerboard``: uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (square
  (floor x, floor y) is dark when floor x + floor y is even); no labels.
- ``swiss_roll``: (t cos t, t sin t) with t = 1.5 pi (1 + 2u), u ~ U[0, 1], plus
  N(0, 0.3^2) noise; no labels.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

TOY_NAMES = ("gmm_grid", "two_moons", "checkerboard", "swiss_roll")
TOY_NUM_CLASSES = {"gmm_grid": 25, "two_moons": 2, "checkerboard": None, "swiss_roll": None}

_GRID_STD = 0.1  # component std in grid units (spacing 1)
_MOONS_NOISE = 0.1
_ROLL_NOISE = 0.3
_ROLL_T = (1.5 * np.pi, 4.5 * np.pi)


def _check_name(name: str) -> None:
    if name not in TOY_NAMES:
        raise ValueError(f"toy name must be one of {TOY_NAMES}, got {name!r}")


@functools.cache
def _moments(name: str) -> tuple[np.ndarray, float]:
    """(mean (2,), scale) of the un-normalised distribution; scale^2 = tr(Cov) / 2."""
    if name == "gmm_grid":
        # Grid coordinate uniform on {-2..2}: variance (4 + 1 + 0 + 1 + 4) / 5 = 2.
        return np.zeros(2), float(np.sqrt(2.0 + _GRID_STD**2))
    if name == "checkerboard":
        # Both marginals are U[-2, 2]: variance 16 / 12.
        return np.zeros(2), float(np.sqrt(16.0 / 12.0))
    if name == "two_moons":
        # Half the mass on each moon, t ~ U[0, pi]: E cos t = 0, E sin t = 2/pi, E cos^2 = E sin^2 = 1/2.
        mean = np.array([0.5, 0.25])
        var_x = 0.75  # E x^2 = (1/2 + 3/2) / 2 = 1, minus 1/4
        var_y = 0.5625 - 1.0 / np.pi  # E y^2 = (1/2 + 3/4 - 2/pi) / 2, minus 1/16
        return mean, float(np.sqrt((var_x + var_y) / 2 + _MOONS_NOISE**2))
    if name == "swiss_roll":
        # Moments of (t cos t, t sin t), t ~ U[a, b], by 64-point Gauss-Legendre (smooth integrand).
        a, b = _ROLL_T
        nodes, weights = np.polynomial.legendre.leggauss(64)
        t = 0.5 * (b - a) * nodes + 0.5 * (b + a)
        w = 0.5 * weights  # averages over U[a, b]: sum(w) = 1
        xy = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)
        mean = w @ xy
        var = w @ (xy - mean) ** 2
        return mean, float(np.sqrt(var.mean() + _ROLL_NOISE**2))
    raise AssertionError(name)


def gmm_grid_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ``gmm_grid`` mixture after normalisation: (weights (25,), means (25, 2), stds (25,)).

    p(x) = sum_k w_k N(x; mu_k, s_k^2 I), float64, in the order of the labels.
    """
    mean, scale = _moments("gmm_grid")
    grid = np.arange(-2.0, 3.0)
    means = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(25, 2)
    return np.full(25, 1 / 25), (means - mean) / scale, np.full(25, _GRID_STD / scale)


def _sample_raw(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    if name == "gmm_grid":
        weights, means, stds = gmm_grid_params()
        labels = rng.integers(0, len(weights), size=n)
        x = means[labels] + stds[labels, None] * rng.standard_normal((n, 2))
        return x, labels  # already normalised
    if name == "two_moons":
        labels = rng.integers(0, 2, size=n)
        t = rng.uniform(0.0, np.pi, size=n)
        upper = np.stack([np.cos(t), np.sin(t)], axis=-1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=-1)
        x = np.where(labels[:, None] == 0, upper, lower) + _MOONS_NOISE * rng.standard_normal((n, 2))
        return x, labels
    if name == "checkerboard":
        x0 = rng.uniform(-2.0, 2.0, size=n)
        # Column floor(x0) is dark in rows {-2, 0} when even and {-1, 1} when odd.
        x1 = rng.uniform(0.0, 1.0, size=n) + rng.choice([-2.0, 0.0], size=n) + np.mod(np.floor(x0), 2)
        return np.stack([x0, x1], axis=-1), None
    if name == "swiss_roll":
        t = _ROLL_T[0] + (_ROLL_T[1] - _ROLL_T[0]) * rng.uniform(size=n)
        x = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) + _ROLL_NOISE * rng.standard_normal((n, 2))
        return x, None
    raise AssertionError(name)


def sample_toy(name: str, n: int, rng, *, with_labels: bool = False, dtype=np.float32):
    """Draw ``n`` points (n, 2) from the normalised toy distribution ``name``.

    ``rng`` is a ``np.random.Generator`` or anything ``np.random.default_rng`` accepts (an int
    seed). With ``with_labels=True`` returns ``(x, labels)``, labels int32 (n,) or None for
    unlabelled distributions. The result is (x_raw - mean) / scale with the exact moments of
    the raw distribution (see the module docstring).
    """
    _check_name(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(rng)
    x, labels = _sample_raw(name, int(n), rng)
    if name != "gmm_grid":
        mean, scale = _moments(name)
        x = (x - mean) / scale
    x = x.astype(dtype)
    if not with_labels:
        return x
    return x, None if labels is None else labels.astype(np.int32)


def toy_split(name: str, split: str, num_examples: int) -> dict[str, np.ndarray]:
    """The fixed toy data set for ``split``: 'train' and 'test' are independent draws.

    Seeds are fixed (split id, crc32 of the name), independent of the training seed, so
    ``load_split`` and the train iterator see the same points in every run and process.
    """
    _check_name(name)
    split_ids = {"train": 0, "test": 1}
    if split not in split_ids:
        raise ValueError(f"split for toy data set {name!r} must be one of {tuple(split_ids)}, got {split!r}")
    rng = np.random.default_rng([split_ids[split], zlib.crc32(name.encode())])
    x, labels = sample_toy(name, num_examples, rng, with_labels=True)
    out = {"x": x}
    if labels is not None:
        out["label"] = labels
    return out
