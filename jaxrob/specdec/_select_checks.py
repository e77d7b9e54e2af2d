"""Eager argument checks for the draft-selection schemes, on top of :mod:`jaxrob._validate`.

Shapes are always checked; values (non-negativity, normalisation, draft ranges) only
when the arrays are concrete, so the schemes still run under an outer ``jax.jit`` or
``jax.vmap`` (then the values are the caller's responsibility).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate

#: Largest allowed ``|sum(p) - 1|`` for a probability vector (float32 softmax over a
#: 49,152-token vocabulary sums to 1 within ~1e-6; 1e-3 leaves room for bfloat16 inputs).
SUM_TOL = 1e-3


def typed_key(name: str, key: Any) -> jax.Array:
    """Checks for a single typed PRNG key (``jax.random.key``)."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {key.shape}; "
                             "to batch, jax.vmap the scheme over a batch of keys")
        return key
    hint = ""
    if hasattr(key, "dtype") and np.dtype(key.dtype) == np.uint32:
        hint = " (a legacy uint32 key: use jax.random.key(seed), or jax.random.wrap_key_data(raw_key))"
    desc = type(key).__name__ + (f" with dtype {key.dtype} and shape {np.shape(key)}" if hasattr(key, "dtype") else "")
    raise TypeError(f"{name} must be a typed PRNG key from jax.random.key(seed), got {desc}{hint}")


def _as_float(name: str, x: Any) -> jax.Array:
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, np.float32)
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array of probabilities, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must hold floating-point probabilities, got dtype {x.dtype}")
    return jnp.asarray(x)


def _check_values(name: str, x: Any, axis_desc: str) -> None:
    if not _validate.is_concrete(x):
        return
    a = np.asarray(x, np.float64)
    if a.size == 0:
        return
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if a.min() < 0:
        raise ValueError(f"{name} must be a probability distribution (entries >= 0); got a minimum of {a.min():.4g}")
    sums = a.sum(axis=-1)
    bad = np.abs(sums - 1.0) > SUM_TOL
    if np.any(bad):
        worst = float(sums.reshape(-1)[np.argmax(np.abs(sums - 1.0).reshape(-1))])
        raise ValueError(f"{name} must sum to 1 {axis_desc} (tolerance {SUM_TOL}); got a sum of {worst:.6g}")


def target(name: str, p: Any) -> jax.Array:
    """Checks the target distribution ``p``: shape ``(V,)`` with ``V >= 1``, entries >= 0, summing to 1."""
    p = _as_float(name, p)
    if p.ndim != 1 or p.shape[0] < 1:
        raise ValueError(f"{name} must be a vector of shape (V,) over a vocabulary of V >= 1 tokens, "
                         f"got shape {p.shape}")
    _check_values(name, p, "")
    return p


def drafts_dists(name: str, qs: Any, vocab: int) -> jax.Array:
    """Checks the draft distributions ``qs``: shape ``(K, V)`` with ``K >= 1`` rows, each a distribution."""
    qs = _as_float(name, qs)
    if qs.ndim != 2:
        raise ValueError(f"{name} must have shape (K, V): one row per draft model (repeat a row for "
                         f"identical drafts), got shape {qs.shape}")
    if qs.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one draft distribution (K >= 1), got K = 0")
    if qs.shape[1] != vocab:
        raise ValueError(f"{name} has vocabulary size {qs.shape[1]} but the target p has {vocab}; "
                         "both must be over the same V tokens")
    _check_values(name, qs, "along each row")
    return qs


def draft_tokens(name: str, drafts: Any, k: int, vocab: int) -> jax.Array:
    """Checks the draft tokens: integer shape ``(K,)``, values in ``[0, V)`` when concrete."""
    if isinstance(drafts, (list, tuple)):
        drafts = np.asarray(drafts)
    if not hasattr(drafts, "dtype"):
        raise TypeError(f"{name} must be an integer array of shape ({k},), got {type(drafts).__name__}")
    if not jnp.issubdtype(drafts.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {drafts.dtype}")
    if tuple(np.shape(drafts)) != (k,):
        raise ValueError(f"{name} must have shape ({k},), one token per draft distribution in qs, "
                         f"got shape {tuple(np.shape(drafts))}")
    if _validate.is_concrete(drafts):
        a = np.asarray(drafts)
        if a.size and (a.min() < 0 or a.max() >= vocab):
            raise ValueError(f"{name} must lie in [0, {vocab}) for a vocabulary of {vocab} tokens; "
                             f"got values in [{a.min()}, {a.max()}]")
    return jnp.asarray(drafts, jnp.int32)


def identical_rows(name: str, qs: jax.Array, why: str) -> None:
    """Checks (when concrete) that every row of ``qs`` equals the first (i.i.d. drafts)."""
    if not _validate.is_concrete(qs):
        return
    a = np.asarray(qs, np.float64)
    if not np.allclose(a, a[:1], rtol=0.0, atol=1e-6):
        raise ValueError(f"{name} must have identical rows (drafts sampled i.i.d. from one draft model) {why}; "
                         f"rows differ by up to {np.abs(a - a[:1]).max():.3g}")


def rows_identical_if_concrete(qs: jax.Array) -> bool | None:
    """``True``/``False`` when ``qs`` is concrete, ``None`` when traced."""
    if not _validate.is_concrete(qs):
        return None
    a = np.asarray(qs, np.float64)
    return bool(np.allclose(a, a[:1], rtol=0.0, atol=1e-6))


def positive_int(name: str, value: Any) -> int:
    """Checks a static integer >= 1."""
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def enumeration_size(what: str, vocab: int, k: int, limit: int) -> int:
    """Checks that ``V**K`` draft tuples can be enumerated (exact LP / enumeration schemes)."""
    n = vocab ** k
    if n > limit:
        raise ValueError(f"{what} enumerates all V**K = {vocab}**{k} = {n:,} draft tuples, more than the "
                         f"limit of {limit:,}; use it for small vocabularies, or use truncated_is "
                         "(truncated LP / truncated alphabet) for large ones")
    return n
