"""Uniform fake quantization (symmetric and affine) with the straight-through estimator.

A ``b``-bit uniform quantizer maps a real tensor ``x`` to integer codes
``c = clip(round(x / s) + z, q_min, q_max)`` and back to ``(c - z) * s``.  The
*step* (scale) ``s`` and the integer *zero point* ``z`` are per tensor, or per
channel along the ``axis`` argument (the axes that keep their own scale, e.g.
the output axis of a ``(in, out)`` dense kernel, ``axis=-1``).

Code ranges (``bits = b``):

* symmetric, ``narrow_range=True`` (default): ``[-(2^(b-1) - 1), 2^(b-1) - 1]``,
  ``2^b - 1`` levels symmetric around an exact zero, ``z = 0``;
* symmetric, ``narrow_range=False``: the full two's-complement range
  ``[-2^(b-1), 2^(b-1) - 1]`` (qwix's and most int8 kernels' convention);
* symmetric, ``b = 1``: the two levels ``{-s, +s}`` (codes ``-1, +1``, a sign
  function; ``x = 0`` maps to ``+s``), since a one-bit grid with an exact zero
  would have no other level.  Its default step is ``mean |x|`` (the step
  minimising ``||x - s sign(x)||^2``, as in XNOR-Net), not the abs-max; the
  gradient rule below applies with the range ``[-s, s]`` (the "hard tanh" STE
  of BinaryConnect/XNOR-Net);
* affine (``symmetric=False``): ``[0, 2^b - 1]`` with an integer zero point
  ``z`` so that the real value 0 is represented exactly.

Scales.  With ``scale=None`` the step follows from a clipping range: ``clip``
if given (symmetric: the abs clip value ``c``; affine: a pair ``(lo, hi)``),
else the abs-max (symmetric) or min/max (affine) of ``x`` over the non-channel
axes ("dynamic" quantization).  Symmetric: ``s = c / q_max``; affine:
``s = (hi - lo) / (2^b - 1)`` with ``lo <= 0 <= hi`` enforced by widening, and
``z = clip(round(-lo / s), 0, 2^b - 1)``.  A zero range gives ``s = 1``.

Gradient rule (documented and tested).  The forward value is the dequantized
``(c - z) * s``; the gradient with respect to ``x`` is the straight-through
estimator *inside the representable range* ``[(q_min - z) s, (q_max - z) s]``
(both ends included) and zero outside it::

    d fake_quant(x) / dx = 1  if (q_min - z) s <= x <= (q_max - z) s  else 0

The step and zero point receive no gradient (they are treated as constants;
use :func:`jaxrob.quant._lsq.lsq` for a learned step).  The identity part is
:func:`jaxrob.quant._ste.straight_through`, the one STE of the library.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877 (affine
  scheme, fake quantization in training).  Bengio, Leonard & Courville,
  "Estimating or Propagating Gradients Through Stochastic Neurons for
  Conditional Computation", arXiv:1308.3432 (straight-through estimator).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrob.quant._ste import straight_through

MAX_BITS = 16


# --------------------------------------------------------------------------- checks


def check_bits(bits: Any, *, name: str = "bits", min_bits: int = 1, max_bits: int = MAX_BITS) -> int:
    """``bits`` as a Python int in ``[min_bits, max_bits]``; TypeError/ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        if isinstance(bits, (np.ndarray, jax.Array)) and np.ndim(bits) == 0 and not isinstance(
                bits, jax.core.Tracer) and np.issubdtype(np.asarray(bits).dtype, np.integer):
            bits = int(bits)
        else:
            raise TypeError(f"{name} must be a Python integer in [{min_bits}, {max_bits}] (a static "
                            f"hyperparameter, not a traced value), got {bits!r} of type {type(bits).__name__}")
    bits = int(bits)
    if not min_bits <= bits <= max_bits:
        raise ValueError(f"{name} must be an integer in [{min_bits}, {max_bits}], got {bits}")
    return bits


def check_axis(axis: Any, ndim: int, *, name: str = "axis") -> tuple[int, ...]:
    """Normalises ``axis`` (None, an int or a sequence of ints) to a sorted tuple of non-negative axes."""
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) else axis
    if not isinstance(axes, (tuple, list)) or not all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"{name} must be None (per-tensor), an int or a tuple of ints (the channel axes that "
                        f"keep their own scale), got {axis!r}")
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axis!r} is out of range for an array of rank {ndim} "
                             f"(allowed: {-ndim} .. {ndim - 1})")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis!r} names the same axis twice")
    return tuple(sorted(out))


def _float_array(name: str, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def reduce_axes(ndim: int, channel_axes: Sequence[int]) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces over (all but ``channel_axes``)."""
    return tuple(a for a in range(ndim) if a not in channel_axes)


def per_channel(name: str, value: ArrayLike, x_shape: tuple[int, ...], channel_axes: tuple[int, ...]) -> jax.Array:
    """``value`` in keep-dims form, broadcastable to ``x_shape``.

    Accepts a scalar, an array broadcastable to ``x_shape``, or (per channel) an
    array of shape ``tuple(x_shape[a] for a in channel_axes)``, which is
    reshaped to keep-dims form (ones on the other axes).
    """
    v = jnp.asarray(value)
    ndim = len(x_shape)
    if channel_axes and v.ndim == len(channel_axes) and v.ndim != ndim and v.shape == tuple(
            x_shape[a] for a in channel_axes):
        shape = [1] * ndim
        for a in channel_axes:
            shape[a] = x_shape[a]
        return v.reshape(shape)
    try:
        np.broadcast_shapes(v.shape, x_shape)
    except ValueError:
        raise ValueError(f"{name} of shape {v.shape} does not broadcast to the input's shape {x_shape}; pass a "
                         f"scalar, an array broadcastable to it, or one value per channel "
                         f"{tuple(x_shape[a] for a in channel_axes)}") from None
    if v.ndim > ndim:
        raise ValueError(f"{name} of shape {v.shape} has more dimensions than the input {x_shape}")
    return v


# --------------------------------------------------------------------------- ranges and scales


def code_range(bits: int, *, symmetric: bool = True, narrow_range: bool = True) -> tuple[int, int]:
    """The integer codes ``(q_min, q_max)`` of a ``bits``-bit quantizer (see the module docstring).

    Example:
      >>> code_range(8), code_range(8, narrow_range=False), code_range(4, symmetric=False), code_range(1)
      ((-127, 127), (-128, 127), (0, 15), (-1, 1))
    """
    bits = check_bits(bits)
    if not symmetric:
        return 0, 2 ** bits - 1
    if bits == 1:
        return -1, 1
    if narrow_range:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def code_dtype(bits: int, *, symmetric: bool = True) -> jnp.dtype:
    """Smallest standard integer dtype holding the codes: int8/int16 (symmetric), uint8/uint16 (affine)."""
    bits = check_bits(bits)
    if symmetric:
        return jnp.dtype(jnp.int8 if bits <= 8 else jnp.int16)
    return jnp.dtype(jnp.uint8 if bits <= 8 else jnp.uint16)


def _safe_scale(s: jax.Array) -> jax.Array:
    tiny = jnp.sqrt(jnp.finfo(s.dtype).tiny)
    return jnp.where(s < tiny, jnp.ones_like(s), s)


def _check_mode(symmetric: Any, narrow_range: Any) -> None:
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    if not isinstance(narrow_range, bool):
        raise TypeError(f"narrow_range must be a bool, got {narrow_range!r}")


def scale_and_zero_point(x: ArrayLike, *, bits: int, symmetric: bool = True, axis: Any = None,
                         clip: Any = None, narrow_range: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """The step ``s`` and zero point ``z`` of a uniform quantizer, from a clipping range or from ``x``.

    Args:
      x: the tensor to be quantized (any shape, floating point); only used when
        ``clip`` is None (and for its shape).
      bits: 1..16.
      symmetric: symmetric (``z = 0``) or affine quantization.
      axis: channel axes with their own scale (None: per tensor).
      clip: the clipping range: symmetric, the abs clip value (scalar, keep-dims
        array or one value per channel); affine, a pair ``(lo, hi)``. ``None``:
        the abs-max / min-max of ``x`` over the non-channel axes.
      narrow_range: symmetric code range ``[-(2^(b-1)-1), 2^(b-1)-1]`` (True) or
        the full two's-complement range (False).

    Returns:
      ``(scale, zero_point)`` in keep-dims form (broadcastable to ``x``);
      ``zero_point`` is None for symmetric quantization, an int32 array otherwise.
    """
    bits = check_bits(bits)
    _check_mode(symmetric, narrow_range)
    x = _float_array("x", x)
    axes = check_axis(axis, x.ndim)
    red = reduce_axes(x.ndim, axes)
    q_min, q_max = code_range(bits, symmetric=symmetric, narrow_range=narrow_range)
    if symmetric:
        if clip is None:
            if bits == 1:
                return _safe_scale(jnp.mean(jnp.abs(x), axis=red, keepdims=True)), None
            c = jnp.max(jnp.abs(x), axis=red, keepdims=True)
        else:
            if isinstance(clip, (tuple, list)):
                raise TypeError("clip for symmetric quantization is one abs clip value (scalar or per channel), "
                                f"got a {type(clip).__name__}; pass symmetric=False for a (lo, hi) range")
            c = jnp.abs(per_channel("clip", clip, x.shape, axes)).astype(x.dtype)
        return _safe_scale(c / q_max), None
    if clip is None:
        lo = jnp.min(x, axis=red, keepdims=True)
        hi = jnp.max(x, axis=red, keepdims=True)
    else:
        if not isinstance(clip, (tuple, list)) or len(clip) != 2:
            raise TypeError(f"clip for affine quantization must be a pair (lo, hi), got {clip!r}")
        lo = per_channel("clip[0]", clip[0], x.shape, axes).astype(x.dtype)
        hi = per_channel("clip[1]", clip[1], x.shape, axes).astype(x.dtype)
    lo, hi = jnp.minimum(lo, 0), jnp.maximum(hi, 0)
    s = _safe_scale((hi - lo) / (q_max - q_min))
    z = jnp.clip(jnp.round(-lo / s), q_min, q_max).astype(jnp.int32)
    return s, z


# --------------------------------------------------------------------------- quantize / dequantize


def _prepare(x, bits, scale, zero_point, symmetric, axis, clip, narrow_range):
    bits = check_bits(bits)
    _check_mode(symmetric, narrow_range)
    x = _float_array("x", x)
    axes = check_axis(axis, x.ndim)
    if scale is not None and clip is not None:
        raise ValueError("pass either scale= (the step) or clip= (a clipping range the step is derived from), "
                         "not both")
    if symmetric and zero_point is not None:
        raise ValueError("zero_point is only used by affine quantization; pass symmetric=False")
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point given without scale; pass both, or neither (derived from x or clip)")
        s, z = scale_and_zero_point(x, bits=bits, symmetric=symmetric, axis=axis, clip=clip,
                                    narrow_range=narrow_range)
    else:
        s = per_channel("scale", scale, x.shape, axes).astype(x.dtype)
        if symmetric:
            z = None
        else:
            z = jnp.zeros((), jnp.int32) if zero_point is None else per_channel(
                "zero_point", zero_point, x.shape, axes)
            if not jnp.issubdtype(z.dtype, jnp.integer):
                z = jnp.round(z).astype(jnp.int32)
    q_min, q_max = code_range(bits, symmetric=symmetric, narrow_range=narrow_range)
    return x, bits, s, z, q_min, q_max


def _codes_float(x, bits, s, z, q_min, q_max, symmetric):
    """Integer codes as floats (exact), and the dequantized value."""
    if symmetric and bits == 1:
        c = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
        return c, c * s
    zf = 0 if z is None else z.astype(x.dtype)
    c = jnp.clip(jnp.round(x / s) + zf, q_min, q_max)
    return c, (c - zf) * s


def _static(bits, symmetric, axis, narrow_range):
    """Eager checks of the static arguments, and their hashable forms for ``jax.jit``."""
    bits = check_bits(bits)
    _check_mode(symmetric, narrow_range)
    if isinstance(axis, list):
        axis = tuple(axis)
    check_axis(axis, 1 << 30)                                # types only; the rank is checked in the trace
    return dict(bits=bits, symmetric=symmetric, axis=axis, narrow_range=narrow_range)


_STATIC = ("bits", "symmetric", "axis", "narrow_range")


def quantize(x: ArrayLike, *, bits: int, scale: ArrayLike | None = None, zero_point: ArrayLike | None = None,
             symmetric: bool = True, axis: Any = None, clip: Any = None, narrow_range: bool = True
             ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Integer codes of ``x`` (real storage), with the step and zero point that decode them.

    Args: as :func:`fake_quant`.

    Returns:
      ``(codes, scale, zero_point)``: ``codes`` has ``x``'s shape and dtype
      int8/int16 (symmetric) or uint8/uint16 (affine) (:func:`code_dtype`);
      ``scale`` (and the int32 ``zero_point``, None when symmetric) are in
      keep-dims form. ``dequantize(*quantize(x, ...)) == fake_quant(x, ...)``.

    Example:
      >>> import jax.numpy as jnp
      >>> c, s, z = quantize(jnp.array([-1.0, 0.02, 0.3, 1.0]), bits=4)   # step 1/7
      >>> c.tolist(), c.dtype.name, s.shape, z
      ([-7, 0, 2, 7], 'int8', (1,), None)
    """
    return _quantize_jit(x, scale, zero_point, clip, **_static(bits, symmetric, axis, narrow_range))


@functools.partial(jax.jit, static_argnames=_STATIC)
def _quantize_jit(x, scale, zero_point, clip, *, bits, symmetric, axis, narrow_range):
    x, bits, s, z, q_min, q_max = _prepare(x, bits, scale, zero_point, symmetric, axis, clip, narrow_range)
    c, _ = _codes_float(x, bits, s, z, q_min, q_max, symmetric)
    return c.astype(code_dtype(bits, symmetric=symmetric)), s, z


def dequantize(codes: ArrayLike, scale: ArrayLike, zero_point: ArrayLike | None = None, *,
               dtype: Any = jnp.float32) -> jax.Array:
    """``(codes - zero_point) * scale`` in ``dtype``; the inverse of :func:`quantize` on its grid.

    Args:
      codes: integer codes of any shape.
      scale: the step, broadcastable to ``codes``.
      zero_point: integer zero point broadcastable to ``codes`` (None: 0).
      dtype: floating dtype of the result.

    Returns:
      Real values of ``codes``' shape.
    """
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be an integer array (from quantize), got dtype {codes.dtype}")
    c = codes.astype(dtype)
    if zero_point is not None:
        c = c - jnp.asarray(zero_point).astype(dtype)
    return c * jnp.asarray(scale).astype(dtype)


def fake_quant(x: ArrayLike, *, bits: int, scale: ArrayLike | None = None, zero_point: ArrayLike | None = None,
               symmetric: bool = True, axis: Any = None, clip: Any = None, narrow_range: bool = True) -> jax.Array:
    """Uniform fake quantization: quantize to ``bits``-bit codes and dequantize, with the STE gradient.

    Usable for weights (``axis`` = output-channel axis for per-channel scales),
    activations (usually affine or with a calibrated ``clip``) or inputs.

    Args:
      x: floating array, any shape.
      bits: Python int in 1..16 (static).
      scale: the step ``s``; None derives it from ``clip`` or from ``x``
        (abs-max / min-max over the non-channel axes). Scalar, keep-dims array,
        or one value per channel of ``axis``.
      zero_point: affine only; integer zero point (same shapes as ``scale``);
        None with ``scale`` given means 0.
      symmetric: symmetric (default) or affine quantization.
      axis: None (per tensor), or the channel axis / axes keeping their own
        scale (e.g. ``-1`` for the output channels of a dense ``(in, out)`` or
        conv ``HWIO`` kernel).
      clip: the clipping range the step is derived from (symmetric: abs clip
        value; affine: ``(lo, hi)``), e.g. from
        :func:`jaxrob.quant._calibrate.calibrate`. Exclusive with ``scale``.
      narrow_range: symmetric codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` (True,
        default) or ``[-2^(b-1), 2^(b-1)-1]`` (False).

    Returns:
      The dequantized array, ``x``'s shape and dtype, taking at most ``2^bits``
      distinct values per channel. Gradient: 1 where ``x`` lies in the
      representable range ``[(q_min - z) s, (q_max - z) s]``, else 0; none to
      ``scale``/``zero_point``.

    Raises:
      TypeError: non-integer ``bits``, a non-float ``x``, a malformed ``axis``/``clip``.
      ValueError: ``bits`` outside 1..16, an out-of-range axis, both ``scale``
        and ``clip``, a ``scale`` that does not broadcast to ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([[0.5, -1.5], [0.2, 2.0]])
      >>> fake_quant(w, bits=2, axis=-1).tolist()          # per column: levels {-absmax, 0, absmax}
      [[0.5, -2.0], [0.0, 2.0]]
      >>> jax.grad(lambda x: fake_quant(x, bits=4, scale=0.1).sum())(jnp.array([0.3, 0.7, 0.71])).tolist()
      [1.0, 1.0, 0.0]
    """
    return _fake_quant_jit(x, scale, zero_point, clip, **_static(bits, symmetric, axis, narrow_range))


@functools.partial(jax.jit, static_argnames=_STATIC)
def _fake_quant_jit(x, scale, zero_point, clip, *, bits, symmetric, axis, narrow_range):
    x, bits, s, z, q_min, q_max = _prepare(x, bits, scale, zero_point, symmetric, axis, clip, narrow_range)
    _, q = _codes_float(x, bits, s, z, q_min, q_max, symmetric)
    zf = 0 if z is None else z.astype(x.dtype)
    lo, hi = (q_min - zf) * s, (q_max - zf) * s
    inside = (x >= lo) & (x <= hi)
    x_pass = jnp.where(inside, x, jax.lax.stop_gradient(x))
    return straight_through(x_pass, q)
