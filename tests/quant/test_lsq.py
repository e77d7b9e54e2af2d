"""LSQ and PACT: the papers' gradients (closed forms, finite differences of the relaxation), grid, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._lsq import lsq, lsq_init, lsq_levels, pact


def _x(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_lsq_levels_and_init():
    assert lsq_levels(4) == (8, 7) and lsq_levels(4, signed=False) == (0, 15) and lsq_levels(1, signed=False) == (0, 1)
    w = _x((32, 4))
    np.testing.assert_allclose(np.ravel(lsq_init(w, bits=3)), 2 * np.abs(w).mean() / math.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(np.ravel(lsq_init(w, bits=3, axis=-1)), 2 * np.abs(w).mean(0) / math.sqrt(3), rtol=1e-6)


@pytest.mark.parametrize("bits, signed", [(2, True), (4, False)])
def test_lsq_gradients_match_the_papers_formulas(bits, signed):
    q_n, q_p = lsq_levels(bits, signed=signed)
    x = _x((200,), seed=1, scale=2.0)
    s = 0.37
    c = np.linspace(-1.0, 1.0, 200).astype(np.float32)      # a generic linear loss sum(c * out)

    @jax.jit
    def bundle(x, s):
        out = lsq(x, s, bits=bits, signed=signed)
        gx, gs = jax.grad(lambda x, s: jnp.sum(c * lsq(x, s, bits=bits, signed=signed)), argnums=(0, 1))(x, s)
        return out, gx, gs, lsq(out, s, bits=bits, signed=signed)

    out, gx, gs, out2 = bundle(x, s)
    u = x.astype(np.float64) / s
    inside = (u > -q_n) & (u < q_p)
    np.testing.assert_allclose(out, np.clip(np.round(u), -q_n, q_p) * s, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out2, out)                                   # idempotent
    assert len(np.unique(out)) <= 2 ** bits
    np.testing.assert_allclose(gx, np.where(inside, c, 0), rtol=1e-6, atol=0)  # STE inside (-Q_N, Q_P)
    ds = np.where(inside, np.round(u) - u, np.where(u <= -q_n, -q_n, q_p))    # eq. (3)
    g = 1.0 / math.sqrt(x.size * q_p)                                          # gradient scale
    np.testing.assert_allclose(float(gs), g * np.sum(c * ds), rtol=1e-4, atol=1e-6)
    assert np.any(~inside) and np.any(inside)


def test_lsq_per_channel_step_and_grad_scale_override():
    w = _x((16, 3), seed=2)
    s = np.array([[0.1, 0.2, 0.4]], np.float32)

    @jax.jit
    def bundle(w, s):
        f = lambda s, gscale: jnp.sum(lsq(w, s, bits=3, grad_scale=gscale) ** 2)
        return jax.grad(f)(s, None), jax.grad(f)(s, 1.0), jax.vmap(lambda r: lsq(r, s[0], bits=3))(w)

    g_default, g_one, vm = bundle(w, s)
    assert g_default.shape == (1, 3)
    np.testing.assert_allclose(g_default, g_one / math.sqrt(16 * 3), rtol=1e-5)  # N = 16 weights per step, Q_P = 3
    np.testing.assert_array_equal(vm, jax.jit(lambda w, s: lsq(w, s, bits=3))(w, s))


def test_pact_forward_and_alpha_gradient_match_the_paper():
    x = _x((300,), seed=3, scale=2.0)
    alpha = 1.3
    bits = 3

    @jax.jit
    def bundle(x, a):
        y = pact(x, a, bits=bits)
        ga, gx = jax.grad(lambda a, x: jnp.sum(pact(x, a, bits=bits)), argnums=(0, 1))(a, x)
        return y, pact(y, a, bits=bits), ga, gx

    y, y2, ga, gx = bundle(x, alpha)
    step = alpha / (2 ** bits - 1)
    np.testing.assert_allclose(y, np.round(np.clip(x, 0, alpha) / step) * step, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y2, y)                                       # idempotent
    assert len(np.unique(y)) <= 2 ** bits
    # d y_q / d alpha = 1 where x >= alpha: the sum's gradient counts those x ...
    assert float(ga) == np.sum(x >= alpha)
    # ... which equals the finite difference of the relaxation sum(clip(x, 0, alpha))
    h = 1e-3
    relax = lambda a: np.sum(np.clip(x.astype(np.float64), 0, a))
    assert float(ga) == pytest.approx((relax(alpha + h) - relax(alpha - h)) / (2 * h), abs=1e-6)
    np.testing.assert_array_equal(gx, ((x > 0) & (x < alpha)).astype(np.float32))


@pytest.mark.parametrize("call, err", [
    (lambda: lsq(np.ones(3, np.float32), 0.1, bits=1), ValueError),            # signed LSQ needs 2 bits
    (lambda: lsq(np.ones(3, np.float32), 0.1, bits=17, signed=False), ValueError),
    (lambda: lsq(np.ones(3, np.float32), -0.1, bits=4), ValueError),
    (lambda: lsq(np.ones(3, np.float32), 0.1, bits=4, grad_scale=0.0), ValueError),
    (lambda: lsq(np.ones(3, np.float32), np.ones(4), bits=4), ValueError),
    (lambda: lsq(np.ones(3, np.float32), 0.1, bits=4, signed=1), TypeError),
    (lambda: pact(np.ones(3, np.float32), 0.0, bits=4), ValueError),
    (lambda: pact(np.ones(3, np.float32), np.ones(2), bits=4), ValueError),
    (lambda: pact(np.ones(3, np.float32), 1.0, bits=2.0), TypeError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
