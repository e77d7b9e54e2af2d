"""The training state and the uniform view of a model that losses see."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrob import _validate

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
TrainApplyFn = Callable[..., tuple[jax.Array, PyTree]]


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays only.

    Attributes:
      step: int32 scalar, the number of optimizer steps taken so far (it is also
        the position in the data stream: the next batch is batch ``step``).
      params: trainable parameters (``variables["params"]`` of a jaxrob model,
        or whatever pytree a foreign ``apply_fn`` takes).
      batch_stats: batch-norm running statistics (``{}`` if the model has none).
      opt_state: the optax optimizer state.
      rng: typed PRNG key; the key of step ``s`` is ``jax.random.fold_in(rng, s)``,
        so a resumed run draws exactly the keys an uninterrupted run would.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array

    @classmethod
    def create(cls, params: PyTree, optimizer: optax.GradientTransformation, *, key: jax.Array,
               batch_stats: PyTree | None = None) -> "TrainState":
        """A fresh state at step 0.

        Args:
          params: initial parameters.
          optimizer: the optax transformation whose state is initialised here.
          key: typed PRNG key, stored as the run's base key.
          batch_stats: initial batch-norm statistics; ``None`` means ``{}``.

        Returns:
          A :class:`TrainState` with ``step == 0`` holding copies of ``params``,
          ``batch_stats`` and ``key`` (a donating train step never invalidates
          the caller's arrays).
        """
        key = _validate.prng_key("key", key)
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
        batch_stats = {} if batch_stats is None else batch_stats

        # One compiled call: fresh buffers (so that donating the state to a train step never deletes
        # the caller's arrays) and the optimizer state (eager init would compile once per leaf shape).
        def init(params, batch_stats, key):
            return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=optimizer.init(params), rng=key)

        return jax.jit(init)(params, batch_stats, key)

    def variables(self) -> PyTree:
        """``{"params": ..., "batch_stats": ...}``, the argument of a jaxrob model's ``apply_fn``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


class ModelFns(NamedTuple):
    """The two ways a loss runs the model, for jaxrob and foreign models alike.

    A jaxrob :class:`~jaxrob.models.Model` has ``apply_fn(variables, x)`` over
    ``variables = {"params", "batch_stats"}`` and a ``train_apply``; a foreign
    model is a pure ``apply_fn(params, x)`` with ``train_apply=None``, no batch
    statistics, and the same function in both modes.
    """

    apply_fn: ApplyFn
    train_apply: TrainApplyFn | None

    def eval_variables(self, params: PyTree, batch_stats: PyTree) -> PyTree:
        """The first argument of ``apply_fn`` (what an attack differentiates through)."""
        if self.train_apply is None:
            return params
        return {"params": params, "batch_stats": batch_stats}

    def eval_logits(self, params: PyTree, batch_stats: PyTree, x: jax.Array) -> jax.Array:
        """Eval-mode logits (batch norm uses running statistics), shape ``(B, K)``."""
        return self.apply_fn(self.eval_variables(params, batch_stats), x)

    def train_logits(self, params: PyTree, batch_stats: PyTree, x: jax.Array, *,
                     key: jax.Array) -> tuple[jax.Array, PyTree]:
        """Train-mode logits ``(B, K)`` and the updated batch statistics."""
        if self.train_apply is None:
            return self.apply_fn(params, x), batch_stats
        return self.train_apply({"params": params, "batch_stats": batch_stats}, x, key=key)


def model_fns(apply_fn: ApplyFn, train_apply: TrainApplyFn | None) -> ModelFns:
    """Validates and bundles ``apply_fn`` / ``train_apply`` into a :class:`ModelFns`."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (variables, x) -> logits, got {type(apply_fn).__name__}")
    if train_apply is not None and not callable(train_apply):
        raise TypeError("train_apply must be None (foreign model) or callable "
                        f"(variables, x, *, key) -> (logits, batch_stats), got {type(train_apply).__name__}")
    return ModelFns(apply_fn, train_apply)


def unpack_model(model: Any) -> tuple[ModelFns, PyTree, PyTree]:
    """``Model`` or ``(apply_fn, params)`` -> ``(ModelFns, params, batch_stats)``."""
    if all(hasattr(model, a) for a in ("apply_fn", "train_apply", "variables")):
        variables = model.variables
        if not isinstance(variables, dict) or "params" not in variables:
            raise ValueError("model.variables must be a dict with a 'params' entry, got "
                             f"{type(variables).__name__}")
        return (model_fns(model.apply_fn, model.train_apply), variables["params"],
                variables.get("batch_stats", {}))
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        return model_fns(model[0], None), model[1], {}
    raise TypeError("model must be a jaxrob.models.Model (apply_fn, train_apply, variables) or a tuple "
                    f"(apply_fn, params) for a foreign model; got {type(model).__name__}")
