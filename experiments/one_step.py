"""One- and few-step generators on the Gaussian-mixture oracles and the digits: CD, CT, iCT, shortcut and SiD beside
the teacher's own solver.

    python -m experiments.one_step [--quick] [--out DIR] [--settings oracle-2d,oracle-16d,digits] [--digits-workdir DIR]

Settings (`--settings`, default all three; the rows of settings not run are kept in the JSON):
`oracle-2d` (the 9-component 2-D mixture, data in about [-1, 1]) and `oracle-16d` (6 components in 16-D, means
uniform in [-0.6, 0.6]^16, the reflow experiment's): the teacher is the exact oracle denoiser
D(x, sigma) = E[x0 | x0 + sigma n] (`GaussianMixture.denoise`), so every gap to the data is the student's.
`digits`: the configs configs/edm_digits.py (the teacher), cm_digits.py (:cd, :ct, :ict), shortcut_digits.py and
sid_digits.py run through their tasks as a user runs them (`run_digits`), each in DIR/<name> (--digits-workdir,
default runs/one_step_digits; a workdir holding a checkpoint is only evaluated), scored by `fd`, the Fréchet
distance to the test split in the digits classifier's features (297 samples), at 1, 2, 4 NFE.
On the oracles every student is a small MLP (`MLPDenoiser`, 128 wide, 3 hidden layers; the shortcut model adds a
step-size embedding), Adam, batch 256, evaluated with an EMA of its weights (0.995):

    cd        consistency distillation: N = 18, one Heun step of the oracle's PF-ODE, EMA target mu = 0.95
    ct        consistency training: adaptive N(k) 2 -> 150 and mu(k) from mu0 = 0.9
    ict       improved CT: N 10 -> 1280 doubling, pseudo-Huber, lognormal pairs, 1/(sigma_{i+1} - sigma_i), no EMA target
    shortcut  flow with step-size conditioning, M = 128 base steps, 1/4 self-consistency rows, EMA (0.999) targets
    sid       SiD, alpha = 1.2, sigma_init = 2.5: generator and fake score both start from one MLP denoiser
              pre-trained on the data (as SiD starts both from the teacher), the oracle is the teacher
    teacher   the oracle's PF-ODE from sigma = 80: Euler (NFE = steps) and Heun (NFE = 2 x steps), and Heun at 64 NFE

Consistency models sample with the multistep algorithm on the Karras grid (`consistency_sample_sigmas`),
x = f(sigma_0 z, sigma_0), then x = f(x + sqrt(tau^2 - sigma_min^2) z', tau) for each next level tau; shortcut
with n equal steps x_{t - 1/n} = x_t - s(x_t, t, 1/n) / n. Measured on the oracles: `sw2` (sliced W2, 256
directions) and `mmd` against fresh oracle samples (4000 generated points, --quick 2000); the `data` row is the
noise floor (fresh against fresh).
Figures: one_step.png (oracle-2d) and one_step_16d.png (oracle-16d, projected on the data's two leading principal
axes), 1-NFE samples of every method beside the data and the teacher at 1 and 64 NFE; the digits runs write
theirs into their workdirs (figures/samples_<method>-<n>step.png).
Expected: every one-step student far better than the teacher's 1-step sample (the posterior mean).

Measured (results/one_step.json, 5000 steps per student, 13 min on 2 shared cores; --quick: 1500 steps, 7 min),
sw2 / mmd at 1 NFE: data floor 0.0105 / -0.0009, teacher Heun 64 NFE 0.018 / -0.0004, teacher Euler 1 NFE
0.447 / 3.62 (every sample at the data mean); CD 0.027 / 0.017 (modes visible in the figure), iCT 0.077 / 0.109
(0.031 / 0.008 at 4 NFE), SiD 0.041 / 0.036 (the spread right, the modes not yet), CT 0.365 / 1.35 (collapsed
towards the mean; 0.107 / 0.123 at 4 NFE), shortcut 0.336 / 0.212 (0.208 at 4 steps, 0.027 / 0.016 at 128).
The expected direction holds for CD, iCT and SiD; CT and the shortcut model need far more than 5000 steps for
their large steps (their small steps are good: CT at 4 NFE, the shortcut at 128 steps). The teacher's Heun at
2 NFE (one step from sigma = 80 to 0.002) diverges (sw2 39.6): its corrector divides by the final sigma.

oracle-16d (--quick rows), sw2 at 1 NFE (data floor 0.022, teacher Heun 64 NFE 0.022, Euler 1 NFE 0.399): CD 0.052,
SiD 0.048, iCT 0.235, CT 0.379, shortcut 0.505 (0.040 at 128 steps): the same order as in 2-D.

digits (the configs' full budgets, 55 min in all on 2 shared cores), fd at 1 / 2 / 4 steps: teacher Euler
98.1 / 31.9 / 17.7 and Heun 35 NFE 4.32; CD 7.97 / 8.68 / 8.26; CT 60.7 / 48.1 / 45.6; iCT 5.59 / 6.44 / 6.96;
shortcut 49.3 / 48.4 / 47.0 (6.14 at 128 steps); SiD 3.71 at one step, below the teacher's 35-step Heun.
Figure: one_step_digits.png.
"""
from __future__ import annotations

import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxgen import diffusion as D  # noqa: E402
from jaxgen import paths  # noqa: E402
from jaxgen.diffusion import consistency as C  # noqa: E402
from jaxgen.diffusion import shortcut as SC  # noqa: E402
from jaxgen.diffusion import sid as SID  # noqa: E402
from jaxgen.nets import MLPDenoiser  # noqa: E402
from jaxgen.nets.embeddings import TimeEmbedding  # noqa: E402
from jaxgen.train.state import ema_update  # noqa: E402
from experiments._report import (markdown_table, parse_setting_args, prepare_out, sample_quality,  # noqa: E402
                                 save_figure, write_rows)

SETTINGS = {"oracle-2d": D.oracle_2d, "oracle-16d": D.oracle_16d}
SPEC = C.ConsistencySpec()
BATCH, HIDDEN, DEPTH, EVAL_EMA = 256, 128, 3, 0.995


class ShortcutMLP(nnx.Module):
    """s(x, t, log2(1/d)): an MLPDenoiser whose time embedding is the sum of embeddings of t and of the
    step level (level / 8 through the same kind of sinusoid embedding, so levels 0..7 are distinct)."""

    def __init__(self, dim, rngs):
        self.net = MLPDenoiser(dim, hidden=HIDDEN, depth=DEPTH, rngs=rngs)
        self.demb = TimeEmbedding(64, HIDDEN, rngs=rngs)

    def __call__(self, x, t, level):
        net = self.net
        e = jax.nn.silu(net.temb(t) + self.demb(level / 8.0))
        h = net.inp(x) + e
        for layer, proj in zip(net.layers, net.temb_proj):
            h = jax.nn.silu(layer(h) + proj(e))
        return net.out(h)


def _split(module):
    graph, params = nnx.split(module)
    return (lambda p, *a, **k: nnx.merge(graph, p)(*a, **k)), params


def _train(step_fn, carry, steps, key, chunk=100):
    """Run `step_fn(carry, key) -> (carry, loss)` `steps` times, jitted in scanned chunks."""

    @jax.jit
    def run(carry, keys):
        return jax.lax.scan(step_fn, carry, keys)

    losses = []
    for i in range(0, steps, chunk):
        carry, ls = run(carry, jax.random.split(jax.random.fold_in(key, i), min(chunk, steps - i)))
        losses.append(np.asarray(ls))
    return carry, np.concatenate(losses)


def train_consistency(kind, gm, steps, key, lr=1e-3):
    """CD / CT / iCT: returns f(x, sigma) with the EMA weights."""
    apply_net, params = _split(MLPDenoiser(gm.dim, hidden=HIDDEN, depth=DEPTH, rngs=nnx.Rngs(0)))
    apply = lambda p, x_in, c_noise, key: apply_net(p, x_in, c_noise, key=key)  # noqa: E731
    teacher = lambda x, s: gm.denoise(x, 1.0, s)  # noqa: E731
    tx = optax.adam(lr)

    def step(carry, key):
        params, target, ema, opt, k = carry
        k_data, k_loss = jax.random.split(key)
        x0 = gm.sample(k_data, BATCH)
        if kind == "cd":
            loss_fn = lambda p: C.cd_loss(apply, p, target, x0, k_loss, teacher, 18, "heun", SPEC)  # noqa: E731
            mu = 0.95
        elif kind == "ct":
            n = C.ct_num_scales(k, steps)
            loss_fn = lambda p: C.ct_loss(apply, p, target, x0, k_loss, n, SPEC)  # noqa: E731
            mu = C.ct_target_ema(k, steps)
        else:
            n = C.ict_num_scales(k, steps)
            loss_fn = lambda p: C.ict_loss(apply, p, x0, k_loss, n, max_scales=1281, spec=SPEC)  # noqa: E731
            mu = 0.0
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        target = ema_update(target, params, mu) if kind != "ict" else params
        return (params, target, ema_update(ema, params, EVAL_EMA), opt, k + 1), loss

    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    init = (params, copy(params), copy(params), tx.init(params), jnp.zeros((), jnp.int32))
    (params, _, ema, _, _), losses = _train(step, init, steps, key)
    return (lambda x, s: C.consistency_function(apply, ema, x, s, None, SPEC)), losses


def train_shortcut(gm, steps, key, lr=1e-3):
    apply_net, params = _split(ShortcutMLP(gm.dim, nnx.Rngs(0)))
    apply = lambda p, x, t, level, key: apply_net(p, x, t, level)  # noqa: E731
    tx = optax.adam(lr)

    def step(carry, key):
        params, target, ema, opt = carry
        k_data, k_loss = jax.random.split(key)
        x0 = gm.sample(k_data, BATCH)
        (loss, _), grads = jax.value_and_grad(SC.shortcut_loss, 1, has_aux=True)(apply, params, target, x0, k_loss)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        return (params, ema_update(target, params, 0.999), ema_update(ema, params, EVAL_EMA), opt), loss

    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    (_, _, ema, _), losses = _train(step, (params, copy(params), copy(params), tx.init(params)), steps, key)
    return (lambda x, t, level: apply(ema, x, t, level, None)), losses


def edm_denoiser_net(apply_net, sigma_data=0.5):
    """EDM preconditioning: D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma)/4) (Karras et al. 2022)."""

    def D_(p, x, sigma, key=None):
        s = sigma[:, None]
        c_skip = sigma_data**2 / (s**2 + sigma_data**2)
        c_out = s * sigma_data / jnp.sqrt(s**2 + sigma_data**2)
        c_in = 1.0 / jnp.sqrt(s**2 + sigma_data**2)
        return c_skip * x + c_out * apply_net(p, c_in * x, 0.25 * jnp.log(sigma), key=key)

    return D_


def train_sid(gm, steps, pre_steps, key, alpha=1.2, sigma_init=2.5, lr=1e-4):
    """SiD: pre-train one EDM denoiser on the data (DSM), copy it into the fake score and the generator
    G(z) = D(sigma_init z, sigma_init), then run the alternating SiD step against the oracle teacher."""
    apply_net, params = _split(MLPDenoiser(gm.dim, hidden=HIDDEN, depth=DEPTH, rngs=nnx.Rngs(0)))
    den = edm_denoiser_net(apply_net)
    tx = optax.adam(1e-3)

    def pre_step(carry, key):
        params, opt = carry
        k_data, k_loss = jax.random.split(key)
        x0 = gm.sample(k_data, BATCH)
        # EDM's lognormal training noise, P_mean = -1.2, P_std = 1.2
        k_s, k_n = jax.random.split(k_loss)
        sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_s, (BATCH,)))
        w = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        loss_fn = lambda p: jnp.mean(w * jnp.sum((den(p, x0 + sigma[:, None] * jax.random.normal(k_n, x0.shape),  # noqa: E731
                                                        sigma) - x0) ** 2, -1))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), loss

    (params, _), _ = _train(pre_step, (params, tx.init(params)), pre_steps, jax.random.fold_in(key, 1))
    gen_apply = lambda p, x_in, key: den(p, x_in, jnp.full((x_in.shape[0],), sigma_init), key)  # noqa: E731
    teacher = lambda g, x, s: g.denoise(x, 1.0, s)  # noqa: E731
    gen_tx, fake_tx = optax.adam(lr, b1=0.0), optax.adam(lr, b1=0.0)
    state = SID.init_sid_state(params, jax.tree.map(jnp.copy, params), gen_tx, fake_tx)
    sid_step = SID.make_sid_step(gen_apply, den, teacher, gen_tx, fake_tx, (BATCH, gm.dim), alpha=alpha,
                                 sigma_init=sigma_init)

    def step(carry, key):
        state, ema = carry
        state, m = sid_step(state, gm, key)
        return (state, ema_update(ema, state.gen_params, EVAL_EMA)), m["gen_loss"]

    (state, ema), losses = _train(step, (state, jax.tree.map(jnp.copy, params)), steps, key)
    return (lambda z: gen_apply(ema, sigma_init * z, None)), losses, int(state.gen_skipped)


def run_oracle(setting, quick, log=print):
    """One oracle setting: the teacher's solvers and every student, scored against fresh oracle samples.
    Returns (rows, {name: samples} for the figure)."""
    steps = 1500 if quick else 5000
    n = 2000 if quick else 4000
    gm = SETTINGS[setting]()
    dim = gm.dim
    data = gm.sample(jax.random.key(123), n)
    kq = jax.random.key(7)
    rows, samples = [], {}

    def add(method, nfe, x, **extra):
        q = sample_quality(x, data, kq)
        rows.append(dict(method=method, setting=setting, nfe=nfe, **q, **extra))
        log(f"  {setting} {method:9s} nfe={nfe:3d} sw2={q['sw2']:.4f} mmd={q['mmd']:.5f}")
        if nfe == 1 or (method == "teacher-heun" and nfe == 64) or method == "data":
            samples.setdefault(method if method != "teacher-heun" else f"teacher-heun {nfe}", np.asarray(x))

    add("data", 0, gm.sample(jax.random.key(5), n))
    p = D.EDM()
    x_T = 80.0 * jax.random.normal(jax.random.key(11), (n, dim))
    for solver, nfes in (("euler", (1, 2, 4)), ("heun", (2, 4, 64))):
        for nfe in nfes:
            ts = D.time_grid(p, nfe if solver == "euler" else nfe // 2)
            add(f"teacher-{solver}", nfe, D.ode_sample(gm.denoise_fn(p), p, x_T, ts, solver))
    key = jax.random.key(0)
    for j, kind in enumerate(("cd", "ct", "ict")):
        t0 = time.time()
        f, losses = train_consistency(kind, gm, steps, jax.random.fold_in(key, j))
        train_s = time.time() - t0
        for nfe in (1, 2, 4):
            x = C.consistency_sample(f, jax.random.fold_in(key, 100 + nfe), (n, dim),
                                     C.consistency_sample_sigmas(nfe))
            add(kind, nfe, x, train_s=train_s, steps=steps, final_loss=float(np.mean(losses[-100:])))
    t0 = time.time()
    s_fn, losses = train_shortcut(gm, steps, jax.random.fold_in(key, 7))
    train_s = time.time() - t0
    eps = jax.random.normal(jax.random.key(12), (n, dim))
    for nfe in (1, 2, 4, 128):
        add("shortcut", nfe, SC.shortcut_sample(s_fn, eps, nfe), train_s=train_s, steps=steps,
            final_loss=float(np.mean(losses[-100:])))
    t0 = time.time()
    g, losses, skipped = train_sid(gm, steps, 500 if quick else 2000, jax.random.fold_in(key, 9))
    add("sid", 1, g(jax.random.normal(jax.random.key(13), (n, dim))), train_s=time.time() - t0, steps=steps,
        final_loss=float(np.mean(losses[-100:])), skipped=skipped)
    return rows, samples


# The digits setting: (method, workdir name, config file and variant, the teacher's workdir name or None).
DIGITS = (("teacher", "edm_digits", "edm_digits.py", None),
          ("cd", "cd_digits", "cm_digits.py:cd", "edm_digits"),
          ("ct", "ct_digits", "cm_digits.py:ct", None),
          ("ict", "ict_digits", "cm_digits.py:ict", None),
          ("shortcut", "shortcut_digits", "shortcut_digits.py", None),
          ("sid", "sid_digits", "sid_digits.py", "edm_digits"))
DIGITS_QUICK_STEPS = 300  # --quick: training steps of each digits model trained from scratch (the teacher 600)


def run_digits(workdir, quick, log=print):
    """The digits setting through the tasks, as a user runs the configs (configs/edm_digits.py, cm_digits.py,
    shortcut_digits.py, sid_digits.py): each model in workdir/<name>, trained only where the workdir holds no
    checkpoint (--quick: DIGITS_QUICK_STEPS steps), then evaluated on its final checkpoint: fd to the test split in
    the digits classifier's features (297 samples) at 1, 2, 4 NFE (and the shortcut model at 128 steps); the EDM
    teacher with Euler at 1, 2, 4 steps and Heun at 35 NFE (its config's sampler)."""
    from jaxgen import config as config_lib
    from jaxgen.tasks import build_and_train

    cdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    rows = []
    for method, name, spec, teacher in DIGITS:
        def config(**evals):
            c = config_lib.load_config(os.path.join(cdir, spec))
            if method == "teacher":
                c.eval.untrained_baseline = False
            if quick:
                c.train.num_steps = 2 * DIGITS_QUICK_STEPS if method == "teacher" else DIGITS_QUICK_STEPS
            if teacher:
                c.teacher.workdir = paths.join(workdir, teacher)
            c.eval.update(evals)
            return c

        wd = paths.join(workdir, name)
        t0 = time.time()
        ckpts = paths.join(wd, "checkpoints")
        fresh = not (paths.isdir(ckpts) and paths.listdir(ckpts))
        out = build_and_train(config(), wd)  # trains only what the workdir lacks, then evaluates
        wall = time.time() - t0
        log(f"digits {method}: {'trained and evaluated' if fresh else 'evaluated'} in {wd} ({wall:.0f} s)")
        steps = config().train.num_steps
        if method == "teacher":
            rows.append(dict(method="teacher-heun", setting="digits", nfe=35, fd=out["eval/fd"], steps=steps))
            for nfe in (1, 2, 4):
                o = build_and_train(config(sampler="euler", sample_steps=nfe, clip_x0=None), wd)
                rows.append(dict(method="teacher-euler", setting="digits", nfe=nfe, fd=o["eval/fd"], steps=steps))
        else:
            for k, v in sorted(out.items()):
                if k.startswith("eval/fd_") and k.endswith("step"):
                    rows.append(dict(method=method, setting="digits", nfe=int(k[len("eval/fd_"):-len("step")]),
                                     fd=v, steps=steps, wall_s=wall if fresh else None))
        log("  " + ", ".join(f"{r['method']} {r['nfe']}: fd {r['fd']:.3f}" for r in rows
                             if r["method"].split("-")[0] == method))
    return rows


def main(argv=None):
    args = parse_setting_args(__doc__.splitlines()[0], (*SETTINGS, "digits"), "runs/one_step_digits", argv)
    settings = args.settings
    prepare_out(args.out)
    t_all = time.time()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    rows = []
    for setting in settings:
        t0 = time.time()
        if setting == "digits":
            r = run_digits(args.digits_workdir, args.quick, log)
            digits_figure(args.digits_workdir, os.path.join(args.out, "one_step_digits.png"))
        else:
            r, samples = run_oracle(setting, args.quick, log)
            name = "one_step.png" if setting == "oracle-2d" else f"one_step_{setting.split('-')[1]}.png"
            _figure(samples, os.path.join(args.out, name), project=setting != "oracle-2d")
        rows += [row | {"quick": args.quick} for row in r]
        log(f"{setting} done ({time.time() - t0:.0f} s)")
    rows = write_rows(os.path.join(args.out, "one_step.json"), rows, settings)
    print(markdown_table(rows, ["method", "setting", "nfe", "sw2", "mmd", "fd", "train_s", "final_loss"]))
    print(f"\n(total {time.time() - t_all:.0f} s)")


def digits_figure(workdir, path):
    """The generated half of each digits run's sample figure (figures/samples_*.png in its workdir): the teacher
    at 35 and 1 NFE, every student at one step, side by side."""
    panels = [("teacher, Heun 35 NFE", "edm_digits", "samples_heun-nfe35.png"),
              ("teacher, Euler 1 NFE", "edm_digits", "samples_euler-nfe1.png")]
    panels += [(f"{m}, 1 step", name, f"samples_{m}-1step.png") for m, name, _, _ in DIGITS if m != "teacher"]
    panels = [(t, paths.join(workdir, n, "figures", f)) for t, n, f in panels]
    panels = [(t, f) for t, f in panels if paths.exists(f)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (title, f) in zip(np.atleast_1d(axes), panels):
        with paths.open(f, "rb") as fh:
            img = plt.imread(fh, format="png")
        h, w = img.shape[:2]
        ax.imshow(img[int(0.14 * h):, :w // 2])  # the generated half, below the figure's titles
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _figure(samples, path, project=False):
    """1-NFE samples of every method (scatter); project: onto the data's two leading principal axes."""
    names = list(samples)
    if project:
        d = samples["data"]
        _, _, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
        samples = {k: (v - d.mean(0)) @ vt[:2].T for k, v in samples.items()}
    lim = 1.2 * float(np.abs(samples["data"]).max()) if project else 1.2
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(3 * cols, 3 * math.ceil(len(names) / cols)))
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        x = samples[name][:2000]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(name if name.startswith(("data", "teacher-heun 64")) else f"{name}, 1 NFE", fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
