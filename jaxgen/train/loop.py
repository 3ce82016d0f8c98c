"""The one training loop: shard a built task, restore, step, log, checkpoint, evaluate.

Determinism: the key of step s is fold_in(train_key, s) and the data iterator's position is
checkpointed with the state, so a run resumed from step N logs bitwise the same losses as an
uninterrupted run (on the same devices).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data as data_lib
from jaxgen import paths
from jaxgen.config import ConfigError
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.checkpoint import Checkpointer
from jaxgen.train.logging import MetricWriter, format_metrics
from jaxgen.train import workdir as workdir_lib


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
    """SIGTERM, SIGINT or a preemption notice arrived; a checkpoint of the step all processes agreed
    on was written. `exit_code` is 130 (128 + SIGINT) where Ctrl-C was pressed, else 143 (128 + SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 143):
        super().__init__(message)
        self.exit_code = exit_code


def _detected_cluster() -> str | None:
    """The name of the cluster JAX's own auto-detection finds (Cloud TPU VM / GKE TPU, SLURM, Open MPI,
    Kubernetes), or None. Asks the same `ClusterEnv` registry `jax.distributed.initialize()` uses."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # the registry moved: fall back to the environment variables JAX reads
        keys = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri")
        return next((k for k in keys if os.environ.get(k)), None)
    for env in ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def maybe_initialize_distributed(dist_config) -> None:
    """Start `jax.distributed` when the run spans several processes; print which process this is.

    config.distributed.initialize: 'auto' (default) starts it when JAX's cluster detection finds a
    cluster (a Cloud TPU VM slice, GKE, SLURM, Open MPI) and lets JAX find the coordinator and process
    ids; 'true' always; 'false' never. An explicit coordinator_address (with num_processes and
    process_id) always starts it with those values (CPU devices then talk over gloo). Must run before
    anything starts the JAX backend.
    """
    mode = str(dist_config.initialize).lower()
    if mode not in ("auto", "true", "always", "1", "false", "never", "0"):
        raise ConfigError(f"config.distributed.initialize must be 'auto', 'true' or 'false', got "
                          f"'{dist_config.initialize}'")
    if jax.distributed.is_initialized() or mode in ("false", "never", "0"):
        return
    if dist_config.coordinator_address:
        if dist_config.num_processes < 1 or not 0 <= dist_config.process_id < dist_config.num_processes:
            raise ConfigError(
                f"config.distributed.coordinator_address is set, so config.distributed.num_processes (got "
                f"{dist_config.num_processes}) must be >= 1 and config.distributed.process_id (got "
                f"{dist_config.process_id}) in [0, num_processes)")
        # Cross-process collectives for CPU devices (a no-op for TPU/GPU); must precede backend start.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=dist_config.coordinator_address,
                                   num_processes=dist_config.num_processes, process_id=dist_config.process_id)
    elif mode in ("true", "always", "1") or _detected_cluster() is not None:
        jax.distributed.initialize()


def enable_compile_cache(directory: str, workdir: str) -> str:
    """Turn on JAX's persistent compilation cache in `directory`, else $JAX_COMPILATION_CACHE_DIR, else
    WORKDIR/compile_cache, so that a restarted run (after a preemption) loads its executables instead of
    compiling them. gs:// works too (JAX reads and writes the cache through etils.epath). Only compilations
    longer than `jax_persistent_cache_min_compile_time_secs` (JAX's default 1 s) are stored."""
    from jax.experimental.compilation_cache import compilation_cache

    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or paths.join(workdir, "compile_cache")
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        compilation_cache.reset_cache()  # a cache opened earlier in this process points elsewhere
    return directory


class _Profiler:
    """`train.profile_steps=(start, stop)`: a jax.profiler trace of steps start..stop-1 (0-based) into
    `directory` (the workdir's TensorBoard directory: its Profile tab shows it)."""

    def __init__(self, steps, directory: str):
        self.steps, self.directory, self.active = tuple(steps or ()), directory, False

    def before(self, step: int) -> None:
        if self.steps and not self.active and self.steps[0] <= step < self.steps[1]:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, done: int, state) -> None:
        if self.active and done >= self.steps[1]:
            jax.block_until_ready(state)  # the trace holds the last step's device work
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def process_line() -> str:
    """'process i of n (L local / G global devices, PLATFORM)': printed once per run by every process."""
    return (f"process {jax.process_index()} of {jax.process_count()} ({jax.local_device_count()} local / "
            f"{jax.device_count()} global devices, {jax.default_backend()})")


class _StopSignals:
    """SIGTERM and SIGINT -> a stop at a step every process agrees on, then a checkpoint of that step.

    Without jax.distributed, Python handlers set flags the loop reads after each step. With it, JAX's
    preemption notifier owns SIGTERM (a Python SIGTERM handler would replace it, and the hosts would
    never agree), every process polls the sync point `reached_preemption_sync_point(step)` each step and
    all of them stop at the same step; a SIGINT is then forwarded to that notifier as a SIGTERM to this
    process. After the first SIGINT the default action is restored, so a second Ctrl-C stops at once.
    """

    def __init__(self):
        self.distributed = jax.distributed.is_initialized()
        self.interrupted = self.terminated = False
        self._previous: dict = {}

    def __enter__(self):
        handlers = {signal.SIGINT: self._on_sigint}
        if not self.distributed:
            handlers[signal.SIGTERM] = self._on_sigterm
        try:
            for sig, handler in handlers.items():
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: signals stay as they were
            pass
        return self

    def _on_sigterm(self, signum, frame):
        self.terminated = True

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.distributed:
            os.kill(os.getpid(), signal.SIGTERM)

    def stop_at(self, step: int) -> bool:
        """Call once per step with increasing `step`: True when every process must stop after it."""
        if self.distributed:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.interrupted or self.terminated

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)


def _write_config(config, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    path = paths.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if paths.exists(path):
        if paths.read_text(path) == text:
            return
        n = 1
        while paths.exists(paths.join(workdir, f"config.prev{n}.json")):
            n += 1
        paths.replace(path, paths.join(workdir, f"config.prev{n}.json"))  # keep what the workdir had
    paths.write_text(path, text)


class _Progress:
    """tqdm bar with ETA on a terminal, plain log lines otherwise."""

    def __init__(self, start: int, total: int):
        self.bar = None
        if jax.process_index() == 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.total = total

    def update(self, step: int, metrics: dict | None = None):
        if self.bar is not None:
            self.bar.n = step
            if metrics:
                self.bar.set_postfix_str(format_metrics(metrics, ("loss", "grad_norm", "steps_per_sec")))
            self.bar.refresh()
        elif metrics and jax.process_index() == 0:
            print(f"step {step}/{self.total} " + format_metrics(metrics), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_mesh(config, devices=None):
    """The mesh of `config.mesh` over `devices` (default: all), checked against the batch size (ConfigError)."""
    try:
        mesh = mesh_lib.make_mesh(config.mesh, devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % n_batch_shards:
        raise ConfigError(f"config.train.batch_size={config.train.batch_size} must be divisible by the "
                          f"{n_batch_shards} devices of the mesh")
    return mesh


def init_state(task, key, state_sharding=None):
    """`task.init(key)` jitted (onto `state_sharding`), compiled without LLVM's optimisation passes on CPU.

    Initialisation runs once, and its graph of a hundred or more random initialisers is slow to optimise:
    for the quickstart UNet the compile takes 15 s of CPU at the default level and 2.4 s at level 0, with
    bitwise the same parameters (integer PRNG arithmetic and the same float ops, only scheduled differently).
    """
    lowered = jax.jit(task.init, out_shardings=state_sharding).lower(key)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(options)(key)


def sharded_train_step(task, state_sharding, batch_sharding, train_key, config=None):
    """jit(step(state, batch, step_number)) with the state donated; the key of step s is fold_in(train_key, s).
    `config`: for its `mesh.shard_update` (weight-update sharding; off without a config)."""

    mesh = getattr(batch_sharding, "mesh", None)  # a NamedSharding's mesh; none for a SingleDeviceSharding

    def step_fn(state, batch, step):
        key = jax.random.fold_in(train_key, step)
        if mesh is None:
            return task.train_step(state, batch, key)
        # the abstract mesh: for mesh_lib.shard_batch and shard_like_update
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), mesh_lib.update_sharding(config):
            return task.train_step(state, batch, key)

    return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding, None),
                   out_shardings=(state_sharding, None), donate_argnums=(0,))


def train_and_evaluate(config, workdir: str, task) -> dict[str, Any]:
    """Train `task` (a jaxgen.tasks.Task built from `config`) in `workdir`, resuming if it holds
    checkpoints; returns the final eval metrics. `jaxgen.tasks.build_and_train(config, workdir)` builds
    the task first.

    One run per workdir: process 0 holds the workdir's lock (jaxgen.train.workdir) for the whole run. A
    resume is validated (config unchanged outside an allow-list, newest intact checkpoint) before the
    workdir changes. `train.num_steps` at or below the latest checkpoint trains nothing: that checkpoint is
    evaluated and labelled with its own step (final_metrics.json always describes the newest checkpoint).
    """
    maybe_initialize_distributed(config.distributed)
    with workdir_lib.WorkdirLock(workdir, primary=jax.process_index() == 0):
        return _train_and_evaluate(config, workdir, task)


def _train_and_evaluate(config, workdir: str, task) -> dict[str, Any]:
    print(process_line(), flush=True)
    mesh = run_mesh(config)
    root = jax.random.key(config.seed)
    init_key, train_key, eval_key = jax.random.split(root, 3)

    abstract = jax.eval_shape(task.init, init_key)
    state_sharding = mesh_lib.state_shardings(mesh, abstract, config.mesh.fsdp_min_size, config.mesh.shard_update)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    resume_step = workdir_lib.prepare_resume(config, workdir, primary=jax.process_index() == 0, abstract=abstract)
    # Only now: the default cache is in the workdir, which a refused run must leave as it was.
    enable_compile_cache(config.train.get("compile_cache_dir", ""), workdir)
    paths.makedirs(workdir)
    prepared = task.prepare(workdir, mesh) if task.prepare is not None else {}
    try:
        iterator = data_lib.make_train_iterator(prepared.get("data", config.data),
                                                global_batch_size=config.train.batch_size, seed=config.seed)
    except ValueError as e:  # unknown dataset, tfds data not prepared, batch not divisible by processes
        raise ConfigError(str(e)) from None
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), config.train.keep_checkpoints)
    writer = MetricWriter(workdir)

    start = ckpt.latest_step
    if start != resume_step:  # another writer changed checkpoints/ between validation and now
        raise RuntimeError(f"{ckpt.directory}: latest checkpoint {start} is not the validated {resume_step}")
    if start is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
        state = ckpt.restore(start, target, iterator)
        print(f"Resumed from {ckpt.directory} at step {start}", flush=True)
    else:
        start = 0
        state = init_state(task, init_key, state_sharding)
        if "params" in prepared:  # e.g. a reflow student starts from its teacher's weights
            put = lambda: jax.device_put(prepared["params"], state_sharding.params)  # noqa: E731
            # separate buffers: the step donates the state, and one buffer must not be donated twice
            state = state.replace(params=put(), ema_params=None if state.ema_params is None else put())
    _write_config(config, workdir)  # once the checkpoint has restored under this config

    train_step = sharded_train_step(task, state_sharding, batch_sharding, train_key, config)

    cfg = config.train
    num_steps = cfg.num_steps
    if start > num_steps:  # evaluate the checkpoint as it is, under its own step
        workdir_lib.warn(f"config.train.num_steps={num_steps} is below the latest checkpoint (step {start}) of "
                         f"{workdir}: nothing to train; evaluating step {start}")
        num_steps = start
    progress = _Progress(start, num_steps)
    pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet read back
    last_saved = start if start else None
    window_start, window_time = start, time.perf_counter()

    def flush(step: int) -> None:
        """Read back the window's metrics, stop on non-finite values, log the window's mean."""
        nonlocal pending, window_start, window_time
        if not pending:
            return
        host = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, host):
            bad = [k for k in ("loss", "grad_norm") if k in m and not np.all(np.isfinite(m[k]))]
            if bad:
                raise NonFiniteError(
                    f"non-finite {' and '.join(bad)} at step {s + 1} (in the window of steps {window_start + 1}-{step}); "
                    f"the last good checkpoint is step {last_saved} in {ckpt.directory}")
        elapsed = time.perf_counter() - window_time
        row = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
        if "learning_rate" in row:
            row["learning_rate"] = float(host[-1]["learning_rate"])
        row["steps_per_sec"] = len(host) / elapsed
        row["examples_per_sec"] = len(host) * cfg.batch_size / elapsed
        writer.write(step, row)
        progress.update(step, row)
        pending, window_start, window_time = [], step, time.perf_counter()

    def save(step: int) -> None:
        nonlocal last_saved
        flush(step)  # never checkpoint a state whose window had a non-finite value
        writer.sync()  # the rows up to this checkpoint are durable before it is
        ckpt.save(step, state, iterator)
        last_saved = step

    def evaluate(step: int) -> dict:
        metrics = task.evaluate(state, jax.random.fold_in(eval_key, step), workdir)
        metrics = {(k if k.startswith("eval/") else f"eval/{k}"): v for k, v in metrics.items()}
        writer.write(step, metrics)
        if jax.process_index() == 0:
            print(f"eval at step {step}: " + format_metrics(metrics), flush=True)
        return metrics

    final_metrics: dict = {}
    profiler = _Profiler(cfg.get("profile_steps", ()), paths.join(workdir, "tensorboard"))
    try:
        with _StopSignals() as stop:
            for step in range(start, num_steps):
                profiler.before(step)
                batch = mesh_lib.global_batch(next(iterator), batch_sharding)
                state, metrics = train_step(state, batch, jnp.asarray(step, jnp.int32))
                pending.append((step, metrics))
                done = step + 1
                profiler.after(done, state)
                if stop.stop_at(done):
                    save(done)
                    ckpt.wait()
                    cause = "interrupted" if stop.interrupted else "preempted"
                    raise Preempted(f"{cause}: checkpoint of step {done} written to {ckpt.directory}; "
                                    f"re-run the same command to resume", 130 if stop.interrupted else 143)
                if done % cfg.log_every == 0:
                    flush(done)
                if done % cfg.checkpoint_every == 0 and done != num_steps:
                    save(done)
                if cfg.eval_every and done % cfg.eval_every == 0 and done != num_steps:
                    evaluate(done)
            flush(num_steps)
            if last_saved != num_steps and num_steps > start:
                save(num_steps)
            ckpt.wait()
        final_metrics = evaluate(num_steps)  # outside the SIGTERM handler: a stop now just ends the run
    finally:
        profiler.close()
        ckpt.wait()
        progress.close()
        writer.close()
        ckpt.close()
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "final_metrics.json"), json.dumps(
            {k: (v.item() if hasattr(v, "item") else v) for k, v in final_metrics.items()}, indent=2))
    return final_metrics
