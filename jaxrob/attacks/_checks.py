"""Eager argument checks for the attacks, on top of :mod:`jaxrob._validate`.

Values are inspected only when concrete: under an outer ``jax.jit``/``jax.vmap``
(a training step that calls :func:`pgd`, or :func:`robust_accuracy` passing a
traced ``eps``) the shape checks still run and the value checks are skipped.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate

from . import _losses

NORMS = ("linf", "l2")
INITS = ("uniform", "normal", "zero")


def typed_key(name: str, key: Any) -> jax.Array:
    """Checks for a single typed PRNG key (``jax.random.key``); legacy uint32 keys are refused."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {key.shape}")
        return key
    hint = ""
    if hasattr(key, "dtype") and np.dtype(key.dtype) == np.uint32:
        hint = " (a legacy uint32 key: use jax.random.key(seed), or jax.random.wrap_key_data(raw_key))"
    desc = f"{type(key).__name__}" + (f" with dtype {key.dtype} and shape {np.shape(key)}"
                                      if hasattr(key, "dtype") else "")
    raise TypeError(f"{name} must be a typed PRNG key from jax.random.key(seed), got {desc}{hint}")


def scalar(name: str, value: Any, *, min: float, min_inclusive: bool = True) -> None:
    """Checks a real scalar hyperparameter that may be traced (then only its shape is checked)."""
    if isinstance(value, jax.core.Tracer):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}")
        return
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
    _validate.number(name, value, min=min, min_inclusive=min_inclusive)


def positive_int(name: str, value: Any) -> int:
    """Checks a static integer count >= 1."""
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def clip_range(clip: Any) -> tuple[float, float] | None:
    """Checks ``clip``: ``None`` (no box) or a pair ``(lo, hi)`` with ``lo < hi``."""
    if clip is None:
        return None
    try:
        lo, hi = clip
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise TypeError(f"clip must be None or a pair of numbers (lo, hi), got {clip!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"clip must be a finite pair with lo < hi, got {clip!r}")
    return (lo, hi)


def inputs(x: Any, clip: tuple[float, float] | None) -> None:
    """Checks a float batch ``(B, ...)`` and, when concrete, that it lies inside ``clip``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"x must be an array of shape (batch, ...), got {type(x).__name__}")
    if np.ndim(x) < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {np.shape(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a float array scaled to the clip range {clip} "
                        f"(e.g. uint8 images / 255), got dtype {x.dtype}")
    if clip is None or not _validate.is_concrete(x) or np.size(x) == 0:
        return
    xp = jnp if isinstance(x, jax.Array) else np  # reduce on device; move two scalars only
    with jax.ensure_compile_time_eval():  # a concrete x closed over inside an outer jit
        lo, hi = float(xp.min(x)), float(xp.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("x contains NaN or infinite values")
    if lo < clip[0] or hi > clip[1]:
        raise ValueError(f"x must lie in the clip range [{clip[0]:g}, {clip[1]:g}]; "
                         f"got values in [{lo:.4g}, {hi:.4g}] (pass clip=None for no box)")


def loss_spec(loss: Any) -> None:
    if isinstance(loss, str):
        _validate.choice("loss", loss, tuple(_losses.LOSSES))
    elif not callable(loss):
        raise TypeError(f"loss must be one of {tuple(_losses.LOSSES)} or a callable "
                        f"loss(logits, y) -> (B,), got {loss!r}")


def is_label_array(y: Any, batch: int) -> bool:
    """True if ``y`` is an integer array of shape ``(batch,)`` (class labels)."""
    return (hasattr(y, "dtype") and hasattr(y, "shape") and jnp.issubdtype(y.dtype, jnp.integer)
            and tuple(y.shape) == (batch,))


def targets(y: Any, *, batch: int, loss: Any) -> None:
    """Checks ``y``: integer labels ``(B,)`` for the built-in losses; any pytree with
    leading axis ``B`` for a callable loss."""
    if isinstance(loss, str):
        if not hasattr(y, "dtype"):
            raise TypeError(f"y must be an integer array of shape ({batch},), got {type(y).__name__}")
        _validate.labels("y", y, batch=batch)
        return
    leaves = jax.tree.leaves(y)
    if not leaves:
        raise ValueError("y must hold at least one array (targets passed to the loss)")
    for leaf in leaves:
        if np.ndim(leaf) < 1 or np.shape(leaf)[0] != batch:
            raise ValueError(f"every array in y must have leading axis {batch} to match the batch "
                             f"of x, got shape {np.shape(leaf)}")


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


@functools.lru_cache(maxsize=64)
def _num_classes_cached(apply_fn, params_spec, treedef, x_spec, randomized):
    return _num_classes(apply_fn, jax.tree.unflatten(treedef, params_spec), x_spec, randomized)


def _num_classes(apply_fn, params, x_spec, randomized):
    def f(p, xx):
        if randomized:
            return apply_fn(p, xx, key=jax.random.key(0))
        return apply_fn(p, xx)
    out = jax.eval_shape(f, params, x_spec)
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x_spec.shape[0]:
        raise ValueError(f"apply_fn must return logits of shape (batch, num_classes) = "
                         f"({x_spec.shape[0]}, C), got {getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[-1])


def num_classes(apply_fn: Callable, params: Any, x: Any, *, randomized: bool = False) -> int:
    """Number of logits of the model, from ``jax.eval_shape`` (cached per function and shapes)."""
    leaves, treedef = jax.tree.flatten(params)
    spec = tuple(jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in leaves)
    x_spec = jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    try:
        return _num_classes_cached(apply_fn, spec, treedef, x_spec, randomized)
    except TypeError as e:
        if "unhashable" not in str(e):
            raise
        return _num_classes(apply_fn, _abstract(params), x_spec, randomized)


def label_range(apply_fn: Callable, params: Any, x: Any, y: Any, *, randomized: bool) -> None:
    """Checks (when ``y`` is concrete) that labels lie in ``[0, C)`` for the model's ``C`` logits."""
    if not _validate.is_concrete(y) or np.size(y) == 0:
        return
    c = num_classes(apply_fn, params, x, randomized=randomized)
    _validate.labels("y", y, batch=np.shape(y)[0], num_classes=c)


def hashable(*objs: Any) -> bool:
    """True if every object can be a static ``jax.jit`` argument."""
    try:
        hash(objs)
    except TypeError:
        return False
    return True
