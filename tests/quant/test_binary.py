"""Binary (mean|w| sign) and ternary (TWN) quantizers: values, levels, idempotence, STE, per-channel, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._binary import binary, ternary


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_binary_values_levels_idempotence_gradient():
    w = _x((20, 3))

    @jax.jit
    def bundle(w):
        b, bc = binary(w), binary(w, axis=-1)
        return b, bc, binary(b), binary(bc, axis=-1), jax.grad(lambda w: jnp.sum(binary(w, axis=-1) * w))(w)

    b, bc, bb, bbc, g = bundle(w)
    a = np.abs(w).mean()
    np.testing.assert_allclose(b, np.where(w >= 0, a, -a), rtol=1e-6)
    ac = np.abs(w).mean(0, keepdims=True)
    np.testing.assert_allclose(bc, np.where(w >= 0, ac, -ac), rtol=1e-6)
    assert len(np.unique(b)) == 2 and all(len(np.unique(np.asarray(bc)[:, j])) <= 2 for j in range(3))
    np.testing.assert_allclose(bb, b, rtol=1e-6)
    np.testing.assert_allclose(bbc, bc, rtol=1e-6)
    np.testing.assert_array_equal(np.sign(bb), np.sign(b))
    np.testing.assert_allclose(g, w + np.asarray(bc), rtol=1e-5)             # identity STE; alpha is a constant


def test_ternary_matches_twn_definition_and_is_idempotent():
    w = _x((50, 4), seed=1)

    @jax.jit
    def bundle(w):
        t, tc = ternary(w), ternary(w, threshold=0.5, axis=1)
        return t, tc, ternary(t), ternary(tc, threshold=0.5, axis=1), jax.grad(lambda w: jnp.sum(ternary(w)))(w)

    t, tc, tt, ttc, g = bundle(w)
    a = np.abs(w)
    delta = 0.7 * a.mean()
    keep = a > delta
    alpha = a[keep].mean()
    np.testing.assert_allclose(t, np.where(keep, np.sign(w) * alpha, 0), rtol=1e-5)
    assert len(np.unique(t)) == 3
    d_c = 0.5 * a.mean(0, keepdims=True)
    k_c = a > d_c
    alpha_c = (a * k_c).sum(0) / k_c.sum(0)
    np.testing.assert_allclose(tc, np.where(k_c, np.sign(w) * alpha_c, 0), rtol=1e-5)
    np.testing.assert_array_equal(np.sign(tt), np.sign(t))                    # same ternary codes
    np.testing.assert_allclose(tt, t, rtol=1e-6)
    np.testing.assert_allclose(ttc, tc, rtol=1e-6)
    np.testing.assert_array_equal(g, np.ones_like(w))


def test_ternary_all_below_threshold_and_errors():
    np.testing.assert_array_equal(ternary(np.zeros(4, np.float32)), np.zeros(4))
    w = _x((3, 8), seed=2)
    np.testing.assert_allclose(jax.vmap(binary)(w), np.stack([binary(r) for r in w]), rtol=1e-6)
    with pytest.raises(ValueError):
        ternary(w, threshold=-0.1)
    with pytest.raises(ValueError):
        binary(w, axis=2)
    with pytest.raises(TypeError):
        binary(np.arange(3))
