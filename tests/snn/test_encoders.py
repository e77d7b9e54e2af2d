"""Input encoders: DCT basis/zig-zag against JPEG and scipy, DCT-SNN's encoder against a numpy port of
the authors' algorithm, conservation and reconstruction, Poisson statistics, latency spike times,
the documented gradients, jit/eager and vmap/loop agreement, and argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.snn._encoders import (DCT, ENCODERS, Direct, Encoder, Latency, PoissonRate, _percentiles, dct_basis,
                                  encoder, zigzag)
from jaxrob.snn._surrogate import Boxcar, Triangle

KEY = jax.random.key(0)

# DCT-SNN's code lists this order for its 4x4 blocks (the JPEG zig-zag), (row, col) = (vertical, horizontal)
ZIGZAG4 = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2),
           (2, 1), (3, 0), (3, 1), (2, 2), (1, 3), (2, 3), (3, 2), (3, 3)]
# the JPEG standard's zig-zag sequence of an 8x8 block, as raster indices 8 * row + col
JPEG8 = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
         13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
         52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]


def _normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _uniform(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _run(enc, x, t_steps, key=KEY):
    """Final state and stacked currents of a jitted scan over init/step."""
    @jax.jit
    def go(x, key):
        return jax.lax.scan(enc.step, enc.init(x, key=key), jnp.arange(t_steps, dtype=jnp.int32))
    return go(x, key)


def _run_with_components(enc, x, t_steps, *, alone=True):
    """``_run`` plus the components and (``alone``) the code of each image encoded alone (vmap)."""
    @jax.jit
    def go(x):
        final, s = jax.lax.scan(enc.step, enc.init(x), jnp.arange(t_steps, dtype=jnp.int32))
        one = jax.vmap(lambda xi: enc.encode(xi[None], t_steps)[:, 0], out_axes=1)(x) if alone else s
        return final, s, enc.components(x), one
    return go(x)


# --------------------------------------------------------------------------------- DCT helpers

def test_zigzag_is_the_jpeg_order():
    assert zigzag(4) == ZIGZAG4
    assert [8 * r + c for r, c in zigzag(8)] == JPEG8
    assert zigzag(1) == [(0, 0)]
    for n in (2, 3, 5):
        order = zigzag(n)
        assert sorted(order) == [(i, j) for i in range(n) for j in range(n)]
        assert all(sum(a) <= sum(b) for a, b in zip(order, order[1:]))   # lowest frequencies first


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_dct_basis_is_orthonormal_dct_ii(block):
    b = np.asarray(dct_basis(block, jnp.float32), np.float64).reshape(block * block, -1)
    np.testing.assert_allclose(b @ b.T, np.eye(block * block), atol=1e-6)
    assert dct_basis(block).shape == (block * block, block, block)
    # basis[0] is the constant (DC) image, and frequency (u, v) has u sign changes down each column
    np.testing.assert_allclose(b[0], np.full(block * block, 1.0 / block), atol=1e-6)
    for k, (u, v) in enumerate(zigzag(block)):
        img = b[k].reshape(block, block)
        col, row = img[:, 0], img[0, :]
        assert np.sum(np.diff(np.sign(col)) != 0) == u and np.sum(np.diff(np.sign(row)) != 0) == v


@pytest.mark.parametrize("block", [2, 4, 8])
def test_dct_basis_equals_scipy(block):
    fft = pytest.importorskip("scipy.fft")
    basis = np.asarray(dct_basis(block, jnp.float32))
    for k, (u, v) in enumerate(zigzag(block)):
        onehot = np.zeros((block, block))
        onehot[u, v] = 1.0
        np.testing.assert_allclose(basis[k], fft.idctn(onehot, type=2, norm="ortho"), atol=1e-6)
    img = _normal((block, block), seed=block)
    coef = np.einsum("kij,ij->k", basis, img)
    ref = fft.dctn(img.astype(np.float64), type=2, norm="ortho")
    np.testing.assert_allclose(coef, [ref[u, v] for u, v in zigzag(block)], atol=1e-5)


# --------------------------------------------------------------------------------- DCT encoder

def _reference_dct(x, *, block, stride, steps, percentiles=(6.5, 93.5)):
    """Our numpy port of DCT-SNN's encoding algorithm (per-image percentiles), block by block, float64."""
    x = x.astype(np.float64)
    if x.shape[-1] == 3:
        m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
        x = x @ m.T + np.array([0.0, 128 / 255, 128 / 255])
    n, h, w, c = x.shape
    i = np.arange(block)
    q = np.sqrt(2.0 / block) * np.cos((2 * i[None, :] + 1) * np.pi * i[:, None] / (2 * block))
    q[0] = np.sqrt(1.0 / block)
    bh, bw = (h - block) // stride + 1, (w - block) // stride + 1
    g = np.zeros((block * block, n, bh * block, bw * block, c))
    for p in range(bh):
        for r in range(bw):
            patch = x[:, p * stride:p * stride + block, r * stride:r * stride + block, :]
            coef = np.einsum("ui,nijc,vj->nuvc", q, patch, q)
            for k, (u, v) in enumerate(zigzag(block)):
                g[k, :, p * block:(p + 1) * block, r * block:(r + 1) * block, :] = (
                    coef[:, u, v, None, None, :] * np.outer(q[u], q[v])[None, :, :, None])
    out = np.zeros((steps, n, bh * block, bw * block, c))
    for j in range(n):
        th_n, th_p = np.percentile(g[:, j], percentiles[0]), np.percentile(g[:, j], percentiles[1])
        mem = np.zeros(g.shape[2:])
        for t in range(steps):
            mem = mem + g[t % (block * block), j]
            up, down = mem > th_p, mem < th_n
            out[t, j] = up.astype(float) - down
            mem = mem - th_p * up - th_n * down
    return g, out


@pytest.mark.parametrize("stride", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_dct_matches_a_port_of_the_authors_algorithm(stride):
    x = _normal((2, 12, 12, 3), seed=stride)
    enc = DCT(block=4, stride=stride)
    g_ref, s_ref = _reference_dct(x, block=4, stride=stride, steps=40)
    np.testing.assert_allclose(enc.components(x), g_ref, atol=1e-5)
    s = enc.encode(x, 40)
    assert s.shape == (40, *enc.output_shape(x.shape)) == s_ref.shape
    assert enc.output_shape(x.shape) == ((2, 20, 20, 3) if stride == 2 else x.shape)
    assert np.mean(np.asarray(s) == s_ref) > 0.999                     # float32 vs float64 ties only
    assert set(np.unique(s).tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("kw", [dict(stride=2), dict(stride=2, layout="fold"), dict()],
                         ids=["tile-overlap", "fold-overlap", "non-overlap"])
def test_dct_conservation_and_reconstruction(kw):
    x = _normal((2, 8, 8, 3), seed=1)
    enc = DCT(**kw)
    k = enc.period()
    cycles = 3
    final, s, comps, alone = _run_with_components(enc, x, cycles * k)
    np.testing.assert_allclose(alone, s, atol=1e-6)       # an image's code ignores the rest of its batch
    s, comps = np.asarray(s, np.float64), np.asarray(comps, np.float64)
    pos, neg = (s == 1).sum(0), (s == -1).sum(0)
    th_p, th_n = np.asarray(final.th_pos, np.float64), np.asarray(final.th_neg, np.float64)
    for j in range(2):        # per-image 6.5th / 93.5th percentiles of all components (numpy's linear rule)
        np.testing.assert_allclose(th_n[j, 0, 0, 0], np.percentile(comps[:, j], 6.5), rtol=1e-5)
        np.testing.assert_allclose(th_p[j, 0, 0, 0], np.percentile(comps[:, j], 93.5), rtol=1e-5)
    assert np.all(th_p > 0) and np.all(th_n < 0)
    # soft reset conserves charge: thresholds x spike counts + what is left = everything integrated
    np.testing.assert_allclose(th_p * pos + th_n * neg + np.asarray(final.mem), cycles * comps.sum(0), atol=2e-4)
    assert pos.sum() > 0 and neg.sum() > 0
    # block DCT is invertible: the components of all frequencies sum to the (colour-converted) image
    y = np.asarray(enc._color(jnp.asarray(x)), np.float64)
    b, st = enc.block, enc._stride
    if enc.layout == "fold":
        target = y                                                     # overlap-add / coverage = exact
    else:
        nb = (8 - b) // st + 1
        target = np.concatenate([np.concatenate([y[:, p * st:p * st + b, r * st:r * st + b] for r in range(nb)], 2)
                                 for p in range(nb)], 1)
    np.testing.assert_allclose(comps.sum(0), target, atol=1e-5)


def test_dct_dropping_frequencies_shortens_the_period_and_keeps_the_thresholds():
    x = _normal((2, 8, 8, 1), seed=2)
    full, short = DCT(block=4), DCT(block=4, frequencies=6)
    assert (full.period(), short.period(), DCT(block=8).period()) == (16, 6, 64)
    final, s, comps, _ = _run_with_components(short, x, 12, alone=False)
    np.testing.assert_array_equal(s[:6], full.encode(x, 6))                    # same first 6 steps
    # after 6 steps the short code starts over at the DC component: conservation over 2 short cycles
    s = np.asarray(s)
    lhs = final.th_pos * (s == 1).sum(0) + final.th_neg * (s == -1).sum(0) + final.mem
    np.testing.assert_allclose(lhs, 2 * np.asarray(comps).sum(0), atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_percentiles_by_bisection_equal_numpy(dtype):
    """DCT's thresholds are found by bisection over the floats' bit patterns instead of a sort: the
    order statistics are exact, so they equal np.percentile (linear interpolation) up to its rounding."""
    rng = np.random.default_rng(3)
    rows = [rng.normal(size=(5, 997)),                          # distinct values
            np.round(rng.normal(size=(4, 77)) * 2),             # many ties (and +-0)
            np.full((2, 10), -3.0),                             # a constant row
            np.clip(rng.standard_cauchy(size=(3, 333)), -3e4, 3e4),  # heavy tails, both signs
            np.abs(rng.normal(size=(2, 50))) + 5.0,             # all positive
            rng.normal(size=(2, 1))]                            # a single entry
    qs = (0.0, 6.5, 50.0, 93.5, 99.99, 100.0)
    for r in rows:
        r = r.astype(dtype)
        got = np.stack(jax.jit(lambda r: _percentiles(r, qs))(r))
        want = np.percentile(r.astype(np.float64), qs, axis=1)
        scale = np.abs(r.astype(np.float64)).max()
        assert np.isfinite(scale)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=scale * np.finfo(dtype).eps * 4)
    # and through DCT.init: the thresholds are the percentiles of all components of each image
    x = _normal((3, 8, 8, 3), seed=4)
    enc = DCT(block=4, stride=2)
    st = enc.init(x)
    comps = np.asarray(DCT(block=4, stride=2).components(x)).transpose(1, 0, 2, 3, 4).reshape(3, -1)
    want_neg, want_pos = np.percentile(comps, (6.5, 93.5), axis=1)
    np.testing.assert_allclose(np.asarray(st.th_neg).ravel(), want_neg, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st.th_pos).ravel(), want_pos, rtol=1e-6, atol=1e-6)


def test_dct_fixed_thresholds_and_a_blank_image():
    st = DCT(block=2, thresholds=(-0.25, 0.5)).init(_normal((3, 4, 4, 1)))
    assert np.all(np.asarray(st.th_neg) == -0.25) and np.all(np.asarray(st.th_pos) == 0.5)
    # a blank image: the percentile thresholds clamp to +-tiny; no spikes, nothing non-finite
    s = DCT(block=2).encode(np.zeros((1, 2, 2, 1), np.float32), 8)
    assert np.all(np.asarray(s) == 0)


def test_dct_surrogate_gradient_has_the_documented_closed_form():
    # block=1, one channel: the single "frequency" is the pixel itself, so v_t = t * x - (detached resets)
    x = np.linspace(-1.2, 1.2, 13, dtype=np.float32).reshape(1, 1, 13, 1)
    th_n, th_p, steps = -0.5, 0.75, 3
    enc = DCT(block=1, thresholds=(th_n, th_p), surrogate=Triangle(1.0))
    w = _normal((steps, 1, 1, 13, 1), seed=4)
    grad = jax.grad(lambda x: jnp.sum(w * enc.encode(x, steps)))(x)
    # closed form: d s_t / d x = (g((v - th_p)/th_p)/th_p + g((v - th_n)/th_n)/|th_n|) * dv_t/dx, dv_t/dx = t + 1
    g = lambda u: np.maximum(0.0, 1.0 - np.abs(u))
    v, mem, expect = 0.0, np.zeros_like(x, np.float64), np.zeros_like(x, np.float64)
    for t in range(steps):
        v = mem + x
        expect += w[t] * (t + 1) * (g((v - th_p) / th_p) / th_p + g((v - th_n) / th_n) / -th_n)
        mem = v - th_p * (v > th_p) - th_n * (v < th_n)
    np.testing.assert_allclose(grad, expect, rtol=1e-5, atol=1e-6)


def test_pgd_gradient_flows_through_the_dct_encoder():
    x = _normal((2, 8, 8, 3), seed=5)
    enc = DCT(block=4, stride=2, surrogate=Boxcar(2.0))
    w = _normal((16, *enc.output_shape(x.shape)), seed=6)
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(w * enc.encode(x, 16))))
    loss, g = value_and_grad(x)
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.mean(g != 0) > 0.5
    # one signed-gradient step increases the loss (the surrogate points uphill on this readout)
    assert float(value_and_grad(x + 0.05 * np.sign(g))[0]) > float(loss)


# --------------------------------------------------------------------------------- Poisson

def test_poisson_rate_determinism_and_independence():
    levels = np.array([0.0, 0.1, 0.35, 0.6, 0.9, 1.0], np.float32)
    x = np.broadcast_to(levels, (1, 16, 16, 6)).copy()
    enc = PoissonRate(max_rate=0.8)
    steps = 400
    three = jax.jit(jax.vmap(lambda k: enc.encode(x, steps, key=k)))(
        jnp.stack([KEY, KEY, jax.random.key(1)]))
    s, again, other = map(np.asarray, three)
    assert set(np.unique(s).tolist()) <= {0.0, 1.0}
    n = steps * 16 * 16
    for c, lv in enumerate(levels):
        p = 0.8 * lv
        assert abs(s[..., c].mean() - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9     # binomial tolerance
    np.testing.assert_array_equal(again, s)                                        # same key, same spikes
    assert np.mean(other != s) > 0.1
    # steps are independent: P(spike at t and t+1) = p^2 for p = 0.8 * 0.6
    p, a, b = 0.48, s[:-1, ..., 3], s[1:, ..., 3]
    both = np.mean(a * b)
    assert abs(both - p * p) <= 5 * np.sqrt(p * p * (1 - p * p) / a.size)
    # step t's draw depends only on (key, t): an eager step at t = 7 equals row 7 of the scan
    _, i7 = enc.step(enc.init(x, key=KEY), jnp.int32(7))
    np.testing.assert_array_equal(i7, s[7])


@pytest.mark.parametrize("signed", [False, True])
def test_poisson_gradient_is_max_rate(signed):
    x = _normal((2, 4, 4, 1)) if signed else _uniform((2, 4, 4, 1))
    enc = PoissonRate(max_rate=0.6, signed=signed)
    w = _normal((5, 2, 4, 4, 1), seed=1)
    g = jax.grad(lambda x: jnp.sum(w * enc.encode(x, 5, key=KEY)))(x)
    np.testing.assert_allclose(g, 0.6 * w.sum(0), rtol=1e-6, atol=1e-6)


def test_signed_poisson_spikes_carry_the_sign_at_rate_abs_x():
    x = np.broadcast_to(np.array([-1.5, -0.5, 0.0, 0.3], np.float32), (1, 32, 32, 4)).copy()
    enc = PoissonRate(signed=True)
    assert enc.normalized and not PoissonRate().normalized
    s = np.asarray(enc.encode(x, 100, key=KEY))
    assert np.all(s * np.sign(x) >= 0) and np.all(s[..., 2] == 0)
    for c, p in enumerate([1.0, 0.5, 0.0, 0.3]):
        assert abs(np.abs(s[..., c]).mean() - p) <= 5 * np.sqrt(p * (1 - p) / s[..., c].size) + 1e-9


# --------------------------------------------------------------------------------- Latency

def test_latency_fires_once_at_the_formula_step():
    steps = 9
    x = np.concatenate([np.linspace(0, 1, 41, dtype=np.float32), [0.005, 0.01, 0.0625, 0.1875]]).reshape(1, 1, -1, 1)
    enc = Latency(timesteps=steps)
    s = np.asarray(enc.encode(x, steps + 3))[:, 0, 0, :, 0]
    fires = x.ravel() >= 0.01
    np.testing.assert_array_equal(s.sum(0), fires.astype(np.float32))             # one spike or none
    when = np.argmax(s, 0)[fires]
    np.testing.assert_array_equal(when, np.round((1 - x.ravel()[fires]) * (steps - 1)))
    assert np.all(s[steps:] == 0)                                                   # not cyclic
    assert when[x.ravel()[fires] == 1.0].tolist() == [0] and enc.period() is None


def test_latency_gradient_is_the_central_difference_in_time():
    steps = 6
    x = np.array([1.0, 0.8, 0.5, 0.2, 0.05, 0.0], np.float32).reshape(1, 1, 6, 1)
    w = _normal((steps, 1, 1, 6, 1), seed=7)
    g = np.asarray(jax.grad(lambda x: jnp.sum(w * Latency(steps).encode(x, steps)))(x)).ravel()
    wp = np.concatenate([np.zeros((1, 6)), w[:, 0, 0, :, 0], np.zeros((1, 6))])   # w_{-1} = w_T = 0
    n = np.round((1 - x.ravel()) * (steps - 1)).astype(int)
    expect = np.array([(steps - 1) / 2 * (wp[n[i]][i] - wp[n[i] + 2][i]) for i in range(6)])
    expect[x.ravel() < 0.01] = 0.0
    np.testing.assert_allclose(g, expect, rtol=1e-6)
    # a loss that rewards earlier spikes gets a positive gradient (brighter = earlier)
    early = jnp.arange(steps, 0, -1.0)[:, None, None, None, None]
    g = np.asarray(jax.grad(lambda x: jnp.sum(early * Latency(steps).encode(x, steps)))(x)).ravel()
    assert np.all(g[1:5] > 0) and g[5] == 0


# --------------------------------------------------------------------------------- every encoder

ALL = [Direct(), PoissonRate(max_rate=0.7), Latency(timesteps=5), DCT(block=4, stride=2)]
IDS = ["direct", "poisson", "latency", "dct"]


@pytest.mark.parametrize("enc", ALL, ids=IDS)
def test_jit_eager_and_vmap_agree(enc):
    x = _normal((3, 8, 8, 3), seed=8) if enc.normalized else _uniform((3, 8, 8, 3), seed=8)
    xs = np.stack([x, x[::-1] * 0.5])
    keys = jax.random.split(KEY, 2)
    steps = 6

    @jax.jit
    def bundle(x, xs, keys):
        s = enc.encode(x, steps, key=KEY)
        vm = jax.vmap(lambda x, k: enc.encode(x, steps, key=k))(xs, keys)            # extra batch axis
        return s, vm

    s, vm = map(np.asarray, bundle(x, xs, keys))
    assert s.shape == (steps, *enc.output_shape(x.shape)) and s.dtype == np.float32
    assert np.all(np.isfinite(s))
    # not jitted (init runs op by op) == jitted; vmap == a loop
    np.testing.assert_allclose(enc.encode(x, steps, key=KEY), s, atol=1e-6)
    loop = [np.asarray(enc.encode(xs[i], steps, key=keys[i])) for i in range(2)]
    np.testing.assert_allclose(vm, np.stack(loop), atol=1e-6)
    assert enc.spiking == (not isinstance(enc, Direct))
    if enc.spiking:                                             # spikes: the first layer only accumulates
        assert set(np.unique(s).tolist()) <= {-1.0, 0.0, 1.0}
    # hashable, static hyperparameters
    assert hash(enc) == hash(type(enc)(**{f: getattr(enc, f) for f in enc.__dataclass_fields__}))
    assert isinstance(enc.normalized, bool)


@pytest.mark.slow
def test_eager_steps_equal_the_scan():
    # every op outside jit, one step at a time (what a Python-loop user does)
    x = _normal((2, 4, 4, 1), seed=9)
    for enc in (DCT(block=2, stride=1, layout="fold"), Latency(4), PoissonRate(signed=True)):
        s = np.asarray(jax.jit(lambda x: enc.encode(x, 5, key=KEY))(x if enc.normalized else np.abs(x) / 3))
        with jax.disable_jit():
            state = enc.init(x if enc.normalized else np.abs(x) / 3, key=KEY)
            for t in range(5):
                state, i_t = enc.step(state, t)
                np.testing.assert_allclose(i_t, s[t], atol=1e-6)


def test_direct_is_the_image_with_exact_gradient():
    x = _normal((2, 3, 3, 1))
    s = Direct().encode(x, 4)
    np.testing.assert_array_equal(s, np.broadcast_to(x, (4, *x.shape)))
    g = jax.grad(lambda x: jnp.sum(Direct().encode(x, 4) ** 2))(x)
    np.testing.assert_allclose(g, 8 * x, rtol=1e-6)
    assert Direct().period() is None


def test_registry():
    assert set(ENCODERS) == {"direct", "poisson", "latency", "dct"}
    assert encoder("dct", block=8) == DCT(block=8)
    assert encoder("poisson", max_rate=0.5) == PoissonRate(0.5)
    enc = Latency(4)
    assert encoder(enc) is enc and isinstance(enc, Encoder)
    # DCT-SNN's CIFAR input: 32x32 in overlapping 4x4 blocks at stride 2 -> 15x15 tiles -> 60x60
    assert DCT(block=4, stride=2).output_shape((5, 32, 32, 3)) == (5, 60, 60, 3)
    assert DCT(block=4, stride=2, layout="fold").output_shape((5, 32, 32, 3)) == (5, 32, 32, 3)
    assert DCT(block=4).output_shape((5, 64, 64, 3)) == (5, 64, 64, 3) == Direct().output_shape((5, 64, 64, 3))
    with pytest.raises(ValueError, match="one of"):
        encoder("rate")
    with pytest.raises(ValueError, match="instance"):
        encoder(enc, timesteps=3)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: PoissonRate(max_rate=0.0), ValueError, "max_rate must be >"),
    (lambda: PoissonRate(max_rate=1.5), ValueError, "max_rate must be <="),
    (lambda: PoissonRate(signed="yes"), TypeError, "signed must be True or False"),
    (lambda: Latency(timesteps=0), ValueError, "timesteps must be >= 1"),
    (lambda: Latency(timesteps=2.5), ValueError, "must be an integer"),
    (lambda: Latency(4, threshold=-0.1), ValueError, "threshold must be >= 0"),
    (lambda: DCT(block=0), ValueError, "block must be >= 1"),
    (lambda: DCT(block=4, stride=5), ValueError, "stride must be in 1..block"),
    (lambda: DCT(block=4, frequencies=17), ValueError, "frequencies must be in 1..block"),
    (lambda: DCT(layout="overlap"), ValueError, "layout must be one of"),
    (lambda: DCT(percentiles=(90.0, 10.0)), ValueError, "low < high"),
    (lambda: DCT(percentiles=(1.0,)), TypeError, "pair"),
    (lambda: DCT(thresholds=(0.1, 0.5)), ValueError, r"thresholds\[0\] must be <"),
    (lambda: DCT(surrogate="triangle"), TypeError, "Surrogate"),
    (lambda: zigzag(0), ValueError, "n must be >= 1"),
])
def test_bad_hyperparameters_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_inputs_raise():
    x = _uniform((1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"shape \(N, H, W, C\)"):
        Direct().init(x[0])
    with pytest.raises(TypeError, match="floating"):
        Direct().init((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PoissonRate().init(x * 2, key=KEY)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Latency(4).init(x - 1)
    with pytest.raises(TypeError, match="needs a PRNG key"):
        PoissonRate().init(x)
    with pytest.raises(TypeError, match="PRNG key"):
        PoissonRate().init(x, key=0)
    with pytest.raises(ValueError, match="at least 8x8"):
        DCT(block=8).init(x[:, :4])
    with pytest.raises(ValueError, match="cover every pixel"):
        DCT(block=4, stride=3, layout="fold").init(x)
    with pytest.raises(TypeError, match="integer scalar"):
        Direct().step(Direct().init(x), 1.5)
    with pytest.raises(ValueError, match="timesteps must be >= 1"):
        Direct().encode(x, 0)
