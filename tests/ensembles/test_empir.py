"""EMPIR: the vote, the authors' attack surrogate, mixed-precision members."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import ensembles as E
from jaxrob.ensembles._empir import (EMPIR, DorefaActivation, empir, empir_attack_probs, empir_surrogate, empir_vote,
                                     hidden_kernels, mixed_precision_model)

KEY = jax.random.key(0)


def _one_hot_logits(preds, c=4):
    """(M, B) class indices -> (M, B, C) logits with those arg-maxes."""
    return jax.nn.one_hot(jnp.asarray(preds), c) * 3.0


def _reference_vote(preds, fallback, min_votes):
    counts = np.bincount(preds, minlength=4)
    return int(np.argmax(counts)) if counts.max() >= min_votes else int(preds[fallback])


def test_vote_matches_brute_force_over_all_three_member_patterns():
    """Every combination of 3 members' votes over 4 classes: 2 of 3 win, else the FP (last) member."""
    patterns = np.array(list(itertools.product(range(4), repeat=3))).T  # (3, 64)
    got = empir_vote(_one_hot_logits(patterns))
    want = [_reference_vote(patterns[:, b], -1, 2) for b in range(patterns.shape[1])]
    np.testing.assert_array_equal(got, want)
    # The paper's cases explicitly: unanimous, 2 of 3 (either low-precision pair or with FP), all different.
    np.testing.assert_array_equal(empir_vote(_one_hot_logits([[1, 1, 2, 0], [1, 1, 3, 3], [1, 0, 3, 2]])),
                                  [1, 1, 3, 2])


def test_vote_general_members_fallback_and_min_votes():
    patterns = np.array(list(itertools.product(range(4), repeat=4))).T  # (4, 256)
    for fallback, min_votes in ((0, None), (2, 3), (-1, 4), (1, 1)):
        mv = 3 if min_votes is None else min_votes
        got = empir_vote(_one_hot_logits(patterns), fallback=fallback, min_votes=min_votes)
        want = [_reference_vote(patterns[:, b], fallback, mv) for b in range(patterns.shape[1])]
        np.testing.assert_array_equal(got, want)


def test_vote_errors():
    with pytest.raises(ValueError, match=r"\(M, B, C\)"):
        empir_vote(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="fallback=3 is not a member index"):
        empir_vote(jnp.zeros((3, 2, 4)), fallback=3)
    with pytest.raises(TypeError, match="fallback must be an int"):
        empir_vote(jnp.zeros((3, 2, 4)), fallback=1.0)
    with pytest.raises(ValueError, match="min_votes"):
        empir_vote(jnp.zeros((3, 2, 4)), min_votes=4)
    with pytest.raises(TypeError, match="members must be"):
        empir(3)


def test_attack_probs_average_the_agreeing_members():
    logits = jax.random.normal(KEY, (3, 64, 4)) * 2
    z = np.asarray(logits, np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    preds = z.argmax(-1)
    vote = np.array([_reference_vote(preds[:, b], -1, 2) for b in range(64)])
    np.testing.assert_array_equal(empir_vote(logits), vote)
    got = np.asarray(empir_attack_probs(logits))
    want = np.stack([probs[preds[:, b] == vote[b], b].mean(axis=0) for b in range(64)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    # Gradients reach only the agreeing members' logits.
    g = jax.jit(jax.grad(lambda z: jnp.sum(empir_attack_probs(z)[:, 0])))(logits)
    disagree = preds != vote[None]
    assert disagree.any()
    np.testing.assert_array_equal(np.asarray(g)[disagree], 0.0)


def test_empir_apply_fn_votes_and_jits():
    f = lambda p, x: x @ p  # noqa: E731
    w = E.stack([jnp.eye(3), jnp.eye(3)[jnp.array([1, 0, 2])], jnp.eye(3)[jnp.array([2, 0, 1])]])
    x = jax.random.normal(KEY, (16, 3))
    ens = empir(f)
    assert isinstance(ens, EMPIR) and hash(ens) == hash(empir(f))
    out = ens(w, x)
    np.testing.assert_array_equal(jnp.argmax(out, -1), empir_vote(E.member_logits(f, w, x)))
    np.testing.assert_array_equal(jax.jit(ens)(w, x), out)
    np.testing.assert_array_equal(jax.grad(lambda x: ens(w, x).sum())(x), 0.0)  # a vote has no gradient
    sur = empir_surrogate(f)
    np.testing.assert_allclose(sur(w, x), empir_attack_probs(E.member_logits(f, w, x)), rtol=1e-6)


def test_mixed_precision_members():
    x = jax.random.uniform(KEY, (4, 28, 28, 1))
    fp = mixed_precision_model("mlp", weight_bits=32, activation_bits=32, key=KEY, hidden_sizes=(16,))
    q = mixed_precision_model("mlp", weight_bits=2, activation_bits=4, key=KEY, hidden_sizes=(16,))
    from jaxrob import models
    plain = models.create("mlp", key=KEY, hidden_sizes=(16,))
    np.testing.assert_array_equal(jax.jit(fp.apply_fn)(fp.variables, x), jax.jit(plain.apply_fn)(plain.variables, x))
    assert q.name == "mlp_w2a4" and jax.tree.structure(q.variables) == jax.tree.structure(plain.variables)
    # By hand: 4-bit input, DoReFa 2-bit hidden kernel, float head, 4-bit activation.
    from jaxrob.quant._dorefa import dorefa_activations, dorefa_weights

    @jax.jit
    def reference(p, x):
        h = jnp.round(x * 15) / 15
        h = ((h - 0.1307) / 0.3081).reshape(4, -1)
        h = dorefa_activations(h @ dorefa_weights(p["hidden"][0]["kernel"], bits=2) + p["hidden"][0]["bias"], bits=4)
        return h @ p["head"]["kernel"] + p["head"]["bias"]

    np.testing.assert_allclose(jax.jit(q.apply_fn)(q.variables, x), reference(plain.params, x), rtol=1e-5, atol=1e-5)
    # QAT: the gradient of the quantized model w.r.t. the float variables is the STE gradient.
    g = jax.jit(jax.grad(lambda v: q.apply_fn(v, x)[:, 3].sum()))(q.variables)["params"]
    assert float(jnp.abs(g["head"]["kernel"]).sum()) > 0
    assert np.all(np.isfinite(np.asarray(g["hidden"][0]["kernel"])))
    assert hidden_kernels("hidden/0/kernel", None) and not hidden_kernels("head/kernel", None)
    assert not hidden_kernels("fc2/kernel", None) and hidden_kernels("fc1/kernel", None)
    assert DorefaActivation(4) == DorefaActivation(4)  # hashable by value: one compile per precision
    with pytest.raises(ValueError, match="weight_bits must be 1..16"):
        mixed_precision_model("mlp", weight_bits=20, activation_bits=4, key=KEY)
