"""The jitted train step: learning, one compile, foreign models, batch stats, donation, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrob.train import TrainState, cross_entropy, evaluate, make_optimizer, make_train_step


def _batches(x, y, bs):
    for i in range(0, len(x) - bs + 1, bs):
        yield jnp.asarray(x[i:i + bs]), jnp.asarray(y[i:i + bs])


def test_mlp_learns_and_compiles_once(make_mlp, mnist_small):
    x, y = mnist_small
    model = make_mlp(0)
    traces = []

    def train_apply(variables, xb, *, key):
        traces.append(xb.shape)  # runs at trace time only
        return model.train_apply(variables, xb, key=key)

    opt = make_optimizer("sgd", learning_rate=0.1, momentum=0.9)
    step = make_train_step(model.apply_fn, train_apply, opt, cross_entropy())
    state = TrainState.create(model.params, opt, key=jax.random.key(0), batch_stats=model.variables["batch_stats"])
    losses = []
    for epoch in range(3):
        for i, (xb, yb) in enumerate(_batches(x, y, 64)):
            state, m = step(state, xb, yb, jax.random.fold_in(state.rng, int(state.step)))
            losses.append(float(m["loss"]))
    assert len(traces) == 1
    assert int(state.step) == len(losses) == 24
    assert set(m) >= {"loss", "accuracy", "grad_norm"}
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:3])
    # The model's own arrays survive the donating step (TrainState.create copies them).
    assert evaluate(model.apply_fn, model.variables, x, y) < evaluate(model.apply_fn, state.variables(), x, y)


def test_foreign_model_trains(foreign, mnist_small):
    apply_fn, make_params = foreign
    x, y = mnist_small
    traces = []

    def counted(params, xb):
        traces.append(1)
        return apply_fn(params, xb)

    opt = make_optimizer("adam", learning_rate=1e-2)
    state = TrainState.create(make_params(), opt, key=jax.random.key(0))
    step = make_train_step(counted, None, opt, cross_entropy())
    acc0 = evaluate(apply_fn, state.params, x, y)
    for xb, yb in _batches(x, y, 64):
        state, m = step(state, xb, yb, jax.random.key(1))
    assert len(traces) == 1
    assert state.batch_stats == {}
    assert evaluate(apply_fn, state.params, x, y) > max(0.7, acc0 + 0.3)


def test_step_matches_manual_sgd(foreign, mnist_small):
    """One step equals params - lr * grad of the mean cross-entropy (closed-form check of the plumbing)."""
    apply_fn, make_params = foreign
    x, y = (jnp.asarray(a[:32]) for a in mnist_small)
    params = make_params()
    opt = make_optimizer("sgd", learning_rate=0.5, momentum=0.0)
    state = TrainState.create(params, opt, key=jax.random.key(0))
    new, m = make_train_step(apply_fn, None, opt, cross_entropy(), donate=False)(state, x, y, jax.random.key(0))
    grads = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()))(
        params)
    jax.tree.map(lambda a, b, g: np.testing.assert_allclose(a, np.asarray(b) - 0.5 * np.asarray(g), rtol=1e-5,
                                                            atol=1e-7), new.params, params, grads)
    np.testing.assert_allclose(m["grad_norm"], np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))),
                               rtol=1e-5)
    assert int(new.step) == 1 and int(state.step) == 0  # donate=False leaves the input usable


def test_batch_stats_are_updated(bn_model, mnist_small):
    model = bn_model
    x, y = (jnp.asarray(a[:64]) for a in mnist_small)
    opt = make_optimizer("sgd", learning_rate=0.01)
    state = TrainState.create(model.params, opt, key=jax.random.key(0), batch_stats=model.variables["batch_stats"])
    step = make_train_step(model.apply_fn, model.train_apply, opt, cross_entropy())
    state, _ = step(state, x, y, jax.random.key(1))
    old = model.variables["batch_stats"]
    # Running mean after one step: 0.9 * 0 + 0.1 * batch mean of the pre-BN activations.
    p = jax.device_get(model.params["fc1"])
    h = np.asarray(x).reshape(64, -1) @ p["kernel"] + p["bias"]
    np.testing.assert_allclose(state.batch_stats["bn"]["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(state.batch_stats) == jax.tree.structure(old)


def test_bad_arguments(foreign):
    apply_fn, make_params = foreign
    opt = make_optimizer("sgd", learning_rate=0.1)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        make_train_step(apply_fn, None, "sgd", cross_entropy())
    with pytest.raises(TypeError, match="loss must be a jaxrob.train.Loss"):
        make_train_step(apply_fn, None, opt, "ce")
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        make_train_step(None, None, opt, cross_entropy())
    with pytest.raises(TypeError, match="train_apply must be None"):
        make_train_step(apply_fn, 3, opt, cross_entropy())
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        TrainState.create(make_params(), opt, key=0)
    with pytest.raises(TypeError, match="optimizer must be an optax"):
        TrainState.create(make_params(), {"name": "sgd"}, key=jax.random.key(0))
    step = make_train_step(apply_fn, None, opt, cross_entropy())
    state = TrainState.create(make_params(), opt, key=jax.random.key(0))
    x, y = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int32)
    with pytest.raises(TypeError, match="y must hold integer class indices"):
        step(state, x, y.astype(np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        step(state, x, y[:3], jax.random.key(0))
    with pytest.raises(TypeError, match="key must be a single typed PRNG key"):
        step(state, x, y, 0)
    with pytest.raises(TypeError, match="state must be a TrainState"):
        step(state.params, x, y, jax.random.key(0))
