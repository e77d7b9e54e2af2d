"""truncated_is (truncated LP / truncated alphabet) outputs exactly the target: enumeration over draft tuples.

For each draft tuple, :func:`output_distribution` sums over the scheme's own
randomness in closed form; averaging over the draft law (independent drafts, or
sequential sampling without replacement) must give ``p`` to rounding. The enumerated
acceptance probability must equal :func:`acceptance_probability`'s closed form. The
sampler itself is tied to these laws in ``test_selection_sampling.py``.
"""

import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
import specdec_cases as cases

ATOL = 3e-6


slow = pytest.mark.slow
CASES = [
    # (scheme, options, V, K, identical, sparse)
    ("truncated_is", {"s": 2}, 5, 3, False, False),
    ("truncated_is", {"s": 3, "alphabet": 10}, 30, 2, True, False),
    pytest.param("truncated_is", {"s": 5}, 5, 2, True, True, marks=slow),
    pytest.param("truncated_is", {"s": 1}, 5, 3, True, False, marks=slow),
    pytest.param("truncated_is", {"s": 2, "alphabet": 3}, 5, 3, False, False, marks=slow),
    pytest.param("truncated_is", {"s": 2, "alphabet": 6}, 12, 3, False, True, marks=slow),
]


@pytest.mark.parametrize("name, options, v, k, identical, sparse", CASES)
def test_output_marginal_is_exactly_the_target(name, options, v, k, identical, sparse):
    p, qs = cases.case(v * 100 + k * 10 + identical, v, k, identical, sparse)
    marginal, accept = acc.exact_marginal(name, p, qs, **options)
    np.testing.assert_allclose(np.asarray(marginal), p, atol=ATOL)
    closed = float(acc.acceptance_probability(name, p, qs, **options))
    np.testing.assert_allclose(float(accept), closed, atol=ATOL)
    assert 0.0 <= closed <= 1.0 + ATOL
    assert closed <= optimum(p, qs) + ATOL              # no scheme beats the optimum
    if k == 2 and options.get("alphabet") is None and options["s"] >= v:
        # the LP then covers every pair: it is the full importance-sampling LP, optimal for K = 2
        np.testing.assert_allclose(closed, optimum(p, qs), atol=ATOL)


def optimum(p, qs):
    """``1 - max_S [prod_k q_k(S) - p(S)]`` (NumPy, float64): over the prefixes of the tokens sorted
    by p/q for identical drafts, over all token sets otherwise."""
    p, qs = np.asarray(p, np.float64), np.asarray(qs, np.float64)
    if np.all(qs == qs[:1]):
        q = qs[0]
        order = np.argsort(np.where(q > 0, p / np.where(q > 0, q, 1.0), np.inf), kind="stable")
        gaps = np.concatenate([[0.0], np.cumsum(q[order])]) ** len(qs) - np.concatenate([[0.0], np.cumsum(p[order])])
        return 1.0 - gaps.max()
    v = p.shape[0]
    masks = ((np.arange(1 << v)[:, None] >> np.arange(v)) & 1).astype(np.float64)
    return 1.0 - np.max(np.prod(masks @ qs.T, axis=1) - masks @ p)


@pytest.mark.slow
def test_two_stage_top_k_equals_lax_top_k():
    import jax.numpy as jnp
    from jax import lax

    from jaxrob.specdec import _schemes as sch

    rng = np.random.default_rng(0)
    for v in (5000, 50001):
        x = jnp.asarray(rng.normal(size=v), jnp.float32).at[::7].set(0.5)     # many ties
        for k in (1, 40):
            np.testing.assert_array_equal(np.asarray(sch._top_k_indices(x, k)), np.asarray(lax.top_k(x, k)[1]))
