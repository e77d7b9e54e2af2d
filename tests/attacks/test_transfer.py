"""TREND transferability: counts on hand-made predictions, the exponential fit, ensemble attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import attacks
from jaxrob.attacks._transfer import (RULES, TransferFit, ensemble_pgd, fit_transfer_curve, grad_sum_pgd,
                                      sign_agreement_pgd, sign_average_pgd, transfer_counts, transfer_curve,
                                      transfer_mask, transfer_matrix, transfer_metric)
from jaxrob.ensembles import Members, stack

KEY = jax.random.key(0)


def test_mask_on_hand_made_predictions():
    y = jnp.array([0, 0, 0, 0, 0, 0])
    #               transferred | target wrong on x' but source right on x'... | source wrong on x | target wrong on x
    sc = jnp.array([0, 0, 0, 1, 0, 0])
    sa = jnp.array([1, 0, 1, 1, 1, 2])
    tc = jnp.array([0, 0, 0, 0, 2, 0])
    ta = jnp.array([3, 3, 0, 3, 3, 0])
    t, e = transfer_mask(y, sc, sa, tc, ta)
    assert t.tolist() == [True, False, False, False, False, False]
    assert e.tolist() == [True, False, True, False, False, True]
    with pytest.raises(TypeError, match="integer class labels"):
        transfer_mask(y, sc, sa, tc, ta.astype(jnp.float32))
    with pytest.raises(ValueError, match="same shape"):
        transfer_mask(y, sc, sa, tc, ta[:3])


def test_counts_matrix_on_hand_made_predictions():
    """Two models, four examples; counts written out by hand."""
    y = jnp.array([0, 1, 2, 3])
    clean = jnp.array([[0, 1, 2, 0],    # model 0 right on 0, 1, 2
                       [0, 1, 0, 3]])   # model 1 right on 0, 1, 3
    adv = jnp.array([[[1, 0, 0, 0],     # x' from model 0: model 0 fooled on 0, 1, 2 (3: wrong on x anyway)
                      [1, 1, 2, 3]],    #                  model 1 fooled on 0 only
                     [[0, 0, 0, 0],     # x' from model 1: model 0 fooled on 1, 2, 3
                      [1, 0, 2, 0]]])   #                  model 1 fooled on all
    c = transfer_counts(y, clean, adv)
    # 0 -> 0: own successes {0, 1, 2}.  0 -> 1: eligible = src right & fooled & tgt right = {0, 1};
    # transferred {0}.  1 -> 1: {0, 1, 3}.  1 -> 0: eligible {0, 1} (3: model 0 wrong on x); transferred {1}.
    np.testing.assert_array_equal(c.transferred, [[3, 1], [1, 3]])
    np.testing.assert_array_equal(c.eligible, [[3, 2], [2, 3]])
    np.testing.assert_allclose(c.rate, [[1.0, 0.5], [0.5, 1.0]])
    with pytest.raises(ValueError, match=r"adv_preds must be \(K, K, B\)"):
        transfer_counts(y, clean, adv[0])


def test_fit_recovers_a_and_b():
    eps = jnp.linspace(0.005, 0.1, 12)
    a = jnp.array([[900.0, 300.0], [50.0, 1200.0]])
    b = jnp.array([[-40.0, -12.0], [-80.0, -5.0]])
    counts = transfer_curve(a[..., None], b[..., None], eps)
    fit = fit_transfer_curve(eps, counts)
    np.testing.assert_allclose(fit.a, a, rtol=2e-3)
    np.testing.assert_allclose(fit.b, b, rtol=2e-3)
    # Noisy counts: the fit is the least-squares one (no better (a, b) nearby), close to the truth.
    noisy = np.asarray(counts[0, 0]) + np.asarray(jax.random.normal(KEY, (12,))) * 5
    f = fit_transfer_curve(eps, noisy)
    sse = lambda a, b: float(np.sum((noisy - np.asarray(transfer_curve(a, b, eps))) ** 2))  # noqa: E731
    for da, db in ((1, 0), (-1, 0), (0, 0.2), (0, -0.2)):
        assert sse(float(f.a) + da, float(f.b) + db) >= float(f.sse) - 1e-3
    assert abs(float(f.a) - 900) < 30 and abs(float(f.b) + 40) < 4


def test_metric_normalises_by_the_source_own_successes():
    fit = TransferFit(a=jnp.array([[100.0, 50.0], [20.0, 80.0]]), b=jnp.full((2, 2), -30.0), sse=jnp.zeros((2, 2)))
    tm = transfer_metric(fit, 0.05)
    np.testing.assert_allclose(tm, [[1.0, 0.5], [0.25, 1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="eps"):
        transfer_metric(fit, 0.0)


def test_fit_errors():
    with pytest.raises(ValueError, match="at least 2 distinct"):
        fit_transfer_curve([0.1, 0.1], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        fit_transfer_curve([0.1, 0.2, 0.3], [1.0, 2.0])


# --------------------------------------------------------------------------- ensemble attacks

def _linear(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def _members(seed, m=3):
    ks = jax.random.split(jax.random.key(seed), m)
    return stack([{"w": jax.random.normal(k, (12, 4)), "b": jnp.zeros(4)} for k in ks])


X = jax.random.uniform(jax.random.key(5), (6, 2, 3, 2))
Y = jnp.array([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("rule", RULES)
def test_ensemble_attacks_stay_in_ball_and_box_and_raise_the_loss(rule):
    params = _members(1)
    eps = 0.1
    x_adv = ensemble_pgd(_linear, params, X, Y, key=KEY, eps=eps, steps=7, rule=rule)  # compiles shared below
    assert x_adv.shape == X.shape and x_adv.dtype == X.dtype
    assert float(jnp.max(jnp.abs(x_adv - X))) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    loss = lambda x: sum(attacks.ce_loss(_linear(jax.tree.map(lambda a: a[i], params), x), Y).sum()  # noqa: E731
                         for i in range(3))
    assert float(loss(x_adv)) > float(loss(X))


def test_identical_members_equal_pgd_on_one_member():
    one = {"w": jax.random.normal(KEY, (12, 4)), "b": jnp.zeros(4)}
    same = stack([one, one, one])
    ref = attacks.pgd(_linear, one, X, Y, key=KEY, eps=0.1, steps=7)
    for rule in RULES:
        np.testing.assert_allclose(ensemble_pgd(_linear, same, X, Y, key=KEY, eps=0.1, steps=7, rule=rule), ref,
                                   atol=1e-6)


def test_rules_differ_and_sign_agreement_steps_only_where_all_agree():
    """One step from x with step size s: the moved coordinates are exactly those where all signs agree."""
    params = _members(2)
    s = 0.05
    g = jax.vmap(lambda p: jax.grad(lambda x: attacks.ce_loss(_linear(p, x), Y).sum())(X))(params)
    signs = jnp.sign(g)
    agree = jnp.all(signs == signs[0], axis=0) & (signs[0] != 0)
    x1 = sign_agreement_pgd(_linear, params, X, Y, key=KEY, eps=0.2, steps=1, step_size=s, init="zero", clip=None)
    np.testing.assert_allclose(x1 - X, jnp.where(agree, s * signs[0], 0.0), atol=1e-6)
    x2 = sign_average_pgd(_linear, params, X, Y, key=KEY, eps=0.2, steps=1, step_size=s, init="zero", clip=None)
    np.testing.assert_allclose(x2 - X, s * jnp.sign(signs.sum(0)), atol=1e-6)
    x3 = grad_sum_pgd(_linear, params, X, Y, key=KEY, eps=0.2, steps=1, step_size=s, init="zero", clip=None)
    np.testing.assert_allclose(x3 - X, s * jnp.sign(g.sum(0)), atol=1e-6)
    assert not bool(agree.all()) and not np.allclose(x1, x2)


@pytest.mark.slow  # about 15 s of compiles; keeps the suite within its 10-minute budget
def test_jit_eager_and_groups_agree():
    params = _members(3)
    kw = dict(key=KEY, eps=0.1, steps=7, rule="sign_average")
    eager = ensemble_pgd(lambda p, x: _linear(p, x), params, X, Y, **kw)  # fresh lambda: not cached
    jitted = ensemble_pgd(_linear, params, X, Y, **kw)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    p0, p1 = jax.tree.map(lambda a: a[:1], params), jax.tree.map(lambda a: a[1:], params)
    grouped = ensemble_pgd(Members(_linear, lambda p, x: _linear(p, x)), (p0, p1), X, Y, **kw)
    np.testing.assert_allclose(grouped, jitted, atol=1e-6)
    vmapped = ensemble_pgd(Members(_linear, unroll=False), params, X, Y, **kw)
    np.testing.assert_allclose(vmapped, jitted, atol=1e-6)


def test_ensemble_attack_errors():
    params = _members(1)
    with pytest.raises(ValueError, match="rule must be one of"):
        ensemble_pgd(_linear, params, X, Y, key=KEY, eps=0.1, steps=2, rule="mean")
    with pytest.raises(ValueError, match="steps"):
        ensemble_pgd(_linear, params, X, Y, key=KEY, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="eps"):
        ensemble_pgd(_linear, params, X, Y, key=KEY, eps=-0.1, steps=2)


@pytest.mark.slow  # about 20 s of compiles; the suite keeps its 10-minute budget
def test_transfer_matrix_end_to_end():
    """Two linear models; a model and an exact copy transfer everything (rate 1 both ways)."""
    p = {"w": jax.random.normal(KEY, (12, 4)), "b": jnp.zeros(4)}
    models = [(_linear, p), (_linear, jax.tree.map(jnp.copy, p)), (_linear, _members(7, 1))]
    models[2] = (_linear, jax.tree.map(lambda a: a[0], models[2][1]))
    x = jax.random.uniform(jax.random.key(9), (32, 2, 3, 2))
    y = jnp.argmax(_linear(p, x), -1)  # model 0 (and its copy) right on every example
    c = transfer_matrix(models, x, y, key=KEY, eps=0.3, steps=10, batch_size=16)
    assert c.transferred.shape == (3, 3)
    np.testing.assert_array_equal(c.transferred[0, 1], c.transferred[0, 0])
    np.testing.assert_allclose(c.rate[0, 1], 1.0)
    np.testing.assert_array_equal(np.diag(c.transferred), np.diag(c.eligible))
    assert np.all(np.asarray(c.transferred) <= np.asarray(c.eligible))
