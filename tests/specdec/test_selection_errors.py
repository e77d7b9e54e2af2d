"""Bad arguments to the draft-selection schemes raise ValueError/TypeError before anything is traced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
from jaxrob.specdec import _lp
from jaxrob.specdec import _schemes as sch

P = np.array([0.5, 0.3, 0.2], np.float32)
QS = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], np.float32)
DRAFTS = np.array([0, 2], np.int32)
KEY = jax.random.key(0)
ALL = [sch.single_draft, sch.specinfer, sch.spectr, sch.lp_optimal, sch.canonical_is, sch.truncated_is]


@pytest.mark.parametrize("scheme", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("p, qs, drafts, match", [
    (np.array([0.6, 0.6, -0.2], np.float32), QS, DRAFTS, "entries >= 0"),
    (np.array([0.5, 0.3, 0.3], np.float32), QS, DRAFTS, "sum to 1"),
    (P, np.array([[0.2, 0.3, 0.6], [0.2, 0.3, 0.5]], np.float32), DRAFTS, "sum to 1 along each row"),
    (P, np.zeros((0, 3), np.float32), np.zeros((0,), np.int32), "K >= 1"),
    (P, np.full((2, 4), 0.25, np.float32), DRAFTS, "vocabulary size 4 but the target p has 3"),
    (P, QS, np.array([0, 3], np.int32), r"must lie in \[0, 3\)"),
    (P, QS, np.array([-1, 0], np.int32), r"must lie in \[0, 3\)"),
    (P, QS, np.array([0, 1, 2], np.int32), r"shape \(2,\)"),
    (np.array([0.5, np.nan, 0.5], np.float32), QS, DRAFTS, "NaN"),
    (P[None], QS, DRAFTS, r"shape \(V,\)"),
    (P, QS[0], DRAFTS, r"shape \(K, V\)"),
])
def test_bad_inputs_raise_value_error(scheme, p, qs, drafts, match):
    with pytest.raises(ValueError, match=match):
        scheme(KEY, p, qs, drafts)


@pytest.mark.parametrize("scheme", ALL, ids=lambda f: f.__name__)
def test_bad_types_raise_type_error(scheme):
    with pytest.raises(TypeError, match="integer token ids"):
        scheme(KEY, P, QS, DRAFTS.astype(np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        scheme(KEY, np.array([1, 0, 0]), QS, DRAFTS)
    with pytest.raises(TypeError, match="typed PRNG key"):
        scheme(np.uint32([0, 1]), P, QS, DRAFTS)
    with pytest.raises(TypeError, match="typed PRNG key"):
        scheme(0, P, QS, DRAFTS)


def test_scheme_specific_errors():
    different = np.array([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]], np.float32)
    with pytest.raises(ValueError, match="identical rows"):
        sch.spectr(KEY, P, different, DRAFTS)
    with pytest.raises(ValueError, match="identical rows"):
        sch.specinfer(KEY, P, different, DRAFTS, replacement=False)
    with pytest.raises(ValueError, match="distinct draft tokens"):
        sch.specinfer(KEY, P, QS, np.array([1, 1], np.int32), replacement=False)
    with pytest.raises(ValueError, match="non-zero probability"):
        sch.specinfer(KEY, P, np.array([[1.0, 0, 0], [1.0, 0, 0]], np.float32), DRAFTS, replacement=False)
    with pytest.raises(TypeError, match="True or False"):
        sch.specinfer(KEY, P, QS, DRAFTS, replacement="no")
    with pytest.raises(ValueError, match="integer >= 1"):
        sch.truncated_is(KEY, P, QS, DRAFTS, s=0)
    with pytest.raises(TypeError, match="integer >= 1"):
        sch.truncated_is(KEY, P, QS, DRAFTS, s=2.0)
    with pytest.raises(ValueError, match="alphabet must be <= V"):
        sch.truncated_is(KEY, P, QS, DRAFTS, alphabet=4)
    big = np.full((3, 11), 1 / 11, np.float32)
    with pytest.raises(ValueError, match="V\\*\\*K = 11\\*\\*3"):
        sch.lp_optimal(KEY, big[0], big, np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="V\\*\\*K"):
        sch.canonical_is(KEY, big[0], big, np.zeros(3, np.int32))


def test_helper_errors():
    with pytest.raises(ValueError, match="unknown scheme"):
        acc.acceptance_probability("greedy", P, QS)
    with pytest.raises(TypeError, match="unexpected option"):
        acc.acceptance_probability(sch.spectr, P, QS, s=3)
    with pytest.raises(ValueError, match="sum to 1"):
        acc.optimal_acceptance(P * 2, QS)
    with pytest.raises(ValueError, match="2\\*\\*V"):
        acc.optimal_acceptance(np.full(20, 0.05, np.float32),
                               np.stack([np.full(20, 0.05), np.r_[np.full(10, 0.1), np.zeros(10)]]).astype(np.float32))
    with pytest.raises(ValueError, match="vocabulary size"):
        acc.k2_optimal_acceptance(P, np.array([0.5, 0.5], np.float32))
    with pytest.raises(ValueError, match="entries >= 0"):
        acc.k2_acceptance_is_one(P, np.array([1.2, -0.2, 0.0], np.float32))
    with pytest.raises(ValueError, match="b >= 0"):
        _lp.simplex(jnp.ones(2), jnp.eye(2), jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="needs c"):
        _lp.simplex(jnp.ones(3), jnp.eye(2), jnp.ones(2))
    with pytest.raises(ValueError, match="identical rows"):
        sch.sample_drafts(KEY, np.array([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]], np.float32), replacement=False)
    with pytest.raises(ValueError, match="K >= 1"):
        sch.sample_drafts(KEY, np.zeros((0, 3), np.float32))


def test_docstring_examples_run():
    import doctest

    for module in (_lp, sch, acc):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
