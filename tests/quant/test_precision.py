"""Sakr et al. noise gains: closed form on a linear model, the per-layer rule, and the bound vs measurement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._precision import (activation_noise_gains, assign_precision, mismatch_bound, precision_for_budget,
                                     quantize_fixed_point, step_size, weight_noise_gains, weight_ranges)

X = jax.random.normal(jax.random.key(0), (16, 5))
W = jax.random.normal(jax.random.key(1), (5, 4))


def _linear(p, x):
    return x @ p["dense"]["kernel"]


def test_linear_closed_form_weights_and_activations():
    z = np.asarray(X @ W)
    expected_w, expected_a = 0.0, 0.0
    wn = np.asarray(W)
    for xi, zi in zip(np.asarray(X), z):
        y = zi.argmax()
        for i in range(4):
            if i != y:
                d2 = (zi[y] - zi[i]) ** 2
                expected_w += 2 * xi @ xi / (24 * d2)  # d(z_y - z_i)/dW = x (e_y - e_i)^T
                expected_a += np.sum((wn[:, y] - wn[:, i]) ** 2) / (24 * d2)  # d/dx = W[:, y] - W[:, i]
    got = weight_noise_gains(_linear, {"dense": {"kernel": W}}, X, batch_size=5)
    assert got["dense/kernel"] == pytest.approx(expected_w / 16, rel=1e-4)
    hooked = lambda p, x, noise: (x + noise["input"]) @ p["dense"]["kernel"]  # noqa: E731
    got = activation_noise_gains(hooked, {"dense": {"kernel": W}}, X, {"input": (5,)})
    assert got["input"] == pytest.approx(expected_a / 16, rel=1e-4)


def test_rule_is_monotone_and_one_bit_per_4x():
    ranges = {k: 1.0 for k in "abcd"}
    bits = assign_precision({"a": 1.0, "b": 3.0, "c": 4.0, "d": 1000.0}, ranges, min_bits=3)
    assert bits["a"] == 3 and bits["c"] == 4 and bits["a"] <= bits["b"] <= bits["c"] <= bits["d"]
    # range enters squared: doubling the range is one bit
    assert assign_precision({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 2.0}, min_bits=2) == {"a": 2, "b": 3}
    # the rule equalises the per-tensor terms of the bound (up to the rounding, a factor <= 2 each way)
    gains = {"a": 1.0, "b": 16.0, "c": 256.0}
    bits = assign_precision(gains, {k: 1.0 for k in gains}, min_bits=4)
    terms = [step_size(bits[k], 1.0) ** 2 * g for k, g in gains.items()]
    assert max(terms) / min(terms) == pytest.approx(1.0)


def test_bound_and_budget():
    gains, ranges = {"a": 0.5, "b": 2.0}, {"a": 1.0, "b": 0.5}
    assert mismatch_bound(gains, ranges, {"a": 3, "b": 4}) == pytest.approx(0.25 ** 2 * 0.5 + (0.5 / 8) ** 2 * 2)
    bits, bound = precision_for_budget(gains, ranges, budget=1e-3)
    assert bound <= 1e-3
    lower = {k: b - 1 for k, b in bits.items()}
    assert min(lower.values()) < 1 or mismatch_bound(gains, ranges, lower) > 1e-3
    with pytest.raises(ValueError, match="ranges has no entry"):
        mismatch_bound(gains, {"a": 1.0}, {"a": 3, "b": 3})
    with pytest.raises(ValueError, match="min_bits must be >= 1"):
        assign_precision(gains, ranges, min_bits=0)
    with pytest.raises(ValueError, match="no weights selected"):
        weight_noise_gains(_linear, {"dense": {"w": W}}, X)


@pytest.mark.slow
def test_bound_upper_bounds_the_measured_mismatch():
    """A tiny trained-like MLP: the mismatch of noisy / quantized weights stays under the bound."""
    k = jax.random.split(jax.random.key(3), 4)
    params = {"l1": {"kernel": jax.random.normal(k[0], (6, 16)) / 2}, "l2": {"kernel": jax.random.normal(k[1], (16, 3)) / 2}}
    x = jax.random.normal(k[2], (300, 6))

    def apply_fn(p, x):
        return jnp.tanh(x @ p["l1"]["kernel"]) @ p["l2"]["kernel"]

    gains = weight_noise_gains(apply_fn, params, x, batch_size=100)
    ranges = weight_ranges(params)
    bits, bound = precision_for_budget(gains, ranges, budget=0.1)
    assert 0.02 < bound <= 0.1
    ref = jnp.argmax(apply_fn(params, x), axis=1)

    # (1) the paper's noise model: independent uniform noise of step Delta_t (Monte Carlo over 200 draws)
    def mismatch(key):
        keys = jax.random.split(key, 2)
        noisy = {n: {"kernel": p["kernel"] + step_size(bits[f"{n}/kernel"], ranges[f"{n}/kernel"])
                     * jax.random.uniform(kk, p["kernel"].shape, minval=-0.5, maxval=0.5)}
                 for (n, p), kk in zip(params.items(), keys)}
        return jnp.mean(jnp.argmax(apply_fn(noisy, x), axis=1) != ref)

    rates = jax.jit(jax.vmap(mismatch))(jax.random.split(jax.random.key(4), 100))
    assert float(rates.mean()) <= bound
    # (2) actual fixed-point rounding of the weights (one realisation; loose margin)
    quant = {n: {"kernel": quantize_fixed_point(p["kernel"], bits=bits[f"{n}/kernel"],
                                                value_range=ranges[f"{n}/kernel"])} for n, p in params.items()}
    assert float(jnp.mean(jnp.argmax(apply_fn(quant, x), axis=1) != ref)) <= bound + 0.02
