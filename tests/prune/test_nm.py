"""Tests of N:M masks and SR-STE: exact counts per group, the gradient rule, shape errors, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data, models, train
from jaxrob.prune._masks import apply_masks, sparsity
from jaxrob.prune._nm import nm_mask, nm_masks, nm_model, nm_sparse_params, srste


def _reference(w, n, m, axis):
    """Brute force: per group of m along axis, keep the n largest |w|, lower index first on ties."""
    a = np.moveaxis(np.abs(np.asarray(w)), axis, -1)
    keep = np.zeros(a.shape, bool)
    for idx in np.ndindex(a.shape[:-1]):
        row = a[idx]
        for g in range(0, row.size, m):
            order = sorted(range(g, g + m), key=lambda i: (-row[i], i))
            keep[idx + (np.array(order[:n]),)] = True
    return np.moveaxis(keep, -1, axis)


@pytest.mark.parametrize("n,m,shape,axis", [
    (2, 4, (3, 3, 8, 5), -2),     # conv HWIO, groups along I
    (1, 4, (16, 6), -2),          # dense (in, out)
    (4, 8, (16, 3), 0),
    (3, 64, (128, 2), -2),        # large M: the sort-based path
    (2, 4, (5, 8), -1),           # another axis
])
def test_nm_mask_matches_brute_force_and_has_n_per_group(n, m, shape, axis):
    rng = np.random.default_rng(0)
    w = rng.integers(-3, 4, size=shape).astype(np.float32)  # many ties
    got = np.asarray(nm_mask(jnp.asarray(w), n=n, m=m, axis=axis))
    np.testing.assert_array_equal(got, _reference(w, n, m, axis))
    groups = np.moveaxis(got, axis, -1).reshape(-1, m)
    assert np.all(groups.sum(-1) == n)
    # exactly n non-zeros per group after masking continuous weights
    wc = rng.normal(size=shape).astype(np.float32)
    sparse = np.moveaxis(np.asarray(srste(jnp.asarray(wc), n=n, m=m, axis=axis)), axis, -1).reshape(-1, m)
    assert np.all((sparse != 0).sum(-1) == n)


def test_nm_mask_vmap_and_jit_agree():
    ws = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 4)), jnp.float32)
    looped = jnp.stack([nm_mask(w, n=2, m=4) for w in ws])
    np.testing.assert_array_equal(jax.vmap(lambda w: nm_mask(w, n=2, m=4))(ws), looped)
    np.testing.assert_array_equal(jax.jit(lambda w: srste(w, n=2, m=4))(ws[0]), srste(ws[0], n=2, m=4))


@pytest.mark.parametrize("lam", [0.0, 2e-4, 0.5])
def test_srste_gradient_is_ste_plus_sparse_refined_term(lam):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.float32)
    c = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    mask = nm_mask(w, n=2, m=4)
    g = jax.grad(lambda v: jnp.sum(c * srste(v, n=2, m=4, lambda_w=lam)))(w)
    np.testing.assert_allclose(g, c + lam * jnp.where(mask, 0.0, w), rtol=1e-6, atol=1e-7)
    # forward value is exactly w on kept entries, 0 elsewhere
    np.testing.assert_array_equal(srste(w, n=2, m=4, lambda_w=lam), jnp.where(mask, w, 0.0))


def test_shape_and_argument_errors():
    with pytest.raises(ValueError, match="not divisible by m=4"):
        nm_mask(jnp.ones((3, 3, 6, 8)), n=2, m=4)
    with pytest.raises(ValueError, match="n must be <= m"):
        nm_mask(jnp.ones((8, 2)), n=5, m=4)
    with pytest.raises(ValueError, match="out of range"):
        nm_mask(jnp.ones((8,)), n=1, m=4, axis=-2)
    with pytest.raises(ValueError, match="lambda_w"):
        srste(jnp.ones((8, 2)), n=2, m=4, lambda_w=-1.0)
    net = models.create("cnn_small", key=jax.random.key(0))
    with pytest.raises(ValueError, match="'conv1/kernel'"):   # 1 input channel
        nm_model(net, n=2, m=4)
    # excluding the first layer works
    nm_model(net, n=2, m=4, where=lambda name, x: name.endswith("kernel") and not name.startswith("conv1"))


def test_nm_model_forward_is_the_deployed_sparse_model():
    net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
    sparse = nm_model(net, n=1, m=4)
    deployed = apply_masks(net.params, nm_masks(net.params, n=1, m=4))
    assert sparsity(deployed).total == pytest.approx(0.75)
    x = jnp.asarray(np.random.default_rng(5).random((8, 28, 28, 1)), jnp.float32)
    np.testing.assert_allclose(sparse.apply_fn(net.variables, x),
                               net.apply_fn({"params": deployed, "batch_stats": {}}, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_nm_model_trains_and_deploys_exactly_sparse():
    net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
    sparse = nm_model(net, n=2, m=4)
    xs, ys = data.as_arrays(data.load("mnist10k", split="train"), limit=1000)
    ds = data.from_arrays((xs * 255).round().astype(np.uint8), ys, num_classes=10)
    state, hist = train.fit(sparse, ds, optimizer={"name": "sgd", "learning_rate": 0.1}, epochs=2,
                            batch_size=200, key=jax.random.key(1), progress=False)
    assert hist[-1]["accuracy"] > 0.6
    masks = nm_masks(state.params, n=2, m=4)
    deployed = apply_masks(state.params, masks)
    rep = sparsity(deployed)
    assert rep.total == pytest.approx(0.5)
    xt = jnp.asarray(xs[:50])
    np.testing.assert_allclose(sparse.apply_fn(state.variables(), xt),
                               net.apply_fn({"params": deployed, "batch_stats": {}}, xt), rtol=1e-5, atol=1e-5)
    # the tree helper is the leaf function on every kernel, identity on biases
    sp = nm_sparse_params(state.params, n=2, m=4)
    np.testing.assert_array_equal(sp["head"]["bias"], state.params["head"]["bias"])
    np.testing.assert_array_equal(sp["head"]["kernel"], deployed["head"]["kernel"])
