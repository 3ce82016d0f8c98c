"""A negative result, kept so it need not be measured again: the CIFAR-10 train step with its parameters, Adam
moments and EMA each stored as one flat float32 vector (the model reads its leaves as slices), compiled for v5e.

    python -m experiments.aot_flat_state grad1   # loss and gradients, 16 images, one chip (compare aot_breakdown's grad)
    python -m experiments.aot_flat_state dp8su   # the whole step on v5e-8, update sharded (compare its dp8_su)

Prints XLA's GFLOP and bytes accessed and the TPU compiler's estimate (as experiments/aot_breakdown.py computes it).
Measured 2026-12-03: grad1 10.05 ms (per-leaf 7.79), dp8su 11.78 ms (per-leaf 9.98): the flat layout's slices and
the gradient's concatenation cost more than the single-buffer optimizer update saves (update alone 2.37 against
3.09 ms). Each compile takes ~10 min on 2 CPU cores.
"""
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu"); os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import aot_breakdown as ab
from jaxgen import aot
from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen.train import state as state_lib

which = sys.argv[1] if len(sys.argv) == 2 else ""
if which not in ("grad1", "dp8su"):
    sys.exit(f"usage: python -m experiments.aot_flat_state grad1|dp8su (got {sys.argv[1:]})")
chips = 1 if which == "grad1" else 8
_, topology = aot.parse_slice("v5e:2x2" if chips == 1 else "v5e-8")
devices = aot.topology_devices(topology)
config = config_lib.load_config(os.path.join(ab.ROOT, "configs", "ddpm_cifar10.py"))
config_lib.apply_overrides(config, [("train.batch_size", str(16 * chips)), ("data.mock", "True")])
task, loss_fn, t = ab.task_loss_and_trainable(config)
st0 = jax.eval_shape(task.init, jax.random.key(0))
flat0, unravel = ravel_pytree(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), st0.params))
n = flat0.size
npad = -(-n // (8 * 1024)) * 8 * 1024
mesh = Mesh(np.array(devices[:chips]), ("data",))
rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
S = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
x = S((16 * chips, *data_lib.dataset_info(config.data).shape), jnp.float32, split if chips > 1 else rep)
key = S((), jax.random.key(0).dtype, rep)
w = S((npad,), jnp.float32, rep)
tx = t.tx

def loss_flat(w, x, key):
    return loss_fn(unravel(w[:n]), st0.extra, {"x": x}, key)[0]

if which == "grad1":
    fn, args, donate = jax.value_and_grad(loss_flat), (w, x, key), ()
else:
    ost = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((npad,), jnp.float32))
    ost = jax.tree.map(lambda a: S(a.shape, a.dtype, split if a.ndim else rep), ost)
    ema = S((npad,), jnp.float32, split)
    def step(w, ost, ema, x, key):
        loss, g = jax.value_and_grad(loss_flat)(w, x, key)
        g = jax.lax.with_sharding_constraint(g, split)  # each chip updates its 1/8
        ws = jax.lax.with_sharding_constraint(w, split)
        u, ost = tx.update(g, ost, ws)
        ws = optax.apply_updates(ws, u)
        ema = state_lib.ema_update(ema, ws, t.ema_decay)
        return jax.lax.with_sharding_constraint(ws, rep), ost, ema, loss
    fn, args, donate = step, (w, ost, ema, x, key), (0, 1, 2)
s = time.perf_counter()
c = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
cost = c.cost_analysis(); cost = cost[0] if isinstance(cost, (list, tuple)) else cost
total, by = ab.estimated_cycles(c.as_text())
sh = ab.grouped_shares(by)
print(f"{which}: GFLOP {cost['flops']/1e9:.1f} GiB {cost['bytes accessed']/2**30:.3f} est ms {total/ab.V5E_CLOCK_HZ*1e3:.3f} "
      f"shares {({k: round(v, 3) for k, v in sh.items()})} compile {time.perf_counter()-s:.0f}s", flush=True)
