"""Tests of the single systolic-array cost model (jaxrob.hw._systolic)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.hw._systolic import DATAFLOWS, SystolicCost, SystolicEnergy, systolic_cost
from jaxrob.hw._workload import make_workload

FIELDS = [f for f in SystolicCost._fields if f not in ("utilization", "pes")]


def _hand_cycles(m, k, n, r, c, df):
    """SCALE-Sim's per-fold demand length times the fold count, written out independently."""
    if df == "os":
        return -(-m // r) * -(-n // c) * (k + r + c - 2)
    if df == "ws":
        return -(-k // r) * -(-n // c) * (2 * r + c + m - 2)
    return -(-k // r) * -(-m // c) * (2 * r + c + n - 2)


def _random_layers(seed, num=12):
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 300, num), rng.integers(1, 300, num), rng.integers(1, 300, num))


# ---------------------------------------------------------------- closed forms by hand


def test_hand_counted_small_gemm():
    """M=16, K=8, N=4 on a 4x4 array, counted by hand for each dataflow."""
    w = make_workload(m=[16], k=[8], n=[4])
    big = dict(ifmap_buffer=1e6, filter_buffer=1e6, ofmap_buffer=1e6)
    os_ = systolic_cost(w, 4, 4, dataflow="os", **big)
    ws = systolic_cost(w, 4, 4, dataflow="ws", **big)
    is_ = systolic_cost(w, 4, 4, dataflow="is", **big)
    # OS: 4 row folds x 1 col fold, each 8 MACs deep + 3 + 3 skew -> 4 * 14.
    assert float(os_.cycles[0]) == 56
    # WS: K=8 over 4 rows -> 2 folds, each 4 weight-load + 3 + 3 skew + 16 inputs -> 2 * 26.
    assert float(ws.cycles[0]) == 52
    # IS: 2 row folds x 4 col folds (M=16 over 4 cols), each 4 + 3 + 3 + 4 -> 8 * 14.
    assert float(is_.cycles[0]) == 112
    macs = 16 * 8 * 4
    for cost in (os_, ws, is_):
        assert float(cost.macs[0]) == macs
        np.testing.assert_allclose(cost.utilization, macs / (16 * cost.cycles), rtol=1e-6)
    # SRAM words: OS re-reads ifmap per column fold (1) and filter per row fold (4).
    assert [float(x[0]) for x in (os_.ifmap_sram_reads, os_.filter_sram_reads, os_.ofmap_sram_writes,
                                  os_.ofmap_sram_reads)] == [128, 128, 64, 0]
    # WS: filter read once, ofmap written once per K fold (2), partial sum read back once.
    assert [float(x[0]) for x in (ws.ifmap_sram_reads, ws.filter_sram_reads, ws.ofmap_sram_writes,
                                  ws.ofmap_sram_reads)] == [128, 32, 128, 64]
    # IS: ifmap read once, filter once per M fold over the columns (4).
    assert [float(x[0]) for x in (is_.ifmap_sram_reads, is_.filter_sram_reads, is_.ofmap_sram_writes,
                                  is_.ofmap_sram_reads)] == [128, 128, 128, 64]
    # Everything fits in the buffers: DRAM sees each operand once.
    for cost in (os_, ws, is_):
        assert [float(x[0]) for x in (cost.ifmap_dram_reads, cost.filter_dram_reads,
                                      cost.ofmap_dram_writes, cost.ofmap_dram_reads)] == [128, 32, 64, 0]


def test_hand_counted_dram_spill_and_energy():
    """DRAM refetch when an operand does not fit, and every energy term by hand."""
    w = make_workload(m=[16], k=[8], n=[8], weight_bits=4, act_bits=8)
    table = SystolicEnergy(mult_pj_8b=0.2, add_pj_32b=0.1, acc_guard_bits=4, acc_bits=32,
                           sram_pj_per_bit_8kb=0.5, sram_size_exponent=0.0, dram_pj_per_bit=10.0)
    cost = systolic_cost(w, 4, 4, dataflow="os", ifmap_buffer=100, filter_buffer=10, ofmap_buffer=1000,
                         energy=table)
    # ifmap M*K = 128 words swept ceil(8/4) = 2 times through 100 words: 128 + 28.
    assert float(cost.ifmap_dram_reads[0]) == 128 + 28
    # filter K*N = 64 words swept ceil(16/4) = 4 times through 10 words: 64 + 3 * 54.
    assert float(cost.filter_dram_reads[0]) == 64 + 3 * 54
    macs = 16 * 8 * 8
    mac_pj = 0.2 * 4 * 8 / 64 + 0.1 * (4 + 8 + 4) / 32
    np.testing.assert_allclose(cost.mac_energy[0], macs * mac_pj, rtol=1e-6)
    sram_bits = 128 * 2 * 8 + 64 * 4 * 4 + 128 * 8        # ifmap, filter, ofmap (final, act bits)
    np.testing.assert_allclose(cost.sram_energy[0], 0.5 * sram_bits, rtol=1e-6)
    dram_bits = (128 + 28) * 8 + (64 + 162) * 4 + 128 * 8
    np.testing.assert_allclose(cost.dram_energy[0], 10.0 * dram_bits, rtol=1e-6)
    np.testing.assert_allclose(cost.energy, cost.mac_energy + cost.sram_energy + cost.dram_energy)
    # WS with a small ofmap buffer: K=8 over 4 rows gives one partial sum spilled per output beyond it.
    ws = systolic_cost(w, 4, 4, dataflow="ws", ofmap_buffer=100)
    assert float(ws.ofmap_dram_writes[0]) == 128 + 28 and float(ws.ofmap_dram_reads[0]) == 28


@pytest.mark.parametrize("df", DATAFLOWS)
def test_cycles_match_independent_formula_on_random_layers(df):
    m, k, n = _random_layers(1)
    w = make_workload(m, k, n)
    for r, c in [(1, 1), (4, 4), (8, 32), (32, 8), (128, 128), (7, 13)]:
        got = np.asarray(systolic_cost(w, r, c, dataflow=df).cycles)
        want = [_hand_cycles(a, b, d, r, c, df) for a, b, d in zip(m, k, n)]
        np.testing.assert_array_equal(got, np.asarray(want, np.float32))


def test_groups_and_count_multiply():
    base = make_workload(m=[50], k=[27], n=[10])
    rep = make_workload(m=[50], k=[27], n=[10], groups=3, count=2)
    for df in DATAFLOWS:
        a = systolic_cost(base, 8, 8, dataflow=df)
        b = systolic_cost(rep, 8, 8, dataflow=df)
        for f in FIELDS:
            np.testing.assert_allclose(getattr(b, f), 6 * getattr(a, f), rtol=1e-6, err_msg=f)
        np.testing.assert_allclose(b.utilization, a.utilization, rtol=1e-6)


def test_recorded_scalesim_runs():
    """Numbers from real SCALE-Sim 3.0.0 runs (COMPUTE_REPORT.csv and DETAILED_ACCESS_REPORT.csv).

    Recorded with ``benchmarks/bench_systolic_vs_scalesim.py`` (results in
    ``benchmarks/results/*scalesim*.json``): SCALE-Sim's "Total Cycles" is the index of the
    last busy cycle, our cycle count minus one; its "Overall Util %" is
    ``macs / (R * C * Total Cycles)``; its SRAM ifmap/filter read counts equal ours.
    """
    import json
    from pathlib import Path
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "cpu2-systolic_vs_scalesim.json"
    if results.exists():  # the committed run holds these numbers too (54 layer x shape x dataflow rows)
        runs = json.loads(results.read_text())["runs"]
        found = {(l["layer"], (r["rows"], r["cols"]), r["dataflow"]): l for r in runs for l in r["layers"]}
        for name, _, rc, df, total, ifm, flt in SCALESIM_RECORDS:
            ref = found[(name, rc, df)]
            assert (ref["total_cycles"], ref["sram_ifmap_reads"], ref["sram_filter_reads"]) == (total, ifm, flt)
    assert len(SCALESIM_RECORDS) >= 9
    for rec in SCALESIM_RECORDS:
        name, (m, k, n), (r, c), df, total_cycles, ifmap_reads, filter_reads = rec
        cost = systolic_cost(make_workload([m], [k], [n]), r, c, dataflow=df)
        assert float(cost.cycles[0]) - 1 == total_cycles, rec
        assert float(cost.ifmap_sram_reads[0]) == ifmap_reads, rec
        assert float(cost.filter_sram_reads[0]) == filter_reads, rec


# (layer, (M, K, N), (R, C), dataflow, Total Cycles, SRAM IFMAP Reads, SRAM Filter Reads), from
# `bench_systolic_vs_scalesim.py` on the shared 2-core CPU, 2026-11-23 (SCALE-Sim 3.0.0, numpy 1.26.4,
# 64 kB SRAMs, CALC bandwidth; stall cycles 0 in every run; benchmarks/results/cpu2-systolic_vs_scalesim.json).  Layers from resnet50() /
# mobilenet_v2(): ResNet-50 layer1.0.conv1 (1x1, 56x56, 64->64), one channel (one GEMM) of
# MobileNetV2's block0.dw (depthwise 3x3, 112x112), MobileNetV2 block12.expand (1x1, 14x14, 96->576).
SCALESIM_RECORDS = [
    ("resnet50.layer1.0.conv1", (3136, 64, 64), (32, 32), "os", 24695, 401408, 401408),
    ("mobilenet_v2.block0.dw", (12544, 9, 1), (32, 32), "os", 27831, 112896, 3528),
    ("mobilenet_v2.block12.expand", (196, 96, 576), (32, 32), "os", 19907, 338688, 387072),
    ("resnet50.layer1.0.conv1", (3136, 64, 64), (32, 32), "ws", 12919, 401408, 4096),
    ("mobilenet_v2.block0.dw", (12544, 9, 1), (32, 32), "ws", 12637, 112896, 9),
    ("mobilenet_v2.block12.expand", (196, 96, 576), (32, 32), "ws", 15659, 338688, 55296),
    ("resnet50.layer1.0.conv1", (3136, 64, 64), (32, 32), "is", 30967, 200704, 401408),
    ("mobilenet_v2.block0.dw", (12544, 9, 1), (32, 32), "is", 37239, 112896, 3528),
    ("mobilenet_v2.block12.expand", (196, 96, 576), (32, 32), "is", 14069, 18816, 387072),
]


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("df", DATAFLOWS)
@pytest.mark.parametrize("axis", ["m", "k", "n", "groups", "count"])
def test_monotone_in_the_work(df, axis):
    """More work (any of M, K, N, groups, count larger) never costs fewer cycles, words or pJ."""
    m, k, n = _random_layers(2)
    w = make_workload(m, k, n)
    bigger = w._replace(**{axis: getattr(w, axis) + np.arange(1, 13, dtype=np.float32)})
    for r, c in [(3, 5), (16, 16), (64, 8)]:
        for buf in (50.0, 1e5):
            kw = dict(dataflow=df, ifmap_buffer=buf, filter_buffer=buf, ofmap_buffer=buf)
            a, b = systolic_cost(w, r, c, **kw), systolic_cost(bigger, r, c, **kw)
            for f in FIELDS:
                assert np.all(np.asarray(getattr(b, f)) >= np.asarray(getattr(a, f))), (f, r, c, buf)
            assert np.all(np.asarray(b.energy) > np.asarray(a.energy))


@pytest.mark.parametrize("df", DATAFLOWS)
def test_zero_work_costs_nothing(df):
    w = make_workload(m=[0, 5, 5, 0], k=[3, 0, 3, 0], n=[4, 4, 0, 0], weight_bits=[8, 4, 2, 8])
    cost = systolic_cost(w, 8, 4, dataflow=df, ifmap_buffer=0, filter_buffer=0, ofmap_buffer=0)
    for f in FIELDS + ["utilization"]:
        np.testing.assert_array_equal(getattr(cost, f), 0.0, err_msg=f)
    assert float(cost.total_energy) == 0.0 and float(cost.total_utilization) == 0.0
    relaxed = systolic_cost(w, 8.5, 4.2, dataflow=df, relaxed=True)
    np.testing.assert_array_equal(relaxed.energy, 0.0)


@pytest.mark.parametrize("df", DATAFLOWS)
def test_utilization_in_unit_interval(df):
    m, k, n = _random_layers(3, 40)
    w = make_workload(m, k, n)
    for r, c in [(1, 1), (2, 9), (16, 16), (256, 256), (128, 8)]:
        cost = systolic_cost(w, r, c, dataflow=df)
        u = np.asarray(cost.utilization)
        assert np.all(u > 0) and np.all(u <= 1), (r, c, u.min(), u.max())
        assert 0 < float(cost.total_utilization) <= 1
    # A 1x1 output-stationary array is busy on every cycle.
    np.testing.assert_allclose(systolic_cost(w, 1, 1, dataflow="os").utilization, 1.0)


@pytest.mark.parametrize("df", DATAFLOWS)
def test_relaxed_equals_exact_at_integers(df):
    m, k, n = _random_layers(4)
    w = make_workload(m, k, n, weight_bits=6, act_density=0.7)
    for r, c in [(1, 1), (5, 12), (32, 32), (100, 3)]:
        kw = dict(dataflow=df, ifmap_buffer=2000.0, filter_buffer=500.0, ofmap_buffer=3000.0)
        ex = systolic_cost(w, r, c, **kw)
        rel = systolic_cost(w, float(r), float(c), relaxed=True, **kw)
        for f in SystolicCost._fields:
            np.testing.assert_allclose(getattr(rel, f), getattr(ex, f), rtol=1e-6, err_msg=f)


def test_relaxed_interpolates_between_designs():
    w = make_workload(*_random_layers(5))
    a, b = systolic_cost(w, 7, 9), systolic_cost(w, 8, 9)
    mid = systolic_cost(w, 7.25, 9.0, relaxed=True)
    np.testing.assert_allclose(mid.total_cycles, 0.75 * a.total_cycles + 0.25 * b.total_cycles, rtol=1e-6)


@pytest.mark.parametrize("df", ["os", pytest.param("ws", marks=pytest.mark.slow),
                                pytest.param("is", marks=pytest.mark.slow)])
def test_grad_matches_finite_differences(df):
    """jax.grad of the relaxed energy + cycles vs central differences of the same function.

    Rows/cols sit inside an integer cell (9.3, 14.6), where the relaxed cost is bilinear in
    them; bit-widths, densities and the buffer size are continuous in both versions.
    """
    rng = np.random.default_rng(6)
    m, k, n = (rng.integers(1, 60, 6) for _ in range(3))
    w = make_workload(m, k, n, weight_bits=np.linspace(3, 8, 6), act_bits=6.0,
                      weight_density=np.linspace(0.3, 0.85, 6), act_density=0.8)

    def raw(r, c, wb, wd, ab, buf):
        ww = w._replace(weight_bits=wb, weight_density=wd, act_bits=ab)
        cost = systolic_cost(ww, r, c, dataflow=df, ifmap_buffer=buf, filter_buffer=buf, ofmap_buffer=buf,
                             relaxed=True)
        return cost.total_energy, cost.total_cycles

    args = (jnp.float32(9.3), jnp.float32(14.6), w.weight_bits, w.weight_density, w.act_bits,
            jnp.float32(700.5))  # word counts are integers: +-0.25 stays on one linear piece of max(S - B, 0)
    e0, c0 = (float(x) for x in raw(*args))

    @jax.jit
    def f(*a):  # normalised to ~2 so that float32 central differences resolve the slopes
        e, c = raw(*a)
        return e / e0 + c / c0

    grads = jax.jit(jax.grad(f, argnums=tuple(range(6))))(*args)
    steps = (0.1, 0.1, 0.05, 0.1, 0.05, 0.25)
    for i, (g, h) in enumerate(zip(grads, steps)):
        x = np.asarray(args[i], np.float32)
        flat = x.reshape(-1)
        fd = np.zeros_like(flat)
        for j in range(flat.size):
            def at(d):
                y = flat.copy()
                y[j] += d
                a = list(args)
                a[i] = jnp.asarray(y.reshape(x.shape))
                return float(f(*a))
            fd[j] = (at(h) - at(-h)) / (2 * h)
        np.testing.assert_allclose(np.asarray(g).reshape(-1), fd, rtol=2e-3, atol=1e-3 * np.abs(fd).max() + 1e-6,
                                   err_msg=f"argument {i}")
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert float(grads[0]) != 0 and float(grads[1]) != 0


def test_vmap_over_designs_and_jit():
    """jit(vmap(cost)) over designs == the cost of each design alone (eager)."""
    w = make_workload(*_random_layers(7), weight_bits=[4, 8] * 6)
    rows = jnp.asarray([1.0, 16.0, 128.0])
    cols = jnp.asarray([8.0, 64.0, 16.0])
    for df, relaxed in [("is", False), ("ws", True)]:
        fn = jax.jit(jax.vmap(lambda r, c: systolic_cost(w, r, c, dataflow=df, relaxed=relaxed)))
        batched = fn(rows + 0.5 * relaxed, cols + 0.25 * relaxed)
        for i in range(len(rows)):
            one = systolic_cost(w, float(rows[i]) + 0.5 * relaxed, float(cols[i]) + 0.25 * relaxed,
                                dataflow=df, relaxed=relaxed)
            for f in SystolicCost._fields:
                np.testing.assert_allclose(getattr(batched, f)[i], getattr(one, f), rtol=1e-6, err_msg=f)


def test_energy_defaults_and_scaling():
    e = SystolicEnergy()
    # Horowitz ISSCC 2014 at 45 nm: 8-bit multiply 0.2 pJ, 32-bit add 0.1 pJ, SRAM 10/20 pJ per 64 bits.
    np.testing.assert_allclose(e.mac_pj(8.0, 8.0), 0.2 + 0.1 * 24 / 32, rtol=1e-6)
    np.testing.assert_allclose(64 * e.sram_pj_per_bit(8 * 8192.0), 10.0, rtol=1e-6)
    np.testing.assert_allclose(64 * e.sram_pj_per_bit(32 * 8192.0), 20.0, rtol=1e-6)
    w8 = make_workload([64], [64], [64])
    w4 = make_workload([64], [64], [64], weight_bits=4, act_bits=4)
    assert float(systolic_cost(w4, 8, 8).total_energy) < float(systolic_cost(w8, 8, 8).total_energy)
    sparse = make_workload([64], [64], [64], weight_density=0.5)
    np.testing.assert_allclose(systolic_cost(sparse, 8, 8).mac_energy, 0.5 * systolic_cost(w8, 8, 8).mac_energy,
                               rtol=1e-6)
    no_gate = dataclasses.replace(e, zero_gating=False)
    np.testing.assert_allclose(systolic_cost(sparse, 8, 8, energy=no_gate).mac_energy,
                               systolic_cost(w8, 8, 8).mac_energy, rtol=1e-6)


def test_errors():
    w = make_workload([4], [4], [4])
    with pytest.raises(ValueError, match="dataflow must be one of"):
        systolic_cost(w, 4, 4, dataflow="rs")
    with pytest.raises(ValueError, match="integer for the exact cost"):
        systolic_cost(w, 4.5, 4)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        systolic_cost(w, 0, 4)
    with pytest.raises(ValueError, match="jax.vmap"):
        systolic_cost(w, jnp.ones(3), 4)
    with pytest.raises(ValueError, match="ofmap_buffer must be >= 0"):
        systolic_cost(w, 4, 4, ofmap_buffer=-1)
    with pytest.raises(ValueError, match="weight_density must lie in"):
        systolic_cost(make_workload([4], [4], [4], weight_density=1.5), 4, 4)
    with pytest.raises(ValueError, match="act_bits must be >= 1"):
        systolic_cost(make_workload([4], [4], [4], act_bits=0), 4, 4)
    with pytest.raises(TypeError, match="Workload"):
        systolic_cost((4, 4, 4), 4, 4)
    with pytest.raises(ValueError, match="dram_pj_per_bit"):
        SystolicEnergy(dram_pj_per_bit=-1.0)


def test_exact_folds_under_jit():
    """Fold counts stay exact under jit, where XLA may turn ``a / 7`` into ``a * (1/7)`` (ceil(21/7) -> 4)."""
    m = 7.0 * np.arange(1, 41)
    w = make_workload(m, 13.0 * np.arange(1, 41), 21.0)
    for df in DATAFLOWS:
        want = np.asarray([_hand_cycles(int(a), int(b), 21, 7, 13, df) for a, b in zip(m, 13 * np.arange(1, 41))],
                          np.float32)
        # Both forms below give wrong fold counts (18 / 3 / 5 layers off for os / ws / is) with jnp.ceil(a / b).
        np.testing.assert_array_equal(systolic_cost(w, 7, 13, dataflow=df).cycles, want)
        fn = jax.jit(jax.vmap(lambda r, c: systolic_cost(w, r, c, dataflow=df).cycles))
        np.testing.assert_array_equal(fn(jnp.asarray([7.0]), jnp.asarray([13.0]))[0], want)
