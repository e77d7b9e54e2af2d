"""Layer-wise vs step-wise forward pass of the spiking models, and models fed by a shape-changing encoder.

The layer-wise pass (default) runs every synapse/pool on all ``T`` steps at once and
only the neurons in ``lax.scan``; the step-wise pass (``stepwise=True``) runs the whole
network inside one ``lax.scan``.  They must give the same spike counts, the same
logits/statistics and the same BPTT gradients (up to float summation order), in
training mode too (Poisson draws and dropout masks keyed alike).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrob.models import _layers as L
from jaxrob.models._base import nnx_merger
from jaxrob.snn import DCT, LIF, PoissonRate, _models, create, twin

SMALL_CNN = {"conv1": 4, "conv2": 8, "fc1": 16}
N = 4


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def _images(shape, seed=1):
    return jax.random.uniform(jax.random.key(seed), (N,) + tuple(shape))


def _everything(model, x, y):
    """One compile: training-mode loss and gradients (dropout, Poisson keyed) and simulate's logits and stats."""
    @jax.jit
    def run(variables):
        def loss(params):
            logits, _ = model.train_apply({**variables, "params": params}, x, key=jax.random.key(5))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        value, grads = jax.value_and_grad(loss)(variables["params"])
        logits, stats = model.simulate(variables, x, key=jax.random.key(3))
        return value, grads, logits, stats
    return run(model.variables)


def _assert_modes_agree(model, x, y):
    assert not model.stepwise
    step = model.with_stepwise(True)
    assert step.stepwise and step.timesteps == model.timesteps and step.variables is model.variables
    lw, sw = _everything(model, x, y), _everything(step, x, y)
    value, grads, logits, stats = lw
    # nothing vacuous: the hidden layers spike (not always) and every parameter gets a gradient
    for layer, rate in stats["rate"].items():
        assert 0.0 < float(rate.mean()) < 1.0, (layer, rate)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    # spike counts and non-zero input counts are integers: equal exactly
    for name in stats["spikes"]:
        np.testing.assert_array_equal(np.asarray(stats["spikes"][name]), np.asarray(sw[3]["spikes"][name]))
    for name in stats["synops"]:
        np.testing.assert_allclose(np.asarray(stats["synops"][name]), np.asarray(sw[3]["synops"][name]), rtol=1e-6)
    # the rest to float tolerance (summation order of the readout over time differs)
    for a, b in zip(jax.tree.leaves((value, grads, logits, stats)), jax.tree.leaves(sw)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


ENCODERS = {"direct": None, "poisson": PoissonRate(), "dct": DCT(block=4)}


@pytest.mark.slow
@pytest.mark.parametrize("enc", ["direct", "poisson", "dct"])
def test_mlp_layerwise_equals_stepwise(enc):
    model = create("mlp", key=jax.random.key(0), timesteps=5, hidden_sizes=(24, 16), encoder=ENCODERS[enc])
    _assert_modes_agree(model, _images((28, 28, 1)), jnp.arange(N) % 10)


@pytest.mark.slow
@pytest.mark.parametrize("enc", ["direct", "poisson", "dct"])
def test_cnn_small_layerwise_equals_stepwise(enc):
    model = create("cnn_small", key=jax.random.key(0), timesteps=4, widths=SMALL_CNN, encoder=ENCODERS[enc],
                   input_shape=(12, 12, 1))
    _assert_modes_agree(model, _images((12, 12, 1)), jnp.arange(N) % 10)


def _mlp_with_dropout(rate, encoder):
    """The mlp architecture with a dropout op after each hidden spike layer (as vgg9 has; vgg9 itself is
    too deep to keep spiking at test sizes without batch norm)."""
    ops = []
    for op in _models._mlp_arch((24, 16)):
        ops.append(op)
        if op[0] == "spike":
            ops.append(("dropout",))
    net = _models.SpikingNet(ops, input_shape=(28, 28, 1), num_classes=10, mean=(0.0,), std=(1.0,), neuron=LIF(),
                             encoder=encoder, timesteps=5, dropout=rate, rngs=L.ParamKeys(jax.random.key(0)))
    merge, variables = nnx_merger(net, name="mlp_dropout")
    return _models._wrap(merge, variables, name="snn_mlp_dropout", input_shape=(28, 28, 1), num_classes=10,
                         timesteps=5, spiking=True, arch="mlp", neuron=LIF(), encoder=encoder, stepwise=False)


def test_dropout_and_poisson_in_training_mode_are_the_same_in_both_modes():
    """One dropout mask per forward pass held over time, one Poisson train per key: equal in both modes."""
    x, y = _images((28, 28, 1)), jnp.arange(N) % 10
    model = _mlp_with_dropout(0.4, PoissonRate())
    _assert_modes_agree(model, x, y)
    # dropout does act in training mode (and only there: simulate is evaluation)
    no_drop = _mlp_with_dropout(0.0, PoissonRate())
    jax.tree.map(np.testing.assert_array_equal, model.variables, no_drop.variables)    # same initialisation
    def train_logits(m):
        return jax.jit(lambda v: m.train_apply(v, x, key=jax.random.key(5))[0])(model.variables)
    assert not np.allclose(train_logits(model), train_logits(no_drop))     # dropout acts in training mode


def test_mode_survives_twin_and_with_timesteps_and_is_validated():
    m = create("mlp", key=jax.random.key(0), timesteps=3, hidden_sizes=(8,), stepwise=True)
    assert m.stepwise and m.with_timesteps(5).stepwise and twin(twin(m)).stepwise
    assert not m.with_stepwise(False).stepwise
    with pytest.raises(TypeError, match="stepwise"):
        create("mlp", key=jax.random.key(0), stepwise="yes")
    with pytest.raises(TypeError, match="stepwise"):
        m.with_stepwise(1)


# ----------------------------------------------------------------------------- shape-changing encoders

def test_overlapping_tiled_dct_sizes_the_network_from_the_encoder_output():
    """DCT(block=4, stride=2, layout='tile'): 12x12 images -> 5x5 blocks -> 20x20 currents (DCT-SNN's CIFAR
    layout); the first synapse is sized for that, and both modes run and agree."""
    enc = DCT(block=4, stride=2)
    assert enc.output_shape((N, 12, 12, 1)) == (N, 20, 20, 1)
    model = create("cnn_small", key=jax.random.key(0), timesteps=3, widths=SMALL_CNN, encoder=enc,
                   input_shape=(12, 12, 1))
    assert model.layer_info["conv1"]["input_shape"] == (20, 20, 1)
    assert model.layer_info["fc1"]["input_shape"] == (5 * 5 * 8,)            # two 2x2 pools of 20x20
    assert model.variables["params"]["fc1"]["kernel"].shape == (5 * 5 * 8, 16)
    x = _images((12, 12, 1))
    logits, stats = jax.jit(lambda v: model.simulate(v, x))(model.variables)
    assert logits.shape == (N, 10) and np.all(np.isfinite(np.asarray(logits)))
    assert stats["synops"]["conv1"].shape == (N,)
    step_logits = jax.jit(model.with_stepwise(True).apply_fn)(model.variables, x)
    np.testing.assert_allclose(np.asarray(step_logits), np.asarray(logits), rtol=1e-4, atol=1e-5)
    # an MLP too: its first dense layer takes the 20 * 20 tiled currents
    mlp = create("mlp", key=jax.random.key(0), timesteps=2, hidden_sizes=(8,), encoder=enc, input_shape=(12, 12, 1))
    assert mlp.variables["params"]["fc1"]["kernel"].shape == (400, 8)
    assert jax.jit(mlp.apply_fn)(mlp.variables, x).shape == (N, 10)


def test_ann_twin_of_a_shape_changing_encoder_is_a_clear_error():
    enc = DCT(block=4, stride=2)
    model = create("mlp", key=jax.random.key(0), timesteps=2, hidden_sizes=(8,), encoder=enc, input_shape=(12, 12, 1))
    with pytest.raises(ValueError, match="ANN twin.*layout='fold'"):
        twin(model)
    with pytest.raises(ValueError, match="ANN twin"):
        create("mlp", key=jax.random.key(0), encoder=enc, input_shape=(12, 12, 1), spiking=False)
    # the fold layout keeps the image's shape, so that model has a twin
    fold = create("mlp", key=jax.random.key(0), timesteps=2, hidden_sizes=(8,), encoder=DCT(block=4, stride=2,
                  layout="fold"), input_shape=(12, 12, 1))
    assert twin(fold).apply_fn(fold.variables, _images((12, 12, 1))).shape == (N, 10)
