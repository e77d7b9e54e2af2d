"""The model contract: a pure ``apply_fn`` over a pytree, built from a Flax NNX module.

Every algorithm in jaxrob sees a model only through

    logits = apply_fn(variables, x)                      # eval mode, pure
    logits, new_batch_stats = train_apply(variables, x, key=key)   # train mode

where ``variables = {"params": ..., "batch_stats": ...}`` is a nested dict of
arrays (``batch_stats`` is ``{}`` for models without batch norm).  The dicts are
plain (``nnx.State.to_pure_dict``), so they checkpoint, shard, and pass through
pytree transforms (quantizers, pruning masks) without knowing about NNX.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
TrainApplyFn = Callable[..., tuple[jax.Array, PyTree]]


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as pure functions plus its initial variables.

    Attributes:
      apply_fn: ``apply_fn(variables, x) -> logits``; eval mode (batch norm uses
        running statistics), pure, and safe under ``jit``/``vmap``/``grad``.
        ``x`` is NHWC float in [0, 1]; normalisation happens inside the model.
      train_apply: ``train_apply(variables, x, *, key) -> (logits, batch_stats)``;
        train mode (batch statistics, dropout drawn from ``key``); returns the
        updated batch-norm statistics.
      variables: ``{"params": ..., "batch_stats": ...}``, plain nested dicts.
      name: registry name.
      input_shape: per-example input shape, e.g. ``(28, 28, 1)``.
      num_classes: number of output logits.
    """

    apply_fn: ApplyFn
    train_apply: TrainApplyFn
    variables: PyTree
    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def params(self) -> PyTree:
        """The trainable parameters, ``variables["params"]``."""
        return self.variables["params"]

    def num_params(self) -> int:
        """Number of trainable scalars (batch-norm statistics excluded)."""
        return count_params(self.variables["params"])


def count_params(tree: PyTree) -> int:
    """Number of scalars in a pytree."""
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def nnx_merger(module: nnx.Module, *, name: str) -> tuple[Callable[[PyTree], nnx.Module], PyTree]:
    """Splits ``module`` into a pure ``merge(variables) -> module`` function and its ``variables``.

    ``nnx.Param`` leaves become ``variables["params"]`` and ``nnx.BatchStat`` leaves
    (and subclasses) ``variables["batch_stats"]``; any other mutable state is rejected.
    ``merge`` rebuilds the module from variables of the same structure (at trace time
    it costs nothing per step).  :func:`from_nnx` is built on it; models that need
    extra call arguments (e.g. spiking networks' ``timesteps``) use it directly.
    """
    graphdef, params, batch_stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            f"model {name!r} has state other than nnx.Param and nnx.BatchStat "
            f"({sorted(set(type(v).__name__ for v in jax.tree.leaves(rest, is_leaf=lambda v: isinstance(v, nnx.Variable))))}); "
            "keep RNG streams out of the module and take a `key` argument in __call__ instead")
    # Abstract templates: merging happens at trace time only, so this costs nothing per step.
    params_tpl = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    stats_tpl = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch_stats)

    def _merge(variables: PyTree) -> nnx.Module:
        p = jax.tree.map(lambda a: a, params_tpl)
        nnx.replace_by_pure_dict(p, variables["params"])
        s = jax.tree.map(lambda a: a, stats_tpl)
        nnx.replace_by_pure_dict(s, variables.get("batch_stats", {}))
        return nnx.merge(graphdef, p, s)

    variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
    return _merge, variables


def from_nnx(module: nnx.Module, *, name: str, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """Turns an NNX module into the pure-function :class:`Model` contract.

    The module's ``__call__`` must accept ``(x, *, train: bool, key: jax.Array | None)``.
    ``nnx.Param`` leaves become ``variables["params"]`` and ``nnx.BatchStat`` leaves
    ``variables["batch_stats"]``; a module with any other mutable state is rejected
    because it could not be updated purely.
    """
    _merge, variables = nnx_merger(module, name=name)

    def apply_fn(variables: PyTree, x: jax.Array) -> jax.Array:
        return _merge(variables)(x, train=False, key=None)

    def train_apply(variables: PyTree, x: jax.Array, *, key: jax.Array | None = None):
        m = _merge(variables)
        logits = m(x, train=True, key=key)
        _, new_stats = nnx.split(m, nnx.BatchStat, ...)[:2]
        return logits, nnx.to_pure_dict(new_stats)

    return Model(apply_fn=apply_fn, train_apply=train_apply, variables=variables, name=name,
                 input_shape=tuple(input_shape), num_classes=int(num_classes))
