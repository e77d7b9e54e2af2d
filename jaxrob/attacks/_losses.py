"""Per-example attack losses: ``loss(logits, y) -> (B,)``, larger means more adversarial.

An untargeted attack maximises the loss at the true label; a targeted attack
maximises its negation at the target label (it minimises the cross-entropy to
the target, or pushes the target logit above every other logit).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, Any], jax.Array]


def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy with integer labels, per example.

    Args:
      logits: ``(B, C)`` logits.
      y: ``(B,)`` integer labels in ``[0, C)``.

    Returns:
      ``(B,)`` float32 losses ``-log softmax(logits)[y]``.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # A one-hot contraction rather than a gather: its gradient is elementwise, not a scatter.
    return -jnp.sum(jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), log_p, 0.0), axis=-1)


def cw_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y``, per example.

    Positive exactly when the example is misclassified. A targeted attack
    maximises its negation at the target ``t``: ``z_t - max_{j != t} z_j``.

    Args:
      logits: ``(B, C)`` logits.
      y: ``(B,)`` integer labels in ``[0, C)``.

    Returns:
      ``(B,)`` float32 margins.

    References:
      Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
      IEEE S&P 2017, arXiv:1608.04644.
    """
    logits = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return z_other - z_y


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss}


def resolve(loss: str | LossFn) -> LossFn:
    """Returns the loss function for a name in :data:`LOSSES` or a callable (already validated)."""
    return LOSSES[loss] if isinstance(loss, str) else loss
