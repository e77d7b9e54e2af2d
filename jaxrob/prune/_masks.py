"""Pruning masks as pytrees: the convention every pruner in :mod:`jaxrob.prune` shares.

**Convention.** A *mask* for ``params`` is a pytree with exactly the structure of
``params`` whose every leaf is a ``bool`` array of the same shape as the
corresponding parameter: ``True`` keeps a weight, ``False`` prunes it. There are no
``None`` leaves: parameters that are not pruned (biases, batch-norm scales, layers
that ``where`` excludes) get an all-``True`` mask (:func:`dense_masks`). Masks are
therefore ordinary pytrees that ``jax.tree.map`` over together with ``params``, go
through ``jit``/``vmap``, checkpoint, and can be combined with ``&`` leaf-wise
(:func:`combine_masks`). A float 0/1 array is accepted wherever a mask is read
(``apply_masks``, ``sparsity``) and is treated as ``mask != 0``.

**Which leaves are prunable.** A ``where`` predicate ``where(name, leaf) -> bool``
receives the leaf's slash-joined path name (e.g. ``"layer1/0/conv1/kernel"``; the
same names :class:`SparsityReport` prints) and the array. The default,
:func:`default_where`, selects every leaf whose last path key is ``"kernel"``: the
dense and convolution weights of Flax (and therefore of every
:mod:`jaxrob.models` model), leaving biases and batch-norm parameters dense.

The pieces:

* :func:`apply_masks` -- ``params -> params`` with pruned weights set to zero
  (``jnp.where``, so the gradient of a pruned weight is exactly zero);
* :func:`sparsity` -- a :class:`SparsityReport` with per-layer and total sparsity
  of a params tree (counts exact zeros) or of a mask tree (counts ``False``);
* :func:`masked_model` -- a :class:`jaxrob.models.Model` whose ``apply_fn`` and
  ``train_apply`` apply fixed masks first, so :func:`jaxrob.train.fit` fine-tunes a
  pruned model and pruned weights receive zero gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob.quant._tree import is_kernel, leaf_path

PyTree = Any
Where = Callable[[str, Any], bool]


# One path naming and one default weight predicate for quantization and pruning alike.
path_name = leaf_path  # ``"layer1/0/conv1/kernel"`` from a ``jax.tree_util`` key path
default_where = is_kernel  # leaves whose last path key is ``"kernel"`` (dense and conv weights)


def _check_where(where: Where | None) -> Where:
    if where is None:
        return default_where
    if not callable(where):
        raise TypeError("where must be None (prune every leaf named 'kernel') or a callable "
                        f"(name: str, leaf) -> bool, got {type(where).__name__}")
    return where


def prunable(params: PyTree, *, where: Where | None = None) -> PyTree:
    """A pytree of Python bools with the structure of ``params``: which leaves ``where`` selects.

    Args:
      params: a pytree of arrays.
      where: ``(name, leaf) -> bool``; default :func:`default_where`.

    Returns:
      A pytree of ``bool`` (Python) with the structure of ``params``.
    """
    where = _check_where(where)
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(where(path_name(p), x)), params)


def named_leaves(tree: PyTree, *, where: Where | None = None) -> list[tuple[str, Any]]:
    """``[(name, leaf), ...]`` for the leaves of ``tree`` that ``where`` selects, in tree order."""
    where = _check_where(where)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_name(p), x) for p, x in flat if where(path_name(p), x)]


def dense_masks(params: PyTree) -> PyTree:
    """All-``True`` masks (nothing pruned) with the structure and shapes of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> m = dense_masks({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
      >>> m["w"].dtype, m["w"].shape, bool(m["b"].all())
      (dtype('bool'), (2, 3), True)
    """
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)


def _as_bool(m: Any) -> jax.Array:
    m = jnp.asarray(m)
    return m if m.dtype == jnp.bool_ else m != 0


def check_masks(params: PyTree, masks: PyTree) -> None:
    """Raises if ``masks`` does not have the structure and leaf shapes of ``params``.

    Raises:
      ValueError: different tree structure, or a mask leaf whose shape differs
        from its parameter's.
      TypeError: a mask leaf that is not a bool or numeric array.
    """
    ps, ms = jax.tree.structure(params), jax.tree.structure(masks)
    if ps != ms:
        raise ValueError("masks must have exactly the tree structure of params (one bool array per "
                         f"parameter, all-True for unpruned ones: see dense_masks); got\n  params: {ps}\n"
                         f"  masks:  {ms}")
    for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(masks)):
        if not hasattr(m, "shape") or not hasattr(m, "dtype"):
            raise TypeError(f"mask leaf {path_name(path)!r} must be an array, got {type(m).__name__}")
        if tuple(m.shape) != tuple(np.shape(p)):
            raise ValueError(f"mask leaf {path_name(path)!r} has shape {tuple(m.shape)} but its parameter has "
                             f"shape {tuple(np.shape(p))}; masks must match parameter shapes exactly")


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with every pruned weight (mask ``False``) set to exactly zero.

    Implemented with ``jnp.where``, so under ``jax.grad`` the gradient with
    respect to a pruned weight is exactly zero and kept weights get the full
    gradient; works under ``jit`` and ``vmap``.

    Args:
      params: pytree of arrays.
      masks: pytree of the same structure, bool (or 0/1) arrays of the same shapes.

    Returns:
      The masked parameters, same structure, shapes and dtypes as ``params``.

    Raises:
      ValueError: ``masks`` does not match ``params`` (structure or shapes).

    Example:
      >>> import jax.numpy as jnp
      >>> apply_masks({"w": jnp.array([1., -2., 3.])}, {"w": jnp.array([True, False, True])})["w"].tolist()
      [1.0, 0.0, 3.0]
    """
    check_masks(params, masks)
    return jax.tree.map(lambda p, m: jnp.where(_as_bool(m), p, jnp.zeros((), jnp.asarray(p).dtype)), params, masks)


def combine_masks(*masks: PyTree) -> PyTree:
    """The leaf-wise AND of several masks of the same structure (a weight survives only if kept by all)."""
    if not masks:
        raise ValueError("combine_masks needs at least one mask tree")
    return jax.tree.map(lambda *ms: jnp.logical_and.reduce(jnp.stack([_as_bool(m) for m in ms])), *masks)


class LayerSparsity(NamedTuple):
    """Sparsity of one leaf.

    Attributes:
      name: slash-joined path name.
      shape: the leaf's shape.
      size: number of entries.
      zeros: number of pruned entries (mask ``False`` / weight exactly 0).
    """

    name: str
    shape: tuple[int, ...]
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of pruned entries, in ``[0, 1]``."""
        return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-layer and total sparsity of the prunable leaves of a params or mask tree.

    Attributes:
      layers: one :class:`LayerSparsity` per selected leaf, in tree order.
    """

    layers: tuple[LayerSparsity, ...]

    @property
    def size(self) -> int:
        """Total number of entries in the selected leaves."""
        return sum(layer.size for layer in self.layers)

    @property
    def zeros(self) -> int:
        """Total number of pruned entries."""
        return sum(layer.zeros for layer in self.layers)

    @property
    def total(self) -> float:
        """Total sparsity: pruned entries / entries over all selected leaves."""
        return self.zeros / self.size if self.size else 0.0

    @property
    def per_layer(self) -> dict[str, float]:
        """``{name: sparsity}``."""
        return {layer.name: layer.sparsity for layer in self.layers}

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: ``{"total", "zeros", "size", "layers": {name: {...}}}``."""
        return {"total": self.total, "zeros": self.zeros, "size": self.size,
                "layers": {l.name: {"shape": list(l.shape), "size": l.size, "zeros": l.zeros,
                                    "sparsity": l.sparsity} for l in self.layers}}

    def table(self) -> str:
        """A Markdown table: one row per layer and a total row."""
        rows = ["| layer | shape | size | pruned | sparsity |", "|---|---|---:|---:|---:|"]
        for l in self.layers:
            rows.append(f"| {l.name} | {'x'.join(map(str, l.shape))} | {l.size} | {l.zeros} | "
                        f"{100 * l.sparsity:.2f}% |")
        rows.append(f"| **total** | | {self.size} | {self.zeros} | {100 * self.total:.2f}% |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def sparsity(tree: PyTree, *, where: Where | None = None) -> SparsityReport:
    """Per-layer and total sparsity of a params tree or a mask tree.

    For a leaf of dtype ``bool`` (a mask) the pruned entries are the ``False``
    ones; for a numeric leaf (weights, or a 0/1 float mask) they are the exact
    zeros. Only leaves selected by ``where`` are reported (default: the
    ``kernel`` leaves). Runs eagerly (returns Python numbers); not for use
    under ``jit``.

    Args:
      tree: params or masks (pytree of arrays).
      where: ``(name, leaf) -> bool``; default :func:`default_where`. Use
        ``lambda name, x: True`` to count every leaf.

    Returns:
      A :class:`SparsityReport`; ``str(report)`` is a Markdown table.

    Example:
      >>> import jax.numpy as jnp
      >>> rep = sparsity({"a": {"kernel": jnp.array([0., 1., 0., 2.])}, "b": {"bias": jnp.zeros(3)}})
      >>> rep.total, rep.per_layer
      (0.5, {'a/kernel': 0.5})
    """
    layers = []
    for name, x in named_leaves(tree, where=where):
        a = np.asarray(jax.device_get(x))
        zeros = int(np.size(a) - np.count_nonzero(a))
        layers.append(LayerSparsity(name=name, shape=tuple(a.shape), size=int(a.size), zeros=zeros))
    return SparsityReport(layers=tuple(layers))


def masked_model(model: Any, masks: PyTree) -> Any:
    """The same model with fixed pruning masks applied to its parameters in every forward pass.

    The returned :class:`~jaxrob.models.Model` has ``apply_fn(variables, x) =
    model.apply_fn({**variables, "params": apply_masks(variables["params"],
    masks)}, x)`` and likewise ``train_apply``; its ``variables`` are the
    original ones with the masks applied (so the stored weights are already
    sparse). Training it with :func:`jaxrob.train.fit` fine-tunes the kept
    weights only: the gradient of every pruned weight is exactly zero (with a
    plain gradient optimizer pruned weights stay zero; weight decay of a zero
    weight is zero too).

    The masks are closure constants: one compile per mask set. For masks that
    change during training (gradual pruning) use
    :func:`jaxrob.prune.gradual_pruning` instead.

    A foreign model ``(apply_fn, params)`` is accepted too and returned as
    ``(masked_apply_fn, masked_params)``.

    Args:
      model: a :class:`jaxrob.models.Model` or ``(apply_fn, params)``.
      masks: masks for ``model.params`` (see the module docstring).

    Returns:
      A :class:`jaxrob.models.Model` (``name`` suffixed ``"+masked"``), or a tuple
      for a foreign model.

    Raises:
      ValueError: ``masks`` does not match the model's params.
      TypeError: ``model`` is neither a ``Model`` nor ``(apply_fn, params)``.

    Example:
      >>> import jax
      >>> from jaxrob import models
      >>> net = models.create("mlp", hidden_sizes=(8,), key=jax.random.key(0))
      >>> masks = jax.tree.map(lambda p: jax.numpy.abs(p) > 0.05, net.params)
      >>> pruned = masked_model(net, masks)
      >>> pruned.apply_fn(pruned.variables, jax.numpy.zeros((1, 28, 28, 1))).shape
      (1, 10)
    """
    masks = jax.tree.map(_as_bool, masks)
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        apply_fn, params = model
        check_masks(params, masks)

        def foreign_apply(p, x):
            return apply_fn(apply_masks(p, masks), x)

        return foreign_apply, apply_masks(params, masks)
    if not all(hasattr(model, a) for a in ("apply_fn", "train_apply", "variables")):
        raise TypeError("model must be a jaxrob.models.Model or a tuple (apply_fn, params); "
                        f"got {type(model).__name__}")
    check_masks(model.params, masks)
    base_apply, base_train = model.apply_fn, model.train_apply

    def _mask_vars(variables):
        return {**variables, "params": apply_masks(variables["params"], masks)}

    def apply_fn(variables, x):
        return base_apply(_mask_vars(variables), x)

    def train_apply(variables, x, *, key=None):
        return base_train(_mask_vars(variables), x, key=key)

    return dataclasses.replace(model, apply_fn=apply_fn, train_apply=train_apply,
                               variables=_mask_vars(model.variables), name=f"{model.name}+masked")
