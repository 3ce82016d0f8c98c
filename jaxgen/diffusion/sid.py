"""Score identity Distillation, SiD (Zhou et al. 2024): a one-step generator distilled from a diffusion teacher.

Noise levels are EDM's, x_sigma = x0 + sigma n (the package's `EDM` process read through sigma = sigma_max t:
sigma grows with t, nothing is flipped); a teacher of another process enters through
`jaxgen.diffusion.consistency.edm_denoiser`. Three prediction functions, never network objects:

    teacher(teacher_params, x, sigma [B]) -> E[x0 | x]        the frozen pretrained denoiser f_phi
    fake_apply(fake_params, x, sigma [B], key) -> x0 estimate  f_psi, trained by DSM on generator samples
    generator_apply(gen_params, x_in, key) -> x_g              the one-step generator, x_g = G(sigma_init z)

Generator loss, on x_t = x_g + sigma n with sigma from `sid_sigmas` (gradients flow through x_g, also inside
f_phi and f_psi, whose parameters are held fixed):

    L_G = (f_phi(x_t) - f_psi(x_t))^T [(f_phi(x_t) - x_g) - alpha (f_phi(x_t) - f_psi(x_t))] / w,
    w = sg(mean_j |x_g - f_phi(x_t)|_j)  (clipped below at 1e-5),   alpha = 1.2,

summed over dimensions and averaged over the batch. Fake-score loss (EDM's weighted DSM on sg(x_g)):

    L_psi = lambda(sigma) ||f_psi(x_g + sigma n, sigma) - x_g||^2,  lambda = (sigma^2 + sd^2) / (sigma sd)^2.

`make_sid_step` alternates the two updates in one jitted step (fake score first, then the generator against
the updated fake score), each with its own optax optimizer; an update whose loss or gradients are not finite
is skipped (parameters and optimizer state kept) and counted in the state.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen import _checks
from jaxgen.diffusion.processes import broadcast_to_batch
from jaxgen.train.mesh import shard_batch, shard_like_update

Array = Any

__all__ = [
    "SiDState",
    "sid_sigmas",
    "sid_generator_loss_terms",
    "sid_generator_loss",
    "fake_score_loss",
    "init_sid_state",
    "make_sid_step",
]


@flax.struct.dataclass
class SiDState:
    """The trained parts of SiD (the teacher is passed to the step separately, it never changes)."""

    step: jax.Array
    gen_params: Any
    gen_opt_state: Any
    fake_params: Any
    fake_opt_state: Any
    gen_skipped: jax.Array  # number of generator updates skipped for a non-finite loss or gradient
    fake_skipped: jax.Array


def init_sid_state(gen_params, fake_params, gen_tx: optax.GradientTransformation,
                   fake_tx: optax.GradientTransformation) -> SiDState:
    """SiD initialises both the generator and the fake score from the teacher; pass those copies here."""
    zero = jnp.zeros((), jnp.int32)
    return SiDState(step=zero, gen_params=gen_params, gen_opt_state=gen_tx.init(gen_params),
                    fake_params=fake_params, fake_opt_state=fake_tx.init(fake_params), gen_skipped=zero,
                    fake_skipped=zero)


def sid_sigmas(key: Array, n: int, t_max: float = 0.8, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, dtype=None) -> Array:
    """sigma = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, u ~ U[0, t_max] (SiD's
    tmax = 800/1000 keeps sigma >= 0.085 with the EDM defaults); [n]."""
    t_max = _checks.number("t_max", t_max, low=0.0, high=1.0, low_open=True)
    dtype = dtype or jnp.result_type(float)
    u = jax.random.uniform(key, (n,), dtype, 0.0, t_max)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + u * (lo - hi)) ** rho


def sid_generator_loss_terms(teacher: Callable, fake: Callable, x_g: Array, sigma: Array, noise: Array,
                             alpha: float = 1.2, normalize: bool = True) -> Array:
    """Per-example SiD generator loss (module docstring) with explicit sigma [B] and noise n [B, ...];
    teacher(x, sigma) and fake(x, sigma) are denoisers with their parameters bound.
    normalize=False drops the 1/w normaliser (for checking the unnormalised expectation in closed form).

    Equivalently (f_phi - f_psi)^T (f_psi - x_g) + (1 - alpha) ||f_phi - f_psi||^2 (Zhou et al. 2024, eq. 22 form).
    """
    x_t = x_g + broadcast_to_batch(sigma, x_g) * noise
    f_real, f_fake = teacher(x_t, sigma), fake(x_t, sigma)
    diff = f_real - f_fake
    per = jnp.sum((diff * ((f_real - x_g) - alpha * diff)).reshape(x_g.shape[0], -1), -1)
    if not normalize:
        return per
    w = jax.lax.stop_gradient(jnp.maximum(jnp.mean(jnp.abs(x_g - f_real).reshape(x_g.shape[0], -1), -1), 1e-5))
    return per / w


def sid_generator_loss(generator_apply: Callable, gen_params, teacher: Callable, teacher_params, fake_apply: Callable,
                       fake_params, key: Array, batch_shape, alpha: float = 1.2, sigma_init: float = 2.5,
                       t_max: float = 0.8) -> Array:
    """Batch mean of `sid_generator_loss_terms` for x_g = G(sigma_init z), z ~ N(0, I) of shape batch_shape."""
    k_z, k_drop, k_s, k_n = jax.random.split(key, 4)
    z = shard_batch(jax.random.normal(k_z, tuple(batch_shape), jnp.result_type(float)))
    x_g = generator_apply(gen_params, sigma_init * z, k_drop)
    sigma = sid_sigmas(k_s, x_g.shape[0], t_max, dtype=x_g.dtype)
    noise = jax.random.normal(k_n, x_g.shape, x_g.dtype)
    return jnp.mean(sid_generator_loss_terms(
        lambda x, s: teacher(teacher_params, x, s),
        lambda x, s: fake_apply(jax.lax.stop_gradient(fake_params), x, s, None), x_g, sigma, noise, alpha))


def fake_score_loss(fake_apply: Callable, fake_params, x_g: Array, key: Array, sigma_data: float = 0.5,
                    t_max: float = 0.8) -> Array:
    """EDM-weighted DSM of the fake denoiser on generator samples (stop-gradient), sigma from `sid_sigmas`:
    mean_b (sigma^2 + sd^2)/(sigma sd)^2 ||f_psi(x_g + sigma n, sigma) - x_g||^2."""
    k_s, k_n, k_drop = jax.random.split(key, 3)
    x_g = jax.lax.stop_gradient(x_g)
    sigma = sid_sigmas(k_s, x_g.shape[0], t_max, dtype=x_g.dtype)
    x_t = x_g + broadcast_to_batch(sigma, x_g) * jax.random.normal(k_n, x_g.shape, x_g.dtype)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    err = jnp.sum(((fake_apply(fake_params, x_t, sigma, k_drop) - x_g) ** 2).reshape(x_g.shape[0], -1), -1)
    return jnp.mean(weight * err)


def _all_finite(loss, grads):
    leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    return jnp.logical_and(jnp.isfinite(loss), jnp.all(jnp.stack(leaves)) if leaves else True)


def _update_if_finite(tx, loss, grads, opt_state, params):
    """One optimizer update, or the unchanged (params, opt_state) when the loss or a gradient is not finite."""
    grads = shard_like_update(grads)
    ok = _all_finite(loss, grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # One cond, not a where per leaf: XLA would fuse the chain of one `and` per leaf computing `ok` into
    # every leaf's select (5x the HLO, 3x the compile time).
    new_params, new_opt = jax.lax.cond(ok, lambda: (new_params, new_opt), lambda: (params, opt_state))
    return new_params, new_opt, ok


def make_sid_step(generator_apply: Callable, fake_apply: Callable, teacher: Callable,
                  gen_tx: optax.GradientTransformation, fake_tx: optax.GradientTransformation, batch_shape,
                  alpha: float = 1.2, sigma_init: float = 2.5, sigma_data: float = 0.5, t_max: float = 0.8):
    """step(state: SiDState, teacher_params, key) -> (state, metrics), jitted.

    Fake score: one DSM update on sg(x_g); generator: one update of `sid_generator_loss` against the updated
    fake score (fresh z). Non-finite updates are skipped and counted (gen_skipped / fake_skipped). The noise z is
    split over the batch axes of the mesh the step is traced under (`jaxgen.train.mesh.shard_batch`): SiD reads
    no data batch that would otherwise tell XLA to split the work.
    Defaults: alpha = 1.2, sigma_init = 2.5 (Zhou et al. 2024).
    """
    alpha = _checks.number("alpha", alpha)
    sigma_init = _checks.number("sigma_init", sigma_init, low=0.0, low_open=True)
    _checks.number("sigma_data", sigma_data, low=0.0, low_open=True)
    _checks.number("t_max", t_max, low=0.0, high=1.0, low_open=True)
    batch_shape = tuple(int(s) for s in batch_shape)

    @jax.jit
    def step(state: SiDState, teacher_params, key):
        k_zf, k_gf, k_fake, k_gen = jax.random.split(key, 4)
        z = shard_batch(jax.random.normal(k_zf, batch_shape, jnp.result_type(float)))
        x_g = generator_apply(state.gen_params, sigma_init * z, k_gf)
        fake_loss, fake_grads = jax.value_and_grad(fake_score_loss, 1)(fake_apply, state.fake_params, x_g, k_fake,
                                                                       sigma_data, t_max)
        fake_params, fake_opt, fake_ok = _update_if_finite(fake_tx, fake_loss, fake_grads, state.fake_opt_state,
                                                           state.fake_params)
        gen_loss, gen_grads = jax.value_and_grad(sid_generator_loss, 1)(
            generator_apply, state.gen_params, teacher, teacher_params, fake_apply, fake_params, k_gen, batch_shape,
            alpha, sigma_init, t_max)
        gen_params, gen_opt, gen_ok = _update_if_finite(gen_tx, gen_loss, gen_grads, state.gen_opt_state,
                                                        state.gen_params)
        new = SiDState(step=state.step + 1, gen_params=gen_params, gen_opt_state=gen_opt, fake_params=fake_params,
                       fake_opt_state=fake_opt, gen_skipped=state.gen_skipped + (~gen_ok).astype(jnp.int32),
                       fake_skipped=state.fake_skipped + (~fake_ok).astype(jnp.int32))
        metrics = dict(gen_loss=gen_loss, fake_loss=fake_loss, gen_grad_norm=optax.tree.norm(gen_grads),
                       fake_grad_norm=optax.tree.norm(fake_grads), gen_ok=gen_ok, fake_ok=fake_ok,
                       gen_skipped=new.gen_skipped, fake_skipped=new.fake_skipped)
        return new, metrics

    return step

