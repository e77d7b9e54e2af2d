"""Input quantization (bit-depth reduction) with the BPDA identity gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._ste import straight_through
from jaxrob.quant._uniform import _float_array, check_bits


def quantize_input(x: ArrayLike, *, bits: int) -> jax.Array:
    """Reduces inputs in [0, 1] to ``2^bits`` levels; the gradient is the identity (BPDA).

    Forward: ``round(clip(x, 0, 1) (2^b - 1)) / (2^b - 1)`` (feature squeezing's
    bit-depth reduction).  Backward: ``d out / d x = 1`` everywhere -- the
    Backward Pass Differentiable Approximation that lets gradient attacks go
    through the non-differentiable squeezer (the true gradient is zero almost
    everywhere, which only masks gradients).  Use it as a defense inside
    ``apply_fn`` and attack the composite directly.

    Args:
      x: images in [0, 1] (checked when concrete), any shape.
      bits: Python int in 1..16 (1: binarisation at 0.5).

    Returns:
      ``x``'s shape, values in ``{i / (2^bits - 1)}``.

    References:
      Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
      Neural Networks", NDSS 2018, arXiv:1704.01155; Athalye, Carlini & Wagner,
      "Obfuscated Gradients Give a False Sense of Security", ICML 2018,
      arXiv:1802.00420 (BPDA).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([0.1, 0.4, 0.6, 1.0])
      >>> quantize_input(x, bits=1).tolist(), jax.grad(lambda x: quantize_input(x, bits=1).sum())(x).tolist()
      ([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    """
    bits = check_bits(bits)
    x = _float_array("x", x)
    _validate.unit_interval("x", x)
    return _quantize_input(x, bits=bits)


@functools.partial(jax.jit, static_argnames="bits")
def _quantize_input(x, *, bits):
    n = 2 ** bits - 1
    return straight_through(x, jnp.round(jnp.clip(x, 0.0, 1.0) * n) / n)
