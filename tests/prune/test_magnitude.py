"""Tests of magnitude pruning: exact counts, tie rules, global scope, the Zhu & Gupta schedule, gradual pruning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrob import data, models, train
from jaxrob.prune._magnitude import (gradual_pruning, magnitude_masks, magnitude_prune, polynomial_sparsity,
                                     topk_mask)
from jaxrob.prune._masks import sparsity


def _reference_keep(scores, s):
    """Brute force: stable sort by (-score, index), keep the first round-half-even(n (1 - s))."""
    flat = np.asarray(scores, np.float64).reshape(-1)
    n = flat.size
    k = int(np.round(np.float32(n) * (np.float32(1.0) - np.float32(s))))
    order = sorted(range(n), key=lambda i: (-flat[i], i))
    keep = np.zeros(n, bool)
    keep[order[:k]] = True
    return keep.reshape(np.shape(scores))


_topk_traced = jax.jit(lambda x, t: topk_mask(x, sparsity=t))   # one compile for every sparsity


@pytest.mark.parametrize("s", [0.0, 0.25, 0.7, 1.0])
def test_topk_mask_matches_brute_force_with_many_ties(s):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(7, 9)).astype(np.float32)  # heavy ties
    got = topk_mask(jnp.asarray(scores), sparsity=s)
    np.testing.assert_array_equal(got, _reference_keep(scores, s))
    assert int(got.sum()) == int(np.round(63 * (1 - np.float32(s))))
    # traced sparsity: one compile, same answer
    np.testing.assert_array_equal(_topk_traced(scores, s), got)


def test_topk_mask_signed_scores_zeros_and_extremes():
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(size=40), [0.0, -0.0, 0.0, -1e-38, 1e-38, -np.inf, np.inf, 3.0, 3.0]])
    scores = scores.astype(np.float32)
    for s in (0.0, 0.3, 0.5, 0.9):
        np.testing.assert_array_equal(topk_mask(jnp.asarray(scores), sparsity=s), _reference_keep(scores, s))


def test_radix_select_and_sort_threshold_agree():
    """The CPU (radix select) and accelerator (sort) paths find the same k-th largest key."""
    from jaxrob.prune._magnitude import _kth_largest_radix, _kth_largest_sort, _sort_keys
    rng = np.random.default_rng(4)
    x = (rng.integers(-6, 6, size=97) * 0.37).astype(np.float32)
    keys = _sort_keys(jnp.asarray(x))
    ks = jnp.arange(1, 98, dtype=jnp.int32)
    radix = jax.vmap(lambda k: _kth_largest_radix(keys, k))(ks)
    np.testing.assert_array_equal(radix, jax.vmap(lambda k: _kth_largest_sort(keys, k))(ks))
    # and the keys order like the floats
    np.testing.assert_array_equal(np.argsort(np.asarray(keys), kind="stable"), np.argsort(x, kind="stable"))


def test_topk_mask_all_equal_and_errors():
    np.testing.assert_array_equal(topk_mask(jnp.zeros(5), sparsity=0.4), [True, True, True, False, False])
    with pytest.raises(ValueError, match=r"sparsity must be <= 1"):
        topk_mask(jnp.ones(3), sparsity=1.5)
    with pytest.raises(TypeError, match="sparsity"):
        topk_mask(jnp.ones(3), sparsity="half")


def _params(seed):
    rng = np.random.default_rng(seed)   # numpy: no compiles for test data
    return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32), "bias": jnp.ones(8)},
            "fc": {"kernel": jnp.asarray(0.1 * rng.normal(size=(32, 10)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=10), jnp.float32)}}


def test_layer_scope_exact_sparsity_per_layer_and_bias_untouched():
    p = _params(0)
    pruned, masks = magnitude_prune(p, sparsity=0.6)
    rep = sparsity(masks)
    assert rep.per_layer == {"conv/kernel": pytest.approx(1 - round(288 * 0.4) / 288),
                             "fc/kernel": pytest.approx(1 - 128 / 320)}
    assert bool(masks["conv"]["bias"].all()) and bool(masks["fc"]["bias"].all())
    np.testing.assert_array_equal(pruned["fc"]["bias"], p["fc"]["bias"])
    # kept weights are exactly the largest ones of their layer
    w = np.abs(np.asarray(p["conv"]["kernel"]))
    m = np.asarray(masks["conv"]["kernel"])
    assert w[m].min() > w[~m].max()


def test_global_scope_one_threshold_across_layers():
    p = _params(1)
    masks = magnitude_masks(p, sparsity=0.5, scope="global")
    allw = np.concatenate([np.abs(np.asarray(p[k]["kernel"])).ravel() for k in ("conv", "fc")])
    allm = np.concatenate([np.asarray(masks[k]["kernel"]).ravel() for k in ("conv", "fc")])
    np.testing.assert_array_equal(allm, _reference_keep(allw, 0.5))
    assert allw[allm].min() > allw[~allm].max()
    rep = sparsity(masks)
    assert rep.zeros == 608 - round(608 * 0.5)
    # the small-weight fc layer is pruned harder than the conv layer
    assert rep.per_layer["fc/kernel"] > 0.75 > 0.25 > rep.per_layer["conv/kernel"]
    # normalised global ranking is a different criterion (per-layer L2 scaling)
    norm = magnitude_masks(p, sparsity=0.5, scope="global", normalize=True)
    assert sparsity(norm).per_layer["fc/kernel"] < rep.per_layer["fc/kernel"]
    # jit agrees
    jm = jax.jit(lambda q: magnitude_masks(q, sparsity=0.5, scope="global"))(p)
    for a, b in zip(jax.tree.leaves(jm), jax.tree.leaves(masks)):
        np.testing.assert_array_equal(a, b)


def test_magnitude_errors():
    p = _params(0)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(p, sparsity=0.5, scope="block")
    with pytest.raises(ValueError, match="normalize"):
        magnitude_masks(p, sparsity=0.5, normalize=True)


def test_polynomial_schedule_matches_zhu_gupta_formula():
    s_i, s_f, t0, n, dt = 0.1, 0.9, 20, 8, 10
    steps = np.arange(0, 150)
    got = np.asarray(polynomial_sparsity(steps, final_sparsity=s_f, initial_sparsity=s_i, begin_step=t0,
                                         end_step=t0 + n * dt, update_every=dt))
    for t, v in zip(steps, got):
        if t < t0:
            want = 0.0
        else:
            tk = min(t0 + (t - t0) // dt * dt, t0 + n * dt)
            want = s_f + (s_i - s_f) * (1 - (tk - t0) / (n * dt)) ** 3
        assert v == pytest.approx(want, abs=1e-6), t
    assert np.all(np.diff(got[t0:]) >= 0)   # monotone after t0
    with pytest.raises(ValueError, match="multiple of update_every"):
        polynomial_sparsity(0, final_sparsity=0.5, begin_step=0, end_step=10, update_every=3)
    with pytest.raises(ValueError, match="initial_sparsity"):
        polynomial_sparsity(0, final_sparsity=0.5, initial_sparsity=0.6, end_step=10)


def test_gradual_pruning_follows_the_schedule_in_an_optax_loop():
    params = {"a": {"kernel": jnp.asarray(np.random.default_rng(6).normal(size=(10, 10)), jnp.float32)},
              "a_bias": {"bias": jnp.ones(3)}}
    tx = gradual_pruning(optax.sgd(0.01), final_sparsity=0.9, initial_sparsity=0.1, begin_step=1, end_step=7,
                         update_every=3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(10):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        want = float(polynomial_sparsity(t, final_sparsity=0.9, initial_sparsity=0.1, begin_step=1, end_step=7,
                                         update_every=3))
        assert sparsity(params).total == pytest.approx(round(100 * want) / 100)
        assert bool(params["a_bias"]["bias"].all())            # not a kernel: never pruned
    assert sparsity(state.masks).total == pytest.approx(0.9)


@pytest.mark.slow
def test_gradual_pruning_through_fit():
    net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
    xs, ys = data.as_arrays(data.load("mnist10k", split="train"), limit=1000)
    ds = data.from_arrays((xs * 255).round().astype(np.uint8), ys, num_classes=10)
    seen = []
    tx = gradual_pruning(optax.sgd(0.1, momentum=0.9), final_sparsity=0.8, begin_step=2, end_step=8,
                         update_every=2, scope="global")

    def callback(state, metrics):
        seen.append((int(state.step), float(state.opt_state.sparsity), sparsity(state.params).total))

    state, hist = train.fit(net, ds, optimizer=tx, epochs=2, batch_size=200, key=jax.random.key(1),
                            progress=False, callback=callback)
    # after step t (state.step = t + 1) the masks in force are those of the schedule at t
    for step, target, actual in seen:
        want = float(polynomial_sparsity(step - 1, final_sparsity=0.8, begin_step=2, end_step=8, update_every=2))
        assert target == pytest.approx(want, abs=1e-6)
        assert actual == pytest.approx(want, abs=2e-3)   # exact up to round(n (1 - s)) / n
    final = sparsity(state.params)
    assert final.total == pytest.approx(0.8, abs=1e-4)
    # pruned weights are exactly zero and are the masks' False entries
    for p_, m_ in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.opt_state.masks)):
        assert not np.any(np.asarray(p_)[~np.asarray(m_)])
    assert hist[-1]["accuracy"] > 0.6
