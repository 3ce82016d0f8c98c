"""VQ against NumPy: nearest code, STE and loss gradients, EMA update formula, metrics, restarts, init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgen.quant import (
    EMAState,
    VectorQuantizer,
    batch_init,
    code_counts,
    ema_codebook,
    ema_codebook_update,
    kmeans_plusplus_init,
    nearest_code,
    perplexity_from_counts,
    restart_dead_codes,
    usage_from_counts,
    vector_quantize,
)


def rand(shape, seed, scale=1.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(np.float32)


def np_nearest(z, e):
    d = ((z[:, None, :].astype(np.float64) - e[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(-1)


def test_nearest_code_matches_numpy():
    z, e = rand((2, 50, 6), 0), rand((37, 6), 1)
    idx = jax.jit(nearest_code)(jnp.asarray(z), jnp.asarray(e))
    assert idx.shape == (2, 50) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(idx).reshape(-1), np_nearest(z.reshape(-1, 6), e))
    # cosine: argmax of normalised dot products
    zf = z.reshape(-1, 6).astype(np.float64)
    cos = (zf / np.linalg.norm(zf, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(np.asarray(nearest_code(jnp.asarray(z), jnp.asarray(e), cosine=True)).reshape(-1),
                                  cos.argmax(-1))
    # bf16 input: assignment computed in float32 on the bf16 values
    z16 = jnp.asarray(z, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(nearest_code(z16, jnp.asarray(e))).reshape(-1),
                                  np_nearest(np.asarray(z16.astype(jnp.float32)).reshape(-1, 6), e))


def test_vector_quantize_forward_losses_and_gradients():
    N, K, D, beta = 40, 9, 5, 0.25
    z, e = rand((N, D), 2), rand((K, D), 3)
    k = np_nearest(z, e)
    w = rand((N, D), 4)

    def objective(z, e):
        out = vector_quantize(z, e, beta=beta)
        return jnp.sum(out.z_q * w) + out.loss, out

    (_, out), (gz, ge) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(jnp.asarray(z), jnp.asarray(e))
    np.testing.assert_array_equal(np.asarray(out.indices), k)
    np.testing.assert_allclose(np.asarray(out.z_q), e[k], atol=1e-6)
    sq = ((z.astype(np.float64) - e[k]) ** 2).mean()
    np.testing.assert_allclose(float(out.codebook_loss), sq, rtol=1e-5)
    np.testing.assert_allclose(float(out.commitment_loss), sq, rtol=1e-5)
    np.testing.assert_allclose(float(out.loss), (1 + beta) * sq, rtol=1e-5)
    # z: identity through z_q (STE) + beta d/dz mean||z - sg(e)||^2; codebook: d/de mean||sg(z) - e||^2 only
    gz_ref = w + beta * 2 * (z - e[k]) / (N * D)
    ge_ref = np.zeros((K, D))
    np.add.at(ge_ref, k, 2 * (e[k] - z) / (N * D))
    np.testing.assert_allclose(np.asarray(gz), gz_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ge), ge_ref, rtol=1e-5, atol=1e-7)


def test_cosine_quantize_outputs_unit_codes():
    z, e = rand((30, 4), 5, 3.0), rand((8, 4), 6, 0.1)
    out = vector_quantize(jnp.asarray(z), jnp.asarray(e), cosine=True)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out.z_q), en[np.asarray(out.indices)], atol=1e-6)


def test_ema_update_matches_formula_loop():
    K, D, decay, eps = 6, 3, 0.9, 1e-5
    rng = np.random.default_rng(7)
    N0, M0 = rng.uniform(0.5, 2.0, K), rng.normal(size=(K, D))
    z = rng.normal(size=(25, D))
    idx = rng.integers(0, K - 1, 25)  # code K-1 unused: its count decays, Laplace smoothing keeps it finite
    N1, M1 = np.empty(K), np.empty((K, D))
    for k in range(K):
        sel = idx == k
        N1[k] = decay * N0[k] + (1 - decay) * sel.sum()
        M1[k] = decay * M0[k] + (1 - decay) * z[sel].sum(0)
    n = N1.sum()
    e_ref = M1 / ((N1 + eps) / (n + K * eps) * n)[:, None]
    state, e = jax.jit(lambda s, z, i: ema_codebook_update(s, z, i, decay=decay, eps=eps))(
        EMAState(jnp.asarray(N0, jnp.float32), jnp.asarray(M0, jnp.float32)), jnp.asarray(z, jnp.float32),
        jnp.asarray(idx))
    np.testing.assert_allclose(np.asarray(state.cluster_size), N1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.embed_sum), M1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(e), e_ref, rtol=1e-5, atol=1e-6)


def test_ema_converges_to_cluster_means():
    """With a fixed batch and fixed assignments, e_k -> mean of the vectors assigned to k."""
    K, D = 4, 2
    z = rand((64, D), 8)
    idx = jnp.asarray(np.arange(64) % K)
    state = EMAState(jnp.ones((K,)), jnp.zeros((K, D)))
    step = jax.jit(lambda s: ema_codebook_update(s, jnp.asarray(z), idx, decay=0.5)[0])
    for _ in range(60):
        state = step(state)
    means = np.stack([z[np.arange(64) % K == k].mean(0) for k in range(K)])
    np.testing.assert_allclose(np.asarray(ema_codebook(state)), means, rtol=1e-4, atol=1e-5)


def test_usage_and_perplexity_vs_numpy():
    idx = np.array([0, 0, 1, 3, 3, 3, 7, 0])
    counts = code_counts(jnp.asarray(idx), 10)
    np.testing.assert_array_equal(np.asarray(counts), np.bincount(idx, minlength=10))
    assert float(usage_from_counts(counts)) == pytest.approx(4 / 10)
    p = np.bincount(idx) / len(idx)
    p = p[p > 0]
    assert float(perplexity_from_counts(counts)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert float(perplexity_from_counts(code_counts(jnp.arange(16), 16))) == pytest.approx(16.0, rel=1e-6)
    assert float(perplexity_from_counts(code_counts(jnp.zeros(9, jnp.int32), 16))) == pytest.approx(1.0)


def test_restart_dead_codes():
    K, D = 8, 3
    e, z = rand((K, D), 9), rand((50, D), 10, 5.0)
    size = np.array([5.0, 0.01, 3.0, 0.0, 2.0, 0.5, 9.0, 0.2])
    emb = e * size[:, None]
    res = jax.jit(lambda k, e, s, z, m: restart_dead_codes(k, e, s, z, threshold=1.0, embed_sum=m))(
        jax.random.key(0), jnp.asarray(e), jnp.asarray(size, jnp.float32), jnp.asarray(z), jnp.asarray(emb))
    dead = size < 1.0
    np.testing.assert_array_equal(np.asarray(res.dead), dead)
    cb = np.asarray(res.codebook)
    np.testing.assert_array_equal(cb[~dead], e[~dead])
    # each restarted code is a distinct vector of the batch
    hits = [np.flatnonzero(np.all(z == row, axis=1)) for row in cb[dead]]
    assert all(len(h) == 1 for h in hits) and len({int(h[0]) for h in hits}) == dead.sum()
    grace = max(size.mean(), 1.0)
    np.testing.assert_allclose(np.asarray(res.cluster_size), np.where(dead, grace, size), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(res.embed_sum)[dead], cb[dead] * grace, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(res.embed_sum)[~dead], emb[~dead], rtol=1e-6)


def test_batch_and_kmeanspp_init():
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100], [-100, 50]], np.float32)
    z = (centres[np.arange(200) % 5] + rand((200, 2), 11)).astype(np.float32)
    cb = np.asarray(jax.jit(kmeans_plusplus_init, static_argnums=2)(jax.random.key(1), jnp.asarray(z), 5))
    assert all(np.any(np.all(z == row, axis=1)) for row in cb)  # centres are data points
    # D^2 sampling picks one point in each far-apart cluster
    assert sorted(np_nearest(cb, centres).tolist()) == [0, 1, 2, 3, 4]
    b = np.asarray(batch_init(jax.random.key(2), jnp.asarray(z), 32))
    rows = {tuple(r) for r in b}
    assert len(rows) == 32 and all(np.any(np.all(z == r, axis=1)) for r in b)
    # more codes than vectors: the copies are jittered, so no two codes tie
    b = np.asarray(batch_init(jax.random.key(3), jnp.asarray(z[:10]), 25))
    assert len({tuple(r) for r in b}) == 25


@pytest.mark.parametrize("ema", [False, True])
def test_module_state_and_update(ema):
    vq = VectorQuantizer(12, 4, ema=ema, decay=0.8, dead_threshold=0.3, rngs=nnx.Rngs(0))
    params = nnx.state(vq, nnx.Param)
    assert ("codebook" in params) != ema  # the EMA codebook is not trainable
    z = jnp.asarray(rand((3, 7, 4), 12))
    out = vq(z)
    e0 = np.asarray(vq.codebook[...])
    k = np_nearest(np.asarray(z).reshape(-1, 4), e0)
    np.testing.assert_array_equal(np.asarray(out["indices"]).reshape(-1), k)
    counts = np.bincount(k, minlength=12)
    if ema:
        assert float(out["codebook_loss"]) == 0.0
        np.testing.assert_allclose(float(out["loss"]), 0.25 * float(out["commitment_loss"]), rtol=1e-6)
    vq.update_state(z, out["indices"])  # no key: no restarts
    np.testing.assert_allclose(np.asarray(vq.cluster_size[...]), 0.8 + 0.2 * counts, rtol=1e-6)
    if ema:
        sums = np.zeros((12, 4))
        np.add.at(sums, k, np.asarray(z).reshape(-1, 4))
        np.testing.assert_allclose(np.asarray(vq.embed_sum[...]), 0.8 * e0 + 0.2 * sums, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(vq.codebook[...]), e0)
    # with a key, codes whose count fell under the threshold are restarted from the batch
    for _ in range(10):
        vq.update_state(z, out["indices"])
    dead = np.asarray(vq.cluster_size[...]) < 0.3
    assert dead.any()
    np.testing.assert_array_equal(dead, counts == 0)
    vq.update_state(z, out["indices"], key=jax.random.key(5))
    cb = np.asarray(vq.codebook[...])
    zf = np.asarray(z).reshape(-1, 4)
    assert all(np.any(np.all(np.isclose(zf, row), axis=1)) for row in cb[dead])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(1, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 4, decay=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="z.shape"):
        nearest_code(jnp.zeros((5, 3)), jnp.zeros((8, 4)))
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="method"):
        vq.init_from_data(jax.random.key(0), jnp.zeros((20, 4)), method="kmeans")
