"""RVSM / RGSM: closed-form thresholds, the exact update rule, convergence to exact zeros, jit, errors."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrob.prune._masks import apply_masks, sparsity
from jaxrob.prune._rvsm import (
    GROUP_NORM_EPS, SplitState, channel_sparsity, conv_kernels, group_hard_threshold, group_norms,
    hard_threshold, rgsm, rgsm_masks, rgsm_weights, rvsm, rvsm_masks, rvsm_weights)

ALL = lambda name, leaf: True  # noqa: E731


def _params(seed=0):
    # numpy draws: eager jax.random would compile a sampler per shape (seconds on a loaded CPU)
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    return {"conv": {"kernel": f(3, 3, 4, 5) * 0.05, "bias": f(5)}, "dense": {"kernel": f(20, 3) * 0.05}}


# ------------------------------------------------------------------------------------------ closed forms

def test_hard_threshold_is_the_l0_proximal_map():
    """hard_threshold(w, sqrt(2 lam / beta)) minimises lam*|u|_0 + beta/2 (w - u)^2 entrywise (brute force)."""
    lam, beta = 0.02, 0.5
    gamma = math.sqrt(2 * lam / beta)
    w = jnp.array([-1.0, -0.3, -gamma * 0.999, 0.0, 0.1, gamma * 1.001, 0.5, 2.0])
    u = hard_threshold(w, gamma)
    for wi, ui in zip(np.asarray(w), np.asarray(u)):
        costs = {0.0: beta / 2 * wi ** 2, float(wi): lam * (wi != 0)}   # the only two candidates
        best = min(costs, key=costs.get)
        assert float(ui) == pytest.approx(best, abs=0)
    np.testing.assert_array_equal(np.asarray(u) != 0, np.abs(np.asarray(w)) > gamma)
    assert hard_threshold(w, 0.0).tolist() == jnp.where(w != 0, w, 0).tolist()


def test_group_threshold_zeroes_a_group_iff_its_norm_is_below_the_threshold():
    w = _params()["conv"]["kernel"]
    for axis in (-2, -1):
        norms = np.sqrt(np.sum(np.square(np.asarray(w)), axis=tuple(a for a in range(4) if a != axis % 4)))
        np.testing.assert_allclose(group_norms(w, axis=axis), norms, rtol=1e-6)
        gamma = float(np.median(norms))
        u = np.asarray(group_hard_threshold(w, gamma, axis=axis))
        for g in range(w.shape[axis]):
            ug, wg = np.take(u, g, axis=axis), np.take(np.asarray(w), g, axis=axis)
            if norms[g] <= gamma:
                assert not ug.any()
            else:
                np.testing.assert_array_equal(ug, wg)
        # and it is the group-L0 proximal map: per group, cost(keep) = lam1, cost(zero) = beta/2 ||w_g||^2
        lam1, beta = gamma ** 2 / 2, 1.0
        keep = lam1 < beta / 2 * norms ** 2
        zeroed = ~np.any(u != 0, axis=tuple(a for a in range(4) if a != axis % 4))
        np.testing.assert_array_equal(zeroed, ~keep)


def test_masks_follow_prune_core_convention_and_give_the_weights():
    p = _params()
    m = rgsm_masks(p, lamb1=0.01, beta=1.0)
    assert jax.tree.structure(m) == jax.tree.structure(p)
    assert all(x.dtype == jnp.bool_ and x.shape == y.shape for x, y in zip(jax.tree.leaves(m), jax.tree.leaves(p)))
    assert bool(m["conv"]["bias"].all()) and bool(m["dense"]["kernel"].all())  # only conv kernels by default
    chex.assert_trees_all_equal(apply_masks(p, m), rgsm_weights(p, lamb1=0.01, beta=1.0))
    mv = rvsm_masks(p, beta=1.0, lamb=0.5 * 0.05 ** 2)  # threshold 0.05
    np.testing.assert_array_equal(mv["conv"]["kernel"], np.abs(p["conv"]["kernel"]) > 0.05)
    chex.assert_trees_all_equal(rvsm_weights(p, beta=1.0, lamb=0.5 * 0.05 ** 2)["conv"]["kernel"],
                                hard_threshold(p["conv"]["kernel"], 0.05))


# --------------------------------------------------------------------------------------------- updates

def test_rvsm_update_is_sgd_on_grad_plus_beta_w_minus_u():
    p, lr, beta, lamb = _params(), 0.3, 0.7, 1e-3
    g = jax.tree.map(lambda x: jnp.full_like(x, 0.01), p)
    tx = optax.chain(rvsm(beta=beta, lamb=lamb), optax.sgd(lr))
    state = tx.init(p)
    upd, new_state = tx.update(g, state, p)
    new = optax.apply_updates(p, upd)
    u = hard_threshold(p["conv"]["kernel"], math.sqrt(2 * lamb / beta))
    np.testing.assert_allclose(new["conv"]["kernel"],
                               p["conv"]["kernel"] - lr * (g["conv"]["kernel"] + beta * (p["conv"]["kernel"] - u)),
                               rtol=1e-6, atol=1e-7)
    for name in ("bias",):  # not split: plain SGD
        np.testing.assert_allclose(new["conv"][name], p["conv"][name] - lr * g["conv"][name], rtol=1e-6)
    np.testing.assert_allclose(new["dense"]["kernel"], p["dense"]["kernel"] - lr * g["dense"]["kernel"], rtol=1e-6)
    assert isinstance(new_state[0], SplitState)
    chex.assert_trees_all_equal(new_state[0].u, rvsm_weights(p, beta=beta, lamb=lamb))


def test_rgsm_update_adds_group_lasso_gradient_and_split_pull():
    p, lr, beta, lamb2 = _params(1), 0.1, 1.0, 0.03
    w = p["conv"]["kernel"]
    gamma = float(np.median(group_norms(w, axis=-2)))
    lamb1 = 0.5 * gamma ** 2
    g = jax.tree.map(jnp.zeros_like, p)
    tx = optax.chain(rgsm(beta=beta, lamb1=lamb1, lamb2=lamb2), optax.sgd(lr))
    upd, _ = tx.update(g, tx.init(p), p)
    u = group_hard_threshold(w, gamma, axis=-2)
    # the group-lasso gradient from autodiff of the smoothed penalty
    lasso = jax.grad(lambda k: lamb2 * jnp.sum(jnp.sqrt(jnp.sum(k ** 2, axis=(0, 1, 3)) + GROUP_NORM_EPS)))(w)
    assert 0 < int(jnp.sum(~jnp.any(u != 0, axis=(0, 1, 3)))) < 4   # some groups zero, some kept
    np.testing.assert_allclose(upd["conv"]["kernel"], -lr * (lasso + beta * (w - u)), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(upd["dense"]["kernel"], 0.0)


def test_output_groups():
    p = _params(2)
    w = p["conv"]["kernel"]
    norms = np.asarray(group_norms(w, axis=-1))
    gamma = float(np.median(norms))
    u = rgsm_weights(p, beta=1.0, lamb1=gamma ** 2 / 2, groups="output")["conv"]["kernel"]
    zero_out = ~np.any(np.asarray(u) != 0, axis=(0, 1, 2))
    np.testing.assert_array_equal(zero_out, norms <= gamma)


def _descend(tx, params, target, steps):
    """``steps`` of ``tx`` on the quadratic 0.5 ||w - target||^2 (one jitted scan)."""
    def body(carry, _):
        p, s = carry
        g = jax.tree.map(lambda a, b: a - b, p, target)
        upd, s = tx.update(g, s, p)
        return (optax.apply_updates(p, upd), s), None

    @jax.jit
    def run(params):
        (p, s), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
        return p, s

    return run(params)


def test_rvsm_drives_small_weights_to_exact_zero_on_a_quadratic():
    rng = np.random.default_rng(3)
    big = rng.uniform(0.5, 1.0, (2, 2, 3, 4)) * rng.choice([-1.0, 1.0], (2, 2, 3, 4))
    small_mask = rng.random(big.shape) < 0.5
    target = {"c": {"kernel": jnp.asarray(np.where(small_mask, 0.02 * np.sign(big), big), jnp.float32)}}
    start = {"c": {"kernel": jnp.full(big.shape, 0.3)}}   # every weight above the threshold at the start
    beta, lamb = 1.0, 0.5 * 0.2 ** 2                       # threshold 0.2
    tx = optax.chain(rvsm(beta=beta, lamb=lamb), optax.sgd(0.2))
    p, _ = _descend(tx, start, target, 200)
    u = rvsm_weights(p, beta=beta, lamb=lamb)["c"]["kernel"]
    np.testing.assert_array_equal(np.asarray(u) == 0, np.asarray(small_mask))   # exactly the small ones
    # fixed point: small weights settle at target / (1 + beta), kept ones at the target
    np.testing.assert_allclose(p["c"]["kernel"], jnp.where(small_mask, target["c"]["kernel"] / (1 + beta),
                                                           target["c"]["kernel"]), atol=1e-5)
    assert sparsity({"c": {"kernel": u}}).total == pytest.approx(small_mask.mean())


def test_rgsm_drives_weak_channels_to_exact_zero_on_a_quadratic():
    # (kh, kw, in=6, out=4): input channels 0, 2, 5 are weak in the target
    weak = np.array([True, False, True, False, False, True])
    target = np.random.default_rng(4).standard_normal((3, 3, 6, 4)) * np.where(weak, 0.01, 1.0)[:, None]
    target = jnp.asarray(target, jnp.float32)
    start = {"c": {"kernel": jnp.ones((3, 3, 6, 4))}}   # all channel norms 6 at the start
    beta, lamb1, lamb2 = 1.0, 0.5, 0.05                 # threshold 1
    tx = optax.chain(rgsm(beta=beta, lamb1=lamb1, lamb2=lamb2), optax.sgd(0.1))
    p, s = _descend(tx, start, {"c": {"kernel": target}}, 300)
    u = rgsm_weights(p, beta=beta, lamb1=lamb1)
    rep = channel_sparsity(u)
    assert rep["c/kernel"]["zero_input_channels"] == pytest.approx(weak.mean())
    zero = ~np.any(np.asarray(u["c"]["kernel"]) != 0, axis=(0, 1, 3))
    np.testing.assert_array_equal(zero, weak)
    assert rep["total"]["zero_fraction"] == pytest.approx(weak.mean())
    assert rep["total"]["zero_output_channels"] == 0.0
    chex.assert_trees_all_close(s[0].u, u, atol=1e-6)   # the state's u (one step behind) has converged too


def test_jit_equals_eager_and_compiles_once():
    p = _params(5)
    g = jax.tree.map(lambda x: jnp.sin(x), p)
    for tx in (optax.chain(rvsm(beta=0.1, lamb=1e-4), optax.sgd(0.1, momentum=0.9)),
               optax.chain(rgsm(beta=1.0, lamb1=0.01, lamb2=1e-3), optax.adam(1e-3))):
        state = tx.init(p)
        traces = []

        @jax.jit
        def step(params, grads, st, tx=tx):
            traces.append(1)
            return tx.update(grads, st, params)

        eager = tx.update(g, state, p)
        jitted = step(p, g, state)
        chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-7)
        step(jax.tree.map(lambda x: x * 2, p), g, state)   # new values, no new trace
        assert len(traces) == 1


def test_channel_sparsity_report():
    k1 = np.ones((3, 3, 2, 4), np.float32)
    k1[..., 1] = 0                       # output channel 1 dead
    k2 = np.ones((3, 3, 4, 8), np.float32)
    k2[:, :, 1, :] = 0                   # input channel 1 dead
    k2[0, 0, 0, 0] = 0                   # one stray zero
    r = channel_sparsity({"a": {"kernel": k1}, "b": {"kernel": k2}, "fc": {"kernel": np.zeros((5, 2))}})
    assert set(r) == {"a/kernel", "b/kernel", "total"}   # conv kernels only
    assert r["a/kernel"]["zero_output_channels"] == 0.25 and r["a/kernel"]["zero_input_channels"] == 0.0
    assert r["b/kernel"]["zero_input_channels"] == 0.25 and r["b/kernel"]["zero_output_channels"] == 0.0
    assert r["b/kernel"]["zero_fraction"] == pytest.approx((72 + 1) / 288)
    assert r["total"]["zero_input_channels"] == pytest.approx(1 / 6)
    assert r["total"]["zero_output_channels"] == pytest.approx(1 / 12)
    assert r["total"]["zero_fraction"] == pytest.approx((18 + 73) / (72 + 288))


def test_conv_kernels_selection():
    assert conv_kernels("layer1/0/conv1/kernel", np.zeros((3, 3, 1, 2)))
    assert not conv_kernels("fc/kernel", np.zeros((3, 2)))
    assert not conv_kernels("bn/scale", np.zeros((3, 3, 1, 2)))


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("make, match", [
    (lambda: rvsm(beta=0.0), "beta must be > 0"),
    (lambda: rvsm(beta=-1.0), "beta must be > 0"),
    (lambda: rvsm(lamb=-1e-6), "lamb must be >= 0"),
    (lambda: rvsm(lamb=float("nan")), "lamb must be finite"),
    (lambda: rgsm(beta=0.0), "beta must be > 0"),
    (lambda: rgsm(lamb1=-0.1), "lamb1 must be >= 0"),
    (lambda: rgsm(lamb2=-0.1), "lamb2 must be >= 0"),
    (lambda: rgsm(groups="filters"), "groups must be one of"),
    (lambda: rvsm_weights({}, beta=0.0), "beta must be > 0"),
    (lambda: rgsm_weights({}, groups="x"), "groups must be one of"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_and_usage_errors():
    with pytest.raises(TypeError, match="where must be None or a callable"):
        rvsm(where="kernel")
    with pytest.raises(TypeError, match="lamb must be a real number"):
        rvsm(lamb="1e-6")
    p = {"b": {"bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match="ndim >= 2"):
        rgsm(where=ALL).init(p)
    with pytest.raises(ValueError, match="needs the current params"):
        tx = rvsm()
        tx.update(_params(), tx.init(_params()))
    with pytest.raises(ValueError, match="selected no leaf"):
        channel_sparsity(p)
