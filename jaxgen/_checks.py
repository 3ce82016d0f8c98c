"""Argument checks for the library: a ValueError that names the argument, its value and what is accepted.

Checks run on the host on concrete values (Python numbers, NumPy arrays, jax Arrays outside jit).
A traced value (inside jit / vmap / grad / scan) has no value yet, so it is not checked by default; the
functions that take array data document what they do then, and accept `validate`:

    validate=None   (default) check concrete inputs, skip traced ones
    validate=True   also check traced inputs with `jax.experimental.checkify.check`: wrap the jitted
                    function with `checkify.checkify` and call `err.throw()` (without the wrapper, jit
                    refuses to trace the check, naming checkify)
    validate=False  no check (the caller vouches for the values)
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["is_traced", "number", "optional_number", "one_of", "values", "describe", "finite", "shape_tuple"]


def is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def describe(integer: bool = False, low=None, high=None, low_open: bool = False, high_open: bool = False) -> str:
    """'an integer >= 1', 'a finite number in [0, 1)', 'a finite number > 0', ..."""
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def _in_range(x, low, high, low_open, high_open) -> bool:
    if low is not None and not (x > low if low_open else x >= low):
        return False
    if high is not None and not (x < high if high_open else x <= high):
        return False
    return True


def number(name: str, value: Any, *, integer: bool = False, low=None, high=None, low_open: bool = False,
           high_open: bool = False, accepted: str | None = None):
    """A scalar argument: returns it as a Python int / float, or the value itself when traced.

    Rejects bools, strings, non-scalars, NaN and infinities, non-integers when `integer`, and values
    outside the range; the message is f"{name} must be {accepted}, got {value!r}".
    """
    if is_traced(value, low, high):
        return value
    accepted = accepted or describe(integer, low, high, low_open, high_open)
    shown = value.item() if getattr(value, "shape", None) == () and hasattr(value, "item") else value
    err = ValueError(f"{name} must be {accepted}, got {shown!r}")
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise err
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - any unconvertible object is a bad argument
        raise err from None
    if arr.ndim != 0 or arr.dtype.kind not in ("iu" if integer else "iuf"):
        raise err
    x = int(arr) if arr.dtype.kind in "iu" else float(arr)
    if not math.isfinite(x) or not _in_range(x, low, high, low_open, high_open):
        raise err
    return x


def optional_number(name: str, value: Any, **kwargs):
    """`number`, with None passed through (the message says 'None or ...')."""
    if value is None:
        return None
    accepted = "None or " + (kwargs.pop("accepted", None) or describe(
        kwargs.get("integer", False), kwargs.get("low"), kwargs.get("high"),
        kwargs.get("low_open", False), kwargs.get("high_open", False)))
    return number(name, value, accepted=accepted, **kwargs)


def one_of(name: str, value: Any, options) -> Any:
    """value in options, else ValueError naming the options."""
    try:
        ok = value in options
    except TypeError:  # unhashable
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def shape_tuple(name: str, shape: Any) -> tuple[int, ...]:
    """A static array shape: a non-empty tuple / list of integers >= 1."""
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 1 and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 1 for d in shape)
    if not ok:
        raise ValueError(f"{name} must be a non-empty tuple of integers >= 1 (batch first), got {shape!r}")
    return tuple(int(d) for d in shape)


def _first_bad(a: np.ndarray, ok: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(~ok)[0])
    v = a[idx]
    v = v.item() if hasattr(v, "item") else v
    if not a.ndim:
        return repr(v)
    if a.size <= 8:
        return f"{a.tolist()} (entry {v!r} at index {idx})"
    return f"{v!r} at index {idx} ({int(np.sum(~ok))} of {a.size} entries bad, shape {a.shape})"


def values(name: str, x: Any, ok: Callable[[Any, Any], Any], accepted: str, *, validate: bool | None = None) -> None:
    """Elementwise check of array data: ok(xp, x) -> bool array, xp = np (host) or jnp (traced).

    Concrete x: ValueError f"{name} must be {accepted}, got {first bad entry} at index ...".
    Traced x: nothing unless validate=True, then a checkify.check with the same message.
    """
    if validate is False:
        return
    if is_traced(x):
        if validate:
            good = jnp.asarray(ok(jnp, x))
            flat = jnp.ravel(good)
            first = jnp.argmin(flat)  # the first False (0 when all are True)
            bad = jnp.ravel(jnp.broadcast_to(x, good.shape))[first]
            checkify.check(jnp.all(flat), f"{name} must be {accepted}, got {{}} at flat index {{}}", bad, first)
        return
    try:
        a = np.asarray(x)
        if a.dtype.kind not in "biufc":
            if not jnp.issubdtype(a.dtype, jnp.floating):  # bf16 / fp8 (ml_dtypes) are floats too
                raise TypeError(a.dtype)
            a = a.astype(np.float32)
        good = np.asarray(ok(np, a), bool)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {accepted}, got {x!r}") from None
    if not good.all():
        a = np.broadcast_to(a, good.shape)
        raise ValueError(f"{name} must be {accepted}, got {_first_bad(a, good)}")


def finite(xp, x):
    """Elementwise finiteness for real or complex arrays (used as an `ok` predicate)."""
    return xp.isfinite(x)
