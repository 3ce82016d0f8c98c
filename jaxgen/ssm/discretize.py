"""Discretisation of x'(t) = A x(t) + B u(t) with step d into x_k = Ab x_{k-1} + Bb u_k.

Methods (generalised bilinear transform with parameter alpha, plus zero-order hold):

    gbt(alpha):     Ab = (I - alpha d A)^{-1} (I + (1 - alpha) d A),   Bb = (I - alpha d A)^{-1} d B
    forward_euler:  alpha = 0:   Ab = I + d A,                 Bb = d B
    backward_euler: alpha = 1:   Ab = (I - d A)^{-1},          Bb = (I - d A)^{-1} d B
    bilinear:       alpha = ½:   Ab = (I - d/2 A)^{-1} (I + d/2 A),  Bb = (I - d/2 A)^{-1} d B
    zoh:            Ab = exp(d A),  Bb = A^{-1} (exp(d A) - I) B = ∫_0^d exp(s A) ds B

Backward Euler, bilinear and ZOH map a stable A (Re eig < 0) to |eig(Ab)| < 1 for every d > 0;
forward Euler only for small enough d.

Bad input: a step <= 0 or non-finite, non-finite A / B entries and shapes that do not fit raise
ValueError naming the argument when the values are concrete (NumPy, Python numbers, jax Arrays outside
jit). A traced step (inside jit, e.g. exp(log_step) in a layer) is not checked unless validate=True,
which checks it with checkify (wrap the jitted function with `jax.experimental.checkify.checkify`).

Array backend: if every input is a NumPy array or Python number the computation runs in NumPy /
SciPy (float64 stays float64: host setup and experiments); if any input is a JAX array or tracer
it runs in jax.numpy (jit-able, differentiable).
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from jaxgen import _checks

__all__ = ["METHODS", "discretize", "discretize_diag", "legs_step", "discretize_legs"]

METHODS = ("forward_euler", "backward_euler", "bilinear", "zoh", "gbt")
_ALPHA = {"forward_euler": 0.0, "backward_euler": 1.0, "bilinear": 0.5}


def _use_jax(*xs) -> bool:
    return any(isinstance(x, jax.Array) for x in xs)


def _alpha(method: str, alpha) -> float | None:
    """alpha of the GBT family, None for zoh; validates method / alpha."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gbt":
        return float(_checks.number("alpha", alpha, low=0, high=1, accepted="a number in [0, 1] for method 'gbt'"))
    if alpha is not None:
        raise ValueError(f"alpha is only accepted with method 'gbt', got alpha={alpha!r} with {method!r}")
    return _ALPHA.get(method)


def _check_inputs(step, validate, **arrays) -> None:
    """step > 0 and finite; the named arrays finite (concrete values; traced ones only with validate=True)."""
    _checks.values("step", step, lambda xp, d: xp.isfinite(d) & (d > 0), "a finite number > 0 (every entry)",
                   validate=validate)
    for name, x in arrays.items():
        _checks.values(name, x, _checks.finite, "finite (no NaN or inf entries)", validate=validate)


def discretize_diag(Lambda, B, step, method: str = "zoh", *, alpha=None, validate: bool | None = None):
    """Diagonal fast path: elementwise formulas for A = diag(Lambda), broadcasting over leading axes.

    gbt:  Ab = (1 + (1 - alpha) d lam) / (1 - alpha d lam),   Bb = d B / (1 - alpha d lam)
    zoh:  Ab = exp(d lam),   Bb = B (exp(d lam) - 1) / lam   (-> d B as lam -> 0)
    Lambda, B and step broadcast together (e.g. Lambda (H, N), step (H, 1)); step > 0 (see the module
    docstring for the checks and `validate`).
    """
    a = _alpha(method, alpha)
    _check_inputs(step, validate, Lambda=Lambda, B=B)
    xp = jnp if _use_jax(Lambda, B, step) else np
    lam = xp.asarray(Lambda)
    B = xp.asarray(B)
    try:
        np.broadcast_shapes(lam.shape, B.shape, np.shape(step))
    except ValueError:
        raise ValueError(f"Lambda, B and step must broadcast together, got shapes Lambda {lam.shape}, "
                         f"B {B.shape}, step {np.shape(step)}") from None
    dlam = step * lam
    if a is None:
        Ab = xp.exp(dlam)
        zero = lam == 0
        lam_safe = xp.where(zero, xp.ones_like(lam), lam)
        factor = xp.where(zero, step * xp.ones_like(lam), xp.expm1(dlam) / lam_safe)
        return Ab, B * factor
    den = 1.0 - a * dlam
    return (1.0 + (1.0 - a) * dlam) / den, step * B / den


def discretize(A, B, step, method: str = "bilinear", *, alpha=None, validate: bool | None = None):
    """Discretise (A, B) with step `step` (scalar). Returns (Ab, Bb).

    A: (N, N) dense, or (N,) = the eigenvalues of a diagonal A (then see `discretize_diag`).
    B: (N,) or (N, M).
    method: 'forward_euler' | 'backward_euler' | 'bilinear' | 'zoh' | 'gbt' (needs alpha in [0, 1]).
    Formulas in the module docstring. ZOH uses the augmented exponential
    expm(d [[A, B], [0, 0]]) = [[exp(dA), ∫_0^d exp(sA) ds B], [0, I]], so A need not be invertible.
    step > 0 and finite (a negative step runs the system backwards: unstable Ab); see the module docstring.
    """
    a = _alpha(method, alpha)
    _check_inputs(step, validate, A=A, B=B)
    use_jax = _use_jax(A, B, step)
    xp = jnp if use_jax else np
    A = xp.asarray(A)
    B = xp.asarray(B)
    if A.ndim == 1:
        if B.ndim not in (1, 2) or B.shape[0] != A.shape[0]:
            raise ValueError(f"B must be (N,) or (N, M) with N={A.shape[0]} (the length of the diagonal A), "
                             f"got shape {B.shape}")
        lam = A[:, None] if B.ndim == 2 else A
        Ab, Bb = discretize_diag(lam, B, step, method, alpha=alpha, validate=False)
        return (Ab[:, 0] if B.ndim == 2 else Ab), Bb
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be (N, N) or (N,), got shape {A.shape}")
    N = A.shape[0]
    if B.ndim not in (1, 2) or B.shape[0] != N:
        raise ValueError(f"B must be (N,) or (N, M) with N={N}, got shape {B.shape}")
    if xp is np and np.ndim(step) != 0:
        raise ValueError(f"step must be a scalar for a dense A, got shape {np.shape(step)}")
    vec = B.ndim == 1
    B2 = B[:, None] if vec else B
    I = xp.eye(N, dtype=A.dtype)
    if a is None:
        M = B2.shape[1]
        dtype = xp.result_type(A.dtype, B2.dtype)
        top = xp.concatenate([A, B2], axis=1).astype(dtype)
        aug = xp.concatenate([top, xp.zeros((M, N + M), dtype)], axis=0) * step
        if use_jax:
            E = jsl.expm(aug)
        else:
            import scipy.linalg  # here: importing jaxgen.ssm stays free of scipy's half second

            E = scipy.linalg.expm(aug)
        Ab, Bb = E[:N, :N], E[:N, N:]
    elif a == 0.0:  # forward Euler: explicit, no solve
        Ab, Bb = I + step * A, step * B2
    else:
        lhs = I - (a * step) * A
        solve = jnp.linalg.solve if use_jax else np.linalg.solve
        Ab = solve(lhs, I + ((1.0 - a) * step) * A)
        Bb = solve(lhs, step * B2)
    return Ab, (Bb[:, 0] if vec else Bb)


def legs_step(A, B, k: int, method: str = "bilinear", *, alpha=None):
    """(Ab_k, Bb_k) of the scale-invariant LegS recurrence c_k = Ab_k c_{k-1} + Bb_k u_k, k = 1, 2, ...

    c'(t) = (A c + B u)/t on the sample grid t_k = k (any sampling interval cancels: scale invariance).
    Euler / bilinear / gbt: the step from t_{k-1} to t_k uses A/k, B/k (1/t frozen at t_k), i.e.
    discretize(A, B, 1/k, method). ZOH: exact in log-time s = log t, holding u_k on (t_{k-1}, t_k]:
    discretize(A, B, log(k/(k-1)), 'zoh'); at k = 1 the step is infinite, Ab_1 = 0, Bb_1 = -A^{-1} B
    (= e_0 for LegS: a constant input is represented exactly from the first sample on).
    NumPy float64 (host).
    """
    k = _checks.number("k", k, integer=True, low=1)
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    if method == "zoh":
        _alpha(method, alpha)
        if k == 1:
            return np.zeros_like(A), -np.linalg.solve(A, B)
        return discretize(A, B, float(np.log(k / (k - 1.0))), "zoh")
    return discretize(A, B, 1.0 / k, method, alpha=alpha)


def discretize_legs(A, B, L: int, method: str = "bilinear", *, alpha=None):
    """Stacked LegS step matrices for k = 1..L: (Ab (L, N, N), Bb (L, N)). See `legs_step`."""
    L = _checks.number("L", L, integer=True, low=1)
    mats = [legs_step(A, B, k, method, alpha=alpha) for k in range(1, L + 1)]
    return np.stack([m[0] for m in mats]), np.stack([m[1] for m in mats])
