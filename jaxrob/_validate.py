"""Eager argument checks shared by the public API.

Every public entry point validates its arguments here, at the Python boundary and
before anything is traced, so that a wrong call fails with a message that names
the argument, the value received and what is allowed.  Checks on array *values*
(not just shapes) are only done when the array is concrete; under ``jax.jit``
they are skipped rather than forcing a device sync or a tracer error.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
    """True if ``x`` holds values we may inspect eagerly (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
           min_inclusive: bool = True, max_inclusive: bool = True, integer: bool = False) -> Any:
    """Checks that ``value`` is a real (optionally integer) number inside a range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and is_concrete(value):
            value = value.item()
        else:
            kind = "an integer" if integer else "a real number"
            raise TypeError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if min is not None and (value < min or (not min_inclusive and value == min)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {min}, got {value!r}")
    if max is not None and (value > max or (not max_inclusive and value == max)):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {max}, got {value!r}")
    return int(value) if integer else value


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Checks that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def prng_key(name: str, key: Any) -> jax.Array:
    """Checks that ``key`` is a typed PRNG key (``jax.random.key``) or a legacy uint32[2] key."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed), got {type(key).__name__}"
                    + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else ""))


def unit_interval(name: str, x: Any) -> None:
    """Checks (when concrete) that every value of ``x`` lies in [0, 1]."""
    if not is_concrete(x):
        return
    a = np.asarray(x)
    if a.size == 0:
        return
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (images scaled to the unit interval); "
                         f"got values in [{lo:.4g}, {hi:.4g}]")


def labels(name: str, y: Any, *, batch: int, num_classes: int | None = None) -> None:
    """Checks integer labels of shape (batch,) and, when concrete and known, range [0, num_classes)."""
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {getattr(y, 'dtype', type(y))}")
    if np.shape(y) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the batch of inputs, got {np.shape(y)}")
    if num_classes is not None and is_concrete(y) and np.size(y):
        a = np.asarray(y)
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) for a {num_classes}-class model; "
                             f"got values in [{a.min()}, {a.max()}]")
