"""Vector quantisation (van den Oord et al. 2017, VQ-VAE) with the usual training machinery.

Pure functions (arrays in, arrays out; jit-able):

  nearest_code(z, codebook)               argmin_k ||z - e_k||^2 (or max cosine), computed in float32
  vector_quantize(z, codebook, beta)      STE output z_q = z + sg(e - z), codebook and commitment losses
  ema_codebook_update(state, z, indices)  EMA codebook with Laplace smoothing (decay 0.99, eps 1e-5)
  usage_ema_update(...)                   EMA of assignment counts only (for the gradient-trained codebook)
  restart_dead_codes(key, ...)            replace codes whose EMA count is below a threshold by batch vectors
  kmeans_plusplus_init / batch_init       data-dependent codebook initialisation
  code_counts / usage_from_counts / perplexity_from_counts   health metrics from code counts
                                          (of indices: jaxgen.metrics.codebook_usage / perplexity)

and `VectorQuantizer`, an NNX module that holds the codebook (an `nnx.Param` for 'vq', a
`CodebookEMA` variable for 'vq_ema') and the non-trainable statistics (`CodebookEMA`).

How a functional train step must use it (the forward pass never mutates state):

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)     # CodebookEMA lives in `rest`

    @jax.jit
    def train_step(params, rest, opt_state, x, key):
        def loss_fn(params):
            out = nnx.merge(graphdef, params, rest)(x)               # pure: returns z_e and indices
            return out['loss'], out
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # after the gradient step: EMA codebook / usage statistics, then dead-code restarts (key=None: none)
        params, rest = update_quantizer_state(graphdef, params, rest, out=out, key=key)
        return params, rest, opt_state, loss

(`jaxgen.nets.autoencoder.update_quantizer_state`; it merges, calls `VectorQuantizer.update_state`,
which applies the pure functions above, and splits again with the same filters.) The gradient never
reaches the EMA codebook: for 'vq_ema' the codebook is not an nnx.Param, so value_and_grad over
`params` treats it as a constant, and the loss has no codebook term (only beta * commitment).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen import _checks

Array = jax.Array


class CodebookEMA(nnx.Variable):
    """Non-trainable VQ state (EMA codebook, EMA counts, EMA sums): updated after the gradient step, not by it."""


class EMAState(NamedTuple):
    """EMA statistics of the codebook. cluster_size N_k: (K,), embed_sum m_k: (K, D)."""

    cluster_size: Array
    embed_sum: Array


class VQOutput(NamedTuple):
    z_q: Array               # (..., D) straight-through output z + sg(e - z), in z's dtype
    indices: Array           # (...) int32
    codebook_loss: Array     # mean ||sg(z) - e||^2 (per element)
    commitment_loss: Array   # mean ||z - sg(e)||^2 (per element)
    loss: Array              # codebook_loss + beta * commitment_loss


class RestartResult(NamedTuple):
    codebook: Array       # (K, D)
    cluster_size: Array   # (K,)
    embed_sum: Array | None  # (K, D) or None when not given
    dead: Array           # (K,) bool, the codes that were replaced


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
    """x / max(||x||, eps) along `axis`."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _flat(z: Array, codebook: Array) -> Array:
    chex.assert_rank(codebook, 2)
    if z.ndim < 1 or z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"z.shape[-1] must equal the code dimension {codebook.shape[-1]}, got z.shape {z.shape}")
    return z.reshape(-1, z.shape[-1])


def squared_distances(z_ND: Array, codebook_KD: Array) -> Array:
    """d_nk = ||z_n||^2 - 2 z_n . e_k + ||e_k||^2, float32 (N, K)."""
    z = z_ND.astype(jnp.float32)
    e = codebook_KD.astype(jnp.float32)
    zz = jnp.sum(z * z, axis=-1, keepdims=True)
    ee = jnp.sum(e * e, axis=-1)
    ze = jnp.matmul(z, e.T, precision=jax.lax.Precision.HIGHEST)
    return zz - 2.0 * ze + ee


def nearest_code(z: Array, codebook: Array, *, cosine: bool = False) -> Array:
    """k*(z) = argmin_k ||z - e_k||^2, or argmax_k cos(z, e_k) if cosine; z (..., D) -> int32 (...)."""
    z_ND = _flat(z, codebook)
    if cosine:
        z_ND, codebook = l2_normalize(z_ND.astype(jnp.float32)), l2_normalize(codebook.astype(jnp.float32))
    return _first_argmin(squared_distances(z_ND, codebook)).reshape(z.shape[:-1])


def _first_argmin(d_NK: Array) -> Array:
    """argmin over the last axis (first index on ties), int32.

    Same result as jnp.argmin, but XLA:CPU's variadic argmin reduction is ~5x slower than a plain
    min followed by a min over float indices (70 ms vs 15 ms for 512 x 15360), which dominates a VQ
    step with a 2^14 codebook on CPU.
    """
    K = d_NK.shape[-1]
    if K >= 2**24:  # float32 indices would no longer be exact
        return jnp.argmin(d_NK, axis=-1).astype(jnp.int32)
    d_min = jnp.min(d_NK, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(d_NK == d_min, jnp.arange(K, dtype=jnp.float32), float(K)), axis=-1)
    return jnp.minimum(first, K - 1).astype(jnp.int32)  # a NaN row would give K: keep indices in range


def vector_quantize(z: Array, codebook: Array, *, beta: float = 0.25, cosine: bool = False) -> VQOutput:
    """Nearest-code quantisation with the straight-through estimator and the VQ-VAE losses.

        k = argmin_k ||z - e_k||^2,  z_q = z + sg(e_k - z)   (forward e_k, gradient identity to z)
        codebook_loss = mean ||sg(z) - e_k||^2,  commitment_loss = mean ||z - sg(e_k)||^2,
        loss = codebook_loss + beta * commitment_loss        (means over all elements)

    With cosine=True, z and the codebook are l2-normalised first and z_q is the normalised code.
    Distances and losses in float32; z_q returned in z's dtype.
    """
    z32 = z.astype(jnp.float32)
    e = codebook.astype(jnp.float32)
    if cosine:
        z32, e = l2_normalize(z32), l2_normalize(e)
    indices = nearest_code(z32, e)
    e_z = jnp.take(e, indices, axis=0)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z32) - e_z))
    commitment_loss = jnp.mean(jnp.square(z32 - jax.lax.stop_gradient(e_z)))
    z_q = z32 + jax.lax.stop_gradient(e_z - z32)
    return VQOutput(z_q.astype(z.dtype), indices, codebook_loss, commitment_loss,
                    codebook_loss + beta * commitment_loss)


def code_counts(indices: Array, num_codes: int, *, validate: bool | None = None) -> Array:
    """n_k = #{n : indices_n = k}, float32 (K,).

    indices in [0, num_codes): a concrete index outside raises ValueError. Under jit (traced indices) it is
    not checked unless validate=True (checkify): an index >= num_codes is dropped, a negative one counts
    from the end.
    """
    num_codes = _checks.number("num_codes", num_codes, integer=True, low=1)
    _checks.values("indices", indices, lambda xp, i: (i >= 0) & (i < num_codes), f"in [0, num_codes = {num_codes})",
                   validate=validate)
    return _histogram(jnp.asarray(indices), num_codes)


@functools.partial(jax.jit, static_argnums=1)  # called eagerly by evaluation: one program, not one per op
def _histogram(indices: Array, num_codes: int) -> Array:
    return jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)


@jax.jit  # called eagerly by evaluation: one program per shape instead of one per op
def usage_from_counts(counts: Array) -> Array:
    """Fraction of codes used at least once: #{k : n_k > 0} / K."""
    return jnp.mean((counts > 0).astype(jnp.float32))


@jax.jit
def perplexity_from_counts(counts: Array) -> Array:
    """exp(H(p)), p_k = n_k / sum n, H = -sum p log p (0 log 0 = 0): from 1 (one code) to K (uniform)."""
    p = counts / jnp.maximum(jnp.sum(counts), 1e-12)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def _check_decay(decay, eps=0.0):
    _checks.number("decay", decay, low=0, high=1, high_open=True)
    _checks.number("eps", eps, low=0)


def ema_codebook(state: EMAState, eps: float = 1e-5) -> Array:
    """e_k = m_k / N~_k with Laplace smoothing N~_k = (N_k + eps) / (n + K eps) * n, n = sum_k N_k."""
    N = state.cluster_size
    n = jnp.sum(N)
    K = N.shape[0]
    smoothed = (N + eps) / (n + K * eps) * n
    return state.embed_sum / jnp.maximum(smoothed, 1e-12)[:, None]


def ema_codebook_update(state: EMAState, z: Array, indices: Array, *, decay: float = 0.99,
               eps: float = 1e-5) -> tuple[EMAState, Array]:
    """One EMA step of the codebook (VQ-VAE appendix, with Laplace smoothing of the counts):

        N_k <- decay N_k + (1 - decay) n_k,        n_k = #{n : k_n = k}
        m_k <- decay m_k + (1 - decay) sum_{n: k_n = k} z_n
        e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j

    z: (..., D) encoder outputs (normalised first by the caller when codes are cosine), indices: (...).
    Returns (new state, new codebook (K, D) float32). Pure; call it after the gradient step.
    """
    _check_decay(decay, eps)
    K, D = state.embed_sum.shape
    z_ND = z.reshape(-1, D).astype(jnp.float32)
    chex.assert_shape(state.cluster_size, (K,))
    if indices.size != z_ND.shape[0]:
        raise ValueError(f"indices must have one entry per vector of z ({z_ND.shape[0]}), got shape {indices.shape}")
    onehot = jax.nn.one_hot(indices.reshape(-1), K, dtype=jnp.float32)   # (N, K)
    counts = jnp.sum(onehot, axis=0)
    sums = jnp.matmul(onehot.T, z_ND, precision=jax.lax.Precision.HIGHEST)
    new = EMAState(decay * state.cluster_size + (1.0 - decay) * counts,
                   decay * state.embed_sum + (1.0 - decay) * sums)
    return new, ema_codebook(new, eps)


def usage_ema_update(cluster_size: Array, indices: Array, *, decay: float = 0.99) -> Array:
    """N_k <- decay N_k + (1 - decay) n_k (the counts alone, for gradient-trained codebooks)."""
    _check_decay(decay)
    return decay * cluster_size + (1.0 - decay) * code_counts(indices, cluster_size.shape[0])


def _distinct_rows(key: Array, z_ND: Array, k: int) -> Array:
    """k rows of z in random order, distinct while k <= N (wrapping copies get a small jitter)."""
    N = z_ND.shape[0]
    k_perm, k_noise = jax.random.split(key)
    order = jax.random.permutation(k_perm, N)
    rows = jnp.take(z_ND, order[jnp.arange(k) % N], axis=0)
    if k > N:  # repeated vectors would tie in the argmin: jitter the copies
        scale = 1e-2 * (jnp.std(z_ND) + 1e-6)
        jitter = scale * jax.random.normal(k_noise, rows.shape, rows.dtype)
        rows = rows + jnp.where((jnp.arange(k) >= N)[:, None], jitter, 0.0)
    return rows


def batch_init(key: Array, z: Array, num_codes: int) -> Array:
    """Codebook = num_codes distinct random vectors of the batch z (..., D) -> (K, D) float32."""
    z_ND = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    return _distinct_rows(key, z_ND, num_codes)


def kmeans_plusplus_init(key: Array, z: Array, num_codes: int) -> Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on the batch z (..., D) -> (K, D) float32.

    e_1 ~ Uniform(z); e_{j+1} ~ z_n with probability D(z_n)^2 / sum_m D(z_m)^2, D = distance to the
    nearest chosen code. If every point is already a centre (K > distinct points) it falls back to uniform.
    """
    z_ND = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    N, D = z_ND.shape
    keys = jax.random.split(key, num_codes)
    first = jax.random.randint(keys[0], (), 0, N)
    centres = jnp.zeros((num_codes, D), jnp.float32).at[0].set(z_ND[first])
    d2 = jnp.sum(jnp.square(z_ND - z_ND[first]), axis=-1)

    def body(j, carry):
        centres, d2 = carry
        total = jnp.sum(d2)
        logits = jnp.where(total > 0, jnp.log(jnp.maximum(d2, 0.0) + 1e-30), 0.0)
        pick = jax.random.categorical(keys[j], logits)
        c = z_ND[pick]
        return centres.at[j].set(c), jnp.minimum(d2, jnp.sum(jnp.square(z_ND - c), axis=-1))

    centres, _ = jax.lax.fori_loop(1, num_codes, body, (centres, d2))
    return centres


def restart_dead_codes(key: Array, codebook: Array, cluster_size: Array, z: Array, *,
                       threshold: float = 1.0, embed_sum: Array | None = None) -> RestartResult:
    """Dead-code restart from the batch (as in Jukebox / SoundStream):

        dead_k = N_k < threshold;  e_k <- z_{pi(k)} for dead k (pi a random permutation of the batch),
        N_k <- mean_j N_j (a grace period: the EMA needs ~1/(1-decay) steps to decide again),
        m_k <- e_k N_k (so that the EMA codebook m_k / N_k stays at the new code).

    codebook (K, D), cluster_size (K,) EMA counts, z (..., D) the batch's encoder outputs.
    Live codes are returned unchanged. Pure and jit-able (a fixed number K of candidates is drawn).
    """
    K, D = codebook.shape
    chex.assert_shape(cluster_size, (K,))
    _checks.number("threshold", threshold, low=0)
    z_ND = _flat(z, codebook).astype(jnp.float32)
    dead = cluster_size < threshold
    candidates = _distinct_rows(key, z_ND, K).astype(codebook.dtype)
    new_codebook = jnp.where(dead[:, None], candidates, codebook)
    grace = jnp.maximum(jnp.mean(cluster_size), threshold)
    new_size = jnp.where(dead, grace, cluster_size)
    new_sum = None
    if embed_sum is not None:
        chex.assert_shape(embed_sum, (K, D))
        new_sum = jnp.where(dead[:, None], candidates.astype(embed_sum.dtype) * grace, embed_sum)
    return RestartResult(new_codebook, new_size, new_sum, dead)


class VectorQuantizer(nnx.Module):
    """VQ layer over the last axis: 'vq' (codebook learnt by gradient) or 'vq_ema' (EMA codebook).

    Args:
      num_codes: codebook size K.  dim: code dimension D.
      ema: False -> codebook is an nnx.Param trained by the codebook loss; True -> CodebookEMA updated
        by `update_state` (ema_codebook_update, decay/eps), and the loss is beta * commitment only.
      beta: commitment weight (0.25).  cosine: l2-normalise z and codes (cosine-similarity lookup).
      dead_threshold: codes whose EMA count N_k falls below it are restarted by `update_state` when
        a key is given; 0 disables restarts.
      rngs: for the random initial codebook (standard normal; call `init_from_data` for data init).

    State: `codebook` (K, D), `cluster_size` (K,) EMA counts (CodebookEMA, both modes),
    `embed_sum` (K, D) (CodebookEMA, 'vq_ema' only).
    """

    def __init__(self, num_codes: int, dim: int, *, rngs: nnx.Rngs, ema: bool = False, beta: float = 0.25,
                 decay: float = 0.99, eps: float = 1e-5, cosine: bool = False, dead_threshold: float = 0.0):
        _checks.number("num_codes", num_codes, integer=True, low=2)
        _checks.number("dim", dim, integer=True, low=1)
        _checks.number("beta", beta, low=0)
        _checks.number("dead_threshold", dead_threshold, low=0)
        _check_decay(decay, eps)
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.ema, self.beta, self.decay, self.eps = bool(ema), float(beta), float(decay), float(eps)
        self.cosine, self.dead_threshold = bool(cosine), float(dead_threshold)
        init = jax.random.normal(rngs.params(), (self.num_codes, self.dim), jnp.float32)
        if cosine:
            init = l2_normalize(init)
        self.codebook = CodebookEMA(init) if self.ema else nnx.Param(init)
        # Start the counts at 1 per code: an unused code needs ~log(1/threshold)/(1-decay) steps to be called dead.
        self.cluster_size = CodebookEMA(jnp.ones((self.num_codes,), jnp.float32))
        if self.ema:
            self.embed_sum = CodebookEMA(init * 1.0)

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def __call__(self, z: Array) -> dict[str, Any]:
        """z (..., D) -> dict(z_q (STE, z's dtype), indices (...) int32, codebook_loss, commitment_loss, loss).

        Pure: reads the state, changes nothing. For 'vq_ema', loss = beta * commitment_loss.
        """
        out = vector_quantize(z, self.codebook[...], beta=self.beta, cosine=self.cosine)
        loss = self.beta * out.commitment_loss if self.ema else out.loss
        codebook_loss = jnp.zeros((), jnp.float32) if self.ema else out.codebook_loss
        return dict(z_q=out.z_q, indices=out.indices, codebook_loss=codebook_loss,
                    commitment_loss=out.commitment_loss, loss=loss)

    def update_state(self, z_e: Array, indices: Array, *, key: Array | None = None) -> None:
        """After the gradient step: EMA counts (and EMA codebook for 'vq_ema'), then restarts if key.

        z_e: the encoder outputs of the forward pass (..., D) (before quantisation), indices its codes.
        Mutates this module's variables (use on a merged copy inside the jitted step).
        """
        z_e = jax.lax.stop_gradient(z_e).astype(jnp.float32)
        if self.cosine:
            z_e = l2_normalize(z_e)
        if self.ema:
            state, codebook = ema_codebook_update(EMAState(self.cluster_size[...], self.embed_sum[...]), z_e, indices,
                                         decay=self.decay, eps=self.eps)
            if self.cosine:
                codebook = l2_normalize(codebook)
            self.cluster_size[...], self.embed_sum[...] = state.cluster_size, state.embed_sum
            self.codebook[...] = codebook
        else:
            self.cluster_size[...] = usage_ema_update(self.cluster_size[...], indices, decay=self.decay)
        if key is not None and self.dead_threshold > 0:
            res = restart_dead_codes(key, self.codebook[...], self.cluster_size[...], z_e,
                                     threshold=self.dead_threshold,
                                     embed_sum=self.embed_sum[...] if self.ema else None)
            self.codebook[...], self.cluster_size[...] = res.codebook, res.cluster_size
            if self.ema:
                self.embed_sum[...] = res.embed_sum

    def init_from_data(self, key: Array, z: Array, method: str = "kmeans++") -> None:
        """Set the codebook from encoder outputs z (..., D): method 'kmeans++' or 'batch'. Call once, eagerly."""
        z = jnp.asarray(z, jnp.float32)
        if self.cosine:
            z = l2_normalize(z)
        if method == "kmeans++":
            codebook = kmeans_plusplus_init(key, z, self.num_codes)
        elif method == "batch":
            codebook = batch_init(key, z, self.num_codes)
        else:
            raise ValueError(f"method must be 'kmeans++' or 'batch', got {method!r}")
        self.codebook[...] = codebook
        self.cluster_size[...] = jnp.ones((self.num_codes,), jnp.float32)
        if self.ema:
            self.embed_sum[...] = codebook * self.cluster_size[...][:, None]
