"""Metrics against closed forms and independent slow computations (scipy, linprog, loops)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats

from jaxgen import metrics
from jaxgen.metrics import (codebook_usage, feature_stats, frechet_distance,
                            frechet_distance_from_features, mmd, perplexity, sliced_wasserstein,
                            wasserstein2_1d_squared)


# ---------------------------------------------------------------- sliced Wasserstein

def _exact_w2sq_lp(u, v):
    """W2^2 between 1-D empirical measures by solving the transport linear program."""
    n, m = len(u), len(v)
    cost = (u[:, None] - v[None, :]) ** 2
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m:(i + 1) * m] = 1.0
    for j in range(m):
        a_eq[n + j, j::m] = 1.0
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    res = scipy.optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                                 method="highs")
    assert res.success
    return res.fun


@pytest.mark.parametrize("n,m", [(5, 5), (5, 7), (6, 4), (3, 10)])
def test_w2_1d_matches_linear_program(n, m):
    rng = np.random.default_rng(n * 100 + m)
    u, v = rng.normal(size=(3, n)), rng.normal(1.0, 2.0, size=(3, m))
    with jax.enable_x64(True):
        got = np.asarray(wasserstein2_1d_squared(jnp.asarray(u), jnp.asarray(v)))
    want = np.array([_exact_w2sq_lp(u[k], v[k]) for k in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_sliced_wasserstein_1d_gaussians_closed_form():
    # In 1-D the directions are +-1, so SW2 is W2 itself: W2^2 = (m1 - m2)^2 + (s1 - s2)^2.
    n = 4000
    q = scipy.stats.norm.ppf((np.arange(n) + 0.5) / n)  # exact quantiles, then shuffled
    rng = np.random.default_rng(0)
    m1, s1, m2, s2 = 0.3, 1.0, -0.5, 2.0
    x = (m1 + s1 * rng.permutation(q))[:, None]
    y = (m2 + s2 * rng.permutation(q))[:, None]
    with jax.enable_x64(True):
        sw = float(sliced_wasserstein(jnp.asarray(x), jnp.asarray(y), jax.random.key(0), 8))
    want = (m1 - m2) ** 2 + (s1 - s2) ** 2
    # the discrete quantile grid misses a little of the tails' mass: about 1e-3 relative at n=4000
    assert abs(sw ** 2 - want) < 3e-3 * want, (sw ** 2, want)
    # random samples, unequal sizes: within sampling error
    x = rng.normal(m1, s1, size=(30000, 1))
    y = rng.normal(m2, s2, size=(20000, 1))
    sw = float(sliced_wasserstein(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                  jax.random.key(1), 4))
    assert abs(sw ** 2 - want) < 0.03 * want, (sw ** 2, want)


def test_sliced_wasserstein_isotropic_gaussians_closed_form():
    # theta . x ~ N(theta . m1, s1^2) for unit theta, so W2^2 = (theta . dm)^2 + (s1 - s2)^2,
    # and E[(theta . dm)^2] = |dm|^2 / d for theta uniform on the sphere (E[theta theta^T] = I / d).
    # Checked in two parts: the scale part holds for every direction (tight), the mean part on
    # average over directions (its projection noise is ~ sqrt((d - 1) / (d + 2) * 2 / P) relative).
    rng = np.random.default_rng(1)
    d, n = 3, 3000
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    sw = float(sliced_wasserstein(jnp.asarray(z1, jnp.float32), jnp.asarray(0.4 * z2, jnp.float32),
                                  jax.random.key(0), num_projections=64))
    assert abs(sw ** 2 - 0.6 ** 2) < 0.03 * 0.6 ** 2, sw ** 2

    dm = np.array([2.0, -1.0, 0.5])
    x = rng.normal(size=(n // 10, d))  # exact for any cloud size: only the number of projections matters
    sw = float(sliced_wasserstein(jnp.asarray(x, jnp.float32), jnp.asarray(x + dm, jnp.float32),
                                  jax.random.key(1), num_projections=4000))
    want = np.sum(dm ** 2) / d  # same cloud shifted: every 1-D W2^2 is exactly (theta . dm)^2
    assert abs(sw ** 2 - want) < 0.05 * want, (sw ** 2, want)


def test_sliced_wasserstein_zero_and_jit():
    x = jax.random.normal(jax.random.key(0), (100, 3))
    perm = jax.random.permutation(jax.random.key(1), 100)
    sw = jax.jit(sliced_wasserstein, static_argnames="num_projections")(
        x, x[perm], jax.random.key(2), num_projections=16)
    assert float(sw) < 1e-6
    # the same cloud listed twice is the same measure
    assert float(sliced_wasserstein(x, jnp.concatenate([x, x]), jax.random.key(2), 16)) < 1e-6
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(x, x[:, :2], jax.random.key(0))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(x, x, jax.random.key(0), num_projections=0)


# ---------------------------------------------------------------- MMD

def _mmd_slow(x, y, bandwidths):
    def k(a, b):
        return sum(math.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_mmd_matches_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 2)), rng.normal(0.5, 1.0, size=(9, 2))
    bw = (0.5, 1.0, 2.0)
    with jax.enable_x64(True):
        got = float(mmd(jnp.asarray(x), jnp.asarray(y), bandwidths=bw))
    np.testing.assert_allclose(got, _mmd_slow(x, y, bw), rtol=1e-10)


def _mmd2_gaussians(delta, s, d, bandwidths):
    """Population MMD^2 between N(mu1, s^2 I) and N(mu1 + delta, s^2 I) for the RBF-sum kernel.

    For z ~ N(m, v I_d): E exp(-|z|^2 / (2 h^2)) = (h^2 / (h^2 + v))^(d/2) exp(-|m|^2 / (2 (h^2 + v))),
    and x - x' ~ N(0, 2 s^2 I), x - y ~ N(-delta, 2 s^2 I).
    """
    v = 2 * s * s
    return sum(2 * (h * h / (h * h + v)) ** (d / 2)
               * (1 - math.exp(-np.sum(np.square(delta)) / (2 * (h * h + v))))
               for h in bandwidths)


@pytest.mark.parametrize("seed,delta", [(0, (0.0, 0.0)), (1, (1.0, 0.0)), (2, (0.3, -0.4))])
def test_mmd_is_unbiased_against_gaussian_closed_form(seed, delta):
    reps, n, s = 64, 150, 1.0
    kx, ky = jax.random.split(jax.random.key(seed))
    x = s * jax.random.normal(kx, (reps, n, 2))
    y = s * jax.random.normal(ky, (reps, n + 10, 2)) + jnp.asarray(delta)
    est = np.asarray(jax.jit(jax.vmap(mmd))(x, y), np.float64)
    want = _mmd2_gaussians(np.asarray(delta), s, 2, (0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
    se = est.std(ddof=1) / math.sqrt(reps)
    assert abs(est.mean() - want) < 4 * se + 1e-4, (est.mean(), want, se)
    if want == 0:
        assert est.min() < 0  # unbiased: estimates scatter on both sides of 0
    else:
        assert want > 10 * se and est.min() > 0


def test_mmd_rejects_tiny_sets():
    with pytest.raises(ValueError, match="at least 2"):
        mmd(jnp.zeros((1, 2)), jnp.zeros((5, 2)))


# ---------------------------------------------------------------- Fréchet

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want,
                               rtol=1e-12)


def test_frechet_random_spd_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    d = 20
    for _ in range(3):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, 2 * d))
        c1, c2 = a @ a.T / d + 1e-3 * np.eye(d), b @ b.T / (2 * d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        covmean = scipy.linalg.sqrtm(c1 @ c2)
        want = (np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(np.real(covmean)))
        np.testing.assert_allclose(frechet_distance(mu1, c1, mu2, c2), want, rtol=1e-9)
    # rank-deficient covariance (fewer samples than features) still works
    f = rng.normal(size=(5, d))
    mu, cov = feature_stats(f)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9 * np.trace(cov)


def test_frechet_rank_deficient_matches_the_symmetric_square_root():
    """Covariances of fewer samples than features: the pivoted Cholesky factor has the samples' rank and
    reproduces C1, and the distance equals the definition's, tr sqrt(C1^(1/2) C2 C1^(1/2)) with C1^(1/2) from an
    eigendecomposition (eigenvalues below d eps max|w|, round-off of zeros, set to 0: their square roots would add
    ~1e-8 each)."""
    from jaxgen.metrics.frechet import _psd_factor

    def clipped(w):
        return np.where(w > len(w) * np.finfo(np.float64).eps * np.abs(w).max(), w, 0.0)

    rng = np.random.default_rng(4)
    d = 40
    mix = rng.normal(size=(d, d)) * np.exp(-np.arange(d) / 10)
    for n1, n2 in ((7, 200), (7, 12)):
        mu1, c1 = feature_stats(rng.normal(size=(n1, d)) @ mix.T)
        mu2, c2 = feature_stats(rng.normal(size=(n2, d)) @ mix.T + 0.5)
        s = _psd_factor(c1)
        assert s.shape == (d, n1 - 1)
        np.testing.assert_allclose(s @ s.T, c1, atol=1e-12 * np.abs(c1).max())
        w, v = np.linalg.eigh(c1)
        root = (v * np.sqrt(clipped(w))) @ v.T
        middle = clipped(np.linalg.eigvalsh(root @ c2 @ root))
        want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(middle))
        np.testing.assert_allclose(frechet_distance(mu1, c1, mu2, c2), want, rtol=1e-10)
    # a point mass (rank 0) against N(mu2, C2): |mu1 - mu2|^2 + tr C2, in either order
    np.testing.assert_allclose(frechet_distance(mu1, np.zeros((d, d)), mu2, c2), np.sum((mu1 - mu2) ** 2) + np.trace(c2),
                               rtol=1e-12)
    np.testing.assert_allclose(frechet_distance(mu2, c2, mu1, np.zeros((d, d))), np.sum((mu1 - mu2) ** 2) + np.trace(c2),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(mu1, np.where(np.eye(d) > 0, np.nan, c1), mu2, c2)


def test_feature_stats_and_from_features():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(500, 4)), rng.normal(1.0, 2.0, size=(400, 4))
    mu, cov = feature_stats(f1)
    np.testing.assert_allclose(mu, f1.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f1, rowvar=False), rtol=1e-10)
    want = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0),
                            np.cov(f2, rowvar=False))
    np.testing.assert_allclose(frechet_distance_from_features(f1, f2), want, rtol=1e-12)
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- classifier features

def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [-1, 1]
    perm = np.random.default_rng(0).permutation(len(x))
    te, tr = perm[:360], perm[360:]
    return x[tr], d.target[tr], x[te], d.target[te]


def test_classifier_features_digits_accuracy_and_cache(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = _digits()
    small = dict(num_steps=100, width=16)  # 0.98 test accuracy (0.99 at 200 steps, 0.93 at 60) at a sixth of the default's cost
    extractor, acc = metrics.classifier_features("digits", xtr, ytr, xte, yte, cache_dir=tmp_path, **small)
    assert acc >= 0.95, acc
    assert isinstance(extractor, metrics.FeatureExtractor)
    # accuracy recomputed independently from the logits
    assert acc == np.mean(extractor.logits(xte).argmax(-1) == yte)
    feats = extractor(xte)
    assert feats.shape == (len(xte), extractor.feature_dim) and np.isfinite(feats).all()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("classifier_digits_")  # no temp leftovers

    # second call: loaded from the cache, no training
    def fail(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(metrics.features, "train_classifier", fail)
    extractor2, acc2 = metrics.classifier_features("digits", xtr, ytr, xte, yte, cache_dir=tmp_path, **small)
    assert acc2 == acc
    np.testing.assert_array_equal(extractor2(xte), feats)
    # real digits are far closer to each other than to noise in this feature space
    noise = np.random.default_rng(0).uniform(-1, 1, xte.shape).astype(np.float32)
    fd_real = frechet_distance_from_features(extractor(xtr), feats)
    fd_noise = frechet_distance_from_features(extractor(noise), feats)
    assert fd_real < 0.1 * fd_noise, (fd_real, fd_noise)
    # different data -> a different cache entry (training would be needed, and is refused here)
    with pytest.raises(AssertionError, match="retrained"):
        metrics.classifier_features("digits", xtr[:-1], ytr[:-1], xte, yte, cache_dir=tmp_path, **small)


def test_classifier_features_rejects_bad_input(tmp_path):
    x = np.zeros((10, 8, 8, 1), np.float32)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="train_labels"):
        metrics.classifier_features("d", x, y[:5], x, y, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="test_images"):
        metrics.classifier_features("d", x, y, x[..., :1, :], y, cache_dir=tmp_path)


# ---------------------------------------------------------------- codebook

def test_codebook_usage_and_perplexity():
    idx = np.array([0, 0, 1, 3, 3, 3, 7])
    assert float(codebook_usage(idx, 8)) == pytest.approx(4 / 8)
    counts = np.bincount(idx, minlength=8)
    want = math.exp(scipy.stats.entropy(counts / counts.sum()))
    assert float(perplexity(jnp.asarray(idx), 8)) == pytest.approx(want, rel=1e-6)
    assert float(perplexity(np.arange(16).reshape(4, 4), 16)) == pytest.approx(16.0, rel=1e-6)
    assert float(perplexity(np.full(10, 5), 16)) == pytest.approx(1.0)
    assert float(jax.jit(codebook_usage, static_argnums=1)(jnp.arange(4), 4)) == 1.0
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_usage(idx, 0)
