"""Tests of BCR pruning: product structure per block, exact counts, norm criterion, matrix view, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.prune._bcr import bcr_group_lasso, bcr_mask, bcr_masks, from_matrix, to_matrix
from jaxrob.prune._masks import sparsity


def _blocks(a, r, c):
    rows, cols = a.shape
    return a.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3).reshape(-1, r, c)


@pytest.mark.parametrize("shape,block,rs,cs", [
    ((3, 3, 4, 8), (4, 12), 0.5, 0.25),      # conv HWIO -> (8, 36) matrix
    ((16, 12), (4, 8), 0.25, 0.5),           # dense (in, out) -> (12, 16)
    ((16, 12), (100, 100), 0.5, 0.5),        # one block = whole matrix (clipped)
])
def test_every_block_keeps_a_product_of_top_rows_and_top_cols(shape, block, rs, cs):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    mask = np.asarray(bcr_mask(jnp.asarray(w), block_shape=block, row_sparsity=rs, col_sparsity=cs))
    wm, mm = np.asarray(to_matrix(w)), np.asarray(to_matrix(mask))
    r, c = min(block[0], wm.shape[0]), min(block[1], wm.shape[1])
    kr, kc = round(r * (1 - rs)), round(c * (1 - cs))
    for wb, mb in zip(_blocks(wm, r, c), _blocks(mm, r, c)):
        rows, cols = mb.any(axis=1), mb.any(axis=0)
        np.testing.assert_array_equal(mb, np.outer(rows, cols))          # product structure
        assert rows.sum() == kr and cols.sum() == kc                      # exact counts
        rn, cn = np.linalg.norm(wb, axis=1), np.linalg.norm(wb, axis=0)
        assert rn[rows].min() > rn[~rows].max() if kr < r else True       # largest-norm rows kept
        assert cn[cols].min() > cn[~cols].max() if kc < c else True
    assert sparsity({"kernel": mask}).total == pytest.approx(1 - (kr / r) * (kc / c))


def test_matrix_view_of_conv_kernel_is_filters_by_im2col_columns():
    k = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    m = np.asarray(to_matrix(k))
    assert m.shape == (4, 12)
    np.testing.assert_array_equal(m[1], k[..., 1].reshape(-1))          # row o = filter o, (h, w, i) order
    np.testing.assert_array_equal(from_matrix(jnp.asarray(m), k.shape), k)


def test_bcr_masks_tree_sparsity_and_ties():
    rng = np.random.default_rng(1)
    p = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32), "bias": jnp.ones(8)},
         "fc": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}}
    masks = bcr_masks(p, block_shape=(4, 4), sparsity=0.75)    # half the rows, half the columns
    rep = sparsity(masks)
    assert rep.per_layer == {"conv/kernel": 0.75, "fc/kernel": 0.75}
    assert bool(masks["conv"]["bias"].all())
    # all-equal weights: lower indices kept
    m = np.asarray(to_matrix(bcr_mask(jnp.ones((4, 4)), block_shape=(4, 4), row_sparsity=0.5, col_sparsity=0.5)))
    np.testing.assert_array_equal(m, np.outer([1, 1, 0, 0], [1, 1, 0, 0]).astype(bool))


def test_group_lasso_is_sum_of_segment_norms_and_differentiable():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6)), jnp.float32)   # matrix (6, 4)
    val = bcr_group_lasso({"kernel": w}, block_shape=(3, 2))
    m = np.asarray(w).T
    want = sum(np.linalg.norm(b, axis=1).sum() + np.linalg.norm(b, axis=0).sum() for b in _blocks(m, 3, 2))
    assert float(val) == pytest.approx(want, rel=1e-5)
    g = jax.grad(lambda q: bcr_group_lasso(q, block_shape=(3, 2)))({"kernel": w})["kernel"]
    assert np.all(np.isfinite(g))


def test_bcr_errors():
    with pytest.raises(ValueError, match="do not tile"):
        bcr_mask(jnp.ones((10, 8)), block_shape=(4, 4))
    with pytest.raises(ValueError, match="not both"):
        bcr_mask(jnp.ones((8, 8)), block_shape=(4, 4), sparsity=0.5, row_sparsity=0.5)
    with pytest.raises(ValueError, match="row_sparsity"):
        bcr_mask(jnp.ones((8, 8)), block_shape=(4, 4), row_sparsity=1.0)
    with pytest.raises(TypeError, match="block_shape"):
        bcr_mask(jnp.ones((8, 8)), block_shape=4)
    with pytest.raises(ValueError, match="'b/kernel'"):
        bcr_masks({"b": {"kernel": jnp.ones((10, 8))}}, block_shape=(4, 4))
