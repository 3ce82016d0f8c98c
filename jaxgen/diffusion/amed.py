"""AMED (Zhou et al. 2023): a tiny predictor of the mean-value-theorem point for a 2-stage ODE step.

In EDM coordinates (y = x / alpha, sig = sigma / alpha; see `samplers.ode_sample`) one AMED step
t_n -> t_{n+1} is

    d_n = (y_n - D(y_n, s_n)) / s_n,   s_m = s_{n+1}^r s_n^(1-r),   y_m = y_n + (s_m - s_n) d_n,
    y_{n+1} = y_n + c (s_{n+1} - s_n) (y_m - D(y_m, s_m)) / s_m,

with (r, c) predicted per sample by a small network from features of the current state and the two noise
levels. r = 1/2, c = 1 is DPM-Solver-2. Training matches a fine teacher solve: the student runs its own
trajectory (each step from its previous output, gradients stopped between steps, as the reference code)
and the loss is sum_n mean ||x_{n+1}^student - x_{n+1}^teacher||^2 at the student's grid times.

The paper feeds the UNet bottleneck; with prediction functions only, `default_features` summarises
the state and the first ODE direction (pass your own `feature_fn` to use a network's features).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgen.diffusion.processes import Process
from jaxgen.diffusion.samplers import ode_sample

Array = Any

__all__ = ["AMEDPredictor", "default_features", "make_rc_fn", "teacher_trajectory", "amed_loss", "fit_amed"]


def default_features(y: Array, d0: Array, s0: Array, s1: Array) -> Array:
    """[B, 4]: rms(d0), rms(y) / sqrt(1 + s0^2), <y, d0> / (|y| |d0|), log(s0 / s1)."""
    b = y.shape[0]
    yf, df = y.reshape(b, -1), d0.reshape(b, -1)
    ny = jnp.sqrt(jnp.mean(yf**2, -1))
    nd = jnp.sqrt(jnp.mean(df**2, -1))
    cos = jnp.mean(yf * df, -1) / (ny * nd + 1e-12)
    ratio = jnp.broadcast_to(jnp.log(s0 / s1), (b,))
    return jnp.stack([nd, ny / jnp.sqrt(1.0 + s0**2), cos, ratio], -1)


class AMEDPredictor(nnx.Module):
    """(features [B, F], s0, s1) -> (r [B] in (0, 1), c [B] in (1 - c_range, 1 + c_range)).

    The time input is (log s0, log s1) (scalars or [B]); the last layer starts at zero, so an untrained
    predictor is DPM-Solver-2 (r = 1/2, c = 1).
    """

    def __init__(self, num_features: int = 4, hidden: int = 32, c_range: float = 0.2, *, rngs: nnx.Rngs):
        if num_features < 1 or hidden < 1:
            raise ValueError(f"num_features and hidden must be >= 1, got {num_features}, {hidden}")
        if not 0 <= c_range < 1:
            raise ValueError(f"c_range must be in [0, 1), got {c_range}")
        self.c_range = c_range
        self.l1 = nnx.Linear(num_features + 2, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 2, kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                              rngs=rngs)

    def __call__(self, features: Array, s0: Array, s1: Array) -> tuple[Array, Array]:
        b = features.shape[0]
        ts = jnp.stack([jnp.broadcast_to(jnp.log(s0), (b,)), jnp.broadcast_to(jnp.log(s1), (b,))], -1) / 4.0
        h = jax.nn.silu(self.l1(jnp.concatenate([features, ts], -1)))
        h = jax.nn.silu(self.l2(h))
        z = self.out(h)
        return jax.nn.sigmoid(z[:, 0]), 1.0 + self.c_range * jnp.tanh(z[:, 1])


def make_rc_fn(graphdef, state, feature_fn: Callable = default_features) -> Callable:
    """An `rc_fn(k, y, d0, s0, s1)` for `ode_sample(..., solver='amed')` from a split predictor."""

    def rc_fn(k, y, d0, s0, s1):
        model = nnx.merge(graphdef, state)
        return model(feature_fn(y, d0, s0, s1), s0, s1)

    return rc_fn


def _fine_grid(process: Process, ts, substeps: int, rho: float = 7.0) -> np.ndarray:
    """Insert `substeps` points in every interval, uniformly in sig^(1/rho) (EDM's spacing)."""
    ts = np.asarray(ts, np.float64)
    with jax.ensure_compile_time_eval():  # host-side grid, also when called under jit
        sig = np.asarray(process.sigma_ratio(jnp.asarray(ts)), np.float64)
        u = sig ** (1 / rho)
        fine = [u[0]]
        for a, b in zip(u[:-1], u[1:]):
            fine.extend(list(a + (b - a) * np.arange(1, substeps + 2) / (substeps + 1)))
        t_fine = np.asarray(process.time_of_sigma_ratio(jnp.asarray(np.array(fine) ** rho)), np.float64)
    t_fine[:: substeps + 1] = ts  # keep the student's times exactly
    return t_fine


def teacher_trajectory(denoise_fn: Callable, process: Process, x_init: Array, ts, substeps: int = 8,
                       solver: str = "heun") -> Array:
    """Teacher states at the student's times [n + 1, B, ...]: `solver` on a grid with `substeps` extra
    points per student interval."""
    t_fine = _fine_grid(process, ts, substeps)
    _, traj = ode_sample(denoise_fn, process, x_init, t_fine, solver, return_trajectory=True)
    return traj[:: substeps + 1]


def amed_loss(rc_fn: Callable, denoise_fn: Callable, process: Process, teacher: Array, ts, afs: bool = True) -> Array:
    """sum_n mean ||x_{n+1} - teacher_{n+1}||^2, the student stepping from its own (stop-gradient) state,
    starting at teacher[0] = x at ts[0]."""
    ts = np.asarray(ts)
    x = teacher[0]
    total = 0.0
    for k in range(len(ts) - 1):
        step_fn = (lambda kk: (lambda _, *a: rc_fn(kk, *a)))(k)
        x_next = ode_sample(denoise_fn, process, jax.lax.stop_gradient(x), ts[k:k + 2], "amed",
                            afs=afs and k == 0, rc_fn=step_fn)
        total = total + jnp.mean(jnp.sum(jnp.square(x_next - teacher[k + 1]).reshape(x.shape[0], -1), -1))
        x = x_next
    return total


def fit_amed(denoise_fn: Callable, process: Process, ts, sample_prior: Callable, key: Array, afs: bool = True,
             num_train: int = 2048, batch_size: int = 256, num_iters: int = 300, learning_rate: float = 3e-3,
             substeps: int = 8, hidden: int = 32, feature_fn: Callable = default_features,
             num_features: int = 4) -> tuple[Callable, dict]:
    """Train an AMEDPredictor for the grid `ts` (Adam). sample_prior(key, n) -> x at ts[0].

    Returns (rc_fn for `ode_sample`, info dict with the loss curve and the mean predicted r, c per step).
    """
    k_data, k_init, k_loop = jax.random.split(key, 3)
    x_init = sample_prior(k_data, num_train)
    teacher = jax.jit(lambda x: teacher_trajectory(denoise_fn, process, x, ts, substeps))(x_init)
    # built in one jitted program (eagerly, each parameter's initialiser compiles on its own)
    graphdef, state = nnx.split(nnx.jit(lambda: AMEDPredictor(num_features, hidden, rngs=nnx.Rngs(k_init)))())
    opt = optax.adam(learning_rate)
    opt_state = opt.init(state)

    def loss_fn(state, teach):
        return amed_loss(make_rc_fn(graphdef, state, feature_fn), denoise_fn, process, teach, ts, afs)

    @jax.jit
    def train_step(state, opt_state, k):
        idx = jax.random.choice(k, num_train, (batch_size,), replace=False)
        teach = teacher[:, idx]
        loss, grads = jax.value_and_grad(loss_fn)(state, teach)
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    losses = []
    for i in range(num_iters):
        state, opt_state, loss = train_step(state, opt_state, jax.random.fold_in(k_loop, i))
        losses.append(float(loss))
    rc_fn = make_rc_fn(graphdef, state, feature_fn)

    @jax.jit  # one program, not a compile per eager op
    def mean_rc(teacher):
        """Mean predicted (r, c) per step [n], [n] on the training set's teacher states."""
        rs, cs = [], []
        for k in range(len(ts) - 1):
            x = teacher[k]
            t0 = jnp.asarray(ts[k], x.dtype)
            s0, s1 = process.sigma_ratio(t0), process.sigma_ratio(jnp.asarray(ts[k + 1], x.dtype))
            y = x / process.alpha(t0)
            d0 = (y / jnp.sqrt(1 + s0**2) if (afs and k == 0) else
                  (y - denoise_fn(x, jnp.full((x.shape[0],), t0))) / s0)
            r, c = rc_fn(k, y, d0, s0, s1)
            rs.append(jnp.mean(r))
            cs.append(jnp.mean(c))
        return jnp.stack(rs), jnp.stack(cs)

    r_mean, c_mean = mean_rc(teacher)
    return rc_fn, dict(losses=losses, r=[float(v) for v in r_mean], c=[float(v) for v in c_mean], graphdef=graphdef,
                       state=state)
