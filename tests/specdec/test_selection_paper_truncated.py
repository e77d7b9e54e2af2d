"""truncated_is against an independent NumPy/HiGHS implementation of the paper's truncated LP.

Khisti et al. 2025, Section 4 (truncated LP, Algorithm 1; the two-draft LP of their
Appendix I; successive pairs for more drafts, their Algorithm 2) -- as far as we could
read it: the body of the paper only through section summaries and a third-party
implementation that cites Appendix I and Algorithm 2 (see ``truncated_is``). Rank
the tokens by the priority ``p(y) - q_1(y) q_2(y)`` (highest first); ``Omega_1`` is the
top ``s``, ``Omega_2`` the rest. For an ordered pair of distinct drafts that are both in
``Omega_1`` the probability ``w`` of keeping the higher-priority one is an LP variable
in ``[0, 1]``; every other pair keeps its higher-priority token. Maximise
``sum_y min(p(y), q_I(y))`` over ``w``. More than two drafts: successive pairs, the
winner so far (law ``q_I`` of the previous round) against the next draft.

The reference below is written from that definition with its own variables (``w`` =
probability of the higher-priority token, HiGHS with box bounds), unlike the JAX code
(``w`` = probability of the first draft, flows in a network-matrix simplex), so the two
agree only if both implement the same scheme. Checked round by round on the same input
laws: the acceptance ``sum min(p, q_I)``, the law ``q_I`` of the kept token outside the
LP block and its total mass inside (the LP's maximiser need not be unique, so neither is
``q_I`` inside the block, nor -- for ``K > 2`` -- the later rounds); ``s = V`` gives the
optimum for ``K = 2`` (the truncated LP is then the full importance-sampling LP).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
from jaxrob.specdec import _schemes as sch
import specdec_cases as cases

scipy_optimize = pytest.importorskip("scipy.optimize")

TOL = 3e-6


def paper_pair_round(p, q1, q2, s):
    """One round of the paper's truncated LP for drafts with laws ``(q1, q2)`` (float64).

    Returns ``(q_I, value, top)``: the law of the kept token, ``sum min(p, q_I)`` and the
    ``s`` top-priority tokens."""
    p, q1, q2 = (np.asarray(a, np.float64) for a in (p, q1, q2))
    v = p.shape[0]
    order = np.argsort(-(p - q1 * q2), kind="stable")
    rank = np.empty(v, int)
    rank[order] = np.arange(v)
    # fixed part: a token beats every lower-priority token and ties with itself
    lower1 = np.array([q1[rank > rank[y]].sum() for y in range(v)])
    lower2 = np.array([q2[rank > rank[y]].sum() for y in range(v)])
    q_i = q1 * q2 + q1 * lower2 + lower1 * q2
    top = order[:s]
    # pairs (a, b), a != b both in the top: they were counted above for the higher-priority
    # token; the LP moves a share (1 - w) of each to the lower-priority one
    pairs = [(a, b) for a in range(s) for b in range(s) if a != b]
    n_w = len(pairs)
    base = q_i[top].copy()
    coef = np.zeros((s, n_w))                 # q_I(top[i]) = base[i] + coef[i] @ (1 - w)
    for j, (a, b) in enumerate(pairs):
        mass = q1[top[a]] * q2[top[b]]
        hi, lo = (a, b) if a < b else (b, a)  # a smaller index in `top` = higher priority
        coef[hi, j] -= mass
        coef[lo, j] += mass
    # variables: w (n_w) then z (s); maximise sum z, z <= p_top, z <= base + coef @ (1 - w)
    c = np.concatenate([np.zeros(n_w), -np.ones(s)])
    a_ub = np.zeros((2 * s, n_w + s))
    b_ub = np.zeros(2 * s)
    a_ub[:s, n_w:] = np.eye(s)
    b_ub[:s] = p[top]
    a_ub[s:, :n_w] = coef                     # z - base - coef @ 1 + coef @ w <= 0
    a_ub[s:, n_w:] = np.eye(s)
    b_ub[s:] = base + coef.sum(1)
    res = scipy_optimize.linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1)] * n_w + [(0, None)] * s,
                                 method="highs")
    assert res.status == 0
    w = res.x[:n_w]
    q_i[top] = base + coef @ (1 - w)
    return q_i, float(np.minimum(p, q_i).sum()), top


_pair_rule = jax.jit(sch._pair_rule, static_argnums=(3, 4))


@pytest.mark.parametrize("k, identical", [(2, False), (2, True), (3, False)])
def test_truncated_lp_matches_the_papers_definition(k, identical):
    v, s, n_inst = 9, 3, 5
    rng = np.random.default_rng(40 + 2 * k + identical)
    for i in range(n_inst):
        p = cases.dists(rng, 1, v, 0.5)[0]
        qs = np.repeat(cases.dists(rng, 1, v, 0.8), k, axis=0) if identical else cases.dists(rng, k, v, 0.8)
        if i == 0:                                 # zeros in the target and a draft
            p[[1, 4]] = 0.0
            p /= p.sum()
            qs[:, 2] = 0.0
            qs /= qs.sum(-1, keepdims=True)
        # round by round: the winner so far (our law q_I) against the next draft. The LP's
        # maximiser need not be unique, so the law inside the block -- and hence, for K > 2,
        # the next round -- may differ between two correct solvers: each round is compared
        # on the same input laws, and only the block's total mass is compared inside it.
        q_w = jnp.asarray(qs[0])
        for r in range(1, k):
            ref_q, ref_value, top = paper_pair_round(p, q_w, qs[r], s)
            rule = _pair_rule(jnp.asarray(p), q_w, jnp.asarray(qs[r]), s, None)
            q_is = np.asarray(rule.q_is, np.float64)
            np.testing.assert_allclose(float(np.minimum(p, q_is).sum()), ref_value, atol=TOL)
            np.testing.assert_allclose(q_is.sum(), 1.0, atol=TOL)
            outside = np.setdiff1d(np.arange(v), top)
            np.testing.assert_allclose(q_is[outside], ref_q[outside], atol=TOL)
            np.testing.assert_allclose(q_is[top].sum(), ref_q[top].sum(), atol=TOL)
            q_w = rule.q_is
        # the scheme's acceptance probability is that of the last round
        ours = float(acc.acceptance_probability("truncated_is", p, qs, s=s, guard=False))
        np.testing.assert_allclose(ours, ref_value, atol=TOL)


@pytest.mark.parametrize("identical", [True, False])
def test_truncated_lp_with_s_equal_v_is_optimal_for_two_drafts(identical):
    v, n_inst = 5, 4
    rng = np.random.default_rng(7 + identical)
    ps = cases.dists(rng, n_inst, v, 0.5)
    qss = (np.repeat(cases.dists(rng, n_inst, v, 1.0)[:, None], 2, axis=1) if identical
           else np.stack([cases.dists(rng, 2, v, 1.0) for _ in range(n_inst)]))
    trunc = jax.jit(jax.vmap(lambda p, qs: acc.acceptance_probability("truncated_is", p, qs, s=v)))
    got = np.asarray(trunc(jnp.asarray(ps), jnp.asarray(qss)), np.float64)
    for i in range(n_inst):
        optimum = float(acc.optimal_acceptance(ps[i], qss[i], identical=identical))
        np.testing.assert_allclose(got[i], optimum, atol=TOL)
        np.testing.assert_allclose(paper_pair_round(ps[i], qss[i, 0], qss[i, 1], v)[1], optimum, atol=TOL)


def test_guard_keeps_acceptance_above_single_draft_and_monotone_in_k():
    """Near-uniform target and draft: the paper's fixed rule outside the LP block falls below
    single-draft acceptance; the guard (default) never does, and adding drafts never hurts."""
    rng = np.random.default_rng(3)
    v, s = 40, 3
    for _ in range(4):
        logits = rng.normal(size=v) * 0.3
        p = np.exp(logits) / np.exp(logits).sum()
        q = np.exp(logits / 1.2) / np.exp(logits / 1.2).sum()
        single = float(acc.acceptance_probability("single_draft", p, q[None]))
        plain = float(acc.acceptance_probability("truncated_is", p, np.tile(q, (2, 1)), s=s, guard=False))
        guarded = [float(acc.acceptance_probability("truncated_is", p, np.tile(q, (k, 1)), s=s)) for k in (2, 3, 4)]
        assert plain < single - 1e-3                  # the unguarded rule can lose acceptance here
        assert guarded[0] >= single - 1e-6
        assert guarded[0] <= guarded[1] + 1e-6 <= guarded[2] + 2e-6
        assert max(guarded) <= float(acc.optimal_acceptance(p, np.tile(q, (4, 1)))) + 1e-6
