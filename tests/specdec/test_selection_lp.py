"""The JAX simplex and the selection LPs against scipy's HiGHS and against the closed forms.

* :func:`simplex` equals ``scipy.optimize.linprog(method="highs")`` on random dense LPs.
* The coupling LP (solved in max-flow form) equals HiGHS on the *full* ``V**K x V``
  coupling LP with both marginal equality constraints, for identical and
  non-identical drafts -- which checks the max-flow reduction as well as the solver.
* The min-cut closed form (:func:`optimal_acceptance`) and the K = 2 explicit
  expression equal the LP optimum on random pairs; the acceptance-one condition agrees
  with ``P* == 1``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
from jaxrob.specdec import _lp
import specdec_cases as cases

scipy_optimize = pytest.importorskip("scipy.optimize")


def _full_coupling_optimum(p, qs):
    """HiGHS on the full coupling LP: pi(x, y) >= 0, rows sum to Q(x), columns to p(y)."""
    k, v = qs.shape
    tup = _lp.tuples(v, k)
    n = len(tup)
    q_tuple = np.prod(np.asarray(qs, np.float64)[np.arange(k)[None], tup], axis=1)
    cost = -np.array([[float(y in t) for y in range(v)] for t in tup.tolist()]).ravel()
    a_eq = np.zeros((n + v, n * v))
    for x in range(n):
        a_eq[x, x * v:(x + 1) * v] = 1.0
    for y in range(v):
        a_eq[n + y, y::v] = 1.0
    p64 = np.asarray(p, np.float64)
    res = scipy_optimize.linprog(cost, A_eq=a_eq, b_eq=np.concatenate([q_tuple, p64 / p64.sum()]),
                                 bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


def test_simplex_matches_highs_on_random_dense_lps():
    rng = np.random.default_rng(0)
    m, n = 7, 10
    cs, as_, bs = [], [], []
    for _ in range(6):
        a = rng.uniform(-1.0, 2.0, (m, n))
        a[-1] = 1.0                                           # sum(x) <= b[-1] keeps it bounded
        as_.append(a)
        bs.append(rng.uniform(0.2, 3.0, m))
        cs.append(rng.uniform(-1.0, 2.0, n))
    with jax.enable_x64(True):
        sols = jax.vmap(lambda c, a, b: _lp.simplex(c, a, b))(jnp.asarray(np.stack(cs)), jnp.asarray(np.stack(as_)),
                                                              jnp.asarray(np.stack(bs)))
        values, status, xs = np.asarray(sols.value), np.asarray(sols.status), np.asarray(sols.x)
    for c, a, b, v, st, x in zip(cs, as_, bs, values, status, xs):
        ref = scipy_optimize.linprog(-c, A_ub=a, b_ub=b, method="highs")
        assert st == _lp.OPTIMAL
        np.testing.assert_allclose(v, -ref.fun, rtol=1e-9, atol=1e-9)
        assert np.all(a @ x <= b + 1e-9) and np.all(x >= 0)


def test_simplex_reports_unbounded():
    sol = _lp.simplex(jnp.array([1.0, 1.0]), jnp.array([[1.0, -1.0]]), jnp.array([1.0]))
    assert int(sol.status) == _lp.UNBOUNDED


@pytest.mark.parametrize("v, k, identical", [
    (4, 2, True),
    pytest.param(4, 2, False, marks=pytest.mark.slow),
    pytest.param(3, 3, False, marks=pytest.mark.slow),
])
def test_coupling_lp_equals_highs_full_coupling_lp(v, k, identical):
    rng = np.random.default_rng(10 * v + k + identical)
    n_inst = 4
    ps = cases.dists(rng, n_inst, v)
    if identical:
        qss = np.repeat(cases.dists(rng, n_inst, v)[:, None], k, axis=1)
    else:
        qss = np.stack([cases.dists(rng, k, v) for _ in range(n_inst)])
    cps = jax.jit(jax.vmap(_lp.coupling_lp))(jnp.asarray(ps), jnp.asarray(qss))
    for i in range(n_inst):
        ref = _full_coupling_optimum(ps[i], qss[i])
        assert int(cps.status[i]) == _lp.OPTIMAL
        np.testing.assert_allclose(float(cps.value[i]), ref, atol=2e-6)
        # the completed coupling has both marginals exactly
        acc_part = np.asarray(cps.accepted[i], np.float64)
        r = np.asarray(cps.rejected_tuple[i], np.float64)
        d = np.asarray(cps.rejected_token[i], np.float64)
        full = acc_part + (np.outer(r, d) / d.sum() if d.sum() > 0 else 0.0)
        np.testing.assert_allclose(full.sum(0), ps[i], atol=2e-6)
        np.testing.assert_allclose(full.sum(1), np.asarray(cps.tuple_probs[i]), atol=2e-6)
        # the closed form (min cut) agrees
        np.testing.assert_allclose(float(acc.optimal_acceptance(ps[i], qss[i])), ref, atol=2e-6)


def test_k2_formula_and_condition_against_the_lp():
    rng = np.random.default_rng(7)
    v, n_inst = 5, 24
    ps = cases.dists(rng, n_inst, v)
    qs = cases.dists(rng, n_inst, v, alpha=1.5)
    # make a third of the pairs close (mixtures), where P* = 1 is possible
    mix = rng.uniform(0.0, 1.0, (n_inst // 3, 1)).astype(np.float32)
    qs[: n_inst // 3] = mix * ps[: n_inst // 3] + (1 - mix) * qs[: n_inst // 3]
    qs /= qs.sum(-1, keepdims=True)
    pairs = jnp.asarray(np.repeat(qs[:, None], 2, axis=1))
    lp_values = np.asarray(jax.jit(jax.vmap(lambda p, q2: _lp.coupling_lp(p, q2).value))(jnp.asarray(ps), pairs))
    formula = np.asarray(jax.vmap(acc.k2_optimal_acceptance)(jnp.asarray(ps), jnp.asarray(qs)))
    np.testing.assert_allclose(formula, lp_values, atol=2e-6)
    for i in range(6):
        np.testing.assert_allclose(formula[i], _full_coupling_optimum(ps[i], np.stack([qs[i], qs[i]])), atol=2e-6)
    one = np.asarray(jax.vmap(acc.k2_acceptance_is_one)(jnp.asarray(ps), jnp.asarray(qs)))
    np.testing.assert_array_equal(one, lp_values > 1 - 1e-5)
    assert one.any() and not one.all()
    # the condition by brute force over all 2**V token sets
    for i in range(n_inst):
        masks = ((np.arange(1 << v)[:, None] >> np.arange(v)) & 1).astype(np.float64)
        brute = bool(np.all((masks @ qs[i]) ** 2 <= masks @ ps[i] + 1e-6))
        assert brute == bool(one[i])


def test_p_equals_q_is_always_accepted():
    p = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0])          # V = 5: the shapes compiled by the test above
    assert bool(acc.k2_acceptance_is_one(p, p))
    np.testing.assert_allclose(float(acc.k2_optimal_acceptance(p, p)), 1.0, atol=1e-6)
    # disjoint supports: nothing can be accepted
    q = jnp.array([0.0, 0.0, 0.5, 0.5, 0.0])
    p2 = jnp.array([0.5, 0.5, 0.0, 0.0, 0.0])
    assert float(acc.k2_optimal_acceptance(p2, q)) == 0.0
    assert not bool(acc.k2_acceptance_is_one(p2, q))


@pytest.mark.parametrize("k", [3, pytest.param(2, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)])
def test_identical_prefix_formula_matches_subset_enumeration(k):
    rng = np.random.default_rng(3 + k)
    p, q = cases.dists(rng, 2, 9)
    qs = np.stack([q] * k)
    fast = float(acc.optimal_acceptance(p, qs, identical=True))
    slow = float(acc.optimal_acceptance(p, qs, identical=False))
    np.testing.assert_allclose(fast, slow, atol=1e-6)
