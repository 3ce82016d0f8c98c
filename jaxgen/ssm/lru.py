"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

    lambda = exp(-exp(nu_log) + i exp(theta_log))                  (exponential parameterisation, |lambda| < 1)
    x_k = lambda * x_{k-1} + gamma * (B u_k),  gamma = exp(gamma_log)  (gamma init sqrt(1 - |lambda|^2))
    y_k = Re(C x_k) + D u_k

Ring init: |lambda|^2 ~ U[r_min^2, r_max^2] (uniform on the ring's area), arg(lambda) ~ U[0, max_phase];
B, C complex Gaussian with per-part variance 1/(2H) and 1/N, D ~ N(0, 1).
The sequence is computed in parallel with jax.lax.associative_scan (`kernels.linear_recurrence`).

Parameter names nu_log, theta_log, gamma_log, B_re, B_im match `jaxgen.ssm.SSM_PARAM_PATTERN`
(lower learning rate, no weight decay in the optimizer factory); C_re, C_im and D are ordinary weights.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgen.ssm.kernels import linear_recurrence

__all__ = ["lru_init", "lru_lambda", "lru_apply", "LRU"]


def _check_ring(r_min, r_max, max_phase):
    if not (0.0 <= r_min < r_max <= 1.0):
        raise ValueError(f"r_min, r_max must satisfy 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not (max_phase > 0):
        raise ValueError(f"max_phase must be > 0, got {max_phase}")


def lru_init(key, N: int, H: int, *, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi,
             dtype=jnp.float32) -> dict:
    """LRU parameters: nu_log, theta_log, gamma_log (N,); B_re, B_im (N, H); C_re, C_im (H, N); D (H,).

    nu_log = log(-½ log(u1 (r_max^2 - r_min^2) + r_min^2)), theta_log = log(max_phase u2), u1, u2 ~ U(0, 1);
    gamma_log = log sqrt(1 - |lambda|^2).
    """
    if N < 1 or H < 1:
        raise ValueError(f"N and H must be >= 1, got N={N}, H={H}")
    _check_ring(r_min, r_max, max_phase)
    k1, k2, k3, k4, k5, k6, k7 = jax.random.split(key, 7)
    tiny = 1e-12  # keeps log() finite where U(0, 1) returns exactly 0
    u1 = jax.random.uniform(k1, (N,), jnp.float32, minval=tiny)
    u2 = jax.random.uniform(k2, (N,), jnp.float32, minval=tiny)
    mod2 = u1 * (r_max**2 - r_min**2) + r_min**2
    nu_log = jnp.log(-0.5 * jnp.log(mod2))
    theta_log = jnp.log(max_phase * u2)
    gamma_log = 0.5 * jnp.log1p(-mod2)
    p = dict(
        nu_log=nu_log,
        theta_log=theta_log,
        gamma_log=gamma_log,
        B_re=jax.random.normal(k3, (N, H)) / math.sqrt(2 * H),
        B_im=jax.random.normal(k4, (N, H)) / math.sqrt(2 * H),
        C_re=jax.random.normal(k5, (H, N)) / math.sqrt(N),
        C_im=jax.random.normal(k6, (H, N)) / math.sqrt(N),
        D=jax.random.normal(k7, (H,)),
    )
    return {k: v.astype(dtype) for k, v in p.items()}


def lru_lambda(nu_log, theta_log):
    """lambda = exp(-exp(nu_log) + i exp(theta_log))."""
    return jnp.exp(-jnp.exp(nu_log) + 1j * jnp.exp(theta_log))


def _input_matrix(p):
    """gamma-normalised B (N, H), complex."""
    return (p["B_re"] + 1j * p["B_im"]) * jnp.exp(p["gamma_log"])[:, None]


def lru_apply(p: dict, u, *, parallel: bool = True, x0=None):
    """y = LRU(u) for u (..., L, H); returns (y (..., L, H), x_L (..., N)).

    parallel=True: associative scan; False: lax.scan (same result, O(L) depth).
    """
    chex.assert_rank(p["B_re"], 2)
    H = p["B_re"].shape[1]
    if u.shape[-1] != H:
        raise ValueError(f"u must have last dimension H={H}, got shape {u.shape}")
    lam = lru_lambda(p["nu_log"], p["theta_log"])
    bu = jnp.einsum("...lh,nh->...ln", u.astype(lam.dtype), _input_matrix(p))
    x = linear_recurrence(lam, bu, axis=-2, parallel=parallel, x0=x0)
    C = p["C_re"] + 1j * p["C_im"]
    y = jnp.einsum("hn,...ln->...lh", C, x).real + p["D"] * u
    return y, x[..., -1, :]


class LRU(nnx.Module):
    """LRU layer (Flax NNX): `layer(x_BLH, *, key=None) -> y_BLH` (parallel scan), and a recurrent mode.

    Recurrent mode: `state = layer.init_state(batch_size)`; `state, y_BH = layer.step(state, x_BH)`.
    The state is {'x': (B, N) complex}; lambda and gamma B are recomputed each step (elementwise, cheap).
    `key` is accepted for the common layer signature; the LRU itself has no dropout.
    """

    def __init__(self, d_model: int, N: int = 64, *, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, rngs: nnx.Rngs):
        p = lru_init(rngs.params(), N, d_model, r_min=r_min, r_max=r_max, max_phase=max_phase)
        self.d_model, self.N = d_model, N
        for name, value in p.items():
            setattr(self, name, nnx.Param(value))

    def params(self) -> dict:
        return {k: getattr(self, k)[...] for k in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")}

    def __call__(self, x_BLH, *, key=None, parallel: bool = True):
        chex.assert_rank(x_BLH, 3)
        return lru_apply(self.params(), x_BLH, parallel=parallel)[0]

    def init_state(self, batch_size: int) -> dict:
        dtype = jnp.result_type(self.nu_log[...].dtype, jnp.complex64)
        return {"x": jnp.zeros((batch_size, self.N), dtype)}

    def step(self, state: dict, x_BH):
        """One recurrent step: x <- lambda x + gamma B u;  y = Re(C x) + D u."""
        p = self.params()
        lam = lru_lambda(p["nu_log"], p["theta_log"])
        x = lam * state["x"] + jnp.einsum("bh,nh->bn", x_BH.astype(lam.dtype), _input_matrix(p))
        y = jnp.einsum("hn,bn->bh", p["C_re"] + 1j * p["C_im"], x).real + p["D"] * x_BH
        return {"x": x}, y
