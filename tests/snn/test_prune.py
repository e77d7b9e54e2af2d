"""Spatio-temporal pruning and weight quantization of SNNs (jaxrob.snn._prune)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data
from jaxrob.snn._models import create, twin
from jaxrob.snn._neurons import LIF
from jaxrob.snn._prune import (compress, explained_variance_ratio, layer_widths, pca_width, pca_widths,
                               potential_covariances, quantize_weights, spike_layer_synapses, temporal_prune,
                               width_for_variance)


def _low_rank(rng, n, rank, channels, spatial=()):
    """(n, *spatial, channels) data of exactly ``rank`` equal-variance directions plus an offset."""
    basis, _ = np.linalg.qr(rng.normal(size=(channels, rank)))          # orthonormal columns
    z = rng.normal(size=(n * int(np.prod(spatial, dtype=int)), rank))
    rows = z @ basis.T * 3.0 + rng.normal(size=channels)                 # the offset must not count
    return rows.reshape((n,) + tuple(spatial) + (channels,))


@pytest.mark.parametrize("rank,channels,spatial", [(1, 8, ()), (5, 32, (4, 4)), (12, 64, (2, 3)), (32, 32, ())])
def test_pca_width_recovers_rank(rank, channels, spatial):
    rng = np.random.default_rng(rank)
    p = _low_rank(rng, 400, rank, channels, spatial)
    # r equal components: any threshold above (r-1)/r needs all r of them, and none beyond
    assert pca_width(p, variance=0.999) == rank
    assert pca_width(p, variance=1.0) == channels   # 1.0 keeps the full width whatever the rank


def test_width_for_variance_closed_form():
    ratio = np.array([0.5, 0.3, 0.15, 0.05])
    assert [width_for_variance(ratio, v) for v in (0.4, 0.5, 0.8, 0.81, 0.95, 0.99, 1.0)] == [1, 1, 2, 3, 3, 4, 4]
    assert width_for_variance(np.zeros(6), 0.9) == 1                    # a layer without variance keeps one channel
    cov = np.diag([4.0, 1.0, 0.0])
    np.testing.assert_allclose(explained_variance_ratio(cov), [0.8, 0.2, 0.0])


def _fake_simulate(rank_by_layer, channels, seed=0):
    """A simulate() whose potentials are fixed linear maps of the input of known rank."""
    rng = np.random.default_rng(seed)
    maps = {s: jnp.asarray(rng.normal(size=(784, r)) @ rng.normal(size=(r, channels[s])), jnp.float32)
            for s, r in rank_by_layer.items()}

    def simulate(variables, x, *, key=None, timesteps=None):
        flat = x.reshape(x.shape[0], -1)
        return None, {"potential": {s: flat @ m for s, m in maps.items()}}
    return simulate


def test_pca_widths_maps_spike_layers_to_synapses_and_masks_padding():
    net = create("mlp", key=jax.random.key(0), timesteps=3, hidden_sizes=(48, 24))
    assert spike_layer_synapses(net) == {"lif1": "fc1", "lif2": "fc2"}
    fake = dataclasses.replace(net, simulate=_fake_simulate({"lif1": 7, "lif2": 3}, {"lif1": 48, "lif2": 24}))
    x = np.random.default_rng(1).uniform(size=(300, 28, 28, 1)).astype(np.float32)
    assert pca_widths(fake, net.variables, x, variance=0.99999, batch_size=128) == {"fc1": 7, "fc2": 3}
    # the batched, padded (300 = 2 * 128 + 44) covariance equals numpy's over all examples at once
    covs = potential_covariances(fake, net.variables, x, batch_size=128)
    pot = fake.simulate(None, jnp.asarray(x))[1]["potential"]
    for s, syn in (("lif1", "fc1"), ("lif2", "fc2")):
        n, cov = covs[syn]
        assert n == 300
        np.testing.assert_allclose(cov, np.cov(np.asarray(pot[s], np.float64), rowvar=False),
                                   rtol=2e-4, atol=1e-3 * np.abs(cov).max())


def test_spike_layer_synapses_of_the_cnns():
    cnn = create("cnn_small", key=jax.random.key(0), timesteps=2)
    assert spike_layer_synapses(cnn) == {"lif1": "conv1", "lif2": "conv2", "lif3": "fc1"}
    # the real simulate: a conv layer's samples are examples x positions (lif1 sits after a 2x2 max pool)
    covs = potential_covariances(cnn, cnn.variables, np.random.default_rng(0).uniform(size=(5, 28, 28, 1))
                                 .astype(np.float32), batch_size=4)
    assert covs["conv1"][0] == 5 * 14 * 14 and covs["conv1"][1].shape == (32, 32)
    assert covs["conv2"][0] == 5 * 7 * 7 and covs["fc1"][0] == 5


def test_pca_widths_on_a_real_snn_are_within_range():
    net = create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(16, 8))
    x = np.asarray(jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)))
    w = pca_widths(net, net.variables, x, variance=0.9)
    assert set(w) == {"fc1", "fc2"} and 1 <= w["fc1"] <= 16 and 1 <= w["fc2"] <= 8


def _params(m):
    return sum(a.size for a in jax.tree.leaves(m.variables["params"]))


def test_compress_shapes_params_and_macs():
    net = create("mlp", key=jax.random.key(0), timesteps=5)
    small, rep = compress(net, {"fc1": 32, "fc2": 16}, key=jax.random.key(1))
    p = small.variables["params"]
    assert (p["fc1"]["kernel"].shape, p["fc2"]["kernel"].shape, p["fc3"]["kernel"].shape) == \
        ((784, 32), (32, 16), (16, 10))
    before = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    after = 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert (rep["params_before"], rep["params_after"]) == (before, after) == (_params(net), _params(small))
    assert rep["compression"] == pytest.approx(before / after)
    assert rep["macs_after"] == 784 * 32 + 32 * 16 + 16 * 10
    assert small.timesteps == 5 and small.spiking and small.arch == "mlp"
    assert small.apply_fn(small.variables, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)

    cnn = create("cnn_small", key=jax.random.key(0), timesteps=3)
    c, rep = compress(cnn, {"conv1": 8, "conv2": 16, "fc1": 64}, key=jax.random.key(1))
    p = c.variables["params"]
    assert p["conv1"]["kernel"].shape == (3, 3, 1, 8) and p["conv2"]["kernel"].shape == (3, 3, 8, 16)
    assert p["fc1"]["kernel"].shape == (7 * 7 * 16, 64) and p["fc2"]["kernel"].shape == (64, 10)
    assert rep["widths_after"] == {"conv1": 8, "conv2": 16, "fc1": 64}
    assert rep["macs_after"] == 28 * 28 * 9 * 8 + 14 * 14 * 9 * 8 * 16 + 784 * 64 + 640
    assert rep["compression"] == pytest.approx(_params(cnn) / _params(c)) and rep["compression"] > 1
    # layers not named keep their width; the ANN twin compresses to an ANN twin
    c2, _ = compress(cnn, {"fc1": 10}, key=jax.random.key(2))
    assert layer_widths(c2) == {"conv1": 32, "conv2": 64, "fc1": 10}
    a, _ = compress(twin(cnn), {"conv1": 4}, key=jax.random.key(3))
    assert not a.spiking and layer_widths(a)["conv1"] == 4


def _tiny_data(n=200):
    ds = data.load("mnist10k", split="train")
    return data.from_arrays(ds.images[:n], ds.labels[:n], num_classes=10, name="mnist10k", split=f"train[:{n}]")


def test_temporal_prune_reduces_T_and_keeps_structure():
    ds = _tiny_data()
    x, y = data.as_arrays(ds, limit=100)
    net = create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(16,))
    v0 = net.variables
    v, log = temporal_prune(net, v0, ds, schedule=((3, 1), (1, 1)), optimizer={"name": "adam", "learning_rate": 1e-3},
                            batch_size=100, key=jax.random.key(1), eval_data=(x, y))
    assert [e["timesteps"] for e in log] == [3, 1] and [e["stage"] for e in log] == [0, 1]
    assert all(0.0 <= e["accuracy"] <= 1.0 and np.isfinite(e["loss"]) for e in log)
    assert jax.tree.structure(v) == jax.tree.structure(v0)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v0)
    assert not np.allclose(v["params"]["fc1"]["kernel"], v0["params"]["fc1"]["kernel"])   # it trained
    np.testing.assert_array_equal(v["batch_stats"]["lif1"]["threshold"], v0["batch_stats"]["lif1"]["threshold"])


def test_quantize_weights_levels_and_untouched_neuron_constants():
    net = create("cnn_small", key=jax.random.key(0), timesteps=2)
    v = jax.tree.map(lambda a: a, net.variables)
    v["batch_stats"]["lif2"] = {"leak": jnp.float32(0.9), "threshold": jnp.float32(1.7)}
    v["params"]["fc1"]["bias"] = jax.random.normal(jax.random.key(3), v["params"]["fc1"]["bias"].shape)
    for bits in (2, 3, 5):
        q = quantize_weights(v, bits=bits)
        for name in ("conv1", "conv2", "fc1", "fc2"):
            k = np.asarray(q["params"][name]["kernel"])
            assert len(np.unique(k)) <= 2 ** bits
            assert np.abs(k - np.asarray(v["params"][name]["kernel"])).max() > 0
            np.testing.assert_array_equal(q["params"][name]["bias"], v["params"][name]["bias"])
        assert jax.tree.structure(q["batch_stats"]) == jax.tree.structure(v["batch_stats"])
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(q["batch_stats"]),
                                                        jax.tree.leaves(v["batch_stats"])))
        assert float(q["batch_stats"]["lif2"]["threshold"]) == pytest.approx(1.7)
    q = quantize_weights(v, bits=3, per_channel=True)
    k = np.asarray(q["params"]["fc1"]["kernel"])
    assert max(len(np.unique(k[:, j])) for j in range(k.shape[1])) <= 8 and len(np.unique(k)) > 8
    # learned thresholds/leaks live in params but are not kernels: untouched too
    learned = create("mlp", key=jax.random.key(0), timesteps=2, hidden_sizes=(8,),
                     neuron=LIF(learn_threshold=True, learn_leak=True))
    ql = quantize_weights(learned.variables, bits=2)
    assert float(ql["params"]["lif1"]["threshold"]) == float(learned.variables["params"]["lif1"]["threshold"])
    assert float(ql["params"]["lif1"]["leak"]) == float(learned.variables["params"]["lif1"]["leak"])


def test_bad_arguments_raise():
    net = create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(16,))
    x = np.zeros((32, 28, 28, 1), np.float32)
    for variance in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="variance"):
            pca_widths(net, net.variables, x, variance=variance)
    with pytest.raises(ValueError, match="needs more than 16 samples"):
        pca_widths(net, net.variables, x[:10])
    with pytest.raises(ValueError, match="non-empty batch of NHWC"):
        pca_widths(net, net.variables, x[0])
    with pytest.raises(ValueError, match="spiking model"):
        pca_widths(twin(net), net.variables, x)
    with pytest.raises(TypeError, match="SpikingModel"):
        pca_widths(object(), net.variables, x)
    with pytest.raises(ValueError, match="not hidden convolution/dense"):
        compress(net, {"fc9": 3}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="only narrows"):
        compress(net, {"fc1": 17}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="must be >= 1"):
        compress(net, {"fc1": 0}, key=jax.random.key(0))
    ds = _tiny_data(100)
    kw = dict(optimizer={"name": "adam", "learning_rate": 1e-3}, batch_size=50, key=jax.random.key(0))
    for schedule, msg in [((), "non-empty"), (((3, 1), (3, 1)), "strictly decrease"), (((2, 1), (3, 1)), "strictly"),
                          (((5, 1),), "exceed the model's 4"), (((3, 0),), "epochs must be >= 1"),
                          (((3,),), "pair")]:
        with pytest.raises(ValueError, match=msg):
            temporal_prune(net, net.variables, ds, schedule=schedule, **kw)
    other = create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="do not match"):
        temporal_prune(net, other.variables, ds, schedule=((2, 1),), **kw)
    with pytest.raises(ValueError, match="bits must be >= 2"):
        quantize_weights(net.variables, bits=1)
