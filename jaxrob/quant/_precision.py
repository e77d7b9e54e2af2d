"""Per-layer precision from noise gains (Sakr, Kim & Shanbhag, ICML 2017).

Model quantization of a tensor ``t`` with step ``Delta_t`` as additive noise,
independent and uniform on ``[-Delta_t / 2, Delta_t / 2]`` (variance
``Delta_t^2 / 12``). To first order the noise moves the logit margin
``z_yhat - z_i`` by ``sum_t <d(z_yhat - z_i)/dt, q_t>``; Chebyshev's
inequality (one-sided by symmetry) bounds the probability that the quantized
network's decision differs from the float one (the *mismatch probability*):

    p_m <= sum_t Delta_t^2 * E_t,
    E_t = E_x[ sum_{i != yhat} ||d(z_yhat - z_i)/dt||^2 / (24 (z_yhat - z_i)^2) ],

the paper's bound (Theorem 1) split over tensors; ``E_t`` is tensor ``t``'s
*noise gain*. A ``B``-bit signed quantizer over ``[-r_t, r_t]`` has
``Delta_t = r_t 2^(1 - B)``, so ``t``'s term is ``4^(1 - B_t) r_t^2 E_t``.
Equalising the terms across tensors gives the per-layer rule

    B_t = B_min + round(0.5 * log2(r_t^2 E_t / min_s r_s^2 E_s))

(the tensor with the smallest scaled gain gets ``B_min``; every 4x of gain
costs one bit). :func:`assign_precision` applies it; :func:`precision_for_budget`
picks the smallest ``B_min`` whose bound meets a mismatch budget.

Gains are computed for weights (any params leaves, default every ``kernel``)
with :func:`weight_noise_gains`, and for activations with
:func:`activation_noise_gains` when the model exposes them: it takes a
*hooked* forward ``hooked_apply(params, x, noise) -> logits`` that adds
``noise[name]`` to activation ``name`` (the gradient with respect to a zero
perturbation is the gradient with respect to the activation). Plain jaxrob
``Model``s have no such hook, so for them only weights are covered.

Decisions: gains are averaged over the examples given (the paper uses the
data set); examples whose top-2 margin is 0 are skipped (the bound is
infinite there); ``r_t`` defaults to ``max|t|`` for weights; the assignment
rounds to the nearest integer as the rule above states.

References:
  Sakr, Kim, Shanbhag, "Analytical Guarantees on Numerical Precision of Deep
  Neural Networks", ICML 2017 (PMLR 70:3007-3016).
  Sakr & Shanbhag, "An Analytical Method to Determine Minimum Per-Layer
  Precision of Deep Neural Networks", ICASSP 2018 (the per-layer rule).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrob import _validate
from jaxrob.quant._tree import Where, _check_where, leaf_path

PyTree = Any


def _check_batch(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {x.shape}")
    return x


def _gains(fn: Callable[[PyTree, jax.Array], jax.Array], sites: PyTree, x: jax.Array, batch_size: int) -> PyTree:
    """Noise gain of every leaf of ``sites`` for ``fn(sites, x_single) -> logits (C,)``, averaged over ``x``."""

    def one(xi):
        z = fn(sites, xi)
        if z.ndim != 1:
            raise ValueError(f"the model must return logits of shape (C,) per example, got {z.shape}")
        yhat = jnp.argmax(z)
        jac = jax.jacrev(lambda s: fn(s, xi))(sites)  # leaves (C, *leaf.shape)
        margin = z[yhat] - z
        other = jnp.arange(z.shape[0]) != yhat
        valid = jnp.all(jnp.where(other, margin > 0, True))
        weight = jnp.where(other, 1.0 / (24.0 * jnp.where(other & valid, margin, 1.0) ** 2), 0.0)

        def per_leaf(j):
            d = j[yhat][None] - j  # (C, ...)
            sq = jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1)
            return jnp.where(valid, jnp.sum(weight * sq), 0.0)

        return jax.tree.map(per_leaf, jac), valid.astype(jnp.float32)

    per_example, valid = jax.lax.map(one, x, batch_size=min(batch_size, x.shape[0]))
    count = jnp.maximum(valid.sum(), 1.0)
    return jax.tree.map(lambda g: g.sum() / count, per_example)


def weight_noise_gains(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, x: ArrayLike, *,
                       where: Where | None = None, batch_size: int = 32) -> dict[str, float]:
    """Noise gains ``E_t`` of the selected weight tensors (unscaled: multiply by ``r_t^2`` for the rule).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``.
      params: its first argument (for a jaxrob ``Model``: ``model.variables``).
      x: inputs ``(N, ...)``; the gains are means over them.
      where: ``where(path, leaf) -> bool`` selecting the tensors; default ``kernel`` leaves.
      batch_size: examples processed at once (memory: one Jacobian per example).

    Returns:
      ``{path: E_t}`` (floats).

    Example:
      >>> import jax.numpy as jnp
      >>> apply_fn = lambda p, x: x @ p["dense"]["kernel"]
      >>> p = {"dense": {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0]])}}
      >>> weight_noise_gains(apply_fn, p, jnp.array([[1.0, 0.0]]))  # 2 |x|^2 / (24 * 1^2)
      {'dense/kernel': 0.0833...}
    """
    x = _check_batch(x)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    where = _check_where(where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = [i for i, (p, a) in enumerate(flat) if where(leaf_path(p), a)]
    if not chosen:
        raise ValueError("no weights selected: params has no leaf named 'kernel' (pass where=...)")
    leaves = [a for _, a in flat]
    names = [leaf_path(flat[i][0]) for i in chosen]

    def fn(sites, xi):
        full = list(leaves)
        for i, s in zip(chosen, sites):
            full[i] = s
        return apply_fn(jax.tree_util.tree_unflatten(treedef, full), xi[None])[0]

    gains = jax.jit(_gains, static_argnums=(0, 3))(fn, [leaves[i] for i in chosen], x, batch_size)
    return {n: float(g) for n, g in zip(names, gains)}


def activation_noise_gains(hooked_apply: Callable[[PyTree, jax.Array, dict], jax.Array], params: PyTree,
                           x: ArrayLike, shapes: Mapping[str, tuple[int, ...]], *,
                           batch_size: int = 32) -> dict[str, float]:
    """Noise gains of activations through a hooked forward pass (gradients w.r.t. zero perturbations).

    Args:
      hooked_apply: ``hooked_apply(params, x, noise) -> logits (B, C)`` that
        adds ``noise[name]`` (broadcast over the batch) to activation ``name``
        -- the quantity that is quantized (e.g. each layer's input).
      params: model parameters.
      x: inputs ``(N, ...)``.
      shapes: per-example shape of each hooked activation, ``{name: shape}``.
      batch_size: examples processed at once.

    Returns:
      ``{name: E_t}``.
    """
    x = _check_batch(x)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    if not shapes:
        raise ValueError("shapes must name at least one activation, got an empty mapping")
    zeros = {k: jnp.zeros(tuple(s), x.dtype) for k, s in shapes.items()}

    def fn(noise, xi):
        return hooked_apply(params, xi[None], {k: v[None] for k, v in noise.items()})[0]

    gains = jax.jit(_gains, static_argnums=(0, 3))(fn, zeros, x, batch_size)
    return {k: float(v) for k, v in gains.items()}


def weight_ranges(params: PyTree, *, where: Where | None = None) -> dict[str, float]:
    """``r_t = max|t|`` of every selected weight tensor, ``{path: r_t}``."""
    where = _check_where(where)
    out = {}
    for p, a in jax.tree_util.tree_flatten_with_path(params)[0]:
        if where(leaf_path(p), a):
            out[leaf_path(p)] = float(jnp.max(jnp.abs(a)))
    return out


def step_size(bits: int, value_range: float) -> float:
    """``Delta = r 2^(1 - B)``: the step of a ``B``-bit signed fixed-point quantizer over ``[-r, r]``."""
    bits = _validate.number("bits", bits, min=1, integer=True)
    value_range = _validate.number("value_range", value_range, min=0)
    return float(value_range) * 2.0 ** (1 - bits)


def quantize_fixed_point(x: ArrayLike, *, bits: int, value_range: float) -> jax.Array:
    """Round to the grid ``k Delta``, ``Delta = r 2^(1 - B)``, clipped to ``[-r, r - Delta]`` (two's complement)."""
    delta = step_size(bits, value_range)
    x = jnp.asarray(x)
    if delta == 0:
        return jnp.zeros_like(x)
    return jnp.clip(jnp.round(x / delta) * delta, -value_range, value_range - delta).astype(x.dtype)


def _check_maps(gains: Mapping[str, float], ranges: Mapping[str, float]) -> None:
    if not gains:
        raise ValueError("gains must be a non-empty mapping {tensor: E_t}")
    missing = sorted(set(gains) - set(ranges))
    if missing:
        raise ValueError(f"ranges has no entry for {missing}")
    for k, g in gains.items():
        _validate.number(f"gains[{k!r}]", g, min=0)
        _validate.number(f"ranges[{k!r}]", ranges[k], min=0)


def mismatch_bound(gains: Mapping[str, float], ranges: Mapping[str, float], bits: Mapping[str, int]) -> float:
    """The bound ``sum_t Delta_t^2 E_t`` on the mismatch probability (may exceed 1: then it says nothing).

    Example:
      >>> mismatch_bound({"a": 0.5}, {"a": 1.0}, {"a": 3})   # (2^-2)^2 * 0.5
      0.03125
    """
    _check_maps(gains, ranges)
    return float(sum(step_size(bits[k], ranges[k]) ** 2 * g for k, g in gains.items()))


def assign_precision(gains: Mapping[str, float], ranges: Mapping[str, float], *, min_bits: int) -> dict[str, int]:
    """Per-tensor bits ``B_t = min_bits + round(0.5 log2(r_t^2 E_t / min_s r_s^2 E_s))``.

    Tensors with zero scaled gain get ``min_bits``.

    Example:
      >>> assign_precision({"a": 1.0, "b": 4.0, "c": 64.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, min_bits=4)
      {'a': 4, 'b': 5, 'c': 7}
    """
    _check_maps(gains, ranges)
    min_bits = _validate.number("min_bits", min_bits, min=1, integer=True)
    scaled = {k: ranges[k] ** 2 * g for k, g in gains.items()}
    positive = [v for v in scaled.values() if v > 0]
    if not positive:
        return {k: min_bits for k in scaled}
    lo = min(positive)
    return {k: min_bits + (int(round(0.5 * math.log2(v / lo))) if v > 0 else 0) for k, v in scaled.items()}


def precision_for_budget(gains: Mapping[str, float], ranges: Mapping[str, float], *, budget: float,
                         max_bits: int = 32) -> tuple[dict[str, int], float]:
    """The smallest ``B_min`` whose :func:`assign_precision` bits give ``mismatch_bound <= budget``.

    Returns:
      ``(bits, bound)``.

    Raises:
      ValueError: if even ``B_min = max_bits`` misses the budget.
    """
    budget = _validate.number("budget", budget, min=0, min_inclusive=False)
    for b in range(1, int(max_bits) + 1):
        bits = assign_precision(gains, ranges, min_bits=b)
        bound = mismatch_bound(gains, ranges, bits)
        if bound <= budget:
            return bits, bound
    raise ValueError(f"no B_min <= {max_bits} meets the mismatch budget {budget}")


