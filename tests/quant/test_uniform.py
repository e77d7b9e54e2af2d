"""Uniform fake quantization: grid, idempotence, level count, STE rule, codes, jit/vmap, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._uniform import code_dtype, code_range, dequantize, fake_quant, quantize, scale_and_zero_point


def _x(shape=(6, 5), seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _levels_per_column(q):
    q = np.asarray(q)
    return [len(np.unique(q[:, j])) for j in range(q.shape[1])]


@pytest.mark.parametrize("bits, symmetric", [(1, True), (2, False), (3, True), (4, False), (8, True)])
def test_idempotent_and_at_most_2_pow_bits_levels_per_channel(bits, symmetric):
    x = _x((64, 3))
    kw = dict(bits=bits, symmetric=symmetric, axis=-1)

    @jax.jit                      # one compile for the whole check (compiles dominate the test time)
    def bundle(x):
        q = fake_quant(x, **kw)
        s, z = scale_and_zero_point(x, **kw)
        q1 = fake_quant(x, scale=s, zero_point=z, **kw)
        q2 = fake_quant(q1, scale=s, zero_point=z, **kw)
        return q, q1, q2, quantize(x, **kw)[0], quantize(q, **kw)[0], fake_quant(q, **kw)

    q, q1, q2, c0, c1, qq = bundle(x)
    assert max(_levels_per_column(q)) <= 2 ** bits
    # with its own (fixed) step the quantizer is exactly idempotent
    np.testing.assert_array_equal(q1, q)
    np.testing.assert_array_equal(q2, q1)
    # dynamic (abs-max / min-max) re-quantization: identical codes, values equal up to the step's float rounding
    np.testing.assert_array_equal(c1, c0)
    np.testing.assert_allclose(qq, q, rtol=1e-6, atol=1e-7)


def test_per_tensor_levels_and_nearest_grid_point():
    x = _x((200,), seed=1)
    for bits in (2, 8, 16):
        q = np.asarray(fake_quant(x, bits=bits))
        qmax = 2 ** (bits - 1) - 1
        s = np.abs(x).max() / qmax
        assert len(np.unique(q)) <= 2 ** bits - 1                  # narrow range: 2^b - 1 levels
        grid = np.arange(-qmax, qmax + 1) * s if bits <= 8 else None
        if grid is not None:                                       # brute force: the nearest grid point
            nearest = grid[np.argmin(np.abs(x[:, None] - grid[None, :]), axis=1)]
            np.testing.assert_allclose(q, nearest, rtol=0, atol=1e-6 * np.abs(x).max())
        assert np.max(np.abs(q - x)) <= s / 2 * (1 + 1e-5)


def test_one_bit_symmetric_is_scaled_sign():
    x = np.array([-2.0, -0.1, 0.0, 0.4, 1.0], np.float32)
    q = np.asarray(fake_quant(x, bits=1))
    s = np.abs(x).mean()
    np.testing.assert_allclose(q, np.where(x >= 0, s, -s), rtol=1e-6)
    c, _, _ = quantize(x, bits=1)
    assert sorted(set(np.asarray(c).tolist())) == [-1, 1]


def test_code_ranges_and_dtypes():
    assert code_range(8) == (-127, 127)
    assert code_range(8, narrow_range=False) == (-128, 127)
    assert code_range(3, symmetric=False) == (0, 7)
    assert code_range(16, narrow_range=False) == (-32768, 32767)
    assert [code_dtype(b, symmetric=sym) for b, sym in [(4, True), (9, True), (8, False), (16, False)]] == [
        np.int8, np.int16, np.uint8, np.uint16]
    x = _x((50,), seed=2)
    for bits, sym, dt in [(12, True, np.int16), (8, False, np.uint8)]:
        def f(x):
            c, s, z = quantize(x, bits=bits, symmetric=sym)
            return c, dequantize(c, s, z), fake_quant(x, bits=bits, symmetric=sym)
        c, deq, fq = jax.jit(f)(x)
        assert c.dtype == dt
        lo, hi = code_range(bits, symmetric=sym)
        assert lo <= int(np.min(c)) and int(np.max(c)) <= hi
        np.testing.assert_array_equal(deq, fq)       # the integer codes decode to exactly the fake-quantized values


def test_affine_represents_zero_exactly_and_uses_full_range():
    x = np.concatenate([np.linspace(-0.3, 2.0, 40), [0.0]]).astype(np.float32)
    c, s, z = quantize(x, bits=4, symmetric=False)
    q = np.asarray(fake_quant(x, bits=4, symmetric=False))
    assert q[-1] == 0.0
    assert int(np.min(c)) == 0 and int(np.max(c)) == 15
    assert np.max(np.abs(q - x)) <= float(s[0]) / 2 * (1 + 1e-5)


def test_ste_gradient_is_one_inside_representable_range_zero_outside():
    x = np.array([-0.75, -0.7, -0.69, 0.0, 0.33, 0.7, 0.71, 3.0], np.float32)
    x2 = np.array([-0.5, -0.2, 0.0, 1.3, 1.31, 2.0], np.float32)
    x3 = np.array([-2.0, -0.5, 0.5, 1.0], np.float32)
    x4 = _x((8,), seed=3)
    aff = dict(bits=4, symmetric=False, clip=(-0.2, 1.3))

    @jax.jit
    def grads(x, x2, x3, x4):
        g = jax.grad(lambda x: jnp.sum(fake_quant(x, bits=4, scale=0.1)))(x)          # range [-0.7, 0.7]
        g2 = jax.grad(lambda x: jnp.sum(fake_quant(x, **aff)))(x2)
        g3 = jax.grad(lambda x: jnp.sum(fake_quant(x, bits=1, scale=1.0)))(x3)        # 1 bit: range [-s, s]
        g4 = jax.grad(lambda x: jnp.sum(fake_quant(x, bits=3) * x4))(x4)
        gs = jax.grad(lambda s: jnp.sum(fake_quant(x4, bits=3, scale=s)))(0.2)
        return g, g2, g3, g4, gs, scale_and_zero_point(x2, **aff)

    g, g2, g3, g4, gs, (s, z) = grads(x, x2, x3, x4)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 1, 1, 0, 0])
    # affine, clip range (lo, hi) = (-0.2, 1.3): representable [(0 - z) s, (15 - z) s]
    s, z = float(np.ravel(s)[0]), float(np.ravel(z)[0])
    lo, hi = (0 - z) * s, (15 - z) * s
    assert abs(lo + 0.2) < 0.05 and abs(hi - 1.3) < 0.05
    np.testing.assert_array_equal(g2, ((x2 >= lo) & (x2 <= hi)).astype(np.float32))
    np.testing.assert_array_equal(g3, [0, 1, 1, 1])
    # dynamic abs-max step: everything is inside, so the gradient is the identity; the step gets none
    np.testing.assert_array_equal(g4, x4)
    assert float(gs) == 0.0


def test_clip_and_per_channel_scale_forms_agree():
    x = _x((4, 3), seed=4)
    c = np.array([0.5, 1.0, 2.0], np.float32)
    a = fake_quant(x, bits=3, clip=c, axis=1)
    b = fake_quant(x, bits=3, clip=c[None, :], axis=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fake_quant(x, bits=3, scale=c / 3, axis=1), fake_quant(x, bits=3, scale=c[None] / 3))
    assert np.all(np.abs(np.asarray(a)) <= c[None, :] * (1 + 1e-6))


def test_matches_qwix_convention_with_explicit_options():
    # qwix: scale = absmax / (qmax + 0.5), round half to even, codes clipped to [-2^(b-1), 2^(b-1) - 1]
    w = _x((32, 8), seed=5)
    for bits in (4, 8):
        qmax = 2 ** (bits - 1) - 1
        am = np.abs(w).max(axis=0, keepdims=True)
        s = (am / np.float32(qmax + 0.5)).astype(np.float32)
        # (the division in jnp: XLA:CPU's float division is not always correctly rounded, and the max
        # element sits exactly on the tie absmax / s = qmax + 0.5 that the convention is about)
        ref = np.clip(np.round(np.asarray(jnp.asarray(w) / s)), -qmax - 1, qmax) * s
        got = fake_quant(w, bits=bits, scale=s, narrow_range=False, axis=-1)
        np.testing.assert_array_equal(got, ref)


def test_jit_and_vmap_agree_with_eager():
    x = _x((3, 16), seed=6)
    f = lambda v: fake_quant(v, bits=3, symmetric=False)
    np.testing.assert_array_equal(jax.jit(f)(x), f(x))
    np.testing.assert_array_equal(jax.vmap(f)(x), np.stack([f(r) for r in x]))     # per-example quantization
    # per-row quantization by vmap == per-channel quantization along axis 0
    np.testing.assert_array_equal(jax.vmap(f)(x), fake_quant(x, bits=3, symmetric=False, axis=0))


@pytest.mark.parametrize("kwargs, err", [
    (dict(bits=0), ValueError), (dict(bits=17), ValueError), (dict(bits=4.0), TypeError),
    (dict(bits=2.5), TypeError), (dict(bits="4"), TypeError), (dict(bits=True), TypeError),
    (dict(bits=4, axis=2), ValueError), (dict(bits=4, axis=(0, -2)), ValueError), (dict(bits=4, axis="0"), TypeError),
    (dict(bits=4, scale=0.1, clip=1.0), ValueError), (dict(bits=4, scale=np.ones(7)), ValueError),
    (dict(bits=4, zero_point=3), ValueError), (dict(bits=4, clip=(0.0, 1.0)), TypeError),
    (dict(bits=4, symmetric=False, clip=1.0), TypeError), (dict(bits=4, symmetric="yes"), TypeError),
])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        fake_quant(_x((4, 3)), **kwargs)


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating"):
        fake_quant(np.arange(4), bits=4)
