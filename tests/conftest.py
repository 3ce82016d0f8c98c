"""Test setup: 8 emulated CPU devices (before any backend use), float32 by default.

Tests that compare against a closed form wrap themselves in `jax.enable_x64(True)`.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
