"""jaxgen.xla_cpu: the XLA:CPU options the CLI (and tests/conftest.py) set before JAX starts its backends."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import xla_cpu

OPTION = xla_cpu.CONVOLUTIONS_OUTSIDE_YNNPACK.split("=")[0]


def test_default_flags_are_appended_and_a_users_own_value_wins():
    env = {}
    assert xla_cpu.set_default_flags(env) == xla_cpu.CONVOLUTIONS_OUTSIDE_YNNPACK
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    xla_cpu.set_default_flags(env)
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_enable_fast_math=false", xla_cpu.CONVOLUTIONS_OUTSIDE_YNNPACK]
    xla_cpu.set_default_flags(env)  # idempotent
    assert env["XLA_FLAGS"].count(OPTION) == 1
    env = {"XLA_FLAGS": f"{OPTION}=-individual_dot"}  # the user's choice for the same option
    xla_cpu.set_default_flags(env)
    assert env["XLA_FLAGS"] == f"{OPTION}=-individual_dot"


def test_convolutions_compile_outside_ynnpack_and_match_the_sum_over_taps():
    """In this process (set by conftest.py as the CLI does): a 3x3 convolution with 32 channels, which XLA:CPU would
    otherwise put in a YNNPACK fusion, is XLA's own convolution; its weight gradient equals the sum over the 9 taps
    of x shifted times dy."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 32))
    dy = jax.random.normal(jax.random.key(1), (2, 6, 6, 32))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    weight_grad = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), jnp.zeros((3, 3, 32, 32)))[1](dy)[0])
    hlo = weight_grad.lower(x, dy).compile().as_text()
    assert "convolution(" in hlo and "ynn" not in hlo.lower()
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.stack([np.stack([np.einsum("bhwc,bhwo->co", xp[:, i:i + 6, j:j + 6], np.asarray(dy, np.float64))
                               for j in range(3)]) for i in range(3)])
    np.testing.assert_allclose(weight_grad(x, dy), want, rtol=1e-4, atol=1e-4)
