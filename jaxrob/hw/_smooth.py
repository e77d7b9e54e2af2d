"""Relaxations that make integer-valued hardware costs differentiable, exact at integer points.

Costs of arrays and tilings contain ceilings (``ceil(M / R)`` tiles), maxima and integer
sizes.  :func:`interp_int` extends a function ``f`` defined on integers to the reals by
multilinear interpolation between the integer neighbours of its arguments:

    ``f~(x) = sum over the 2**d corners c of floor(x) + {0, 1}**d of w_c(x) f(c)``,
    ``w_c(x) = prod_i (frac(x_i) if c_i = ceil else 1 - frac(x_i))``.

So ``f~ == f`` at every integer point (the property the tests check), ``f~`` is continuous
and piecewise multilinear, and ``jax.grad(f~)`` at a non-integer point is the slope between
the neighbouring integer designs (a finite difference of the exact cost).  It costs ``2**d``
evaluations of ``f``; use it for the few integer hardware knobs (array rows/columns,
bit-widths), and keep continuous quantities (densities, voltages) continuous.

:func:`soft_ceil` is the other documented option, for a ceiling *inside* a formula whose
argument is not an integer knob: ``ceil`` on the forward pass and the straight-through
gradient of the identity (``d ceil(x)/dx := 1``).
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp


def interp_int(f: Callable[..., jax.Array], *xs: jax.typing.ArrayLike) -> jax.Array:
    """Multilinear interpolation of ``f`` (defined on integers) between the integer neighbours of ``xs``.

    Args:
      f: a function of ``d`` integer-valued (float-typed) arrays, broadcasting like ``jnp``.
      *xs: ``d`` real-valued arrays (same shape or broadcastable).

    Returns:
      ``f~(xs)``: equal to ``f(xs)`` wherever every ``xs[i]`` is an integer.
    """
    xs = [jnp.asarray(x, jnp.float32) for x in xs]
    lo = [jax.lax.stop_gradient(jnp.floor(x)) for x in xs]
    frac = [x - l for x, l in zip(xs, lo)]
    total = 0.0
    for corner in itertools.product((0, 1), repeat=len(xs)):
        w = 1.0
        for c, t in zip(corner, frac):
            w = w * (t if c else 1.0 - t)
        total = total + w * f(*[l + c for l, c in zip(lo, corner)])
    return total


@jax.custom_jvp
def soft_ceil(x: jax.Array) -> jax.Array:
    """``ceil(x)`` forward; straight-through gradient (derivative 1)."""
    return jnp.ceil(x)


@soft_ceil.defjvp
def _soft_ceil_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.ceil(x), dx


def ceil_div(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> jax.Array:
    """``ceil(a / b)`` for integer-valued floats, exact even where XLA turns ``/`` into a multiply by ``1/b``.

    ``jnp.ceil(21. / 7.)`` can come out as 4 (``21 * (1/7) = 3.0000002``); the products below
    are exact for integers below ``2**24``, so one correction step each way restores the
    integer quotient.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    q = jnp.ceil(a / b)
    q = jnp.where((q - 1.0) * b >= a, q - 1.0, q)
    return jnp.where(q * b < a, q + 1.0, q)


def floor_div(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> jax.Array:
    """``floor(a / b)`` for integer-valued floats, exact in the same sense as :func:`ceil_div`."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    q = jnp.floor(a / b)
    q = jnp.where(q * b > a, q - 1.0, q)
    return jnp.where((q + 1.0) * b <= a, q + 1.0, q)
