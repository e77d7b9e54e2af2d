"""Training losses as small spec objects: clean cross-entropy, PGD-AT and TRADES.

A :class:`Loss` carries its name and hyperparameters (so a run's configuration
can be fingerprinted) and a pure function

    fn(model: ModelFns, params, batch_stats, x, y, key) -> (loss, (batch_stats, metrics))

that :func:`~jaxrob.train.make_train_step` differentiates with respect to
``params``.  Keys: every loss splits ``key`` into three, ``(forward, attack,
second_forward)``; the forward pass on the training inputs always draws its
dropout from the first, so losses that reduce to cross-entropy (PGD-AT with
``eps=0``, TRADES with ``beta=0``) give exactly the cross-entropy value.

Adversarial examples are generated with the model in **eval mode** (batch norm
uses running statistics, no dropout) at the current parameters, treated as
constants (Danskin's theorem: the outer gradient is taken at the inner
maximiser), and the loss is then computed with a **train-mode** forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxrob import _validate
from jaxrob.train._state import ModelFns

PyTree = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[ModelFns, PyTree, PyTree, jax.Array, jax.Array, jax.Array],
                  tuple[jax.Array, tuple[PyTree, Metrics]]]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A training objective: a name, its hyperparameters and a pure loss function.

    Attributes:
      name: short identifier, e.g. ``"trades"``.
      hparams: hyperparameters as ``(name, value)`` pairs (JSON-serialisable
        values); they enter the checkpoint fingerprint.
      fn: ``fn(model, params, batch_stats, x, y, key) -> (loss, (batch_stats,
        metrics))`` with ``model`` a :class:`~jaxrob.train.ModelFns`, ``x`` of
        shape ``(B, ...)``, ``y`` int32 ``(B,)``; ``loss`` is a scalar, ``metrics``
        a dict of scalars that contains at least ``"loss"`` and ``"accuracy"``.
    """

    name: str
    hparams: tuple[tuple[str, Any], ...]
    fn: LossFn = dataclasses.field(repr=False, compare=False)

    def __call__(self, model: ModelFns, params: PyTree, batch_stats: PyTree, x: jax.Array, y: jax.Array,
                 *, key: jax.Array) -> tuple[jax.Array, tuple[PyTree, Metrics]]:
        return self.fn(model, params, batch_stats, x, y, key)

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., **hparams}``, JSON-serialisable."""
        return {"name": self.name, **dict(self.hparams)}


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def _keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    k = jax.random.split(key, 3)
    return k[0], k[1], k[2]


def _ce(logits: jax.Array, y: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy, shape ``(B,)``."""
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)
    k = logits.shape[-1]
    target = optax.smooth_labels(jax.nn.one_hot(y, k, dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, target)


def _kl_to_target(logits_q: jax.Array, p: jax.Array) -> jax.Array:
    """Per-example ``KL(p || softmax(logits_q))`` for a constant target ``p`` (B, K) -> (B,).

    Written as a ``(logits, soft_targets)`` loss for PGD; zero entries of ``p``
    contribute 0.
    """
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q, axis=-1)


def _kl_logits(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Per-example ``KL(softmax(logits_p) || softmax(logits_q))`` (B, K) -> (B,).

    Computed from log-probabilities so that its gradient stays finite even where
    a probability underflows to zero.
    """
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def cross_entropy(*, label_smoothing: float = 0.0) -> Loss:
    """Standard training: mean softmax cross-entropy of a train-mode forward pass.

    Metrics: ``loss``, ``accuracy`` (on the clean training batch).

    Args:
      label_smoothing: in ``[0, 1)``; the target is ``(1 - a) * onehot + a / K``.

    Returns:
      A :class:`Loss`.

    Example:
      >>> from jaxrob.train import cross_entropy
      >>> loss = cross_entropy()
      >>> loss.config
      {'name': 'cross_entropy', 'label_smoothing': 0.0}
    """
    ls = float(_validate.number("label_smoothing", label_smoothing, min=0.0, max=1.0, max_inclusive=False))

    def fn(model, params, batch_stats, x, y, key):
        k_fwd, _, _ = _keys(key)
        logits, new_stats = model.train_logits(params, batch_stats, x, key=k_fwd)
        loss = jnp.mean(_ce(logits, y, ls))
        return loss, (new_stats, {"loss": loss, "accuracy": _accuracy(logits, y)})

    return Loss("cross_entropy", (("label_smoothing", ls),), fn)


def _attack_args(eps, steps, step_size, norm):
    eps = float(_validate.number("eps", eps, min=0.0))
    steps = _validate.number("steps", steps, min=1, integer=True)
    if step_size is not None:
        step_size = float(_validate.number("step_size", step_size, min=0.0, min_inclusive=False))
    _validate.choice("norm", norm, ("linf", "l2"))
    return eps, steps, step_size


def _pgd():
    from jaxrob.attacks import pgd  # imported late: jaxrob.attacks imports nothing from train
    return pgd


def pgd_at(eps: float, *, steps: int = 10, step_size: float | None = None, norm: str = "linf",
           init: str = "uniform", restarts: int = 1, randomized: bool = False) -> Loss:
    """PGD adversarial training: cross-entropy on PGD examples.

    Per batch: ``x_adv = pgd(f_eval, x, y)`` maximising cross-entropy inside the
    ``eps``-ball (random ``init`` start, ``steps`` steps, projection onto the ball
    and ``[0, 1]``) with the model in eval mode at the current parameters; then
    ``loss = mean CE(f_train(x_adv), y)``. Gradients do not flow through the
    attack. With ``eps = 0`` this is exactly :func:`cross_entropy`.

    Metrics: ``loss``, ``accuracy`` (on the adversarial training inputs).

    Args:
      eps: radius of the threat model, ``>= 0`` (e.g. ``8/255`` for CIFAR-10 Linf).
      steps: PGD iterations, ``>= 1`` (7 or 10 in the paper).
      step_size: PGD step; ``None`` uses :func:`jaxrob.attacks.pgd`'s default.
      norm: ``"linf"`` or ``"l2"``.
      init: PGD start, ``"uniform"`` (Madry et al.), ``"normal"`` or ``"zero"``.
      restarts: PGD restarts (the worst case is kept).
      randomized: the model is randomized (e.g. an EnResNet): its ``apply_fn``
        is called as ``apply_fn(variables, x, key=...)`` and PGD attacks it with
        ``randomized=True``, one noise draw per step (its key comes from the
        attack key), as in the EnResNet authors' PGD training. Only then is it
        part of ``hparams``.

    Returns:
      A :class:`Loss`.

    References:
      Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
      Resistant to Adversarial Attacks", ICLR 2018, arXiv 1706.06083.

    Example:
      >>> from jaxrob.train import pgd_at
      >>> loss = pgd_at(8 / 255, steps=7, step_size=2 / 255)
      >>> loss.name
      'pgd_at'
    """
    eps, steps, step_size = _attack_args(eps, steps, step_size, norm)
    _validate.choice("init", init, ("uniform", "normal", "zero"))
    restarts = _validate.number("restarts", restarts, min=1, integer=True)
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    pgd = _pgd()

    def fn(model, params, batch_stats, x, y, key):
        k_fwd, k_attack, _ = _keys(key)
        frozen = jax.lax.stop_gradient(model.eval_variables(params, batch_stats))
        x_adv = pgd(model.apply_fn, frozen, x, y, key=k_attack, eps=eps, steps=steps, step_size=step_size,
                    norm=norm, init=init, restarts=restarts, randomized=randomized)
        x_adv = jax.lax.stop_gradient(x_adv)
        logits, new_stats = model.train_logits(params, batch_stats, x_adv, key=k_fwd)
        loss = jnp.mean(_ce(logits, y))
        return loss, (new_stats, {"loss": loss, "accuracy": _accuracy(logits, y)})

    hp = (("eps", eps), ("steps", steps), ("step_size", step_size), ("norm", norm), ("init", init),
          ("restarts", restarts)) + ((("randomized", True),) if randomized else ())
    return Loss("pgd_at", hp, fn)


def trades(eps: float, *, steps: int = 10, step_size: float | None = None, beta: float = 6.0,
           norm: str = "linf", init_scale: float = 0.001) -> Loss:
    """TRADES: clean cross-entropy plus ``beta`` times a robustness KL term.

    ``loss = mean CE(f(x), y) + beta * mean KL(softmax f(x) || softmax f(x_adv))``,
    with both ``f`` train-mode forward passes (clean first, then adversarial; the
    batch-norm running statistics are updated by both, in that order) and
    gradients flowing through both terms, as in the authors' code. The inner
    maximisation runs PGD on ``KL(p_clean || softmax f(x'))`` in eval mode,
    starting from ``x + init_scale * N(0, 1)``, where ``p_clean`` is the eval-mode
    prediction on ``x`` (a constant). With ``beta = 0`` this is exactly
    :func:`cross_entropy`.

    Metrics: ``loss``, ``accuracy`` (clean), ``adv_accuracy``, ``natural_loss``,
    ``robust_loss`` (the mean KL).

    Args:
      eps: radius, ``>= 0`` (the paper uses ``0.031`` on CIFAR-10, ``0.3`` on MNIST).
      steps: PGD iterations for the inner maximisation, ``>= 1`` (10 / 40).
      step_size: PGD step (``0.007`` / ``0.01``); ``None`` uses
        :func:`jaxrob.attacks.pgd`'s default.
      beta: trade-off ``>= 0`` (1/lambda in the paper; 6.0 by default).
      norm: ``"linf"`` or ``"l2"``.
      init_scale: standard deviation of the Gaussian start, ``> 0``.

    Returns:
      A :class:`Loss`.

    References:
      Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled
      Trade-off between Robustness and Accuracy", ICML 2019, arXiv 1901.08573.

    Example:
      >>> from jaxrob.train import trades
      >>> loss = trades(0.031, steps=10, step_size=0.007, beta=6.0)
      >>> loss.config["beta"]
      6.0
    """
    eps, steps, step_size = _attack_args(eps, steps, step_size, norm)
    beta = float(_validate.number("beta", beta, min=0.0))
    init_scale = float(_validate.number("init_scale", init_scale, min=0.0, min_inclusive=False))
    pgd = _pgd()

    def fn(model, params, batch_stats, x, y, key):
        k_fwd, k_attack, k_adv = _keys(key)
        frozen = jax.lax.stop_gradient(model.eval_variables(params, batch_stats))
        p_clean = jax.nn.softmax(model.apply_fn(frozen, x), axis=-1)
        x_adv = pgd(model.apply_fn, frozen, x, p_clean, key=k_attack, eps=eps, steps=steps,
                    step_size=step_size, norm=norm, init="normal", init_scale=init_scale, loss=_kl_to_target)
        x_adv = jax.lax.stop_gradient(x_adv)
        logits, stats = model.train_logits(params, batch_stats, x, key=k_fwd)
        logits_adv, stats = model.train_logits(params, stats, x_adv, key=k_adv)
        natural = jnp.mean(_ce(logits, y))
        robust = jnp.mean(_kl_logits(logits, logits_adv))
        loss = natural + beta * robust
        metrics = {"loss": loss, "accuracy": _accuracy(logits, y), "adv_accuracy": _accuracy(logits_adv, y),
                   "natural_loss": natural, "robust_loss": robust}
        return loss, (stats, metrics)

    hp = (("eps", eps), ("steps", steps), ("step_size", step_size), ("beta", beta), ("norm", norm),
          ("init_scale", init_scale))
    return Loss("trades", hp, fn)
