"""Shared fixtures: a tiny MLP trained once on real MNIST digits, and a linear model."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrob

MNIST = pathlib.Path(jaxrob.__file__).parent / "data" / "mnist10k.npz"


def mlp_apply(params, x):
    """784-32-10 ReLU MLP over (B, 28, 28, 1) images."""
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def linear_apply(params, x):
    """f(x) = flatten(x) @ W + b."""
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


predict = jax.jit(mlp_apply)


class Trained:
    """A trained model: ``apply_fn``, ``params``, jitted ``predict`` and test data ``x``, ``y``."""

    def __init__(self, apply_fn, params, x_test, y_test):
        self.apply_fn, self.params, self.x, self.y = apply_fn, params, x_test, y_test
        self.predict = predict


@pytest.fixture(scope="session")
def mnist_mlp() -> Trained:
    """A small MLP trained for ~1 s on 2,000 MNIST digits (test set: 256 other digits).

    Initial weights and minibatches come from numpy, so the only compiled program is the
    training scan (threefry programs are slow to compile on CPU).
    """
    data = np.load(MNIST)
    images = data["images"][:5256].astype(np.float32)[..., None] / 255.0
    labels = data["labels"][:5256].astype(np.int32)
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(0, (2 / 784) ** 0.5, (784, 32)).astype(np.float32),
              "b1": np.zeros(32, np.float32),
              "w2": rng.normal(0, (1 / 32) ** 0.5, (32, 10)).astype(np.float32),
              "b2": np.zeros(10, np.float32)}
    batches = rng.integers(0, 2000, (600, 128))
    opt = optax.adam(3e-3)

    @jax.jit
    def train(params, x_tr, y_tr, batches):
        def step(carry, idx):
            p, s = carry
            loss_fn = lambda q: optax.softmax_cross_entropy_with_integer_labels(
                mlp_apply(q, x_tr[idx]), y_tr[idx]).mean()
            u, s = opt.update(jax.grad(loss_fn)(p), s, p)
            return (optax.apply_updates(p, u), s), None
        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), batches)
        return p

    params = train(params, images[:2000], labels[:2000], batches)
    x_te, y_te = images[5000:5256], labels[5000:5256]
    acc = np.mean(np.argmax(np.asarray(predict(params, x_te)), -1) == y_te)
    assert acc > 0.85, f"fixture model too weak: test accuracy {acc:.3f}"
    return Trained(mlp_apply, params, x_te, y_te)


@pytest.fixture
def linear2():
    """A 2-class linear model on (B, 2, 5, 2) inputs, with fixed random weights."""
    rng = np.random.default_rng(42)
    params = {"w": jnp.asarray(rng.normal(size=(20, 2)), jnp.float32),
              "b": jnp.asarray(rng.normal(scale=0.1, size=2), jnp.float32)}
    return linear_apply, params
