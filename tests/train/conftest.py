"""Small models and data shared by the jaxrob.train tests (kept tiny: CPU seconds)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrob import data, models


class TinyBN(nnx.Module):
    """flatten -> Dense(8) -> BatchNorm -> ReLU -> Dense(10): the smallest model with batch stats."""

    def __init__(self, d_in: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(d_in, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.fc2 = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x, *, train: bool, key=None):
        h = self.fc1(x.reshape(x.shape[0], -1))
        return self.fc2(jax.nn.relu(self.bn(h, use_running_average=not train)))


def tiny_bn_model(seed: int = 0, input_shape=(28, 28, 1)) -> models.Model:
    module = TinyBN(int(np.prod(input_shape)), rngs=nnx.Rngs(seed))
    return models.from_nnx(module, name="tiny_bn", input_shape=input_shape, num_classes=10)


def tiny_mlp(seed: int = 0) -> models.Model:
    return models.create("mlp", hidden_sizes=(16,), key=jax.random.key(seed))


def linear_apply(params, x):
    """A foreign model: a pure function over a hand-made params dict."""
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def linear_params(d_in: int = 784, k: int = 10, seed: int = 0, scale: float = 0.01):
    """numpy arrays (eager JAX ops would each compile a tiny program on CPU)."""
    w = scale * np.random.default_rng(seed).standard_normal((d_in, k)).astype(np.float32)
    return {"w": w, "b": np.zeros((k,), np.float32)}


@pytest.fixture(scope="session")
def mnist_small():
    """The first 512 mnist10k training digits as float32 NHWC arrays in [0, 1]."""
    return data.as_arrays(data.load("mnist10k", split="train"), limit=512)


@pytest.fixture(scope="session")
def small_ds():
    """A 400-example mnist10k Dataset for fit()."""
    full = data.load("mnist10k", split="train")
    return data.from_arrays(full.images[:400], full.labels[:400], num_classes=10, name="mnist10k-400")


@pytest.fixture(scope="session")
def bn_model():
    """One :class:`TinyBN` model for the session (tests never modify its arrays)."""
    return tiny_bn_model(0)


@pytest.fixture(scope="session")
def make_mlp():
    """Factory ``seed -> Model`` for a 784-16-10 jaxrob MLP."""
    return tiny_mlp


@pytest.fixture(scope="session")
def foreign():
    """``(apply_fn, params_factory)`` of a hand-written linear model (no batch stats)."""
    return linear_apply, linear_params


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    """Compare against float32 references at float32 precision (GPUs default to TF32 matmuls)."""
    with jax.default_matmul_precision("highest"):
        yield
