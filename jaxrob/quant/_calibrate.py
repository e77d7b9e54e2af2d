"""Calibration for post-training quantization: choosing the clipping range.

``calibrate(x, bits=..., method=...)`` looks at a batch of activations (or a
weight tensor) and returns the clipping range that :func:`fake_quant`'s ``clip``
argument takes: for symmetric quantization one abs clip value ``c`` (per
tensor, or per channel along ``axis``), for affine quantization a pair
``(lo, hi)``.  Methods:

* ``"absmax"`` -- the largest magnitude (symmetric) / the min and max (affine);
  nothing is clipped.
* ``"percentile"`` -- the ``percentile``-th percentile of ``|x|`` (symmetric) or
  the ``100 - percentile`` / ``percentile`` percentiles of ``x`` (affine), which
  ignores rare outliers (e.g. Wu et al. 2020, arXiv:2004.09602).
* ``"mse"`` -- the clipping range minimising the mean squared quantization error
  ``mean((fake_quant(x, clip=r * absmax) - x)^2)`` over a grid of ratios
  ``r in {1/n, 2/n, ..., 1}`` (``n = num_candidates``), per channel.  Because
  ``r = 1`` (abs-max) is a candidate the chosen range's error is never above the
  abs-max error.  A grid search is exact up to the grid spacing and needs no
  assumption on the distribution (ACIQ, Banner et al., arXiv:1810.05723, derives
  the optimum analytically for Gaussian/Laplace data; on a Gaussian at 4 bits
  the search lands near their 2.55 sigma).  For affine ranges the same ratio
  scales ``lo`` and ``hi`` together.

The calibration is a pure function of one batch; to calibrate on several
batches, concatenate them (or, for ``"absmax"``, take the maximum of the
per-batch results).

References:
  Banner, Nahshan & Soudry, "Post-training 4-bit quantization of convolution
  networks for rapid-deployment", NeurIPS 2019, arXiv:1810.05723.  Wu, Judd,
  Zhang, Isaev & Micikevicius, "Integer Quantization for Deep Learning
  Inference: Principles and Empirical Evaluation", arXiv:2004.09602.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._uniform import _check_mode, _float_array, check_axis, check_bits, fake_quant, reduce_axes

METHODS = ("absmax", "percentile", "mse")


def calibrate(x: ArrayLike, *, bits: int, method: str = "mse", symmetric: bool = True, axis: Any = None,
              percentile: float = 99.99, num_candidates: int = 100, narrow_range: bool = True) -> Any:
    """The clipping range of a ``bits``-bit uniform quantizer for the values in ``x``.

    Args:
      x: a batch of activations or a weight tensor (floating, any shape).
      bits: 1..16 (the MSE search depends on it).
      method: ``"absmax"``, ``"percentile"`` or ``"mse"`` (module docstring).
      symmetric: symmetric (one abs clip value) or affine (``(lo, hi)``).
      axis: channel axes calibrated separately (None: per tensor).
      percentile: for ``"percentile"``, in (0, 100].
      num_candidates: for ``"mse"``, the number of clipping ratios searched (>= 1).
      narrow_range: as :func:`fake_quant` (used by the MSE search).

    Returns:
      Symmetric: the abs clip value in keep-dims form (ones on the reduced axes),
      to pass as ``fake_quant(x, clip=..., axis=axis)``. Affine: ``(lo, hi)`` in
      the same form, with ``lo <= 0 <= hi``.

    Raises:
      ValueError/TypeError: an unknown method, bad bits/axis/percentile/num_candidates.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (4096,))
      >>> c = calibrate(x, bits=4, method="mse")
      >>> bool(c[0] < 0.8 * jnp.abs(x).max())              # clips the Gaussian's tails
      True
      >>> y = fake_quant(x, bits=4, clip=c)
    """
    bits = check_bits(bits)
    _check_mode(symmetric, narrow_range)
    _validate.choice("method", method, METHODS)
    x = _float_array("x", x)
    axes = check_axis(axis, x.ndim)
    if x.size == 0:
        raise ValueError("x is empty; calibration needs at least one value")
    percentile = float(_validate.number("percentile", percentile, min=0.0, max=100.0, min_inclusive=False))
    num_candidates = _validate.number("num_candidates", num_candidates, min=1, integer=True)
    return _calibrate_jit(x, bits=bits, method=method, symmetric=symmetric, axes=axes, percentile=percentile,
                          num_candidates=num_candidates, narrow_range=narrow_range)


@functools.partial(jax.jit, static_argnames=("bits", "method", "symmetric", "axes", "percentile", "num_candidates",
                                             "narrow_range"))
def _calibrate_jit(x, *, bits, method, symmetric, axes, percentile, num_candidates, narrow_range):
    red = reduce_axes(x.ndim, axes)
    if method == "percentile":
        if symmetric:
            return jnp.percentile(jnp.abs(x), percentile, axis=red, keepdims=True).astype(x.dtype)
        lo = jnp.percentile(x, 100.0 - percentile, axis=red, keepdims=True).astype(x.dtype)
        hi = jnp.percentile(x, percentile, axis=red, keepdims=True).astype(x.dtype)
        return jnp.minimum(lo, 0), jnp.maximum(hi, 0)
    if symmetric:
        full = jnp.max(jnp.abs(x), axis=red, keepdims=True)
    else:
        full = (jnp.minimum(jnp.min(x, axis=red, keepdims=True), 0),
                jnp.maximum(jnp.max(x, axis=red, keepdims=True), 0))
    if method == "absmax":
        return full
    return _mse_search(x, full, bits=bits, symmetric=symmetric, axes=axes, narrow_range=narrow_range,
                       num_candidates=num_candidates)


def quantization_mse(x: ArrayLike, *, bits: int, clip: Any, symmetric: bool = True, axis: Any = None,
                     narrow_range: bool = True) -> jax.Array:
    """``mean((fake_quant(x, clip=clip) - x)^2)`` over the non-channel axes (keep-dims form)."""
    x = _float_array("x", x)
    axes = check_axis(axis, x.ndim)
    err = fake_quant(x, bits=bits, clip=clip, symmetric=symmetric, axis=axis, narrow_range=narrow_range) - x
    return jnp.mean(jnp.square(err), axis=reduce_axes(x.ndim, axes), keepdims=True)


def _mse_search(x, full, *, bits, symmetric, axes, narrow_range, num_candidates):
    ratios = jnp.arange(1, num_candidates + 1, dtype=x.dtype) / num_candidates
    axis = axes or None

    def err(r):
        clip = full * r if symmetric else (full[0] * r, full[1] * r)
        return quantization_mse(x, bits=bits, clip=clip, symmetric=symmetric, axis=axis, narrow_range=narrow_range)

    errs = jax.lax.map(err, ratios)                       # (n, *keepdims); sequential: memory of one x
    best = ratios[jnp.argmin(errs, axis=0)]               # first (smallest) ratio on ties
    return full * best if symmetric else (full[0] * best, full[1] * best)
