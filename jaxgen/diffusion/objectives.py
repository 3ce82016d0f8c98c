"""What a diffusion network predicts, and the training loss of every process in one function.

A network net(x_in, t_in) is read through a `Parameterization` of a process x_t = alpha(t) x0 + sigma(t) eps:

    prediction  network output            x0-prediction D(x_t, t) from the output        error scale r(t)
    'eps'       eps                       (x - sigma eps_hat) / alpha                   sigma / alpha
    'x0'        x0                        the output                                    1
    'v'         v = alpha eps - sigma x0  (alpha x - sigma v_hat) / (alpha^2 + sigma^2)   sigma / (alpha^2 + sigma^2)
                (Salimans & Ho 2022)
    'velocity'  dx_t/dt = alpha' x0 + sigma' eps (flow matching / rectified flow)    |sigma / (alpha sigma' - sigma alpha')|
    'edm'       F with D = c_skip x~ + c_out F(c_in x~, c_noise)  (Karras et al. 2022, Table 1)        c_out
                where x~ = x / alpha has noise level s = sigma / alpha and
                c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
                c_noise = log(s) / 4 (the network's time input), sd = sigma_data

The error scale r(t) converts errors: |D - x0| = r(t) |output - target|. The loss is

    L = E_t E_{x0, eps} w(t) mean_dims (output - target)^2,   w(t) = lambda(t) r(t)^2,

with lambda(t) the weight of the x0-space error |D - x0|^2 (Hang et al. 2023 write every weighting so):

    weighting   lambda(t)                                  what it is
    'uniform'   1 / r(t)^2 (w = 1)                         plain MSE on the prediction's own target: L_simple
                                                           (eps), EDM's loss ('edm'), flow matching ('velocity')
    'snr'       SNR(t) = alpha^2 / sigma^2                 the eps-MSE whatever the prediction
    'min_snr'   min(SNR(t), gamma)                         Min-SNR-gamma (Hang et al. 2023), gamma = 5
    'edm'       (s^2 + sd^2) / (s sd)^2                    EDM's lambda(sigma) (Karras et al. 2022, eq. 8)

Training times ('time_sampling'): 'uniform' (t ~ U(t_min, 1); the discrete VP draws its steps i ~ U{1..T} and
t = i / T, exactly DDPM's L_simple), 'lognormal' (log s ~ N(P_mean, P_std^2) with t the time of that noise level,
EDM: P_mean = -1.2, P_std = 1.2), 'logit_normal' (t = sigmoid(m + s n), n ~ N(0, 1); Esser et al. 2024: m = 0, s = 1),
'end' (t = 1 only: with rectified flow's velocity on a teacher's (x0, x1) pairs this is the one-step distillation
of Liu et al. 2023, |x1 - v(x1, 1) - x0|^2 = |G(x1) - x0|^2 for the generator G(x1) = x1 - v(x1, 1)).
Reflow (Liu et al. 2023) trains on a teacher's pairs: `eps` = the noise x1 each x0 was generated from.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.diffusion.ddpm import q_sample
from jaxgen.diffusion.processes import (DiscreteVP, Process, denoiser_from_eps, v_to_x0, velocity_to_x0_eps,
                                        x0_eps_to_v, x0_eps_to_velocity)
from jaxgen.diffusion.processes import broadcast_to_batch
from jaxgen.diffusion.interpolants import velocity_from_denoiser

PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")
WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "lognormal", "logit_normal", "end")

Net = Callable[[jax.Array, jax.Array], jax.Array]


def edm_preconditioning(s, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) at noise level s (Karras et al. 2022, Table 1)."""
    total = s**2 + sigma_data**2
    return sigma_data**2 / total, s * sigma_data * jax.lax.rsqrt(total), jax.lax.rsqrt(total), jnp.log(s) / 4


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """How the output of a network on `process` is read (see the module docstring); sigma_data for 'edm'."""

    process: Process
    prediction: str = "eps"
    sigma_data: float = 0.5

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")

    def _edm(self, x, t):
        a, s = self.process.alpha_sigma(t)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(s / a, self.sigma_data)
        return broadcast_to_batch(1 / a, x) * x, c_skip, c_out, c_in, c_noise

    def apply(self, net: Net, x, t):
        """The raw network output at (x_t = x, t): net(x, t), or net(c_in x~, c_noise) for 'edm'."""
        if self.prediction != "edm":
            return net(x, t)
        x_tilde, _, _, c_in, c_noise = self._edm(x, t)
        return net(broadcast_to_batch(c_in, x) * x_tilde, c_noise)

    def to_x0(self, out, x, t):
        """D(x, t), the x0-prediction, from the network output `out` at (x, t)."""
        a, s = self.process.alpha_sigma(t)
        if self.prediction == "eps":
            return (x - broadcast_to_batch(s, x) * out) / broadcast_to_batch(a, x)
        if self.prediction == "x0":
            return out
        if self.prediction == "v":
            return v_to_x0(x, out, broadcast_to_batch(a, x), broadcast_to_batch(s, x))
        if self.prediction == "velocity":
            da, ds = self.process.alpha_sigma_dt(t)
            return velocity_to_x0_eps(x, out, *(broadcast_to_batch(c, x) for c in (a, s, da, ds)))[0]
        x_tilde, c_skip, c_out, _, _ = self._edm(x, t)
        return broadcast_to_batch(c_skip, x) * x_tilde + broadcast_to_batch(c_out, x) * out

    def target(self, x0, eps, x, t):
        """The network's regression target at x = x_t for the pair (x0, eps)."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        a, s = self.process.alpha_sigma(t)
        if self.prediction == "v":
            return x0_eps_to_v(x0, eps, broadcast_to_batch(a, x0), broadcast_to_batch(s, x0))
        if self.prediction == "velocity":
            da, ds = self.process.alpha_sigma_dt(t)
            return x0_eps_to_velocity(x0, eps, broadcast_to_batch(da, x0), broadcast_to_batch(ds, x0))
        x_tilde, c_skip, c_out, _, _ = self._edm(x, t)
        return (x0 - broadcast_to_batch(c_skip, x) * x_tilde) / broadcast_to_batch(c_out, x)

    def error_scale(self, t):
        """r(t) with |D - x0| = r(t) |output - target| (per example, shape of t)."""
        a, s = self.process.alpha_sigma(t)
        if self.prediction == "eps":
            return s / a
        if self.prediction == "x0":
            return jnp.ones_like(a)
        if self.prediction == "v":
            return s / (a**2 + s**2)
        if self.prediction == "velocity":
            da, ds = self.process.alpha_sigma_dt(t)
            return jnp.abs(s / (a * ds - s * da))
        return edm_preconditioning(s / a, self.sigma_data)[1]


class ModelFns(NamedTuple):
    """One network seen three ways (each f(x [B, ...], t [B])): eps-prediction, x0-prediction D and the
    probability-flow velocity dx/dt, for the samplers."""

    eps: Callable
    denoise: Callable
    velocity: Callable


def model_fns(net: Net, param: Parameterization) -> ModelFns:
    """eps, D and velocity functions of `net` read through `param`. For 'eps' the eps function is the network
    itself and D = (x - sigma eps) / alpha; for 'velocity' the velocity is the network itself."""
    process = param.process
    if param.prediction == "eps":
        denoise = denoiser_from_eps(net, process)
        return ModelFns(net, denoise, velocity_from_denoiser(denoise, process))

    def denoise(x, t):
        return param.to_x0(param.apply(net, x, t), x, t)

    def eps(x, t):
        a, s = process.alpha_sigma(t)
        return (x - broadcast_to_batch(a, x) * denoise(x, t)) / broadcast_to_batch(s, x)

    velocity = (lambda x, t: net(x, t)) if param.prediction == "velocity" else velocity_from_denoiser(denoise, process)
    return ModelFns(eps, denoise, velocity)


def sample_times(key, process: Process, batch: int, kind: str = "uniform", *, t_min: float = 1e-3,
                 mean: float | None = None, std: float | None = None):
    """Training times t [B] (float32) drawn as `kind` (module docstring); (mean, std) of the lognormal /
    logit-normal, default (-1.2, 1.2) / (0, 1). Times are clipped to [t_min, 1] (the discrete VP: [1/T, 1])."""
    if kind not in TIME_SAMPLINGS:
        raise ValueError(f"time sampling must be one of {TIME_SAMPLINGS}, got {kind!r}")
    if isinstance(process, DiscreteVP):
        t_min = 1.0 / process.num_steps
        if kind == "uniform":
            return process.step_to_time(jax.random.randint(key, (batch,), 1, process.num_steps + 1))
    if kind == "uniform":
        return jax.random.uniform(key, (batch,), jnp.float32, t_min, 1.0)
    if kind == "end":
        return jnp.ones((batch,), jnp.float32)
    n = jax.random.normal(key, (batch,), jnp.float32)
    if kind == "lognormal":
        mean, std = (-1.2 if mean is None else mean), (1.2 if std is None else std)
        t = process.time_of_sigma_ratio(jnp.exp(mean + std * n))
    else:
        mean, std = (0.0 if mean is None else mean), (1.0 if std is None else std)
        t = jax.nn.sigmoid(mean + std * n)
    return jnp.clip(t, t_min, 1.0).astype(jnp.float32)


def loss_weight(weighting: str, param: Parameterization, t, *, gamma: float = 5.0):
    """w(t) = lambda(t) r(t)^2 of the module docstring, per example; None for 'uniform' (w = 1)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return None
    a, s = param.process.alpha_sigma(t)
    if weighting == "snr":
        lam = (a / s) ** 2
    elif weighting == "min_snr":
        lam = jnp.minimum((a / s) ** 2, gamma)
    else:
        sd = param.sigma_data
        lam = ((s / a) ** 2 + sd**2) / ((s / a) * sd) ** 2
    return lam * param.error_scale(t) ** 2


def diffusion_loss(net: Net, param: Parameterization, x0, key, *, eps=None, weighting: str = "uniform",
                   time_sampling: str = "uniform", t_min: float = 1e-3, time_mean: float | None = None,
                   time_std: float | None = None, min_snr_gamma: float = 5.0):
    """L = mean_b w(t_b) mean_dims (output_b - target_b)^2 (module docstring), float32 scalar.

    x0 [B, ...]; one time and one eps per example, from key (eps given: a coupling such as reflow's pairs).
    For the discrete VP with 'uniform' times, 'eps' prediction and 'uniform' weighting this is DDPM's L_simple,
    bitwise equal to `ddpm_loss`.
    """
    k_t, k_eps = jax.random.split(key)
    process = param.process
    batch = x0.shape[0]
    if eps is None:
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    if isinstance(process, DiscreteVP) and time_sampling == "uniform":  # on the step grid, as ddpm_loss
        i = jax.random.randint(k_t, (batch,), 1, process.num_steps + 1)
        x_t = q_sample(process, x0, i, eps, validate=False)
        t = process.step_to_time(i)
    else:
        t = sample_times(k_t, process, batch, time_sampling, t_min=t_min, mean=time_mean, std=time_std)
        x_t = process.marginal(x0, t, eps).astype(x0.dtype)
    out = param.apply(net, x_t, t).astype(jnp.float32)
    target = jax.lax.stop_gradient(param.target(x0, eps, x_t, t)).astype(jnp.float32)
    if out.shape != target.shape:
        raise ValueError(f"the network's output {out.shape} must have the data's shape {target.shape}")
    w = loss_weight(weighting, param, t, gamma=min_snr_gamma)
    if w is None:
        return jnp.mean(jnp.square(target - out))
    per_example = jnp.mean(jnp.square(target - out).reshape(batch, -1), axis=1)
    return jnp.mean(w.astype(jnp.float32) * per_example)
