"""GDWS: exactness at full rank, the MAC count, MEGO/LEGO optimality and the error weights."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxrob import models
from jaxrob.attacks import pgd
from jaxrob.prune._gdws import (GDWSConv, channel_singular_values, conv_layers, conv_macs, gdws_alphas,
                                gdws_approximate, gdws_conv, gdws_decompose, gdws_kernel, gdws_macs,
                                gdws_transform, kernel_matrix, lego_ranks, mego_ranks, weighted_error)


def _normal(seed, shape):
    """Test data from numpy (a jax.random draw compiles once per shape, seconds each on a loaded CPU)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _uniform(seed, shape, low=0.0, high=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _conv(x, k, strides=(1, 1), padding="SAME", dilation=(1, 1)):
    return lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.fixture(scope="module")
def kernel():
    return _normal(0, (3, 3, 5, 6))


# --------------------------------------------------------------------------- one convolution


@pytest.mark.parametrize("strides,padding,dilation", [((1, 1), "SAME", (1, 1)), ((2, 2), "VALID", (1, 1)),
                                                      ((1, 2), ((2, 0), (1, 1)), (2, 2))])
def test_full_rank_gdws_reproduces_the_convolution(kernel, strides, padding, dilation):
    x = _uniform(1, (2, 9, 8, 5))
    full = (min(6, 9),) * 5
    f = gdws_decompose(kernel, full)
    ref, out = jax.jit(lambda x, k, f: (_conv(x, k, strides, padding, dilation),
                                        gdws_conv(x, f, full, strides=strides, padding=padding,
                                                  dilation=dilation)))(x, kernel, f)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(gdws_kernel(f, full), kernel, atol=2e-6)


def test_gdws_forward_equals_conv_with_its_dense_kernel_at_any_rank(kernel):
    x = _uniform(2, (2, 7, 7, 5))
    ranks = (0, 1, 3, 6, 2)
    f = gdws_decompose(kernel, ranks)
    assert f.depthwise.shape == (3, 3, 1, 12) and f.pointwise.shape == (12, 6)
    eager = gdws_conv(x, f, ranks)
    ref, jitted, per = jax.jit(lambda x, f: (_conv(x, gdws_kernel(f, ranks)), gdws_conv(x, f, ranks),
                                             jax.vmap(lambda xi: gdws_conv(xi[None], f, ranks)[0])(x)))(x, f)
    np.testing.assert_allclose(eager, ref, atol=2e-5)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)  # jit and vmap agree with the eager call
    np.testing.assert_allclose(per, eager, atol=1e-6)


def test_kernel_matrix_layout_and_decomposition_error(kernel):
    w = np.asarray(kernel_matrix(kernel))
    k = np.asarray(kernel)
    assert w.shape == (6, 45)
    for c, h, ww, m in [(0, 0, 0, 0), (2, 1, 2, 5), (4, 2, 1, 3)]:
        assert w[m, c * 9 + h * 3 + ww] == k[h, ww, c, m]
    sigma = channel_singular_values(kernel)
    assert sigma.shape == (5, 6) and np.all(np.diff(sigma, axis=1) <= 1e-12)
    # the squared Frobenius error of the truncated-SVD factors is the tail of sigma^2, per channel
    ranks = (1, 0, 2, 5, 3)
    alpha = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
    err_blocks = np.sum((np.asarray(gdws_kernel(gdws_decompose(kernel, ranks), ranks)) - k) ** 2, axis=(0, 1, 3))
    assert weighted_error(sigma, ranks, alpha) == pytest.approx(float(alpha @ err_blocks), rel=1e-4)


def test_mac_formula_hand_count():
    # 3x3 kernel, C=2, M=4, 5x5 output, ranks (2, 1): G=3 depthwise filters.
    # depthwise: 25 pixels x 3 filters x 9 taps = 675; pointwise: 25 x 3 x 4 = 300.
    assert gdws_macs((2, 1), (3, 3, 2, 4), (5, 5)) == 675 + 300
    assert gdws_macs(3, (3, 3, 2, 4), (5, 5)) == 975
    assert conv_macs((3, 3, 2, 4), (5, 5)) == 25 * 9 * 2 * 4
    # DWS (g_c = 1): C (K^2 + M) per pixel
    assert gdws_macs((1, 1), (3, 3, 2, 4), (5, 5)) == 25 * 2 * (9 + 4)


# --------------------------------------------------------------------------- the constructions


def _brute(sigma, alpha):
    r = sigma.shape[1]
    return [(g, sum(g), weighted_error(sigma, g, alpha)) for g in itertools.product(range(r + 1), repeat=sigma.shape[0])]


@pytest.mark.parametrize("seed", [0, 1])
def test_mego_and_lego_are_optimal_against_brute_force(seed):
    k = _normal(seed, (2, 2, 3, 3))  # C=3 blocks of 3x4, rank 3 each
    sigma = channel_singular_values(k)
    alpha = np.random.default_rng(seed + 10).uniform(0.1, 3.0, 3)
    table = _brute(sigma, alpha)
    for budget in range(0, 11):
        g = mego_ranks(sigma, alpha, max_filters=budget)
        assert sum(g) <= budget
        best = min(e for _, s, e in table if s <= budget)
        assert weighted_error(sigma, g, alpha) == pytest.approx(best, rel=1e-9, abs=1e-12)
    total = weighted_error(sigma, (0, 0, 0), alpha)
    for beta in np.linspace(0, total * 1.01, 23):
        g = lego_ranks(sigma, alpha, max_error=beta)
        assert weighted_error(sigma, g, alpha) <= beta + 1e-9
        assert sum(g) == min(s for _, s, e in table if e <= beta + 1e-12)


def test_constructions_are_monotone_in_the_budget(kernel):
    sigma = channel_singular_values(kernel)
    errors = [weighted_error(sigma, mego_ranks(sigma, max_filters=b)) for b in range(0, 31)]
    assert np.all(np.diff(errors) <= 1e-9) and errors[-1] == pytest.approx(0.0, abs=1e-9)
    sizes = [sum(lego_ranks(sigma, max_error=b)) for b in np.linspace(0, 60, 25)]
    assert np.all(np.diff(sizes) <= 0) and sizes[0] == 30


def test_ties_keep_prefixes():
    sigma = np.ones((3, 4))
    for b in range(13):
        g = mego_ranks(sigma, max_filters=b)
        assert sum(g) == b and max(g) - min(g) <= 4
    assert lego_ranks(sigma, np.array([1.0, 0.0, 1.0]), max_error=0.0) == (4, 0, 4)


# --------------------------------------------------------------------------- the model transform


def _foreign():
    """A hand-written model: conv 3x3 -> ReLU -> strided dilated conv -> 1x1 conv -> mean -> dense."""
    v = {"a": {"kernel": _normal(30, (3, 3, 2, 4)) * 0.5},
         "b": {"kernel": _normal(31, (3, 3, 4, 6)) * 0.3, "bias": jnp.arange(6.0) / 10},
         "c": {"kernel": _normal(32, (1, 1, 6, 5))},
         "head": _normal(33, (5, 3))}

    def apply_fn(v, x):
        h = jax.nn.relu(_conv(x, v["a"]["kernel"]))
        h = jax.jit(lambda h, k: _conv(h, k, (2, 2), "VALID", (1, 1)))(h, v["b"]["kernel"]) + v["b"]["bias"]
        h = _conv(jax.nn.relu(h), v["c"]["kernel"])
        return jnp.mean(h, axis=(1, 2)) @ v["head"]

    return apply_fn, v


def test_unlimited_budget_reproduces_a_foreign_model_and_counts_macs():
    apply_fn, v = _foreign()
    x = _uniform(4, (3, 9, 9, 2))
    layers = conv_layers(apply_fn, v, (9, 9, 2))
    assert list(layers) == ["a/kernel", "b/kernel", "c/kernel"]
    assert [l.eligible for l in layers.values()] == [True, True, False]  # 1x1 conv never approximated
    assert layers["b/kernel"].out_spatial == (4, 4) and layers["b/kernel"].macs == 16 * 9 * 4 * 6
    ref = jax.jit(lambda v, x: (apply_fn(v, x), jax.grad(lambda x: apply_fn(v, x).sum())(x)))(v, x)
    for method, budget in [("mego", math.inf), ("lego", 0.0)]:
        g = gdws_approximate(apply_fn, method=method, budget=budget, variables=v, input_shape=(9, 9, 2),
                             skip_first=False)
        assert set(g.ranks) == {"a/kernel", "b/kernel"}
        assert isinstance(g.variables["b"]["kernel"], GDWSConv) and g.variables["c"]["kernel"] is v["c"]["kernel"]
        out = jax.jit(lambda v, x: (g.apply_fn(v, x), jax.grad(lambda x: g.apply_fn(v, x).sum())(x)))(g.variables, x)
        np.testing.assert_allclose(out[0], ref[0], atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(out[1], ref[1], atol=2e-5)
    rep = g.macs
    b = rep.layers["b/kernel"]
    assert b.original == 16 * 9 * 4 * 6 and b.gdws == 16 * sum(g.ranks["b/kernel"]) * (9 + 6)
    assert rep.other == 5 * 3 and rep.original == sum(r.original for r in rep.layers.values()) + 15
    assert "| **total** |" in rep.table()


def test_cnn_small_transform_default_skips_first_and_meets_budgets():
    net = models.create("cnn_small", key=jax.random.key(0))
    x = _uniform(5, (2, 28, 28, 1))
    full = gdws_approximate(net, method="mego", budget=math.inf)
    assert list(full.ranks) == ["params/conv2/kernel"]  # conv1 is the first layer: skipped
    np.testing.assert_allclose(jax.jit(full.apply_fn)(full.variables, x), jax.jit(net.apply_fn)(net.variables, x),
                               atol=5e-5, rtol=1e-5)
    g = gdws_approximate(net, method="mego", budget=0.25)
    layer = g.macs.layers["params/conv2/kernel"]
    assert layer.original == 14 * 14 * 9 * 32 * 64 == 3_612_672
    assert sum(g.ranks["params/conv2/kernel"]) == math.floor(0.25 * 64 * 32 * 9 / (9 + 64))  # 63
    assert layer.gdws <= 0.25 * layer.original and g.macs.original == 4_643_840
    # the network-level weighted error is non-increasing in the MEGO budget
    sigma = channel_singular_values(net.params["conv2"]["kernel"])
    errs = [weighted_error(sigma, gdws_approximate(net, method="mego", budget=b).ranks["params/conv2/kernel"])
            for b in (0.05, 0.1, 0.25, 0.5)]
    assert np.all(np.diff(errs) <= 0)


def test_transform_errors():
    apply_fn, v = _foreign()
    with pytest.raises(ValueError, match="method must be one of"):
        gdws_approximate(apply_fn, method="svd", budget=1.0, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match="budget must be >"):
        gdws_approximate(apply_fn, method="mego", budget=0.0, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match="budget must be >="):
        gdws_approximate(apply_fn, method="lego", budget=-1.0, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match="pass variables= and input_shape="):
        gdws_approximate(apply_fn, method="lego", budget=1.0)
    with pytest.raises(ValueError, match="eligible"):
        gdws_transform(apply_fn, {"c/kernel": (1,) * 6}, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match="ranks must hold 4 integers"):
        gdws_transform(apply_fn, {"b/kernel": (1, 1)}, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\]"):
        gdws_transform(apply_fn, {"b/kernel": (7, 1, 1, 1)}, variables=v, input_shape=(9, 9, 2))
    with pytest.raises(ValueError, match="one weight per input channel"):
        mego_ranks(np.ones((3, 2)), np.ones(2), max_filters=1)
    with pytest.raises(TypeError, match="GDWSConv"):
        gdws_conv(jnp.ones((1, 4, 4, 2)), (jnp.ones((3, 3, 1, 2)), jnp.ones((2, 3))), (1, 1))


# --------------------------------------------------------------------------- error weights


def _linear_model():
    """logits = mean over VALID 3x3 output positions of conv(x, K), then @ A (linear in K)."""
    v = {"conv": {"kernel": _normal(60, (3, 3, 2, 4))}, "A": _normal(61, (4, 3))}

    def apply_fn(v, x):
        return jnp.mean(_conv(x, v["conv"]["kernel"], padding="VALID"), axis=(1, 2)) @ v["A"]

    return apply_fn, v


def _direct_alpha(v, x):
    """alpha_c by hand: dz_j/dK[h,w,c,m] = S[h,w,c] A[m,j], S the mean input patch."""
    x = np.asarray(x, np.float64)
    a = np.asarray(v["A"], np.float64)
    k = np.asarray(v["conv"]["kernel"], np.float64)
    n, hh, ww, c = x.shape
    out = np.zeros(c)
    for xi in x:
        s = np.mean([xi[i:i + 3, j:j + 3, :] for i in range(hh - 2) for j in range(ww - 2)], axis=0)  # (3,3,C)
        z = np.einsum("hwc,hwcm,mj->j", s, k, a)
        yhat = int(np.argmax(z))
        for j in range(a.shape[1]):
            if j != yhat:
                norm_c = np.sum(s ** 2, axis=(0, 1)) * np.sum((a[:, yhat] - a[:, j]) ** 2)
                out += norm_c / (2 * 4 * 9 * (z[yhat] - z[j]) ** 2)
    return out / n


@pytest.mark.slow
def test_alphas_match_a_direct_computation_on_a_linear_conv_model():
    apply_fn, v = _linear_model()
    x = _uniform(7, (5, 6, 6, 2))
    y = jnp.array([0, 1, 2, 0, 1])
    kw = dict(variables=v, input_shape=(6, 6, 2), skip_first=False)
    clean = gdws_alphas(apply_fn, x, y, key=jax.random.key(8), eps=0.0, batch_size=2, **kw)
    assert list(clean) == ["conv/kernel"] and clean["conv/kernel"].shape == (2,)
    np.testing.assert_allclose(clean["conv/kernel"], _direct_alpha(v, x), rtol=2e-4)
    # with eps > 0 the weights are those of the model's own PGD examples (one chunk: key fold_in(key, 0))
    key = jax.random.key(9)
    adv = gdws_alphas(apply_fn, x, y, key=key, eps=0.2, steps=3, batch_size=8, **kw)
    x_adv = pgd(apply_fn, v, x, y, key=jax.random.fold_in(key, 0), eps=0.2, steps=3)
    np.testing.assert_allclose(adv["conv/kernel"], _direct_alpha(v, x_adv), rtol=2e-3)
    assert not np.allclose(adv["conv/kernel"], clean["conv/kernel"], rtol=1e-2)
    # the first conv is skipped by default: nothing left to weight
    assert gdws_alphas(apply_fn, x, y, key=key, eps=0.0, variables=v, input_shape=(6, 6, 2)) == {}
