"""Unstructured magnitude pruning, per layer or global, one-shot or gradual.

* :func:`topk_mask` -- the one kernel: keep the ``round(n * (1 - s))`` largest
  scores of an array, exactly, with ties broken deterministically;
* :func:`magnitude_masks` / :func:`magnitude_prune` -- masks from ``|w|`` for a
  whole params tree, one sparsity per layer (``scope="layer"``) or one threshold
  across all selected layers (``scope="global"``);
* :func:`polynomial_sparsity` -- the gradual schedule of Zhu & Gupta;
* :func:`gradual_pruning` -- an optax ``GradientTransformation`` wrapper that
  runs that schedule during training (e.g. inside :func:`jaxrob.train.fit`).

**Counting and ties.** A layer of ``n`` prunable weights at sparsity ``s`` keeps
exactly ``k = round(n * (1 - s))`` weights, ``round`` being round-half-to-even
of the float32 product (JaxPruner's ``topk_mask_calculator`` convention, so the
two libraries agree to the weight; see ``benchmarks/bench_prune_vs_jaxpruner.py``);
unlike JaxPruner we do not force ``k >= 1``, so ``s = 1`` prunes everything.
Among equal scores the one with the lower flat (row-major) index is kept, as
``jax.lax.top_k`` and JaxPruner do. Global scope concatenates the selected
leaves in tree order (``jax.tree.leaves`` order) before ranking.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
  for model compression", ICLR 2018 workshop, arXiv 1710.01878 (gradual
  schedule).  Han, Pool, Tran & Dally, "Learning both Weights and Connections
  for Efficient Neural Networks", NeurIPS 2015, arXiv 1506.02626 (magnitude
  criterion).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrob import _validate
from jaxrob.prune._masks import Where, _check_where, apply_masks, dense_masks, path_name

PyTree = Any
SCOPES = ("layer", "global")


def _check_sparsity(name: str, s: Any) -> Any:
    """Validates a sparsity in [0, 1] when concrete; passes tracers through."""
    if isinstance(s, jax.core.Tracer):
        return s
    if isinstance(s, (jax.Array, np.ndarray)) and np.ndim(s) != 0:
        raise ValueError(f"{name} must be a scalar in [0, 1], got an array of shape {np.shape(s)}")
    return _validate.number(name, s, min=0.0, max=1.0)


def _num_keep(n: int, s: Any) -> jax.Array:
    """``round(n * (1 - s))`` (half to even, float32), as int32."""
    return jnp.round(n * (1.0 - jnp.asarray(s, jnp.float32))).astype(jnp.int32)


def _sort_keys(scores: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 ``scores`` (``-0.0`` taken as ``+0.0``)."""
    x = scores.astype(jnp.float32) + jnp.float32(0.0)  # -0.0 + 0.0 == +0.0
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    i = i ^ ((i >> 31) & jnp.int32(0x7FFFFFFF))         # monotone signed-int view of the floats
    return jax.lax.bitcast_convert_type(i, jnp.uint32) ^ jnp.uint32(0x80000000)


def _kth_largest_radix(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The largest ``t`` with ``#{keys >= t} >= k``: bit-by-bit radix select, 32 counting passes, no sort."""
    def body(b, t):
        cand = t | (jnp.uint32(1) << (31 - b).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, t)

    return jax.lax.fori_loop(0, 32, body, jnp.uint32(0))


def _kth_largest_sort(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The same value from one sort of the keys."""
    n = keys.shape[0]
    return jnp.sort(keys)[jnp.clip(n - k, 0, n - 1)]


def _keep_largest_flat(scores: jax.Array, num_keep: jax.Array) -> jax.Array:
    """Bool mask of the ``num_keep`` largest entries of the 1-D ``scores``; lower index wins ties.

    The ``num_keep``-th largest value ``t`` is found on order-preserving integer
    keys of the scores -- on CPU by a radix select over their 32 bits (32
    vectorised counting passes; XLA:CPU's comparison sort is ~10x slower), on
    other platforms by one sort (fast there, while 32 dependent passes cost
    32 kernel launches); both give the same ``t``. Everything above ``t`` is
    kept, and of the entries equal to it the first ``num_keep - #{> t}`` in
    index order. ``num_keep`` may be traced.
    """
    n = scores.shape[0]
    if n == 0:
        return jnp.zeros((0,), bool)
    keys = _sort_keys(scores)
    k = jnp.asarray(num_keep, jnp.int32)
    t = jax.lax.platform_dependent(keys, k, cpu=_kth_largest_radix, default=_kth_largest_sort)
    above = keys > t
    ties = keys == t
    room = k - jnp.sum(above, dtype=jnp.int32)
    keep = above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= room))
    return keep & (k > 0)


def topk_mask(scores: jax.typing.ArrayLike, *, sparsity: float | jax.Array) -> jax.Array:
    """Bool mask keeping the ``round(n * (1 - sparsity))`` largest entries of ``scores``.

    Exact: the mask has exactly that many ``True`` entries whatever the ties;
    among equal scores the lower row-major index is kept. ``sparsity`` may be
    a traced scalar (one compile for every sparsity).

    Args:
      scores: array of any shape (e.g. ``|w|``); larger means more important.
      sparsity: fraction to prune, in ``[0, 1]``.

    Returns:
      Bool array of the shape of ``scores``.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1]`` (checked when concrete).

    Example:
      >>> import jax.numpy as jnp
      >>> topk_mask(jnp.array([3., 1., 2., 1.]), sparsity=0.5).tolist()
      [True, False, True, False]
      >>> topk_mask(jnp.ones(4), sparsity=0.25).tolist()   # ties: lower index kept
      [True, True, True, False]
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    return _topk_mask_jit(jnp.asarray(scores), sparsity)


@jax.jit
def _topk_mask_jit(scores: jax.Array, sparsity: jax.Array) -> jax.Array:
    flat = scores.reshape(-1)
    return _keep_largest_flat(flat, _num_keep(flat.shape[0], sparsity)).reshape(scores.shape)


def _scores(leaf: jax.Array, normalize: bool) -> jax.Array:
    s = jnp.abs(jnp.asarray(leaf)).astype(jnp.float32)
    if normalize:
        s = s / (jnp.linalg.norm(s.reshape(-1)) + 1e-8)
    return s


def magnitude_masks(params: PyTree, *, sparsity: float | jax.Array, scope: str = "layer",
                    where: Where | None = None, normalize: bool = False) -> PyTree:
    """Magnitude-pruning masks for a params tree.

    * ``scope="layer"``: every selected leaf keeps its own
      ``round(n_l * (1 - sparsity))`` largest ``|w|`` (uniform per-layer sparsity).
    * ``scope="global"``: one ranking of ``|w|`` over all selected leaves
      together keeps ``round(N * (1 - sparsity))`` weights in total (one
      threshold across layers), so layers end up with different sparsities.
      ``normalize=True`` divides each layer's ``|w|`` by its L2 norm first
      (JaxPruner's ``GlobalMagnitudePruning`` default); the default ranks raw
      magnitudes.

    Leaves not selected by ``where`` get all-``True`` masks. Works under
    ``jit`` (``sparsity`` may be traced).

    Args:
      params: pytree of arrays.
      sparsity: fraction of the selected weights to prune, in ``[0, 1]``.
      scope: ``"layer"`` or ``"global"``.
      where: ``(name, leaf) -> bool`` selecting prunable leaves; default the
        ``kernel`` leaves.
      normalize: global scope only: rank per-layer L2-normalised magnitudes.

    Returns:
      Masks (bool pytree with the structure of ``params``).

    Raises:
      ValueError: bad ``sparsity`` or ``scope``; ``normalize`` with layer scope.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"a": {"kernel": jnp.array([1., 5.])}, "b": {"kernel": jnp.array([2., 3., 4., 6.])}}
      >>> m = magnitude_masks(p, sparsity=0.5, scope="global")
      >>> m["a"]["kernel"].tolist(), m["b"]["kernel"].tolist()
      ([False, True], [False, False, True, True])
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    _validate.choice("scope", scope, SCOPES)
    where = _check_where(where)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    if normalize and scope != "global":
        raise ValueError("normalize=True only applies to scope='global' (per-layer ranking is scale-free)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [x for _, x in flat]
    selected = tuple(bool(where(path_name(p), x)) for p, x in flat)
    return jax.tree.unflatten(treedef, _masks_impl(leaves, sparsity, selected, scope, normalize))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _masks_impl(leaves, sparsity, selected, scope, normalize):
    """One compiled program per (tree shapes, selection, scope); ``sparsity`` is traced."""
    out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
    if scope == "layer":
        for i, x in enumerate(leaves):
            if selected[i]:
                flat = _scores(x, False).reshape(-1)
                out[i] = _keep_largest_flat(flat, _num_keep(flat.shape[0], sparsity)).reshape(jnp.shape(x))
    else:
        idx = [i for i in range(len(leaves)) if selected[i]]
        if idx:
            scores = jnp.concatenate([_scores(leaves[i], normalize).reshape(-1) for i in idx])
            keep = _keep_largest_flat(scores, _num_keep(scores.shape[0], sparsity))
            offset = 0
            for i in idx:
                shape = jnp.shape(leaves[i])
                size = int(np.prod(shape))
                out[i] = keep[offset:offset + size].reshape(shape)
                offset += size
    return out


def magnitude_prune(params: PyTree, *, sparsity: float | jax.Array, scope: str = "layer",
                    where: Where | None = None, normalize: bool = False) -> tuple[PyTree, PyTree]:
    """One-shot magnitude pruning: ``(pruned_params, masks)``.

    ``masks = magnitude_masks(params, ...)`` (see there for the arguments) and
    ``pruned_params = apply_masks(params, masks)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob.prune._masks import sparsity as sparsity_report
      >>> pruned, masks = magnitude_prune({"kernel": jnp.arange(1., 9.)}, sparsity=0.75)
      >>> pruned["kernel"].tolist(), sparsity_report(pruned).total
      ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0, 8.0], 0.75)
    """
    masks = magnitude_masks(params, sparsity=sparsity, scope=scope, where=where, normalize=normalize)
    return apply_masks(params, masks), masks


def _check_schedule(final_sparsity, initial_sparsity, begin_step, end_step, update_every, power):
    s_f = _validate.number("final_sparsity", final_sparsity, min=0.0, max=1.0)
    s_i = _validate.number("initial_sparsity", initial_sparsity, min=0.0, max=1.0)
    if s_i > s_f:
        raise ValueError(f"initial_sparsity must be <= final_sparsity={s_f}, got {s_i}")
    t0 = _validate.number("begin_step", begin_step, min=0, integer=True)
    t1 = _validate.number("end_step", end_step, min=0, integer=True)
    if t1 < t0:
        raise ValueError(f"end_step must be >= begin_step={t0}, got {t1}")
    dt = _validate.number("update_every", update_every, min=1, integer=True)
    if (t1 - t0) % dt:
        raise ValueError(f"end_step - begin_step = {t1 - t0} must be a multiple of update_every={dt} "
                         "(the schedule's last update, at end_step, reaches final_sparsity)")
    p = _validate.number("power", power, min=0.0, min_inclusive=False)
    return s_f, s_i, t0, t1, dt, p


def polynomial_sparsity(step: jax.typing.ArrayLike, *, final_sparsity: float, end_step: int,
                        initial_sparsity: float = 0.0, begin_step: int = 0, update_every: int = 1,
                        power: float = 3.0) -> jax.Array:
    """The gradual-pruning schedule of Zhu & Gupta as a pure function of the step.

    With ``t0 = begin_step``, ``Δt = update_every`` and ``nΔt = end_step - t0``,
    the masks are updated at steps ``t0, t0 + Δt, ..., t0 + nΔt`` to

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (nΔt)) ** 3

    and held in between. This function returns the sparsity in force at
    ``step``: ``0`` before ``t0`` (dense), ``s_t`` at the last update step
    ``<= step``, and ``s_f`` from ``end_step`` on. (``power`` generalises the
    cube.) With ``end_step == begin_step`` it is a one-shot prune at ``t0``.

    Args:
      step: integer step, scalar or array (traced is fine).
      final_sparsity: ``s_f`` in ``[0, 1]``.
      end_step: last update step ``t0 + nΔt``, ``>= begin_step``.
      initial_sparsity: ``s_i`` in ``[0, s_f]``.
      begin_step: ``t0 >= 0``.
      update_every: ``Δt >= 1``; ``end_step - begin_step`` must be a multiple.
      power: exponent, ``> 0`` (3 in the paper).

    Returns:
      float32 array of the shape of ``step``.

    Raises:
      ValueError: inconsistent arguments.

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
      pruning for model compression", arXiv 1710.01878, Eq. (1).

    Example:
      >>> import jax.numpy as jnp
      >>> s = polynomial_sparsity(jnp.array([0, 5, 10, 15, 20, 99]), final_sparsity=0.8, begin_step=10,
      ...                         end_step=20, update_every=5)
      >>> [round(float(v), 4) for v in s]
      [0.0, 0.0, 0.0, 0.7, 0.8, 0.8]
    """
    s_f, s_i, t0, t1, dt, p = _check_schedule(final_sparsity, initial_sparsity, begin_step, end_step,
                                              update_every, power)
    t = jnp.asarray(step, jnp.int32)
    last_update = t0 + jnp.clip((t - t0) // dt * dt, 0, t1 - t0)
    frac = (last_update - t0).astype(jnp.float32) / max(t1 - t0, 1)
    s = s_f + (s_i - s_f) * (1.0 - frac) ** p
    return jnp.where(t < t0, 0.0, s).astype(jnp.float32)


class GradualPruningState(NamedTuple):
    """State of :func:`gradual_pruning`.

    Attributes:
      count: int32 scalar, number of updates applied so far (the step).
      masks: the current masks (bool pytree of the params' structure).
      sparsity: float32 scalar, the target sparsity of the current masks.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: PyTree
    sparsity: jax.Array
    inner_state: optax.OptState


def gradual_pruning(inner: optax.GradientTransformation, *, final_sparsity: float, end_step: int,
                    initial_sparsity: float = 0.0, begin_step: int = 0, update_every: int = 100,
                    power: float = 3.0, scope: str = "layer", where: Where | None = None,
                    normalize: bool = False) -> optax.GradientTransformation:
    """Wraps an optimizer so that training prunes gradually (Zhu & Gupta).

    At every mask-update step of :func:`polynomial_sparsity` (``t0 + jΔt``,
    ``j = 0..n``) the masks are recomputed by :func:`magnitude_masks` from the
    current (already masked) weights at that step's sparsity; weights pruned
    earlier are zero and are therefore pruned again first, so sparsity grows
    monotonically (as in the paper, pruned weights do not come back). Every
    step, the gradients of pruned weights are zeroed before the inner
    optimizer sees them (no momentum builds up on them) and the updates are
    chosen so that the new parameters are exactly ``apply_masks(params +
    inner_updates, masks)``: pruned weights are exactly zero after every step.
    All of this is inside the one jitted train step (``lax.cond`` on the step
    count), so :func:`jaxrob.train.fit` runs it unchanged:
    ``fit(model, ds, optimizer=gradual_pruning(make_optimizer(...), ...))``.
    Read the masks from ``state.opt_state.masks``.

    Args:
      inner: the optimizer to wrap (e.g. :func:`jaxrob.train.make_optimizer`).
      final_sparsity, end_step, initial_sparsity, begin_step, update_every, power:
        the schedule, see :func:`polynomial_sparsity`.
      scope, where, normalize: how masks are computed, see :func:`magnitude_masks`.

    Returns:
      An ``optax.GradientTransformation`` with :class:`GradualPruningState`.

    Raises:
      ValueError / TypeError: bad schedule or mask arguments.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = gradual_pruning(optax.sgd(0.1), final_sparsity=0.5, end_step=2, update_every=1)
      >>> params = {"kernel": jnp.arange(1., 5.)}
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params["kernel"].tolist()
      [0.0, 0.0, 3.0, 4.0]
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"inner must be an optax.GradientTransformation, got {type(inner).__name__}")
    _check_schedule(final_sparsity, initial_sparsity, begin_step, end_step, update_every, power)
    _validate.choice("scope", scope, SCOPES)
    where = _check_where(where)
    if normalize and scope != "global":
        raise ValueError("normalize=True only applies to scope='global'")
    t0, t1, dt = int(begin_step), int(end_step), int(update_every)

    def schedule(step):
        return polynomial_sparsity(step, final_sparsity=final_sparsity, end_step=end_step,
                                   initial_sparsity=initial_sparsity, begin_step=begin_step,
                                   update_every=update_every, power=power)

    def init_fn(params):
        return GradualPruningState(count=jnp.zeros((), jnp.int32), masks=dense_masks(params),
                                   sparsity=jnp.zeros((), jnp.float32), inner_state=inner.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("gradual_pruning needs params: call tx.update(grads, state, params)")
        t = state.count
        is_update = (t >= t0) & (t <= t1) & ((t - t0) % dt == 0)
        s = schedule(t)

        def recompute(_):
            return magnitude_masks(apply_masks(params, state.masks), sparsity=s, scope=scope, where=where,
                                   normalize=normalize)

        masks = jax.lax.cond(is_update, recompute, lambda _: state.masks, None)
        grads = apply_masks(updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        new_params = apply_masks(optax.apply_updates(params, inner_updates), masks)
        out = jax.tree.map(lambda n, p: (n - p).astype(jnp.asarray(p).dtype), new_params, params)
        new_sparsity = jnp.where(is_update, s, state.sparsity)
        return out, GradualPruningState(count=t + 1, masks=masks, sparsity=new_sparsity, inner_state=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)
