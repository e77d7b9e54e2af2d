"""Crossbar ADC cost model: NeuroSim fits, column precision, crossbar mapping, relaxation, gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.hw._adc import (NEUROSIM_45NM_HP, NEUROSIM_65NM_HP, AdcTech, adc_energy, adc_latency, column_bits,
                            column_max_pmf, crossbar_adc_cost, weight_adc_cost)
from jaxrob.hw._workload import make_workload


def _neurosim_sar(b, tech, res=None):
    """NeuroSim's SarADC::GetColumnPower x latency, written out in its own (log10 R) form, in pJ."""
    p = (tech.sar_uw_per_bit * b + tech.sar_uw) * 1e-6
    if res is not None:
        p += tech.sar_g_w * math.exp(-tech.g_log10_slope * math.log10(res))
    return p * (b + 1) * 1e-9 * 1e12


def _neurosim_flash(b, tech, res=None):
    p = tech.flash_uw_per_comparator * (2 ** b - 1) * 1e-6
    if res is not None:
        p += tech.flash_g_w * math.exp(-tech.g_log10_slope * math.log10(res))
    return p * 1e-9 * 1e12


@pytest.mark.parametrize("tech", [NEUROSIM_65NM_HP, NEUROSIM_45NM_HP])
def test_adc_energy_matches_neurosim_formulas(tech):
    for b in range(1, 11):
        assert float(adc_energy(b, kind="sar", tech=tech)) == pytest.approx(_neurosim_sar(b, tech), rel=1e-5)
        assert float(adc_energy(b, kind="flash", tech=tech)) == pytest.approx(_neurosim_flash(b, tech), rel=1e-5)
        for res in (2e3, 5e4, 1e6):
            assert float(adc_energy(b, kind="sar", tech=tech, column_conductance=1 / res)) == pytest.approx(
                _neurosim_sar(b, tech, res), rel=1e-4)
            assert float(adc_energy(b, kind="flash", tech=tech, column_conductance=1 / res)) == pytest.approx(
                _neurosim_flash(b, tech, res), rel=1e-4)
    assert float(adc_latency(5, kind="sar")) == 6.0 and float(adc_latency(5, kind="flash")) == 1.0
    # 330 K: NeuroSim's 1 + 1.3e-3 (T - 300)
    assert float(adc_energy(4, temperature=330.0)) == pytest.approx(_neurosim_sar(4, NEUROSIM_65NM_HP) * 1.039,
                                                                    rel=1e-5)


def test_adc_energy_grows_with_precision_and_flash_overtakes_sar():
    b = jnp.arange(1, 13, dtype=jnp.float32)
    for kind in ("sar", "flash"):
        e = np.asarray(adc_energy(b, kind=kind))
        assert np.all(np.diff(e) > 0)
    sar, flash = np.asarray(adc_energy(b, kind="sar")), np.asarray(adc_energy(b, kind="flash"))
    assert flash[0] < sar[0] and flash[-1] > 10 * sar[-1]      # flash cheap at low precision, exponential later


def test_column_bits_exact_is_the_bit_length_of_the_column_range():
    n = np.arange(0, 300)
    for ib in (1, 2, 3):
        for cb in (1, 2):
            exact = np.asarray(column_bits(n, input_bits=ib, cell_bits=cb))
            want = [int(k * (2 ** ib - 1) * (2 ** cb - 1)).bit_length() for k in n]
            np.testing.assert_array_equal(exact, want)
            relaxed = np.asarray(column_bits(n.astype(np.float32), input_bits=ib, cell_bits=cb, relaxed=True))
            assert np.all(relaxed <= exact + 1e-5) and np.all(exact < relaxed + 1.0)
            rng = n * (2 ** ib - 1) * (2 ** cb - 1) + 1
            pow2 = (rng & (rng - 1)) == 0                            # relaxed == exact where range + 1 = 2**b
            np.testing.assert_allclose(relaxed[pow2], exact[pow2], atol=1e-5)
    assert float(column_bits(12.2)) == float(column_bits(13))     # a fractional count rounds up


def test_saturating_column_bits():
    n = np.arange(0, 300)
    for ib, cb in ((1, 1), (2, 1), (1, 3)):
        rng = n * (2 ** ib - 1) * (2 ** cb - 1)
        exact = np.asarray(column_bits(n, input_bits=ib, cell_bits=cb, saturate=True))
        np.testing.assert_array_equal(exact, [0 if r == 0 else max(int(r - 1).bit_length(), 1) for r in rng])
        relaxed = np.asarray(column_bits(n.astype(np.float32), input_bits=ib, cell_bits=cb, relaxed=True,
                                         saturate=True))
        assert np.all(relaxed <= exact + 1e-5) and np.all(exact < relaxed + 1.0)
        pow2 = (rng & (rng - 1)) == 0
        np.testing.assert_allclose(relaxed[pow2], exact[pow2], atol=1e-5)
    assert float(column_bits(64, saturate=True)) == 6.0 and float(column_bits(64)) == 7.0


def test_column_max_pmf_agrees_with_the_binomial_law():
    scipy_stats = pytest.importorskip("scipy.stats")
    for r, c, d in [(64, 64, 0.3), (64, 1, 0.5), (40, 7, 0.9), (128, 128, 0.05)]:
        p = np.asarray(column_max_pmf(128, r, c, d), np.float64)
        k = np.arange(129)
        want = np.diff(scipy_stats.binom.cdf(k, r, d) ** c, prepend=0.0)
        np.testing.assert_allclose(p, want, atol=2e-5)
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(column_max_pmf(8, 6, 3, 1.0), np.eye(9)[6])
    np.testing.assert_allclose(column_max_pmf(8, 6, 3, 0.0), np.eye(9)[0])


def _workload(**kw):
    base = dict(m=[50.0, 7.0, 300.0], k=[200.0, 64.0, 27.0], n=[10.0, 130.0, 16.0], groups=[1.0, 2.0, 1.0],
                count=[1.0, 1.0, 3.0], weight_bits=[1.0, 4.0, 8.0], act_bits=[1.0, 8.0, 4.0],
                weight_density=[1.0, 0.5, 0.25])
    base.update(kw)
    m = base.pop("m")
    return make_workload(m, base.pop("k"), base.pop("n"), **base)


def _brute_force_dense(wl, rows, cols, kind, input_bits, cell_bits):
    """Dense weights: loop over every crossbar of the grid (numpy + the per-conversion fit)."""
    table = np.asarray(adc_energy(jnp.arange(40.0), kind=kind))
    out = []
    for i in range(len(wl.m)):
        K, N = int(wl.k[i]), int(wl.n[i])
        ncols = N * math.ceil(float(wl.weight_bits[i]) / cell_bits)
        reads = float(wl.count[i] * wl.groups[i] * wl.m[i]) * math.ceil(float(wl.act_bits[i]) / input_bits)
        e = 0.0
        for r0 in range(0, K, rows):
            r = min(rows, K - r0)
            b = int(r * (2 ** input_bits - 1) * (2 ** cell_bits - 1)).bit_length()
            for c0 in range(0, ncols, cols):
                c = min(cols, ncols - c0)
                e += c * float(table[b])
        out.append(reads * e)
    return np.asarray(out)


def test_dense_cost_matches_a_crossbar_by_crossbar_count():
    wl = _workload(weight_density=1.0)
    for (rows, cols), ib, cb, kind in [((128, 8), 1, 1, "sar"), ((32, 16), 2, 3, "flash")]:
        want = _brute_force_dense(wl, rows, cols, kind, ib, cb)
        for sparsity in ("unstructured", "balanced"):
            got = crossbar_adc_cost(wl, crossbar=(rows, cols), kind=kind, sparsity=sparsity, input_bits=ib,
                                    cell_bits=cb)
            np.testing.assert_allclose(got.energy_pj, want, rtol=2e-5)


def test_zero_work_costs_zero_and_more_work_never_costs_less():
    wl = _workload()
    for field in ("m", "k", "n", "count", "groups"):
        zero = crossbar_adc_cost(wl._replace(**{field: jnp.zeros(3)}), crossbar=64)
        np.testing.assert_array_equal(zero.energy_pj, 0.0)
        np.testing.assert_array_equal(zero.conversions, 0.0)
        np.testing.assert_array_equal(zero.latency_ns, 0.0)
    np.testing.assert_array_equal(crossbar_adc_cost(wl._replace(weight_density=jnp.zeros(3)),
                                                    crossbar=64).energy_pj, 0.0)
    key = jax.random.key(0)
    for sparsity, kind in (("unstructured", "sar"), ("balanced", "flash")):
        base = crossbar_adc_cost(wl, crossbar=64, kind=kind, sparsity=sparsity)
        for field in ("m", "k", "n", "count", "groups", "weight_bits", "act_bits", "weight_density"):
            key, sub = jax.random.split(key)
            bump = getattr(wl, field) + jnp.where(field == "weight_density", 0.1,
                                                  jax.random.randint(sub, (3,), 1, 90).astype(jnp.float32))
            if field == "weight_density":
                bump = jnp.minimum(bump, 1.0)
            more = crossbar_adc_cost(wl._replace(**{field: bump}), crossbar=64, kind=kind,
                                     sparsity=sparsity)
            for a, b in zip(more[:3], base[:3]):          # energy, latency, conversions (not mean bits)
                assert np.all(np.asarray(a) >= np.asarray(b) * (1 - 1e-6) - 1e-6), (field, sparsity, kind)


def test_unstructured_sparsity_saves_little_balanced_saves_bits():
    """The D.U.B. point: at 50 % density the densest of 64 random columns stays near full precision."""
    wl = make_workload([1.0], [128.0], [64.0], weight_bits=1, act_bits=1, weight_density=0.5)
    dense = crossbar_adc_cost(wl._replace(weight_density=jnp.ones(1)), crossbar=128)
    unstructured = crossbar_adc_cost(wl, crossbar=128, sparsity="unstructured")
    balanced = crossbar_adc_cost(wl, crossbar=128, sparsity="balanced")
    assert float(dense.bits[0]) == 8.0 and float(balanced.bits[0]) == 7.0       # 64 non-zeros: 7 bits
    assert float(unstructured.bits[0]) == pytest.approx(7.0, abs=1e-3)          # max of 64 Bin(128, .5) in [65, 127]
    wl8 = wl._replace(weight_density=jnp.full(1, 1 / 8))
    assert float(crossbar_adc_cost(wl8, crossbar=128, sparsity="balanced").bits[0]) == 5.0
    assert float(crossbar_adc_cost(wl8, crossbar=128, sparsity="unstructured").bits[0]) > 5.0


@pytest.mark.slow
def test_unstructured_expectation_matches_random_masks():
    rows, cols, d = 64, 32, 0.2
    wl = make_workload([1.0], [150.0], [70.0], weight_bits=1, act_bits=1, weight_density=d)
    want = float(crossbar_adc_cost(wl, crossbar=(rows, cols)).energy_pj[0])
    keys = jax.random.split(jax.random.key(1), 200)
    sample = jax.vmap(lambda k: weight_adc_cost(jax.random.bernoulli(k, d, (150, 70)), crossbar=(rows, cols))[0])
    e = np.asarray(sample(keys))
    assert abs(e.mean() - want) < 4 * e.std() / np.sqrt(len(e)) + 1e-3 * want
    per_col = crossbar_adc_cost(wl, crossbar=(rows, cols), shared=False).energy_pj[0]
    sample_pc = jax.vmap(lambda k: weight_adc_cost(jax.random.bernoulli(k, d, (150, 70)), crossbar=(rows, cols),
                                                   shared=False)[0])
    e = np.asarray(sample_pc(keys))
    assert abs(e.mean() - float(per_col)) < 4 * e.std() / np.sqrt(len(e)) + 1e-3 * float(per_col)
    assert float(per_col) < want                       # per-column precision never needs more than the shared one


def test_weight_adc_cost_agrees_with_the_dub_report():
    from jaxrob.prune import crossbar_report, dub_masks

    w = jax.random.normal(jax.random.key(3), (200, 40))
    for s in (0.5, 0.8, 0.95):
        masks = dub_masks({"d": {"kernel": w}}, crossbar=(64, 16), sparsity=s)
        mask = masks["d"]["kernel"]
        rep = crossbar_report(masks, crossbar=(64, 16), adc_bits=6 + 1)     # adc_bits = log2(rows) + 1
        _, bits = weight_adc_cost(mask, crossbar=(64, 16))
        np.testing.assert_array_equal(np.asarray(bits).max(-1), rep.layers[0].adc_bits)
    # saturating ADCs are the report's ceil(log2 n) + adc_bits - log2(rows) with adc_bits = log2(rows), for n >= 2
    mask = jax.random.bernoulli(jax.random.key(4), 0.3, (200, 40))
    rep = crossbar_report({"d": {"kernel": mask}}, crossbar=(64, 16), adc_bits=6)
    _, bits = weight_adc_cost(mask, crossbar=(64, 16), saturate=True)
    assert rep.layers[0].crossbar_nonzeros.min() >= 2
    np.testing.assert_array_equal(np.asarray(bits).max(-1), rep.layers[0].adc_bits)


def test_relaxed_equals_exact_at_integer_bits_and_gradients_match_finite_differences():
    wl = _workload(weight_density=[0.3, 0.5, 0.7])
    for sparsity in ("unstructured", "balanced"):
        exact = crossbar_adc_cost(wl, crossbar=(64, 32), sparsity=sparsity)
        relaxed = crossbar_adc_cost(wl, crossbar=(64, 32), sparsity=sparsity, relaxed=True)
        if sparsity == "unstructured":
            for a, b in zip(exact, relaxed):
                np.testing.assert_allclose(a, b, rtol=1e-5)
        else:   # balanced: the bit-width relaxation is exact, the column-bit relaxation is a lower bound
            assert np.all(np.asarray(relaxed.bits) <= np.asarray(exact.bits) + 1e-5)

    def total(wb, ab, d, sparsity):
        w = wl._replace(weight_bits=wb, act_bits=ab, weight_density=d)
        return jnp.sum(crossbar_adc_cost(w, crossbar=(64, 32), sparsity=sparsity, relaxed=True).energy_pj)

    # one compile per sparsity model: the finite differences reuse the value of value_and_grad
    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)), static_argnums=3)
    wb = jnp.array([1.3, 3.6, 6.2])
    ab = jnp.array([2.4, 5.5, 3.3])
    d = jnp.array([0.35, 0.55, 0.62])
    for sparsity in ("unstructured", "balanced"):
        scale, grads = value_and_grad(wb, ab, d, sparsity)
        for i, x in enumerate((wb, ab, d)):
            for j in range(3):
                h = 1e-2 if i < 2 else 1e-3
                up, dn = [wb, ab, d], [wb, ab, d]
                up[i], dn[i] = x.at[j].add(h), x.at[j].add(-h)
                fd = (float(value_and_grad(*up, sparsity)[0]) - float(value_and_grad(*dn, sparsity)[0])) / (2 * h)
                assert float(grads[i][j]) == pytest.approx(fd, rel=2e-2, abs=1e-6 * float(scale)), (sparsity, i, j)


def test_jit_and_vmap_over_design_points():
    wl = _workload()
    f = lambda g: crossbar_adc_cost(wl, crossbar=64, column_conductance=g).energy_pj  # noqa: E731
    gs = jnp.array([0.0, 1e-5, 1e-4])
    batched = jax.jit(jax.vmap(f))(gs)
    for i, g in enumerate(gs):
        np.testing.assert_allclose(batched[i], f(g), rtol=1e-5)
    assert np.all(np.diff(np.asarray(batched), axis=0) > 0)          # more column current costs more
    dense = wl._replace(weight_density=jnp.ones(3))
    doubled = jax.tree.map(lambda x: 2 * x, dense)._replace(weight_density=jnp.ones(3))
    wls = jax.tree.map(lambda a, b: jnp.stack([a, b]), dense, doubled)
    two = jax.vmap(lambda w: crossbar_adc_cost(w, crossbar=64).energy_pj)(wls)
    np.testing.assert_allclose(two[0], crossbar_adc_cost(dense, crossbar=64).energy_pj, rtol=1e-5)
    np.testing.assert_allclose(two[1], crossbar_adc_cost(doubled, crossbar=64).energy_pj, rtol=1e-5)


def test_bad_inputs_raise():
    wl = _workload()
    with pytest.raises(ValueError, match="kind must be one of"):
        adc_energy(4, kind="pipeline")
    with pytest.raises(ValueError, match="bits must be finite and >= 0"):
        adc_energy(-1.0)
    with pytest.raises(TypeError, match="tech must be an AdcTech"):
        adc_energy(4, tech={"sar_uw": 1.0})
    with pytest.raises(ValueError, match="input_bits must be integers >= 1"):
        column_bits(3, input_bits=0)
    with pytest.raises(ValueError, match="sparsity must be one of"):
        crossbar_adc_cost(wl, sparsity="random")
    with pytest.raises(ValueError, match="crossbar rows must be >= 1"):
        crossbar_adc_cost(wl, crossbar=(0, 8))
    with pytest.raises(TypeError, match="crossbar must be an int"):
        crossbar_adc_cost(wl, crossbar="128")
    with pytest.raises(ValueError, match="weight_density must lie in"):
        crossbar_adc_cost(wl._replace(weight_density=jnp.full(3, 1.5)))
    with pytest.raises(ValueError, match="weight_bits must be >= 1"):
        crossbar_adc_cost(wl._replace(weight_bits=jnp.zeros(3)))
    with pytest.raises(TypeError, match="workload must be"):
        crossbar_adc_cost({"m": 1})
    with pytest.raises(ValueError, match="power of two"):
        weight_adc_cost(jnp.ones((10, 4)), crossbar=(48, 4))
    assert isinstance(NEUROSIM_65NM_HP, AdcTech)


def test_exact_integer_division_helpers():
    """XLA may turn ``a / b`` into ``a * (1/b)``: ``ceil(21/7)`` must still be 3 (regression)."""
    from jaxrob.hw._smooth import ceil_div, floor_div
    a = jnp.arange(1.0, 200.0)
    for b in (3.0, 7.0, 10.0, 49.0):
        want_c = np.ceil(np.arange(1, 200) / b)
        want_f = np.floor(np.arange(1, 200) / b)
        np.testing.assert_array_equal(np.asarray(jax.jit(ceil_div)(a, b)), want_c)
        np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(floor_div, (0, None)))(a, b)), want_f)
