"""Binary and ternary weight quantizers (straight-through gradients).

* :func:`binary`: ``alpha * sign(w)`` with ``alpha = mean |w|`` (XNOR-Net's
  optimal scale; BinaryConnect is the unscaled ``sign``).
* :func:`ternary`: Ternary Weight Networks: ``alpha * sign(w) * [|w| > delta]``
  with ``delta = threshold * mean |w|`` and ``alpha`` the mean of ``|w|`` over
  the weights above ``delta`` (the paper's approximate solution,
  ``threshold = 0.7``).

Gradient (both): the identity straight-through estimator in ``w``; the scale
``alpha`` and the threshold are constants in the backward pass (as in
BinaryConnect and TWN's training, which update the latent real weights with
the gradient of the quantized ones).  ``sign(0)`` is taken as ``+1`` so the
binary output has two levels.  Per-channel variants compute ``alpha`` (and
``delta``) over all axes except ``axis``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._ste import straight_through
from jaxrob.quant._uniform import _float_array, check_axis, reduce_axes


def binary(w: ArrayLike, *, axis: Any = None) -> jax.Array:
    """``mean|w| * sign(w)`` (per tensor, or per channel along ``axis``), identity STE gradient.

    Args:
      w: weights, floating, any shape.
      axis: None, or the channel axis / axes with their own ``alpha``
        (e.g. ``-1``: output channels of a dense or HWIO conv kernel).

    Returns:
      ``w``'s shape, two values ``{-alpha, +alpha}`` per channel.

    References:
      Courbariaux, Bengio & David, "BinaryConnect: Training Deep Neural Networks
      with binary weights during propagations", NeurIPS 2015, arXiv:1511.00363;
      Rastegari, Ordonez, Redmon & Farhadi, "XNOR-Net: ImageNet Classification
      Using Binary Convolutional Neural Networks", ECCV 2016, arXiv:1603.05279.

    Example:
      >>> import jax.numpy as jnp
      >>> binary(jnp.array([-2.0, 1.0, 0.0, 3.0])).tolist()
      [-1.5, 1.5, 1.5, 1.5]
    """
    w = _float_array("w", w)
    return _binary(w, red=reduce_axes(w.ndim, check_axis(axis, w.ndim)))


@functools.partial(jax.jit, static_argnames="red")
def _binary(w, *, red):
    alpha = jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=red, keepdims=True))
    return straight_through(w, jnp.where(w >= 0, alpha, -alpha).astype(w.dtype))


def ternary(w: ArrayLike, *, threshold: float = 0.7, axis: Any = None) -> jax.Array:
    """Ternary Weight Networks: ``alpha * sign(w) * [|w| > threshold * mean|w|]``, identity STE gradient.

    Args:
      w: weights, floating, any shape.
      threshold: ``t >= 0`` in ``delta = t * mean|w|`` (the paper's 0.7
        approximates the optimal threshold for Gaussian / uniform weights).
      axis: None, or channel axes with their own ``delta`` and ``alpha``.

    Returns:
      ``w``'s shape, values in ``{-alpha, 0, +alpha}`` per channel (``alpha`` is 0
      for a channel with no weight above ``delta``).

    References:
      Li, Zhang & Liu, "Ternary Weight Networks", arXiv:1605.04711.

    Example:
      >>> import jax.numpy as jnp
      >>> ternary(jnp.array([-2.0, 0.1, 0.2, 1.7])).tolist()     # delta = 0.7 * 1.0
      [-1.850000023841858, 0.0, 0.0, 1.850000023841858]
    """
    threshold = float(_validate.number("threshold", threshold, min=0.0))
    w = _float_array("w", w)
    return _ternary(w, threshold, red=reduce_axes(w.ndim, check_axis(axis, w.ndim)))


@functools.partial(jax.jit, static_argnames="red")
def _ternary(w, threshold, *, red):
    a = jnp.abs(w)
    delta = threshold * jnp.mean(a, axis=red, keepdims=True)
    keep = a > delta
    count = jnp.sum(keep, axis=red, keepdims=True)
    alpha = jnp.sum(jnp.where(keep, a, 0), axis=red, keepdims=True) / jnp.maximum(count, 1)
    alpha = jax.lax.stop_gradient(alpha)
    q = jnp.where(keep, jnp.where(w >= 0, alpha, -alpha), jnp.zeros_like(w)).astype(w.dtype)
    return straight_through(w, q)
