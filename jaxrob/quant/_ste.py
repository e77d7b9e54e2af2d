"""The one straight-through estimator every quantizer in jaxrob uses.

``straight_through(x, q)`` is ``q`` in the forward pass and the identity in the
backward pass (d out / d x = 1): the estimator of Bengio, Leonard & Courville,
"Estimating or Propagating Gradients Through Stochastic Neurons for Conditional
Computation", arXiv:1308.3432.  Written as ``x + stop_gradient(q - x)`` it needs no
custom VJP, works under ``jit``/``vmap``/``grad`` and higher-order autodiff, and
keeps ``q``'s value exactly only up to one floating-point rounding of ``x + (q - x)``;
:func:`straight_through` therefore uses a ``custom_jvp`` so the forward value is
``q`` bit for bit (quantizers must be idempotent).
"""

from __future__ import annotations

import jax


@jax.custom_jvp
def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
    """Returns ``q``; its derivative with respect to ``x`` is the identity, with respect to ``q`` zero.

    Args:
      x: the real-valued input, any shape.
      q: its quantized value, same shape and dtype as ``x``.

    Returns:
      ``q`` (exactly), carrying the gradient of ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda x: straight_through(x, jnp.round(x)).sum()
      >>> float(f(jnp.array([0.4, 1.6]))), jax.grad(f)(jnp.array([0.4, 1.6])).tolist()
      (2.0, [1.0, 1.0])
    """
    del x
    return q


@straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    _, q = primals
    dx, _ = tangents
    return q, dx
