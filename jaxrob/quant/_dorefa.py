"""DoReFa-Net weight and activation quantizers.

``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` for ``r`` in [0, 1], with the
straight-through estimator (``d quantize_k / d r = 1``).

* Weights, ``k > 1``: ``w_o = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``
  (the tanh normalisation is differentiated normally, ``quantize_k`` by STE);
  ``k = 1``: ``w_o = E(|w|) sign(w)`` with the identity STE (``E|w|`` is a
  constant in the backward pass).  The maximum and the mean are taken over the
  whole tensor, as in the paper (per layer).  ``sign(0)`` is taken as ``+1`` so
  the 1-bit output has two levels.
* Activations: ``quantize_k(clip(x, 0, 1))``; gradient 1 inside ``[0, 1]``, 0
  outside (the clip's own gradient).

The weight map is not idempotent for ``k >= 4``: re-normalising the ``k``-bit
levels through ``tanh`` moves inner levels by more than half a step. Its
outputs always lie on the grid ``{2 i / (2^k - 1) - 1}``; for ``k <= 3`` (and
``k = 1``) applying it twice gives the same result (tested).

References:
  Zhou, Wu, Ni, Zhou, Wen & Zou, "DoReFa-Net: Training Low Bitwidth
  Convolutional Neural Networks with Low Bitwidth Gradients", arXiv:1606.06160.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob.quant._ste import straight_through
from jaxrob.quant._uniform import _float_array, check_bits


def quantize_k(r: ArrayLike, *, bits: int) -> jax.Array:
    """DoReFa's ``quantize_k``: ``round((2^k - 1) r) / (2^k - 1)`` for ``r`` in [0, 1], identity gradient."""
    bits = check_bits(bits)
    r = _float_array("r", r)
    n = 2 ** bits - 1
    return straight_through(r, jnp.round(r * n) / n)


def dorefa_weights(w: ArrayLike, *, bits: int) -> jax.Array:
    """DoReFa weight quantization to ``bits`` bits (values in ``[-1, 1]``; ``E|w| sign(w)`` at 1 bit).

    Args:
      w: a weight tensor (floating, any shape); one normalisation per tensor.
      bits: Python int in 1..16.

    Returns:
      The quantized weights, ``w``'s shape: for ``bits > 1`` on the grid
      ``{2 i / (2^bits - 1) - 1 : i = 0 .. 2^bits - 1}``; for ``bits = 1`` in ``{-E|w|, +E|w|}``.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(v, 4) for v in dorefa_weights(jnp.array([-2.0, -0.1, 0.3, 1.0]), bits=2).tolist()]
      [-1.0, -0.3333, 0.3333, 1.0]
      >>> dorefa_weights(jnp.array([-2.0, 0.0, 1.0, 1.0]), bits=1).tolist()
      [-1.0, 1.0, 1.0, 1.0]
    """
    return _dorefa_weights(_float_array("w", w), bits=check_bits(bits))


@functools.partial(jax.jit, static_argnames="bits")
def _dorefa_weights(w, *, bits):
    if bits == 1:
        e = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
        return straight_through(w, jnp.where(w >= 0, e, -e).astype(w.dtype))
    t = jnp.tanh(w)
    m = jnp.max(jnp.abs(t))
    m = jnp.where(m > 0, m, jnp.ones_like(m))
    return 2.0 * quantize_k(t / (2.0 * m) + 0.5, bits=bits) - 1.0


def dorefa_activations(x: ArrayLike, *, bits: int) -> jax.Array:
    """DoReFa activation quantization: ``quantize_k(clip(x, 0, 1))`` (gradient 1 on [0, 1], 0 outside).

    Args:
      x: activations (floating, any shape), e.g. pre-ReLU values; this replaces the ReLU.
      bits: Python int in 1..16.

    Returns:
      Values on ``{i / (2^bits - 1)}``, ``x``'s shape.

    Example:
      >>> import jax.numpy as jnp
      >>> dorefa_activations(jnp.array([-0.5, 0.2, 0.4, 3.0]), bits=2).tolist()
      [0.0, 0.3333333432674408, 0.3333333432674408, 1.0]
    """
    return _dorefa_activations(_float_array("x", x), bits=check_bits(bits))


@functools.partial(jax.jit, static_argnames="bits")
def _dorefa_activations(x, *, bits):
    # gradient 1 on the closed interval (jnp.clip's would be 1/2 at the ends)
    inside = (x >= 0) & (x <= 1)
    return quantize_k(jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0))), bits=bits)
