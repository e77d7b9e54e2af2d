"""Pytree quantization: leaf selection, QAT and PTQ through the real training loop, foreign models, size in bits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data, models
from jaxrob.quant._binary import binary
from jaxrob.quant._tree import is_kernel, quantize_params, quantized_model, size_in_bits
from jaxrob.quant._uniform import fake_quant
from jaxrob.train import fit

FQ4 = functools.partial(fake_quant, bits=4, axis=-1)
FQ8 = functools.partial(fake_quant, bits=8, axis=-1)
FIT = dict(optimizer={"name": "adam", "learning_rate": 1e-2}, epochs=2, batch_size=50, seed=0, progress=False)


@pytest.fixture(scope="module")
def digits():
    full = data.load("mnist10k", split="train")
    ds = data.from_arrays(full.images[:400], full.labels[:400], num_classes=10, name="mnist10k-400")
    x = full.images[:400].astype(np.float32) / 255.0
    return ds, x, full.labels[:400]


def _mlp(seed=0):
    return models.create("mlp", hidden_sizes=(16,), key=jax.random.key(seed))


def test_quantize_params_selects_kernels_by_default_and_where():
    m = _mlp()
    q, q_head = jax.jit(lambda v: (quantize_params(v, FQ4),
                                   quantize_params(v["params"], binary, where=lambda p, leaf: p.startswith("head/")))
                        )(m.variables)
    for (kernel, bias), (k0, b0) in [((q["params"]["hidden"][0]["kernel"], q["params"]["hidden"][0]["bias"]),
                                      (m.params["hidden"][0]["kernel"], m.params["hidden"][0]["bias"])),
                                     ((q["params"]["head"]["kernel"], q["params"]["head"]["bias"]),
                                      (m.params["head"]["kernel"], m.params["head"]["bias"]))]:
        k = np.asarray(kernel)
        assert max(len(np.unique(k[:, j])) for j in range(k.shape[1])) <= 15      # 4-bit narrow range per column
        assert not np.array_equal(k, k0)
        np.testing.assert_array_equal(bias, b0)                                     # biases untouched
    assert is_kernel("hidden/0/kernel", None) and not is_kernel("hidden/0/bias", None)
    assert len(np.unique(np.asarray(q_head["head"]["kernel"]))) == 2
    assert len(np.unique(np.asarray(q_head["head"]["bias"]))) <= 2
    np.testing.assert_array_equal(q_head["hidden"][0]["kernel"], m.params["hidden"][0]["kernel"])


def test_qat_through_fit_and_ptq_through_apply_fn(digits):
    ds, x, y = digits
    m = _mlp()
    qm = quantized_model(m, FQ4)
    assert qm.name == m.name and qm.variables is m.variables
    # QAT: the real training loop on the quantized model; PTQ: the same loop on the float model, then quantize
    state, hist = fit(qm, ds, key=jax.random.key(1), **FIT)
    assert hist[-1]["loss"] < hist[0]["loss"]
    fstate, _ = fit(m, ds, key=jax.random.key(1), **FIT)
    v, fv = state.variables(), fstate.variables()

    def loss(apply_fn, p, xb):
        return jnp.mean(jax.nn.logsumexp(apply_fn({"params": p, "batch_stats": {}}, xb), axis=1))

    @jax.jit                                               # one compile for all the checks
    def evaluate(v, fv, x):
        ptq = quantize_params(v, FQ4)
        g_qat = jax.grad(functools.partial(loss, qm.apply_fn))(v["params"], x[:32])
        g_ref = jax.grad(functools.partial(loss, m.apply_fn))(ptq["params"], x[:32])
        return (qm.apply_fn(v, x), m.apply_fn(ptq, x), ptq, g_qat, g_ref,
                m.apply_fn(fv, x), m.apply_fn(quantize_params(fv, FQ8), x))

    lq, lptq, ptq, g_qat, g_ref, l32, l8 = evaluate(v, fv, x)
    np.testing.assert_array_equal(lq, lptq)               # apply_fn of the quantized model == PTQ of its weights
    acc_qat = float(np.mean(np.asarray(lq).argmax(1) == y))
    assert acc_qat > 0.6, acc_qat                          # trained (chance: 0.1)
    k = np.asarray(ptq["params"]["hidden"][0]["kernel"])
    assert max(len(np.unique(k[:, j])) for j in range(k.shape[1])) <= 15
    # QAT gradient = the float model's gradient at the quantized weights (STE inside the abs-max range)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_qat, g_ref)
    # PTQ of the float-trained model: 8 bits keeps its predictions; the report says 4x smaller kernels
    assert np.mean(np.asarray(l32).argmax(1) == np.asarray(l8).argmax(1)) >= 0.97
    rep = size_in_bits(fv["params"], 8)
    n_kernel = 784 * 16 + 16 * 10
    assert rep.total_bits == 8 * n_kernel + 32 * (16 + 10)
    assert rep.num_params == m.num_params()


def test_foreign_model():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((6, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    apply_fn = lambda p, x: x @ p["w"] + p["b"]
    with pytest.raises(ValueError, match="selects no leaf"):
        quantized_model((apply_fn, params), FQ4)
    qapply, p = quantized_model((apply_fn, params), FQ4, where=lambda path, leaf: path == "w")
    assert p is params
    x = rng.standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(qapply(p, x), x @ np.asarray(FQ4(params["w"])), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError):
        quantized_model(apply_fn, FQ4)
    with pytest.raises(TypeError):
        quantized_model((apply_fn, params), "fake_quant")


def test_size_in_bits_per_layer_mapping_and_errors():
    p = {"conv1": {"kernel": jnp.zeros((3, 3, 1, 8)), "bias": jnp.zeros(8)},
         "fc": {"kernel": jax.ShapeDtypeStruct((32, 10), jnp.float32), "bias": jnp.zeros(10)}}
    r = size_in_bits(p, {"conv1": 2, "fc/kernel": 4})
    assert r.layers["conv1/kernel"].bits == 2 and r.layers["fc/kernel"].bits == 4
    assert r.layers["conv1/bias"].bits == 32
    assert r.total_bits == 72 * 2 + 320 * 4 + 18 * 32
    assert r.float_bits_total == 32 * (72 + 8 + 320 + 10)
    assert r.compression == pytest.approx(r.float_bits_total / r.total_bits)
    assert "| **total** |" in r.table()
    with pytest.raises(ValueError, match="no entry"):
        size_in_bits(p, {"conv1": 2})
    with pytest.raises(ValueError):
        size_in_bits(p, 0)
    with pytest.raises(TypeError):
        size_in_bits(p, 4, where="kernel")
