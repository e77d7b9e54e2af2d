"""Schedules against their closed forms, weight-decay masking, optimizer updates, bad arguments."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.train import kernel_mask, make_optimizer, make_schedule


def test_constant_schedule():
    sched = make_schedule(0.3)
    assert [float(sched(s)) for s in (0, 1, 10_000)] == pytest.approx([0.3] * 3)


@pytest.mark.parametrize("total", [100, 391 * 200])
def test_piecewise_boundaries(total):
    lr, f = 0.1, 0.1
    sched = make_schedule(lr, schedule="piecewise", total_steps=total, boundaries=(0.5, 0.75), decay_factor=f)
    b1, b2 = round(0.5 * total), round(0.75 * total)
    expect = {0: lr, b1 - 1: lr, b1: lr * f, b2 - 1: lr * f, b2: lr * f * f, total - 1: lr * f * f}
    for s, v in expect.items():
        assert float(sched(s)) == pytest.approx(v, rel=1e-6), s


def test_piecewise_vectorised_matches_scalar():
    sched = make_schedule(1.0, schedule="piecewise", total_steps=40, boundaries=(0.25, 0.5, 0.75), decay_factor=0.5)
    steps = jnp.arange(40)
    np.testing.assert_allclose(sched(steps), [float(sched(int(s))) for s in steps])
    # Closed form: 0.5 ** (number of boundaries passed).
    np.testing.assert_allclose(sched(steps), 0.5 ** (np.arange(40) // 10))


def test_cosine_closed_form():
    total, lr = 100, 0.2
    sched = make_schedule(lr, schedule="cosine", total_steps=total)
    for s in (0, 1, 25, 50, 99, 100, 150):
        t = min(s / total, 1.0)
        assert float(sched(s)) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * t)), abs=1e-7), s
    assert float(sched(50)) == pytest.approx(lr / 2)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-9)


def test_warmup_then_cosine():
    total, w, lr = 110, 10, 1.0
    sched = make_schedule(lr, schedule="cosine", total_steps=total, warmup_steps=w)
    for s in range(w):
        assert float(sched(s)) == pytest.approx(lr * s / w), s
    assert float(sched(w)) == pytest.approx(lr)
    assert float(sched(w + 50)) == pytest.approx(lr / 2)  # half-way through the post-warm-up cosine
    assert float(sched(total)) == pytest.approx(0.0, abs=1e-7)


def test_warmup_piecewise_keeps_absolute_boundaries():
    sched = make_schedule(1.0, schedule="piecewise", total_steps=100, warmup_steps=20, decay_factor=0.1)
    assert float(sched(10)) == pytest.approx(0.5)
    assert float(sched(49)) == pytest.approx(1.0)
    assert float(sched(50)) == pytest.approx(0.1)


def _update(opt, grads, params, n=1):
    state = opt.init(params)
    for _ in range(n):
        updates, state = opt.update(grads, state, params)
    return updates


def test_sgd_update_follows_schedule():
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 2.0)}
    opt = make_optimizer("sgd", learning_rate=0.5, momentum=0.0, schedule="piecewise", total_steps=4,
                         boundaries=(0.5,), decay_factor=0.1)
    state = opt.init(params)
    got = []
    for _ in range(4):
        updates, state = opt.update(grads, state, params)
        got.append(float(updates["w"][0, 0]))
    np.testing.assert_allclose(got, [-1.0, -1.0, -0.1, -0.1], rtol=1e-6)


def test_sgd_momentum_closed_form():
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}
    # Heavy-ball momentum 0.9 with constant gradient g: the n-th update is -lr * g * sum_{i<n} 0.9^i.
    opt = make_optimizer("sgd", learning_rate=0.1, momentum=0.9)
    u = _update(opt, grads, params, n=3)
    np.testing.assert_allclose(u["w"], -0.1 * (1 + 0.9 + 0.81), rtol=1e-6)


def test_kernel_mask():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "bn": {"scale": jnp.ones(4)},
              "conv": {"kernel": jnp.ones((3, 3, 1, 2))}, "temp": jnp.ones(())}
    mask = kernel_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "bn": {"scale": False},
                    "conv": {"kernel": True}, "temp": False}


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_coupled_weight_decay_only_on_kernels(name):
    params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer(name, learning_rate=0.1, weight_decay=0.5, momentum=0.0 if name == "sgd" else 0.9)
    u = _update(opt, zero, params)
    np.testing.assert_array_equal(u["bias"], 0.0)
    if name == "sgd":  # zero gradient: the update is -lr * wd * w exactly
        np.testing.assert_allclose(u["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    else:  # Adam normalises the decay gradient: first step moves by -lr * sign(w)
        np.testing.assert_allclose(u["kernel"], -0.1, rtol=1e-4)


def test_adamw_decoupled_decay_only_on_kernels():
    params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer("adamw", learning_rate=0.1, weight_decay=0.5)
    u = _update(opt, zero, params)
    np.testing.assert_array_equal(u["bias"], 0.0)
    np.testing.assert_allclose(u["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)  # -lr * wd * w, Adam part is 0


def test_custom_decay_mask():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer("sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.1,
                         decay_mask=lambda p: {"kernel": False, "bias": True})
    u = _update(opt, zero, params)
    np.testing.assert_array_equal(u["kernel"], 0.0)
    np.testing.assert_allclose(u["bias"], -0.1)


def test_grad_clip():
    params = {"w": jnp.zeros(4)}
    opt = make_optimizer("sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=1.0)
    u = _update(opt, {"w": jnp.full(4, 3.0)}, params)  # norm 6 -> clipped to 1
    np.testing.assert_allclose(jnp.linalg.norm(u["w"]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="rmsprop", learning_rate=0.1), ValueError, "name must be one of"),
    (dict(learning_rate=-0.1), ValueError, "learning_rate must be > 0"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(learning_rate=0.1, schedule="step"), ValueError, "schedule must be one of"),
    (dict(learning_rate=0.1, schedule="cosine"), ValueError, "total_steps is required"),
    (dict(learning_rate=0.1, warmup_steps=5), ValueError, "total_steps is required"),
    (dict(learning_rate=0.1, schedule="cosine", total_steps=10, warmup_steps=10), ValueError, "warmup_steps"),
    (dict(learning_rate=0.1, schedule="piecewise", total_steps=10, boundaries=(0.75, 0.5)), ValueError,
     "strictly increasing"),
    (dict(learning_rate=0.1, schedule="piecewise", total_steps=10, boundaries=(1.5,)), ValueError, "boundaries"),
    (dict(learning_rate=0.1, schedule="piecewise", total_steps=10, decay_factor=0.0), ValueError, "decay_factor"),
    (dict(learning_rate=0.1, momentum=1.0), ValueError, "momentum"),
    (dict(learning_rate=0.1, momentum=0.0, nesterov=True), ValueError, "nesterov"),
    (dict(learning_rate=0.1, weight_decay=-1e-4), ValueError, "weight_decay"),
    (dict(learning_rate=0.1, total_steps=0, schedule="cosine"), ValueError, "total_steps"),
    (dict(learning_rate=0.1, decay_mask="kernels"), TypeError, "decay_mask"),
    (dict(learning_rate=0.1, grad_clip_norm=0.0), ValueError, "grad_clip_norm"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_optimizer(**kwargs)
