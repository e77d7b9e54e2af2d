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

# Shared specs: equal specs hash equal, so their compiled loss is reused across tests.
PGD = pgd_at(0.1, steps=3, step_size=0.04)
TRADES = trades(0.1, steps=3, step_size=0.04, beta=6.0)
CE = cross_entropy()


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad(loss, fns, params, stats, x, y, key):
    """(loss, d loss / d params, new batch stats, metrics), compiled (eager dispatch is slow on CPU)."""
    (value, (new_stats, metrics)), grads = jax.value_and_grad(
        lambda p: loss(fns, p, stats, x, y, key=key), has_aux=True)(params)
    return value, grads, new_stats, metrics


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def batch(mnist_small):
    x, y = mnist_small
    return x[:32], y[:32]


@pytest.fixture(scope="module")
def bn(bn_model):
    m = bn_model
    return ModelFns(m.apply_fn, m.train_apply), m.variables["params"], m.variables["batch_stats"]


def test_cross_entropy_matches_definition(foreign, batch):
    apply_fn, make_params = foreign
    params = make_params()
    x, y = batch
    value, grads, _, metrics = _value_and_grad(CE, ModelFns(apply_fn, None), params, {}, x, y, jax.random.key(0))
    logits = x.reshape(len(x), -1) @ params["w"] + params["b"]
    logp = _log_softmax(logits)
    np.testing.assert_allclose(value, -logp[np.arange(len(y)), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(-1) == y))
    # Gradient of the mean CE of a linear model: x^T (softmax - onehot) / B.
    g_w = x.reshape(len(x), -1).T @ (np.exp(logp) - np.eye(10)[y]) / len(y)
    np.testing.assert_allclose(grads["w"], g_w, atol=1e-6)


def test_label_smoothing(foreign, batch):
    apply_fn, make_params = foreign
    params = make_params()
    x, y = batch
    value, _, _, _ = _value_and_grad(cross_entropy(label_smoothing=0.1), ModelFns(apply_fn, None), params, {},
                                     x, y, jax.random.key(0))
    logp = _log_softmax(x.reshape(len(x), -1) @ params["w"] + params["b"])
    target = 0.9 * np.eye(10)[y] + 0.1 / 10
    np.testing.assert_allclose(value, -(target * logp).sum(-1).mean(), rtol=1e-5)


@pytest.mark.parametrize("loss", [pgd_at(0.0, steps=2), trades(0.1, steps=2, beta=0.0)],
                         ids=["pgd_at_eps0", "trades_beta0"])
def test_reduces_to_cross_entropy(loss, bn, batch):
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(3)
    v_ce, g_ce, s_ce, m_ce = _value_and_grad(CE, fns, params, stats, x, y, key)
    v, g, s, m = _value_and_grad(loss, fns, params, stats, x, y, key)
    np.testing.assert_allclose(v, v_ce, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_ce)
    np.testing.assert_allclose(m["accuracy"], m_ce["accuracy"])
    if loss.name == "pgd_at":  # the same single train-mode pass on the same inputs
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s, s_ce)


def test_pgd_at_is_train_mode_ce_at_eval_mode_pgd_point(bn, batch):
    """PGD-AT = CE (train mode) at x_adv = pgd(eval-mode model, current params); no gradient through x_adv."""
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(5)
    value, grads, new_stats, _ = _value_and_grad(PGD, fns, params, stats, x, y, key)

    @jax.jit
    def attack(params, stats, x, y, key):
        _, k_attack, _ = jax.random.split(key, 3)
        return attacks.pgd(fns.apply_fn, {"params": params, "batch_stats": stats}, x, y, key=k_attack,
                           eps=0.1, steps=3, step_size=0.04)

    x_adv = attack(params, stats, x, y, key)
    # Same key: the train-mode pass draws from the first of split(key, 3) in both losses.
    v_ref, g_ref, s_ref, _ = _value_and_grad(CE, fns, params, stats, x_adv, y, key)
    np.testing.assert_allclose(value, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, g_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), new_stats, s_ref)
    assert float(np.max(np.abs(np.asarray(x_adv) - x))) <= 0.1 + 1e-6
    assert float(value) > float(_value_and_grad(CE, fns, params, stats, x, y, key)[0])  # adversarial > clean


def test_trades_matches_its_definition(bn, batch):
    fns, params, stats = bn
    x, y = batch
    key = jax.random.key(7)
    value, _, new_stats, metrics = _value_and_grad(TRADES, fns, params, stats, x, y, key)

    def kl_to(logits, p):
        return jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(logits)), axis=-1)

    @jax.jit
    def reference(params, stats, x, y, key):
        k_fwd, k_attack, k_adv = jax.random.split(key, 3)
        variables = {"params": params, "batch_stats": stats}
        p_clean = jax.nn.softmax(fns.apply_fn(variables, x))
        x_adv = attacks.pgd(fns.apply_fn, variables, x, p_clean, key=k_attack, eps=0.1, steps=3,
                            step_size=0.04, init="normal", init_scale=0.001, loss=kl_to)
        logits, s1 = fns.train_logits(params, stats, x, key=k_fwd)
        logits_adv, s2 = fns.train_logits(params, s1, x_adv, key=k_adv)
        natural = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        robust = kl_to(logits_adv, jax.nn.softmax(logits)).mean()
        return natural, robust, s2

    natural, robust, s2 = reference(params, stats, x, y, key)
    np.testing.assert_allclose(metrics["natural_loss"], natural, rtol=1e-5)
    np.testing.assert_allclose(metrics["robust_loss"], robust, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(value, natural + 6.0 * robust, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), new_stats, s2)  # two BN updates
    assert float(metrics["robust_loss"]) > 0.0 and float(value) > float(metrics["natural_loss"])


def test_larger_ball_larger_loss(foreign, batch):
    apply_fn, make_params = foreign
    fns = ModelFns(apply_fn, None)
    params = make_params(seed=2, scale=0.3)  # a confident model, so the attack has work to do
    x, y = batch
    key = jax.random.key(0)
    losses = [float(_value_and_grad(loss, fns, params, {}, x, y, key)[0])
              for loss in (CE, pgd_at(0.02, steps=5, init="zero"), pgd_at(0.1, steps=5, init="zero"))]
    assert losses[0] < losses[1] < losses[2]


def test_loss_spec_config():
    assert TRADES.config == {"name": "trades", "eps": 0.1, "steps": 3, "step_size": 0.04, "beta": 6.0,
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
