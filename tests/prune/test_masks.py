"""Tests of the mask convention: apply_masks, sparsity reports, masked_model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data, models, train
from jaxrob.prune._masks import (apply_masks, check_masks, combine_masks, default_where, dense_masks,
                                 masked_model, named_leaves, prunable, sparsity)


def _params():
    return {"conv": {"kernel": jnp.arange(1.0, 13.0).reshape(1, 1, 3, 4), "bias": jnp.ones(4)},
            "fc": {0: {"kernel": jnp.ones((4, 2))}}}


def test_default_where_selects_kernels_only():
    sel = prunable(_params())
    assert sel == {"conv": {"kernel": True, "bias": False}, "fc": {0: {"kernel": True}}}
    assert [n for n, _ in named_leaves(_params())] == ["conv/kernel", "fc/0/kernel"]
    assert default_where("a/kernel", None) and not default_where("kernel/bias", None)


def test_apply_masks_zeroes_exactly_the_pruned_entries_and_their_gradients():
    p = _params()
    m = dense_masks(p)
    m["conv"]["kernel"] = p["conv"]["kernel"] > 6
    out = apply_masks(p, m)
    np.testing.assert_array_equal(out["conv"]["kernel"], jnp.where(p["conv"]["kernel"] > 6, p["conv"]["kernel"], 0))
    np.testing.assert_array_equal(out["fc"][0]["kernel"], p["fc"][0]["kernel"])
    g = jax.grad(lambda q: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(apply_masks(q, m))))(p)
    np.testing.assert_array_equal(g["conv"]["kernel"], jnp.where(m["conv"]["kernel"], 2 * p["conv"]["kernel"], 0))
    # float 0/1 masks behave like bool masks; jit agrees
    mf = jax.tree.map(lambda x: x.astype(jnp.float32), m)
    jitted = jax.jit(apply_masks)(p, mf)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(out)):
        np.testing.assert_array_equal(a, b)


def test_mask_errors():
    p = _params()
    with pytest.raises(ValueError, match="tree structure"):
        apply_masks(p, {"conv": dense_masks(p)["conv"]})
    bad = dense_masks(p)
    bad["fc"][0]["kernel"] = jnp.ones((2, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        check_masks(p, bad)
    with pytest.raises(TypeError, match="where must be"):
        sparsity(p, where="kernel")
    with pytest.raises(TypeError, match="Model"):
        masked_model(object(), dense_masks(p))


def test_sparsity_report_counts_zeros_and_false():
    p = _params()
    m = dense_masks(p)
    m["conv"]["kernel"] = p["conv"]["kernel"] > 9   # 9 of 12 pruned
    rep = sparsity(m)
    assert rep.per_layer == {"conv/kernel": 0.75, "fc/0/kernel": 0.0}
    assert (rep.zeros, rep.size) == (9, 20) and rep.total == pytest.approx(9 / 20)
    assert sparsity(apply_masks(p, m)).as_dict()["total"] == pytest.approx(9 / 20)
    # every leaf, biases included
    assert sparsity(m, where=lambda n, x: True).size == 24
    table = str(rep)
    assert "conv/kernel" in table and "75.00%" in table and "**total**" in table
    assert combine_masks(m, dense_masks(p))["conv"]["kernel"].sum() == 3


@pytest.mark.slow
def test_masked_model_gives_zero_gradient_to_pruned_weights():
    net = models.create("mlp", hidden_sizes=(16,), key=jax.random.key(0))
    masks = jax.tree.map(lambda x: jnp.abs(x) > 0.03, net.params)
    pruned = masked_model(net, masks)
    before = sparsity(pruned.params)
    assert before.total == pytest.approx(sparsity(masks).total)
    x, y = data.as_arrays(data.load("mnist10k", split="test"), limit=64)

    def loss(params):
        return train.cross_entropy()(train.ModelFns(pruned.apply_fn, pruned.train_apply), params, {}, x, y,
                                     key=jax.random.key(1))[0]

    g = jax.grad(loss)(pruned.params)
    for gl, ml in zip(jax.tree.leaves(g), jax.tree.leaves(masks)):
        assert not np.any(np.asarray(gl)[~np.asarray(ml)])
    # forward equals the dense model on masked weights
    np.testing.assert_allclose(pruned.apply_fn(pruned.variables, x), net.apply_fn(
        {"params": apply_masks(net.params, masks), "batch_stats": {}}, x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_masked_model_fit_keeps_pruned_weights_zero():
    net = models.create("mlp", hidden_sizes=(16,), key=jax.random.key(0))
    masks = jax.tree.map(lambda x: jnp.abs(x) > 0.03, net.params)
    pruned = masked_model(net, masks)
    before = sparsity(pruned.params)
    xs, ys = data.as_arrays(data.load("mnist10k", split="train"), limit=800)
    ds = data.from_arrays((xs * 255).round().astype(np.uint8), ys, num_classes=10)
    state, _ = train.fit(pruned, ds, optimizer={"name": "sgd", "learning_rate": 0.05}, epochs=1, batch_size=200,
                         key=jax.random.key(2), progress=False)
    for pl, ml in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        assert not np.any(np.asarray(pl)[~np.asarray(ml)])
    assert sparsity(state.params).total == pytest.approx(before.total)


def test_masked_model_foreign():
    apply_fn = lambda p, x: x @ p["kernel"]  # noqa: E731
    params = {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    f, p = masked_model((apply_fn, params), {"kernel": jnp.array([[True, False], [True, True]])})
    np.testing.assert_allclose(f(params, jnp.array([[1.0, 1.0]])), [[4.0, 0.5]])
    assert float(p["kernel"][0, 1]) == 0.0
