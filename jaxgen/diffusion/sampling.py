"""One dispatch from a sampling setting (a training config's `eval` section) to samples, for every sampler.

    spec = SamplerSpec.from_config(config.eval)            # or SamplerSpec("heun", steps=35)
    x = sample(model_fns(net, param), process, shape, key, spec)

Samplers (`spec.sampler`, `spec.steps` = K, 0 = all T steps of the discrete VP):
    'ddpm'   ancestral, K steps (uniform or quadratic `skip`); `variance`: 'beta' | 'beta_tilde' | 'analytic'
             (Analytic-DPM, Bao et al. 2022a) | 'npr' | 'sn' (Bao et al. 2022b)                 discrete VP
    'ddim'   K steps with `eta` (Song et al. 2021a); 'analytic' | 'npr' | 'sn' add the optimal variance  discrete VP
    'pc'     K noise levels, each with one Langevin corrector (2K evaluations)                          discrete VP
    'euler' | 'heun' | 'dpm2' | 'amed'   the probability-flow ODE in the EDM noise level with K evaluations
             (EDM grid, rho = 7; the 2-stage solvers take the analytical first step when K is odd)   any process
    'flow_euler' | 'flow_heun'   dx/dt = v(x, t) on K uniform steps in t from 1 to 0 (K or 2K evaluations)
    'rk45'   dx/dt = v(x, t) by adaptive Dormand-Prince (K unused)                                      any process
`clip_x0` (None or c) clips x0-predictions of the VP and PF-ODE samplers to [-c, c]; `pixel_width` is Analytic-DPM's
clip of the second-to-last step. Learned parts are passed in: `variances` (Analytic-DPM), `cov_fn` (an SN/NPR head),
`rc_fn` (an AMED predictor).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion import samplers as S
from jaxgen.diffusion.ddpm import ddpm_sample
from jaxgen.diffusion.interpolants import flow_solve, flow_solve_adaptive, uniform_grid
from jaxgen.diffusion.objectives import ModelFns
from jaxgen.diffusion.processes import DiscreteVP, Process

DISCRETE_SAMPLERS = ("ddpm", "ddim", "pc")
PF_ODE_SAMPLERS = S.ODE_SOLVERS  # euler, heun, dpm2, amed
FLOW_SAMPLERS = ("flow_euler", "flow_heun", "rk45")
SAMPLERS = DISCRETE_SAMPLERS + PF_ODE_SAMPLERS + FLOW_SAMPLERS
VARIANCES = ("beta", "beta_tilde", "analytic", "npr", "sn")
LEARNED_VARIANCES = ("analytic", "npr", "sn")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A sampling setting (module docstring); `from_config(config.eval)` reads the keys of the same names."""

    sampler: str = "ddpm"
    steps: int = 0
    variance: str = "beta"
    eta: float = 0.0
    skip: str = "uniform"
    clip_x0: float | None = 1.0
    pixel_width: float | None = None

    @classmethod
    def from_config(cls, ev) -> "SamplerSpec":
        return cls(sampler=ev.sampler, steps=int(ev.sample_steps), variance=ev.variance, eta=float(ev.eta),
                   skip=ev.skip, clip_x0=ev.clip_x0, pixel_width=ev.pixel_width)

    def check(self, process: Process) -> None:
        """ValueError naming the setting that `process` cannot sample with."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        discrete = isinstance(process, DiscreteVP)
        if self.sampler in DISCRETE_SAMPLERS and not discrete:
            raise ValueError(f"sampler {self.sampler!r} needs the discrete VP process (DDPM); for "
                             f"{type(process).__name__} use one of {PF_ODE_SAMPLERS + FLOW_SAMPLERS}")
        if self.variance in LEARNED_VARIANCES and self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"variance {self.variance!r} needs sampler 'ddpm' or 'ddim', got {self.sampler!r}")
        top = process.num_steps if discrete else None
        if self.steps < 0 or (top is not None and self.steps > top):
            raise ValueError(f"steps must be in [0, {top}] (0 = all steps), got {self.steps}" if top else
                             f"steps must be >= 1, got {self.steps}")
        if not discrete and self.steps == 0 and self.sampler != "rk45":
            raise ValueError(f"steps must be >= 1 for {type(process).__name__} (0 = all T steps exists only "
                             f"for the discrete VP), got 0")
        if self.sampler in PF_ODE_SAMPLERS and self.sampler != "euler" and self.steps == 1:
            raise ValueError(f"steps (the NFE) must be >= 2 for {self.sampler!r} (or 0 = T)")

    @property
    def learned(self) -> str | None:
        """Which learned part the setting needs: 'analytic', 'npr', 'sn', 'amed' or None."""
        if self.sampler in ("ddpm", "ddim") and self.variance in LEARNED_VARIANCES:
            return self.variance
        return "amed" if self.sampler == "amed" else None

    def without_learned(self) -> "SamplerSpec":
        """Learned parts replaced by their plain counterparts (Analytic/SN/NPR -> beta_tilde, AMED -> DPM-Solver-2,
        which is AMED with r = 1/2, c = 1)."""
        if self.learned in LEARNED_VARIANCES:
            return dataclasses.replace(self, variance="beta_tilde")
        return dataclasses.replace(self, sampler="dpm2") if self.learned == "amed" else self

    @property
    def eta_value(self) -> float:
        return 1.0 if self.sampler == "ddpm" else float(self.eta)

    @property
    def data_range(self) -> float | None:
        """Width of the data interval for the Analytic-DPM clip: [-clip_x0, clip_x0], or unbounded."""
        return None if self.clip_x0 is None else 2.0 * self.clip_x0

    def tag(self) -> str:
        """A short name of the setting, e.g. 'ddim-K50-eta0', 'heun-nfe9', 'flow_euler-K4' or 'rk45'."""
        K = self.steps or "T"
        if self.sampler == "rk45":
            return "rk45"
        if self.sampler in PF_ODE_SAMPLERS:
            return f"{self.sampler}-nfe{K}"
        tag = f"{self.sampler}-K{K}"
        if self.sampler in FLOW_SAMPLERS:
            return tag
        if self.sampler == "ddim":
            tag += f"-eta{self.eta:g}"
        if self.sampler == "ddpm" or (self.sampler == "ddim" and self.variance in LEARNED_VARIANCES):
            tag += f"-{self.variance}"
        return tag + ("-quadratic" if self.skip == "quadratic" and self.sampler != "pc" else "")


def pf_ode_grid(process: Process, nfe: int, solver: str, t_min: float = 1e-3) -> tuple[np.ndarray, bool]:
    """(times, afs) for `nfe` evaluations of a PF-ODE solver: Euler takes nfe intervals, the 2-stage solvers
    ceil(nfe / 2), with the analytical first step when nfe is odd. EDM grid (rho = 7) in the noise level
    s = sigma / alpha from min(80, s(1)) down to max(s(t_min), 0.002); t_min = 1 / T for the discrete VP (its
    first training step)."""
    n = nfe if solver == "euler" else -(-nfe // 2)
    if isinstance(process, DiscreteVP):
        t_min = 1.0 / process.num_steps
    with jax.ensure_compile_time_eval():  # a host-side grid, also when called under jit
        sigma_min = max(float(process.sigma_ratio(jnp.asarray(t_min, jnp.float32))), 0.002)
    return S.time_grid(process, n, sigma_min=sigma_min), solver != "euler" and nfe % 2 == 1


def sample(fns: ModelFns, process: Process, shape, key, spec: SamplerSpec, *, t_min: float = 1e-3,
           variances=None, cov_fn=None, rc_fn=None, grid=None, x_init=None):
    """Samples [shape] with the sampler of `spec` on `process` (module docstring).

    fns: the model's eps / x0 / velocity functions (`objectives.model_fns`); variances: Analytic-DPM's per-step
    variances; cov_fn: an SN/NPR head's diagonal Cov[x0 | x_t]; rc_fn: a trained AMED predictor.
    grid: (times, afs) replacing `pf_ode_grid` for the PF-ODE samplers; x_init: the starting noise of the ODE
    samplers (default sigma(t_start) N(0, I) from key).
    """
    spec.check(process)
    if spec.sampler in FLOW_SAMPLERS:
        if x_init is None:
            x_init = process.sigma(jnp.float32(1.0)) * jax.random.normal(key, shape)
        if spec.sampler == "rk45":
            return flow_solve_adaptive(fns.velocity, x_init, 1.0, 0.0)
        return flow_solve(fns.velocity, x_init, uniform_grid(spec.steps), spec.sampler.split("_")[1])
    if spec.sampler in PF_ODE_SAMPLERS:
        K = spec.steps or process.num_steps
        ts, afs = pf_ode_grid(process, K, spec.sampler, t_min) if grid is None else grid
        if x_init is None:
            x_init = process.sigma(jnp.asarray(ts[0], jnp.float32)) * jax.random.normal(key, shape)
        denoise = fns.denoise
        if spec.clip_x0 is not None:
            c = spec.clip_x0
            denoise = lambda x, t: jnp.clip(fns.denoise(x, t), -c, c)  # noqa: E731
        return S.ode_sample(denoise, process, x_init, ts, spec.sampler, afs=afs, rc_fn=rc_fn)
    eps_fn, K = fns.eps, spec.steps or process.num_steps
    if spec.sampler == "pc":
        return S.pc_sample(eps_fn, process, shape, key, K, skip=spec.skip)
    if spec.variance in LEARNED_VARIANCES:
        ts = S.skip_timesteps(process.num_steps, K, spec.skip)
        return S.vp_sample(eps_fn, process, shape, key, ts, eta=spec.eta_value,
                           variance="lambda" if variances is None else variances, cov_fn=cov_fn, clip_x0=spec.clip_x0)
    if spec.sampler == "ddpm":
        if K == process.num_steps:
            return ddpm_sample(eps_fn, process, shape, key, variance=spec.variance, clip_x0=spec.clip_x0)
        return S.ddpm_skip_sample(eps_fn, process, shape, key, K, variance=spec.variance, skip=spec.skip,
                                  clip_x0=spec.clip_x0)
    return S.ddim_sample(eps_fn, process, shape, key, K, eta=spec.eta, skip=spec.skip, clip_x0=spec.clip_x0)


def start_scale(process: Process, spec: SamplerSpec, t_min: float = 1e-3):
    """sigma at the time the ODE samplers start: x_init = start_scale * x1 for unit Gaussian noise x1."""
    if spec.sampler in FLOW_SAMPLERS:
        return process.sigma(jnp.float32(1.0))
    if spec.sampler in PF_ODE_SAMPLERS:
        ts, _ = pf_ode_grid(process, spec.steps or process.num_steps, spec.sampler, t_min)
        return process.sigma(jnp.asarray(ts[0], jnp.float32))
    raise ValueError(f"a deterministic ODE sampler is needed ({PF_ODE_SAMPLERS + FLOW_SAMPLERS}), got "
                     f"{spec.sampler!r}")


def sample_pair(fns: ModelFns, process: Process, shape, key, spec: SamplerSpec, *, t_min: float = 1e-3, **kwargs):
    """(x0, x1): unit Gaussian noise x1 from key and the ODE sample x0 integrated from start_scale * x1 (a reflow
    pair, Liu et al. 2023)."""
    x1 = jax.random.normal(key, shape)
    x0 = sample(fns, process, shape, None, spec, t_min=t_min, x_init=start_scale(process, spec, t_min) * x1, **kwargs)
    return x0, x1


def sample_per_example(fns: ModelFns, process: Process, shape, keys, spec: SamplerSpec, **kwargs):
    """`sample` with one key per example (keys [B]): example b depends only on keys[b], so a batch gives the same
    examples however it is split over devices or batches. shape: one example's shape."""
    one = lambda k: sample(fns, process, (1,) + tuple(shape), k, spec, **kwargs)[0]  # noqa: E731
    return jax.vmap(one)(keys)
