"""DoReFa weights and activations: grid, levels, idempotence (where it holds), STE gradients, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._dorefa import dorefa_activations, dorefa_weights, quantize_k


def _x(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_weights_on_the_k_bit_grid_and_reference():
    w = _x((128,), scale=0.5)

    @jax.jit
    def bundle(w):
        return [dorefa_weights(w, bits=b) for b in (1, 2, 3, 4)] + [dorefa_weights(dorefa_weights(w, bits=b), bits=b)
                                                                     for b in (1, 2, 3)]

    q1, q2, q3, q4, r1, r2, r3 = bundle(w)
    e = np.abs(w).mean()
    np.testing.assert_allclose(q1, np.where(w >= 0, e, -e), rtol=1e-6)
    for b, q in [(2, q2), (3, q3), (4, q4)]:
        n = 2 ** b - 1
        t = np.tanh(w.astype(np.float64))
        ref = 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * n) / n - 1
        np.testing.assert_allclose(q, ref, atol=1e-6)
        codes = (np.asarray(q, np.float64) + 1) / 2 * n
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)      # on {2 i / n - 1}
        assert len(np.unique(q)) <= 2 ** b
    # idempotent for k <= 3 (module docstring: not for k >= 4)
    for q, r in [(q1, r1), (q2, r2), (q3, r3)]:
        np.testing.assert_allclose(r, q, atol=1e-6)


def test_activations_clip_quantize_and_gradients():
    x = np.array([-0.5, 0.0, 0.1, 0.2, 0.5, 0.99, 1.0, 1.7], np.float32)

    @jax.jit
    def bundle(x):
        y = dorefa_activations(x, bits=2)
        return y, dorefa_activations(y, bits=2), jax.grad(lambda x: jnp.sum(dorefa_activations(x, bits=2)))(x)

    y, y2, g = bundle(x)
    np.testing.assert_allclose(y, np.round(np.clip(x, 0, 1) * 3) / 3, rtol=1e-6)
    np.testing.assert_array_equal(y2, y)
    assert len(np.unique(y)) <= 4
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 1, 1, 1, 0])                # 1 on [0, 1], 0 outside


def test_weight_gradients_ste_through_quantize_k_and_chain_rule_through_tanh():
    w = _x((6,), seed=1)

    @jax.jit
    def bundle(w):
        g1 = jax.grad(lambda w: jnp.sum(dorefa_weights(w, bits=1) * w))(w)
        # k > 1: gradient equals that of the un-rounded relaxation 2 (tanh(w) / (2 max|tanh|) + 1/2) - 1
        relax = lambda w: jnp.tanh(w) / jnp.max(jnp.abs(jnp.tanh(w)))
        g3 = jax.grad(lambda w: jnp.sum(dorefa_weights(w, bits=3) * jnp.arange(6.0)))(w)
        r3 = jax.grad(lambda w: jnp.sum(relax(w) * jnp.arange(6.0)))(w)
        gq = jax.grad(lambda r: jnp.sum(quantize_k(r, bits=3)))(jnp.full((3,), 0.3))
        return g1, g3, r3, gq

    g1, g3, r3, gq = bundle(w)
    np.testing.assert_allclose(g1, w + np.where(w >= 0, 1, -1) * np.abs(w).mean(), rtol=1e-5)  # STE: d sign / dw = 1
    np.testing.assert_allclose(g3, r3, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gq, [1, 1, 1])


def test_jit_vmap_and_errors():
    w = _x((3, 8), seed=2)
    f = lambda v: dorefa_weights(v, bits=2)
    np.testing.assert_array_equal(jax.vmap(f)(w), np.stack([f(r) for r in w]))
    for bad, err in [(0, ValueError), (17, ValueError), (2.0, TypeError)]:
        with pytest.raises(err):
            dorefa_weights(w, bits=bad)
        with pytest.raises(err):
            dorefa_activations(w, bits=bad)
    with pytest.raises(TypeError):
        dorefa_weights(np.arange(3), bits=2)
