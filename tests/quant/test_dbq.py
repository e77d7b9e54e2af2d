"""DBQ: levels, idempotence, branch decomposition, relaxation limit and gradients, init, QAT wrapper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._binary_relax import STEP_KEY
from jaxrob.quant._dbq import (dbq, dbq_bits_per_weight, dbq_branches, dbq_finalize, dbq_init, dbq_levels,
                               dbq_model, dbq_thresholds, temperature_schedule)

W = jax.random.normal(jax.random.key(0), (64, 8))
A = jnp.array([0.4, 0.5, 0.3])


def test_levels_thresholds_and_nearest_level():
    assert np.allclose(dbq_levels(A), [0, 0.4, 0.9, 1.2])
    assert np.allclose(dbq_thresholds(A), [0.2, 0.65, 1.05])
    q = np.asarray(dbq(W, A))
    levels = np.concatenate([-np.asarray(dbq_levels(A))[::-1], np.asarray(dbq_levels(A))[1:]])
    assert len(np.unique(q)) <= 2 * len(A) + 1
    assert np.all(np.isin(np.round(q, 6), np.round(levels, 6)))
    # nearest level (midpoint thresholds) = brute-force argmin over the levels
    brute = levels[np.argmin(np.abs(np.asarray(W)[..., None] - levels), axis=-1)]
    assert np.allclose(q, brute, atol=1e-6)


def test_idempotent_and_sign_of_scales_ignored():
    q = dbq(W, A)
    assert np.array_equal(np.asarray(dbq(q, A)), np.asarray(q))
    assert np.array_equal(np.asarray(dbq(W, -A)), np.asarray(q))


def test_sum_of_ternary_branches_and_ternary_dot_products():
    t = dbq_branches(W, A)
    assert t.dtype == jnp.int8 and t.shape == (3,) + W.shape
    assert set(np.unique(np.asarray(t))) <= {-1, 0, 1}
    q = jnp.tensordot(A, t.astype(jnp.float32), axes=1)
    assert np.allclose(q, dbq(W, A), atol=1e-6)
    x = jax.random.normal(jax.random.key(1), (5, 64))
    branch_sum = sum(A[k] * (x @ t[k].astype(jnp.float32)) for k in range(3))  # K ternary engine passes
    assert np.allclose(branch_sum, x @ dbq(W, A), atol=1e-5)


def test_relaxation_tends_to_hard_quantizer():
    far = np.all(np.abs(np.abs(np.asarray(W))[..., None] - np.asarray(dbq_thresholds(A))) > 1e-2, axis=-1)
    errs = [float(jnp.max(jnp.abs(dbq(W, A, temperature=t) - dbq(W, A))[far])) for t in (1.0, 10.0, 100.0, 1e3)]
    assert errs[-1] < 1e-4 and all(a >= b for a, b in zip(errs, errs[1:]))


@pytest.mark.slow
def test_soft_gradient_matches_finite_differences():
    w = jnp.array([0.1, 0.35, -0.7, 1.0, -1.3])
    f = lambda w, a: jnp.sum(jnp.sin(3 * dbq(w, a, temperature=3.0)))  # noqa: E731
    gw, ga = jax.grad(f, argnums=(0, 1))(w, A)
    h = 1e-3
    for i in range(w.size):
        e = jnp.zeros_like(w).at[i].set(h)
        assert float(gw[i]) == pytest.approx(float((f(w + e, A) - f(w - e, A)) / (2 * h)), rel=2e-2, abs=2e-3)
    for k in range(A.size):
        e = jnp.zeros_like(A).at[k].set(h)
        assert float(ga[k]) == pytest.approx(float((f(w, A + e) - f(w, A - e)) / (2 * h)), rel=2e-2, abs=2e-3)


def test_hard_forward_gradient_rules():
    w = jnp.array([0.1, 0.35, -0.7, 1.0])
    # hard forward with the relaxation's gradient
    soft_g = jax.grad(lambda w: dbq(w, A, temperature=5.0).sum())(w)
    hard_val, hard_g = jax.value_and_grad(lambda w: dbq(w, A, temperature=5.0, forward="hard").sum())(w)
    assert np.allclose(hard_g, soft_g) and float(hard_val) == pytest.approx(float(dbq(w, A).sum()))
    # temperature=None: identity STE in w, branch values for the scales
    gw, ga = jax.grad(lambda w, a: dbq(w, a).sum(), argnums=(0, 1))(w, A)
    assert np.allclose(gw, 1.0)
    assert np.allclose(ga, np.asarray(dbq_branches(w, A)).sum(axis=1))


def test_jit_vmap_agree():
    ws = jax.random.normal(jax.random.key(2), (3, 10))
    f = lambda w: dbq(w, A, temperature=7.0)  # noqa: E731
    assert np.allclose(jax.jit(f)(ws[0]), f(ws[0]))
    assert np.allclose(jax.vmap(f)(ws), jnp.stack([f(w) for w in ws]))


@pytest.mark.slow
def test_init_is_lloyd_optimal_locally():
    w = jax.random.normal(jax.random.key(3), (4000,))
    a = dbq_init(w, branches=2)
    assert a.shape == (2,) and bool(jnp.all(a > 0))
    mse = lambda a: float(jnp.mean((dbq(w, a) - w) ** 2))  # noqa: E731
    base = mse(a)
    for d in (jnp.array([0.05, 0]), jnp.array([0, 0.05]), jnp.array([-0.05, 0]), jnp.array([0, -0.05])):
        assert base <= mse(a + d) + 1e-6
    # K = 1 with Lloyd is the optimal ternary threshold/scale pair for a Gaussian (~0.61 sigma threshold)
    a1 = dbq_init(w, branches=1)
    assert float(a1[0]) / 2 == pytest.approx(0.61, abs=0.05)


def test_errors():
    with pytest.raises(ValueError, match="scales must be a 1-D"):
        dbq(W, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        dbq(W, A, temperature=0.0)
    with pytest.raises(ValueError, match="forward must be one of"):
        dbq(W, A, temperature=1.0, forward="medium")
    with pytest.raises(TypeError, match="floating point"):
        dbq(jnp.arange(3), A)
    with pytest.raises(ValueError, match="branches must be >= 1"):
        dbq_init(W, branches=0)
    assert dbq_bits_per_weight(1) == 2 and dbq_bits_per_weight(2) == 3 and dbq_bits_per_weight(4) == 4


def test_schedule_and_model_wrapper():
    assert float(temperature_schedule(0, total_steps=10, t_start=1, t_end=100)) == pytest.approx(1.0)
    assert float(temperature_schedule(5, total_steps=10, t_start=1, t_end=100)) == pytest.approx(10.0, rel=1e-5)
    assert float(temperature_schedule(50, total_steps=10, t_start=1, t_end=100)) == pytest.approx(100.0, rel=1e-5)

    def apply_fn(v, x):
        return x @ v["params"]["dense"]["kernel"] + v["params"]["dense"]["bias"]

    def train_apply(v, x, *, key=None):
        return apply_fn(v, x), v["batch_stats"]

    from jaxrob.models import Model
    w = jax.random.normal(jax.random.key(4), (6, 3))
    base = Model(apply_fn, train_apply, {"params": {"dense": {"kernel": w, "bias": jnp.zeros(3)}},
                                         "batch_stats": {}}, "toy", (6,), 3)
    wrapped = dbq_model(base, total_steps=4, branches=2)
    x = jax.random.normal(jax.random.key(5), (2, 6))
    v = wrapped.variables
    hard = dbq(w, v["params"]["scales"]["dense/kernel"])
    assert np.allclose(wrapped.apply_fn(v, x), x @ hard, atol=1e-6)  # eval mode: the deployed hard weights
    logits, stats = wrapped.train_apply(v, x, key=jax.random.key(0))
    assert float(stats[STEP_KEY]) == 1.0
    soft = dbq(w, v["params"]["scales"]["dense/kernel"], temperature=1.0)
    assert np.allclose(logits, x @ soft, atol=1e-6)  # train mode: the relaxation at T(0)
    final = dbq_finalize(base, v)
    assert np.array_equal(np.asarray(final.params["dense"]["kernel"]), np.asarray(hard))
    assert STEP_KEY not in final.variables["batch_stats"]
    with pytest.raises(ValueError, match="dbq_model"):
        dbq_finalize(base, base.variables)
