"""Tests of the multi-pod (SOSA) systolic cost model (jaxrob.hw._multipod)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.hw._multipod import (INTERCONNECTS, MultiPodCost, MultiPodTech, interconnect, multi_tenant_cost,
                                 multipod_cost)
from jaxrob.hw._systolic import DATAFLOWS, systolic_cost
from jaxrob.hw._workload import make_workload


def _layers(seed=0, num=6):
    rng = np.random.default_rng(seed)
    return make_workload(m=rng.integers(1, 200, num), k=rng.integers(1, 200, num), n=rng.integers(1, 200, num),
                         groups=rng.integers(1, 3, num), weight_bits=8, act_bits=8)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_one_pod_equals_systolic_cost(dataflow):
    w = _layers(1)
    mp = multipod_cost(w, 8, 16, 1, dataflow=dataflow)
    sc = systolic_cost(w, 8, 16, dataflow=dataflow)
    np.testing.assert_array_equal(mp.cycles, sc.cycles)
    np.testing.assert_array_equal(mp.compute_cycles, sc.cycles)
    np.testing.assert_allclose(mp.utilization, sc.utilization, rtol=1e-6)
    np.testing.assert_allclose(mp.sram_energy, sc.sram_energy, rtol=1e-6)
    assert float(jnp.max(mp.transfer_cycles)) == 0.0 and float(jnp.max(mp.interconnect_energy)) == 0.0
    # A fully busy pod's PE energy is the MAC energy; idle PE cycles add mac_pj each (idle_fraction = 1).
    idle = sc.pes * sc.cycles - sc.macs
    mac_pj = sc.mac_energy / sc.macs
    np.testing.assert_allclose(mp.pe_energy, sc.mac_energy + idle * mac_pj, rtol=1e-5)


def test_hand_counted_tiling_over_pods():
    """M=64, K=8, N=8; 8x8 pods, OS, partitions of one fold: 8 folds dealt to P pods round-robin."""
    w = make_workload(m=[64], k=[8], n=[8])
    for p, folds_pod in ((1, 8), (3, 3), (4, 2), (8, 1), (16, 1)):
        c = multipod_cost(w, 8, 8, p, partition_m=8, partition_n=8, interconnect="crossbar")
        assert float(c.partitions[0]) == 8
        assert float(c.compute_cycles[0]) == folds_pod * (8 + 8 + 8 - 2)
        if p > 1:
            # crossbar: 1 hop + busiest pod's words (folds_pod * (64 + 64 + 64)) at 16 words per cycle.
            assert float(c.transfer_cycles[0]) == pytest.approx(1 + folds_pod * 192 / 16)
            assert float(c.cycles[0]) == pytest.approx(float(c.compute_cycles[0] + c.transfer_cycles[0]))
    over = multipod_cost(w, 8, 8, 4, partition_m=8, partition_n=8, interconnect="crossbar", overlap=True)
    assert float(over.cycles[0]) == pytest.approx(max(2 * 22, 2 * 192 / 16) + 1)


def test_interconnect_scaling_formulas():
    tech = MultiPodTech()
    hops = {k: float(interconnect(k, 16.0, 64.0, 1.0, tech).hops) for k in INTERCONNECTS}
    assert hops == {"crossbar": 1.0, "butterfly": 4.0, "benes": 7.0, "mesh": 4.0}
    assert float(interconnect("mesh", 64.0, 64.0, 1.0).efficiency) == 0.5
    # Area: crossbar ~ P^2; butterfly ~ P log P (+ wires ~ P sqrt P) grows slower; one pod has no network.
    a = {k: [float(interconnect(k, p, 64.0, 1.0).area_mm2) for p in (64.0, 128.0)] for k in INTERCONNECTS}
    assert a["crossbar"][1] / a["crossbar"][0] == pytest.approx(4.0, rel=1e-5)
    assert a["butterfly"][1] / a["butterfly"][0] < a["crossbar"][1] / a["crossbar"][0]
    assert a["benes"][0] > a["butterfly"][0]
    for k in INTERCONNECTS:
        one = interconnect(k, 1.0, 64.0, 1.0)
        assert float(one.area_mm2) == float(one.pj_per_bit) == float(one.hops) == 0.0
    with pytest.raises(ValueError, match="interconnect must be one of"):
        interconnect("torus", 4.0, 64.0, 1.0)


@pytest.mark.parametrize("kind", INTERCONNECTS)
def test_monotone_in_work_and_zero_work(kind):
    base = _layers(2)
    for field in ("m", "k", "n", "groups"):
        more = base._replace(**{field: getattr(base, field) + 5.0})
        a = multipod_cost(base, 8, 8, 16, interconnect=kind, partition_m=8, partition_n=8)
        b = multipod_cost(more, 8, 8, 16, interconnect=kind, partition_m=8, partition_n=8)
        assert bool(jnp.all(b.cycles >= a.cycles)), field
        assert bool(jnp.all(b.energy >= a.energy * (1 - 1e-6))), field
    zero = make_workload(m=[0, 5], k=[7, 0], n=[3, 4])
    z = multipod_cost(zero, 8, 8, 16, interconnect=kind, partition_m=8, partition_n=8)
    assert float(jnp.max(z.energy)) == 0.0 and float(jnp.max(z.cycles)) == 0.0
    assert float(jnp.max(z.utilization)) == 0.0


@pytest.mark.parametrize("kind", INTERCONNECTS)
def test_utilization_in_unit_interval(kind):
    w = _layers(3, 10)
    for r, c, p in ((1, 1, 1), (4, 8, 2), (16, 16, 7), (32, 8, 64)):
        for overlap in (False, True):
            cost = multipod_cost(w, r, c, p, interconnect=kind, partition_m=r, partition_n=c, overlap=overlap)
            u = np.asarray(cost.utilization)
            assert np.all(u > 0) and np.all(u <= 1 + 1e-6), (r, c, p, u)
            assert 0 < float(cost.total_utilization) <= 1 + 1e-6
    # Without a network (one pod) and with a multiple-of-pod GEMM the pod is fully used but for fill/drain.
    full = multipod_cost(make_workload(m=[8], k=[1000], n=[8]), 8, 8, 1)
    assert 0.98 < float(full.utilization[0]) <= 1.0


def test_more_pods_never_slower_compute():
    w = _layers(4)
    prev = None
    for p in range(1, 20):
        c = multipod_cost(w, 8, 8, p, partition_m=8, partition_n=8).compute_cycles
        if prev is not None:
            assert bool(jnp.all(c <= prev))
        prev = c


def _energy_fn(w, kind="butterfly"):
    def f(r, c, p):
        return multipod_cost(w, r, c, p, interconnect=kind, partition_m=16, partition_n=16,
                             relaxed=True).total_energy
    return jax.jit(f)


@pytest.mark.parametrize("kind", ["crossbar", "mesh"])
def test_relaxed_equals_exact_at_integers(kind):
    w = _layers(5)
    f = _energy_fn(w, kind)
    for r, c, p in ((4, 8, 3), (16, 16, 16), (9, 5, 1)):
        ex = multipod_cost(w, r, c, p, interconnect=kind, partition_m=16, partition_n=16)
        np.testing.assert_allclose(f(float(r), float(c), float(p)), ex.total_energy, rtol=1e-5)
    rl = multipod_cost(w, 9.0, 5.0, 1.0, interconnect=kind, partition_m=16, partition_n=16, relaxed=True)
    np.testing.assert_allclose(rl.cycles, ex.cycles, rtol=1e-5)


def test_grad_matches_finite_differences():
    w = _layers(6)
    f = _energy_fn(w)
    x = (12.3, 9.6, 5.4)  # away from integers: the relaxation is multilinear inside the cell
    g = jax.grad(lambda *a: f(*a), argnums=(0, 1, 2))(*x)
    for i in range(3):
        h = 0.05
        up = list(x)
        dn = list(x)
        up[i] += h
        dn[i] -= h
        fd = (float(f(*up)) - float(f(*dn))) / (2 * h)
        assert float(g[i]) == pytest.approx(fd, rel=2e-2, abs=1e-3 * abs(float(f(*x)))), i

    # Per-layer bit-width and density (continuous in both versions).
    @jax.jit
    def tpw(bits, dens):
        ww = w._replace(weight_bits=bits, weight_density=dens)
        return multipod_cost(ww, 8, 8, 4, partition_m=8, partition_n=8).total_energy

    bits, dens = w.weight_bits + 0.3, w.weight_density * 0.7
    gb, gd = jax.jit(jax.grad(tpw, argnums=(0, 1)))(bits, dens)
    for j in range(2):
        e = jnp.zeros_like(bits).at[j].set(1e-2)
        fd_b = (tpw(bits + e, dens) - tpw(bits - e, dens)) / 2e-2
        fd_d = (tpw(bits, dens + e) - tpw(bits, dens - e)) / 2e-2
        assert float(gb[j]) == pytest.approx(float(fd_b), rel=2e-2)
        assert float(gd[j]) == pytest.approx(float(fd_d), rel=2e-2)


def test_vmap_over_designs_matches_loop():
    w = _layers(7)
    rs = jnp.array([4.0, 8.0, 16.0])
    ps = jnp.array([16.0, 4.0, 2.0])
    f = jax.jit(jax.vmap(lambda r, p: multipod_cost(w, r, r, p, partition_m=r, partition_n=r)
                         .effective_throughput_per_watt))
    got = f(rs, ps)
    want = [float(multipod_cost(w, int(r), int(r), int(p), partition_m=int(r), partition_n=int(r))
                  .effective_throughput_per_watt) for r, p in zip(rs, ps)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_effective_throughput_definitions():
    w = _layers(8)
    tech = MultiPodTech(frequency_hz=2e9)
    c = multipod_cost(w, 8, 8, 4, tech=tech)
    ops = 2 * float(jnp.sum(c.macs))
    t = float(c.total_cycles) / 2e9
    assert float(c.effective_throughput) == pytest.approx(ops / t, rel=1e-5)
    assert float(c.effective_throughput_per_watt) == pytest.approx(ops / t / float(c.power_w), rel=1e-5)
    # Peak-normalised: effective throughput = utilization x peak (2 ops per PE per cycle).
    assert float(c.effective_throughput) == pytest.approx(float(c.total_utilization) * 2 * 4 * 64 * 2e9, rel=1e-5)


def test_multi_tenancy_adds_disjoint_tenants():
    a, b = _layers(9), _layers(10)
    mt = multi_tenant_cost([a, b], [4, 12], 8, 8, partition_m=8, partition_n=8)
    ca = multipod_cost(a, 8, 8, 4, network_ports=16, partition_m=8, partition_n=8)
    cb = multipod_cost(b, 8, 8, 12, network_ports=16, partition_m=8, partition_n=8)
    np.testing.assert_allclose(mt.tenants[0].cycles, ca.cycles)
    assert float(mt.effective_throughput) == pytest.approx(float(ca.effective_throughput + cb.effective_throughput),
                                                           rel=1e-5)
    assert float(mt.power_w) < float(ca.power_w + cb.power_w)  # network leakage counted once, not twice
    assert float(mt.effective_throughput_per_watt) > 0
    with pytest.raises(ValueError, match="one pod count per tenant"):
        multi_tenant_cost([a, b], [4], 8, 8)
    with pytest.raises(TypeError, match="non-empty list"):
        multi_tenant_cost(a, [4], 8, 8)


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(rows=0), ValueError, "rows"), (dict(pods=2.5), ValueError, "pods must be an integer"),
    (dict(pods=np.ones(3)), ValueError, "scalar"), (dict(interconnect="ring"), ValueError, "interconnect"),
    (dict(dataflow="rs"), ValueError, "dataflow"), (dict(partition_m=0), ValueError, "partition_m"),
    (dict(partition_n=3.5), ValueError, "partition_n"), (dict(relaxed=1), TypeError, "relaxed"),
    (dict(overlap="yes"), TypeError, "overlap"), (dict(tech=object()), TypeError, "MultiPodTech"),
    (dict(ifmap_buffer=-1.0), ValueError, "ifmap_buffer"), (dict(rows="8"), TypeError, "rows"),
])
def test_bad_inputs_raise(kwargs, err, msg):
    args = dict(rows=8, cols=8, pods=4)
    args.update(kwargs)
    r, c, p = args.pop("rows"), args.pop("cols"), args.pop("pods")
    with pytest.raises(err, match=msg):
        multipod_cost(_layers(0), r, c, p, **args)


def test_bad_tech_and_workload_raise():
    with pytest.raises(ValueError, match="frequency_hz"):
        MultiPodTech(frequency_hz=0.0)
    with pytest.raises(ValueError, match="leak_w_per_mm2"):
        dataclasses.replace(MultiPodTech(), leak_w_per_mm2=-1.0)
    with pytest.raises(TypeError, match="Workload"):
        multipod_cost({"m": 1}, 8, 8, 4)
    with pytest.raises(ValueError, match="weight_density"):
        multipod_cost(make_workload(m=[4], k=[4], n=[4])._replace(weight_density=jnp.array([1.5])), 8, 8, 4)
    assert isinstance(multipod_cost(_layers(0), 8.0, 8.0, 4.5, relaxed=True), MultiPodCost)
