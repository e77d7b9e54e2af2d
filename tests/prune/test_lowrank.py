"""Tests of the utilized-rank projection (Garg et al., arXiv 2407.04797)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxrob import data, models, train
from jaxrob.prune._lowrank import (LayerStats, LayerSubspace, compression, factorize, find_layers, fit_subspaces,
                                   input_stats, layer_inputs, mean_layer_utilization, project, projected_model,
                                   subspaces, utilization)

DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, k, **kw):
    return lax.conv_general_dilated(x, k, dimension_numbers=lax.conv_dimension_numbers(x.shape, k.shape, DN),
                                    precision=lax.Precision.HIGHEST, **kw)


def _foreign_apply(p, x):
    """A hand-written model: strided dilated conv, then a PyTorch-style (out, in) dense layer inside a jit."""
    h = jax.nn.relu(_conv(x, p["conv"], window_strides=(2, 1), padding=((1, 1), (0, 2)), rhs_dilation=(1, 2))
                    + p["cb"])
    h = h.reshape(h.shape[0], -1)

    @jax.jit
    def torch_linear(w, b, z):  # y = z W^T + b with W of shape (out, in)
        return lax.dot_general(z, w, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST) + b

    return torch_linear(p["w"], p["b"], h)


RNG = np.random.default_rng(0)
_F32 = np.float32


def _normal(*shape):
    return RNG.standard_normal(shape).astype(_F32)


def _foreign():
    rng = np.random.default_rng(1)
    p = {"conv": (rng.standard_normal((3, 2, 2, 4)) * 0.3).astype(_F32), "cb": np.full((4,), 0.1, _F32),
         "w": (rng.standard_normal((5, 4 * 4 * 6)) * 0.1).astype(_F32), "b": np.arange(5.0, dtype=_F32)}
    return p, rng.uniform(size=(6, 7, 6, 2)).astype(_F32)


@pytest.fixture(scope="module")
def mlp():
    net = models.create("mlp", hidden_sizes=(12,), input_shape=(4, 4, 1), num_classes=3, key=jax.random.key(0))
    return net, np.random.default_rng(2).uniform(size=(40, 4, 4, 1)).astype(_F32)


def test_layers_found_generically_and_inputs_reproduce_each_layer():
    p, x = _foreign()
    specs = find_layers(_foreign_apply, p, x)
    assert list(specs) == ["conv", "w"]
    assert (specs["conv"].kind, specs["conv"].d_in, specs["conv"].d_out) == ("conv", 3 * 2 * 2, 4)
    assert (specs["w"].kind, specs["w"].perm, specs["w"].d_in, specs["w"].d_out) == ("dense", (1, 0), 96, 5)
    xs = layer_inputs(_foreign_apply, p, x)
    conv_out = _conv(x, p["conv"], window_strides=(2, 1), padding=((1, 1), (0, 2)), rhs_dilation=(1, 2))
    np.testing.assert_allclose(xs["conv"] @ specs["conv"].to_matrix(p["conv"]), conv_out.reshape(-1, 4),
                               rtol=1e-5, atol=1e-5)
    h = jax.nn.relu(conv_out + p["cb"]).reshape(6, -1)
    np.testing.assert_allclose(xs["w"], h, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(specs["w"].from_matrix(specs["w"].to_matrix(p["w"])), p["w"])
    jitted = jax.jit(lambda p, x: layer_inputs(_foreign_apply, p, x))(p, x)
    for name in xs:
        np.testing.assert_allclose(jitted[name], xs[name], rtol=1e-6, atol=1e-6)


def test_full_energy_preserves_the_model_on_its_data(mlp):
    net, x = mlp
    for model, inputs in ((net.apply_fn, x), (_foreign_apply, _foreign()[1])):
        params = net.variables if model is net.apply_fn else _foreign()[0]
        subs = fit_subspaces(model, params, inputs, energy=1.0)
        assert all(int(s.k_in) == s.spec.d_in for s in subs.values())
        np.testing.assert_allclose(model(project(params, subs), inputs), model(params, inputs), rtol=1e-5, atol=1e-5)


def _rank_r_layer(d=12, m=9, r=4, n=50):
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0].astype(_F32)  # (d, r) orthonormal data subspace
    x = (rng.standard_normal((n, r)) @ basis.T).astype(_F32)
    w = rng.standard_normal((d, m)).astype(_F32)
    return _dense_apply, {"w": w, "b": np.ones(m, _F32)}, x, basis


def _dense_apply(p, x):
    return x @ p["w"] + p["b"]


def test_rank_r_data_compresses_to_rank_r_without_changing_outputs():
    apply, p, x, _ = _rank_r_layer()
    sub = fit_subspaces(apply, p, x, energy=1 - 1e-4)["w"]
    assert (int(sub.k_in), int(sub.k_out), int(sub.rank)) == (4, 4, 4)
    assert float(sub.utilization) == pytest.approx(4 / 9)
    projected = project(p, {"w": sub})
    np.testing.assert_allclose(apply(projected, x), apply(p, x), rtol=1e-4, atol=1e-4)
    assert np.linalg.matrix_rank(np.asarray(projected["w"]), tol=1e-4) == 4
    assert not np.allclose(projected["w"], p["w"], atol=1e-2)  # the weight did change, off the data
    f = factorize(p, {"w": sub})["w"]
    assert f.first.shape == (12, 4) and f.second.shape == (4, 9)
    np.testing.assert_allclose(f.first @ f.second, projected["w"], rtol=1e-4, atol=1e-4)
    c = compression(p, {"w": sub})
    assert c["layers"]["w"]["params_after"] == 4 * (12 + 9) and c["layers"]["w"]["factorised"]
    assert c["params_before"] == 12 * 9 + 9 and c["params_after"] == 4 * 21 + 9


def test_closed_form_utilizations():
    apply, p, x, basis = _rank_r_layer(d=6, m=4, r=4)
    core = _normal(4, 4)
    inside = {"w": basis @ core, "b": p["b"]}  # columns in the data subspace: all 4 output directions used
    assert float(fit_subspaces(apply, inside, x, energy=1 - 1e-4)["w"].utilization) == pytest.approx(1.0)
    _, _, x3, basis3 = _rank_r_layer(d=6, m=4, r=3)
    ortho = np.linalg.qr(np.concatenate([basis3, _normal(6, 3)], 1))[0][:, 3:].astype(_F32)
    outside = {"w": ortho @ _normal(3, 4), "b": p["b"]}  # the data never reach these weights
    sub = fit_subspaces(apply, outside, x3, energy=0.99)["w"]
    assert (int(sub.k_in), int(sub.k_out), float(sub.utilization)) == (3, 0, 0.0)
    np.testing.assert_allclose(project(outside, {"w": sub})["w"], 0.0, atol=1e-5)


def test_projectors_energy_monotone_and_jit_agreement(mlp):
    net, x = mlp
    stats = input_stats(net.apply_fn, net.variables, x, batch_size=15)  # 15, 15, 10: summed over batches
    whole = input_stats(net.apply_fn, net.variables, x)
    for name in stats:
        np.testing.assert_allclose(stats[name].gram, whole[name].gram, rtol=1e-4, atol=1e-3)
    ks = []
    for e in (0.5, 0.9, 0.99, 0.999):
        subs = subspaces(net.variables, stats, energy=e)
        ks.append([int(s.k_in) for s in subs.values()])
        for s in subs.values():
            p = np.asarray(s.p_in)
            np.testing.assert_allclose(p @ p, p, atol=1e-5)
            np.testing.assert_allclose(p, p.T, atol=1e-6)
            assert np.trace(p) == pytest.approx(int(s.k_in), abs=1e-3)
            assert 0.0 <= float(s.utilization) <= 1.0
            assert int(s.rank) == min(int(s.k_in), int(s.k_out))
        u = utilization(subs)
        assert float(mean_layer_utilization(subs)) == pytest.approx(np.mean([float(v) for v in u.values()]))
    assert np.all(np.diff(np.array(ks), axis=0) >= 0)
    eager = subspaces(net.variables, stats, energy=0.9)
    jitted = jax.jit(lambda v, s, e: subspaces(v, s, energy=e))(net.variables, stats, jnp.float32(0.9))
    for name in eager:
        assert int(jitted[name].rank) == int(eager[name].rank)
        np.testing.assert_allclose(jitted[name].p_in, eager[name].p_in, atol=1e-5)
    pj = jax.jit(project)(net.variables, eager)
    pe = project(net.variables, eager)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), pj, pe)


def test_conv_factors_and_counts(mlp):
    p, x = _foreign()
    subs = fit_subspaces(_foreign_apply, p, x, energy=0.95)
    projected = project(p, subs)
    factors = factorize(p, subs)
    for name, sub in subs.items():
        spec, r, f = sub.spec, int(sub.rank), factors[name]
        np.testing.assert_allclose(f.first @ f.second, spec.to_matrix(projected[name]), atol=1e-4)
    # The convolution becomes a 3x2 convolution to r channels followed by a 1x1 convolution.
    r, f = int(subs["conv"].rank), factors["conv"]
    assert f.first_kernel.shape == (3, 2, 2, r)
    z = _normal(2, 5, 5, 2)
    two = _conv(_conv(z, f.first_kernel, window_strides=(1, 1), padding="SAME"), f.second.reshape(1, 1, r, 4),
                window_strides=(1, 1), padding="SAME")
    np.testing.assert_allclose(two, _conv(z, projected["conv"], window_strides=(1, 1), padding="SAME"), atol=1e-4)
    net, xm = mlp
    msubs = fit_subspaces(net.apply_fn, net.variables, xm, energy=0.9)
    c = compression(net.variables["params"], msubs)
    expect = net.num_params() - sum(l["params_before"] - min(l["params_before"], l["rank"] * (l["d_in"] + l["d_out"]))
                                    for l in c["layers"].values())
    assert c["params_before"] == net.num_params() and c["params_after"] == expect < net.num_params()
    assert c["ratio"] == pytest.approx(expect / net.num_params())


def test_fine_tuning_stays_in_the_subspaces(mlp):
    net, x = mlp
    subs = fit_subspaces(net.apply_fn, net.variables, x, energy=0.9)
    ft = projected_model(net, subs)
    np.testing.assert_allclose(ft.apply_fn(net.variables, x), net.apply_fn(project(net.variables, subs), x),
                               rtol=1e-6)
    ds = data.from_arrays(np.asarray(x * 255, np.uint8), np.arange(40) % 3, num_classes=3, name="toy", split="train")
    state, _ = train.fit(ft, ds, optimizer={"name": "adam", "learning_rate": 1e-2}, epochs=2, batch_size=20,
                         key=jax.random.key(2), progress=False)
    tuned = project(state.variables(), subs)
    leaves = {jax.tree_util.keystr(k, simple=True, separator="/"): v
              for k, v in jax.tree_util.tree_flatten_with_path(tuned)[0]}
    for name, sub in subs.items():
        leaf = leaves[name]
        assert np.linalg.matrix_rank(np.asarray(leaf), tol=1e-4) <= int(sub.rank)
    assert not np.allclose(tuned["params"]["head"]["kernel"], project(net.variables, subs)["params"]["head"]["kernel"])
    apply, p, xr, _ = _rank_r_layer()
    foreign_fn, foreign_p = projected_model((apply, p), fit_subspaces(apply, p, xr, energy=0.9))
    assert foreign_fn(foreign_p, xr).shape == (50, 9)


def test_errors(mlp):
    net, x = mlp
    subs = fit_subspaces(net.apply_fn, net.variables, x, energy=0.9)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="energy must be"):
            fit_subspaces(net.apply_fn, net.variables, x, energy=bad)
    with pytest.raises(TypeError, match="energy must be a number"):
        fit_subspaces(net.apply_fn, net.variables, x, energy="all")
    with pytest.raises(ValueError, match="out_energy must be"):
        fit_subspaces(net.apply_fn, net.variables, x, energy=0.9, out_energy=2.0)
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        find_layers("mlp", net.variables, x)
    with pytest.raises(ValueError, match="found no dense"):
        find_layers(lambda p, x: x * p["a"], {"a": jnp.ones(())}, x)
    with pytest.raises(ValueError, match="leading batch axis"):
        find_layers(net.apply_fn, net.variables, jnp.zeros(()))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        input_stats(net.apply_fn, net.variables, x, batch_size=0)
    with pytest.raises(ValueError, match="has no leaves"):
        project(net.variables["params"], subs)  # fitted on variables: names start with params/
    with pytest.raises(TypeError, match="LayerSubspace"):
        project(net.variables, {"a": 1})
    with pytest.raises(TypeError, match="LayerStats"):
        subspaces(net.variables, {})
    wrong = jax.tree.map(lambda a: a, net.variables)
    wrong["params"]["head"]["kernel"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match="fitted for shape"):
        project(wrong, subs)
    with pytest.raises(TypeError, match="concrete ranks"):
        jax.jit(factorize)(net.variables, subs)
    with pytest.raises(TypeError, match="jaxrob.models.Model or a tuple"):
        projected_model(object(), subs)
    assert isinstance(next(iter(subs.values())), LayerSubspace)
    assert isinstance(next(iter(input_stats(net.apply_fn, net.variables, x).values())), LayerStats)
    assert dataclasses.is_dataclass(next(iter(subs.values())).spec)
