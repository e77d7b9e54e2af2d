"""N:M fine-grained structured sparsity, trained from scratch with SR-STE.

An N:M sparse weight has at most N non-zeros in every group of M consecutive
weights along the **input (reduction) axis** -- the pattern NVIDIA's sparse
tensor cores accelerate (2:4). Grouping axis: NVIDIA's ASP and the SR-STE paper
group the input channels of a PyTorch weight (``(out, in)`` for linear layers,
``(out, in, kh, kw)`` for convolutions), i.e. the axis the dot product reduces
over. In Flax layouts that is axis ``-2`` for both a dense kernel ``(in, out)``
and a convolution kernel ``HWIO`` (the ``I`` axis), which is this module's
default; for a conv kernel each group is M consecutive input channels at one
spatial tap and one output channel. ``axis`` can be changed (JaxPruner's
``NByM`` uses ``axis=-1`` by default, i.e. the output axis of a Flax kernel).

**Mask rule.** In each group the N entries with the largest ``|w|`` are kept;
among equal magnitudes the lower index in the group is kept (JaxPruner keeps
the *higher* index on ties in its N:M calculator; on weights without ties, e.g.
any continuous initialisation, the two agree: see
``benchmarks/bench_prune_vs_jaxpruner.py``).

**SR-STE.** Training uses the sparse weights ``W̃ = W ⊙ E(W)`` in the forward
pass, where the mask ``E`` is recomputed from the current dense weights at
every step, and in the backward pass the straight-through estimator plus the
sparse-refined term (Zhou et al., Eq. 6):

    ∂W = ∂L/∂W̃ + λ_W · (1 − E) ⊙ W,        λ_W = 2e-4 by default,

which decays the pruned weights towards zero so that the mask stabilises.
``lambda_w=0`` is the plain STE baseline of the paper's tables. Implemented as
a ``jax.custom_vjp`` (:func:`srste`); :func:`nm_model` wraps a
:class:`jaxrob.models.Model` so that :func:`jaxrob.train.fit` trains it.

References:
  Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun & Li, "Learning N:M Fine-grained
  Structured Sparse Neural Networks From Scratch", ICLR 2021, arXiv 2102.04010.
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv 2104.08378
  (NVIDIA ASP, 2:4 along the input channels).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.prune._masks import Where, _check_where, path_name

PyTree = Any
_PAIRWISE_MAX_M = 32  # up to this group size ranks come from pairwise comparisons (no sort)


def _check_nm(n: Any, m: Any) -> tuple[int, int]:
    m = _validate.number("m", m, min=1, integer=True)
    n = _validate.number("n", n, min=1, integer=True)
    if n > m:
        raise ValueError(f"n must be <= m (keep n of every m weights), got n={n}, m={m}")
    return n, m


def _check_axis(shape: tuple[int, ...], axis: int, m: int, name: str = "w") -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {axis!r}")
    nd = len(shape)
    if nd == 0:
        raise ValueError(f"{name} must have at least one dimension for N:M grouping, got a scalar")
    if not -nd <= axis < nd:
        raise ValueError(f"axis {axis} is out of range for {name} of shape {shape} ({nd} dims)")
    ax = axis % nd
    if shape[ax] % m:
        raise ValueError(f"{name} has shape {shape}: its reduction axis {axis} has {shape[ax]} entries, which is "
                         f"not divisible by m={m}; N:M groups need a multiple of m (exclude this leaf with `where`, "
                         "e.g. a first conv layer with 1 or 3 input channels)")
    return ax


def _group_ranks(s: jax.Array) -> jax.Array:
    """Rank (0 = largest) of each entry within its group (last axis); lower index wins ties."""
    m = s.shape[-1]
    if m <= _PAIRWISE_MAX_M:
        a, b = s[..., :, None], s[..., None, :]       # a: entry i, b: entry j
        idx = jnp.arange(m)
        before = (b > a) | ((b == a) & (idx[None, :] < idx[:, None]))
        return jnp.sum(before, axis=-1, dtype=jnp.int32)
    order = jnp.argsort(-s, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def _nm_mask_impl(w: jax.Array, n: int, m: int, ax: int) -> jax.Array:
    s = jnp.moveaxis(jnp.abs(w), ax, -1)
    g = s.reshape(s.shape[:-1] + (s.shape[-1] // m, m))
    keep = (_group_ranks(g) < n).reshape(s.shape)
    return jnp.moveaxis(keep, -1, ax)


def nm_mask(w: jax.typing.ArrayLike, *, n: int, m: int, axis: int = -2) -> jax.Array:
    """The N:M mask of ``w``: the ``n`` largest ``|w|`` of every ``m`` consecutive entries along ``axis``.

    Args:
      w: weights, e.g. a dense kernel ``(in, out)`` or a conv kernel ``(H, W, I, O)``.
      n: weights kept per group, ``1 <= n <= m``.
      m: group size; ``w.shape[axis]`` must be a multiple of ``m``.
      axis: grouping axis, default ``-2`` (the input/reduction axis of Flax kernels).

    Returns:
      Bool array of ``w``'s shape with exactly ``n`` ``True`` per group.

    Raises:
      ValueError: ``n > m``, ``axis`` out of range, or ``w.shape[axis] % m != 0``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.1, 3.], [-2., 1.], [0.5, 0.], [4., -1.]])   # (in=4, out=2)
      >>> nm_mask(w, n=2, m=4).T.astype(int).tolist()
      [[0, 1, 0, 1], [1, 1, 0, 0]]
    """
    n, m = _check_nm(n, m)
    w = jnp.asarray(w)
    ax = _check_axis(w.shape, axis, m)
    return _nm_mask_jit(w, n, m, ax)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_mask_jit(w, n, m, ax):
    return _nm_mask_impl(w, n, m, ax)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _srste(w, n, m, ax, lambda_w):
    return jnp.where(_nm_mask_impl(w, n, m, ax), w, jnp.zeros((), w.dtype))


def _srste_fwd(w, n, m, ax, lambda_w):
    mask = _nm_mask_impl(w, n, m, ax)
    return jnp.where(mask, w, jnp.zeros((), w.dtype)), (w, mask)


def _srste_bwd(n, m, ax, lambda_w, res, g):
    w, mask = res
    return (g + jnp.where(mask, jnp.zeros((), w.dtype), jnp.asarray(lambda_w, w.dtype) * w),)


_srste.defvjp(_srste_fwd, _srste_bwd)


def srste(w: jax.typing.ArrayLike, *, n: int, m: int, lambda_w: float = 2e-4, axis: int = -2) -> jax.Array:
    """N:M-sparse weights with the SR-STE gradient.

    Forward: ``w ⊙ nm_mask(w)``. Backward: ``g + lambda_w * (1 - mask) ⊙ w``
    (straight-through for every weight, plus the sparse-refined decay of the
    pruned ones); ``lambda_w=0`` gives the plain STE.

    Args:
      w: dense weights.
      n, m, axis: the N:M pattern, see :func:`nm_mask`.
      lambda_w: sparse-refined regularisation ``λ_W >= 0`` (paper: 2e-4).

    Returns:
      The N:M-sparse weights, shape and dtype of ``w``.

    Raises:
      ValueError: bad pattern (see :func:`nm_mask`) or ``lambda_w < 0``.

    References:
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", ICLR 2021, arXiv 2102.04010, Eq. (6).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([[1.], [-3.], [2.], [0.5]])
      >>> srste(w, n=2, m=4, lambda_w=0.1).ravel().tolist()
      [0.0, -3.0, 2.0, 0.0]
      >>> jax.grad(lambda v: srste(v, n=2, m=4, lambda_w=0.1).sum())(w).ravel().tolist()
      [1.100000023841858, 1.0, 1.0, 1.0499999523162842]
    """
    n, m = _check_nm(n, m)
    lam = _validate.number("lambda_w", lambda_w, min=0.0)
    w = jnp.asarray(w)
    ax = _check_axis(w.shape, axis, m)
    return _srste(w, n, m, ax, float(lam))


def _selected(params: PyTree, where: Where | None, m: int, axis: int) -> tuple[list, Any, tuple[bool, ...]]:
    where = _check_where(where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    sel = []
    for p, x in flat:
        name = path_name(p)
        chosen = bool(where(name, x))
        if chosen:
            _check_axis(tuple(np.shape(x)), axis, m, name=f"leaf {name!r}")
        sel.append(chosen)
    return [x for _, x in flat], treedef, tuple(sel)


def nm_masks(params: PyTree, *, n: int, m: int, axis: int = -2, where: Where | None = None) -> PyTree:
    """N:M masks for every leaf ``where`` selects (default: ``kernel`` leaves); all-``True`` elsewhere.

    Raises:
      ValueError: a selected leaf whose ``axis`` is not a multiple of ``m`` (the
        message names it; exclude it with ``where``).

    Example:
      >>> import jax.numpy as jnp
      >>> masks = nm_masks({"fc": {"kernel": jnp.arange(8.).reshape(4, 2), "bias": jnp.ones(2)}}, n=1, m=2)
      >>> masks["fc"]["kernel"].astype(int).tolist(), masks["fc"]["bias"].tolist()
      ([[0, 0], [1, 1], [0, 0], [1, 1]], [True, True])
    """
    n, m = _check_nm(n, m)
    leaves, treedef, sel = _selected(params, where, m, axis)
    out = [_nm_mask_jit(jnp.asarray(x), n, m, axis % np.ndim(x)) if s else jnp.ones(np.shape(x), bool)
           for x, s in zip(leaves, sel)]
    return jax.tree.unflatten(treedef, out)


def nm_sparse_params(params: PyTree, *, n: int, m: int, lambda_w: float = 2e-4, axis: int = -2,
                     where: Where | None = None) -> PyTree:
    """``params`` with :func:`srste` applied to every selected leaf (others unchanged).

    Differentiable with the SR-STE rule; use inside a loss, or through
    :func:`nm_model`. Arguments as in :func:`srste` and :func:`nm_masks`.
    """
    n, m = _check_nm(n, m)
    lam = float(_validate.number("lambda_w", lambda_w, min=0.0))
    leaves, treedef, sel = _selected(params, where, m, axis)
    out = [_srste(x, n, m, axis % np.ndim(x), lam) if s else x for x, s in zip(leaves, sel)]
    return jax.tree.unflatten(treedef, out)


def nm_model(model: Any, *, n: int, m: int, lambda_w: float = 2e-4, axis: int = -2,
             where: Where | None = None) -> Any:
    """A model trained N:M-sparse from scratch with SR-STE.

    Returns the same :class:`~jaxrob.models.Model` (name suffixed ``"+{n}:{m}"``)
    whose ``apply_fn`` and ``train_apply`` run on
    ``nm_sparse_params(params, ...)``: the forward pass always uses the N:M
    weights of the current dense weights, and :func:`jaxrob.train.fit` updates the
    dense weights with the SR-STE gradient. ``variables`` stay dense (SR-STE
    keeps training them); the deployed sparse weights are
    ``apply_masks(params, nm_masks(params, ...))``, which gives exactly the
    same outputs. A foreign ``(apply_fn, params)`` returns ``(apply_fn', params)``.

    Args:
      model: a :class:`jaxrob.models.Model` or ``(apply_fn, params)``.
      n, m, lambda_w, axis, where: see :func:`srste` and :func:`nm_masks`.

    Returns:
      The wrapped model.

    Raises:
      ValueError: a selected leaf cannot be grouped (see :func:`nm_mask`).
      TypeError: ``model`` is not a model.

    Example:
      >>> import jax
      >>> from jaxrob import models
      >>> net = nm_model(models.create("mlp", hidden_sizes=(8,), key=jax.random.key(0)), n=2, m=4)
      >>> net.name, net.apply_fn(net.variables, jax.numpy.zeros((1, 28, 28, 1))).shape
      ('mlp+2:4', (1, 10))
    """
    n, m = _check_nm(n, m)
    lam = float(_validate.number("lambda_w", lambda_w, min=0.0))
    sparse = functools.partial(nm_sparse_params, n=n, m=m, lambda_w=lam, axis=axis, where=where)
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        apply_fn, params = model
        sparse(params)  # eager shape checks

        def foreign_apply(p, x):
            return apply_fn(sparse(p), x)

        return foreign_apply, params
    if not all(hasattr(model, a) for a in ("apply_fn", "train_apply", "variables")):
        raise TypeError("model must be a jaxrob.models.Model or a tuple (apply_fn, params); "
                        f"got {type(model).__name__}")
    _selected(model.params, where, m, axis)  # eager shape checks
    base_apply, base_train = model.apply_fn, model.train_apply

    def apply_fn(variables, x):
        return base_apply({**variables, "params": sparse(variables["params"])}, x)

    def train_apply(variables, x, *, key=None):
        return base_train({**variables, "params": sparse(variables["params"])}, x, key=key)

    return dataclasses.replace(model, apply_fn=apply_fn, train_apply=train_apply, name=f"{model.name}+{n}:{m}")
