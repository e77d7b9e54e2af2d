"""Cross-entropy, PGD-AT and TRADES: reductions to CE, the documented attack semantics, bad arguments."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrob import attacks
from jaxrob.train import ModelFns, cross_entropy, pgd_at, trades


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad(loss, fns, params, stats, x, y, key):
    """(loss, d loss / d params, new batch stats, metrics), compiled (eager dispatch is slow on CPU)."""
    (value, (new_stats, metrics)), grads = jax.value_and_grad(
        lambda p: loss(fns, p, stats, x, y, key=key), has_aux=True)(params)
    return value, grads, new_stats, metrics


@pytest.fixture(scope="module")
def batch(mnist_small):
    x, y = mnist_small
    return jnp.asarray(x[:64]), jnp.asarray(y[:64])


@pytest.fixture(scope="module")
def bn(make_bn_model):
    m = make_bn_model(1)
    return ModelFns(m.apply_fn, m.train_apply), m.variables["params"], m.variables["batch_stats"]


def test_cross_entropy_matches_definition(foreign, batch):
    apply_fn, make_params = foreign
    params = make_params()
    x, y = batch
    value, grads, _, metrics = _value_and_grad(cross_entropy(), ModelFns(apply_fn, None), params, {}, x, y,
                                               jax.random.key(0))
    logits = apply_fn(params, x)
    expect = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])
    np.testing.assert_allclose(value, expect, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], jnp.mean(jnp.argmax(logits, -1) == y))
    # Gradient of mean CE for a linear model: x^T (softmax - onehot) / B.
    g_w = x.reshape(len(x), -1).T @ (jax.nn.softmax(logits) - jax.nn.one_hot(y, 10)) / len(y)
    np.testing.assert_allclose(grads["w"], g_w, atol=1e-6)


def test_label_smoothing_matches_optax(foreign, batch):
    apply_fn, make_params = foreign
    params = make_params()
    x, y = batch
    value, _, _, _ = _value_and_grad(cross_entropy(label_smoothing=0.1), ModelFns(apply_fn, None), params, {},
                                     x, y, jax.random.key(0))
    target = optax.smooth_labels(jax.nn.one_hot(y, 10), 0.1)
    np.testing.assert_allclose(value, optax.softmax_cross_entropy(apply_fn(params, x), target).mean(), rtol=1e-6)


@pytest.mark.parametrize("make_loss", [lambda: pgd_at(0.0, steps=2), lambda: trades(0.05, steps=2, beta=0.0)],
                         ids=["pgd_at_eps0", "trades_beta0"])
def test_reduces_to_cross_entropy(make_loss, bn, batch):
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(3)
    v_ce, g_ce, s_ce, m_ce = _value_and_grad(cross_entropy(), fns, params, stats, x, y, key)
    v, g, s, m = _value_and_grad(make_loss(), fns, params, stats, x, y, key)
    np.testing.assert_allclose(v, v_ce, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_ce)
    np.testing.assert_allclose(m["accuracy"], m_ce["accuracy"])
    if make_loss().name == "pgd_at":  # same single train-mode pass on the same inputs
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s, s_ce)


def test_pgd_at_is_train_mode_ce_at_eval_mode_pgd_point(bn, batch):
    """PGD-AT = CE (train mode) at x_adv = pgd(eval-mode model, current params), gradient not through x_adv."""
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(5)
    eps, steps, step_size = 0.1, 3, 0.04
    value, grads, new_stats, _ = _value_and_grad(pgd_at(eps, steps=steps, step_size=step_size), fns, params,
                                                 stats, x, y, key)
    k_fwd, k_attack, _ = jax.random.split(key, 3)
    variables = {"params": params, "batch_stats": stats}
    x_adv = attacks.pgd(fns.apply_fn, variables, x, y, key=k_attack, eps=eps, steps=steps, step_size=step_size)
    ref = cross_entropy()  # same key: the train-mode pass draws from the first of split(key, 3) in both
    v_ref, g_ref, s_ref, _ = _value_and_grad(ref, fns, params, stats, x_adv, y, key)
    np.testing.assert_allclose(value, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, g_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), new_stats, s_ref)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6


def test_trades_matches_its_definition(bn, batch):
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(7)
    eps, steps, step_size, beta = 0.1, 3, 0.04, 6.0
    value, _, new_stats, metrics = _value_and_grad(trades(eps, steps=steps, step_size=step_size, beta=beta),
                                                   fns, params, stats, x, y, key)

    def kl_to(logits, p):
        return jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(logits)), axis=-1)

    @jax.jit
    def reference(params, stats, x, y, key):
        k_fwd, k_attack, k_adv = jax.random.split(key, 3)
        variables = {"params": params, "batch_stats": stats}
        p_clean = jax.nn.softmax(fns.apply_fn(variables, x))
        x_adv = attacks.pgd(fns.apply_fn, variables, x, p_clean, key=k_attack, eps=eps, steps=steps,
                            step_size=step_size, init="normal", init_scale=0.001, loss=kl_to)
        logits, s1 = fns.train_logits(params, stats, x, key=k_fwd)
        logits_adv, s2 = fns.train_logits(params, s1, x_adv, key=k_adv)
        natural = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        robust = kl_to(logits_adv, jax.nn.softmax(logits)).mean()
        return natural, robust, s2

    natural, robust, s2 = reference(params, stats, x, y, key)
    np.testing.assert_allclose(metrics["natural_loss"], natural, rtol=1e-5)
    np.testing.assert_allclose(metrics["robust_loss"], robust, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(value, natural + beta * robust, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), new_stats, s2)


def test_adversarial_losses_exceed_clean(foreign, batch):
    apply_fn, make_params = foreign
    fns = ModelFns(apply_fn, None)
    params = make_params(seed=2)
    params = {"w": params["w"] * 30.0, "b": params["b"]}  # a confident model, so the attack has work to do
    x, y = batch
    key = jax.random.key(0)
    clean, _, _, _ = _value_and_grad(cross_entropy(), fns, params, {}, x, y, key)
    prev = clean
    for eps in (0.01, 0.05, 0.1):  # a larger ball gives a larger (or equal) worst-case loss
        adv, _, _, m = _value_and_grad(pgd_at(eps, steps=10, step_size=eps / 4, init="zero"), fns, params, {},
                                       x, y, key)
        assert float(adv) >= float(prev) - 1e-6
        prev = adv
    assert float(prev) > float(clean) + 0.1
    value, _, _, m = _value_and_grad(trades(0.1, steps=5, step_size=0.025), fns, params, {}, x, y, key)
    assert float(m["robust_loss"]) > 0.0
    assert float(value) > float(m["natural_loss"])
    np.testing.assert_allclose(m["natural_loss"], clean, rtol=1e-6)


def test_loss_spec_config():
    loss = trades(0.031, steps=10, step_size=0.007)
    assert loss.config == {"name": "trades", "eps": 0.031, "steps": 10, "step_size": 0.007, "beta": 6.0,
                           "norm": "linf", "init_scale": 0.001}
    assert pgd_at(0.3, steps=40, step_size=0.01) == pgd_at(0.3, steps=40, step_size=0.01)
    assert pgd_at(0.3, steps=40) != pgd_at(0.3, steps=7)


@pytest.mark.parametrize("build, exc, match", [
    (lambda: pgd_at(-0.1), ValueError, "eps must be >= 0"),
    (lambda: pgd_at(0.1, steps=0), ValueError, "steps must be >= 1"),
    (lambda: pgd_at(0.1, steps=2.5), ValueError, "steps must be an integer"),
    (lambda: pgd_at(0.1, step_size=0.0), ValueError, "step_size"),
    (lambda: pgd_at(0.1, norm="l1"), ValueError, "norm must be one of"),
    (lambda: pgd_at(0.1, init="gaussian"), ValueError, "init must be one of"),
    (lambda: pgd_at(0.1, restarts=0), ValueError, "restarts"),
    (lambda: pgd_at("0.1"), TypeError, "eps"),
    (lambda: trades(0.1, beta=-1.0), ValueError, "beta must be >= 0"),
    (lambda: trades(0.1, beta=float("inf")), ValueError, "beta must be finite"),
    (lambda: trades(0.1, init_scale=0.0), ValueError, "init_scale"),
    (lambda: cross_entropy(label_smoothing=1.0), ValueError, "label_smoothing"),
])
def test_bad_arguments(build, exc, match):
    with pytest.raises(exc, match=match):
        build()
