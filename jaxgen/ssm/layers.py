"""S4 / S4D / LRU sequence layers and a sequence model (Flax NNX).

Layer convention (S4D, S4, LRU):
    y_BLH = layer(x_BLH, *, key=None)            convolution / parallel mode (training); causal
    state = layer.init_state(batch_size)         recurrent mode: discretises the *current* parameters
    state, y_BH = layer.step(state, x_BH)        once and carries them in the state dict; call
                                                 init_state again after the parameters change.
Convolution mode and step mode compute the same outputs (tested).

Parameter groups: the SSM parameters that want a lower learning rate (<= 1e-3) and no weight decay
are the attributes named A_re, A_im, B_re, B_im, P_re, P_im, log_step (S4/S4D) and nu_log, theta_log,
gamma_log (LRU); `jaxgen.ssm.SSM_PARAM_PATTERN` matches them at the end of the parameter path.
Complex parameters are stored as separate real and imaginary float leaves. A_re stores log(-Re A),
so Re A = -exp(A_re) < 0 always (S4's 'exp' transform); log_step stores log of the per-channel step.

S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space Models"):
    A = diag(Lambda), N//2 complex modes + conjugates, kernel K_l = 2 Re Σ_n C_n Bb_n Ab_n^l (Vandermonde),
    ZOH or bilinear, inits S4D-Lin / S4D-Inv / S4D-LegS, y = K * u + D u.
S4 (Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State Spaces"):
    A = diag(Lambda) - P P^* (DPLR, init HiPPO-LegS via `hippo.nplr`), bilinear, kernel by Cauchy sums
    at the roots of unity of length l_max. As in S4 the trained output vector is C~ = C (I - Ab^l_max)
    (C_re, C_im hold C~); step mode recovers C = C~ (I - Ab^l_max)^{-1} in init_state.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen.ssm import hippo
from jaxgen.ssm.discretize import discretize_diag
from jaxgen.ssm.kernels import (
    bilinear_dense,
    c_from_c_tilde,
    causal_conv,
    conj_closure,
    dplr_dense,
    kernel_dplr,
    kernel_vandermonde,
)
from jaxgen.ssm.lru import LRU

__all__ = ["SSM_PARAM_PATTERN", "S4D", "S4", "LRU", "SSMBlock", "SequenceModel", "dropout"]

SSM_PARAM_PATTERN = r"(A_re|A_im|B_re|B_im|P_re|P_im|log_step|nu_log|theta_log|gamma_log)$"


def dropout(x, rate: float, key):
    """Inverted dropout; identity when key is None or rate == 0 (eval)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _check_N_even(N):
    if not isinstance(N, (int, np.integer)) or N < 2 or N % 2:
        raise ValueError(f"N must be an even integer >= 2 (N//2 conjugate mode pairs), got {N!r}")


def _check_steps(step_min, step_max):
    if not (0 < step_min <= step_max):
        raise ValueError(f"step_min, step_max must satisfy 0 < step_min <= step_max, got {step_min}, {step_max}")


def _log_step_init(key, H, step_min, step_max):
    """log step ~ U[log step_min, log step_max], one per channel."""
    return jax.random.uniform(key, (H,), jnp.float32, math.log(step_min), math.log(step_max))


def _f32(x):
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


class _SSMBase(nnx.Module):
    """Shared conv-mode plumbing: u (B, H, L) -> causal_conv(u, K) + D u."""

    def _lambda(self):
        return -jnp.exp(self.A_re[...]) + 1j * self.A_im[...]

    def _step(self):
        return jnp.exp(self.log_step[...])

    def _conv(self, x_BLH, K_HL):
        u = jnp.swapaxes(x_BLH, 1, 2).astype(K_HL.dtype)  # the FFT runs in the kernel's float dtype
        y = causal_conv(u, K_HL) + self.D[...][:, None] * u
        return jnp.swapaxes(y, 1, 2).astype(x_BLH.dtype)


class S4D(_SSMBase):
    """S4D layer: per-channel diagonal SSM with N//2 complex modes, Vandermonde kernel.

    Args: d_model (H), N (state size, even), init 'lin' | 'inv' | 'legs', method 'zoh' | 'bilinear',
    step_min / step_max (log-uniform per-channel step init), chunk (block size of the blocked
    Vandermonde product, see `kernels.kernel_vandermonde`; 'auto' ≈ sqrt(L), None = direct).
    """

    def __init__(self, d_model: int, N: int = 64, *, init: str = "lin", method: str = "zoh",
                 step_min: float = 1e-3, step_max: float = 1e-1, chunk="auto", rngs: nnx.Rngs):
        _check_N_even(N)
        _check_steps(step_min, step_max)
        if method not in ("zoh", "bilinear"):
            raise ValueError(f"method must be 'zoh' or 'bilinear', got {method!r}")
        lam, B = hippo.s4d_init(init, N)
        H, N2 = d_model, N // 2
        self.d_model, self.N, self.method, self.chunk = d_model, N, method, chunk
        tile = lambda v: np.broadcast_to(v, (H, N2))  # noqa: E731
        self.A_re = nnx.Param(_f32(tile(np.log(-lam.real))))
        self.A_im = nnx.Param(_f32(tile(lam.imag)))
        self.B_re = nnx.Param(_f32(tile(B.real)))
        self.B_im = nnx.Param(_f32(tile(B.imag)))
        kc = rngs.params()
        self.C_re = nnx.Param(jax.random.normal(jax.random.fold_in(kc, 0), (H, N2)) * math.sqrt(0.5))
        self.C_im = nnx.Param(jax.random.normal(jax.random.fold_in(kc, 1), (H, N2)) * math.sqrt(0.5))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (H,)))
        self.log_step = nnx.Param(_log_step_init(rngs.params(), H, step_min, step_max))

    def _B(self):
        return self.B_re[...] + 1j * self.B_im[...]

    def _C(self):
        return self.C_re[...] + 1j * self.C_im[...]

    def kernel(self, L: int):
        """K (H, L) = 2 Re Σ_n C_n Bb_n Ab_n^l."""
        return kernel_vandermonde(self._lambda(), self._B(), self._C(), self._step(), L, self.method, chunk=self.chunk)

    def __call__(self, x_BLH, *, key=None):
        chex.assert_rank(x_BLH, 3)
        chex.assert_axis_dimension(x_BLH, 2, self.d_model)
        return self._conv(x_BLH, self.kernel(x_BLH.shape[1]))

    def init_state(self, batch_size: int) -> dict:
        Ab, Bb = discretize_diag(self._lambda(), self._B(), self._step()[:, None], self.method)
        return {"x": jnp.zeros((batch_size,) + Ab.shape, Ab.dtype), "Ab": Ab, "Bb": Bb, "C": self._C()}

    def step(self, state: dict, x_BH):
        """x <- Ab x + Bb u;  y = 2 Re Σ_n C_n x_n + D u."""
        x = state["Ab"] * state["x"] + state["Bb"] * x_BH[..., None]
        y = 2.0 * jnp.sum(state["C"] * x, -1).real + self.D[...] * x_BH
        return {**state, "x": x}, y.astype(x_BH.dtype)


class S4(_SSMBase):
    """S4 layer: per-channel DPLR SSM A = diag(Lambda) - P P^*, HiPPO init, Cauchy kernel of length l_max.

    Args: d_model (H), N (state size, even; N//2 modes + conjugates), l_max (longest sequence; the
    trained C~ is tied to it), measure 'legs' | 'legt', step_min / step_max, chunk (evaluate the
    Cauchy sums `chunk` roots of unity at a time: bounds memory; None = all at once; 'auto' = blocks
    that fit in cache), kernel_method ('paired' (default) | 'direct', see `kernels.kernel_dplr`).
    Inputs may be shorter than l_max (the length-l_max kernel is truncated, which is exact).
    """

    def __init__(self, d_model: int, N: int = 64, *, l_max: int, measure: str = "legs",
                 step_min: float = 1e-3, step_max: float = 1e-1, chunk="auto", kernel_method: str = "paired",
                 rngs: nnx.Rngs):
        _check_N_even(N)
        _check_steps(step_min, step_max)
        if kernel_method not in ("paired", "direct"):
            raise ValueError(f"kernel_method must be 'paired' or 'direct', got {kernel_method!r}")
        if not isinstance(l_max, (int, np.integer)) or l_max < 1:
            raise ValueError(f"l_max must be an integer >= 1, got {l_max!r}")
        if measure not in ("legs", "legt"):
            raise ValueError(f"measure must be 'legs' or 'legt', got {measure!r}")
        d = hippo.nplr(measure, N)
        H, N2 = d_model, N // 2
        lam, P, B = d.Lambda[:N2], d.P[:, :N2], d.B[:N2]
        # Re Lambda = 0 for LegT's normal part; S4 clamps it so the log transform is finite
        re = np.minimum(lam.real, -1e-4)
        self.d_model, self.N, self.l_max, self.rank, self.chunk = d_model, N, int(l_max), P.shape[0], chunk
        self.kernel_method = kernel_method
        tile = lambda v: np.broadcast_to(v, (H,) + v.shape)  # noqa: E731
        self.A_re = nnx.Param(_f32(tile(np.log(-re))))
        self.A_im = nnx.Param(_f32(tile(lam.imag)))
        self.P_re = nnx.Param(_f32(tile(P.real)))
        self.P_im = nnx.Param(_f32(tile(P.imag)))
        self.B_re = nnx.Param(_f32(tile(B.real)))
        self.B_im = nnx.Param(_f32(tile(B.imag)))
        kc = rngs.params()
        self.C_re = nnx.Param(jax.random.normal(jax.random.fold_in(kc, 0), (H, N2)) * math.sqrt(0.5))
        self.C_im = nnx.Param(jax.random.normal(jax.random.fold_in(kc, 1), (H, N2)) * math.sqrt(0.5))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (H,)))
        self.log_step = nnx.Param(_log_step_init(rngs.params(), H, step_min, step_max))

    def _parts(self):
        P = self.P_re[...] + 1j * self.P_im[...]
        B = self.B_re[...] + 1j * self.B_im[...]
        Ct = self.C_re[...] + 1j * self.C_im[...]
        return self._lambda(), P, B, Ct

    def kernel(self, L: int):
        """K (H, L): the length-l_max Cauchy kernel of (Lambda, P, B, C~), truncated to L <= l_max."""
        if L > self.l_max:
            raise ValueError(f"sequence length must be <= l_max={self.l_max}, got {L}")
        lam, P, B, Ct = self._parts()
        return kernel_dplr(lam, P, B, Ct, self._step(), self.l_max, c_is_tilde=True, chunk=self.chunk,
                           method=self.kernel_method)[..., :L]

    def __call__(self, x_BLH, *, key=None):
        chex.assert_rank(x_BLH, 3)
        chex.assert_axis_dimension(x_BLH, 2, self.d_model)
        return self._conv(x_BLH, self.kernel(x_BLH.shape[1]))

    def init_state(self, batch_size: int) -> dict:
        """Dense bilinear Ab (H, N, N) of the 2·(N//2)-mode closure, and C = C~ (I - Ab^l_max)^{-1}."""
        lam, P, B, Ct = self._parts()
        Ab, Bb = bilinear_dense(dplr_dense(lam, P), conj_closure(B), self._step())
        C = c_from_c_tilde(Ab, conj_closure(Ct), self.l_max)
        return {"x": jnp.zeros((batch_size,) + Bb.shape, Bb.dtype), "Ab": Ab, "Bb": Bb, "C": C}

    def step(self, state: dict, x_BH):
        """x <- Ab x + Bb u;  y = Re(C x) + D u (real up to rounding: conjugate-closed system)."""
        x = jnp.einsum("hnm,bhm->bhn", state["Ab"], state["x"]) + state["Bb"] * x_BH[..., None]
        y = jnp.sum(state["C"] * x, -1).real + self.D[...] * x_BH
        return {**state, "x": x}, y.astype(x_BH.dtype)


SSM_LAYERS = {"s4d": S4D, "s4": S4, "lru": LRU}


def _make_ssm(ssm: str, d_model: int, N: int, l_max, ssm_kwargs, rngs):
    if ssm not in SSM_LAYERS:
        raise ValueError(f"ssm must be one of {tuple(SSM_LAYERS)}, got {ssm!r}")
    kw = dict(ssm_kwargs or {})
    if ssm == "s4":
        if l_max is None:
            raise ValueError("l_max (the longest sequence length) is required for ssm='s4'")
        kw["l_max"] = l_max
    return SSM_LAYERS[ssm](d_model, N, rngs=rngs, **kw)


class SSMBlock(nnx.Module):
    """Pre-norm residual block: x + Dropout(GLU(W Dropout(GELU(SSM(LayerNorm(x)))))).

    GLU(z) = a * sigmoid(b) for [a, b] = W z (W: H -> 2H).
    """

    def __init__(self, d_model: int, *, ssm: str = "s4d", N: int = 64, l_max=None, dropout: float = 0.0,
                 ssm_kwargs=None, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.ssm = _make_ssm(ssm, d_model, N, l_max, ssm_kwargs, rngs)
        self.out = nnx.Linear(d_model, 2 * d_model, rngs=rngs)
        self.dropout = dropout

    def _mix(self, z):
        a, b = jnp.split(self.out(z), 2, axis=-1)
        return a * jax.nn.sigmoid(b)

    def __call__(self, x_BLH, *, key=None):
        k1, k2 = jax.random.split(key) if key is not None else (None, None)
        z = self.ssm(self.norm(x_BLH))
        z = dropout(jax.nn.gelu(z), self.dropout, k1)
        z = dropout(self._mix(z), self.dropout, k2)
        return x_BLH + z

    def init_state(self, batch_size: int):
        return self.ssm.init_state(batch_size)

    def step(self, state, x_BH):
        state, z = self.ssm.step(state, self.norm(x_BH))
        return state, x_BH + self._mix(jax.nn.gelu(z))


class SequenceModel(nnx.Module):
    """Encoder -> n_layers SSM blocks -> LayerNorm -> decoder.

    model(x, *, key=None): x (B, L, d_input) floats, or (B, L) integer tokens when tokens=True
    (then d_input is the vocabulary size). Returns logits per position (B, L, d_output) — causal, so
    position l sees inputs <= l (autoregressive head: predict token l+1 from position l) — or, with
    pooling='mean' | 'last', one vector per sequence (B, d_output) for classification.

    Recurrent generation: state = model.init_state(batch_size); state, logits_BO = model.step(state, x)
    with x (B, d_input) or (B,) tokens; agrees with the per-position output of model(x) (no pooling).
    ssm: 's4d' | 's4' | 'lru'; ssm_kwargs go to the SSM layer (e.g. init, method, r_min);
    l_max is required for 's4'.
    """

    def __init__(self, d_input: int, d_model: int, n_layers: int, d_output: int, *, ssm: str = "s4d",
                 N: int = 64, l_max=None, dropout: float = 0.0, pooling=None, tokens: bool = False,
                 ssm_kwargs=None, rngs: nnx.Rngs):
        for name, v in (("d_input", d_input), ("d_model", d_model), ("n_layers", n_layers), ("d_output", d_output)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if pooling not in (None, "mean", "last"):
            raise ValueError(f"pooling must be None, 'mean' or 'last', got {pooling!r}")
        self.tokens, self.pooling, self.dropout = tokens, pooling, dropout
        self.encoder = nnx.Embed(d_input, d_model, rngs=rngs) if tokens else nnx.Linear(d_input, d_model, rngs=rngs)
        self.blocks = nnx.List(
            [SSMBlock(d_model, ssm=ssm, N=N, l_max=l_max, dropout=dropout, ssm_kwargs=ssm_kwargs, rngs=rngs)
             for _ in range(n_layers)]
        )
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.decoder = nnx.Linear(d_model, d_output, rngs=rngs)

    def _encode(self, x):
        if self.tokens:
            return self.encoder(x)
        return self.encoder(x.astype(jnp.float32))

    def __call__(self, x, *, key=None):
        chex.assert_rank(x, 2 if self.tokens else 3)
        h = self._encode(x)
        keys = jax.random.split(key, len(self.blocks) + 1) if key is not None else [None] * (len(self.blocks) + 1)
        h = dropout(h, self.dropout, keys[-1])
        for block, k in zip(self.blocks, keys):
            h = block(h, key=k)
        h = self.norm(h)
        if self.pooling == "mean":
            h = h.mean(axis=1)
        elif self.pooling == "last":
            h = h[:, -1]
        return self.decoder(h)

    def init_state(self, batch_size: int):
        if self.pooling is not None:
            raise ValueError("recurrent mode needs pooling=None (per-position outputs)")
        return [block.init_state(batch_size) for block in self.blocks]

    def step(self, state, x):
        """One position: x (B, d_input) or (B,) tokens -> (state, logits (B, d_output))."""
        h = self._encode(x)
        new = []
        for block, s in zip(self.blocks, state):
            s, h = block.step(s, h)
            new.append(s)
        return new, self.decoder(self.norm(h))
