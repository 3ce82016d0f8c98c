"""Samplers that take prediction functions (never networks).

Discrete VP family (DDPM, DDIM, Analytic-DPM, SN/NPR-DPM, predictor-corrector) on a `DiscreteVP`
schedule with `eps_fn(x, t)`, t = i / T of shape [B]:

    tau_0 = 0 < tau_1 < ... < tau_K  (a trajectory of K steps, `skip_timesteps`), step tau_k = r -> tau_{k-1} = s:
    x0_hat = (x_r - sqrt(1 - abar_r) eps_hat) / sqrt(abar_r)
    x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - lambda^2) eps_hat + sigma_k z,
    lambda^2 = eta^2 (1 - abar_s) / (1 - abar_r) (1 - abar_r / abar_s)     (DDIM; eta = 1: the DDPM posterior)
    sigma_k^2 = lambda^2 (DDIM / DDPM beta_tilde), 1 - abar_r / abar_s (DDPM "beta"), an array (Analytic-DPM),
              or lambda^2 + (sqrt(abar_s) - sqrt(1 - abar_s - lambda^2) sqrt(abar_r / (1 - abar_r)))^2 Cov[x0 | x_r]
              with a diagonal Cov from `cov_fn` (SN-DPM / NPR-DPM, or the oracle's exact posterior variance).
    The last step (to tau_0 = 0) adds no noise and returns x0_hat.

Probability-flow ODE solvers on any `Process` with `denoise_fn(x, t)` = E[x0 | x_t = x]. They work in
EDM coordinates y = x / alpha(t), sig = sigma(t) / alpha(t), where the ODE is dy/dsig = (y - D(y, sig)) / sig
with D(y, sig) = denoise_fn(alpha y, t(sig)) (Karras et al. 2022, eq. 4 after the scaling):

    euler:  y' = y + (s1 - s0) d0,                                d0 = (y - D(y, s0)) / s0
    heun:   y' = y + (s1 - s0) (d0 + d1) / 2,  d1 at the Euler point (EDM Algorithm 1)
    amed:   s_m = s1^r s0^(1-r), y_m = y + (s_m - s0) d0, y' = y + c (s1 - s0) d(y_m, s_m)   (Zhou et al. 2023)
    dpm2:   DPM-Solver-2 (Lu et al. 2022) in its own x-space exponential-integrator form (midpoint in
            lambda = log(alpha / sigma)); equals amed with r = 1/2, c = 1.
    afs:    the analytical first step replaces d0 at the first step by y / sqrt(1 + s0^2) (saves one NFE).

`reference_ode_solve` integrates the same ODE with diffrax (Tsit5, adaptive) as a high-accuracy reference.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks
from jaxgen.diffusion.processes import DiscreteVP, Process, broadcast_to_batch

Array = Any

__all__ = [
    "skip_timesteps",
    "ddim_step",
    "vp_sample",
    "ddim_sample",
    "ddpm_skip_sample",
    "pc_sample",
    "edm_sigmas",
    "time_grid",
    "ode_sample",
    "ode_nfe",
    "reference_ode_solve",
    "ODE_SOLVERS",
]

ODE_SOLVERS = ("euler", "heun", "dpm2", "amed")
SKIPS = ("uniform", "quadratic")


# ----------------------------------------------------------------------------------------------
# Discrete VP family
# ----------------------------------------------------------------------------------------------


def skip_timesteps(num_steps: int, num_sample_steps: int, kind: str = "uniform") -> np.ndarray:
    """K = num_sample_steps increasing steps tau_1 < ... < tau_K in {1, ..., T} (int64).

    uniform:   tau_k = floor((k - 1) T / K) + 1      (DDIM's range(0, T, T // K) + 1 when K divides T)
    quadratic: tau_k = int(linspace(0, sqrt(0.8 T), K)^2) + 1   (DDIM's CIFAR-10 setting); repeated
               values (small steps at large K) are pushed up by one so the steps stay strictly increasing.
    """
    T = _checks.number("num_steps", num_steps, integer=True, low=1)
    K = _checks.number("num_sample_steps", num_sample_steps, integer=True, low=1, high=T)
    if kind == "uniform":
        seq = np.floor(np.arange(K) * T / K).astype(np.int64) + 1
    elif kind == "quadratic":
        seq = (np.linspace(0.0, np.sqrt(0.8 * T), K) ** 2).astype(np.int64) + 1
        for k in range(1, K):
            seq[k] = max(seq[k], seq[k - 1] + 1)
        if seq[-1] > T:
            raise ValueError(f"quadratic skipping cannot fit {K} distinct steps in T = {T}")
    else:
        raise ValueError(f"kind must be 'uniform' or 'quadratic', got {kind!r}")
    return seq


def ddim_step(x, eps_hat, abar_r, abar_s, eta, noise, variance=None):
    """One generalised step r -> s (Song et al. 2021, eq. 12), written out directly:

    x0_hat = (x - sqrt(1 - abar_r) eps_hat) / sqrt(abar_r)
    c1 = eta sqrt((1 - abar_r / abar_s) (1 - abar_s) / (1 - abar_r)),  c2 = sqrt(1 - abar_s - c1^2)
    x_s = sqrt(abar_s) x0_hat + c2 eps_hat + sigma noise,  sigma = c1 (or sqrt(variance) if given).
    """
    x0_hat = (x - jnp.sqrt(1 - abar_r) * eps_hat) / jnp.sqrt(abar_r)
    c1 = eta * jnp.sqrt((1 - abar_r / abar_s) * (1 - abar_s) / (1 - abar_r))
    c2 = jnp.sqrt(jnp.maximum(1 - abar_s - c1**2, 0.0))
    sig = c1 if variance is None else jnp.sqrt(variance)
    return jnp.sqrt(abar_s) * x0_hat + c2 * eps_hat + sig * noise


def _check_skip(skip, num_steps, num_sample_steps) -> np.ndarray:
    """skip_timesteps with the samplers' argument name `skip` in the message."""
    _checks.one_of("skip", skip, SKIPS)
    return skip_timesteps(num_steps, num_sample_steps, skip)


def _check_timesteps(schedule: DiscreteVP, timesteps) -> np.ndarray:
    ts = np.asarray(timesteps)
    bad = (ts.ndim != 1 or ts.size < 1 or ts.dtype.kind not in "iu" or np.any(np.diff(ts) <= 0) or ts[0] < 1
           or ts[-1] > schedule.num_steps)
    if bad:
        raise ValueError(f"timesteps must be strictly increasing integers in [1, {schedule.num_steps}], got {ts}")
    return ts.astype(np.int64)



def _vp_step_coefficients(schedule: DiscreteVP, timesteps, eta: float):
    """float64 per-step coefficients, ordered k = K, ..., 1 (the order of sampling)."""
    abar_all = np.asarray(schedule.alphas_cumprod, np.float64)
    taus = np.concatenate([[0], timesteps])
    r, s = taus[1:][::-1], taus[:-1][::-1]
    abar_r, abar_s = abar_all[r], abar_all[s]
    beta_tilde = (1 - abar_s) / (1 - abar_r) * (1 - abar_r / abar_s)  # lambda^2 with eta = 1
    lam2 = eta**2 * beta_tilde
    direction = np.sqrt(np.maximum(1 - abar_s - lam2, 0.0))
    x0_coef = np.sqrt(abar_s) - direction * np.sqrt(abar_r / (1 - abar_r))  # coefficient of x0_hat given x_r fixed
    return dict(r=r, s=s, abar_r=abar_r, abar_s=abar_s, lam2=lam2, direction=direction, x0_coef=x0_coef,
                beta_rs=1 - abar_r / abar_s)


def vp_sample(
    eps_fn: Callable,
    schedule: DiscreteVP,
    shape: tuple[int, ...],
    key: Array,
    timesteps,
    eta: float = 1.0,
    variance: Any = "lambda",
    cov_fn: Callable | None = None,
    clip_x0: float | None = None,
    x_init: Array | None = None,
    dtype=jnp.float32,
) -> Array:
    """Generalised (DDIM-family) ancestral sampler over `timesteps` (see the module docstring).

    eta: lambda^2 = eta^2 beta_tilde_{s|r} in the mean (eta = 1: DDPM posterior, 0: deterministic DDIM).
    variance: 'lambda' (sigma^2 = lambda^2), 'beta' (sigma^2 = 1 - abar_r / abar_s), or an array [K] of
        variances for the steps tau_k -> tau_{k-1}, k = 1..K (ascending, like `timesteps`).
    cov_fn: optional (x, t, eps_hat) -> diagonal Cov[x0 | x_t] [B, ...]; overrides `variance` with
        sigma^2 = lambda^2 + x0_coef^2 Cov (SN-DPM / NPR-DPM).
    clip_x0: None or c > 0: clip x0_hat to [-c, c] (eps_hat is then recomputed from the clipped x0_hat).
    x_init: optional x at tau_K (default N(0, I)).
    """
    ts = _check_timesteps(schedule, timesteps)
    shape = _checks.shape_tuple("shape", shape)
    _checks.optional_number("clip_x0", clip_x0, low=0, low_open=True)
    eta = _checks.number("eta", eta, low=0)
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
    c = _vp_step_coefficients(schedule, ts, eta)
    K = ts.size
    if isinstance(variance, str):
        if variance == "lambda":
            var = c["lam2"]
        elif variance == "beta":
            var = c["beta_rs"]
        else:
            raise ValueError(f"variance must be 'lambda', 'beta' or an array of shape [{K}], got {variance!r}")
    else:
        var = np.asarray(variance, np.float64)
        if var.shape != (K,):
            raise ValueError(f"variance array must have shape [{K}], got {var.shape}")
        _checks.values("variance", var, lambda xp, v: xp.isfinite(v) & (v >= 0), "finite and >= 0")
        var = var[::-1]
    var = np.where(c["s"] == 0, 0.0, var)  # no noise at the last step
    f = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    per_step = dict(
        t=jnp.asarray(c["r"] / schedule.num_steps, jnp.float32),
        a_r=f(np.sqrt(c["abar_r"])),
        b_r=f(np.sqrt(1 - c["abar_r"])),
        a_s=f(np.sqrt(c["abar_s"])),
        direction=f(c["direction"]),
        lam2=f(np.where(c["s"] == 0, 0.0, c["lam2"])),
        x0_coef=f(c["x0_coef"]),
        var=f(var),
        last=jnp.asarray(c["s"] == 0),
    )
    b = shape[0]
    k_init, k_loop = jax.random.split(key)
    x = jax.random.normal(k_init, shape, dtype) if x_init is None else x_init.astype(dtype)

    def body(x, inp):
        p, k = inp
        t = jnp.full((b,), p["t"], jnp.float32)
        eps_hat = eps_fn(x, t).astype(dtype)
        x0_hat = (x - p["b_r"] * eps_hat) / p["a_r"]
        if clip_x0 is not None:
            x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
            eps_hat = (x - p["a_r"] * x0_hat) / p["b_r"]
        mean = p["a_s"] * x0_hat + p["direction"] * eps_hat
        if cov_fn is not None:
            cov = cov_fn(x, t, eps_hat).astype(dtype)
            var = p["lam2"] + p["x0_coef"] ** 2 * jnp.maximum(cov, 0.0)
        else:
            var = p["var"]
        var = jnp.where(p["last"], 0.0, var)
        z = jax.random.normal(k, shape, dtype)
        return (mean + jnp.sqrt(var) * z).astype(dtype), None

    keys = jax.random.split(k_loop, K)
    x, _ = jax.lax.scan(body, x, (per_step, keys))
    return x


def ddim_sample(eps_fn, schedule: DiscreteVP, shape, key, num_sample_steps: int, eta: float = 0.0,
                skip: str = "uniform", clip_x0: float | None = None) -> Array:
    """DDIM (Song et al. 2021) with K steps: sigma = lambda = eta sqrt((1 - abar_r/abar_s)(1 - abar_s)/(1 - abar_r))."""
    ts = _check_skip(skip, schedule.num_steps, num_sample_steps)
    return vp_sample(eps_fn, schedule, shape, key, ts, eta=eta, variance="lambda", clip_x0=clip_x0)


def ddpm_skip_sample(eps_fn, schedule: DiscreteVP, shape, key, num_sample_steps: int, variance: str = "beta",
                     skip: str = "uniform", clip_x0: float | None = None) -> Array:
    """DDPM ancestral sampling on K skipped steps: the posterior q(x_s | x_r, x0_hat) mean, variance
    beta_tilde_{s|r} ('beta_tilde') or beta_{r|s} = 1 - abar_r / abar_s ('beta'). K = T is `ddpm_sample`."""
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    ts = _check_skip(skip, schedule.num_steps, num_sample_steps)
    return vp_sample(eps_fn, schedule, shape, key, ts, eta=1.0,
                     variance="beta" if variance == "beta" else "lambda", clip_x0=clip_x0)


def pc_sample(eps_fn, schedule: DiscreteVP, shape, key, num_sample_steps: int, snr: float = 0.16,
              num_corrector: int = 1, skip: str = "uniform", predictor_variance: str = "beta_tilde",
              dtype=jnp.float32) -> Array:
    """Predictor-corrector (Song et al. 2021, Algorithm 2 style) on a DiscreteVP.

    At each level tau_k = r: `num_corrector` Langevin steps with the score s = -eps_hat / sqrt(1 - abar_r),
        x <- x + e s + sqrt(2 e) z,  e = 2 (1 - beta_r) (snr ||z|| / ||s||)^2   (batch-mean norms, as score_sde);
    then the DDPM ancestral predictor r -> s (the last one returns x0_hat). The corrector runs at every level,
    tau_K down to tau_1, so NFE = K (1 + num_corrector).
    """
    num_corrector = _checks.number("num_corrector", num_corrector, integer=True, low=0)
    snr = _checks.number("snr", snr, low=0, low_open=True)
    if predictor_variance not in ("beta", "beta_tilde"):
        raise ValueError(f"predictor_variance must be 'beta' or 'beta_tilde', got {predictor_variance!r}")
    shape = _checks.shape_tuple("shape", shape)
    ts = _check_skip(skip, schedule.num_steps, num_sample_steps)
    c = _vp_step_coefficients(schedule, ts, 1.0)
    var = c["beta_rs"] if predictor_variance == "beta" else c["lam2"]
    var = np.where(c["s"] == 0, 0.0, var)
    betas = np.asarray(schedule.betas, np.float64)
    f = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    per_step = dict(t=jnp.asarray(c["r"] / schedule.num_steps, jnp.float32), a_r=f(np.sqrt(c["abar_r"])),
                    b_r=f(np.sqrt(1 - c["abar_r"])), a_s=f(np.sqrt(c["abar_s"])), direction=f(c["direction"]),
                    var=f(var), langevin_alpha=f(1 - betas[c["r"]]))
    b = shape[0]
    k_init, k_loop = jax.random.split(key)
    x = jax.random.normal(k_init, shape, dtype)

    def norm(v):
        return jnp.mean(jnp.sqrt(jnp.sum(v.reshape(b, -1) ** 2, -1)))

    def body(x, inp):
        p, k = inp
        t = jnp.full((b,), p["t"], jnp.float32)
        kc, kp = jax.random.split(k)
        for j in range(num_corrector):
            score = -eps_fn(x, t).astype(dtype) / p["b_r"]
            z = jax.random.normal(jax.random.fold_in(kc, j), shape, dtype)
            step = 2.0 * p["langevin_alpha"] * (snr * norm(z) / norm(score)) ** 2
            x = x + step * score + jnp.sqrt(2.0 * step) * z
        eps_hat = eps_fn(x, t).astype(dtype)
        x0_hat = (x - p["b_r"] * eps_hat) / p["a_r"]
        mean = p["a_s"] * x0_hat + p["direction"] * eps_hat
        return mean + jnp.sqrt(p["var"]) * jax.random.normal(kp, shape, dtype), None

    keys = jax.random.split(k_loop, ts.size)
    x, _ = jax.lax.scan(body, x, (per_step, keys))
    return x


# ----------------------------------------------------------------------------------------------
# Probability-flow ODE solvers
# ----------------------------------------------------------------------------------------------


def edm_sigmas(num_intervals: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: sig_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..n, float64."""
    n = _checks.number("num_intervals", num_intervals, integer=True, low=1)
    _check_sigmas(sigma_min, sigma_max)
    rho = _checks.number("rho", rho, low=0, low_open=True)
    i = np.arange(n + 1) / n
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _check_sigmas(sigma_min, sigma_max) -> None:
    sigma_min = _checks.number("sigma_min", sigma_min, low=0, low_open=True)
    _checks.number("sigma_max", sigma_max, low=sigma_min, low_open=True,
                   accepted=f"a finite number > sigma_min = {sigma_min}")


def time_grid(process: Process, num_intervals: int, kind: str = "edm", sigma_min: float = 0.002,
              sigma_max: float | None = None, rho: float = 7.0) -> np.ndarray:
    """Decreasing times t_0 > ... > t_n (float64 NumPy) for the ODE solvers, defined through the EDM
    noise level sig = sigma(t) / alpha(t) in [sigma_min, sigma_max] (sigma_max defaults to sig(1), capped at 80).

    kind: 'edm' (rho-polynomial in sig), 'logsnr' (uniform in log sig), 'uniform' (uniform in t).
    """
    if kind not in ("edm", "logsnr", "uniform"):
        raise ValueError(f"kind must be 'edm', 'logsnr' or 'uniform', got {kind!r}")
    num_intervals = _checks.number("num_intervals", num_intervals, integer=True, low=1)
    with jax.ensure_compile_time_eval():  # a host-side grid, also when called under jit
        if sigma_max is None:
            sigma_max = float(min(80.0, float(process.sigma_ratio(jnp.asarray(1.0, jnp.float32)))))
        _check_sigmas(sigma_min, sigma_max)
        if kind == "uniform":
            ends = np.asarray(process.time_of_sigma_ratio(jnp.asarray([sigma_max, sigma_min])), np.float64)
            return np.linspace(ends[0], ends[1], int(num_intervals) + 1)
        if kind == "edm":
            sig = edm_sigmas(num_intervals, sigma_min, sigma_max, rho)
        else:
            sig = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), int(num_intervals) + 1))
        return np.asarray(process.time_of_sigma_ratio(jnp.asarray(sig)), np.float64)


def ode_nfe(solver: str, num_intervals: int, afs: bool = False, final_denoise: bool = False) -> int:
    """Number of denoiser evaluations of `ode_sample`."""
    _checks.one_of("solver", solver, ODE_SOLVERS)
    num_intervals = _checks.number("num_intervals", num_intervals, integer=True, low=1)
    per = 1 if solver == "euler" else 2
    return per * num_intervals - int(afs) + int(final_denoise)


def _decreasing_positive(xp, ts):
    """Elementwise: ts_k finite, > 0, and ts_k > ts_{k+1} (the last entry compares with 0)."""
    nxt = xp.concatenate([ts[1:], xp.zeros_like(ts[:1])])
    return xp.isfinite(ts) & (ts > 0) & (ts > nxt)


def _as_step_array(v, n, name):
    v = jnp.asarray(v, jnp.result_type(float))
    if v.ndim == 0:
        return jnp.full((n,), v)
    if v.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have one entry per step ({n}), got shape {v.shape}")
    return v


def ode_sample(
    denoise_fn: Callable,
    process: Process,
    x_init: Array,
    ts,
    solver: str = "heun",
    afs: bool = False,
    r: Any = 0.5,
    c: Any = 1.0,
    rc_fn: Callable | None = None,
    final_denoise: bool = False,
    return_trajectory: bool = False,
    validate: bool | None = None,
):
    """Solve the probability-flow ODE from x_init at t_0 = ts[0] down to ts[-1] > 0.

    denoise_fn(x [B, ...], t [B]) -> E[x0 | x_t = x]; ts: decreasing times (NumPy/array, n + 1 entries).
    solver: 'euler' | 'heun' | 'dpm2' | 'amed'. For 'amed', r and c are scalars or arrays [n] (per step),
        or rc_fn(k, y, d0, sig0, sig1) -> (r [B], c [B]) (the learned AMED predictor; k the step index).
    afs: analytical first step (d0 = y / sqrt(1 + sig0^2) at the first step, no evaluation).
    final_denoise: return denoise_fn(x_n, t_n) instead of x_n (one more NFE).
    return_trajectory: also return the states x at every grid time [n + 1, B, ...].
    NFE = `ode_nfe(solver, n, afs, final_denoise)`.

    ts must be finite, > 0 and strictly decreasing (a grid in the wrong order integrates the ODE backwards,
    towards noise, and returns garbage): ValueError when ts is concrete (NumPy, a list, a jax Array outside
    jit). A traced ts (passed as a jit argument) is not checked unless validate=True, which checks it with
    checkify (wrap the jitted function with `jax.experimental.checkify.checkify`); validate=False skips it.
    Concrete r must lie in [0, 1] (the intermediate noise level sits between the step's ends), c be finite.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got {solver!r}")
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 2:
        raise ValueError(f"ts must be a 1-D array of at least two decreasing times, got shape {jnp.shape(ts)}")
    _checks.values("ts", ts, _decreasing_positive, "finite, > 0 and strictly decreasing (noise to data)",
                   validate=validate)
    if jnp.ndim(x_init) < 1:
        raise ValueError(f"x_init must be an array [B, ...], got shape {jnp.shape(x_init)}")
    if solver == "amed" and rc_fn is None:
        _checks.values("r", r, lambda xp, v: (v >= 0) & (v <= 1), "in [0, 1]", validate=validate)
        _checks.values("c", c, _checks.finite, "finite", validate=validate)
    ts = jnp.asarray(ts, x_init.dtype)
    n = ts.shape[0] - 1
    b = x_init.shape[0]
    dt = x_init.dtype
    bc = lambda v, x: broadcast_to_batch(v, x)  # noqa: E731
    rs = _as_step_array(r, n, "r").astype(dt)
    cs = _as_step_array(c, n, "c").astype(dt)

    def D(y, t):
        """Denoiser in EDM coordinates y = x / alpha(t); t a scalar or per-sample ([B] or [B, 1, ...])."""
        t = jnp.asarray(t, dt)
        tb = jnp.full((b,), t, dt) if t.ndim == 0 else t.reshape(b, -1)[:, 0]
        return denoise_fn(bc(process.alpha(tb), y).astype(dt) * y, tb).astype(dt)

    def sig_of(t):
        return process.sigma_ratio(t).astype(dt)

    def step(k, y, t0, t1, first):
        s0, s1 = sig_of(t0), sig_of(t1)
        if first and afs:
            d0 = y / jnp.sqrt(1.0 + s0**2)
        else:
            d0 = (y - D(y, t0)) / s0
        if solver == "euler":
            return y + (s1 - s0) * d0
        if solver == "heun":
            y_e = y + (s1 - s0) * d0
            d1 = (y_e - D(y_e, t1)) / s1
            return y + (s1 - s0) * 0.5 * (d0 + d1)
        if solver == "amed":
            if rc_fn is not None:
                rk, ck = rc_fn(k, y, d0, s0, s1)
                rk, ck = bc(rk, y).astype(dt), bc(ck, y).astype(dt)
            else:
                rk, ck = rs[k], cs[k]
            s_m = s1**rk * s0 ** (1.0 - rk)
            t_m = process.time_of_sigma_ratio(s_m).astype(dt)
            y_m = y + (s_m - s0) * d0
            d_m = (y_m - D(y_m, t_m)) / s_m
            return y + ck * (s1 - s0) * d_m
        # dpm2: DPM-Solver-2 in x-space with the exponential integrator (eps-prediction, r1 = 1/2)
        a0, a1 = process.alpha(t0).astype(dt), process.alpha(t1).astype(dt)
        sg0, sg1 = process.sigma(t0).astype(dt), process.sigma(t1).astype(dt)
        lam0, lam1 = jnp.log(a0 / sg0), jnp.log(a1 / sg1)
        h = lam1 - lam0
        t_m = process.time_of_log_snr(2.0 * (lam0 + 0.5 * h)).astype(dt)
        a_m, sg_m = process.alpha(t_m).astype(dt), process.sigma(t_m).astype(dt)
        x = a0 * y
        eps0 = d0  # in EDM coordinates d = (y - D) / sig = (x - alpha D) / sigma = eps
        u = (a_m / a0) * x - sg_m * jnp.expm1(0.5 * h) * eps0
        eps_m = (u - a_m * D(u / a_m, t_m)) / sg_m
        x1 = (a1 / a0) * x - sg1 * jnp.expm1(h) * eps_m
        return x1 / a1

    y = x_init / process.alpha(ts[0]).astype(dt)
    y = step(0, y, ts[0], ts[1], True)
    traj = [x_init, process.alpha(ts[1]).astype(dt) * y] if return_trajectory else None
    if n > 1:
        def body(y, inp):
            k, t0, t1 = inp
            y = step(k, y, t0, t1, False)
            return y, (process.alpha(t1).astype(dt) * y if return_trajectory else None)

        y, rest = jax.lax.scan(body, y, (jnp.arange(1, n), ts[1:-1], ts[2:]))
        if return_trajectory:
            traj = jnp.concatenate([jnp.stack(traj), rest], 0)
    elif return_trajectory:
        traj = jnp.stack(traj)
    x = process.alpha(ts[-1]).astype(dt) * y
    if final_denoise:
        x = denoise_fn(x, jnp.full((b,), ts[-1], dt)).astype(dt)
    return (x, traj) if return_trajectory else x


def reference_ode_solve(denoise_fn: Callable, process: Process, x_init: Array, t_start: float, t_end: float,
                        rtol: float = 1e-6, atol: float = 1e-6, max_steps: int = 100_000,
                        return_nfe: bool = False):
    """High-accuracy reference: the same probability-flow ODE with diffrax Tsit5 and a PID step-size
    controller, in the variable u = log sig: dy/du = y - D(y, sig) (smooth across noise scales).
    return_nfe: also return the number of denoiser evaluations (6 per attempted Tsit5 step + 1).
    Concrete arguments are checked: 0 < t_end < t_start, rtol, atol > 0, max_steps an integer >= 1."""
    t_end = _checks.number("t_end", t_end, low=0, low_open=True)
    _checks.number("t_start", t_start, low=t_end, low_open=True,
                   accepted=f"a finite number > t_end = {t_end} (the solve runs from noise to data)")
    _checks.number("rtol", rtol, low=0, low_open=True)
    _checks.number("atol", atol, low=0, low_open=True)
    max_steps = _checks.number("max_steps", max_steps, integer=True, low=1)
    import diffrax

    b = x_init.shape[0]
    dt = x_init.dtype
    u0 = jnp.log(process.sigma_ratio(jnp.asarray(t_start, dt)))
    u1 = jnp.log(process.sigma_ratio(jnp.asarray(t_end, dt)))

    def vf(u, y, args):
        t = process.time_of_sigma_ratio(jnp.exp(u)).astype(dt)
        return y - denoise_fn(process.alpha(t) * y, jnp.full((b,), t, dt)).astype(dt)

    y0 = x_init / process.alpha(jnp.asarray(t_start, dt))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), diffrax.Tsit5(), t0=u0, t1=u1, dt0=(u1 - u0) / 100, y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
    )
    x = process.alpha(jnp.asarray(t_end, dt)) * sol.ys[-1]
    if return_nfe:
        return x, 6 * (sol.stats["num_accepted_steps"] + sol.stats["num_rejected_steps"]) + 1
    return x
