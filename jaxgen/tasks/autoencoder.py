"""Quantised autoencoder (VQ-VAE, EMA VQ-VAE, FSQ): reconstruction training and codebook health.

    z_e = E(x),  z_q = Q(z_e),  x_rec = G(z_q)
    loss = mean (x_rec - x)^2 + [vq: ||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2 | vq_ema: beta ||z_e - sg(e)||^2 | fsq: 0]

The network is `jaxgen.nets.autoencoder.QuantizedAutoencoder`. Its VQ statistics (EMA counts, and for
'vq_ema' the EMA codebook) are non-trainable `TrainState.extra`, updated after the optimizer step from the
forward pass's encoder outputs; every `quantizer.restart_every` steps the codes whose EMA count is below
`quantizer.dead_threshold` are restarted from the batch's encoder outputs.

Config keys beyond the shared ones (defaults: `jaxgen.task_configs.autoencoder_config`):
  model: channels (one stage per entry, len - 1 stride-2 downsamplings), num_res_blocks, dropout
  quantizer: name ('fsq' | 'vq' | 'vq_ema'), levels (FSQ), num_codes, latent_dim, beta, decay, eps, cosine
    (VQ), dead_threshold (EMA count below which a code is dead), restart_every (steps; 0: never),
    init ('kmeans++' | 'batch' | 'random': VQ codebook from the initial encoder's outputs on
    init_examples training images, or N(0, 1))
  eval: batch_size, num_images (in figures/reconstructions.png), usage_on_train (also report the
    usage / perplexity over the training split: `usage_train`, `perplexity_train`)

Logged per step: loss, recon_mse, commitment, codebook_loss, usage and perplexity of the batch's codes.
`evaluate` (held-out split): recon_mse, usage = #{codes used on the held-out split} / K, perplexity =
exp(entropy of the held-out code histogram), codebook_size, and figures/reconstructions.png (originals
above their reconstructions) and figures/code_usage.png (count of every code, and sorted).
Pixel values are in the data pipeline's [-1, 1] scale, so recon_mse is in those units. With
`ema_decay > 0` evaluation uses the EMA parameters with the current quantiser state (for 'vq_ema' the
codebook is that state, not an EMA of parameters); the configs here keep ema_decay = 0.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import paths, viz
from jaxgen.config import ConfigError
from jaxgen.metrics.codebook import codebook_usage, perplexity
from jaxgen.nets.autoencoder import QuantizedAutoencoder, update_quantizer_state
from jaxgen.task_configs import QUANTIZERS
from jaxgen.tasks import Task, dataset_info
from jaxgen.train.state import check_supported, eval_params, trainable

INITS = ("kmeans++", "batch", "random")


def _validate(config, info) -> None:
    q, m, e = config.quantizer, config.model, config.eval
    if q.name not in QUANTIZERS:
        raise ConfigError(f"config.quantizer.name must be one of {QUANTIZERS}, got '{q.name}'")
    if q.init not in INITS:
        raise ConfigError(f"config.quantizer.init must be one of {INITS}, got '{q.init}'")
    if q.restart_every < 0:
        raise ConfigError(f"config.quantizer.restart_every must be >= 0 (0: no restarts), got {q.restart_every}")
    if q.init_examples < 1:
        raise ConfigError(f"config.quantizer.init_examples must be >= 1, got {q.init_examples}")
    if len(info.shape) != 3:
        raise ConfigError(f"config.task='autoencoder' needs image data (H, W, C); '{info.name}' has shape {info.shape}")
    f = 2 ** (len(m.channels) - 1)
    if info.shape[0] % f or info.shape[1] % f:
        raise ConfigError(f"config.model.channels has {len(m.channels) - 1} downsamplings, so the image size must be "
                          f"divisible by {f}; '{info.name}' images are {info.shape[0]}x{info.shape[1]}")
    if e.batch_size < 1 or e.num_images < 1:
        raise ConfigError(f"config.eval.batch_size and config.eval.num_images must be >= 1, got "
                          f"{e.batch_size} and {e.num_images}")


def make_model(config, info, rngs: nnx.Rngs) -> QuantizedAutoencoder:
    """The autoencoder described by config.model and config.quantizer, for images of shape info.shape."""
    q, m = config.quantizer, config.model
    try:
        return QuantizedAutoencoder(
            in_channels=info.shape[-1], channels=tuple(m.channels), quantizer=q.name, levels=tuple(q.levels),
            num_codes=q.num_codes, latent_dim=None if q.name == "fsq" else q.latent_dim, beta=q.beta,
            decay=q.decay, eps=q.eps, cosine=q.cosine, dead_threshold=q.dead_threshold,
            num_res_blocks=m.num_res_blocks, dropout=m.dropout, dtype=m.get("dtype", "float32"),
            param_dtype=m.get("param_dtype", "float32"), rngs=rngs)
    except ValueError as err:
        raise ConfigError(f"config.model / config.quantizer: {err}") from None


def _batched(fn, x: np.ndarray, batch_size: int):
    """Apply a jitted fn to x in fixed-size batches (the last one padded, so fn compiles once)."""
    outs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(jnp.asarray(chunk))))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def code_statistics(indices: np.ndarray, codebook_size: int) -> dict[str, float]:
    """usage = #{k : n_k > 0} / K and perplexity = exp(-sum p_k log p_k) of the codes in `indices`."""
    return {"usage": float(codebook_usage(indices, codebook_size)),
            "perplexity": float(perplexity(indices, codebook_size))}


def build(config) -> Task:
    check_supported(config, "autoencoder", low_precision=True)
    info = dataset_info(config)
    _validate(config, info)
    q = config.quantizer

    def new_model(key):
        return make_model(config, info, nnx.Rngs(params=key))

    t = trainable(config, new_model)
    graphdef = t.graphdef
    codebook_size = nnx.eval_shape(lambda: new_model(jax.random.key(0))).codebook_size
    is_vq = q.name != "fsq"
    restarts = is_vq and q.restart_every > 0 and q.dead_threshold > 0

    def init(key):
        k_model, k_codebook = jax.random.split(key)
        model = new_model(k_model)
        if is_vq and q.init != "random":
            # data-dependent codebook from the initial encoder (fixed images: the first of the training split)
            x = data_lib.load_split(config.data, config.data.split_train, max_examples=q.init_examples)["x"]
            model.init_codebook(k_codebook, jnp.asarray(x), method=q.init)
        return t.state_of(model)

    def loss_fn(params, extra, batch, key):
        out = t.module(params, extra)(batch["x"], key=key if config.model.dropout > 0 else None)
        terms = out["loss_terms"]
        metrics = dict(recon_mse=terms["recon"], commitment=terms["commitment"], codebook_loss=terms["codebook"],
                       usage=out["metrics"]["usage"], perplexity=out["metrics"]["perplexity"])
        # the forward pass's encoder outputs and codes travel to post_update (EMA codebook, restarts)
        return out["loss"], (metrics, (extra, {"z_e": out["z_e"], "indices": out["indices"]}))

    def post_update(params, carry, step, key):
        extra, forward = carry
        if not is_vq:
            return params, extra

        def update(operands, restart: bool):
            params, extra, forward, key = operands
            return update_quantizer_state(graphdef, params, extra, out=forward, key=key if restart else None)

        operands = (params, extra, forward, key)  # explicit operands: NNX variables must not cross the cond's trace
        if not restarts:
            return update(operands, restart=False)
        return jax.lax.cond((step + 1) % q.restart_every == 0, lambda ops: update(ops, restart=True),
                            lambda ops: update(ops, restart=False), operands)

    @jax.jit
    def forward(params, extra, x):
        out = t.module(params, extra)(x)
        sq_err = jnp.mean(jnp.square(out["recon"] - x), axis=(1, 2, 3))  # per image
        return {"recon": out["recon"], "sq_err": sq_err, "indices": out["indices"]}

    def evaluate(state, key, workdir):
        del key  # deterministic: no dropout at evaluation
        params = eval_params(state)
        fn = lambda x: forward(params, state.extra, x)  # noqa: E731
        test = data_lib.load_split(config.data, config.data.split_test)["x"]
        out = _batched(fn, test, config.eval.batch_size)
        stats = code_statistics(out["indices"], codebook_size)
        metrics = {"recon_mse": float(np.mean(out["sq_err"])), **stats, "codebook_size": float(codebook_size)}
        if config.eval.usage_on_train:
            train = data_lib.load_split(config.data, config.data.split_train)["x"]
            train_idx = _batched(lambda x: {"i": fn(x)["indices"]}, train, config.eval.batch_size)["i"]
            metrics.update({f"{k}_train": v for k, v in code_statistics(train_idx, codebook_size).items()})
        if jax.process_index() == 0:
            n = min(config.eval.num_images, len(test))
            title = f"{q.name}, K = {codebook_size}: held-out recon_mse {metrics['recon_mse']:.4f}"
            save_reconstructions_figure(os.path.join(workdir, "figures", "reconstructions.png"),
                                        test[:n], out["recon"][:n], title=title)
            counts = np.bincount(out["indices"].reshape(-1), minlength=codebook_size)
            save_code_usage_figure(os.path.join(workdir, "figures", "code_usage.png"), counts,
                                   title=f"{q.name}, K = {codebook_size}: usage {stats['usage']:.1%}, "
                                         f"perplexity {stats['perplexity']:.1f} (held-out)")
        return metrics

    def eval_step(state):
        """One batch of evaluate()'s forward pass."""
        params = eval_params(state)
        x = jax.ShapeDtypeStruct((config.eval.batch_size,) + tuple(info.shape), jnp.float32)
        return forward, (params, state.extra, x), f"forward pass, batch {config.eval.batch_size}"

    return Task(init=init, train_step=t.train_step(loss_fn, post_update), evaluate=evaluate, eval_step=eval_step)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_reconstructions_figure(path: str, originals: np.ndarray, reconstructions: np.ndarray,
                                title: str = "", ncols: int = 16) -> None:
    """Rows of originals, each above the row of its reconstructions ((N, H, W, C) in [-1, 1])."""
    plt = _pyplot()
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    n = len(originals)
    ncols = min(ncols, n)
    rows = []
    for i in range(0, n, ncols):
        pair = [originals[i:i + ncols], reconstructions[i:i + ncols]]
        pad = ncols - len(pair[0])
        if pad:
            pair = [np.concatenate([p, np.full((pad,) + p.shape[1:], -1.0, p.dtype)]) for p in pair]
        rows.extend(pair)
    grid = viz.image_grid(np.concatenate(rows), ncols=ncols)
    fig, ax = plt.subplots(figsize=(max(6, ncols * 0.6), max(2, len(rows) * 0.6) + 0.6))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.axis("off")
    ax.set_title((title + "\n" if title else "") + "odd rows: originals, even rows: reconstructions", fontsize=9)
    fig.tight_layout()
    paths.save_figure(fig, path, dpi=100)
    plt.close(fig)


def save_code_usage_figure(path: str, counts: np.ndarray, title: str = "") -> None:
    """Count of each code index (left) and the counts sorted in decreasing order, log scale (right)."""
    plt = _pyplot()
    counts = np.asarray(counts)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].stairs(counts, np.arange(len(counts) + 1), fill=True)  # one path: fast for 2^14 codes
    axes[0].set_xlabel("code index")
    axes[0].set_ylabel("count")
    ranked = np.sort(counts)[::-1]
    axes[1].plot(np.arange(1, len(counts) + 1), np.maximum(ranked, 0.5), drawstyle="steps-mid")
    axes[1].set_yscale("log")
    axes[1].set_xlabel(f"code rank ({int(np.sum(counts > 0))} of {len(counts)} used)")
    axes[1].set_ylabel("count (0 shown at 0.5)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.save_figure(fig, path, dpi=100)
    plt.close(fig)
