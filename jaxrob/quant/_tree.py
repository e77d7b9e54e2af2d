"""Quantization as a pytree transform: ``params -> params``, a quantized model, and its size in bits.

* Post-training quantization (PTQ): ``apply_fn(quantize_params(params, fn), x)``.
* Quantization-aware training (QAT): ``jaxrob.train.fit(quantized_model(model, fn), ...)``
  trains the latent float weights through the quantizer's straight-through gradient;
  the trained model's ``apply_fn`` keeps quantizing, so evaluating and attacking
  it sees the quantized network.

Leaves are addressed by their path, a ``"/"``-joined string of the dict keys,
attribute names and sequence indices from the root (``"hidden/0/kernel"``,
``"conv1/bias"``).  By default the quantized leaves are those named ``kernel``:
the weights of jaxrob's (and Flax's) dense and convolution layers; biases,
batch-norm parameters and statistics stay in float.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from jaxrob.quant._uniform import check_bits

PyTree = Any
Where = Callable[[str, Any], bool]


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_path(path: tuple) -> str:
    """``"a/b/kernel"`` from a ``jax.tree_util`` key path."""
    return "/".join(_key_name(k) for k in path)


def is_kernel(path: str, leaf: Any) -> bool:
    """The default ``where``: leaves named ``kernel`` (conv and dense weights)."""
    del leaf
    return path.rsplit("/", 1)[-1] == "kernel"


def _check_where(where: Any) -> Where:
    if where is None:
        return is_kernel
    if not callable(where):
        raise TypeError("where must be None (quantize the leaves named 'kernel') or a predicate "
                        f"where(path: str, leaf) -> bool, got {type(where).__name__}")
    return where


def _selected(params: PyTree, where: Where) -> list[tuple[str, Any]]:
    return [(leaf_path(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(params)
            if where(leaf_path(p), leaf)]


def quantize_params(params: PyTree, fn: Callable[[jax.Array], jax.Array], *, where: Where | None = None) -> PyTree:
    """Applies the quantizer ``fn`` to the weight leaves of ``params``; other leaves pass through.

    Args:
      params: any pytree of arrays (a jaxrob model's ``variables`` or
        ``variables["params"]``, a foreign model's params).
      fn: ``leaf -> quantized leaf`` of the same shape, e.g.
        ``functools.partial(fake_quant, bits=4, axis=-1)`` or ``binary``.
      where: predicate ``where(path, leaf) -> bool`` choosing the leaves to
        quantize (``path`` as ``"hidden/0/kernel"``); None: leaves named ``kernel``.

    Returns:
      A pytree of the same structure; differentiable through ``fn``'s gradient rule.

    Example:
      >>> import functools, jax.numpy as jnp
      >>> from jaxrob.quant._uniform import fake_quant
      >>> p = {"dense": {"kernel": jnp.array([[0.3, -1.0]]), "bias": jnp.array([0.3, 0.1])}}
      >>> q = quantize_params(p, functools.partial(fake_quant, bits=2))
      >>> q["dense"]["kernel"].tolist(), q["dense"]["bias"].tolist()
      ([[0.0, -1.0]], [0.30000001192092896, 0.10000000149011612])
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable leaf -> quantized leaf, got {type(fn).__name__}")
    where = _check_where(where)
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(x) if where(leaf_path(p), x) else x, params)


def quantized_model(model: Any, fn: Callable[[jax.Array], jax.Array], *, where: Where | None = None) -> Any:
    """The same model with its weights passed through ``fn`` inside ``apply_fn`` (and ``train_apply``).

    Training the result with :func:`jaxrob.train.fit` is quantization-aware
    training: the optimizer updates the float weights, the forward pass sees the
    quantized ones, and gradients follow ``fn``'s rule (the STE). Its
    ``variables`` are the original float ones (quantize them with
    :func:`quantize_params` for storage or PTQ).

    Args:
      model: a :class:`jaxrob.models.Model`, or a foreign ``(apply_fn, params)`` pair.
      fn: the weight quantizer (see :func:`quantize_params`).
      where: the leaves to quantize (default: ``kernel`` leaves); must select at least one.

    Returns:
      A ``Model`` (``dataclasses.replace`` of ``model``: same name, shapes and
      variables), or ``(quantized_apply_fn, params)`` for a foreign model.

    Raises:
      TypeError: ``model`` is neither; ``fn``/``where`` not callable.
      ValueError: ``where`` selects no leaf of the model's parameters.

    Example:
      >>> import functools, jax
      >>> from jaxrob import models
      >>> from jaxrob.quant._uniform import fake_quant
      >>> m = models.create("mlp", key=jax.random.key(0), hidden_sizes=(16,))
      >>> qm = quantized_model(m, functools.partial(fake_quant, bits=4, axis=-1))
      >>> qm.apply_fn(qm.variables, jax.numpy.zeros((2, 28, 28, 1))).shape
      (2, 10)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable leaf -> quantized leaf, got {type(fn).__name__}")
    where_ = _check_where(where)
    if all(hasattr(model, a) for a in ("apply_fn", "train_apply", "variables")) and dataclasses.is_dataclass(model):
        params = model.variables["params"]
        if not _selected(params, where_):
            raise ValueError(f"where selects no leaf of the model's params (paths: "
                             f"{[leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:8]} ...)")
        inner_apply, inner_train = model.apply_fn, model.train_apply

        def qvars(variables):
            return {**variables, "params": quantize_params(variables["params"], fn, where=where_)}

        def apply_fn(variables, x):
            return inner_apply(qvars(variables), x)

        def train_apply(variables, x, *, key=None):
            return inner_train(qvars(variables), x, key=key)

        return dataclasses.replace(model, apply_fn=apply_fn, train_apply=train_apply)
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        inner, params = model
        if not _selected(params, where_):
            paths = [leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:8]
            raise ValueError("where selects no leaf of the foreign model's params (the default selects leaves "
                             f"named 'kernel'; paths: {paths}); pass where=lambda path, leaf: ...")

        def foreign_apply(params, x):
            return inner(quantize_params(params, fn, where=where_), x)

        return foreign_apply, params
    raise TypeError("model must be a jaxrob.models.Model or a (apply_fn, params) tuple, got "
                    f"{type(model).__name__}")


class LayerSize(NamedTuple):
    """Storage of one leaf: ``num_params`` scalars at ``bits`` bits each (``total_bits``)."""

    num_params: int
    bits: int
    total_bits: int


class SizeReport(NamedTuple):
    """Storage of a parameter pytree.

    Attributes:
      total_bits: quantized leaves at their bits, all others at ``float_bits``.
      float_bits_total: the same pytree entirely at ``float_bits`` (32: float32).
      num_params: number of scalars.
      layers: ``{leaf path: LayerSize}`` for every leaf, in tree order.
    """

    total_bits: int
    float_bits_total: int
    num_params: int
    layers: dict[str, LayerSize]

    @property
    def compression(self) -> float:
        """``float_bits_total / total_bits``."""
        return self.float_bits_total / max(self.total_bits, 1)

    @property
    def megabytes(self) -> float:
        """``total_bits / 8 / 2**20``."""
        return self.total_bits / 8 / 2 ** 20

    def table(self) -> str:
        """A markdown table: one row per leaf and a total row."""
        rows = ["| leaf | params | bits | total bits |", "|---|---|---|---|"]
        rows += [f"| {k} | {v.num_params:,} | {v.bits} | {v.total_bits:,} |" for k, v in self.layers.items()]
        rows.append(f"| **total** | {self.num_params:,} | - | {self.total_bits:,} "
                    f"({self.compression:.2f}x smaller than float) |")
        return "\n".join(rows)


def size_in_bits(params: PyTree, bits: int | Mapping[str, int], *, where: Where | None = None,
                 float_bits: int = 32) -> SizeReport:
    """Storage of ``params`` when the ``where`` leaves are stored at ``bits`` and the rest in float.

    Per-channel scales and zero points are not counted (one float per output
    channel: a small overhead -- e.g. 1.4 % of a 3x3x64x64 conv at 4 bits).

    Args:
      params: any pytree of arrays (or of ``jax.ShapeDtypeStruct``).
      bits: one bit width for every quantized leaf, or a mapping from a leaf's
        path (``"conv1/kernel"``) or its layer's path (``"conv1"``) to bits; a
        mapping must cover every quantized leaf. Each in 1..32.
      where: the quantized leaves (default: leaves named ``kernel``).
      float_bits: bits of an unquantized scalar (default 32).

    Returns:
      A :class:`SizeReport` (``.total_bits``, ``.compression``, ``.layers``, ``.table()``).

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"fc": {"kernel": jnp.zeros((100, 10)), "bias": jnp.zeros(10)}}
      >>> r = size_in_bits(p, 4)
      >>> r.total_bits, r.float_bits_total
      (4320, 32320)
    """
    where_ = _check_where(where)
    float_bits = check_bits(float_bits, name="float_bits", max_bits=64)
    if isinstance(bits, Mapping):
        bits_map = {str(k): check_bits(v, name=f"bits[{k!r}]", max_bits=32) for k, v in bits.items()}
    else:
        bits_map = None
        bits = check_bits(bits, max_bits=32)
    layers: dict[str, LayerSize] = {}
    missing = []
    for p, leaf in jax.tree_util.tree_leaves_with_path(params):
        path = leaf_path(p)
        n = int(np.prod(np.shape(leaf)))
        b = float_bits
        if where_(path, leaf):
            if bits_map is None:
                b = bits
            elif path in bits_map:
                b = bits_map[path]
            elif path.rsplit("/", 1)[0] in bits_map:
                b = bits_map[path.rsplit("/", 1)[0]]
            else:
                missing.append(path)
        layers[path] = LayerSize(n, b, n * b)
    if missing:
        raise ValueError(f"bits mapping has no entry for the quantized leaves {missing}; give each leaf path or "
                         f"its layer path (known keys: {sorted(bits_map)})")
    total = sum(v.total_bits for v in layers.values())
    n_all = sum(v.num_params for v in layers.values())
    return SizeReport(total_bits=total, float_bits_total=n_all * float_bits, num_params=n_all, layers=layers)
