"""The Wasserstein bound of score-based models (Kwon, Fan & Lee 2022), in closed form for Gaussians.

Forward VP SDE dx = f dt + g dw with f = -beta(t) x / 2, g^2 = beta(t) = beta_min + t (beta_max - beta_min).
The model's reverse SDE dy = [f - g^2 s(y, t)] dt + g dw_bar from q_T = N(0, I), with an affine score
model s(x, t) = A(t) x + b(t), has Gaussian marginals. Synchronous coupling with the true reverse SDE and
Gronwall give

    W2(p_0, q_0) <= int_0^T g(t)^2 I(t) sqrt(E_{p_t} ||grad log p_t - s||^2) dt + I(T) W2(p_T, q_T),
    I(t) = exp int_0^t (L_f(r) + L_s(r) g(r)^2) dr,  L_f = beta / 2,  L_s(t) = ||A(t)||_2.

Everything here is exact for Gaussian data N(m0, S0): the marginals p_t, the score error (a quadratic form
under a Gaussian), the model's q_0 (moment ODEs, solved with scipy to 1e-10) and W2 between Gaussians.
The t-integrals use the trapezoid rule on a fine grid. All in NumPy float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["gaussian_w2", "vp_gaussian_marginal", "wasserstein_bound_affine", "fit_affine_score_dsm",
           "true_affine_score"]


def _beta(t, beta_min, beta_max):
    return beta_min + t * (beta_max - beta_min)


def _alpha(t, beta_min, beta_max):
    return np.exp(-0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2))


def gaussian_w2(m1, S1, m2, S2) -> float:
    """W2(N(m1, S1), N(m2, S2)) = sqrt(||m1 - m2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2))."""
    m1, m2 = np.atleast_1d(m1).astype(np.float64), np.atleast_1d(m2).astype(np.float64)
    S1, S2 = np.atleast_2d(S1).astype(np.float64), np.atleast_2d(S2).astype(np.float64)
    from scipy import linalg  # here: scipy costs every importer of jaxgen.diffusion half a second

    r1 = linalg.sqrtm(S1).real
    cross = linalg.sqrtm(r1 @ S2 @ r1).real
    sq = np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * cross)
    # below the round-off of the trace term the distance is zero (sqrt would turn 1e-16 into 1e-8)
    floor = 64 * np.finfo(np.float64).eps * (np.trace(S1) + np.trace(S2))
    return float(np.sqrt(sq)) if sq > floor else 0.0


def vp_gaussian_marginal(m0, S0, t, beta_min=0.1, beta_max=20.0):
    """p_t for p_0 = N(m0, S0): N(a m0, a^2 S0 + (1 - a^2) I), a = exp(-int_0^t beta / 2)."""
    a = _alpha(t, beta_min, beta_max)
    m0, S0 = np.atleast_1d(m0).astype(np.float64), np.atleast_2d(S0).astype(np.float64)
    return a * m0, a**2 * S0 + (1 - a**2) * np.eye(len(m0))


def true_affine_score(m0, S0, beta_min=0.1, beta_max=20.0):
    """(A_fn, b_fn) of the exact score grad log p_t(x) = -S_t^{-1} (x - m_t)."""

    def A_fn(t):
        return -np.linalg.inv(vp_gaussian_marginal(m0, S0, t, beta_min, beta_max)[1])

    def b_fn(t):
        m, S = vp_gaussian_marginal(m0, S0, t, beta_min, beta_max)
        return np.linalg.solve(S, m)

    return A_fn, b_fn


def wasserstein_bound_affine(m0, S0, A_fn: Callable, b_fn: Callable, T: float = 1.0, beta_min: float = 0.1,
                             beta_max: float = 20.0, prior_mean=None, prior_cov=None, num_points: int = 4001) -> dict:
    """W2(p_0, q_0) and Kwon et al.'s bound for Gaussian data N(m0, S0) and the affine score model
    s(x, t) = A_fn(t) x + b_fn(t). Returns a dict with w2, bound, score_term, prior_term, prior_w2, I_T,
    q0_mean, q0_cov. The prior q_T defaults to N(0, I)."""
    m0, S0 = np.atleast_1d(m0).astype(np.float64), np.atleast_2d(S0).astype(np.float64)
    d = len(m0)
    qm = np.zeros(d) if prior_mean is None else np.atleast_1d(prior_mean).astype(np.float64)
    qS = np.eye(d) if prior_cov is None else np.atleast_2d(prior_cov).astype(np.float64)

    # q_0: reverse-time moment ODEs in tau = T - t: M = beta/2 I + beta A, m' = M m + beta b, P' = M P + P M^T + beta I
    def rhs(tau, z):
        t = T - tau
        beta = _beta(t, beta_min, beta_max)
        A, b = np.atleast_2d(A_fn(t)), np.atleast_1d(b_fn(t))
        M = 0.5 * beta * np.eye(d) + beta * A
        m, P = z[:d], z[d:].reshape(d, d)
        return np.concatenate([M @ m + beta * b, (M @ P + P @ M.T + beta * np.eye(d)).ravel()])

    from scipy import integrate

    sol = integrate.solve_ivp(rhs, (0.0, T), np.concatenate([qm, qS.ravel()]), rtol=1e-10, atol=1e-12,
                              method="DOP853")
    q0_mean, q0_cov = sol.y[:d, -1], sol.y[d:, -1].reshape(d, d)
    q0_cov = 0.5 * (q0_cov + q0_cov.T)

    ts = np.linspace(0.0, T, num_points)
    beta = _beta(ts, beta_min, beta_max)
    err, Ls = np.zeros_like(ts), np.zeros_like(ts)
    for j, t in enumerate(ts):
        m, S = vp_gaussian_marginal(m0, S0, t, beta_min, beta_max)
        A, b = np.atleast_2d(A_fn(t)), np.atleast_1d(b_fn(t))
        Sinv = np.linalg.inv(S)
        C = -Sinv - A  # grad log p_t - s = C x + c
        c = Sinv @ m - b
        err[j] = np.sum((C @ m + c) ** 2) + np.trace(C @ S @ C.T)
        Ls[j] = np.linalg.norm(A, 2)
    rate = 0.5 * beta + Ls * beta
    log_I = integrate.cumulative_trapezoid(rate, ts, initial=0.0)
    I = np.exp(log_I)
    score_term = float(integrate.trapezoid(beta * I * np.sqrt(np.maximum(err, 0.0)), ts))
    mT, ST = vp_gaussian_marginal(m0, S0, T, beta_min, beta_max)
    prior_w2 = gaussian_w2(mT, ST, qm, qS)
    prior_term = float(I[-1] * prior_w2)
    return dict(w2=gaussian_w2(m0, S0, q0_mean, q0_cov), bound=score_term + prior_term, score_term=score_term,
                prior_term=prior_term, prior_w2=prior_w2, I_T=float(I[-1]), q0_mean=q0_mean, q0_cov=q0_cov)


def fit_affine_score_dsm(x0: np.ndarray, ts: np.ndarray, rng: np.random.Generator, beta_min: float = 0.1,
                         beta_max: float = 20.0):
    """Train s(x, t) = A(t) x + b(t) by denoising score matching at each t in `ts` (least squares of
    s(x_t) on the target -eps / sigma_t over the samples x0 [n, d], one fresh eps per sample), and return
    (A_fn, b_fn) interpolating the fitted coefficients linearly in t."""
    x0 = np.asarray(x0, np.float64)
    n, d = x0.shape
    As, bs = [], []
    for t in ts:
        a = _alpha(t, beta_min, beta_max)
        sig = np.sqrt(1 - a**2)
        eps = rng.normal(size=(n, d))
        xt = a * x0 + sig * eps
        X = np.concatenate([xt, np.ones((n, 1))], 1)
        W, *_ = np.linalg.lstsq(X, -eps / sig, rcond=None)  # [d + 1, d]
        As.append(W[:d].T)
        bs.append(W[d])
    As, bs = np.array(As), np.array(bs)
    ts = np.asarray(ts, np.float64)

    def A_fn(t):
        return np.array([[np.interp(t, ts, As[:, i, j]) for j in range(d)] for i in range(d)])

    def b_fn(t):
        return np.array([np.interp(t, ts, bs[:, i]) for i in range(d)])

    return A_fn, b_fn
