"""Cost of a workload on one ``R x C`` systolic array: cycles, utilization, SRAM/DRAM traffic, energy.

Every layer of a :class:`~jaxrob.hw._workload.Workload` is ``groups`` independent GEMMs
``(M x K) @ (K x N)`` run ``count`` times; the array runs them one after another, so the
per-GEMM costs below are multiplied by ``groups * count`` (no packing of small groups
side by side on the array).

**Compute cycles** follow SCALE-Sim's compute model (read from the source of ``scalesim``
3.0.0, ``scalesim/compute/systolic_compute_{os,ws,is}.py``: the length of the per-fold
demand matrices it feeds its memory simulator).  A dataflow maps the GEMM onto a spatial
``Sr x Sc`` grid that is folded onto the array, and a temporal dimension ``T``:

============  =====  =====  =====  ==================================
dataflow      Sr     Sc     T      cycles per fold
============  =====  =====  =====  ==================================
``"os"``      M      N      K      ``T + R + C - 2``
``"ws"``      K      N      M      ``2R + C + T - 2``
``"is"``      K      M      N      ``2R + C + T - 2``
============  =====  =====  =====  ==================================

``cycles = ceil(Sr / R) * ceil(Sc / C) * cycles_per_fold``.  Output stationary streams
``T`` operand pairs through a skewed array: ``T`` steps plus ``R - 1`` rows and ``C - 1``
columns of skew (fill and drain).  Weight / input stationary first shift the stationary
operand in (``R`` cycles), then stream ``T`` vectors with the same ``R - 1 + C - 1`` skew.
Folds do not overlap (SCALE-Sim drains each fold before the next).  WS and IS are the
published ``(2R + C + T - 2) * ceil(Sr / R) * ceil(Sc / C)``; SCALE-Sim's OS has no
stationary-operand load, hence ``T + R + C - 2`` per fold.  SCALE-Sim's
``COMPUTE_REPORT.csv`` "Total Cycles" is the index of the last busy cycle, i.e. these
cycles minus one per simulated layer, plus any memory stall cycles (zero with its
``InterfaceBandwidth: CALC`` setting); its "Total Cycles (incl. prefetch)" adds the
initial DRAM fill, which is not modelled here.  ``benchmarks/bench_systolic_vs_scalesim.py``
runs both side by side (ResNet-50 and MobileNetV2 layers, three array shapes, all three
dataflows: every cycle count equal up to that offset of one).

**Utilization** is ``MACs / (R * C * cycles)`` (SCALE-Sim's "Overall Util"), in
``(0, 1]`` for any non-empty layer; it is ``0`` for a layer with no work.

**SRAM accesses** (words) per GEMM, from the same demand matrices: each fold reads the
slice of each operand it needs, so an operand is re-read once per fold of the grid axis
it is not indexed by.

============  ====================  ====================  ==============================
dataflow      ifmap reads           filter reads          ofmap writes (+ reads)
============  ====================  ====================  ==============================
``"os"``      ``M K ceil(N / C)``   ``K N ceil(M / R)``   ``M N``
``"ws"``      ``M K ceil(N / C)``   ``K N``               ``M N ceil(K / R)``
``"is"``      ``M K``               ``K N ceil(M / C)``   ``M N ceil(K / R)``
============  ====================  ====================  ==============================

In WS/IS the ``ceil(K / R) - 1`` extra ofmap writes are partial sums; we also count the
same number of ofmap reads (read-modify-write of the partial sum), which SCALE-Sim does not
report.  SCALE-Sim's OS ofmap write count adds ``R + C`` per fold (it counts the shape of
the padded fold once more, ``systolic_compute_os.create_ofmap_demand_mat``); we do not.

**DRAM traffic** (words; our model, not SCALE-Sim's trace-driven one): an operand of
``S`` unique words that is swept ``p`` times (its SRAM re-read factor above) through a
buffer of ``B`` words is fetched ``S + (p - 1) * max(S - B, 0)`` times: once if it fits,
and the part that does not fit once per extra sweep.  Partial sums that do not fit in the
ofmap buffer spill: ``(q - 1) * max(M N - B_o, 0)`` extra writes and as many reads, with
``q = ceil(K / R)`` in WS/IS and ``q = 1`` in OS.  For a convolution the im2col ifmap
``M x K`` duplicates input pixels ``~kh * kw / stride**2`` times; pass the real ifmap size
as ``ifmap_words`` to use it as ``S`` for the ifmap.

**Energy** (pJ, dynamic only) from :class:`SystolicEnergy`: MACs times the per-MAC energy
at the layer's bit-widths (times ``weight_density * act_density`` with zero gating), SRAM
accesses times bits times a per-bit energy that grows with the buffer capacity, DRAM
words times bits times the DRAM per-bit energy.  Ifmap words carry ``act_bits``, filter
words ``weight_bits``, final ofmap words ``act_bits`` and partial sums ``acc_bits``.

**Relaxation.** The exact cost (``relaxed=False``) takes integer ``rows``/``cols``.  The
relaxed cost is :func:`jaxrob.hw._smooth.interp_int` of the exact cost over ``(rows,
cols)``: bilinear between the four neighbouring integer arrays, equal to the exact cost at
integer sizes, and its gradient with respect to ``rows``/``cols`` is the slope between
neighbouring designs.  Bit-widths, densities and buffer sizes enter continuously (the
``max(S - B, 0)`` above is piecewise linear) in both versions.

References:
  A. Samajdar, Y. Zhu, P. Whatmough, M. Mattina, T. Krishna, "SCALE-Sim: Systolic CNN
  Accelerator Simulator", arXiv:1811.02883 (2018); A. Samajdar et al., "A Systematic
  Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim", ISPASS
  2020; compute model as implemented in PyPI ``scalesim`` 3.0.0.
  M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014
  (45 nm energy figures of :class:`SystolicEnergy`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob.hw._smooth import interp_int
from jaxrob.hw._workload import Workload

DATAFLOWS = ("os", "ws", "is")


@dataclasses.dataclass(frozen=True)
class SystolicEnergy:
    """Per-operation energies (pJ) of a systolic array; defaults are 45 nm figures (Horowitz, ISSCC 2014).

    Horowitz's table (45 nm, 0.9 V): 8-bit integer multiply 0.2 pJ, 32-bit multiply 3.1 pJ
    (ratio 15.5, close to the ``(32/8)**2 = 16`` of an array multiplier, so the multiply
    energy here scales with ``weight_bits * act_bits``); 32-bit add 0.1 pJ, 8-bit add
    0.03 pJ (close to linear in width); a 64-bit SRAM access 10 pJ (8 kB), 20 pJ (32 kB),
    100 pJ (1 MB); a 64-bit DRAM access 1.3-2.6 nJ.  Derived here: the SRAM per-bit
    energy ``sram_pj_per_bit_8kb * (capacity_kB / 8) ** sram_size_exponent`` with exponent
    0.5 passes through the 8 kB and 32 kB points and is 13 % above the 1 MB one; the DRAM
    figure is the middle of Horowitz's range, 1.95 nJ / 64 bits.  Register-to-register
    operand forwarding inside the array is folded into the MAC energy.

    Attributes:
      mult_pj_8b: energy of one 8 x 8-bit multiply; a ``bw x ba`` multiply costs
        ``mult_pj_8b * bw * ba / 64``.
      add_pj_32b: energy of one 32-bit add; the accumulator add costs
        ``add_pj_32b * acc_width / 32`` with ``acc_width = bw + ba + acc_guard_bits``.
      acc_guard_bits: extra accumulator bits beyond the product width.
      acc_bits: word width of partial sums moved to and from SRAM/DRAM.
      sram_pj_per_bit_8kb: SRAM energy per bit accessed for an 8 kB buffer (10 pJ / 64).
      sram_size_exponent: growth of the SRAM per-bit energy with capacity (0 = constant).
      dram_pj_per_bit: DRAM energy per bit transferred.
      zero_gating: if true, a MAC with a zero operand costs nothing (PEs clock-gated), so
        the MAC energy scales with ``weight_density * act_density``; cycles are unchanged.
    """

    mult_pj_8b: float = 0.2
    add_pj_32b: float = 0.1
    acc_guard_bits: float = 8.0
    acc_bits: float = 32.0
    sram_pj_per_bit_8kb: float = 10.0 / 64.0
    sram_size_exponent: float = 0.5
    dram_pj_per_bit: float = 1950.0 / 64.0
    zero_gating: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "zero_gating":
                if not isinstance(v, bool):
                    raise TypeError(f"SystolicEnergy.zero_gating must be a bool, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"SystolicEnergy.{f.name} must be a finite number >= 0, got {v!r}")

    def mac_pj(self, weight_bits: jax.Array, act_bits: jax.Array) -> jax.Array:
        """Energy of one multiply-accumulate at the given operand widths (broadcasting)."""
        acc_width = weight_bits + act_bits + self.acc_guard_bits
        return self.mult_pj_8b * weight_bits * act_bits / 64.0 + self.add_pj_32b * acc_width / 32.0

    def sram_pj_per_bit(self, capacity_bits: jax.Array) -> jax.Array:
        """SRAM energy per bit accessed for a buffer of ``capacity_bits`` bits."""
        kb = jnp.maximum(capacity_bits, 1.0) / 8192.0
        return self.sram_pj_per_bit_8kb * (kb / 8.0) ** self.sram_size_exponent


class SystolicCost(NamedTuple):
    """Cost of each layer of a workload on one systolic array; per-layer fields are ``(L,)``.

    Word counts are per layer (all ``groups * count`` GEMMs); energies are in pJ.

    Attributes:
      cycles: compute cycles including fill and drain.
      utilization: ``macs / (pes * cycles)`` in ``(0, 1]`` (0 for a layer without work).
      macs: multiply-accumulates (dense count).
      ifmap_sram_reads, filter_sram_reads: operand words read from SRAM into the array.
      ofmap_sram_writes, ofmap_sram_reads: output words written (final outputs and partial
        sums) and partial sums read back.
      ifmap_dram_reads, filter_dram_reads: words fetched from DRAM.
      ofmap_dram_writes, ofmap_dram_reads: output and spilled partial-sum words written to
        DRAM, and spilled partial sums read back.
      mac_energy, sram_energy, dram_energy: dynamic energy (pJ).
      pes: ``rows * cols`` (a scalar).
    """

    cycles: jax.Array
    utilization: jax.Array
    macs: jax.Array
    ifmap_sram_reads: jax.Array
    filter_sram_reads: jax.Array
    ofmap_sram_writes: jax.Array
    ofmap_sram_reads: jax.Array
    ifmap_dram_reads: jax.Array
    filter_dram_reads: jax.Array
    ofmap_dram_writes: jax.Array
    ofmap_dram_reads: jax.Array
    mac_energy: jax.Array
    sram_energy: jax.Array
    dram_energy: jax.Array
    pes: jax.Array

    @property
    def energy(self) -> jax.Array:
        """``(L,)`` total dynamic energy per layer (pJ)."""
        return self.mac_energy + self.sram_energy + self.dram_energy

    @property
    def total_cycles(self) -> jax.Array:
        """Cycles of the whole workload (layers run one after another)."""
        return jnp.sum(self.cycles, axis=-1)

    @property
    def total_energy(self) -> jax.Array:
        """Dynamic energy of the whole workload (pJ)."""
        return jnp.sum(self.energy, axis=-1)

    @property
    def total_utilization(self) -> jax.Array:
        """``sum(macs) / (pes * sum(cycles))`` (0 for an empty workload)."""
        busy = self.pes * self.total_cycles
        return jnp.sum(self.macs, axis=-1) / jnp.where(busy > 0, busy, 1.0)


def _ceil_div(a, b):
    """``ceil(a / b)`` for integer-valued floats, exact even where XLA turns ``/`` into a reciprocal multiply.

    ``49 / 7`` may come out as ``7.0000005`` (so ``ceil`` gives 8); the products below are exact
    for integers below ``2**24``, so one correction step each way restores the integer quotient.
    """
    q = jnp.ceil(a / b)
    q = jnp.where((q - 1.0) * b >= a, q - 1.0, q)
    return jnp.where(q * b < a, q + 1.0, q)


def _spill(size, passes, buffer):
    """DRAM words for ``size`` unique words swept ``passes`` times through ``buffer`` words."""
    return size + (passes - 1.0) * jnp.maximum(size - buffer, 0.0)


def _exact(w: Workload, rows, cols, dataflow, ifmap_buffer, filter_buffer, ofmap_buffer,
           energy: SystolicEnergy, ifmap_words):
    m, k, n = w.m, w.k, w.n
    r, c = rows, cols
    reps = w.groups * w.count
    if dataflow == "os":
        sr, sc, t = m, n, k
        per_fold = t + r + c - 2.0
    elif dataflow == "ws":
        sr, sc, t = k, n, m
        per_fold = 2.0 * r + c + t - 2.0
    else:  # "is"
        sr, sc, t = k, m, n
        per_fold = 2.0 * r + c + t - 2.0
    folds = _ceil_div(sr, r) * _ceil_div(sc, c)
    work = m * k * n
    # A GEMM with an empty dimension does nothing: no folds, no cycles, no traffic.
    cycles = reps * jnp.where(work > 0, folds * per_fold, 0.0)
    macs = reps * work
    pes = r * c
    utilization = macs / jnp.where(cycles > 0, pes * cycles, 1.0)

    mk, kn, mn = m * k, k * n, m * n
    if dataflow == "os":
        p_if, p_f, q = _ceil_div(n, c), _ceil_div(m, r), jnp.ones_like(m)
    elif dataflow == "ws":
        p_if, p_f, q = _ceil_div(n, c), jnp.ones_like(m), _ceil_div(k, r)
    else:
        p_if, p_f, q = jnp.ones_like(m), _ceil_div(m, c), _ceil_div(k, r)
    live = work > 0
    p_if, p_f, q = (jnp.where(live, x, 0.0) for x in (p_if, p_f, q))
    ifmap_sram = reps * mk * p_if
    filter_sram = reps * kn * p_f
    psum_extra = reps * mn * jnp.maximum(q - 1.0, 0.0)
    ofmap_sram_w = reps * mn * jnp.minimum(q, 1.0) + psum_extra
    ofmap_sram_r = psum_extra

    s_if = mk if ifmap_words is None else ifmap_words
    s_if = jnp.where(live, s_if, 0.0)
    ifmap_dram = reps * _spill(s_if, jnp.maximum(p_if, 1.0), ifmap_buffer)
    filter_dram = reps * jnp.where(live, _spill(kn, jnp.maximum(p_f, 1.0), filter_buffer), 0.0)
    psum_spill = reps * jnp.maximum(q - 1.0, 0.0) * jnp.maximum(mn - ofmap_buffer, 0.0)
    ofmap_dram_w = reps * mn * jnp.minimum(q, 1.0) + psum_spill
    ofmap_dram_r = psum_spill

    bw, ba, bacc = w.weight_bits, w.act_bits, energy.acc_bits
    density = w.weight_density * w.act_density if energy.zero_gating else 1.0
    mac_e = macs * density * energy.mac_pj(bw, ba)
    final_out = reps * mn * jnp.minimum(q, 1.0)
    sram_e = (ifmap_sram * ba * energy.sram_pj_per_bit(ifmap_buffer * ba)
              + filter_sram * bw * energy.sram_pj_per_bit(filter_buffer * bw)
              + (final_out * ba + (psum_extra + ofmap_sram_r) * bacc)
              * energy.sram_pj_per_bit(ofmap_buffer * bacc))
    dram_e = energy.dram_pj_per_bit * (ifmap_dram * ba + filter_dram * bw + final_out * ba
                                       + 2.0 * psum_spill * bacc)
    return SystolicCost(cycles, utilization, macs, ifmap_sram, filter_sram, ofmap_sram_w, ofmap_sram_r,
                        ifmap_dram, filter_dram, ofmap_dram_w, ofmap_dram_r, mac_e, sram_e, dram_e,
                        jnp.asarray(pes, jnp.float32))


def _check_scalar(name, x, *, integer):
    if isinstance(x, bool) or not isinstance(x, (int, float, np.ndarray, np.generic, jax.Array)):
        raise TypeError(f"{name} must be a number or a 0-d array, got {type(x).__name__}")
    if np.ndim(x) != 0:
        raise ValueError(f"{name} must be a scalar (one design); got shape {np.shape(x)}. "
                         "Evaluate many designs with jax.vmap over it.")
    if isinstance(x, jax.core.Tracer):
        return
    v = float(np.asarray(x))
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if name in ("rows", "cols"):
        if v < 1:
            raise ValueError(f"{name} must be >= 1 (processing elements), got {v!r}")
        if integer and not v.is_integer():
            raise ValueError(f"{name} must be an integer for the exact cost, got {v!r}; "
                             "use relaxed=True for non-integer array sizes")
    elif v < 0:
        raise ValueError(f"{name} must be >= 0 words, got {v!r}")


def systolic_cost(workload: Workload, rows: jax.typing.ArrayLike, cols: jax.typing.ArrayLike, *,
                  dataflow: str = "os", ifmap_buffer: jax.typing.ArrayLike = 65536.0,
                  filter_buffer: jax.typing.ArrayLike = 65536.0,
                  ofmap_buffer: jax.typing.ArrayLike = 65536.0,
                  energy: SystolicEnergy = SystolicEnergy(), ifmap_words: jax.typing.ArrayLike | None = None,
                  relaxed: bool = False) -> SystolicCost:
    """Cycles, utilization, SRAM/DRAM traffic and energy of a workload on an ``rows x cols`` array.

    See the module docstring for the model and its sources.  Pure ``jnp``: jit it, ``vmap``
    it over ``rows``/``cols``/buffer sizes (one design per call), and differentiate the
    relaxed cost with respect to ``rows``, ``cols``, buffer sizes and the workload's
    bit-widths and densities.

    Args:
      workload: the layers (:func:`jaxrob.hw._workload.make_workload`), fields ``(L,)``.
      rows, cols: array height ``R`` and width ``C`` (scalars, ``>= 1``; integers unless
        ``relaxed``).
      dataflow: ``"os"`` (output stationary), ``"ws"`` (weight stationary) or ``"is"``
        (input stationary).
      ifmap_buffer, filter_buffer, ofmap_buffer: SRAM buffer sizes in words (scalars).
      energy: per-operation energies (:class:`SystolicEnergy`, 45 nm defaults).
      ifmap_words: optional ``(L,)`` unique ifmap words per GEMM (e.g. ``H * W * Cin / groups``
        of a convolution) used for DRAM traffic instead of the im2col size ``M * K``.
      relaxed: bilinear interpolation over ``(rows, cols)`` between integer designs
        (:func:`jaxrob.hw._smooth.interp_int`); exact at integer sizes.

    Returns:
      A :class:`SystolicCost` with ``(L,)`` per-layer fields.

    Example:
      >>> from jaxrob.hw._workload import make_workload
      >>> w = make_workload(m=[16], k=[8], n=[4])
      >>> cost = systolic_cost(w, 4, 4, dataflow="os")
      >>> int(cost.cycles[0])          # ceil(16/4) * ceil(4/4) folds of 8 + 4 + 4 - 2 cycles
      56

    References:
      SCALE-Sim (Samajdar et al., arXiv:1811.02883; PyPI ``scalesim`` 3.0.0) for the compute
      model; Horowitz, ISSCC 2014 for the 45 nm energies.
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a jaxrob.hw Workload (make_workload(...)), got "
                        f"{type(workload).__name__}")
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {', '.join(map(repr, DATAFLOWS))}; got {dataflow!r}")
    if not isinstance(relaxed, bool):
        raise TypeError(f"relaxed must be a bool, got {relaxed!r}")
    if not isinstance(energy, SystolicEnergy):
        raise TypeError(f"energy must be a SystolicEnergy, got {type(energy).__name__}")
    for name, x in (("rows", rows), ("cols", cols), ("ifmap_buffer", ifmap_buffer),
                    ("filter_buffer", filter_buffer), ("ofmap_buffer", ofmap_buffer)):
        _check_scalar(name, x, integer=not relaxed)
    if ifmap_words is not None and np.shape(ifmap_words) not in ((), np.shape(workload.m)):
        raise ValueError(f"ifmap_words must be a scalar or have the workload's shape {np.shape(workload.m)}, "
                         f"got {np.shape(ifmap_words)}")
    _check_workload(workload)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    bufs = tuple(f32(b) for b in (ifmap_buffer, filter_buffer, ofmap_buffer))
    words = None if ifmap_words is None else f32(ifmap_words)

    def exact(r, c):
        return _exact(workload, r, c, dataflow, *bufs, energy, words)

    if not relaxed:
        return exact(f32(rows), f32(cols))
    # interp_int takes a function returning one array: flatten the cost, interpolate, unflatten.
    shapes = jax.eval_shape(exact, f32(rows), f32(cols))
    treedef = jax.tree.structure(shapes)
    leaves = jax.tree.leaves(shapes)
    sizes = [int(np.prod(s.shape)) for s in leaves]

    def flat(r, c):
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(exact(r, c))])

    v = interp_int(flat, rows, cols)
    out, start = [], 0
    for s, size in zip(leaves, sizes):
        out.append(v[start:start + size].reshape(s.shape))
        start += size
    return jax.tree.unflatten(treedef, out)


def _check_workload(w: Workload) -> None:
    """Eager checks of a concrete workload's values (skipped under tracing)."""
    if any(isinstance(x, jax.core.Tracer) for x in w):
        return
    for name in ("m", "k", "n", "groups", "count"):
        a = np.asarray(getattr(w, name))
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or not np.all(a == np.round(a))):
            raise ValueError(f"workload.{name} must hold non-negative integers, got values in "
                             f"[{a.min()}, {a.max()}]")
    for name in ("weight_bits", "act_bits"):
        a = np.asarray(getattr(w, name))
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 1):
            raise ValueError(f"workload.{name} must be >= 1 bit, got a minimum of {a.min()}")
    for name in ("weight_density", "act_density"):
        a = np.asarray(getattr(w, name))
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1):
            raise ValueError(f"workload.{name} must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
