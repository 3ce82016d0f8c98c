"""Fast SSM kernels against NumPy matrix powers; convolution == recurrence; associative scan == scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.ssm import discretize, hippo
from jaxgen.ssm import kernels as _K


class K:
    """The kernels under test, jitted (one compile per call pattern keeps this file fast)."""

    kernel_vandermonde = staticmethod(jax.jit(_K.kernel_vandermonde, static_argnums=(4, 5), static_argnames=("conj", "chunk")))
    kernel_dplr = staticmethod(jax.jit(_K.kernel_dplr, static_argnums=(5,), static_argnames=("conj", "chunk", "c_is_tilde")))
    kernel_naive = staticmethod(jax.jit(_K.kernel_naive, static_argnums=(3,)))
    c_tilde = staticmethod(jax.jit(_K.c_tilde, static_argnums=(2,)))
    c_from_c_tilde = staticmethod(jax.jit(_K.c_from_c_tilde, static_argnums=(2,)))
    causal_conv = staticmethod(jax.jit(_K.causal_conv, static_argnames=("pad",)))
    scan_ssm = staticmethod(jax.jit(_K.scan_ssm))
    scan_diag = staticmethod(jax.jit(_K.scan_diag))
    linear_recurrence = staticmethod(jax.jit(_K.linear_recurrence, static_argnames=("axis", "parallel")))


def naive_np(Ab, Bb, C, L):
    """K_l = C Ab^l Bb by a Python loop in NumPy (the slow, obvious reference)."""
    out, x = [], np.array(Bb, complex)
    for _ in range(L):
        out.append(C @ x)
        x = Ab @ x
    return np.array(out)


def closure(x):
    return np.concatenate([x, np.conj(x)], -1)


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


def random_dplr(N, r, seed):
    rng = np.random.default_rng(seed)
    cplx = lambda *s: rng.normal(size=s) + 1j * rng.normal(size=s)  # noqa: E731
    Lam = -rng.uniform(0.2, 1.0, N) + 1j * rng.uniform(0, 10, N)
    return Lam, 0.5 * cplx(r, N), cplx(N), cplx(N)


def dense_dplr_np(Lam, P, conj):
    if conj:
        Lam, P = closure(Lam), closure(P)
    return np.diag(Lam) - P.T @ P.conj()


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["lin", "inv"])
def test_vandermonde_matches_powers(method, init):
    N, L = 16, 300
    lam, B = hippo.s4d_init(init, N)
    rng = np.random.default_rng(0)
    C = rng.normal(size=(3, N // 2)) + 1j * rng.normal(size=(3, N // 2))
    steps = np.array([1e-3, 0.03, 0.1])
    ref = []
    for h in range(3):
        Ab, Bb = discretize(np.diag(lam), B, steps[h], method)
        ref.append(2 * naive_np(Ab, Bb, C[h], L).real)
    ref = np.stack(ref)
    with jax.enable_x64(True):
        out = K.kernel_vandermonde(jnp.asarray(lam), jnp.asarray(B), jnp.asarray(C), jnp.asarray(steps), L, method)
        assert out.shape == (3, L) and out.dtype == jnp.float64
        assert rel(out, ref) <= 1e-10
        for chunk in (64, "auto"):  # blocked: Ab^(b c + j) = Ab^(b c) Ab^j
            chunked = K.kernel_vandermonde(jnp.asarray(lam), jnp.asarray(B), jnp.asarray(C), jnp.asarray(steps), L, method, chunk=chunk)
            assert rel(chunked, ref) <= 1e-10
    out32 = K.kernel_vandermonde(
        jnp.asarray(lam, jnp.complex64), jnp.asarray(B, jnp.complex64), jnp.asarray(C, jnp.complex64),
        jnp.asarray(steps, jnp.float32), L, method,
    )
    assert out32.dtype == jnp.float32 and rel(out32, ref) <= 1e-4
    out32 = K.kernel_vandermonde(
        jnp.asarray(lam, jnp.complex64), jnp.asarray(B, jnp.complex64), jnp.asarray(C, jnp.complex64),
        jnp.asarray(steps, jnp.float32), L, method, chunk="auto",
    )
    assert rel(out32, ref) <= 1e-4


@pytest.mark.parametrize("conj", [True, False])
@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_cauchy_matches_powers(conj, rank):
    N, L, step = 12, 256, 0.05
    Lam, P, B, C = random_dplr(N, rank, seed=rank)
    A = dense_dplr_np(Lam, P, conj)
    Bf, Cf = (closure(B), closure(C)) if conj else (B, C)
    Ab, Bb = discretize(A, Bf, step, "bilinear")
    ref = naive_np(Ab, Bb, Cf, L)
    if conj:
        assert np.abs(ref.imag).max() < 1e-10 * np.abs(ref).max()
        ref = ref.real
    args = (Lam, P, B, C)
    with jax.enable_x64(True):
        out = K.kernel_dplr(*map(jnp.asarray, args), jnp.asarray(step), L, conj=conj)
        assert rel(out, ref) <= 1e-10
        out = K.kernel_dplr(*map(jnp.asarray, args), jnp.asarray(step), L, conj=conj, chunk=50)
        assert rel(out, ref) <= 1e-10
    out32 = K.kernel_dplr(*(jnp.asarray(a, jnp.complex64) for a in args), jnp.float32(step), L, conj=conj)
    assert rel(out32, ref) <= 1e-4


def test_dplr_reproduces_the_legs_hippo_kernel():
    # the real LegS system, discretised by NumPy, equals the half-mode S4 parameterisation
    N, L, step = 16, 200, 0.02
    A, B = hippo.legs(N)
    C = np.random.default_rng(3).normal(size=N)
    Ab, Bb = discretize(A, B, step, "bilinear")
    ref = naive_np(Ab, Bb, C, L).real
    d = hippo.nplr("legs", N)
    h = N // 2
    with jax.enable_x64(True):
        out = K.kernel_dplr(
            jnp.asarray(d.Lambda[:h]), jnp.asarray(d.P[:, :h]), jnp.asarray(d.B[:h]), jnp.asarray((C @ d.V)[:h]),
            jnp.asarray(step), L,
        )
    assert rel(out, ref) <= 1e-10


def test_c_tilde_correction_matters():
    N, L, step = 16, 64, 0.01
    d = hippo.nplr("legs", N)
    h = N // 2
    C = np.random.default_rng(4).normal(size=h) + 1j * np.random.default_rng(5).normal(size=h)
    Ab, Bb = discretize(dense_dplr_np(d.Lambda[:h], d.P[:, :h], True), closure(d.B[:h]), step, "bilinear")
    ref = naive_np(Ab, Bb, closure(C), L).real
    with jax.enable_x64(True):
        args = (jnp.asarray(d.Lambda[:h]), jnp.asarray(d.P[:, :h]), jnp.asarray(d.B[:h]), jnp.asarray(C), jnp.asarray(step), L)
        good = K.kernel_dplr(*args)
        bad = K.kernel_dplr(*args, c_is_tilde=True)  # skip C~ = C (I - Ab^L)
        assert rel(good, ref) <= 1e-10
        assert rel(bad, ref) > 0.1
        # c_tilde / c_from_c_tilde are inverse and the trained-C~ path reproduces the kernel
        Abj = jnp.asarray(Ab)
        Ct = K.c_tilde(Abj, jnp.asarray(closure(C)), L)
        np.testing.assert_allclose(K.c_from_c_tilde(Abj, Ct, L), closure(C), atol=1e-12)
        via_tilde = K.kernel_dplr(*args[:3], Ct[:h], args[4], L, c_is_tilde=True)
        assert rel(via_tilde, ref) <= 1e-10


def test_causal_conv_matches_direct_convolution_and_padding_matters():
    rng = np.random.default_rng(6)
    u, k = rng.normal(size=(2, 128)), rng.normal(size=(2, 128))
    ref = np.stack([np.convolve(u[i], k[i])[:128] for i in range(2)])
    with jax.enable_x64(True):
        np.testing.assert_allclose(K.causal_conv(jnp.asarray(u), jnp.asarray(k)), ref, atol=1e-12)
        circular = K.causal_conv(jnp.asarray(u), jnp.asarray(k), pad=False)
    assert rel(circular, ref) > 0.1


def test_convolution_equals_recurrence_diag_and_dplr():
    L = 150
    rng = np.random.default_rng(7)
    u = rng.normal(size=(2, 3, L))  # (batch, channel, L)
    lam, B = hippo.s4d_init("inv", 8)
    C = rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))
    steps = np.array([0.01, 0.05, 0.2])
    with jax.enable_x64(True):
        lam_j, B_j, C_j, st = map(jnp.asarray, (lam, B, C, steps))
        kern = K.kernel_vandermonde(lam_j, B_j, C_j, st, L, "zoh")
        y_conv = K.causal_conv(jnp.asarray(u), kern)
        Ab, Bb = discretize(lam_j, B_j, st[:, None], "zoh")
        y_rec, _ = K.scan_diag(Ab, Bb, C_j, jnp.asarray(u))
        np.testing.assert_allclose(y_conv, 2 * y_rec.real, atol=1e-12)
        # DPLR: conv with the Cauchy kernel == dense recurrence of the 2N-mode closure
        Lam, P, Bd, Cd = random_dplr(5, 1, seed=8)
        kern = K.kernel_dplr(*map(jnp.asarray, (Lam, P, Bd, Cd)), jnp.asarray(0.1), L)
        Ab, Bb = discretize(dense_dplr_np(Lam, P, True), closure(Bd), 0.1, "bilinear")
        y_rec, _ = K.scan_ssm(jnp.asarray(Ab), jnp.asarray(Bb), jnp.asarray(closure(Cd)), jnp.asarray(u[:, 0]))
        np.testing.assert_allclose(K.causal_conv(jnp.asarray(u[:, 0]), kern), y_rec.real, atol=1e-11)
        np.testing.assert_allclose(y_rec.imag, 0, atol=1e-11)


def test_kernel_naive_matches_numpy_loop():
    rng = np.random.default_rng(9)
    Ab = rng.normal(size=(4, 4)) * 0.4
    Bb, C = rng.normal(size=4), rng.normal(size=4)
    with jax.enable_x64(True):
        np.testing.assert_allclose(K.kernel_naive(jnp.asarray(Ab), jnp.asarray(Bb), jnp.asarray(C), 20), naive_np(Ab, Bb, C, 20).real, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_associative_scan_equals_scan_and_loop(axis):
    rng = np.random.default_rng(10)
    L, N = 200, 6
    a = np.exp(-rng.uniform(0, 0.1, N) + 1j * rng.uniform(0, 3, N))
    b = rng.normal(size=(L, N)) + 1j * rng.normal(size=(L, N))
    x0 = rng.normal(size=N) + 1j * rng.normal(size=N)
    ref, x = [], x0
    for k in range(L):
        x = a * x + b[k]
        ref.append(x)
    ref = np.array(ref)
    if axis == 1:
        b, ref = b.T, ref.T
        a = a[:, None]
    with jax.enable_x64(True):
        par = K.linear_recurrence(jnp.asarray(a), jnp.asarray(b), axis=axis, x0=jnp.asarray(x0))
        seq = K.linear_recurrence(jnp.asarray(a), jnp.asarray(b), axis=axis, x0=jnp.asarray(x0), parallel=False)
    np.testing.assert_allclose(par, ref, atol=1e-12)
    np.testing.assert_allclose(seq, ref, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_paired_matches_direct_values_and_gradients(rank):
    # the paired method (conjugate pairs in real arithmetic, L/2 + 1 roots in blocks, custom VJP)
    # against the direct complex Cauchy sums over the closure at all L roots; odd L, three steps
    N, L = 6, 63
    Lam, P, B, C = random_dplr(N, rank, seed=20 + rank)
    steps = np.array([0.01, 0.1, 0.5])
    w = np.random.default_rng(11).normal(size=(3, L))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(np.broadcast_to(x, (3,) + x.shape)) for x in (Lam, P, B, C)) + (jnp.asarray(steps),)

        @jax.jit
        def both(*a):  # one compile for both methods
            vg = lambda m, c: jax.value_and_grad(  # noqa: E731
                lambda *a: jnp.sum(_K.kernel_dplr(*a, L, c_is_tilde=True, method=m, chunk=c) * w), argnums=(0, 1, 2, 3, 4))
            # blocks of 8 and of 4 roots: the VJP's elementwise pass runs roots-minor, then modes-minor (6 > 4)
            return vg("direct", None)(*a), vg("paired", 8)(*a), vg("paired", 4)(*a)

        (ref, ref_grads), *paired = both(*args)
        for val, grads in paired:
            assert abs(float(val - ref)) <= 1e-10 * abs(float(ref))
            for g, r in zip(grads, ref_grads):
                assert rel(g, r) <= 1e-10
    with pytest.raises(ValueError, match="conj"):
        _K.kernel_dplr(*(jnp.asarray(x) for x in (Lam, P, B, C)), 0.1, L, conj=False, method="paired")
