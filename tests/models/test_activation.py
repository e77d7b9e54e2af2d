"""The ``activation`` option of ``models.create``: replaces every ReLU, static, validated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrob import models
from jaxrob.models import _registry

KEY = jax.random.key(0)

# Small configurations of every architecture family, and the number of ReLUs each applies.
#   mlp: 2 hidden layers; cnn_small: conv1, conv2, fc1; resnet20: stem + 9 blocks x 2;
#   wide_resnet-10-1: 3 pre-activation blocks x 2 + final BN-ReLU; mobilenet_v2: stem,
#   1 (first block has no expansion) + 16 blocks x 2, last 1x1 conv; vgg11_bn: 8 convs.
FAMILIES = {
    "mlp": (dict(hidden_sizes=(16, 8)), 2),
    "cnn_small": ({}, 3),
    "resnet20": (dict(input_shape=(8, 8, 3)), 19),
    "wide_resnet": (dict(depth=10, width=1, input_shape=(8, 8, 3)), 7),
    "mobilenet_v2": (dict(width_mult=0.25, input_shape=(8, 8, 3)), 35),
    "vgg11_bn": ({}, 8),
}


def _counting(fn):
    calls = []

    def act(x):
        calls.append(x.shape)
        return fn(x)
    return act, calls


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_activation_replaces_every_relu(name):
    """Traced once, the custom activation is called once per ReLU of the architecture."""
    kwargs, relus = FAMILIES[name]
    act, calls = _counting(jax.nn.relu)
    model = models.create_abstract(name, activation=act, **kwargs)
    x = jax.ShapeDtypeStruct((2, *model.input_shape), jnp.float32)
    jax.eval_shape(model.apply_fn, model.variables, x)
    assert len(calls) == relus
    calls.clear()
    jax.eval_shape(lambda v, x: model.train_apply(v, x, key=KEY), model.variables, x)
    assert len(calls) == relus


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_default_is_relu_and_static(name):
    """Default is ReLU (ReLU6 for mobilenet_v2); the option leaves the variables pytree unchanged."""
    kwargs, _ = FAMILIES[name]
    module = _registry.create_module(name, key=KEY, **kwargs) if name in ("mlp", "cnn_small") else \
        nnx.eval_shape(lambda: _registry.create_module(name, key=KEY, **kwargs))
    assert module.activation is (jax.nn.relu6 if name == "mobilenet_v2" else jax.nn.relu)
    custom = nnx.eval_shape(lambda: _registry.create_module(name, key=KEY, activation=jnp.tanh, **kwargs))
    assert custom.activation is jnp.tanh
    _, state = nnx.split(module)
    _, custom_state = nnx.split(custom)
    assert jax.tree.structure(state) == jax.tree.structure(custom_state)
    assert [a.shape for a in jax.tree.leaves(state)] == [a.shape for a in jax.tree.leaves(custom_state)]


def test_mlp_default_matches_hand_written_relu_network():
    model = models.create("mlp", key=KEY, hidden_sizes=(16, 8))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    p = model.params
    h = ((x - 0.1307) / 0.3081).reshape(4, -1)
    for layer in (p["hidden"][0], p["hidden"][1]):
        h = jnp.maximum(h @ layer["kernel"] + layer["bias"], 0.0)
    want = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply_fn(model.variables, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_explicit_relu_equals_default_bit_for_bit(name):
    kwargs, _ = FAMILIES[name]
    default = models.create(name, key=KEY, **kwargs)
    explicit = models.create(name, key=KEY, activation=jax.nn.relu, **kwargs)
    x = jax.random.uniform(jax.random.key(1), (3, *default.input_shape))
    np.testing.assert_array_equal(default.apply_fn(default.variables, x), explicit.apply_fn(explicit.variables, x))
    key = jax.random.key(2)
    np.testing.assert_array_equal(default.train_apply(default.variables, x, key=key)[0],
                                  explicit.train_apply(explicit.variables, x, key=key)[0])


def test_zero_activation_makes_mlp_logits_input_independent():
    model = models.create("mlp", key=KEY, hidden_sizes=(16, 8), activation=lambda x: 0 * x)
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    logits = model.apply_fn(model.variables, x)
    np.testing.assert_array_equal(logits, jnp.broadcast_to(model.params["head"]["bias"], logits.shape))


def test_quantized_clipped_relu_changes_and_quantizes_hidden_units():
    """A 2-bit clipped ReLU: outputs differ from ReLU's and hidden units take at most 4 values."""
    def quant_relu(x):
        return jnp.round(jnp.clip(x, 0.0, 1.0) * 3) / 3

    base = models.create("cnn_small", key=KEY)
    quant = models.create("cnn_small", key=KEY, activation=quant_relu)
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    assert not np.allclose(base.apply_fn(base.variables, x), quant.apply_fn(quant.variables, x))
    # The last hidden layer's values reach the head: logits = q(h) @ W + b with q(h) on 4 levels.
    seen = []
    probe = models.create("cnn_small", key=KEY, activation=lambda x: seen.append(quant_relu(x)) or seen[-1])
    np.testing.assert_array_equal(probe.apply_fn(probe.variables, x), quant.apply_fn(quant.variables, x))
    levels = np.unique(np.asarray(seen[-1]))
    assert set(np.round(levels * 3).astype(int)) <= {0, 1, 2, 3} and len(levels) >= 2


def test_jit_with_custom_activation():
    model = models.create("mlp", key=KEY, hidden_sizes=(8,), activation=jax.nn.softplus)
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_allclose(jax.jit(model.apply_fn)(model.variables, x), model.apply_fn(model.variables, x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [1, "relu", 0.5])
def test_non_callable_activation_is_a_type_error(bad):
    with pytest.raises(TypeError, match="activation must be a callable"):
        models.create("mlp", key=KEY, activation=bad)
    with pytest.raises(TypeError, match="activation must be a callable"):
        models.create_abstract("resnet20", activation=bad)
