"""Multi-pod systolic arrays after SOSA: pods, partition tiling, interconnects, effective throughput per Watt.

SOSA (Yuzuguler et al., "Scale-out Systolic Arrays", ACM TACO 2023, arXiv:2203.11540) builds
an inference accelerator from ``P`` pods of ``R x C`` PEs joined to on-chip memory banks by
an interconnect, and studies three design pillars: pod granularity, interconnect and tiling
with a custom partition size.  Only the paper's abstract could be read here (its equations
and constants were not found with the search tools), so the model below is **derived** and
every formula and constant is **our choice** unless it says otherwise.

**Tiling (single tenancy).** A layer is ``groups * count`` independent GEMMs ``(M x K) @
(K x N)`` (:class:`~jaxrob.hw._workload.Workload`).  Each GEMM is cut into partitions of
``pm x K @ K x pn`` with ``pm = min(partition_m, M)``, ``pn = min(partition_n, N)`` (``None``:
no cut along that axis), i.e. ``parts = groups * count * ceil(M / pm) * ceil(N / pn)``
partitions, dealt to the ``P`` pods round-robin.  The busiest pod gets ``ceil(parts / P)``
partitions and each costs the full partition's cycles on one ``R x C`` pod
(:func:`~jaxrob.hw._systolic.systolic_cost`, any dataflow).  This is exact when ``pm``
divides ``M`` and ``pn`` divides ``N`` (and always for the output-stationary dataflow with
``pm = R``, ``pn = C``, whose fold time does not depend on the fold's fill) and an upper
bound otherwise (edge partitions are smaller).  With ``P = 1`` and no partitioning the
compute cycles equal ``systolic_cost``'s.

**Interconnect transfer.** Each partition's operands (``pm K`` ifmap and ``K pn`` filter
words) go from the memory banks to its pod and its ``pm pn`` outputs come back.  A pod's
port carries ``link_scale * (R + C)`` words per cycle (the rate at which a fed array
consumes operands: ``R`` ifmap and ``C`` filter words per cycle); a network delivers a
fraction ``eff(P)`` of it under the round-robin pattern.  Per layer, with no overlap of
transfer and compute (the default, as in the task) or with double-buffered overlap::

    transfer = hops(P) + ceil(parts / P) * words_per_partition / (link_words * eff(P))
    cycles   = compute + transfer                  (overlap=False)
    cycles   = max(compute, transfer - hops) + hops (overlap=True)

With ``P = 1`` there is no network: ``transfer = 0``.

**Interconnects** (``P`` ports, link width ``w = link_scale * (R + C) * 8`` bits, pods of
side ``s = sqrt(R C a_pe)`` mm on a die of side ``D = sqrt(P) s``; ``lg = log2 P``):

============  ==============  ===================  ===========================  ==================================
network       hops            eff(P)               wire length per bit (mm)     area (mm^2)
============  ==============  ===================  ===========================  ==================================
crossbar      1               1                    ``2 P w p``                  ``(P w p)^2``
butterfly     ``lg``          1                    ``D``                        ``P w p D + 2 P lg w x``
benes         ``2 lg - 1``    1                    ``2 D``                      ``2 P w p D + 2 P (2 lg - 1) w x``
mesh          ``sqrt(P)``     ``min(1, 4/sqrt P)`` ``D``                        ``2 sqrt(P) D w p + 25 P w x``
============  ==============  ===================  ===========================  ==================================

``p`` is the wire pitch and ``x`` the area of one switch crosspoint bit.  The crossbar's
area grows as ``P^2`` (its ``P`` input and ``P`` output buses cross, each ``w`` wires
wide) and its wires as ``P``; a radix-2 butterfly has ``lg`` stages of ``P/2`` 2x2 switches
(``2 P lg`` crosspoints) and wires that halve stage by stage (total about one die
crossing); a Benes network is two butterflies back to back (``2 lg - 1`` stages,
rearrangeably non-blocking); a 2-D mesh has one 5-port router per pod (25 crosspoints), is
fed from its perimeter (``4 sqrt P`` edge links for ``P`` pods, hence ``eff``) and takes
``~sqrt P`` hops.  SOSA's partition-to-pod pattern (pod ``i`` to bank ``i``) is a
permutation a butterfly routes without conflicts, so its ``eff`` is 1 like the
non-blocking networks' (our reading of the abstract's "Butterfly networks offer a
scalable topology").  Energy per bit moved: ``wire_pj_per_bit_mm * length + switch_pj_per_bit
* switches`` (switches: crossbar 1, butterfly ``lg``, Benes ``2 lg - 1``, mesh ``sqrt P``
routers).  Static power: ``leak_w_per_mm2 * area``.

**Power and effective throughput.** Every PE is clocked every cycle: a busy PE costs the
per-MAC energy of :class:`~jaxrob.hw._systolic.SystolicEnergy` (times operand density with
zero gating), an idle one ``idle_fraction`` of it (default 1: the array's power is
``P R C * mac_pj * f`` whether or not it is used, so effective throughput per Watt is
utilization times peak throughput per Watt, the quantity SOSA optimizes).  SRAM energy is
``systolic_cost``'s per partition times ``parts``; DRAM is not counted (on-chip power only).
Effective throughput is ``2 * MACs / time`` (ops/s, two ops per MAC, utilization included
because ``time`` is the real latency); effective throughput per Watt is ``2 * MACs /
energy`` (ops/J = ops/s/W).

**Multi-tenancy.** :func:`multi_tenant_cost` runs independent workloads on disjoint groups
of pods that share one ``P_total``-port network (hops, wire lengths and area of the whole
network); the tenants' throughputs and powers add.

**Relaxation.** ``relaxed=True`` interpolates the exact cost over ``(rows, cols, pods)``
with :func:`jaxrob.hw._smooth.interp_int` (trilinear between integer designs; equal to the
exact cost at integers, gradient = slope between neighbouring designs).  Bit-widths,
densities, ``link_scale`` and the technology constants enter continuously.

References:
  A. C. Yuzuguler, C. Sonmez, M. Drumond, Y. Oh, B. Falsafi, P. Frossard, "Scale-out
  Systolic Arrays", ACM TACO 2023, arXiv:2203.11540 (design pillars and claims; abstract
  only, formulas here derived).  W. J. Dally, B. Towles, "Principles and Practices of
  Interconnection Networks", Morgan Kaufmann 2004 (switch counts, stages and hop counts of
  crossbar, butterfly, Benes and mesh networks).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob.hw._smooth import ceil_div, interp_int
from jaxrob.hw._systolic import DATAFLOWS, SystolicEnergy, _check_workload, systolic_cost
from jaxrob.hw._workload import Workload

INTERCONNECTS = ("crossbar", "butterfly", "benes", "mesh")


@dataclasses.dataclass(frozen=True)
class MultiPodTech:
    """Technology constants of the multi-pod model (all our documented choices, 45 nm-like).

    Attributes:
      frequency_hz: clock frequency (1 GHz).
      pe_area_mm2: area of one 8-bit MAC PE with its registers (0.001 mm^2 = 1000 um^2).
      wire_pitch_mm: effective pitch of global interconnect wires (0.4 um pitch over 4 routing layers).
      wire_pj_per_bit_mm: energy to move one bit over 1 mm of global wire (~0.2 pF/mm at 0.9 V,
        activity ~0.6: 0.1 pJ/bit/mm).
      switch_pj_per_bit: energy of one bit through one switch / router stage.
      xpt_area_mm2_per_bit: area of one crosspoint bit of a switch (1 um^2).
      leak_w_per_mm2: static power density of the interconnect.
      link_scale: port bandwidth in units of ``R + C`` words per cycle.
      word_bits: bits per word on the links.
      idle_fraction: energy of an idle PE cycle as a fraction of a MAC's.
    """

    frequency_hz: float = 1e9
    pe_area_mm2: float = 1e-3
    wire_pitch_mm: float = 1e-4
    wire_pj_per_bit_mm: float = 0.1
    switch_pj_per_bit: float = 0.02
    xpt_area_mm2_per_bit: float = 1e-6
    leak_w_per_mm2: float = 0.02
    link_scale: float = 1.0
    word_bits: float = 8.0
    idle_fraction: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"MultiPodTech.{f.name} must be a finite number >= 0, got {v!r}")
        for name in ("frequency_hz", "link_scale", "word_bits", "pe_area_mm2"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MultiPodTech.{name} must be > 0, got {getattr(self, name)!r}")


class Interconnect(NamedTuple):
    """Scaling of one network with its port count (scalars, broadcasting over design points).

    Attributes:
      hops: latency in switch stages / router hops (cycles, one per hop).
      efficiency: fraction of a port's bandwidth delivered under the round-robin pattern.
      pj_per_bit: energy to move one bit from a bank to a pod.
      area_mm2: wire and switch area.
      static_w: leakage power.
    """

    hops: jax.Array
    efficiency: jax.Array
    pj_per_bit: jax.Array
    area_mm2: jax.Array
    static_w: jax.Array


def interconnect(kind: str, pods: jax.typing.ArrayLike, link_bits: jax.typing.ArrayLike,
                 pod_side_mm: jax.typing.ArrayLike, tech: MultiPodTech = MultiPodTech()) -> Interconnect:
    """Hops, bandwidth efficiency, energy per bit, area and static power of a ``pods``-port network.

    Formulas in the module docstring (our choices after Dally & Towles); a single pod has no
    network (all zero, efficiency 1).

    Args:
      kind: one of ``"crossbar"``, ``"butterfly"``, ``"benes"``, ``"mesh"``.
      pods: number of ports ``P`` (>= 1).
      link_bits: width of one port in bits.
      pod_side_mm: side of one pod (mm).
      tech: :class:`MultiPodTech`.

    Returns:
      An :class:`Interconnect` of scalars.

    Example:
      >>> net = interconnect("butterfly", 16.0, 512.0, 1.0)
      >>> float(net.hops)
      4.0

    References:
      Dally & Towles, "Principles and Practices of Interconnection Networks", 2004.
    """
    if kind not in INTERCONNECTS:
        raise ValueError(f"interconnect must be one of {', '.join(map(repr, INTERCONNECTS))}; got {kind!r}")
    p = jnp.asarray(pods, jnp.float32)
    w = jnp.asarray(link_bits, jnp.float32)
    s = jnp.asarray(pod_side_mm, jnp.float32)
    lg = jnp.log2(jnp.maximum(p, 1.0))
    sq = jnp.sqrt(jnp.maximum(p, 1.0))
    die = sq * s
    pitch, xpt = tech.wire_pitch_mm, tech.xpt_area_mm2_per_bit
    if kind == "crossbar":
        hops, eff = jnp.ones_like(p), jnp.ones_like(p)
        length, switches = 2.0 * p * w * pitch, jnp.ones_like(p)
        area = (p * w * pitch) ** 2
    elif kind == "butterfly":
        hops, eff = lg, jnp.ones_like(p)
        length, switches = die, lg
        area = p * w * pitch * die + 2.0 * p * lg * w * xpt
    elif kind == "benes":
        stages = jnp.maximum(2.0 * lg - 1.0, 0.0)
        hops, eff = stages, jnp.ones_like(p)
        length, switches = 2.0 * die, stages
        area = 2.0 * p * w * pitch * die + 2.0 * p * stages * w * xpt
    else:  # mesh
        hops, eff = sq, jnp.minimum(1.0, 4.0 / sq)
        length, switches = die, sq
        area = 2.0 * sq * die * w * pitch + 25.0 * p * w * xpt
    pj = tech.wire_pj_per_bit_mm * length + tech.switch_pj_per_bit * switches
    net = p > 1.0
    zero = jnp.zeros_like(p)
    return Interconnect(jnp.where(net, hops, zero), jnp.where(net, eff, 1.0), jnp.where(net, pj, zero),
                        jnp.where(net, area, zero), jnp.where(net, tech.leak_w_per_mm2 * area, zero))


class MultiPodCost(NamedTuple):
    """Cost of each layer of a workload on ``P`` pods; per-layer fields are ``(L,)``, energies in pJ.

    Attributes:
      cycles: per-layer latency (compute of the busiest pod plus or overlapped with transfer).
      compute_cycles: cycles of the busiest pod.
      transfer_cycles: interconnect time (hops plus serialization of the busiest pod's words).
      utilization: ``macs / (P R C cycles)`` in ``(0, 1]`` (0 for a layer without work).
      macs: multiply-accumulates.
      partitions: partitions of the layer (all its GEMMs).
      words_moved: words through the interconnect (0 with one pod).
      pe_energy, sram_energy, interconnect_energy, static_energy: energies (pJ).
      pes: ``P R C`` (scalar).
      area_mm2: PE plus interconnect area (scalar).
      frequency_hz: clock (scalar).
    """

    cycles: jax.Array
    compute_cycles: jax.Array
    transfer_cycles: jax.Array
    utilization: jax.Array
    macs: jax.Array
    partitions: jax.Array
    words_moved: jax.Array
    pe_energy: jax.Array
    sram_energy: jax.Array
    interconnect_energy: jax.Array
    static_energy: jax.Array
    pes: jax.Array
    area_mm2: jax.Array
    frequency_hz: jax.Array

    @property
    def energy(self) -> jax.Array:
        """``(L,)`` energy per layer (pJ)."""
        return self.pe_energy + self.sram_energy + self.interconnect_energy + self.static_energy

    @property
    def total_cycles(self) -> jax.Array:
        return jnp.sum(self.cycles, axis=-1)

    @property
    def total_energy(self) -> jax.Array:
        return jnp.sum(self.energy, axis=-1)

    @property
    def total_utilization(self) -> jax.Array:
        busy = self.pes * self.total_cycles
        return jnp.sum(self.macs, axis=-1) / jnp.where(busy > 0, busy, 1.0)

    @property
    def effective_throughput(self) -> jax.Array:
        """Ops per second (2 per MAC) over the whole workload, utilization included."""
        t = self.total_cycles / self.frequency_hz
        return 2.0 * jnp.sum(self.macs, axis=-1) / jnp.where(t > 0, t, 1.0)

    @property
    def power_w(self) -> jax.Array:
        """Average power (W) while running the workload."""
        t = self.total_cycles / self.frequency_hz
        return self.total_energy * 1e-12 / jnp.where(t > 0, t, 1.0)

    @property
    def effective_throughput_per_watt(self) -> jax.Array:
        """Ops per joule = ops/s per W."""
        e = self.total_energy * 1e-12
        return 2.0 * jnp.sum(self.macs, axis=-1) / jnp.where(e > 0, e, 1.0)


def _exact(w: Workload, r, c, p, ports, pm, pn, dataflow, kind, overlap, bufs, energy, tech):
    m, k, n = w.m, w.k, w.n
    reps = w.groups * w.count
    live = (m * k * n) > 0
    pm_ = jnp.maximum(m if pm is None else jnp.minimum(pm, m), 1.0)
    pn_ = jnp.maximum(n if pn is None else jnp.minimum(pn, n), 1.0)
    parts = jnp.where(live, reps * ceil_div(m, pm_) * ceil_div(n, pn_), 0.0)
    parts_pod = ceil_div(parts, p)
    pw = Workload(m=jnp.where(live, pm_, 0.0), k=k, n=jnp.where(live, pn_, 0.0), groups=jnp.ones_like(m),
                  count=jnp.ones_like(m), weight_bits=w.weight_bits, act_bits=w.act_bits,
                  weight_density=w.weight_density, act_density=w.act_density)
    sc = systolic_cost(pw, r, c, dataflow=dataflow, ifmap_buffer=bufs[0], filter_buffer=bufs[1],
                       ofmap_buffer=bufs[2], energy=energy)
    compute = parts_pod * sc.cycles

    link_words = tech.link_scale * (r + c)
    pod_side = jnp.sqrt(r * c * tech.pe_area_mm2)
    net = interconnect(kind, ports, link_words * tech.word_bits, pod_side, tech)
    has_net = ports > 1.0
    words_part = pw.m * k + k * pw.n + pw.m * pw.n
    serial = parts_pod * words_part / (link_words * net.efficiency)
    hops = jnp.where(live, net.hops, 0.0)
    transfer = jnp.where(has_net, hops + serial, 0.0)
    if overlap:
        cycles = jnp.where(has_net, jnp.maximum(compute, serial) + hops, compute)
    else:
        cycles = compute + transfer
    macs = reps * m * k * n
    pes = p * r * c
    util = macs / jnp.where(cycles > 0, pes * cycles, 1.0)

    mac_pj = energy.mac_pj(w.weight_bits, w.act_bits)
    density = w.weight_density * w.act_density if energy.zero_gating else 1.0
    active = macs * density
    pe_e = mac_pj * (active + tech.idle_fraction * jnp.maximum(pes * cycles - active, 0.0))
    sram_e = parts * sc.sram_energy
    words = jnp.where(has_net, parts * words_part, 0.0)
    bits = parts * (pw.m * k * w.act_bits + k * pw.n * w.weight_bits + pw.m * pw.n * w.act_bits)
    ic_e = jnp.where(has_net, bits, 0.0) * net.pj_per_bit
    static_e = net.static_w * cycles / tech.frequency_hz * 1e12
    area = pes * tech.pe_area_mm2 + net.area_mm2
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return MultiPodCost(cycles, compute, transfer, util, macs, parts, words, pe_e, sram_e, ic_e, static_e,
                        f32(pes), f32(area), f32(tech.frequency_hz))


def _check_design(name, x, *, relaxed, minimum=1.0):
    if isinstance(x, bool) or not isinstance(x, (int, float, np.ndarray, np.generic, jax.Array)):
        raise TypeError(f"{name} must be a number or a 0-d array, got {type(x).__name__}")
    if np.ndim(x) != 0:
        raise ValueError(f"{name} must be a scalar (one design); got shape {np.shape(x)}. "
                         "Evaluate many designs with jax.vmap over it.")
    if isinstance(x, jax.core.Tracer):
        return
    v = float(np.asarray(x))
    if not np.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {v!r}")
    if not relaxed and not v.is_integer():
        raise ValueError(f"{name} must be an integer for the exact cost, got {v!r}; use relaxed=True "
                         "for non-integer rows / cols / pods")


def _check_common(workload, dataflow, interconnect_kind, energy, tech, relaxed, overlap, partition_m,
                  partition_n):
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a jaxrob.hw Workload (make_workload(...)), got "
                        f"{type(workload).__name__}")
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {', '.join(map(repr, DATAFLOWS))}; got {dataflow!r}")
    if interconnect_kind not in INTERCONNECTS:
        raise ValueError(f"interconnect must be one of {', '.join(map(repr, INTERCONNECTS))}; "
                         f"got {interconnect_kind!r}")
    for name, flag in (("relaxed", relaxed), ("overlap", overlap)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if not isinstance(energy, SystolicEnergy):
        raise TypeError(f"energy must be a SystolicEnergy, got {type(energy).__name__}")
    if not isinstance(tech, MultiPodTech):
        raise TypeError(f"tech must be a MultiPodTech, got {type(tech).__name__}")
    for name, x in (("partition_m", partition_m), ("partition_n", partition_n)):
        if x is not None:
            _check_design(name, x, relaxed=False)
    _check_workload(workload)


def multipod_cost(workload: Workload, rows: jax.typing.ArrayLike, cols: jax.typing.ArrayLike,
                  pods: jax.typing.ArrayLike, *, interconnect: str = "butterfly", dataflow: str = "os",
                  partition_m: jax.typing.ArrayLike | None = None,
                  partition_n: jax.typing.ArrayLike | None = None, overlap: bool = False,
                  ifmap_buffer: jax.typing.ArrayLike = 65536.0, filter_buffer: jax.typing.ArrayLike = 65536.0,
                  ofmap_buffer: jax.typing.ArrayLike = 65536.0, energy: SystolicEnergy = SystolicEnergy(),
                  tech: MultiPodTech = MultiPodTech(), relaxed: bool = False,
                  network_ports: jax.typing.ArrayLike | None = None) -> MultiPodCost:
    """Latency, utilization and energy of a workload on ``pods`` pods of ``rows x cols`` PEs (single tenancy).

    One layer at a time runs on all pods; see the module docstring for tiling, interconnect
    and power formulas.  Pure ``jnp``: jit it and ``vmap`` it over ``rows``, ``cols``,
    ``pods`` and the partition sizes; differentiate the relaxed cost with respect to
    ``rows``, ``cols``, ``pods`` and the workload's bit-widths and densities.

    Args:
      workload: the layers, fields ``(L,)``.
      rows, cols: pod height ``R`` and width ``C`` (scalars >= 1; integers unless ``relaxed``).
      pods: number of pods ``P`` (scalar >= 1; integer unless ``relaxed``).
      interconnect: ``"crossbar"``, ``"butterfly"``, ``"benes"`` or ``"mesh"``.
      dataflow: each pod's dataflow (``"os"``, ``"ws"``, ``"is"``).
      partition_m, partition_n: SOSA's custom partition size along ``M`` and ``N`` (integer
        scalars >= 1, may be traced), or ``None`` for no cut; e.g. ``rows`` and ``cols`` give one
        output-stationary fold per partition.
      overlap: double-buffered transfers (latency ``max(compute, serialization) + hops``)
        instead of ``compute + transfer``.
      ifmap_buffer, filter_buffer, ofmap_buffer: each pod's SRAM buffers (words).
      energy: per-MAC and SRAM energies (:class:`~jaxrob.hw._systolic.SystolicEnergy`).
      tech: :class:`MultiPodTech`.
      relaxed: trilinear :func:`~jaxrob.hw._smooth.interp_int` over ``(rows, cols, pods)``.
      network_ports: size of the network when it is larger than ``pods`` (multi-tenancy);
        default ``pods``.

    Returns:
      A :class:`MultiPodCost` with ``(L,)`` per-layer fields.

    Example:
      >>> from jaxrob.hw._workload import make_workload
      >>> w = make_workload(m=[64], k=[8], n=[8])
      >>> c = multipod_cost(w, 8, 8, 4, partition_m=8, partition_n=8)
      >>> int(c.compute_cycles[0])     # 8 folds over 4 pods: 2 folds of 8 + 8 + 8 - 2 cycles
      44

    References:
      Yuzuguler et al., "Scale-out Systolic Arrays", ACM TACO 2023, arXiv:2203.11540.
    """
    _check_common(workload, dataflow, interconnect, energy, tech, relaxed, overlap, partition_m, partition_n)
    for name, x in (("rows", rows), ("cols", cols), ("pods", pods)):
        _check_design(name, x, relaxed=relaxed)
    if network_ports is not None:
        _check_design("network_ports", network_ports, relaxed=relaxed)
    for name, x in (("ifmap_buffer", ifmap_buffer), ("filter_buffer", filter_buffer),
                    ("ofmap_buffer", ofmap_buffer)):
        _check_design(name, x, relaxed=True, minimum=0.0)
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)  # noqa: E731
    bufs = tuple(f32(b) for b in (ifmap_buffer, filter_buffer, ofmap_buffer))
    pm, pn = f32(partition_m), f32(partition_n)
    ports_fixed = f32(network_ports)

    def exact(r, c, p):
        ports = p if ports_fixed is None else ports_fixed
        return _exact(workload, r, c, p, ports, pm, pn, dataflow, interconnect, overlap, bufs, energy, tech)

    if not relaxed:
        return exact(f32(rows), f32(cols), f32(pods))
    shapes = jax.eval_shape(exact, f32(rows), f32(cols), f32(pods))
    leaves = jax.tree.leaves(shapes)
    treedef = jax.tree.structure(shapes)

    def flat(r, c, p):
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(exact(r, c, p))])

    v = interp_int(flat, rows, cols, pods)
    out, start = [], 0
    for s in leaves:
        size = int(np.prod(s.shape))
        out.append(v[start:start + size].reshape(s.shape))
        start += size
    return jax.tree.unflatten(treedef, out)


class TenancyCost(NamedTuple):
    """Multi-tenant result: one :class:`MultiPodCost` per tenant and the accelerator's totals.

    Attributes:
      tenants: per-tenant costs (tuple).
      effective_throughput: sum of the tenants' ops/s.
      power_w: sum of the tenants' average powers (W).
      effective_throughput_per_watt: ``effective_throughput / power_w``.
    """

    tenants: tuple
    effective_throughput: jax.Array
    power_w: jax.Array
    effective_throughput_per_watt: jax.Array


def multi_tenant_cost(workloads: Sequence[Workload], pods: Sequence[jax.typing.ArrayLike],
                      rows: jax.typing.ArrayLike, cols: jax.typing.ArrayLike, *, interconnect: str = "butterfly",
                      relaxed: bool = False, **kwargs) -> TenancyCost:
    """Independent workloads on disjoint pod groups that share one network (multi-tenancy).

    Tenant ``i`` runs ``workloads[i]`` on its own ``pods[i]`` pods, one layer at a time, in a
    steady stream; the network has ``sum(pods)`` ports (hops, wire lengths, area and static
    power of the full network; the static power is split among tenants in proportion to
    their pods through their own latency, an approximation).  Throughputs and powers add.

    Args:
      workloads: one :class:`~jaxrob.hw._workload.Workload` per tenant.
      pods: pods per tenant (scalars >= 1).
      rows, cols: pod size.
      interconnect: network kind.
      relaxed: as in :func:`multipod_cost`.
      **kwargs: other keyword arguments of :func:`multipod_cost`.

    Returns:
      A :class:`TenancyCost`.

    References:
      Yuzuguler et al., "Scale-out Systolic Arrays", ACM TACO 2023, arXiv:2203.11540.
    """
    if isinstance(workloads, Workload) or not isinstance(workloads, (list, tuple)) or not workloads:
        raise TypeError("workloads must be a non-empty list or tuple of Workloads, one per tenant")
    if not isinstance(pods, (list, tuple)) or len(pods) != len(workloads):
        raise ValueError(f"pods must be a list or tuple with one pod count per tenant ({len(workloads)}), "
                         f"got {pods!r}")
    if "network_ports" in kwargs:
        raise TypeError("multi_tenant_cost sets network_ports to sum(pods); do not pass it")
    total = sum(jnp.asarray(p, jnp.float32) for p in pods)
    costs = tuple(multipod_cost(w, rows, cols, p, interconnect=interconnect, relaxed=relaxed,
                                network_ports=total, **kwargs) for w, p in zip(workloads, pods))
    shares = [jnp.asarray(p, jnp.float32) / total for p in pods]
    tput = sum(c.effective_throughput for c in costs)
    # Each tenant's static energy is the whole network's leakage over its latency; keep its share only.
    power = sum(c.power_w - (1.0 - s) * jnp.sum(c.static_energy) * 1e-12
                / jnp.maximum(c.total_cycles / c.frequency_hz, 1e-30) for c, s in zip(costs, shares))
    return TenancyCost(costs, tput, power, tput / jnp.where(power > 0, power, 1.0))
