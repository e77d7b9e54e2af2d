"""Randomized ensemble classifiers (RECs): exact evaluation and adaptive PGD.

A REC with members ``f_1..f_M`` and probabilities ``alpha`` answers each query
with ``f_i`` drawn with probability ``alpha_i``. Its accuracy at ``x`` is the
exact expectation ``sum_i alpha_i 1[f_i(x) = y]``: here it is computed, never
estimated, for clean and adversarial inputs alike.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrob import _validate
from jaxrob.attacks import _checks
from jaxrob.attacks._pgd import pgd

from ._core import Members, as_members, average, check_alpha, expected_correct, rec_sample

PyTree = Any


def _pad(a, size):
    n = a.shape[0]
    if n == size:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    return xp.concatenate([a, xp.repeat(a[-1:], size - n, axis=0)], axis=0)


def _check(members, params, x, y, alpha, batch_size):
    members = as_members(members)
    m = members.num_members(params)
    alpha = check_alpha(alpha, m)
    _checks.inputs(x, None)
    n = x.shape[0]
    if n == 0:
        raise ValueError("x must hold at least one example, got an empty batch")
    if not hasattr(y, "dtype"):
        raise TypeError(f"y must be an integer array of shape ({n},), got {type(y).__name__}")
    _validate.labels("y", y, batch=n)
    batch_size = _checks.positive_int("batch_size", batch_size)
    out = jax.eval_shape(members, params, jax.ShapeDtypeStruct((min(batch_size, n),) + tuple(x.shape[1:]),
                                                                x.dtype))
    if len(out.shape) != 3:
        raise ValueError(f"members must return logits of shape (M, B, C), got {out.shape}")
    _validate.labels("y", y, batch=n, num_classes=out.shape[-1])
    return members, alpha, min(batch_size, n)


@functools.partial(jax.jit, static_argnums=0)
def _clean_batch(members, params, alpha, x, y):
    return expected_correct(members(params, x), y, alpha)


def rec_accuracy(members: Members | Callable, params: PyTree, x: jax.typing.ArrayLike,
                 y: jax.typing.ArrayLike, *, alpha: jax.typing.ArrayLike, batch_size: int = 256) -> float:
    """Exact clean accuracy of a REC: the mean over examples of ``sum_i alpha_i 1[f_i(x) = y]``.

    Args:
      members: a :class:`Members` (or one ``apply_fn`` for stacked params).
      params: the members' stacked params (a tuple of them for several groups).
      x: ``(N, ...)`` inputs.
      y: ``(N,)`` integer labels.
      alpha: ``(M,)`` sampling probabilities on the simplex.
      batch_size: examples per call (the last batch is padded; one compile).

    Returns:
      The expected accuracy in [0, 1].
    """
    members, alpha, bs = _check(members, params, x, y, alpha, batch_size)
    n = x.shape[0]
    total = 0.0
    for i in range(math.ceil(n / bs)):
        sl = slice(i * bs, (i + 1) * bs)
        valid = min(bs, n - i * bs)
        c = _clean_batch(members, params, alpha, _pad(x[sl], bs), _pad(y[sl], bs))
        total += float(jnp.sum(c[:valid]))
    return total / n


@functools.partial(jax.jit, static_argnums=(0, 6))
def _sampled_batch(members, params, alpha, x, y, key, samples):
    f = rec_sample(members)

    def one(k):
        return jnp.argmax(f((params, alpha), x, key=k), axis=-1) == y

    hits = jax.vmap(one)(jax.random.split(key, samples))
    return jnp.mean(hits.astype(jnp.float32), axis=0)


def rec_sampled_accuracy(members: Members | Callable, params: PyTree, x: jax.typing.ArrayLike,
                         y: jax.typing.ArrayLike, *, alpha: jax.typing.ArrayLike, key: jax.Array,
                         samples: int = 1, batch_size: int = 256) -> float:
    """Monte-Carlo accuracy of a REC: each example is answered ``samples`` times by a drawn member.

    This is what deploying the REC measures; its expectation is
    :func:`rec_accuracy`, and its standard error shrinks as
    ``1 / sqrt(N * samples)``.

    Args:
      members, params, x, y, alpha, batch_size: as in :func:`rec_accuracy`.
      key: typed PRNG key; batch ``i`` uses ``fold_in(key, i)``.
      samples: independent draws per example, ``>= 1``.

    Returns:
      The sampled accuracy in [0, 1].
    """
    key = _checks.typed_key("key", key)
    samples = _checks.positive_int("samples", samples)
    members, alpha, bs = _check(members, params, x, y, alpha, batch_size)
    n = x.shape[0]
    total = 0.0
    for i in range(math.ceil(n / bs)):
        sl = slice(i * bs, (i + 1) * bs)
        valid = min(bs, n - i * bs)
        c = _sampled_batch(members, params, alpha, _pad(x[sl], bs), _pad(y[sl], bs),
                           jax.random.fold_in(key, i), samples)
        total += float(jnp.sum(c[:valid]))
    return total / n


def rec_robust_accuracy(members: Members | Callable, params: PyTree, x: jax.typing.ArrayLike,
                        y: jax.typing.ArrayLike, *, alpha: jax.typing.ArrayLike,
                        attack: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                        key: jax.Array, batch_size: int = 256, progress: bool = False) -> float:
    """Exact expected accuracy of a REC on adversarial examples.

    For every batch, ``x_adv = attack(x, y, key)`` and the batch's
    contribution is ``sum_b sum_i alpha_i 1[f_i(x_adv_b) = y_b]``: the
    expectation over the REC's member draw, not a sample of it. The attack is
    a closure over the ensemble and its own options, e.g.
    ``lambda x, y, k: arc(members, params, x, y, alpha=alpha, eps=8/255)`` or
    ``lambda x, y, k: rec_pgd(members, params, x, y, alpha=alpha, key=k, eps=8/255, steps=20)``.
    Each call of this function compiles the batch function once.

    Args:
      members, params, x, y, alpha, batch_size: as in :func:`rec_accuracy`.
      attack: ``attack(x, y, key) -> x_adv`` for one batch.
      key: typed PRNG key; batch ``i`` uses ``fold_in(key, i)``.
      progress: show a tqdm bar with the running accuracy.

    Returns:
      The expected robust accuracy in [0, 1].
    """
    key = _checks.typed_key("key", key)
    if not callable(attack):
        raise TypeError(f"attack must be a callable attack(x, y, key) -> x_adv, got {attack!r}")
    members, alpha, bs = _check(members, params, x, y, alpha, batch_size)

    @jax.jit
    def batch(params, alpha, xb, yb, k):
        x_adv = attack(xb, yb, k)
        return expected_correct(members(params, x_adv), yb, alpha)

    n = x.shape[0]
    total = 0.0
    nb = math.ceil(n / bs)
    bar = tqdm(range(nb), desc="REC robust accuracy", disable=not progress, leave=False)
    for i in bar:
        sl = slice(i * bs, (i + 1) * bs)
        valid = min(bs, n - i * bs)
        c = batch(params, alpha, _pad(jnp.asarray(x[sl]), bs), _pad(jnp.asarray(y[sl]), bs),
                  jax.random.fold_in(key, i))
        total += float(jnp.sum(c[:valid]))
        bar.set_postfix(acc=f"{total / min(n, (i + 1) * bs):.3f}")
    return total / n


@dataclasses.dataclass(frozen=True)
class _BatchFirst:
    """``((params, alpha), x) -> (B, M, C)`` member logits, batch axis first (for PGD's loss)."""

    members: Members

    def __call__(self, params, x):
        return jnp.moveaxis(self.members(params, x), 0, 1)


def expected_ce(logits: jax.Array, targets: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Per-example expected cross-entropy ``sum_i alpha_i CE(f_i(x), y)`` over REC members.

    Args:
      logits: ``(B, M, C)`` member logits, batch first.
      targets: ``(y, alpha)`` with ``y`` of shape ``(B,)`` and ``alpha`` of
        shape ``(B, M)`` (the probabilities repeated per example).

    Returns:
      ``(B,)`` float32 losses.
    """
    y, a = targets
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)[:, None, :]
    ce = -jnp.sum(jnp.where(onehot, log_p, 0.0), axis=-1)  # (B, M)
    return jnp.sum(a * ce, axis=-1)


OBJECTIVES = ("expected_loss", "expected_softmax")


def rec_pgd(members: Members | Callable, params: PyTree, x: jax.typing.ArrayLike, y: jax.Array, *,
            alpha: jax.typing.ArrayLike, key: jax.Array, eps: float | jax.Array, steps: int,
            objective: str = "expected_loss", **pgd_kwargs: Any) -> jax.Array:
    """Adaptive PGD on a randomized ensemble classifier.

    The REC's randomness is integrated out exactly rather than sampled (EOT
    with all members): ``objective="expected_loss"`` maximises
    ``sum_i alpha_i CE(f_i(x + delta), y)``; ``"expected_softmax"`` maximises
    ``CE(sum_i alpha_i softmax(f_i(x + delta)), y)``. Both are the adaptive
    attacks that Dbouk & Shanbhag (2022) show to overstate a REC's
    robustness; :func:`jaxrob.attacks.arc` is the attack that does not.

    Args:
      members: a :class:`Members` (or one ``apply_fn`` for stacked params).
      params: the members' stacked params.
      x: ``(B, ...)`` inputs; y: ``(B,)`` labels.
      alpha: ``(M,)`` sampling probabilities (traced: new ``alpha`` never recompiles).
      key, eps, steps: as in :func:`jaxrob.attacks.pgd`.
      objective: ``"expected_loss"`` or ``"expected_softmax"``.
      **pgd_kwargs: any other :func:`jaxrob.attacks.pgd` option (``norm``,
        ``step_size``, ``restarts``, ``clip``, ...; not ``loss`` or ``targeted``).
        With ``restarts > 1`` the restart with the larger objective is kept.

    Returns:
      ``x_adv`` of the shape of ``x``.

    References:
      Dbouk & Shanbhag, "Adversarial Vulnerability of Randomized Ensembles",
      ICML 2022, arXiv:2206.06737. Pinot et al., "Randomization matters: how
      to defend against strong adversarial attacks", ICML 2020, arXiv:2002.11565.
    """
    _validate.choice("objective", objective, OBJECTIVES)
    for bad in ("loss", "targeted"):
        if bad in pgd_kwargs:
            raise TypeError(f"rec_pgd sets the loss from `objective`; {bad}= is not accepted")
    members = as_members(members)
    alpha = check_alpha(alpha, members.num_members(params))
    x = jnp.asarray(x)
    if objective == "expected_softmax":
        return pgd(average(members, over="probs", weighted=True), (params, alpha), x, y,
                   key=key, eps=eps, steps=steps, **pgd_kwargs)
    _validate.labels("y", y, batch=x.shape[0])
    targets = (y, jnp.broadcast_to(alpha, (x.shape[0], alpha.shape[0])))
    return pgd(_BatchFirst(members), params, x, targets, key=key, eps=eps, steps=steps,
               loss=expected_ce, **pgd_kwargs)
