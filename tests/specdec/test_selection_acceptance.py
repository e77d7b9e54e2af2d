"""Acceptance probabilities on random (p, q) pairs: the optimum and the order of the schemes.

* canonical IS (importance-sampling LP) == optimal coupling LP == min-cut closed form;
* both >= SpecTr and >= SpecInfer, and those >= single-draft speculative sampling;
* truncated IS <= the optimum, and == the optimum for K = 2 when the LP covers every
  token (``s = V``);
* the closed forms equal exact enumeration over the draft tuples.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
from jaxrob.specdec import _schemes as sch
import specdec_cases as cases

TOL = 3e-6


def _instances(seed, n, v, k, identical):
    rng = np.random.default_rng(seed)
    ps = cases.dists(rng, n, v, 0.5)
    if identical:
        qss = np.repeat(cases.dists(rng, n, v, 1.0)[:, None], k, axis=1)
    else:
        qss = np.stack([cases.dists(rng, k, v, 1.0) for _ in range(n)])
    return jnp.asarray(ps), jnp.asarray(qss)


def _batched(name, ps, qss, **options):
    fn = jax.vmap(lambda p, qs: acc.acceptance_probability(name, p, qs, **options))
    return np.asarray(jax.jit(fn)(ps, qss), np.float64)


@pytest.mark.parametrize("v, k", [(5, 2), pytest.param(4, 3, marks=pytest.mark.slow)])
def test_order_of_the_schemes_identical_drafts(v, k):
    ps, qss = _instances(v + 10 * k, 16, v, k, True)
    optimum = np.asarray(jax.vmap(lambda p, qs: acc.optimal_acceptance(p, qs, identical=True))(ps, qss))
    lp = _batched("lp_optimal", ps, qss)
    canonical = _batched("canonical_is", ps, qss)
    spectr = _batched("spectr", ps, qss)
    specinfer = _batched("specinfer", ps, qss)
    single = _batched("single_draft", ps, qss)
    truncated = _batched("truncated_is", ps, qss, s=2)
    np.testing.assert_allclose(canonical, lp, atol=TOL)
    np.testing.assert_allclose(lp, optimum, atol=TOL)
    assert np.all(canonical >= spectr - TOL) and np.all(canonical >= specinfer - TOL)
    assert np.all(spectr >= single - TOL) and np.all(specinfer >= single - TOL)
    # (no lower bound for truncated IS: its fixed priority rule can fall below single-draft
    # acceptance when p ~ q spreads over many tokens; see the truncated_is docstring)
    assert np.all(truncated <= optimum + TOL)
    # the instances are not trivial: the optimum is strictly better than the baselines somewhere
    assert np.any(optimum > np.maximum(spectr, specinfer) + 1e-3)
    if k == 2:
        np.testing.assert_allclose(np.asarray(jax.vmap(acc.k2_optimal_acceptance)(ps, qss[:, 0])), optimum, atol=TOL)


@pytest.mark.slow
def test_truncated_lp_over_every_token_is_optimal_for_two_drafts():
    ps, qss = _instances(3, 16, 5, 2, True)
    optimum = np.asarray(jax.vmap(lambda p, qs: acc.optimal_acceptance(p, qs, identical=True))(ps, qss))
    np.testing.assert_allclose(_batched("truncated_is", ps, qss, s=5), optimum, atol=TOL)


@pytest.mark.slow
def test_order_of_the_schemes_non_identical_drafts():
    ps, qss = _instances(5, 12, 4, 3, False)
    optimum = np.asarray(jax.vmap(lambda p, qs: acc.optimal_acceptance(p, qs, identical=False))(ps, qss))
    np.testing.assert_allclose(_batched("lp_optimal", ps, qss), optimum, atol=TOL)
    np.testing.assert_allclose(_batched("canonical_is", ps, qss), optimum, atol=TOL)
    specinfer = _batched("specinfer", ps, qss)
    assert np.all(optimum >= specinfer - TOL)
    assert np.all(specinfer >= _batched("single_draft", ps, qss) - TOL)
    assert np.all(_batched("truncated_is", ps, qss, s=2) <= optimum + TOL)


def test_identical_target_and_drafts_always_accept():
    p = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0], jnp.float32)   # V = 5, K = 2: reuses the compiled functions above
    qs = jnp.stack([p, p])
    for name in ("single_draft", "specinfer", "spectr"):
        np.testing.assert_allclose(float(acc.acceptance_probability(name, p, qs)), 1.0, atol=1e-6)
    # truncated IS with s = 2 and no guard is not: its fixed priority rule distorts q_I away from
    # q = p; the guard (default) then keeps the first draft, whose law is p
    assert float(acc.acceptance_probability("truncated_is", p, qs, s=2, guard=False)) < 1.0 - 1e-3
    np.testing.assert_allclose(float(acc.acceptance_probability("truncated_is", p, qs, s=2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(sch.spectr_rho(p, p, 2)), 1.0, atol=1e-6)


@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_spectr_rho_solves_its_equation(k):
    rng = np.random.default_rng(11 + k)
    p, q = cases.dists(rng, 2, 5, 0.5)
    rho = float(sch.spectr_rho(p, q, k))
    beta = np.minimum(q, p / rho).sum()
    assert 1.0 <= rho <= k
    np.testing.assert_allclose(1 - (1 - beta) ** k, rho * beta, atol=1e-5)
    np.testing.assert_allclose(float(acc.acceptance_probability(sch.spectr, p, np.stack([q] * k))),
                               rho * beta, atol=1e-5)
