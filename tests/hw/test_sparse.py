"""Zero-skipping accelerator, measured operand densities, sparse formats, SparCE, SNN energy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.hw._sparse import (FORMATS, SparceLoop, ZeroSkipTech, conv_input_elems, expected_format_bits, format_bits,
                               operand_densities, snn_energy, snn_workload_energy, soft_density, sparce_runtime,
                               sparce_skip_fraction, zero_skip_cost)
from jaxrob.hw._workload import LayerInfo, extract, make_workload


def _wl(**kw):
    base = dict(groups=[1.0, 4.0], count=[1.0, 2.0], weight_density=[0.5, 0.25], act_density=[1.0, 0.4])
    base.update(kw)
    return make_workload([10.0, 20.0], [9.0, 27.0], [4.0, 1.0], **base)


# ---------------------------------------------------------------------------------------------- zero skipping

def test_zero_skip_energy_by_hand():
    c = zero_skip_cost(_wl())
    # layer 0: 18 nz weights + 90 inputs + 40 outputs; 360 MACs * .5 * 1
    # layer 1: 8 * 27 * .25 = 54 weights, 8 * 20 * 27 * .4 = 1728 inputs, 8 * 20 = 160 outputs; 4320 * .25 * .4
    np.testing.assert_allclose(c.dram_elems, [148.0, 1942.0])
    np.testing.assert_allclose(c.effective_macs, [180.0, 432.0])
    np.testing.assert_allclose(c.energy_pj, 1950.0 * np.array([148.0, 1942.0]) + 3.7 * np.array([180.0, 432.0]),
                               rtol=1e-6)
    np.testing.assert_allclose(c.cycles, np.array([180.0, 432.0]) / 256 + np.array([148.0, 1942.0]) / 8, rtol=1e-6)
    cheap = zero_skip_cost(_wl(), tech=ZeroSkipTech(e_dram_pj=0.0))
    np.testing.assert_allclose(cheap.energy_pj, 3.7 * np.array([180.0, 432.0]), rtol=1e-6)
    half_out = zero_skip_cost(_wl(), output_density=0.5)
    np.testing.assert_allclose(c.dram_elems - half_out.dram_elems, [20.0, 80.0])


def test_zero_skip_zero_work_monotone_and_linear_in_density():
    wl = _wl()
    for field in ("m", "k", "n", "count", "groups"):
        z = zero_skip_cost(wl._replace(**{field: jnp.zeros(2)}))
        np.testing.assert_array_equal(z.energy_pj, 0.0)
        np.testing.assert_array_equal(z.cycles, 0.0)
        more = zero_skip_cost(wl._replace(**{field: getattr(wl, field) + 3.0}))
        base = zero_skip_cost(wl)
        assert np.all(np.asarray(more.energy_pj) > np.asarray(base.energy_pj))
        assert np.all(np.asarray(more.cycles) > np.asarray(base.cycles))
    z = zero_skip_cost(wl._replace(weight_density=jnp.zeros(2), act_density=jnp.zeros(2)), output_density=0.0)
    np.testing.assert_array_equal(z.energy_pj, 0.0)

    def total(dw, da):
        return jnp.sum(zero_skip_cost(wl._replace(weight_density=dw, act_density=da)).energy_pj)

    dw, da = jnp.array([0.3, 0.6]), jnp.array([0.7, 0.2])
    gw, ga = jax.grad(total, argnums=(0, 1))(dw, da)
    for j in range(2):
        h = 1e-2
        fd_w = (float(total(dw.at[j].add(h), da)) - float(total(dw.at[j].add(-h), da))) / (2 * h)
        fd_a = (float(total(dw, da.at[j].add(h))) - float(total(dw, da.at[j].add(-h)))) / (2 * h)
        assert float(gw[j]) == pytest.approx(fd_w, rel=1e-2) and float(ga[j]) == pytest.approx(fd_a, rel=1e-2)


def test_conv_input_elems_uses_the_feature_map_not_im2col():
    # 3x3 conv, stride 1, padded 34x34 input, 16 channels, batch 2 -> Ho = Wo = 32, M = 2 * 1024
    wl = make_workload([2 * 1024.0, 5.0], [144.0, 64.0], [32.0, 10.0])
    infos = [LayerInfo("conv", "conv", (34, 34), (3, 3), 16, 1), LayerInfo("fc", "dense")]
    np.testing.assert_allclose(conv_input_elems(wl, infos), [2 * 34 * 34 * 16, 5 * 64])
    c = zero_skip_cost(wl, input_elems=conv_input_elems(wl, infos))
    assert float(c.dram_elems[0]) == 144 * 32 + 2 * 34 * 34 * 16 + 2048 * 32
    with pytest.raises(ValueError, match="infos has 1 entries"):
        conv_input_elems(wl, infos[:1])


def test_soft_density_tends_to_the_l0_density():
    x = jax.random.normal(jax.random.key(0), (1000,)) * (jax.random.uniform(jax.random.key(1), (1000,)) < 0.3)
    exact = float(jnp.mean(x != 0))
    assert float(soft_density(x, sigma=1e-10)) == pytest.approx(exact, abs=1e-3)
    assert float(soft_density(x, sigma=1.0)) < exact
    g = jax.grad(lambda y: soft_density(y, sigma=1e-2))(x)
    assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------------------------- densities

def test_operand_densities_of_a_foreign_function_through_jit_and_custom_jvp():
    def f(p, x):
        h = x @ p["w1"]
        return jax.jit(lambda h: jax.nn.relu(h) @ p["w2"])(h)

    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"w1": jax.random.normal(k1, (8, 16)), "w2": jnp.zeros((16, 3)).at[::2].set(1.0)}
    x = jax.random.normal(k2, (32, 8))
    d = operand_densities(f, p, x)
    assert d.kinds == ("dense", "dense")
    want = float(jnp.mean(jax.nn.relu(x @ p["w1"]) != 0))
    np.testing.assert_allclose(d.act_density, [1.0, want], rtol=1e-6)
    np.testing.assert_allclose(d.weight_density, [1.0, 0.5])
    assert d.shapes[1] == ((32, 16), (16, 3))


def test_operand_densities_follow_extract_through_scan_weight_left_and_matmul():
    def f(p, x):
        h, _ = jax.lax.scan(lambda h, w: (jax.nn.relu(h @ w), None), x, p["ws"])   # 3 layers in a scan
        y = (p["v"] @ h.T).T                                                     # weight on the left
        att = y @ y.T                                                            # both operands from x
        return att, p["ws"][0] @ p["ws"][1]                                      # weight-only: not a layer

    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    p = {"ws": jax.random.normal(k1, (3, 8, 8)), "v": jax.random.normal(k2, (5, 8)).at[0].set(0.0)}
    x = jax.random.normal(k3, (6, 8))
    d = operand_densities(f, p, x)
    wl, infos = extract(f, p, x)
    assert d.kinds == tuple(i.kind for i in infos) == ("dense", "dense", "matmul")
    h = x
    acts = []
    for t in range(3):
        acts.append(float(jnp.mean(h != 0)))
        h = jax.nn.relu(h @ p["ws"][t])
    assert float(d.act_density[0]) == pytest.approx(np.mean(acts), rel=1e-6)   # averaged over the scan
    assert float(d.act_density[1]) == pytest.approx(float(jnp.mean(h != 0)), rel=1e-6)
    assert float(d.weight_density[1]) == pytest.approx(0.8)                    # v's zero row
    assert d.shapes[1] == ((8, 6), (5, 8))


def test_operand_densities_of_a_jaxrob_model_and_its_pruned_kernel():
    from jaxrob import models
    from jaxrob.prune import apply_masks, magnitude_masks

    net = models.create("cnn_small", key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    d = operand_densities(net.apply_fn, net.variables, x)
    assert d.kinds == ("conv", "conv", "dense", "dense")
    wl, infos = extract(net.apply_fn, net.variables, x)
    assert d.kinds == tuple(i.kind for i in infos)                              # extract's layer list
    np.testing.assert_allclose(d.weight_density, 1.0)
    assert np.all(d.act_density[1:] < 1.0) and np.all(d.act_density > 0.0)   # after ReLU
    params = apply_masks(net.params, magnitude_masks(net.params, sparsity=0.75))
    d2 = operand_densities(net.apply_fn, {**net.variables, "params": params}, x)
    np.testing.assert_allclose(d2.weight_density, 0.25, atol=2e-3)
    wl = wl._replace(act_density=jnp.asarray(d2.act_density), weight_density=jnp.asarray(d2.weight_density))
    dense_cost = zero_skip_cost(wl._replace(act_density=jnp.ones(4), weight_density=jnp.ones(4)))
    sparse_cost = zero_skip_cost(wl)                      # measured activation and weight sparsity
    assert np.all(np.asarray(sparse_cost.energy_pj) < np.asarray(dense_cost.energy_pj))
    np.testing.assert_allclose(sparse_cost.effective_macs, wl.macs * d2.act_density * d2.weight_density, rtol=1e-5)
    assert 0 < float(sparce_runtime(wl)[1]) < 3 / 7
    batched = jax.jit(jax.vmap(lambda s: zero_skip_cost(wl._replace(act_density=s * wl.act_density)).energy_pj))(
        jnp.array([0.5, 1.0]))
    np.testing.assert_allclose(batched[1], sparse_cost.energy_pj, rtol=1e-6)
    assert np.all(np.asarray(batched[0]) < np.asarray(batched[1]))


# ---------------------------------------------------------------------------------------------- formats

def test_format_bits_on_hand_made_matrices():
    w = np.array([[0, 3, 0],
                  [0, 0, 0],
                  [5, 0, 0],
                  [0, 0, 0],
                  [0, 0, 0],
                  [0, 0, 0],
                  [0, 0, 0],
                  [0, 7, 0]])          # R = 8, C = 3, nnz = 3
    v = 8
    assert format_bits(w, "dense", value_bits=v) == 8 * 3 * 8
    assert format_bits(w, "bitmap", value_bits=v) == 24 + 3 * 8
    assert format_bits(w, "coo", value_bits=v) == 3 * (8 + 3 + 2)
    assert format_bits(w, "csr", value_bits=v) == 3 * (8 + 2) + 9 * 5          # pointers: ceil(log2 25) = 5
    assert format_bits(w, "csc", value_bits=v) == 3 * (8 + 3) + 4 * 5
    # column-major runs (run_bits 1: a run field holds 0 or 1 zero; a pad entry (1, 0) covers 2 positions):
    # col 0: 2 zeros -> 1 pad + 1; col 1: 0 zeros -> 1, then 6 zeros -> 3 pads + 1; col 2: nothing
    assert format_bits(w, "rle", value_bits=v, run_bits=1) == (2 + 1 + 4) * (1 + 8)
    assert format_bits(w, "rle", value_bits=v, run_bits=3) == 3 * (3 + 8)
    assert format_bits(w, "nm", value_bits=v, n=1, m=4) == 3 * 2 * 1 * (8 + 2)
    assert format_bits(w, "nm", value_bits=v, n=2, m=8) == 3 * 1 * 2 * (8 + 3)
    with pytest.raises(ValueError, match="not 1:2 along columns"):
        format_bits(np.ones((4, 1)), "nm", n=1, m=2)
    z = np.zeros((8, 3))
    assert format_bits(z, "coo") == 0 and format_bits(z, "rle") == 0 and format_bits(z, "bitmap") == 24


def test_expected_format_bits_is_the_mean_over_random_matrices():
    R, C, d = 64, 48, 0.15
    rng = np.random.default_rng(0)
    mats = [(rng.random((R, C)) < d) * rng.integers(1, 9, (R, C)) for _ in range(60)]
    for fmt in ("dense", "bitmap", "coo", "csr", "csc", "rle"):
        for rb in (2, 4):
            got = np.mean([format_bits(m, fmt, run_bits=rb) for m in mats])
            want = float(expected_format_bits((R, C), d, fmt, run_bits=rb))
            assert want == pytest.approx(got, rel=0.03), (fmt, rb)
    nm_mat = np.zeros((R, C))
    nm_mat[::4] = 1.0                                                      # 1:4 along columns
    assert format_bits(nm_mat, "nm", n=1, m=4) == float(expected_format_bits((R, C), 0.25, "nm", n=1, m=4))
    g = jax.grad(lambda dd: expected_format_bits((R, C), dd, "rle"))(0.3)
    h = 1e-3
    fd = (float(expected_format_bits((R, C), 0.3 + h, "rle")) - float(expected_format_bits((R, C), 0.3 - h, "rle")))
    assert float(g) == pytest.approx(fd / (2 * h), rel=1e-2)


def test_expected_format_bits_grow_with_density_and_cross_dense():
    d = jnp.linspace(0.0, 1.0, 21)
    for fmt in FORMATS[1:-1]:
        b = np.asarray(expected_format_bits((128, 128), d, fmt))
        assert np.all(np.diff(b) >= -1e-3), fmt
        assert b[0] <= 128 * 128 * 8 < b[-1] or fmt == "bitmap"
    assert float(expected_format_bits((128, 128), 0.0, "coo")) == 0.0


# ---------------------------------------------------------------------------------------------- SparCE

def test_sparce_skip_fraction():
    assert float(sparce_skip_fraction(1.0, 1.0)) == 0.0
    assert float(sparce_skip_fraction(1.0, 0.0)) == pytest.approx(3 / 7)
    assert float(sparce_skip_fraction(0.0, 1.0)) == pytest.approx(2 / 7)
    assert float(sparce_skip_fraction(0.0, 1.0, loop=SparceLoop(first="weight"))) == pytest.approx(3 / 7)
    assert float(sparce_skip_fraction(0.5, 0.4)) == pytest.approx((0.6 * 3 + 0.4 * 0.5 * 2) / 7)
    d = jnp.linspace(0, 1, 11)
    f = np.asarray(sparce_skip_fraction(d[:, None], d[None, :]))
    assert np.all(np.diff(f, axis=0) <= 1e-7) and np.all(np.diff(f, axis=1) <= 1e-7)   # denser -> fewer skips
    wl = _wl()
    per, net = sparce_runtime(wl, kernel_fraction=0.8)
    macs = np.asarray(wl.macs)
    assert float(net) == pytest.approx(0.8 * float(np.sum(np.asarray(per) * macs) / macs.sum()), rel=1e-6)
    _, zero = sparce_runtime(wl._replace(m=jnp.zeros(2)))
    assert float(zero) == 0.0


# ---------------------------------------------------------------------------------------------- SNN

def test_snn_workload_energy_in_pj():
    from jaxrob.snn._energy import E_AC_45NM_PJ, E_MAC_45NM_PJ

    wl = make_workload([100.0, 10.0], [9.0, 50.0], [8.0, 10.0])
    e = snn_workload_energy(wl, rate=jnp.array([1.0, 0.1]), timesteps=5, analog_input=jnp.array([True, False]))
    np.testing.assert_allclose(e, [E_MAC_45NM_PJ * 7200 * 5, E_AC_45NM_PJ * 0.1 * 5 * 5000], rtol=1e-6)
    np.testing.assert_array_equal(snn_workload_energy(wl, rate=0.0, timesteps=4), 0.0)
    more = snn_workload_energy(wl._replace(m=wl.m * 2), rate=0.2, timesteps=4)
    assert np.all(np.asarray(more) > np.asarray(snn_workload_energy(wl, rate=0.2, timesteps=4)))


@pytest.mark.slow
def test_snn_energy_is_the_snn_module_energy():
    from jaxrob import snn

    net = snn.create("mlp", key=jax.random.key(0), timesteps=2)
    _, stats = net.simulate(net.variables, jnp.ones((1, 28, 28, 1)) * 0.5)
    a, b = snn_energy(net, stats), snn.energy(net, stats)
    np.testing.assert_allclose(a["total"], b["total"])


# ---------------------------------------------------------------------------------------------- errors

def test_bad_inputs_raise():
    wl = _wl()
    with pytest.raises(ValueError, match="act_density must lie in"):
        zero_skip_cost(wl._replace(act_density=jnp.full(2, 1.2)))
    with pytest.raises(ValueError, match="workload.m must be finite and >= 0"):
        zero_skip_cost(wl._replace(m=-wl.m))
    with pytest.raises(TypeError, match="workload must be"):
        zero_skip_cost((1, 2))
    with pytest.raises(ValueError, match="input_elems must have shape"):
        zero_skip_cost(wl, input_elems=jnp.ones(3))
    with pytest.raises(ValueError, match="fmt must be one of"):
        format_bits(np.eye(2), "ell")
    with pytest.raises(ValueError, match="2-D"):
        format_bits(np.ones(4), "coo")
    with pytest.raises(ValueError, match="needs n and m"):
        format_bits(np.eye(4), "nm")
    with pytest.raises(ValueError, match="exceeds 1:4"):
        expected_format_bits((8, 8), 0.5, "nm", n=1, m=4)
    with pytest.raises(ValueError, match="density must lie in"):
        expected_format_bits((8, 8), -0.1, "coo")
    with pytest.raises(ValueError, match="loop.first must be one of"):
        sparce_skip_fraction(0.5, 0.5, loop=SparceLoop(first="both"))
    with pytest.raises(ValueError, match="timesteps must be >= 1"):
        snn_workload_energy(wl, rate=0.1, timesteps=0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        soft_density(jnp.ones(3), sigma=0.0)
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        operand_densities(3, {}, jnp.ones(2))
