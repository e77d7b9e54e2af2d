"""Block-based column-row (BCR) pruning, the fine-grained structured sparsity of GRIM.

**The matrix view.** Each prunable kernel is viewed as the 2-D weight matrix of
its GEMM, one row per output neuron/filter and one column per input:
a dense kernel ``(in, out)`` becomes ``W = kernel.T`` of shape ``(out, in)``;
a convolution kernel ``HWIO`` becomes ``(O, H*W*I)`` -- every filter flattened
into one row, the im2col weight matrix GRIM's compiler executes (our column
order is Flax's ``(h, w, i)`` row-major order).

**The pattern.** ``W`` is tiled into blocks of ``block_shape = (r, c)`` (rows x
columns); inside every block, independently of the other blocks, whole columns
(the block's segment of a weight-matrix column) and whole rows (its segment of a
row) are removed. The kept weights of a block are therefore the product set
``kept_rows x kept_cols`` -- a smaller dense block -- which is what lets GRIM's
code generator skip them without per-weight indices while pruning far more
finely than whole filters or channels.

**Decisions where the paper's summary leaves details open** (only its abstract
and secondary summaries could be read while writing this; arXiv 2108.11033):

* criterion: a row (column) segment's importance is its L2 norm within the block
  (the group-Lasso group norm GRIM's regularised training drives to zero);
  rows and columns are ranked independently on the same (unpruned) block, so
  the result does not depend on an order of row-then-column pruning;
* rates: every block keeps exactly ``round(r * (1 - row_sparsity))`` rows and
  ``round(c * (1 - col_sparsity))`` columns (round half to even), so each block,
  and the layer, has sparsity ``1 - (kept_rows / r) * (kept_cols / c)``;
  ``sparsity=s`` is shorthand for ``row_sparsity = col_sparsity = 1 - sqrt(1 - s)``
  (equal split; exact when the counts are integers, e.g. ``s = 0.75`` with even
  block sides); ties in norm keep the lower index;
* blocks must tile the matrix exactly (``out % r == 0`` and ``K % c == 0``); a
  ``block_shape`` side larger than the matrix is clipped to the matrix, so
  ``block_shape=(out, K)`` is plain row + column pruning of the whole layer;
* training: one-shot :func:`bcr_masks` followed by fine-tuning with
  :func:`jaxrob.prune.masked_model`; :func:`bcr_group_lasso` is the plain
  (not reweighted) group-Lasso penalty over the same row/column segments, to
  add to a loss before pruning.

References:
  Niu, Li, Ma, Dong, Zhou, Qian, Lin, Wang & Ren, "GRIM: A General, Real-Time
  Deep Learning Inference Framework for Mobile Devices based on Fine-Grained
  Structured Weight Sparsity", IEEE TPAMI 2021, arXiv 2108.11033.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.prune._masks import Where, _check_where, path_name
from jaxrob.prune._nm import _group_ranks

PyTree = Any


def to_matrix(kernel: jax.typing.ArrayLike) -> jax.Array:
    """The GEMM weight matrix ``(out, K)`` of a dense ``(in, out)`` or conv ``(..., I, O)`` kernel."""
    k = jnp.asarray(kernel)
    if k.ndim < 2:
        raise ValueError(f"BCR pruning needs a kernel with >= 2 dims (in, out) or (H, W, I, O), got shape {k.shape}")
    return k.reshape(-1, k.shape[-1]).T


def from_matrix(matrix: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`to_matrix`: back to the kernel shape."""
    return matrix.T.reshape(shape)


def _check_block(block_shape: Any, rows: int, cols: int, name: str) -> tuple[int, int]:
    if not (isinstance(block_shape, (tuple, list)) and len(block_shape) == 2):
        raise TypeError(f"block_shape must be a pair (rows, cols) of positive ints, got {block_shape!r}")
    r = min(_validate.number("block_shape[0]", block_shape[0], min=1, integer=True), rows)
    c = min(_validate.number("block_shape[1]", block_shape[1], min=1, integer=True), cols)
    if rows % r or cols % c:
        raise ValueError(f"{name}: its weight matrix is {rows} x {cols} (out x in) and blocks of {r} x {c} do not tile "
                         "it; choose block sides that divide the matrix (or exclude the leaf with `where`)")
    return r, c


def _rates(sparsity, row_sparsity, col_sparsity) -> tuple[float, float]:
    if sparsity is not None:
        if row_sparsity is not None or col_sparsity is not None:
            raise ValueError("give either sparsity (split equally between rows and columns) or "
                             "row_sparsity/col_sparsity, not both")
        s = _validate.number("sparsity", sparsity, min=0.0, max=1.0, max_inclusive=False)
        each = 1.0 - math.sqrt(1.0 - s)
        return each, each
    rs = _validate.number("row_sparsity", 0.0 if row_sparsity is None else row_sparsity, min=0.0, max=1.0,
                          max_inclusive=False)
    cs = _validate.number("col_sparsity", 0.0 if col_sparsity is None else col_sparsity, min=0.0, max=1.0,
                          max_inclusive=False)
    return rs, cs


def _keep_count(size: int, s: float) -> int:
    return max(1, int(np.round(np.float32(size) * (np.float32(1.0) - np.float32(s)))))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _bcr_mask_impl(kernel, r, c, keep_r, keep_c):
    w = to_matrix(kernel).astype(jnp.float32)
    rows, cols = w.shape
    blocks = w.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)          # (Gr, Gc, r, c)
    row_norm = jnp.sqrt(jnp.sum(blocks ** 2, axis=3))                              # (Gr, Gc, r)
    col_norm = jnp.sqrt(jnp.sum(blocks ** 2, axis=2))                              # (Gr, Gc, c)
    keep_rows = _group_ranks(row_norm) < keep_r
    keep_cols = _group_ranks(col_norm) < keep_c
    mask = keep_rows[..., :, None] & keep_cols[..., None, :]                        # (Gr, Gc, r, c)
    return from_matrix(mask.transpose(0, 2, 1, 3).reshape(rows, cols), kernel.shape)


def bcr_mask(kernel: jax.typing.ArrayLike, *, block_shape: tuple[int, int], sparsity: float | None = None,
             row_sparsity: float | None = None, col_sparsity: float | None = None) -> jax.Array:
    """The BCR mask of one kernel.

    Args:
      kernel: dense ``(in, out)`` or conv ``(H, W, I, O)`` weights.
      block_shape: ``(r, c)`` block size in the ``(out, K)`` matrix view; must
        tile the matrix (sides larger than the matrix are clipped to it).
      sparsity: overall target ``s`` in ``[0, 1)``, split equally:
        ``row_sparsity = col_sparsity = 1 - sqrt(1 - s)``.
      row_sparsity: fraction of each block's rows removed, in ``[0, 1)``.
      col_sparsity: fraction of each block's columns removed, in ``[0, 1)``.

    Returns:
      Bool mask of ``kernel``'s shape; in every block exactly
      ``round(r (1 - row_sparsity))`` rows and ``round(c (1 - col_sparsity))``
      columns survive (at least one of each).

    Raises:
      ValueError: rates out of range, both ``sparsity`` and row/col rates given,
        blocks that do not tile the matrix, a kernel with fewer than 2 dims.

    References:
      Niu et al., "GRIM: A General, Real-Time Deep Learning Inference Framework
      for Mobile Devices based on Fine-Grained Structured Weight Sparsity",
      arXiv 2108.11033 (BCR pruning).

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[1., 0., 5., 1.], [1., 0., 1., 1.], [3., 3., 2., 0.], [1., 1., 2., 0.]])  # (in, out)
      >>> m = bcr_mask(w, block_shape=(2, 2), row_sparsity=0.5, col_sparsity=0.5)
      >>> to_matrix(m).astype(int).tolist()   # (out, in): one row x one column kept per 2x2 block
      [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    """
    rs, cs = _rates(sparsity, row_sparsity, col_sparsity)
    k = jnp.asarray(kernel)
    w = to_matrix(k)
    r, c = _check_block(block_shape, w.shape[0], w.shape[1], f"kernel of shape {k.shape}")
    return _bcr_mask_impl(k, r, c, _keep_count(r, rs), _keep_count(c, cs))


def bcr_masks(params: PyTree, *, block_shape: tuple[int, int], sparsity: float | None = None,
              row_sparsity: float | None = None, col_sparsity: float | None = None,
              where: Where | None = None) -> PyTree:
    """BCR masks for every leaf ``where`` selects (default: ``kernel`` leaves); all-``True`` elsewhere.

    Arguments as in :func:`bcr_mask`; the same block shape and rates apply to
    every selected layer (each layer's ``block_shape`` clipped to its matrix).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.prune._masks import sparsity as report
      >>> p = {"fc": {"kernel": jax.random.normal(jax.random.key(0), (8, 4)), "bias": jnp.zeros(4)}}
      >>> report(bcr_masks(p, block_shape=(2, 4), sparsity=0.75)).total
      0.75
    """
    rs, cs = _rates(sparsity, row_sparsity, col_sparsity)
    where = _check_where(where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, x in flat:
        name = path_name(path)
        if where(name, x):
            w = to_matrix(x) if np.ndim(x) >= 2 else None
            if w is None:
                raise ValueError(f"leaf {name!r} has shape {np.shape(x)}; BCR pruning needs >= 2 dims")
            r, c = _check_block(block_shape, w.shape[0], w.shape[1], f"leaf {name!r} of shape {np.shape(x)}")
            out.append(_bcr_mask_impl(jnp.asarray(x), r, c, _keep_count(r, rs), _keep_count(c, cs)))
        else:
            out.append(jnp.ones(np.shape(x), bool))
    return jax.tree.unflatten(treedef, out)


def bcr_group_lasso(params: PyTree, *, block_shape: tuple[int, int], where: Where | None = None) -> jax.Array:
    """Group-Lasso penalty over BCR groups: the sum of L2 norms of every block's row and column segments.

    Adding ``lam * bcr_group_lasso(params, ...)`` to a training loss pushes
    whole row/column segments towards zero before :func:`bcr_masks` prunes
    them (GRIM trains with a *reweighted* version; this is the plain one).

    Returns:
      float32 scalar, differentiable.
    """
    where = _check_where(where)
    total = jnp.zeros((), jnp.float32)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path_name(path)
        if not where(name, x):
            continue
        w = to_matrix(x).astype(jnp.float32)
        r, c = _check_block(block_shape, w.shape[0], w.shape[1], f"leaf {name!r} of shape {np.shape(x)}")
        blocks = w.reshape(w.shape[0] // r, r, w.shape[1] // c, c)
        eps = 1e-12  # keeps the gradient finite at an all-zero segment
        total = total + jnp.sum(jnp.sqrt(jnp.sum(blocks ** 2, axis=3) + eps))
        total = total + jnp.sum(jnp.sqrt(jnp.sum(blocks ** 2, axis=1) + eps))
    return total
