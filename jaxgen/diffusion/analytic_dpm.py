"""Analytic-DPM (Bao et al. 2022) and Extended Analytic-DPM (SN-DPM / NPR-DPM, Bao et al. 2022b).

Reverse step tau_k = r -> tau_{k-1} = s of the DDIM family with forward variance lambda^2
(lambda^2 = eta^2 beta_tilde_{s|r}; eta = 1 is DDPM, eta = 0 DDIM). The optimal reverse variance is

    sigma*^2 = lambda^2 + (sqrt((1 - abar_r) / alpha_{r|s}) - sqrt(1 - abar_s - lambda^2))^2 (1 - Gamma_r),
    alpha_{r|s} = abar_r / abar_s,    Gamma_r = E ||eps_hat(x_r, r)||^2 / d   (Monte Carlo over the data),

equivalently lambda^2 + x0_coef^2 Cov[x0 | x_r] with Cov = ((1 - abar_r) / abar_r)(1 - Gamma_r) (law of total
variance; exact for Gaussian data). Cov is clipped to [0, (data_range / 2)^2] (Analytic-DPM's bounds for
data in an interval of that width), and for image data the second-to-last step (tau_2 -> tau_1) is clipped
so that E|sigma eps| <= pixel_width / 2, i.e. sigma <= (pixel_width / 2) sqrt(pi / 2) (pixel_width = 2/255).
The last step returns the mean.

Optimal trajectory: with the optimal variance the per-step KL is J(s, r) = d/2 log(sigma*^2 / lambda^2);
`optimal_trajectory` minimises sum_k J(tau_{k-1}, tau_k) over 1 = tau_1 < ... < tau_K = T by dynamic
programming (lambda^2 > 0, i.e. eta > 0).

Extended Analytic-DPM: a head on a frozen eps-model predicts a diagonal second moment:
    SN-DPM:  h(x_t, t) ~ E[eps^2 | x_t],                   loss ||eps^2 - h||^2,   Cov = ((1-abar)/abar)(h - eps_hat^2)
    NPR-DPM: g(x_t, t) ~ E[(eps - eps_hat)^2 | x_t],        loss ||sg(eps - eps_hat)^2 - g||^2,   Cov = ((1-abar)/abar) g
and `vp_sample(..., cov_fn=...)` uses sigma^2 = lambda^2 + x0_coef^2 Cov elementwise.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.diffusion.ddpm import q_sample
from jaxgen.diffusion.processes import DiscreteVP, broadcast_to_batch
from jaxgen.diffusion.samplers import _check_timesteps, vp_sample

Array = Any

__all__ = [
    "estimate_gamma",
    "analytic_variance",
    "analytic_dpm_sample",
    "kl_step_costs",
    "optimal_trajectory",
    "sn_dpm_loss",
    "npr_dpm_loss",
    "sn_cov_fn",
    "npr_cov_fn",
    "fit_cov_head",
]


def estimate_gamma(eps_fn: Callable, schedule: DiscreteVP, data: Array, key: Array, timesteps,
                   num_repeats: int = 1, batch_size: int | None = None, control_variate: bool = True) -> np.ndarray:
    """Gamma_r = E_{x0 ~ data, eps} ||eps_fn(x_r, r / T)||^2 / d for each r in `timesteps` (float64 [K]).

    control_variate: use eps^2 (whose mean, 1 per element, is known exactly) as a control variate with the
    regression coefficient c = Cov(eps_hat^2, eps^2) / Var(eps^2) fitted on the same samples:
    Gamma = mean(eps_hat^2) - c (mean(eps^2) - 1). At high noise eps_hat ~ eps, c ~ 1 and the variance
    drops by orders of magnitude; that matters because the variance uses 1 - Gamma multiplied by
    (1 - abar) / abar, which is large there. At low noise c ~ 0 and it is the plain estimate.
    Every data point is noised `num_repeats` times per step (fresh eps). Cache the result per model and
    step set (it costs len(timesteps) x num_repeats passes over `data`).
    """
    ts = _check_timesteps(schedule, timesteps)
    data = jnp.asarray(data)
    n = data.shape[0]
    bs = n if batch_size is None else int(batch_size)

    @jax.jit
    def sums(x0, r, k):
        """Sums over elements of a = eps_hat^2, b = eps^2, a b and b^2."""
        eps = jax.random.normal(k, x0.shape, x0.dtype)
        i = jnp.full((x0.shape[0],), r)
        e = eps_fn(q_sample(schedule, x0, i, eps), schedule.step_to_time(i)).astype(jnp.float32)
        a, b = jnp.square(e), jnp.square(eps.astype(jnp.float32))
        return jnp.stack([jnp.sum(a), jnp.sum(b), jnp.sum(a * b), jnp.sum(b * b)])

    out = np.zeros(ts.size)
    m = n * num_repeats * int(np.prod(data.shape[1:]))
    for j, r in enumerate(ts):
        tot = np.zeros(4)
        for rep in range(num_repeats):
            for start in range(0, n, bs):
                k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, j), rep), start)
                tot += np.asarray(sums(data[start:start + bs], int(r), k), np.float64)
        ma, mb, mab, mbb = tot / m
        if control_variate:
            c = (mab - ma * mb) / max(mbb - mb**2, 1e-12)
            out[j] = ma - c * (mb - 1.0)
        else:
            out[j] = ma
    return out


def _pair_coefficients(abar_r, abar_s, eta):
    lam2 = eta**2 * (1 - abar_s) / (1 - abar_r) * (1 - abar_r / abar_s)
    direction = np.sqrt(np.maximum(1 - abar_s - lam2, 0.0))
    x0_coef = np.sqrt(abar_s) - direction * np.sqrt(abar_r / (1 - abar_r))
    return lam2, x0_coef


def analytic_variance(schedule: DiscreteVP, timesteps, gamma, eta: float = 1.0, data_range: float | None = 2.0,
                      pixel_width: float | None = None) -> np.ndarray:
    """Optimal reverse variances [K] for the steps tau_k -> tau_{k-1}, k = 1..K (ascending, like `timesteps`).

    gamma: Gamma at each of `timesteps` [K]. data_range: width b - a of the data interval (2 for [-1, 1]);
    None disables the Cov clip. pixel_width: clip of the second-to-last step (2/255 for 8-bit images); None: off.
    Entry k = 1 (the last step) is 0: the sampler returns the mean there.
    """
    ts = _check_timesteps(schedule, timesteps)
    g = np.asarray(gamma, np.float64)
    if g.shape != ts.shape:
        raise ValueError(f"gamma must have one entry per timestep ({ts.size}), got shape {g.shape}")
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    taus = np.concatenate([[0], ts])
    abar_r, abar_s = abar[taus[1:]], abar[taus[:-1]]
    lam2, x0_coef = _pair_coefficients(abar_r, abar_s, eta)
    cov = (1 - abar_r) / abar_r * (1 - g)
    cov = np.maximum(cov, 0.0) if data_range is None else np.clip(cov, 0.0, (data_range / 2) ** 2)
    var = lam2 + x0_coef**2 * cov
    var[0] = 0.0
    if pixel_width is not None and ts.size >= 2:
        var[1] = min(var[1], (pixel_width / 2 * np.sqrt(np.pi / 2)) ** 2)
    return var


def analytic_dpm_sample(eps_fn: Callable, schedule: DiscreteVP, shape, key, timesteps, gamma, eta: float = 1.0,
                        data_range: float | None = 2.0, pixel_width: float | None = None,
                        clip_x0: float | None = None) -> Array:
    """Analytic-DDPM (eta = 1) / Analytic-DDIM (eta = 0): the DDIM-family mean with the optimal variance."""
    var = analytic_variance(schedule, timesteps, gamma, eta, data_range, pixel_width)
    return vp_sample(eps_fn, schedule, shape, key, timesteps, eta=eta, variance=var, clip_x0=clip_x0)


def kl_step_costs(schedule: DiscreteVP, gamma_all, eta: float = 1.0, data_range: float | None = 2.0,
                  monotone_cov: bool = True) -> np.ndarray:
    """J[s, r] = 1/2 log(sigma*^2_{s|r} / lambda^2_{s|r}) per dimension for 1 <= s < r <= T (inf elsewhere).

    gamma_all: Gamma at every step, shape [T + 1] (index 0 unused) or [T] (steps 1..T).
    monotone_cov: replace Cov_r = ((1 - abar_r)/abar_r)(1 - Gamma_r) by its running maximum over r. Cov_r is the
    per-dimension MMSE of x0 from x_r, which never decreases with the noise level (Guo, Shamai & Verdu 2005);
    Monte Carlo noise in Gamma (Gamma >= 1 where 1 - Gamma is tiny) otherwise creates spurious zero-cost
    jumps that the dynamic programme exploits.
    """
    if not eta > 0:
        raise ValueError(f"the trajectory DP needs lambda^2 > 0: eta must be > 0, got {eta}")
    T = schedule.num_steps
    g = np.asarray(gamma_all, np.float64)
    if g.shape == (T,):
        g = np.concatenate([[0.0], g])
    if g.shape != (T + 1,):
        raise ValueError(f"gamma_all must have shape [{T}] or [{T + 1}], got {g.shape}")
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    cov_all = np.zeros(T + 1)
    cov_all[1:] = (1 - abar[1:]) / abar[1:] * (1 - g[1:])
    cov_all = np.maximum(cov_all, 0.0) if data_range is None else np.clip(cov_all, 0.0, (data_range / 2) ** 2)
    if monotone_cov:
        cov_all = np.maximum.accumulate(cov_all)
    s, r = np.meshgrid(np.arange(T + 1), np.arange(T + 1), indexing="ij")
    valid = (s >= 1) & (r > s)
    s_, r_ = np.where(valid, s, 1), np.where(valid, r, 2 if T >= 2 else 1)
    abar_r, abar_s = abar[r_], abar[s_]
    lam2, x0_coef = _pair_coefficients(abar_r, abar_s, eta)
    cov = cov_all[r_]
    with np.errstate(divide="ignore", invalid="ignore"):
        J = 0.5 * np.log1p(x0_coef**2 * cov / lam2)
    return np.where(valid, J, np.inf)


def optimal_trajectory(schedule: DiscreteVP, gamma_all, num_sample_steps: int, eta: float = 1.0,
                       data_range: float | None = 2.0, monotone_cov: bool = True) -> np.ndarray:
    """argmin over 1 = tau_1 < ... < tau_K = T of sum_{k=2}^K J(tau_{k-1}, tau_k), by dynamic programming.

    Returns the K timesteps (int64, increasing). O(K T^2) time, O(K T) memory.
    """
    T, K = schedule.num_steps, int(num_sample_steps)
    if not 2 <= K <= T:
        raise ValueError(f"num_sample_steps must be in [2, {T}], got {K}")
    J = kl_step_costs(schedule, gamma_all, eta, data_range, monotone_cov)
    cost = np.full(T + 1, np.inf)
    cost[1] = 0.0
    back = np.zeros((K + 1, T + 1), np.int64)
    for k in range(2, K + 1):
        total = cost[:, None] + J  # [s, r]
        back[k] = np.argmin(total, axis=0)
        cost = total[back[k], np.arange(T + 1)]
    traj = [T]
    for k in range(K, 1, -1):
        traj.append(int(back[k][traj[-1]]))
    traj = np.array(traj[::-1], np.int64)
    if traj[0] != 1 or np.any(np.diff(traj) <= 0):  # pragma: no cover - guards the backtracking
        raise RuntimeError(f"dynamic programming produced an invalid trajectory {traj}")
    return traj


# ----------------------------------------------------------------------------------------------
# Extended Analytic-DPM
# ----------------------------------------------------------------------------------------------


def _noised_batch(schedule, x0, key, steps):
    k_i, k_eps = jax.random.split(key)
    b = x0.shape[0]
    i = jax.random.randint(k_i, (b,), 1, schedule.num_steps + 1) if steps is None else jnp.asarray(steps)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    return q_sample(schedule, x0, i, eps), schedule.step_to_time(i), eps


def sn_dpm_loss(head_fn: Callable, schedule: DiscreteVP, x0: Array, key: Array, steps: Array | None = None) -> Array:
    """SN-DPM: mean over elements of (eps^2 - h(x_t, t))^2, i ~ U{1..T} (or the given steps [B])."""
    x_t, t, eps = _noised_batch(schedule, x0, key, steps)
    h = head_fn(x_t, t)
    chex.assert_equal_shape([h, eps])
    return jnp.mean(jnp.square(jnp.square(eps) - h))


def npr_dpm_loss(head_fn: Callable, eps_fn: Callable, schedule: DiscreteVP, x0: Array, key: Array,
                 steps: Array | None = None) -> Array:
    """NPR-DPM: mean over elements of (sg[(eps - eps_hat(x_t, t))^2] - g(x_t, t))^2 with a frozen eps-model."""
    x_t, t, eps = _noised_batch(schedule, x0, key, steps)
    target = jax.lax.stop_gradient(jnp.square(eps - eps_fn(x_t, t)))
    g = head_fn(x_t, t)
    chex.assert_equal_shape([g, eps])
    return jnp.mean(jnp.square(target - g))


def _cov_scale(schedule, t, x):
    i = schedule.time_to_step(t)
    abar = schedule.alphas_cumprod[i]
    return broadcast_to_batch((1 - abar) / abar, x)


def sn_cov_fn(head_fn: Callable, schedule: DiscreteVP, data_range: float | None = 2.0) -> Callable:
    """cov_fn(x, t, eps_hat) = ((1 - abar)/abar)(h(x, t) - eps_hat^2), clipped to [0, (data_range/2)^2]."""

    def cov_fn(x, t, eps_hat):
        c = _cov_scale(schedule, t, x) * (head_fn(x, t) - jnp.square(eps_hat))
        return jnp.clip(c, 0.0, None if data_range is None else (data_range / 2) ** 2)

    return cov_fn


def npr_cov_fn(head_fn: Callable, schedule: DiscreteVP, data_range: float | None = 2.0) -> Callable:
    """cov_fn(x, t, eps_hat) = ((1 - abar)/abar) g(x, t), clipped to [0, (data_range/2)^2]."""

    def cov_fn(x, t, eps_hat):
        c = _cov_scale(schedule, t, x) * head_fn(x, t)
        return jnp.clip(c, 0.0, None if data_range is None else (data_range / 2) ** 2)

    return cov_fn


def fit_cov_head(kind: str, head_apply: Callable, head_params, eps_fn: Callable, schedule: DiscreteVP, data: Array,
                 key: Array, num_steps: int = 2000, batch_size: int = 256, learning_rate: float = 1e-3):
    """Train an SN ('sn') or NPR ('npr') head on a frozen eps-model with Adam on `sn_dpm_loss` / `npr_dpm_loss`.

    head_apply(params, x, t) -> raw output [B, ...]; the head is softplus(raw), since both targets
    (E[eps^2 | x_t], E[(eps - eps_hat)^2 | x_t]) are non-negative. data: x0 in memory [N, ...], drawn
    uniformly with replacement. Returns (trained params, head_fn(params) -> (x, t) -> [B, ...], last loss).
    """
    if kind not in ("sn", "npr"):
        raise ValueError(f"kind must be 'sn' or 'npr', got {kind!r}")
    if num_steps < 1 or batch_size < 1:
        raise ValueError(f"num_steps and batch_size must be >= 1, got {num_steps}, {batch_size}")
    data = jnp.asarray(data)
    opt = optax.adam(learning_rate)

    def head_fn(params):
        return lambda x, t: jax.nn.softplus(head_apply(params, x, t))

    def loss_fn(params, x0, k):
        if kind == "npr":
            return npr_dpm_loss(head_fn(params), eps_fn, schedule, x0, k)
        return sn_dpm_loss(head_fn(params), schedule, x0, k)

    @jax.jit
    def step(params, opt_state, k):
        k_idx, k_loss = jax.random.split(k)
        x0 = data[jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])]
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, k_loss)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = head_params, opt.init(head_params)
    loss = jnp.nan
    for i in range(num_steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i))
    return params, head_fn, float(loss)
