"""Spiking models: forward pass, BPTT, ANN twin, spike statistics, energy, hybrid conversion.

The statistics are checked against quantities recomputed outside the model: the
spikes of each layer of the MLP by running :func:`simulate` on currents computed
by hand from the weights, and the synaptic operations of a convolution by an
explicit loop over its output positions (SAME padding, so border outputs see
fewer inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrob import data, models, train
from jaxrob.models import _layers as L
from jaxrob.snn import (E_AC_45NM_PJ, E_MAC_45NM_PJ, LIF, PoissonRate, SpikingModel, activation_thresholds, convert,
                        create, energy, simulate, summarize, twin)

(MNIST_MEAN,), (MNIST_STD,) = L.DEFAULT_NORMALISATION[1]
T_MLP = 6


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    """Recomputed references use float32 matmuls; keep the model's at the same precision on any backend."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def digits():
    """Eight real MNIST test digits, float32 NHWC in [0, 1], and their labels."""
    return data.as_arrays(data.load("mnist10k", split="test"), limit=8)


@pytest.fixture(scope="module")
def mlp():
    return create("mlp", key=jax.random.key(0), timesteps=T_MLP, hidden_sizes=(32, 16))


@pytest.fixture(scope="module")
def cnn():
    return create("cnn_small", key=jax.random.key(1), timesteps=4, widths={"conv1": 4, "conv2": 8, "fc1": 16})


def _ce(model):
    def loss(params, variables, x, y):
        logits = model.apply_fn({**variables, "params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss


def _everything(model, x, y):
    """One compile per model: apply_fn logits, simulate's logits and statistics, and the BPTT gradient."""
    @jax.jit
    def run(variables, x, y):
        logits = model.apply_fn(variables, x)
        sim_logits, stats = model.simulate(variables, x)
        grads = jax.grad(_ce(model))(variables["params"], variables, x, y)
        return logits, sim_logits, stats, grads
    return run(model.variables, x, y)


@pytest.fixture(scope="module")
def mlp_all(mlp, digits):
    return _everything(mlp, *digits)


@pytest.fixture(scope="module")
def cnn_all(cnn, digits):
    return _everything(cnn, *digits)


@pytest.fixture(scope="module")
def mlp_run(mlp_all):
    """``(logits, stats)`` of ``mlp.simulate`` on the digits."""
    return mlp_all[1], mlp_all[2]


# ----------------------------------------------------------------------------------------- forward and BPTT


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_logits_shape_simulate_equals_apply_and_bptt_gradients(name, request, digits):
    model = request.getfixturevalue(name)
    logits, sim_logits, stats, grads = request.getfixturevalue(f"{name}_all")
    x, y = digits
    assert isinstance(model, SpikingModel) and model.spiking and model.num_classes == 10
    assert logits.shape == (len(x), 10) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sim_logits), np.asarray(logits), rtol=1e-6, atol=1e-6)
    assert int(stats["timesteps"]) == model.timesteps
    # the hidden layers spike (otherwise the gradient test below would be vacuous), not always
    for layer, rate in stats["rate"].items():
        assert 0.0 < float(rate.mean()) < 1.0, (layer, rate)
    # BPTT through the surrogate reaches every layer, the first included
    assert set(grads) == set(model.variables["params"])
    for layer, leaves in grads.items():
        for pname, g in leaves.items():
            g = np.asarray(g)
            assert np.all(np.isfinite(g)), (layer, pname)
            assert np.abs(g).sum() > 0, (layer, pname)


def test_mlp_forward_and_statistics_recomputed_by_hand(mlp, digits, mlp_run):
    """Direct encoding: layer l's current is W_l (V_th o_{l-1}) + b_l; run simulate(LIF()) layer by layer."""
    x, _ = digits
    n, T = len(x), T_MLP
    p, bs = mlp.variables["params"], mlp.variables["batch_stats"]
    logits, stats = mlp_run
    neuron = mlp.neuron
    assert neuron == LIF()                                            # the default neuron
    xn = ((jnp.asarray(x) - MNIST_MEAN) / MNIST_STD).reshape(n, -1)
    inp = jnp.broadcast_to(xn, (T, n, 784))                          # the same analog current every step
    spikes = {}
    for syn, lif in [("fc1", "lif1"), ("fc2", "lif2")]:
        currents = inp @ p[syn]["kernel"] + p[syn]["bias"]
        vth, leak = bs[lif]["threshold"], bs[lif]["leak"]
        assert float(vth) == 1.0 and float(leak) == pytest.approx(0.99)
        _, s, _ = simulate(neuron, currents, leak=leak, threshold=vth)
        spikes[lif] = s
        # spike counts and firing rates
        np.testing.assert_array_equal(np.asarray(stats["spikes"][lif]), np.asarray(s.sum(axis=(0, 2))))
        width = p[syn]["kernel"].shape[1]
        np.testing.assert_allclose(np.asarray(stats["rate"][lif]), np.asarray(s.sum(axis=(0, 2))) / (width * T),
                                   rtol=1e-6)
        inp = s * vth
    acc = (inp @ p["fc3"]["kernel"] + p["fc3"]["bias"]).sum(0)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(acc / T), rtol=1e-5, atol=1e-5)
    # synops of a dense layer: (number of non-zero inputs over all steps) x out_features
    nz_x = np.count_nonzero(np.asarray(xn), axis=1)
    np.testing.assert_array_equal(np.asarray(stats["synops"]["fc1"]), nz_x * T * 32)
    np.testing.assert_array_equal(np.asarray(stats["synops"]["fc2"]), np.asarray(spikes["lif1"].sum(axis=(0, 2))) * 16)
    np.testing.assert_array_equal(np.asarray(stats["synops"]["fc3"]), np.asarray(spikes["lif2"].sum(axis=(0, 2))) * 10)
    assert float(stats["spikes"]["lif1"].min()) > 0


def _conv_synops(inputs: np.ndarray, cout: int) -> np.ndarray:
    """Explicit count for a 3x3 SAME convolution: for every output position, the non-zero inputs its
    (clipped) window sees, times the output channels; ``inputs`` is ``(T, N, H, W, C)``."""
    T, n, h, w, _ = inputs.shape
    nz = inputs != 0
    total = np.zeros(n, np.int64)
    for i in range(h):
        for j in range(w):
            window = nz[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
            total += window.sum(axis=(0, 2, 3, 4)) * cout
    return total


def test_conv_synops_equal_an_explicit_count_with_padded_borders():
    T = 3
    model = create("cnn_small", key=jax.random.key(2), timesteps=T, input_shape=(8, 8, 1),
                   widths={"conv1": 2, "conv2": 3, "fc1": 4})
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (2, 8, 8, 1)).astype(np.float32)
    x[rng.uniform(size=x.shape) < 0.4] = np.float32(MNIST_MEAN)      # normalises to exactly 0
    x[0, 0, :, 0] = np.float32(MNIST_MEAN)                           # a silent border row
    _, stats = jax.jit(model.simulate)(model.variables, x)
    p, bs = model.variables["params"], model.variables["batch_stats"]
    xn = (x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    assert (xn == 0).mean() > 0.3
    # conv1: its input is the normalised image at every step
    np.testing.assert_array_equal(np.asarray(stats["synops"]["conv1"]),
                                  _conv_synops(np.broadcast_to(xn, (T, *xn.shape)), 2))
    # conv2: its input is lif1's spikes (conv1 -> maxpool -> LIF), recomputed here
    z = jax.lax.conv_general_dilated(jnp.asarray(xn), p["conv1"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv1"]["bias"]
    z = z.reshape(2, 4, 2, 4, 2, 2).max(axis=(2, 4))
    _, s1, _ = simulate(model.neuron, jnp.broadcast_to(z, (T, *z.shape)), leak=bs["lif1"]["leak"],
                        threshold=bs["lif1"]["threshold"])
    np.testing.assert_array_equal(np.asarray(stats["spikes"]["lif1"]), np.asarray(s1.sum(axis=(0, 2, 3, 4))))
    assert 0 < float(s1.mean()) < 1
    np.testing.assert_array_equal(np.asarray(stats["synops"]["conv2"]), _conv_synops(np.asarray(s1), 3))
    # MACs per step: H * W * 3 * 3 * C_in * C_out for SAME convolutions, in * out for dense layers
    info = model.layer_info
    assert info["conv1"]["macs"] == 8 * 8 * 9 * 1 * 2
    assert info["conv2"]["macs"] == 4 * 4 * 9 * 2 * 3
    assert info["fc1"]["macs"] == 2 * 2 * 3 * 4 and info["fc2"]["macs"] == 4 * 10
    assert info["lif1"]["neurons"] == 4 * 4 * 2 and info["lif2"]["neurons"] == 2 * 2 * 3
    assert info["conv1"]["analog_input"] and not info["conv2"]["analog_input"]


# ----------------------------------------------------------------------------------------- energy


def test_energy_formulas(mlp, mlp_run):
    _, stats = mlp_run
    info = mlp.layer_info
    e = energy(mlp, stats)
    T = T_MLP
    assert E_AC_45NM_PJ == 0.9 and E_MAC_45NM_PJ == 4.6
    macs = {"fc1": 784 * 32, "fc2": 32 * 16, "fc3": 16 * 10}
    assert {k: info[k]["macs"] for k in macs} == macs
    np.testing.assert_allclose(np.asarray(e["layers"]["fc1"]), 4.6 * macs["fc1"] * T, rtol=1e-6)     # analog input
    np.testing.assert_allclose(np.asarray(e["layers"]["fc2"]), 0.9 * np.asarray(stats["synops"]["fc2"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e["layers"]["fc3"]), 0.9 * np.asarray(stats["synops"]["fc3"]), rtol=1e-6)
    assert set(e["layers"]) == set(macs)
    assert float(e["ann"]) == pytest.approx(4.6 * sum(macs.values()), rel=1e-6)
    np.testing.assert_allclose(np.asarray(e["total"]), sum(np.asarray(v) for v in e["layers"].values()), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e["ratio"]), float(e["ann"]) / np.asarray(e["total"]), rtol=1e-6)
    # other energies per operation scale linearly
    e2 = energy(mlp, stats, e_ac=1.0, e_mac=2.0)
    np.testing.assert_allclose(np.asarray(e2["layers"]["fc2"]), np.asarray(stats["synops"]["fc2"]), rtol=1e-6)
    assert float(e2["ann"]) == pytest.approx(2.0 * sum(macs.values()))
    # the summary is the batch mean
    s = summarize(mlp, stats)
    assert s["timesteps"] == T
    assert s["energy_pj"] == pytest.approx(float(np.mean(np.asarray(e["total"]))), rel=1e-6)
    assert s["spikes_total"] == pytest.approx(sum(float(np.mean(np.asarray(v))) for v in stats["spikes"].values()))
    assert s["energy_ratio"] == pytest.approx(s["ann_energy_pj"] / s["energy_pj"])
    with pytest.raises(ValueError, match="e_ac"):
        energy(mlp, stats, e_ac=-1.0)
    with pytest.raises(ValueError, match="spiking statistics"):
        energy(mlp, {"preactivations": {}})


def test_spiking_encoder_makes_the_first_layer_accumulate_only(digits):
    """Poisson rate coding: the first layer's input is spikes, so it costs E_AC per synaptic operation."""
    T = 16
    x = digits[0][:4]
    model = create("mlp", key=jax.random.key(0), timesteps=T, hidden_sizes=(8,), encoder=PoissonRate())
    assert model.layer_info["fc1"]["analog_input"] is False
    _, stats = jax.jit(model.simulate)(model.variables, x)
    e = energy(model, stats)
    np.testing.assert_allclose(np.asarray(e["layers"]["fc1"]), 0.9 * np.asarray(stats["synops"]["fc1"]), rtol=1e-6)
    # each input spike feeds the 8 hidden neurons; E[input spikes] = T * sum of intensities (std ~ 2 % here)
    synops = np.asarray(stats["synops"]["fc1"])
    assert np.all(synops % 8 == 0)
    expected = T * x.reshape(len(x), -1).sum(1) * 8
    np.testing.assert_allclose(synops, expected, rtol=0.1)



def test_keyed_apply_fn_draws_new_poisson_spikes_and_feeds_randomized_attacks(digits):
    """apply_fn(v, x) is deterministic; apply_fn(v, x, key=k) equals simulate's logits for k and varies with k."""
    from jaxrob.attacks import pgd
    x, y = digits[0][:8], digits[1][:8]
    model = create("mlp", key=jax.random.key(0), timesteps=8, hidden_sizes=(16,), encoder=PoissonRate())
    v = model.variables
    f = jax.jit(model.apply_fn)
    np.testing.assert_array_equal(np.asarray(f(v, x)), np.asarray(f(v, x, key=jax.random.key(0))))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b = np.asarray(f(v, x, key=k1)), np.asarray(f(v, x, key=k2))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, np.asarray(model.simulate(v, x, key=k1)[0]), rtol=1e-6, atol=1e-6)
    adv = pgd(model.apply_fn, v, x, y, key=jax.random.key(3), eps=0.1, steps=2, randomized=True, eot_samples=2)
    assert adv.shape == x.shape and float(jnp.max(jnp.abs(adv - x))) <= 0.1 + 1e-6

# ----------------------------------------------------------------------------------------- the ANN twin


def test_cnn_small_twin_equals_jaxrob_models_cnn_small(digits):
    x, _ = digits
    snn = create("cnn_small", key=jax.random.key(3), timesteps=4)
    ann = twin(snn)
    ref = models.create("cnn_small", key=jax.random.key(4))
    assert not ann.spiking and ann.timesteps == 0 and ann.arch == "cnn_small"
    # same parameter names and shapes
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    assert shapes(snn.variables["params"]) == shapes(ref.variables["params"])
    assert set(snn.variables["params"]) == {"conv1", "conv2", "fc1", "fc2"}
    # same normalisation constants
    ann_module = ann._merge(snn.variables)
    assert ann_module.mean == (MNIST_MEAN,) and ann_module.std == (MNIST_STD,)
    ref_module = nnx.eval_shape(lambda: models.create_module("cnn_small", key=jax.random.key(4)))
    assert (ann_module.mean, ann_module.std) == (ref_module.mean, ref_module.std)
    # same function of the same parameters (max-pool and ReLU commute)
    ref_vars = {"params": snn.variables["params"], "batch_stats": ref.variables["batch_stats"]}
    out, want = jax.jit(lambda: (ann.apply_fn(snn.variables, x), ref.apply_fn(ref_vars, x)))()
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)
    # the twin of the twin is the spiking model again
    assert twin(ann).spiking


def test_twin_round_trip_keeps_timesteps(mlp):
    assert twin(twin(mlp)).timesteps == mlp.timesteps


def test_twin_keeps_neuron_and_encoder(mlp):
    ann = twin(mlp)
    assert ann.neuron == mlp.neuron and ann.encoder == mlp.encoder
    assert twin(mlp, spiking=True).spiking
    with pytest.raises(TypeError, match="SpikingModel"):
        twin(models.create("mlp", hidden_sizes=(8,), key=jax.random.key(0)))


# ----------------------------------------------------------------------------------------- timesteps, widths


def test_with_timesteps(mlp, digits, mlp_run):
    x, _ = digits
    m8 = mlp.with_timesteps(8)
    assert m8.timesteps == 8 and mlp.timesteps == T_MLP and m8.variables is mlp.variables
    same = mlp.with_timesteps(T_MLP)

    @jax.jit
    def run(v, x):
        return m8.simulate(v, x), mlp.simulate(v, x, timesteps=8)[0], same.apply_fn(v, x)

    (logits8, stats8), logits8b, logits_same = run(mlp.variables, x)
    assert int(stats8["timesteps"]) == 8
    assert not np.allclose(np.asarray(logits8), np.asarray(mlp_run[0]))
    # with_timesteps(T) is simulate(..., timesteps=T), and with_timesteps of the model's own T changes nothing
    np.testing.assert_allclose(np.asarray(logits8b), np.asarray(logits8), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits_same), np.asarray(mlp_run[0]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="timesteps"):
        mlp.with_timesteps(0)
    with pytest.raises(ValueError, match="ANN twin"):
        twin(mlp).with_timesteps(4)


def test_simulate_rejects_bad_timesteps(mlp, digits):
    x, _ = digits
    with pytest.raises(ValueError, match="timesteps"):
        jax.eval_shape(lambda v: mlp.simulate(v, x[:1], timesteps=-1), mlp.variables)


def test_widths_change_shapes(cnn, mlp, digits):
    p = cnn.variables["params"]
    assert p["conv1"]["kernel"].shape == (3, 3, 1, 4)
    assert p["conv2"]["kernel"].shape == (3, 3, 4, 8)
    assert p["fc1"]["kernel"].shape == (7 * 7 * 8, 16)
    assert p["fc2"]["kernel"].shape == (16, 10)
    assert cnn.layer_info["lif1"]["shape"] == (14, 14, 4) and cnn.layer_info["lif3"]["neurons"] == 16
    wide = create("mlp", key=jax.random.key(0), timesteps=2, hidden_sizes=(32, 16), widths={"fc2": 5})
    assert wide.variables["params"]["fc2"]["kernel"].shape == (32, 5)
    assert wide.variables["params"]["fc3"]["kernel"].shape == (5, 10)
    # a directly created ANN (spiking=False) is the twin of the SNN: the same variables and function
    direct = create("cnn_small", key=jax.random.key(1), timesteps=4, widths={"conv1": 4, "conv2": 8, "fc1": 16},
                    spiking=False)
    assert jax.tree.map(lambda a: a.shape, direct.variables) == jax.tree.map(lambda a: a.shape, cnn.variables)
    x = digits[0]
    a, b = jax.jit(lambda v: (direct.apply_fn(v, x), twin(cnn).apply_fn(v, x)))(cnn.variables)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- training


def _learned_neuron_model():
    return create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(32,),
                  neuron=LIF(threshold=0.5, learn_threshold=True, learn_leak=True))


def test_learned_leak_and_threshold_are_params_with_gradients(digits):
    model = _learned_neuron_model()
    v = model.variables
    assert set(v["params"]["lif1"]) == {"leak", "threshold"} and "lif1" not in v["batch_stats"]
    assert float(v["params"]["lif1"]["threshold"]) == 0.5
    g = jax.jit(jax.grad(_ce(model)))(v["params"], v, *digits)
    for k in ("leak", "threshold"):
        assert np.isfinite(float(g["lif1"][k])) and float(g["lif1"][k]) != 0.0, k



def test_out_of_range_learned_values_act_as_the_nearest_valid_ones_and_keep_gradients(digits):
    """A learned leak above 1 runs as 1 and a non-positive threshold as MIN_THRESHOLD; both still get gradients."""
    from jaxrob.snn._models import MIN_THRESHOLD
    model = _learned_neuron_model()
    v = model.variables

    def with_values(leak, thr):
        params = jax.tree.map(lambda a: a, v["params"])
        params["lif1"] = {"leak": jnp.float32(leak), "threshold": jnp.float32(thr)}
        return {**v, "params": params}

    x = digits[0][:16]
    f = jax.jit(model.apply_fn)
    np.testing.assert_array_equal(np.asarray(f(with_values(1.7, 0.5), x)), np.asarray(f(with_values(1.0, 0.5), x)))
    np.testing.assert_array_equal(np.asarray(f(with_values(-0.3, 0.5), x)), np.asarray(f(with_values(0.0, 0.5), x)))
    np.testing.assert_array_equal(np.asarray(f(with_values(0.9, -2.0), x)),
                                  np.asarray(f(with_values(0.9, MIN_THRESHOLD), x)))
    grad = jax.jit(jax.grad(_ce(model)))

    def g(leak, thr):
        w = with_values(leak, thr)
        return grad(w["params"], w, *digits)["lif1"]

    # Straight-through: the out-of-range value gets the gradient of the value it acts as.
    g_out, g_in = g(1.7, 0.5), g(1.0, 0.5)
    assert float(g_out["leak"]) != 0.0 and float(g_out["leak"]) == float(g_in["leak"])
    g_out, g_in = g(0.9, -2.0), g(0.9, MIN_THRESHOLD)
    assert float(g_out["threshold"]) != 0.0 and float(g_out["threshold"]) == float(g_in["threshold"])

# Measured (`pytest -m slow tests/snn/test_models.py -k fit`): epoch-mean training loss 2.26 -> 2.11 -> 1.99,
# accuracy 13 % -> 46 %.  Slow because compiling the BPTT train step costs ~8 s of CPU here.
@pytest.mark.slow
def test_fit_trains_a_spiking_model():
    full = data.load("mnist10k", split="train")
    ds = data.from_arrays(full.images[:256], full.labels[:256], num_classes=10, name="mnist10k-256")
    model = _learned_neuron_model()
    state, hist = train.fit(model, ds, optimizer={"name": "adam", "learning_rate": 3e-3}, epochs=3,
                            batch_size=64, key=jax.random.key(1), progress=False)
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.15, hist
    assert hist[-1]["accuracy"] > hist[0]["accuracy"] + 0.1, hist
    # the learned neuron parameters moved
    assert float(state.params["lif1"]["threshold"]) != 0.5 and float(state.params["lif1"]["leak"]) != 0.99
    assert state.batch_stats == model.variables["batch_stats"]


def test_constant_thresholds_live_in_batch_stats(mlp):
    bs = mlp.variables["batch_stats"]
    assert set(bs) == {"lif1", "lif2"} and "lif1" not in mlp.variables["params"]
    assert float(bs["lif1"]["threshold"]) == 1.0 and float(bs["lif1"]["leak"]) == pytest.approx(0.99)


# ----------------------------------------------------------------------------------------- hybrid conversion


def test_activation_thresholds_are_percentiles_of_positive_preactivations(mlp, digits):
    """Recomputed with numpy: pre1 = W1 xn + b1, pre2 = W2 relu(pre1) + b2 (the ANN twin)."""
    x = np.concatenate([digits[0], np.random.default_rng(0).uniform(0, 1, (24, 28, 28, 1)).astype(np.float32)])
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), mlp.variables["params"])
    xn = ((x.astype(np.float64) - MNIST_MEAN) / MNIST_STD).reshape(len(x), -1)
    pre1 = xn @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    pre2 = np.maximum(pre1, 0) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    for pct in (50.0, 99.7, 100.0):
        thr = activation_thresholds(mlp, mlp.variables, x, percentile=pct, batch_size=7)   # uneven batches
        assert set(thr) == {"lif1", "lif2"}
        for name, pre in (("lif1", pre1), ("lif2", pre2)):
            assert thr[name] == pytest.approx(np.percentile(pre[pre > 0], pct), rel=1e-4), (name, pct)
    conv = convert(mlp, mlp.variables, x, percentile=99.7)
    thr = activation_thresholds(mlp, mlp.variables, x, percentile=99.7)
    for name in ("lif1", "lif2"):
        assert float(conv["batch_stats"][name]["threshold"]) == pytest.approx(thr[name])
        assert float(conv["batch_stats"][name]["leak"]) == float(mlp.variables["batch_stats"][name]["leak"])
    # weights are unchanged and the input variables are not modified
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), conv["params"], mlp.variables["params"]))
    assert float(mlp.variables["batch_stats"]["lif1"]["threshold"]) == 1.0
    with pytest.raises(ValueError, match="percentile"):
        activation_thresholds(mlp, mlp.variables, x, percentile=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        activation_thresholds(mlp, mlp.variables, x[:0])
    with pytest.raises(TypeError, match="SpikingModel"):
        activation_thresholds(models.create("mlp", hidden_sizes=(8,), key=jax.random.key(0)), mlp.variables, x)


def test_convert_writes_learned_thresholds_into_params(digits):
    model = create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(8,), neuron=LIF(learn_threshold=True))
    v = convert(model, model.variables, digits[0])
    thr = activation_thresholds(model, model.variables, digits[0])
    assert float(v["params"]["lif1"]["threshold"]) == pytest.approx(thr["lif1"])
    assert float(model.variables["params"]["lif1"]["threshold"]) == 1.0


# Measured (2-core CPU, `pytest -m slow tests/snn/test_models.py -k conversion`): 784-128-64-10 ANN twin, one
# epoch of 100 Adam steps (batch 64) on 6,400 mnist10k digits -> 92.5 % on 1,000 test digits; converted
# (99.7th percentile, 512 calibration digits) SNN at T = 32: 92.3 % (T = 16: 91.8 %, T = 64: 92.2 %); the same
# SNN with its initial thresholds (1.0; the ANN's activations reach ~8) saturates: 73.1 %.
@pytest.mark.slow
def test_conversion_of_a_trained_ann_twin_keeps_its_accuracy():
    full = data.load("mnist10k", split="train")
    ds = data.from_arrays(full.images[:6400], full.labels[:6400], num_classes=10, name="mnist10k-6400")
    x_test, y_test = data.as_arrays(data.load("mnist10k", split="test"), limit=1000)
    x_cal, _ = data.as_arrays(full, limit=512)
    snn = create("mlp", key=jax.random.key(0), timesteps=32, hidden_sizes=(128, 64))
    ann = twin(snn)
    state, _ = train.fit(ann, ds, optimizer={"name": "adam", "learning_rate": 1e-3}, epochs=1, batch_size=64,
                         key=jax.random.key(1), progress=False)
    trained = {"params": state.params, "batch_stats": snn.variables["batch_stats"]}

    def accuracy(model, variables):
        return float((jax.jit(model.apply_fn)(variables, x_test).argmax(-1) == y_test).mean())

    acc_ann = accuracy(ann, trained)
    converted = convert(snn, trained, x_cal, percentile=99.7)
    acc_snn = accuracy(snn, converted)
    acc_unconverted = accuracy(snn, trained)           # the same weights with the initial thresholds (1.0)
    assert acc_ann > 0.88, acc_ann
    assert acc_snn > acc_ann - 0.03, (acc_ann, acc_snn)
    assert acc_unconverted < acc_snn - 0.1, (acc_unconverted, acc_snn)    # conversion is what does it


# ----------------------------------------------------------------------------------------- errors


def test_bad_arguments(mlp, digits):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="did you mean 'mlp'"):
        create("mpl", key=key)
    with pytest.raises(ValueError, match="unknown spiking architecture"):
        create("resnet20", key=key)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="timesteps"):
            create("mlp", key=key, timesteps=bad)
    with pytest.raises(ValueError, match="timesteps"):
        create("mlp", key=key, timesteps=2.5)
    with pytest.raises(TypeError, match="timesteps"):
        create("mlp", key=key, timesteps="4")
    with pytest.raises(ValueError, match="conv9"):
        create("cnn_small", key=key, widths={"conv9": 3})
    with pytest.raises(ValueError, match="fc2"):
        create("cnn_small", key=key, widths={"fc2": 3})              # the readout's width is num_classes
    with pytest.raises(ValueError, match="conv1"):
        create("cnn_small", key=key, widths={"conv1": 0})
    with pytest.raises(TypeError, match="widths"):
        create("cnn_small", key=key, widths=[("conv1", 3)])
    with pytest.raises(TypeError, match="neuron"):
        create("mlp", key=key, neuron="lif")
    with pytest.raises(TypeError, match="encoder"):
        create("mlp", key=key, encoder="direct")
    with pytest.raises(TypeError, match="key"):
        create("mlp", key=0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        create("mlp", key=key, hidden_sizes=())
    with pytest.raises(ValueError, match=">= 4"):
        create("cnn_small", key=key, input_shape=(2, 2, 1))
    x, _ = digits
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        mlp.apply_fn(mlp.variables, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        mlp.apply_fn(mlp.variables, x[0])                            # a single image without batch axis
    with pytest.raises(TypeError, match="float"):
        mlp.apply_fn(mlp.variables, (x * 255).astype(np.uint8))
