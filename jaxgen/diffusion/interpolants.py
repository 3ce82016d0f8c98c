"""The general construction of an ODE diffusion from an interpolation, and ODE solvers on a velocity field.

Any interpolation between data x0 ~ p_data (t = 0) and noise x1 ~ N(0, I) (t = 1),

    x_t = a(t) x0 + b(t) x1,        a(0) = 1, b(0) = 0,

defines a probability path p_t. Its marginal velocity (Liu et al. 2023, "Flow straight and fast";
Albergo & Vanden-Eijnden 2023, "Building normalizing flows with stochastic interpolants")

    v(x, t) = E[dx_t/dt | x_t = x] = a'(t) E[x0 | x_t = x] + b'(t) E[x1 | x_t = x],
    E[x1 | x_t = x] = (x - a(t) E[x0 | x_t = x]) / b(t)      (0 where b = 0: x1 is independent of x0)

satisfies the continuity equation d p_t / dt + div(p_t v) = 0, so the ODE dx/dt = v(x, t) run from
x ~ p_1 at t = 1 down to t = 0 transports p_1 to the data distribution. Only the denoiser E[x0 | x_t] is
needed, for any (a, b). Paths (every `Process` in jaxgen is such a pair, alpha = a, sigma = b):

    'vp'      ContinuousVP: a = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2) / 2), b = sqrt(1 - a^2);
              the velocity is then the probability-flow ODE drift of the VP SDE (Song et al. 2021),
              -beta(t) / 2 (x + grad log p_t(x)).
    'rf'      RectifiedFlow: a = 1 - t, b = t (the straight line, v = E[x1 - x0 | x_t]).
    'cosine'  a = cos(pi t / 2), b = sin(pi t / 2) (the trigonometric interpolant of Albergo & Vanden-Eijnden).

Solvers for dx/dt = v(x, t) in the time variable t itself (for learned velocities and the reflow teacher):
`flow_solve` (fixed grid: 'euler', 'heun') and `flow_solve_adaptive` (Dormand-Prince RK45, diffrax).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.processes import ContinuousVP, Process, RectifiedFlow, broadcast_to_batch

Array = Any

__all__ = [
    "Interpolant",
    "make_path",
    "PATHS",
    "velocity_from_denoiser",
    "flow_solve",
    "flow_solve_adaptive",
    "FLOW_SOLVERS",
    "uniform_grid",
]

PATHS = ("vp", "rf", "cosine")
FLOW_SOLVERS = ("euler", "heun")


class Interpolant(Process):
    """x_t = a(t) x0 + b(t) x1 for any differentiable a, b with a(0) = 1, b(0) = 0 and b(1) > 0.

    a_fn, b_fn: elementwise functions of t (jax-traceable); derivatives come from forward-mode autodiff
    (`alpha_sigma_dt`). Close over an Interpolant rather than passing it through `jax.jit` as an argument.
    """

    def __init__(self, a_fn: Callable, b_fn: Callable, name: str = "custom"):
        with jax.ensure_compile_time_eval():
            a0, b0, b1 = (float(f(jnp.asarray(t, jnp.float32))) for f, t in ((a_fn, 0.0), (b_fn, 0.0), (b_fn, 1.0)))
        if abs(a0 - 1.0) > 1e-6 or abs(b0) > 1e-6:
            raise ValueError(f"an interpolant needs a(0) = 1 and b(0) = 0 (data at t = 0), got a(0) = {a0}, b(0) = {b0}")
        if not b1 > 0:
            raise ValueError(f"an interpolant needs b(1) > 0 (noise at t = 1), got b(1) = {b1}")
        self.a_fn, self.b_fn, self.name = a_fn, b_fn, name

    def alpha(self, t):
        return self.a_fn(jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        return self.b_fn(jnp.asarray(t, jnp.result_type(float)))

    def __repr__(self):
        return f"Interpolant({self.name})"


def make_path(name: str) -> Process:
    """'vp' (ContinuousVP, beta in [0.1, 20]), 'rf' (RectifiedFlow), 'cosine' (a = cos(pi t/2), b = sin(pi t/2))."""
    if name == "vp":
        return ContinuousVP()
    if name == "rf":
        return RectifiedFlow()
    if name == "cosine":
        return Interpolant(lambda t: jnp.cos(0.5 * math.pi * t), lambda t: jnp.sin(0.5 * math.pi * t), "cosine")
    raise ValueError(f"path name must be one of {PATHS}, got {name!r}")


def velocity_from_denoiser(denoise_fn: Callable, path: Process) -> Callable:
    """The marginal velocity of the path, v(x, t) = a'(t) D + b'(t) (x - a(t) D) / b(t), D = denoise_fn(x, t).

    denoise_fn(x [B, ...], t [B]) -> E[x0 | x_t = x] for this path's x_t (e.g. `GaussianMixture.denoise_fn(path)`,
    or a network's x0-prediction). Returns v(x [B, ...], t [B]) -> [B, ...]. Where b(t) = 0 (t = 0) the
    E[x1 | x_t] term is 0.
    """

    def v(x, t):
        t = jnp.asarray(t, x.dtype)
        a, b = path.alpha_sigma(t)
        da, db = path.alpha_sigma_dt(t)
        a, b, da, db = (broadcast_to_batch(c, x).astype(x.dtype) for c in (a, b, da, db))
        d = denoise_fn(x, t).astype(x.dtype)
        # b = 0 only at t = 0, where E[x1 | x0] = 0; b'(0) may be infinite (VP), so mask the product
        pos = b > 0
        return da * d + jnp.where(pos, jnp.where(pos, db, 0.0) * (x - a * d) / jnp.where(pos, b, 1.0), 0.0)

    return v


def _time_batch(t, x):
    return jnp.full((x.shape[0],), t, x.dtype)


def flow_solve(velocity_fn: Callable, x_init: Array, ts, solver: str = "euler", return_trajectory: bool = False):
    """Integrate dx/dt = v(x, t) over the grid ts (NumPy or array, any direction; from t = 1 to 0 to sample).

    euler: x_{k+1} = x_k + h_k v(x_k, t_k),                                h_k = t_{k+1} - t_k
    heun:  x_{k+1} = x_k + h_k (v(x_k, t_k) + v(x_k + h_k v(x_k, t_k), t_{k+1})) / 2
    NFE: n (euler) or 2 n (heun) for n = len(ts) - 1 steps. velocity_fn(x [B, ...], t [B]).
    return_trajectory: also return the states at every grid time, [n + 1, B, ...].
    """
    if solver not in FLOW_SOLVERS:
        raise ValueError(f"solver must be one of {FLOW_SOLVERS}, got {solver!r}")
    ts = jnp.asarray(ts, x_init.dtype)
    chex.assert_rank(ts, 1)
    if ts.shape[0] < 2:
        raise ValueError(f"ts needs at least two times, got {ts.shape[0]}")

    def body(x, t01):
        t0, t1 = t01
        h = t1 - t0
        v0 = velocity_fn(x, _time_batch(t0, x)).astype(x.dtype)
        if solver == "euler":
            x_new = x + h * v0
        else:
            v1 = velocity_fn(x + h * v0, _time_batch(t1, x)).astype(x.dtype)
            x_new = x + 0.5 * h * (v0 + v1)
        return x_new, (x_new if return_trajectory else None)

    x, traj = jax.lax.scan(body, x_init, (ts[:-1], ts[1:]))
    if return_trajectory:
        return x, jnp.concatenate([x_init[None], traj], 0)
    return x


def flow_solve_adaptive(velocity_fn: Callable, x_init: Array, t_start: float = 1.0, t_end: float = 0.0,
                        rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10_000, return_nfe: bool = False):
    """Integrate dx/dt = v(x, t) from t_start to t_end with Dormand-Prince RK45 (diffrax.Dopri5, the solver
    of Liu et al.'s reference code is scipy's RK45) and a PID step-size controller.
    return_nfe: also return the number of velocity evaluations (6 per attempted step + 1, FSAL)."""
    import diffrax

    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    dt = x_init.dtype
    t0, t1 = float(t_start), float(t_end)
    if t0 == t1:
        raise ValueError(f"t_start and t_end must differ, got {t0}")

    def vf(t, x, args):
        return velocity_fn(x, _time_batch(t, x)).astype(dt)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), diffrax.Dopri5(), t0=t0, t1=t1, dt0=(t1 - t0) / 20, y0=x_init,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
    )
    x = sol.ys[-1]
    if return_nfe:
        return x, 6 * (sol.stats["num_accepted_steps"] + sol.stats["num_rejected_steps"]) + 1
    return x


def uniform_grid(num_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> np.ndarray:
    """num_steps + 1 equally spaced times from t_start to t_end (float64)."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return np.linspace(t_start, t_end, int(num_steps) + 1)
