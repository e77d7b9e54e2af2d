"""BinaryRelax: training on relaxed quantized weights, then exact quantization.

BinaryRelax (Yin, Zhang, Lyu, Osher, Qi, Xin) trains a network whose weights
must end up in a quantized set ``Q`` (binary ``{-a, +a}``, ternary, k-bit) by
running the forward and backward pass at the *relaxed* weights

    u = (eta * proj_Q(w) + w) / (1 + eta)                    (phase I)

and updating the float weights ``w`` with the gradient taken at ``u``
(``w <- w - lr * grad f(u)``: the Jacobian of the relaxation is not applied, a
straight-through rule). ``eta`` grows geometrically, pulling ``u`` towards
``Q``; in phase II ``u = proj_Q(w)`` exactly (BinaryConnect-style training),
and the model that is kept is ``proj_Q(w)``.

Design in jaxrob (pytree transforms, :mod:`jaxrob.quant`):

* :func:`binary_relax` is the per-tensor transform (``eta = inf`` is phase II);
  :func:`binary_relax_params` applies it to every kernel of a params pytree.
  Both are pure and usable with any ``apply_fn``.
* :func:`binary_relax_model` wraps a :class:`~jaxrob.models.Model` so that
  ``jaxrob.train.fit`` runs the whole schedule in **one** compiled train step:
  the step counter lives in ``variables["batch_stats"]`` (which ``fit``
  threads through every step and checkpoints, and which no optimizer
  touches); ``train_apply`` reads it, uses ``eta(step)`` and returns it
  incremented. ``eta`` is therefore a traced value, not a Python constant, so
  the schedule never recompiles and resuming from a checkpoint resumes the
  schedule. :func:`binary_relax_finalize` returns the deployable model with
  ``proj_Q(w)`` baked into its parameters.

The schedule (:func:`eta_schedule`) follows the authors' public training
script (github.com/penhunt/binaryrelax, ``train_eta``): ``eta`` starts at
``eta0 = 1`` and is multiplied by ``rate = 1.05`` at the start of every epoch
(so epoch ``e`` uses ``eta0 * rate**(e + 1)``) for ``relax_epochs`` epochs,
after which phase II trains on ``proj_Q(w)`` exactly.

Projections (``proj_Q(w) = argmin_{q in Q} ||w - q||``, free per-tensor scale):
:func:`project_binary` (``mean|w| * sign(w)``, the exact minimiser),
:func:`project_ternary` (exact minimiser over ``a * {-1, 0, 1}^n`` by sorting
``|w|``, or the TWN approximation ``threshold = 0.7 mean|w|``). Any callable
``w -> Q(w)`` may be passed instead (e.g. a k-bit uniform quantizer); only its
value is used.

References:
  Yin, Zhang, Lyu, Osher, Qi, Xin, "BinaryRelax: A Relaxation Approach for
  Training Deep Neural Networks with Quantized Weights", SIAM J. Imaging
  Sciences 2018, arXiv:1801.06313.
  Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711 (TWN threshold).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._ste import straight_through
from jaxrob.quant._tree import Where, _check_where, leaf_path

PyTree = Any
Quantizer = Callable[[jax.Array], jax.Array]

STEP_KEY = "quant_schedule_step"
"""Name of the step counter that scheduled models keep in ``variables["batch_stats"]``."""


# ----------------------------------------------------------------------------------------------------------------
# Projections onto quantized sets (values only; no gradient rule).


def project_binary(w: ArrayLike) -> jax.Array:
    """Euclidean projection onto ``{-a, +a}^n`` with a free scale ``a >= 0``: ``mean|w| * sign(w)``.

    ``argmin_{a, b in {-1,1}^n} ||w - a b||^2`` is ``b = sign(w)``, ``a = mean|w|``
    (Rastegari et al., XNOR-Net). Zeros map to ``+a``.

    Args:
      w: weights, any shape.

    Returns:
      The projection, same shape and dtype (no gradient: wrap it in an STE to train).

    Example:
      >>> import jax.numpy as jnp
      >>> project_binary(jnp.array([0.5, -1.5, 1.0])).tolist()
      [1.0, -1.0, 1.0]
    """
    w = jnp.asarray(w)
    a = jnp.mean(jnp.abs(w))
    return jnp.where(w >= 0, a, -a).astype(w.dtype)


def project_ternary(w: ArrayLike, *, exact: bool = True) -> jax.Array:
    """Projection onto ``a * {-1, 0, 1}^n`` with a free scale ``a >= 0``.

    ``exact=True``: the exact minimiser of ``||w - a t||^2``. For a support of
    the ``k`` largest ``|w_i|`` the best scale is their mean and the error is
    ``||w||^2 - (sum of top-k |w|)^2 / k``, so the best ``k`` maximises
    ``S_k^2 / k`` (found by one sort). ``exact=False``: the TWN approximation
    (threshold ``0.7 * mean|w|``, scale = mean of the kept ``|w|``).

    Args:
      w: weights, any shape.
      exact: exact projection (sort) or the TWN rule.

    Returns:
      The projection, same shape and dtype.

    References:
      Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711.

    Example:
      >>> import jax.numpy as jnp
      >>> project_ternary(jnp.array([2.0, -2.0, 0.1, 1.9])).tolist()
      [1.9666666..., -1.9666666..., 0.0, 1.9666666...]
    """
    w = jnp.asarray(w)
    a = jnp.abs(w).reshape(-1)
    if exact:
        s = jnp.sort(a)[::-1]
        csum = jnp.cumsum(s)
        k = jnp.arange(1, s.size + 1, dtype=w.dtype)
        best = jnp.argmax(csum ** 2 / k)
        threshold = s[best]
        scale = csum[best] / (best + 1).astype(w.dtype)
        keep = jnp.abs(w) >= threshold
        # ties at the threshold are all kept; recompute the scale over exactly the kept set
        scale = jnp.sum(jnp.where(keep, jnp.abs(w), 0)) / jnp.maximum(jnp.sum(keep), 1)
        del csum
    else:
        threshold = 0.7 * jnp.mean(a)
        keep = jnp.abs(w) > threshold
        scale = jnp.sum(jnp.where(keep, jnp.abs(w), 0)) / jnp.maximum(jnp.sum(keep), 1)
    return jnp.where(keep, jnp.sign(w) * scale, 0).astype(w.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The relaxation and its schedule.


def _check_quantizer(quantizer: Any) -> Quantizer:
    if not callable(quantizer):
        raise TypeError(f"quantizer must be a callable w -> Q(w) (e.g. project_binary), got {type(quantizer).__name__}")
    return quantizer


def binary_relax(w: jax.Array, *, eta: ArrayLike, quantizer: Quantizer = project_binary) -> jax.Array:
    """The relaxed weights ``(eta * Q(w) + w) / (1 + eta)`` with BinaryRelax's gradient rule.

    Forward: the relaxed value (``eta = inf`` gives ``Q(w)`` exactly, phase II).
    Backward: the identity in ``w`` (the gradient at the relaxed point is
    applied to ``w``, as in the paper's Algorithm 1 and the authors' code).

    Args:
      w: float weights, any shape.
      eta: relaxation weight, a scalar ``>= 0`` (may be traced); ``0`` is ``w``
        itself, ``inf`` is ``Q(w)``.
      quantizer: ``w -> Q(w)``, the projection onto the quantized set; only its
        value is used.

    Returns:
      Relaxed weights, same shape and dtype as ``w``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([0.5, -1.5])
      >>> binary_relax(w, eta=1.0).tolist(), binary_relax(w, eta=jnp.inf).tolist()
      ([0.75, -1.25], [1.0, -1.0])
      >>> jax.grad(lambda w: binary_relax(w, eta=3.0).sum())(w).tolist()
      [1.0, 1.0]
    """
    _check_quantizer(quantizer)
    if _validate.is_concrete(eta) and jnp.ndim(eta) == 0:
        e = float(eta)
        if not e >= 0:
            raise ValueError(f"eta must be >= 0 (inf for exact quantization), got {e!r}")
    w = jnp.asarray(w)
    q = jax.lax.stop_gradient(quantizer(w)).astype(w.dtype)
    eta = jnp.asarray(eta, w.dtype)
    wc = jax.lax.stop_gradient(w)
    finite = jnp.where(jnp.isinf(eta), 0, eta)  # keeps inf out of the arithmetic (no inf/inf NaN)
    relaxed = jnp.where(jnp.isinf(eta), q, (finite * q + wc) / (1 + finite))
    return straight_through(w, relaxed)


def map_weights(params: PyTree, fn: Callable[[str, jax.Array], jax.Array], *, where: Where | None = None) -> PyTree:
    """Applies ``fn(path, leaf)`` to the leaves selected by ``where(path, leaf)`` (paths as ``"hidden/0/kernel"``).

    Like :func:`jaxrob.quant._tree.quantize_params` (same ``where``, default: leaves named ``kernel``) but
    ``fn`` also receives the leaf's path, for per-tensor learned parameters such as DBQ's scales.
    """
    where = _check_where(where)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: fn(leaf_path(p), a) if where(leaf_path(p), a) else a, params)


def binary_relax_params(params: PyTree, *, eta: ArrayLike, quantizer: Quantizer = project_binary,
                        where: Where | None = None) -> PyTree:
    """:func:`binary_relax` applied to every selected weight of ``params`` (default: leaves named ``kernel``).

    Args:
      params: a params pytree.
      eta: relaxation weight (scalar, may be traced; ``inf`` = exact ``Q``).
      quantizer: per-tensor projection ``w -> Q(w)``.
      where: ``where(path, leaf) -> bool`` (``path`` like ``"hidden/0/kernel"``)
        selecting the weights; default: leaves named ``kernel``.

    Returns:
      The params pytree with the selected leaves relaxed.
    """
    _check_quantizer(quantizer)
    return map_weights(params, lambda _, w: binary_relax(w, eta=eta, quantizer=quantizer), where=where)


def eta_schedule(step: ArrayLike, *, steps_per_epoch: int, relax_epochs: int, eta0: float = 1.0,
                 rate: float = 1.05) -> jax.Array:
    """BinaryRelax's ``eta`` at optimizer step ``step``: ``eta0 * rate**(epoch + 1)``, then ``inf``.

    The authors' script multiplies ``eta`` by ``rate`` at the start of each
    epoch of phase I; from epoch ``relax_epochs`` on (phase II) the weights
    are exactly quantized, which we encode as ``eta = inf``.

    Args:
      step: optimizer step (int scalar, may be traced).
      steps_per_epoch: steps per epoch, ``>= 1``.
      relax_epochs: epochs of phase I, ``>= 0``.
      eta0: initial ``eta``, ``> 0`` (1 in the script).
      rate: growth per epoch, ``>= 1`` (1.05 in the script).

    Returns:
      float32 scalar.

    Example:
      >>> round(float(eta_schedule(0, steps_per_epoch=10, relax_epochs=2)), 4)
      1.05
      >>> float(eta_schedule(20, steps_per_epoch=10, relax_epochs=2))
      inf
    """
    steps_per_epoch = _validate.number("steps_per_epoch", steps_per_epoch, min=1, integer=True)
    relax_epochs = _validate.number("relax_epochs", relax_epochs, min=0, integer=True)
    eta0 = _validate.number("eta0", eta0, min=0, min_inclusive=False)
    rate = _validate.number("rate", rate, min=1)
    epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
    eta = eta0 * jnp.power(jnp.float32(rate), (epoch + 1).astype(jnp.float32))
    return jnp.where(epoch < relax_epochs, eta, jnp.inf).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Step-scheduled models: the counter rides in batch_stats so that fit compiles once.


def scheduled_model(model: Any, transform: Callable[..., PyTree], *,
                    forwards_per_step: int = 1, params: PyTree | None = None) -> Any:
    """A :class:`~jaxrob.models.Model` whose weights are ``transform(params, step, train)`` at step ``step``.

    ``step`` is a counter stored in ``variables["batch_stats"][STEP_KEY]``:
    ``train_apply`` uses it and returns it incremented by ``1 / forwards_per_step``
    (``forwards_per_step=2`` for losses such as TRADES that run two train-mode
    forward passes per step, chaining the statistics); ``apply_fn`` (eval mode,
    used by attacks and PGD-AT's inner maximisation) uses the same ``step``.

    Args:
      model: a jaxrob ``Model``.
      transform: ``transform(params, step, train) -> inner params`` (``step``
        float32; ``train`` a Python bool: True in ``train_apply``).
      forwards_per_step: train-mode forward passes per optimizer step.
      params: initial params of the wrapped model (default ``model.params``);
        may hold extra learnable leaves the transform consumes (e.g. DBQ scales).

    Returns:
      The wrapped ``Model`` (same name, shapes, classes).
    """
    from jaxrob.models import Model  # late import: jaxrob.models does not import quant

    if not isinstance(model, Model):
        raise TypeError(f"model must be a jaxrob.models.Model, got {type(model).__name__}")
    forwards_per_step = _validate.number("forwards_per_step", forwards_per_step, min=1, integer=True)
    inner_apply, inner_train = model.apply_fn, model.train_apply
    inc = 1.0 / forwards_per_step

    def split(variables):
        stats = dict(variables.get("batch_stats", {}))
        step = stats.pop(STEP_KEY, jnp.zeros((), jnp.float32))
        return stats, step

    def apply_fn(variables, x):
        stats, step = split(variables)
        return inner_apply({"params": transform(variables["params"], step, False), "batch_stats": stats}, x)

    def train_apply(variables, x, *, key=None):
        stats, step = split(variables)
        logits, new_stats = inner_train({"params": transform(variables["params"], step, True), "batch_stats": stats},
                                        x, key=key)
        return logits, {**dict(new_stats), STEP_KEY: step + inc}

    stats = dict(model.variables.get("batch_stats", {}))
    stats[STEP_KEY] = jnp.zeros((), jnp.float32)
    variables = {"params": model.params if params is None else params, "batch_stats": stats}
    return dataclasses.replace(model, apply_fn=apply_fn, train_apply=train_apply, variables=variables)


def schedule_step(variables: PyTree) -> int:
    """The step counter of a scheduled model's variables (``round(batch_stats[STEP_KEY])``)."""
    return int(round(float(variables["batch_stats"][STEP_KEY])))


def binary_relax_model(model: Any, *, steps_per_epoch: int, relax_epochs: int, eta0: float = 1.0,
                       rate: float = 1.05, quantizer: Quantizer = project_binary, where: Where | None = None,
                       forwards_per_step: int = 1) -> Any:
    """Wraps ``model`` for BinaryRelax training with ``jaxrob.train.fit`` (one compile for the whole schedule).

    At step ``s`` both ``train_apply`` and ``apply_fn`` run on
    ``binary_relax_params(params, eta=eta_schedule(s, ...))``: phase I for
    ``relax_epochs`` epochs, then phase II (exact ``Q``). Train for at least
    ``relax_epochs + 1`` epochs to end in phase II; take the deployable model
    from :func:`binary_relax_finalize`.

    Args:
      model: a jaxrob ``Model`` (e.g. a trained FP32 model to fine-tune).
      steps_per_epoch: optimizer steps per epoch of the ``fit`` that will run it.
      relax_epochs: epochs of phase I.
      eta0: initial ``eta`` (1 in the authors' script).
      rate: per-epoch growth of ``eta`` (1.05 in the authors' script).
      quantizer: projection ``w -> Q(w)`` (default binary).
      where: weight selection (default: ``kernel`` leaves).
      forwards_per_step: train-mode forward passes per step of the loss (1 for
        cross-entropy and PGD-AT, 2 for TRADES).

    Returns:
      The wrapped ``Model``; its step counter is ``variables["batch_stats"][STEP_KEY]``.

    Example:
      >>> import jax
      >>> from jaxrob import data, models, train
      >>> net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
      >>> ds = data.load("mnist10k", split="train")
      >>> br = binary_relax_model(net, steps_per_epoch=len(ds) // 200, relax_epochs=1)
      >>> state, _ = train.fit(br, ds, optimizer={"name": "adam", "learning_rate": 1e-3}, epochs=2,
      ...                      batch_size=200, key=jax.random.key(1), progress=False)
      >>> final = binary_relax_finalize(net, state.variables())
      >>> sorted(set(abs(float(v)) for v in final.params["head"]["kernel"].ravel())).__len__()
      1
    """
    _check_quantizer(quantizer)
    steps_per_epoch = _validate.number("steps_per_epoch", steps_per_epoch, min=1, integer=True)
    relax_epochs = _validate.number("relax_epochs", relax_epochs, min=0, integer=True)
    _validate.number("eta0", eta0, min=0, min_inclusive=False)
    _validate.number("rate", rate, min=1)

    def transform(params, step, train):
        del train  # the same relaxation in both modes (the authors evaluate the relaxed net in phase I)
        eta = eta_schedule(jnp.floor(step).astype(jnp.int32), steps_per_epoch=steps_per_epoch,
                           relax_epochs=relax_epochs, eta0=eta0, rate=rate)
        return binary_relax_params(params, eta=eta, quantizer=quantizer, where=where)

    return scheduled_model(model, transform, forwards_per_step=forwards_per_step)


def binary_relax_finalize(model: Any, variables: PyTree, *, quantizer: Quantizer = project_binary,
                          where: Where | None = None) -> Any:
    """The deployable model of a BinaryRelax run: ``model`` with ``Q(w)`` baked into its weights.

    Args:
      model: the *base* ``Model`` that was wrapped by :func:`binary_relax_model`.
      variables: the trained variables (``state.variables()`` from ``fit``).
      quantizer: the projection used in training.
      where: the weight selection used in training.

    Returns:
      ``model`` (its own ``apply_fn``) with the selected weights exactly
      ``Q(w)`` and the schedule counter removed from ``batch_stats``.
    """
    _check_quantizer(quantizer)
    stats = {k: v for k, v in dict(variables.get("batch_stats", {})).items() if k != STEP_KEY}
    params = map_weights(variables["params"], lambda _, w: quantizer(w).astype(w.dtype), where=where)
    return dataclasses.replace(model, variables={"params": params, "batch_stats": stats})
