"""Stacked members under vmap, deterministic averages, alpha checks and the simplex projection."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import ensembles as E
from jaxrob import models


def linear(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def quadratic(p, x):
    """A second architecture with a different params structure."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["u"])
    return h @ p["v"]


def _linear_params(seed, d=6, c=4):
    r = np.random.default_rng(seed)
    return {"w": jnp.asarray(r.normal(size=(d, c)), jnp.float32), "b": jnp.asarray(r.normal(size=c), jnp.float32)}


def _quad_params(seed, d=6, c=4):
    r = np.random.default_rng(100 + seed)
    return {"u": jnp.asarray(r.normal(size=(d, 5)), jnp.float32), "v": jnp.asarray(r.normal(size=(5, c)), jnp.float32)}


X = jnp.asarray(np.random.default_rng(0).uniform(size=(7, 6)), jnp.float32)


def test_stack_unstack_round_trip():
    trees = [_linear_params(i) for i in range(3)]
    stacked = E.stack(trees)
    assert stacked["w"].shape == (3, 6, 4) and E.num_members(stacked) == 3
    for a, b in zip(E.unstack(stacked), trees):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_stack_rejects_mismatched_members():
    with pytest.raises(ValueError, match="structure"):
        E.stack([_linear_params(0), _quad_params(0)])
    with pytest.raises(ValueError, match="shape"):
        E.stack([_linear_params(0), _linear_params(1, d=5)])
    with pytest.raises(ValueError, match="at least one"):
        E.stack([])


@pytest.mark.parametrize("unroll", [False, True, None])
def test_vmap_over_members_equals_per_member_loop_on_a_real_model(unroll):
    ms = [models.create("cnn_small", key=jax.random.key(i)) for i in range(3)]
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 28, 28, 1)), jnp.float32)
    members = E.Members(ms[0].apply_fn, unroll=unroll)
    out = jax.jit(members)(E.stack([m.variables for m in ms]), x)
    loop = jnp.stack([m.apply_fn(m.variables, x) for m in ms])
    np.testing.assert_allclose(out, loop, rtol=1e-5, atol=1e-5)


def test_unroll_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="unroll"):
        E.Members(linear, unroll="yes")


def test_heterogeneous_groups_concatenate_in_group_order():
    lin, quad = [_linear_params(i) for i in range(2)], [_quad_params(i) for i in range(3)]
    members = E.Members(linear, quadratic, unroll=False)
    out = members((E.stack(lin), E.stack(quad)), X)
    unrolled = E.Members(linear, quadratic, unroll=True)((E.stack(lin), E.stack(quad)), X)
    np.testing.assert_allclose(unrolled, out, rtol=1e-6, atol=1e-6)
    loop = jnp.stack([linear(p, X) for p in lin] + [quadratic(p, X) for p in quad])
    assert members.num_members((E.stack(lin), E.stack(quad))) == 5
    np.testing.assert_allclose(out, loop, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="tuple of 2"):
        members(E.stack(lin), X)


def test_members_hash_alike_so_jit_caches_are_shared():
    assert E.Members(linear) == E.Members(linear) and hash(E.Members(linear)) == hash(E.Members(linear))
    assert E.average(linear, over="probs") == E.average(E.Members(linear), over="probs")


@pytest.mark.parametrize("over", ["logits", "probs"])
def test_average_matches_its_definition(over):
    trees = [_linear_params(i) for i in range(3)]
    z = jnp.stack([linear(p, X) for p in trees])
    w = jnp.array([0.2, 0.5, 0.3])
    uniform = E.average(linear, over=over)(E.stack(trees), X)
    weighted = E.average(linear, over=over, weighted=True)((E.stack(trees), w), X)
    if over == "logits":
        np.testing.assert_allclose(uniform, z.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(weighted, jnp.einsum("m,mbc->bc", w, z), rtol=1e-6, atol=1e-6)
    else:
        p = jax.nn.softmax(z, axis=-1)
        np.testing.assert_allclose(jnp.exp(uniform), p.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jnp.exp(weighted), jnp.einsum("m,mbc->bc", w, p), rtol=1e-5, atol=1e-6)


def test_average_rejects_unknown_mode():
    with pytest.raises(ValueError, match="over"):
        E.average(linear, over="votes")


def test_expected_correct_on_hand_made_logits():
    # member 0 right on both, member 1 right on example 1 only, member 2 wrong on both
    logits = jnp.array([[[2.0, 0.0], [0.0, 1.0]],
                        [[0.0, 2.0], [0.0, 1.0]],
                        [[0.0, 2.0], [3.0, 1.0]]])
    y = jnp.array([0, 1])
    alpha = jnp.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(E.expected_correct(logits, y, alpha), [0.5, 0.8], rtol=1e-6)


@pytest.mark.parametrize("alpha, match", [
    ([0.5, 0.6], "sum to 1"),
    ([1.2, -0.2], "non-negative"),
    ([[0.5, 0.5]], "1-D"),
    ([0.5, 0.25, 0.25], "3 entries but the ensemble has 2"),
    ([np.nan, 1.0], "finite"),
])
def test_check_alpha_errors(alpha, match):
    with pytest.raises(ValueError, match=match):
        E.check_alpha(alpha, 2)


def _simplex_bruteforce(v):
    """Projection by enumerating supports: for support S, x_S = v_S - (sum v_S - 1)/|S|."""
    best, best_d = None, np.inf
    n = v.size
    for k in range(1, n + 1):
        for s in itertools.combinations(range(n), k):
            x = np.zeros(n)
            idx = list(s)
            x[idx] = v[idx] - (v[idx].sum() - 1.0) / k
            if np.all(x >= -1e-12):
                d = np.sum((x - v) ** 2)
                if d < best_d:
                    best, best_d = x, d
    return best


def test_project_simplex_matches_brute_force():
    r = np.random.default_rng(3)
    for _ in range(30):
        v = r.normal(size=r.integers(1, 6)) * 2
        p = np.asarray(E.project_simplex(v))
        assert abs(p.sum() - 1) < 1e-5 and np.all(p >= 0)
        np.testing.assert_allclose(p, _simplex_bruteforce(v), atol=1e-5)
    q = jnp.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(E.project_simplex(q), q, atol=1e-6)  # idempotent on the simplex
