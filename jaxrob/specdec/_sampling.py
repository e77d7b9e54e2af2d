"""Temperature / top-k / top-p sampling as pure, jittable functions.

Speculative sampling needs the *exact* distributions the draft and the target sample from
(the acceptance ratio is ``p(x) / q(x)`` of the processed vectors), so the processing is
split into :func:`sampling_probs` (logits -> the probability vector actually sampled from)
and :func:`sample_from_probs` (probability vector -> token); :func:`sample` does both and
returns the vector alongside the token.

Order of the transforms (the order of Hugging Face ``generate``'s warpers): divide the
logits by the temperature, keep the ``top_k`` largest (exactly ``k`` tokens; ties are broken
towards the lower token id), renormalize, then keep the smallest prefix of the sorted
tokens whose probability reaches ``top_p`` (nucleus sampling: a token is kept when the
mass of the tokens ranked before it is below ``top_p``, so at least one token survives),
and renormalize again.  ``temperature == 0`` means greedy: a one-hot vector on the argmax
(lowest id among ties).  ``top_k == 0`` and ``top_p == 1`` disable those filters.  All three
hyperparameters may be traced arrays (no recompilation when they change).

References:
  The Curious Case of Neural Text Degeneration (nucleus / top-p sampling), Holtzman et al.,
  ICLR 2020, arXiv:1904.09751.  Hierarchical Neural Story Generation (top-k sampling),
  Fan et al., ACL 2018, arXiv:1805.04833.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate

__all__ = ["sampling_probs", "sample_from_probs", "sample"]


def _check(logits: Any, temperature: Any, top_k: Any, top_p: Any) -> jax.Array:
    if not hasattr(logits, "dtype") or not hasattr(logits, "shape"):
        logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., vocab) with vocab >= 1, got {logits.shape}")
    vocab = logits.shape[-1]
    if _validate.is_concrete(temperature):
        if np.ndim(temperature) != 0:
            raise ValueError(f"temperature must be a scalar, got shape {np.shape(temperature)}")
        _validate.number("temperature", temperature, min=0.0)
    if _validate.is_concrete(top_k):
        if np.ndim(top_k) != 0:
            raise ValueError(f"top_k must be a scalar, got shape {np.shape(top_k)}")
        _validate.number("top_k", top_k, min=0, max=vocab, integer=True)
    elif not jnp.issubdtype(jnp.result_type(top_k), jnp.integer):
        raise TypeError(f"top_k must be an integer, got a traced {jnp.result_type(top_k)} value")
    if _validate.is_concrete(top_p):
        if np.ndim(top_p) != 0:
            raise ValueError(f"top_p must be a scalar, got shape {np.shape(top_p)}")
        _validate.number("top_p", top_p, min=0.0, max=1.0, min_inclusive=False)
    return logits


_BLOCK = 256


def _prefix_count(mask: jax.Array) -> jax.Array:
    """Number of ``True`` entries strictly before each position (last axis), in two levels:
    counts within blocks of 256, then across blocks (one long prefix sum is slow on XLA:CPU)."""
    v = mask.shape[-1]
    nb = -(-v // _BLOCK)
    m = jnp.pad(mask.astype(jnp.int32), [(0, 0)] * (mask.ndim - 1) + [(0, nb * _BLOCK - v)])
    m = m.reshape(mask.shape[:-1] + (nb, _BLOCK))
    within = jnp.cumsum(m, axis=-1) - m
    offsets = jnp.cumsum(m.sum(-1), axis=-1) - m.sum(-1)
    return (within + offsets[..., None]).reshape(mask.shape[:-1] + (nb * _BLOCK,))[..., :v]


def _bits(p: jax.Array) -> jax.Array:
    """Order-preserving int32 view of non-negative float32 values."""
    return jax.lax.bitcast_convert_type(p, jnp.int32)


def _keep_top_k(p: jax.Array, k: jax.Array) -> jax.Array:
    """Mask of the ``k`` largest entries of ``p >= 0`` (one row), ties to the lower index.

    The ``k``-th largest value is found by bisection on the float bits (31 counting passes
    over ``V``) instead of a sort: a sort of 49,152 entries costs tens of milliseconds per
    row on XLA:CPU."""
    b = _bits(p)

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo + 1) // 2
        ok = jnp.sum(b >= mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    kth, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.max(b)))      # largest v: #(b >= v) >= k
    ties = b == kth
    return (b > kth) | (ties & (_prefix_count(ties) < k - jnp.sum(b > kth)))


def _keep_top_p(p: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask of the nucleus of one row ``p`` (normalized): the tokens, in order of decreasing
    probability with ties to the lower index, whose preceding mass is below ``top_p``.

    Bisection on the float bits for the smallest kept value ``u`` -- the smallest value with
    ``sum(p[p > u]) < top_p`` (the mass before ``u``'s first tie) -- then the ties at ``u``
    in index order.  The masses are summed by value rather than along a sorted order, so
    a token can fall on the other side of the boundary only when its preceding mass is
    within float rounding of ``top_p``."""
    b = _bits(p)

    def mass_above(v):
        return jnp.sum(jnp.where(b > v, p, 0.0))

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = mass_above(mid) < top_p
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    _, u = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.max(b)))        # smallest v: mass(> v) < top_p
    ties = b == u
    u_val = jax.lax.bitcast_convert_type(u, jnp.float32)
    return (b > u) | (ties & (mass_above(u) + _prefix_count(ties) * u_val < top_p))


def _probs_row(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    greedy = temperature <= 0
    z = logits.astype(jnp.float32) / jnp.where(greedy, 1.0, temperature)
    k = jnp.where(greedy, 1, jnp.where(top_k > 0, top_k, vocab))
    p = jax.nn.softmax(z)
    keep = jax.lax.cond(k < vocab, lambda: _keep_top_k(p, k), lambda: jnp.ones((vocab,), bool))
    ps = jax.nn.softmax(jnp.where(keep, z, -jnp.inf))
    keep = jax.lax.cond(top_p < 1.0, lambda: keep & _keep_top_p(ps, top_p), lambda: keep)
    return jax.nn.softmax(jnp.where(keep, z, -jnp.inf))


@jax.jit
def _probs(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    row = functools.partial(_probs_row, temperature=temperature, top_k=top_k, top_p=top_p)
    flat = logits.reshape((-1, logits.shape[-1]))
    return jax.vmap(lambda r: row(r))(flat).reshape(logits.shape)


def sampling_probs(logits: jax.typing.ArrayLike, *, temperature: Any = 1.0, top_k: Any = 0,
                   top_p: Any = 1.0) -> jax.Array:
    """The probability vector that temperature / top-k / top-p sampling draws from.

    Args:
      logits: ``(..., V)`` unnormalized log-probabilities (any float dtype; ``-inf`` allowed
        as long as one entry per row is finite).
      temperature: ``>= 0``; ``0`` gives a one-hot vector on the argmax (greedy decoding).
      top_k: keep the ``k`` most likely tokens, ``0 <= k <= V``; ``0`` disables.
      top_p: nucleus mass in ``(0, 1]``; ``1`` disables.

    Returns:
      ``(..., V)`` float32 probabilities summing to 1 over the last axis; zero outside the
      kept support.

    Raises:
      TypeError: non-float logits, or a non-integer ``top_k``.
      ValueError: a hyperparameter outside its range, or logits without a vocabulary axis.

    Example:
      >>> p = sampling_probs(jnp.array([2.0, 1.0, 0.0, -1.0]), temperature=0.7, top_k=3, top_p=0.9)
      >>> bool(p[3] == 0.0), round(float(p.sum()), 6)
      (True, 1.0)
    """
    logits = _check(logits, temperature, top_k, top_p)
    return _probs(logits, jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
                  jnp.asarray(top_p, jnp.float32))


@jax.jit
def _draw(key: jax.Array, probs: jax.Array) -> jax.Array:
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)


def sample_from_probs(probs: jax.typing.ArrayLike, *, key: jax.Array) -> jax.Array:
    """Draws one token per row of ``probs`` (shape ``(..., V)``) -> int32 ``(...)``.

    Tokens with probability 0 are never drawn.
    """
    key = _validate.prng_key("key", key)
    probs = jnp.asarray(probs)
    if probs.ndim < 1:
        raise ValueError(f"probs must have shape (..., vocab), got {probs.shape}")
    return _draw(key, probs)


def sample(logits: jax.typing.ArrayLike, *, key: jax.Array, temperature: Any = 1.0, top_k: Any = 0,
           top_p: Any = 1.0) -> tuple[jax.Array, jax.Array]:
    """Samples tokens and returns the exact distribution they were drawn from.

    Args:
      logits: ``(..., V)``.
      key: a typed PRNG key (``jax.random.key``); one key draws every row.
      temperature, top_k, top_p: as :func:`sampling_probs`.

    Returns:
      ``(tokens, probs)``: int32 ``(...)`` and float32 ``(..., V)``.

    Example:
      >>> tok, p = sample(jnp.zeros(5), key=jax.random.key(0), top_k=2)
      >>> int(tok) in (0, 1), [round(float(x), 3) for x in p]
      (True, [0.5, 0.5, 0.0, 0.0, 0.0])
    """
    key = _validate.prng_key("key", key)
    probs = sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return _draw(key, probs), probs
