"""AMED: an untrained predictor is DPM-Solver-2; training on the oracle beats it at 5 NFE."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen import diffusion as D
from jaxgen.diffusion import amed


def test_untrained_predictor_is_dpm_solver_2_and_loss_is_zero_on_own_trajectory():
    gm, p = D.oracle_2d(), D.EDM()
    ts = D.time_grid(p, 3)
    model = amed.AMEDPredictor(rngs=nnx.Rngs(0))
    rc_fn = amed.make_rc_fn(*nnx.split(model))
    x = 80.0 * jax.random.normal(jax.random.key(0), (128, 2))
    a = D.ode_sample(gm.denoise_fn(p), p, x, ts, "amed", afs=True, rc_fn=rc_fn)
    b = D.ode_sample(gm.denoise_fn(p), p, x, ts, "dpm2", afs=True)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-4)  # float32 from sig = 80
    # the teacher-matching loss vanishes when the teacher is the student's own trajectory
    _, own = D.ode_sample(gm.denoise_fn(p), p, x, ts, "dpm2", afs=True, return_trajectory=True)
    assert float(amed.amed_loss(rc_fn, gm.denoise_fn(p), p, own, ts, afs=True)) < 1e-8


def test_teacher_converges_to_the_reference_solution():
    gm, p = D.oracle_2d(), D.EDM()
    ts = D.time_grid(p, 3)
    x = 80.0 * jax.random.normal(jax.random.key(1), (256, 2))
    ref = D.reference_ode_solve(gm.denoise_fn(p), p, x, ts[0], ts[-1], rtol=1e-7, atol=1e-7)
    errs = [float(jnp.sqrt(jnp.mean((amed.teacher_trajectory(gm.denoise_fn(p), p, x, ts, m)[-1] - ref) ** 2)))
            for m in (4, 16)]
    assert errs[1] < errs[0] / 4 and errs[1] < 0.02, errs


def test_fit_amed_beats_dpm_solver_2_and_heun_at_5_nfe():
    gm, p = D.oracle_2d(), D.EDM()
    ts = D.time_grid(p, 3)  # 3 intervals with the analytical first step: 5 NFE
    assert D.ode_nfe("amed", 3, afs=True) == 5
    prior = lambda k, n: 80.0 * jax.random.normal(k, (n, 2))  # noqa: E731
    rc_fn, info = amed.fit_amed(gm.denoise_fn(p), p, ts, prior, jax.random.key(2), afs=True, num_train=1024,
                                batch_size=256, num_iters=150)
    assert info["losses"][-1] < 0.6 * info["losses"][0]
    x = prior(jax.random.key(3), 2000)
    ref = D.reference_ode_solve(gm.denoise_fn(p), p, x, ts[0], ts[-1])
    err = {s: float(jnp.sqrt(jnp.mean(jnp.sum((D.ode_sample(gm.denoise_fn(p), p, x, ts, s, afs=True,
                                                                rc_fn=rc_fn if s == "amed" else None) - ref) ** 2, -1))))
           for s in ("amed", "dpm2", "heun")}
    assert err["amed"] < 0.85 * err["dpm2"] and err["amed"] < err["heun"], err
