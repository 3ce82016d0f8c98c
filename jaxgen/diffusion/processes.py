"""Diffusion processes x_t = alpha(t) x0 + sigma(t) eps, and conversions between predictions.

One convention for the whole package: t in [0, 1], t = 0 is data, t = 1 is noise. Every process
here is a frozen dataclass registered as a pytree (arrays are leaves, sizes are static), so it can be
closed over or passed through `jax.jit`. Each exposes

    alpha(t), sigma(t)          the marginal q(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I)
    alpha_sigma_dt(t)           (alpha'(t), sigma'(t)) by forward-mode autodiff
    log_snr(t)                  lambda(t) = log(alpha^2 / sigma^2)
    marginal(x0, t, eps)        alpha(t) x0 + sigma(t) eps

Processes:
    DiscreteVP        DDPM (Ho et al. 2020): T steps, step i <-> t = i / T, alpha = sqrt(abar_i), sigma = sqrt(1 - abar_i).
    ContinuousVP      Song et al. 2021: linear beta(t) in [beta_min, beta_max], or the continuous cosine schedule.
    VE                Song et al. 2021: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t for t > 0, 0 at t = 0.
    EDM               Karras et al. 2022: alpha = 1, sigma(t) = sigma_max t (the solver picks the sigma grid).
    RectifiedFlow     Liu et al. 2023: alpha = 1 - t, sigma = t (papers put noise at t = 0; flipped here).

Schedule arrays are computed in NumPy float64 on the host, then cast.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import _checks

Array = Any

__all__ = [
    "Process",
    "DiscreteVP",
    "ContinuousVP",
    "VE",
    "EDM",
    "RectifiedFlow",
    "make_schedule",
    "make_process",
    "linear_betas",
    "cosine_betas",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_score",
    "score_to_eps",
    "x0_to_score",
    "score_to_x0",
    "x0_eps_to_v",
    "v_to_x0",
    "v_to_eps",
    "x0_eps_to_velocity",
    "velocity_to_x0_eps",
    "broadcast_to_batch",
]


def broadcast_to_batch(c: Array, x: Array) -> Array:
    """A per-example coefficient c of shape [B] (or a scalar) reshaped to broadcast against x [B, ...]:
    [B] -> [B, 1, ..., 1] with x.ndim axes, so that c * x scales example b by c_b."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _pytree_dataclass(cls=None, *, meta=()):
    """Frozen dataclass registered as a pytree; fields named in `meta` are static."""

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        data = [n for n in names if n not in meta]
        return jax.tree_util.register_dataclass(c, data_fields=data, meta_fields=list(meta))

    return wrap if cls is None else wrap(cls)


class Process:
    """Base class: subclasses define `alpha(t)` and `sigma(t)` for t of any shape."""

    def alpha(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        return self.alpha(t), self.sigma(t)

    def alpha_sigma_dt(self, t: Array) -> tuple[Array, Array]:
        """(d alpha / dt, d sigma / dt), elementwise, by forward-mode autodiff."""
        t = jnp.asarray(t, jnp.result_type(float))
        ones = jnp.ones_like(t)
        _, da = jax.jvp(self.alpha, (t,), (ones,))
        _, ds = jax.jvp(self.sigma, (t,), (ones,))
        return da, ds

    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2)."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def sigma_ratio(self, t: Array) -> Array:
        """sigma(t) / alpha(t): the EDM noise level of x_t / alpha(t) = x0 + (sigma/alpha) eps."""
        return self.sigma(t) / self.alpha(t)

    def time_of_log_snr(self, lam: Array) -> Array:
        """Inverse of log_snr (decreasing in t) by bisection on [0, 1] (subclasses override with closed forms)."""
        lam = jnp.asarray(lam, jnp.result_type(float))
        lo, hi = jnp.zeros_like(lam), jnp.ones_like(lam)

        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            go_right = self.log_snr(mid) > lam  # still too clean: the answer is later
            return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
        return 0.5 * (lo + hi)

    def time_of_sigma_ratio(self, r: Array) -> Array:
        """t such that sigma(t) / alpha(t) = r (r > 0)."""
        return self.time_of_log_snr(-2.0 * jnp.log(jnp.asarray(r, jnp.result_type(float))))

    def marginal(self, x0: Array, t: Array, eps: Array) -> Array:
        """x_t = alpha(t) x0 + sigma(t) eps, with t of shape [B] (or scalar) and x0, eps of shape [B, ...]."""
        a, s = self.alpha_sigma(t)
        return broadcast_to_batch(a, x0) * x0 + broadcast_to_batch(s, x0) * eps


# ----------------------------------------------------------------------------------------------
# Discrete VP (DDPM)
# ----------------------------------------------------------------------------------------------


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM linear schedule: beta_i = linspace(beta_start, beta_end, T)[i-1], float64, shape [T].

    num_steps: an integer T >= 1; beta_start, beta_end in (0, 1).
    """
    num_steps = _checks.number("num_steps", num_steps, integer=True, low=1)
    _checks.number("beta_start", beta_start, low=0, high=1, low_open=True, high_open=True)
    _checks.number("beta_end", beta_end, low=0, high=1, low_open=True, high_open=True)
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) cosine schedule, float64, shape [T].

    abar(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) * pi / 2)^2,
    beta_i = min(1 - abar(i / T) / abar((i - 1) / T), max_beta).
    num_steps: an integer T >= 1; s >= 0; max_beta in (0, 1).
    """
    num_steps = _checks.number("num_steps", num_steps, integer=True, low=1)
    _checks.number("s", s, low=0)
    _checks.number("max_beta", max_beta, low=0, high=1, low_open=True, high_open=True)
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1.0 + s) * np.pi / 2.0) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


@_pytree_dataclass(meta=("num_steps", "name"))
class DiscreteVP(Process):
    """DDPM's discrete variance-preserving process with T = num_steps steps.

    All arrays have length T + 1 and are indexed by the step i in {0, ..., T}; index 0 is the data
    (beta_0 = 0, abar_0 = 1, posterior entries 0). Step i corresponds to continuous time t = i / T.

        betas[i]                 beta_i
        alphas[i]                alpha_i = 1 - beta_i
        alphas_cumprod[i]        abar_i = prod_{j <= i} alpha_j
        alphas_cumprod_prev[i]   abar_{i-1}  (i >= 1)
        sqrt_alphas_cumprod[i]   sqrt(abar_i)                       (the process's alpha at t = i / T)
        sqrt_one_minus_alphas_cumprod[i]  sqrt(1 - abar_i)          (the process's sigma at t = i / T)
        posterior_variance[i]    beta_tilde_i = beta_i (1 - abar_{i-1}) / (1 - abar_i)
        posterior_mean_coef_x0[i]  beta_i sqrt(abar_{i-1}) / (1 - abar_i)
        posterior_mean_coef_xt[i]  (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i)
        log_alphas_cumprod[i]    log abar_i (from float64, so 1 - abar stays accurate near t = 0)

    so that q(x_{i-1} | x_i, x0) = N(coef_x0 x0 + coef_xt x_i, beta_tilde_i I).

    As a continuous process, alpha(t) and sigma(t) interpolate log(abar) linearly between the grid
    points t = i / T (exact on the grid).
    """

    betas: Array
    alphas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    sqrt_alphas_cumprod: Array
    sqrt_one_minus_alphas_cumprod: Array
    posterior_variance: Array
    posterior_mean_coef_x0: Array
    posterior_mean_coef_xt: Array
    log_alphas_cumprod: Array
    num_steps: int
    name: str = "custom"

    @classmethod
    def from_betas(cls, betas: np.ndarray, dtype=jnp.float32, name: str = "custom") -> "DiscreteVP":
        """Build every coefficient in float64 from betas[1..T] (shape [T], values in (0, 1)), then cast."""
        b = np.asarray(betas)
        if b.ndim != 1 or b.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        _checks.values("betas", b, lambda xp, v: (v > 0) & (v < 1), "in the open interval (0, 1)")
        b = b.astype(np.float64)
        T = b.size
        beta = np.concatenate([[0.0], b])
        alpha = 1.0 - beta
        abar = np.cumprod(alpha)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        one_m = 1.0 - abar
        safe = np.where(one_m > 0, one_m, 1.0)  # index 0 has 1 - abar_0 = 0
        post_var = np.where(one_m > 0, beta * (1.0 - abar_prev) / safe, 0.0)
        coef_x0 = np.where(one_m > 0, beta * np.sqrt(abar_prev) / safe, 0.0)
        coef_xt = np.where(one_m > 0, (1.0 - abar_prev) * np.sqrt(alpha) / safe, 0.0)
        cast = lambda a: jnp.asarray(a, dtype=dtype)  # noqa: E731
        return cls(
            betas=cast(beta),
            alphas=cast(alpha),
            alphas_cumprod=cast(abar),
            alphas_cumprod_prev=cast(abar_prev),
            sqrt_alphas_cumprod=cast(np.sqrt(abar)),
            sqrt_one_minus_alphas_cumprod=cast(np.sqrt(one_m)),
            posterior_variance=cast(post_var),
            posterior_mean_coef_x0=cast(coef_x0),
            posterior_mean_coef_xt=cast(coef_xt),
            log_alphas_cumprod=cast(np.cumsum(np.log1p(-beta))),
            num_steps=int(T),
            name=name,
        )

    # --- grid <-> continuous time
    def step_to_time(self, i: Array) -> Array:
        """t = i / T as float32 (what networks receive)."""
        return jnp.asarray(i, jnp.float32) / self.num_steps

    def time_to_step(self, t: Array) -> Array:
        """Nearest step index round(t T), int32."""
        return jnp.round(jnp.asarray(t) * self.num_steps).astype(jnp.int32)

    # --- continuous view (log-linear interpolation of abar between grid points)
    def _log_abar(self, t: Array) -> Array:
        t = jnp.asarray(t, self.alphas_cumprod.dtype)
        grid = self.log_alphas_cumprod
        u = jnp.clip(t, 0.0, 1.0) * self.num_steps
        lo = jnp.clip(jnp.floor(u), 0, self.num_steps - 1).astype(jnp.int32)
        w = u - lo
        return (1.0 - w) * grid[lo] + w * grid[lo + 1]

    def alpha(self, t: Array) -> Array:
        return jnp.exp(0.5 * self._log_abar(t))

    def sigma(self, t: Array) -> Array:
        return jnp.sqrt(-jnp.expm1(self._log_abar(t)))

    def time_of_log_snr(self, lam: Array) -> Array:
        """Exact inverse of the interpolated log-SNR: log abar = -log(1 + exp(-lam)), then invert the
        piecewise-linear log abar(t) (decreasing) on its grid."""
        lam = jnp.asarray(lam, self.alphas_cumprod.dtype)
        target = -jax.nn.softplus(-lam)  # log abar
        grid = self.log_alphas_cumprod  # decreasing, grid[0] = 0
        # number of grid points >= target, minus one, is the left end of the interval
        lo = jnp.clip(jnp.sum(grid[None, :] >= target[..., None], axis=-1) - 1, 0, self.num_steps - 1)
        lo = jnp.reshape(lo, jnp.shape(target))
        g0, g1 = grid[lo], grid[lo + 1]
        w = jnp.clip((target - g0) / (g1 - g0), 0.0, 1.0)
        return (lo + w) / self.num_steps


def make_schedule(name: str = "linear", num_steps: int = 1000, dtype=jnp.float32) -> DiscreteVP:
    """DDPM schedule by name: 'linear' (beta 1e-4 -> 0.02, Ho et al.) or 'cosine' (Nichol & Dhariwal,
    s = 0.008, beta clipped at 0.999). Coefficients are computed in float64 and cast to `dtype`."""
    num_steps = _checks.number("num_steps", num_steps, integer=True, low=1)
    if name == "linear":
        betas = linear_betas(num_steps)
    elif name == "cosine":
        betas = cosine_betas(num_steps)
    else:
        raise ValueError(f"schedule name must be one of 'linear', 'cosine'; got {name!r}")
    return DiscreteVP.from_betas(betas, dtype=dtype, name=name)


# ----------------------------------------------------------------------------------------------
# Continuous processes
# ----------------------------------------------------------------------------------------------


@_pytree_dataclass(meta=("schedule", "beta_min", "beta_max", "cosine_s"))
class ContinuousVP(Process):
    """Continuous VP SDE (Song et al. 2021), alpha^2 + sigma^2 = 1.

    schedule='linear': log alpha(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2 (defaults 0.1, 20).
    schedule='cosine': alpha(t) = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2), s = 0.008.
    """

    schedule: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008

    def __post_init__(self):
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        _checks.number("beta_min", self.beta_min, low=0)
        _checks.number("beta_max", self.beta_max, low=max(self.beta_min, 0.0), low_open=self.beta_min <= 0,
                       accepted=f"a finite number > 0 and >= beta_min = {self.beta_min}")
        _checks.number("cosine_s", self.cosine_s, low=0)

    def _log_alpha(self, t):
        t = jnp.asarray(t, jnp.result_type(float))
        if self.schedule == "linear":
            return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        s = self.cosine_s
        # clip keeps alpha > 0 at t = 1 (cos(pi/2 (1+s)/(1+s)) = 0)
        c = jnp.cos((jnp.minimum(t, 1.0 - 1e-4) + s) / (1.0 + s) * math.pi / 2.0)
        return jnp.log(c) - math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))

    def alpha(self, t):
        return jnp.exp(self._log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))


@_pytree_dataclass(meta=("sigma_min", "sigma_max"))
class VE(Process):
    """Variance-exploding (Song et al. 2021): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t
    for t > 0; sigma(0) = 0 so that t = 0 is exactly the data."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        _checks.number("sigma_min", self.sigma_min, low=0, low_open=True)
        _checks.number("sigma_max", self.sigma_max, low=self.sigma_min, low_open=True,
                       accepted=f"a finite number > sigma_min = {self.sigma_min}")

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        t = jnp.asarray(t, jnp.result_type(float))
        s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return jnp.where(t > 0, s, 0.0)


@_pytree_dataclass(meta=("sigma_max",))
class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, sigma(t) = sigma_max t. The EDM ODE in sigma,
    dx/dsigma = (x - D(x, sigma)) / sigma, is this process's probability-flow ODE in t rescaled."""

    sigma_max: float = 80.0

    def __post_init__(self):
        _checks.number("sigma_max", self.sigma_max, low=0, low_open=True)

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_max * jnp.asarray(t, jnp.result_type(float))

    def time_of_sigma(self, sigma):
        return jnp.asarray(sigma) / self.sigma_max

    def time_of_log_snr(self, lam):
        return jnp.exp(-0.5 * jnp.asarray(lam, jnp.result_type(float))) / self.sigma_max


@_pytree_dataclass
class RectifiedFlow(Process):
    """Rectified flow's straight line x_t = (1 - t) x0 + t eps (Liu et al. 2023 put noise at t = 0 and
    data at t = 1; jaxgen flips it). The velocity dx_t/dt = eps - x0."""

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, jnp.result_type(float))

    def sigma(self, t):
        return jnp.asarray(t, jnp.result_type(float))

    def time_of_log_snr(self, lam):
        # sigma/alpha = t / (1 - t) = exp(-lam/2)
        return jax.nn.sigmoid(-0.5 * jnp.asarray(lam, jnp.result_type(float)))


def make_process(name: str, **kwargs) -> Process:
    """'ddpm-linear' / 'ddpm-cosine' (DiscreteVP, kwarg num_steps), 'vp' / 'vp-cosine', 've', 'edm', 'rf'."""
    allowed = {"ddpm-linear": ("num_steps", "dtype"), "ddpm-cosine": ("num_steps", "dtype"),
               "vp": ("beta_min", "beta_max"), "vp-cosine": ("cosine_s",), "ve": ("sigma_min", "sigma_max"),
               "edm": ("sigma_max",), "rf": ()}
    unknown = sorted(set(kwargs) - set(allowed.get(name, kwargs)))
    if unknown:
        raise ValueError(f"process {name!r} accepts the keyword arguments {allowed[name]}, got {unknown}")
    if name in ("ddpm-linear", "ddpm-cosine"):
        return make_schedule(name.split("-")[1], **kwargs)
    if name == "vp":
        return ContinuousVP("linear", **kwargs)
    if name == "vp-cosine":
        return ContinuousVP("cosine", **kwargs)
    if name == "ve":
        return VE(**kwargs)
    if name == "edm":
        return EDM(**kwargs)
    if name == "rf":
        return RectifiedFlow()
    raise ValueError(
        f"process name must be one of 'ddpm-linear', 'ddpm-cosine', 'vp', 'vp-cosine', 've', 'edm', 'rf'; got {name!r}"
    )


# ----------------------------------------------------------------------------------------------
# Conversions between predictions at a point x = alpha x0 + sigma eps.
# alpha, sigma: scalars or arrays broadcastable against x (use broadcast_to_batch for per-example [B] values).
# ----------------------------------------------------------------------------------------------


def eps_to_x0(x, eps, alpha, sigma):
    """x0 = (x - sigma eps) / alpha."""
    return (x - sigma * eps) / alpha


def x0_to_eps(x, x0, alpha, sigma):
    """eps = (x - alpha x0) / sigma."""
    return (x - alpha * x0) / sigma


def eps_to_score(eps, sigma):
    """score = grad_x log p_t(x) = -E[eps | x] / sigma (Tweedie)."""
    return -eps / sigma


def score_to_eps(score, sigma):
    """eps = -sigma score."""
    return -sigma * score


def x0_to_score(x, x0, alpha, sigma):
    """score = (alpha x0 - x) / sigma^2."""
    return (alpha * x0 - x) / sigma**2


def score_to_x0(x, score, alpha, sigma):
    """x0 = (x + sigma^2 score) / alpha."""
    return (x + sigma**2 * score) / alpha


def x0_eps_to_v(x0, eps, alpha, sigma):
    """Salimans & Ho (2022) v-prediction: v = alpha eps - sigma x0 (for VP, alpha^2 + sigma^2 = 1)."""
    return alpha * eps - sigma * x0


def v_to_x0(x, v, alpha, sigma):
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2) (general alpha, sigma)."""
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def v_to_eps(x, v, alpha, sigma):
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2)."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def x0_eps_to_velocity(x0, eps, dalpha, dsigma):
    """Flow velocity dx_t/dt = alpha'(t) x0 + sigma'(t) eps (rectified flow: eps - x0)."""
    return dalpha * x0 + dsigma * eps


def velocity_to_x0_eps(x, u, alpha, sigma, dalpha, dsigma):
    """Solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; u] for (x0, eps)."""
    det = alpha * dsigma - sigma * dalpha
    x0 = (dsigma * x - sigma * u) / det
    eps = (alpha * u - dalpha * x) / det
    return x0, eps


def denoiser_from_eps(eps_fn, process: Process, clip_x0: float | None = None):
    """x0-prediction D(x, t) = (x - sigma(t) eps_fn(x, t)) / alpha(t) for the ODE solvers, clipped to
    [-clip_x0, clip_x0] when given (t [B]); clip_x0: None or a finite number > 0."""
    _checks.optional_number("clip_x0", clip_x0, low=0, low_open=True)

    def denoise(x, t):
        a, s = process.alpha_sigma(t)
        x0 = (x - broadcast_to_batch(s, x) * eps_fn(x, t)) / broadcast_to_batch(a, x)
        return x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)

    return denoise
