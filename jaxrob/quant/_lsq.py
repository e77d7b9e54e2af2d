"""Quantizers with learned parameters: LSQ (learned step size) and PACT (learned clipping).

Both are pure functions of the tensor and of the learned parameter (a leaf of
the model's params, trained by the same optimizer); their gradients are the
papers' estimators, built from :func:`jaxrob.quant._ste.straight_through`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._ste import straight_through
from jaxrob.quant._uniform import _float_array, check_axis, check_bits, per_channel, reduce_axes


def lsq_levels(bits: int, *, signed: bool = True) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of LSQ: signed ``(2^(b-1), 2^(b-1) - 1)``, unsigned ``(0, 2^b - 1)``."""
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {signed!r}")
    bits = check_bits(bits, min_bits=2 if signed else 1)
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def lsq_init(x: ArrayLike, *, bits: int, signed: bool = True, axis: Any = None) -> jax.Array:
    """LSQ's initial step ``2 <|x|> / sqrt(Q_P)`` (per tensor, or per channel along ``axis``).

    Returns:
      The step in keep-dims form (ones on the reduced axes).
    """
    _, q_p = lsq_levels(bits, signed=signed)
    x = _float_array("x", x)
    axes = check_axis(axis, x.ndim)
    return 2.0 * jnp.mean(jnp.abs(x), axis=reduce_axes(x.ndim, axes), keepdims=True) / math.sqrt(q_p)


def lsq(x: ArrayLike, step: ArrayLike, *, bits: int, signed: bool = True, grad_scale: float | None = None
        ) -> jax.Array:
    """Learned Step Size Quantization: ``round(clip(x / s, -Q_N, Q_P)) * s`` with the paper's gradients.

    Gradients (Esser et al., eqs. 3-5), with ``u = x / s``:

    * ``d out / d x = 1`` if ``-Q_N < u < Q_P`` else 0 (straight-through inside the range);
    * ``d out / d s = g * (round(u) - u)`` if ``-Q_N < u < Q_P``, ``g * (-Q_N)`` if
      ``u <= -Q_N``, ``g * Q_P`` if ``u >= Q_P``;

    where ``g`` is the gradient scale, by default ``1 / sqrt(N * Q_P)`` with ``N``
    the number of elements of ``x`` sharing one step (``x.size / step.size``: the
    layer's weight count ``N_W`` for a per-tensor weight step). For activations
    the paper's ``N`` is the number of features ``N_F`` of one example: pass
    ``grad_scale=1 / sqrt(N_F * Q_P)`` when ``x`` holds a batch. The scale is
    applied as in the paper, ``s_g = s * g + stop_gradient(s - s * g)``, so the
    forward value is unchanged.

    Args:
      x: floating array (weights or activations).
      step: the learned step ``s > 0``: a scalar, or per channel (broadcastable
        to ``x``, e.g. keep-dims from :func:`lsq_init`).
      bits: Python int; 2..16 when ``signed``, 1..16 otherwise.
      signed: signed levels ``[-2^(b-1), 2^(b-1)-1]`` (weights) or unsigned
        ``[0, 2^b-1]`` (ReLU activations).
      grad_scale: override ``g`` (a positive number), or None for the default.

    Returns:
      The quantized tensor, ``x``'s shape and dtype (at most ``2^bits`` levels per step).

    References:
      Esser, McKinstry, Bablani, Appuswamy & Modha, "Learned Step Size
      Quantization", ICLR 2020, arXiv:1902.08153.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jax.random.normal(jax.random.key(0), (64, 32))
      >>> s = lsq_init(w, bits=4)
      >>> wq = lsq(w, s, bits=4)
      >>> gw, gs = jax.grad(lambda w, s: jnp.sum(lsq(w, s, bits=4) ** 2), argnums=(0, 1))(w, s)
      >>> gs.shape
      (1, 1)
    """
    q_n, q_p = lsq_levels(bits, signed=signed)
    x = _float_array("x", x)
    s = per_channel("step", step, x.shape, ()).astype(x.dtype)
    if _validate.is_concrete(s) and s.size and float(jnp.min(s)) <= 0:
        raise ValueError(f"step must be > 0, got min {float(jnp.min(s))}")
    if grad_scale is None:
        n = max(x.size // max(s.size, 1), 1)
        g = 1.0 / math.sqrt(n * q_p)
    else:
        g = float(_validate.number("grad_scale", grad_scale, min=0.0, min_inclusive=False))
    return _lsq(x, s, g, q_n=q_n, q_p=q_p)


@functools.partial(jax.jit, static_argnames=("q_n", "q_p"))
def _lsq(x, s, g, *, q_n, q_p):
    s_g = s * g + jax.lax.stop_gradient(s - s * g)
    u = x / s_g
    # clip with the paper's strict inequalities: the clipped ends are constants (no gradient in u)
    u_c = jnp.where(u <= -q_n, -q_n, jnp.where(u >= q_p, q_p, u)).astype(x.dtype)
    return straight_through(u_c, jnp.round(u_c)) * s_g


def pact(x: ArrayLike, alpha: ArrayLike, *, bits: int) -> jax.Array:
    """PACT: clip activations to ``[0, alpha]`` with a learned ``alpha``, then quantize to ``bits`` bits.

    Forward: ``y = clip(x, 0, alpha)`` (the paper's ``0.5 (|x| - |x - alpha| + alpha)``),
    ``y_q = round(y (2^b - 1) / alpha) alpha / (2^b - 1)``. Gradients (the paper's
    eqs. 2-3, STE through the rounding): ``d y_q / d alpha = 1`` where
    ``x >= alpha``, else 0; ``d y_q / d x = 1`` where ``0 < x < alpha``, else 0.
    The rounding's own dependence on ``alpha`` (through the step) is ignored,
    as in the paper. The paper also puts an L2 penalty on ``alpha``; add it to
    your loss.

    Args:
      x: activations (floating, any shape).
      alpha: the learned clipping level ``> 0``, scalar or broadcastable to ``x``
        (per channel). The paper initialises it to 10 (CIFAR-10).
      bits: Python int in 1..16.

    Returns:
      ``y_q``, ``x``'s shape, on the grid ``{0, alpha/(2^b-1), ..., alpha}``.

    References:
      Choi, Wang, Venkataramani, Chuang, Srinivasan & Gopalakrishnan, "PACT:
      Parameterized Clipping Activation for Quantized Neural Networks",
      arXiv:1805.06085.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([-1.0, 0.3, 0.8, 2.5])
      >>> pact(x, 2.0, bits=2).tolist()
      [0.0, 0.0, 0.6666666865348816, 2.0]
      >>> float(jax.grad(lambda a: pact(x, a, bits=2).sum())(2.0))   # one x >= alpha
      1.0
    """
    bits = check_bits(bits)
    x = _float_array("x", x)
    a = jnp.asarray(alpha, x.dtype)
    try:
        jnp.broadcast_shapes(a.shape, x.shape)
    except ValueError:
        raise ValueError(f"alpha of shape {a.shape} does not broadcast to x's shape {x.shape}") from None
    if _validate.is_concrete(a) and a.size and float(jnp.min(a)) <= 0:
        raise ValueError(f"alpha must be > 0, got min {float(jnp.min(a))}")
    return _pact(x, a, bits=bits)


@functools.partial(jax.jit, static_argnames="bits")
def _pact(x, a, *, bits):
    a_b = jnp.broadcast_to(a, x.shape)
    y = jnp.where(x >= a_b, a_b, jnp.where(x > 0, x, jnp.zeros_like(x)))
    step = jax.lax.stop_gradient(a_b) / (2 ** bits - 1)
    return straight_through(y, jnp.round(y / step) * step)
