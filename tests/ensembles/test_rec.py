"""Randomized ensemble classifiers: exact vs sampled accuracy, robust accuracy, adaptive PGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import attacks
from jaxrob import ensembles as E


def linear(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def _ensemble(m=3, d=8, c=5, n=200, seed=0):
    r = np.random.default_rng(seed)
    params = E.stack([{"w": jnp.asarray(r.normal(size=(d, c)), jnp.float32),
                       "b": jnp.asarray(r.normal(size=c) * 0.1, jnp.float32)} for _ in range(m)])
    x = jnp.asarray(r.uniform(size=(n, d)), jnp.float32)
    # labels that each member gets right only sometimes: the first member's prediction, partly shuffled
    y = jnp.argmax(linear(jax.tree.map(lambda a: a[0], params), x), -1)
    flip = r.uniform(size=n) < 0.3
    y = jnp.where(flip, jnp.asarray(r.integers(0, c, n)), y).astype(jnp.int32)
    return E.Members(linear), params, x, y


def test_exact_accuracy_is_the_alpha_weighted_member_accuracy():
    members, params, x, y = _ensemble()
    alpha = jnp.array([0.6, 0.3, 0.1])
    per_member = [float(jnp.mean(jnp.argmax(linear(p, x), -1) == y)) for p in E.unstack(params)]
    assert E.rec_accuracy(members, params, x, y, alpha=alpha, batch_size=64) == pytest.approx(
        float(np.dot(alpha, per_member)), abs=1e-6)


def test_sampled_accuracy_converges_to_the_exact_expectation():
    """Statistical test: with S draws per example the sampled accuracy is an average of
    independent Bernoulli(p_b) variables, so its deviation from mean(p_b) has standard deviation
    sqrt(sum_b p_b (1 - p_b) / S) / N; we allow 5 of them (false alarm rate < 1e-6)."""
    members, params, x, y = _ensemble()
    alpha = jnp.array([0.5, 0.25, 0.25])
    exact = E.rec_accuracy(members, params, x, y, alpha=alpha)
    p = np.asarray(E.expected_correct(members(params, x), y, alpha))
    assert 0.1 < exact < 0.9 and np.any((p > 0) & (p < 1))  # the test is not degenerate
    n, samples = x.shape[0], 400
    sampled = E.rec_sampled_accuracy(members, params, x, y, alpha=alpha, key=jax.random.key(0),
                                     samples=samples, batch_size=64)
    sigma = np.sqrt(np.sum(p * (1 - p)) / samples) / n
    assert abs(sampled - exact) < 5 * sigma
    # and a single draw is a genuinely random estimate (different keys differ)
    a = E.rec_sampled_accuracy(members, params, x, y, alpha=alpha, key=jax.random.key(1))
    b = E.rec_sampled_accuracy(members, params, x, y, alpha=alpha, key=jax.random.key(2))
    assert a != b


@pytest.mark.slow
def test_rec_sample_draws_each_member_with_its_probability():
    members, params, x, _ = _ensemble(n=4)
    alpha = jnp.array([0.7, 0.2, 0.1])
    f = E.rec_sample(members)
    z = members(params, x)
    keys = jax.random.split(jax.random.key(0), 3000)
    out = jax.vmap(lambda k: f((params, alpha), x, key=k))(keys)  # (S, B, C)
    which = jnp.argmax(jnp.all(out[:, None] == z[None], axis=-1), axis=1)  # (S, B) member index
    freq = np.asarray(jnp.mean(jax.nn.one_hot(which, 3), axis=(0, 1)))
    np.testing.assert_allclose(freq, alpha, atol=0.02)
    one_hot = f((params, jnp.array([0.0, 1.0, 0.0])), x, key=jax.random.key(5))
    np.testing.assert_array_equal(one_hot, z[1])


def test_robust_accuracy_with_the_identity_attack_is_clean_accuracy():
    members, params, x, y = _ensemble()
    alpha = jnp.array([0.2, 0.3, 0.5])
    clean = E.rec_accuracy(members, params, x, y, alpha=alpha)
    robust = E.rec_robust_accuracy(members, params, x, y, alpha=alpha, attack=lambda xx, yy, k: xx,
                                   key=jax.random.key(0), batch_size=48)
    assert robust == pytest.approx(clean, abs=1e-6)


@pytest.mark.parametrize("objective", E.OBJECTIVES)
def test_rec_pgd_stays_in_the_ball_and_lowers_expected_accuracy(objective):
    members, params, x, y = _ensemble()
    alpha = jnp.array([0.5, 0.3, 0.2])
    x_adv = E.rec_pgd(members, params, x, y, alpha=alpha, key=jax.random.key(0), eps=0.1, steps=10,
                      objective=objective)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    clean = E.rec_accuracy(members, params, x, y, alpha=alpha)
    adv = E.rec_accuracy(members, params, x_adv, y, alpha=alpha)
    assert adv < clean - 0.05


def test_rec_pgd_with_a_point_mass_is_pgd_on_that_member():
    members, params, x, y = _ensemble()
    p1 = jax.tree.map(lambda a: a[1], params)
    key = jax.random.key(3)
    ref = attacks.pgd(linear, p1, x, y, key=key, eps=0.1, steps=10)
    out = E.rec_pgd(members, params, x, y, alpha=jnp.array([0.0, 1.0, 0.0]), key=key, eps=0.1, steps=10)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_rec_pgd_argument_errors():
    members, params, x, y = _ensemble(n=4)
    with pytest.raises(ValueError, match="objective"):
        E.rec_pgd(members, params, x, y, alpha=jnp.ones(3) / 3, key=jax.random.key(0), eps=0.1, steps=2,
                  objective="votes")
    with pytest.raises(TypeError, match="loss"):
        E.rec_pgd(members, params, x, y, alpha=jnp.ones(3) / 3, key=jax.random.key(0), eps=0.1, steps=2,
                  loss="cw")
    with pytest.raises(ValueError, match="3 members"):
        E.rec_accuracy(members, params, x, y, alpha=jnp.ones(2) / 2)
