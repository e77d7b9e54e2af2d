"""Input bit-depth reduction: levels, idempotence, BPDA identity gradient, attack through it, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._input import quantize_input


def test_levels_idempotence_and_identity_gradient():
    x = np.random.default_rng(0).uniform(size=(64,)).astype(np.float32)

    @jax.jit
    def bundle(x):
        q = [quantize_input(x, bits=b) for b in (1, 3, 8)]
        qq = [quantize_input(v, bits=b) for v, b in zip(q, (1, 3, 8))]
        g = jax.grad(lambda x: jnp.sum(quantize_input(x, bits=3) * jnp.arange(64.0)))(x)
        return q, qq, g

    q, qq, g = bundle(x)
    for b, v, vv in zip((1, 3, 8), q, qq):
        n = 2 ** b - 1
        np.testing.assert_allclose(v, np.round(x * n) / n, rtol=1e-6)
        np.testing.assert_array_equal(vv, v)
        assert len(np.unique(v)) <= 2 ** b
    np.testing.assert_array_equal(g, np.arange(64.0))                     # BPDA: d out / d x = 1


def test_a_gradient_attack_goes_through_it():
    # a linear "model" on a squeezed input: the BPDA gradient is the model's own, so FGSM moves the logit
    w = np.linspace(-1, 1, 16).astype(np.float32)
    x = np.full((16,), 0.5, np.float32)
    f = lambda x: jnp.dot(w, quantize_input(x, bits=2))
    g = jax.grad(f)(x)
    np.testing.assert_array_equal(g, w)
    x_adv = np.clip(x - 0.2 * np.sign(np.asarray(g)), 0, 1)
    assert float(f(x_adv)) < float(f(x)) - 1.0


def test_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_input(np.array([0.5, 1.5], np.float32), bits=4)
    with pytest.raises(ValueError):
        quantize_input(np.zeros(2, np.float32), bits=0)
    with pytest.raises(TypeError):
        quantize_input(np.zeros(2, np.float32), bits=1.5)
