"""Does fusing GroupNorm, or bf16 activations around it, shorten the UNet's TPU step? Compiled for one v5e chip.

    python -m experiments.aot_groupnorm [--out DIR]

The fragment is the CIFAR-10 UNet's first level as a residual block runs it, twice in a row:
GroupNorm(32 groups) -> SiLU -> Conv3x3(128 -> 128) on 16 x 32 x 32 x 128 activations (16 images per chip, the
config's batch on v5e-8), forward and backward (gradients of the input, the GroupNorm scale and bias and the
kernel). Variants:

    float32             flax's nnx.GroupNorm in float32, as the UNet runs with model.dtype=float32
    float32 custom VJP  GroupNorm with a hand-written backward pass: one reduction pass over (dy, x) for all its
                        statistics (per sample and channel sum dy and sum dy x^, from which the group means and the
                        scale and bias gradients follow), then one elementwise pass for dx
    bfloat16 cast       bf16 activations and convolutions, GroupNorm computed in float32 between casts (what
                        model.dtype=bfloat16 does)
    bfloat16 stats      bf16 activations; flax's GroupNorm with dtype=bfloat16 (statistics in float32, the
                        normalisation applied in bf16)

For each: the TPU compiler's estimate (the sum of its per-operation `estimated_cycles`, in ms at v5e's clock, as in
experiments/aot_breakdown.py), XLA's bytes accessed, and the shares of convolutions, reductions and converts.
Writes aot_groupnorm.json. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import functools

from experiments._report import ROOT, markdown_table, prepare_out, write_json

B, H, W, C, GROUPS = 16, 32, 32, 128, 32
VARIANTS = ("float32", "float32 custom VJP", "bfloat16 cast", "bfloat16 stats")


def _stats(x, groups, eps):
    """Per (sample, group) mean and 1 / std over the spatial axes and the group's channels (as flax: var =
    E[x^2] - E[x]^2, clipped at 0)."""
    import jax
    import jax.numpy as jnp

    xg = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = jnp.mean(xg, axis=(1, 3))
    var = jnp.maximum(jnp.mean(xg * xg, axis=(1, 3)) - mean * mean, 0.0)
    return mean, jax.lax.rsqrt(var + eps)


def _per_channel(v, x):  # (B, G) -> broadcastable to x (B, ..., C)
    import jax.numpy as jnp

    return jnp.repeat(v, x.shape[-1] // v.shape[-1], axis=-1).reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (-1,))


def group_norm_custom_vjp():
    """GroupNorm y = (x - mean) / std * scale + bias whose backward pass is written out:
    dx = (1 / std) (g - mean_group(g) - x^ mean_group(g x^)), g = dy scale, from p1 = sum dy and p2 = sum dy x^
    per (sample, channel); d scale = sum_samples p2, d bias = sum_samples p1."""
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def gn(x, scale, bias, groups, eps=1e-6):
        mean, rstd = _stats(x, groups, eps)
        return (x - _per_channel(mean, x)) * _per_channel(rstd, x) * scale + bias

    def fwd(x, scale, bias, groups, eps=1e-6):
        return gn(x, scale, bias, groups, eps), (x, scale, eps)

    def bwd(groups, res, dy):
        x, scale, eps = res
        mean, rstd = _stats(x, groups, eps)
        xhat = (x - _per_channel(mean, x)) * _per_channel(rstd, x)
        axes = tuple(range(1, x.ndim - 1))
        p1, p2 = jnp.sum(dy, axis=axes), jnp.sum(dy * xhat, axis=axes)  # (B, C), one pass
        n = x.size // (x.shape[0] * groups)
        m1 = jnp.sum((p1 * scale).reshape(x.shape[0], groups, -1), -1) / n
        m2 = jnp.sum((p2 * scale).reshape(x.shape[0], groups, -1), -1) / n
        dx = _per_channel(rstd, x) * (dy * scale - _per_channel(m1, x) - xhat * _per_channel(m2, x))
        return dx, jnp.sum(p2, 0), jnp.sum(p1, 0), None

    gn.defvjp(fwd, bwd)
    return gn


def fragment_grad(variant: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def flax_gn(x, scale, bias, dtype):
        gn = nnx.GroupNorm(C, num_groups=GROUPS, epsilon=1e-6, dtype=dtype, rngs=nnx.Rngs(0))
        gn.scale.value, gn.bias.value = scale, bias
        return gn(x)

    custom = group_norm_custom_vjp()
    dtype = jnp.float32 if variant.startswith("float32") else jnp.bfloat16

    def loss(x, scale, bias, kernel, w):
        h = x.astype(dtype)
        for _ in range(2):
            if variant == "float32":
                h = flax_gn(h, scale, bias, jnp.float32)
            elif variant == "float32 custom VJP":
                h = custom(h, scale, bias, GROUPS)
            elif variant == "bfloat16 cast":
                h = flax_gn(h.astype(jnp.float32), scale, bias, jnp.float32).astype(jnp.bfloat16)
            else:
                h = flax_gn(h, scale, bias, jnp.bfloat16)
            h = jax.lax.conv_general_dilated(jax.nn.silu(h), kernel.astype(dtype), (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(h.astype(jnp.float32) * w)

    return jax.grad(loss, argnums=(0, 1, 2, 3))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    args = ap.parse_args(argv)
    out = prepare_out(args.out)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from experiments.aot_breakdown import V5E_CLOCK_HZ, estimated_cycles
    from jaxgen import aot

    _, topology = aot.parse_slice("v5e:2x2")  # libtpu's smallest v5e host; one of its chips is used
    one = NamedSharding(Mesh(np.array(aot.topology_devices(topology)[:1]), ("d",)), P())
    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=one)  # noqa: E731
    fn_args = (spec((B, H, W, C)), spec((C,)), spec((C,)), spec((3, 3, C, C)), spec((B, H, W, C)))
    rows = []
    for variant in VARIANTS:
        compiled = jax.jit(fragment_grad(variant)).lower(*fn_args).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        total, by = estimated_cycles(compiled.as_text())
        share = lambda *names: sum(v for k, v in by.items() if k.split(" ")[-1] in names) / total  # noqa: E731
        rows.append(dict(variant=variant, estimated_ms=total / V5E_CLOCK_HZ * 1e3,
                         mib_accessed=float(cost["bytes accessed"]) / 2**20,
                         convs=share("conv_general_dilated"), reductions=share("reduce_sum"),
                         converts=share("convert_element_type"), cycles_by_category=by))
        print(markdown_table(rows[-1:], list(rows[-1])[:-1]), flush=True)
    write_json(os.path.join(out, "aot_groupnorm.json"), rows)
    print(markdown_table(rows, list(rows[0])[:-1]))


if __name__ == "__main__":
    main()
