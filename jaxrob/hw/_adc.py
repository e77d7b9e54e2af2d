"""Crossbar ADC energy and latency as a function of precision, and of the column sparsity that sets it.

In an analog in-memory (crossbar) accelerator every crossbar column sums up to ``rows``
products ``input x weight cell`` and an ADC digitises the sum.  Three pieces:

**ADC energy / latency per conversion vs precision** (:func:`adc_energy`,
:func:`adc_latency`).  The per-column fits of DNN NeuroSim V1.3 (read from its public
source, ``Inference_pytorch/NeuroSIM/SarADC.cpp`` and ``MultilevelSenseAmp.cpp``), with
``b`` bits, ``L = 2**b`` levels and an optional column-conductance term ``G`` (siemens;
NeuroSim's ``0.128483 * exp(-2.321 log10 R_col)`` is ``0.128483 * G**(2.321 / ln 10)`` W):

* SAR:   ``P = (s1 * b + s0) uW + g_sar * G**e``,  ``t = (b + 1) ns`` (one comparison per
  bit plus sampling), ``E = P * t``;
* flash: ``P = f * (L - 1) uW + g_flash * G**e`` (``L - 1`` comparators, NeuroSim's
  current-mode multilevel sense amplifier), ``t = 1 ns`` (high-performance roadmap),
  ``E = P * t``;

both times ``1 + 1.3e-3 (T - 300 K)``.  Energies are returned in pJ, latencies in ns.  The
65 nm and 45 nm high-performance (HP) constants are in :data:`NEUROSIM_65NM_HP` and
:data:`NEUROSIM_45NM_HP`.  Differences from NeuroSim: NeuroSim sets a fixed 1 uW for a column
of infinite resistance (no current); here ``G = 0`` (the default) just drops the conductance
term, so the fit is a function of the precision alone; NeuroSim rescales ``R`` by
``0.5 V / V_read`` -- pass the rescaled conductance.

**The precision a column needs** (:func:`column_bits`).  With ``n`` non-zero cells of
``cell_bits`` bits and inputs applied ``input_bits`` bits per read (bit-serial inputs:
1), the column sum lies in ``[0, n (2**input_bits - 1)(2**cell_bits - 1)]``, so a
lossless ADC needs ``ceil(log2(range + 1))`` bits (0 bits, no conversion, for ``n = 0``).
Relaxed (``relaxed=True``): the ceiling is dropped, ``log2(range + 1)``, which is equal to
the exact value wherever ``range + 1`` is a power of two and within one bit below it
elsewhere (the tests check both).  ``saturate=True`` is the other common convention: the
ADC has ``range`` levels and the single all-ones sum saturates onto the level below,
``ceil(log2 range)`` bits (at least 1 for a used column; relaxed: ``max(log2 range, 1)``,
linear on ``[0, 1]``).  The choice matters: a dense column of ``2**k`` cells sits one level
past a bit boundary in the lossless count, so removing a single non-zero from *every*
column of a crossbar saves a bit there, while under saturation a crossbar only gains a bit
when its densest column halves.

Consistency with :func:`jaxrob.prune.crossbar_report` (D.U.B.): that report gives a
crossbar whose densest column has ``n`` cells ``ceil(log2 n) + adc_bits - log2(rows)``
bits.  For binary inputs and cells this is ours with ``saturate=True`` exactly when
``adc_bits = log2(rows)`` (for every ``n >= 2``), and, for ``n`` a power of two (D.U.B.'s
levels), the lossless count exactly when ``adc_bits = log2(rows) + 1``; the report's
default ``log2(rows) + 2`` (the D.U.B. authors' code) keeps one bit more.

**Crossbar mapping** of a :class:`~jaxrob.hw.Workload` (:func:`crossbar_adc_cost`) or of
actual weight matrices (:func:`weight_adc_cost`).  A layer's ``(K x N)`` weight matrix
(per group) has ``K`` rows (inputs) and ``N * ceil(weight_bits / cell_bits)`` cell
columns, cut into ``rows x cols`` crossbars (the last grid row / column partial, as
:func:`jaxrob.prune.crossbar_tiles`).  One ADC precision serves every column of a crossbar
(``shared=True``, the D.U.B. assumption), set by its densest column; ``shared=False``
gives each column its own precision (a per-column variable-resolution ADC).  Every
crossbar read converts every real column once; a layer does
``count * groups * M * ceil(act_bits / input_bits)`` reads of each of its crossbars (one
per input vector and input bit slice).  Activation sparsity does not remove conversions
(the ADC still fires), so ADC energy depends on weight sparsity only.

Where the weights are known only through a density ``d`` (a Workload), two sparsity
structures are modelled:

* ``"unstructured"``: every cell is non-zero independently with probability ``d``; a
  column of ``r`` rows then holds ``Binomial(r, d)`` non-zeros and a crossbar of ``c``
  columns is set by the maximum of ``c`` such counts, whose law is
  ``P(max <= k) = F(k)**c``.  The cost is the *expectation* of the ADC energy over that
  law -- a smooth function of ``d``, no relaxation needed, and exactly the reason
  unstructured pruning saves little ADC energy (the densest of 64 columns stays dense);
* ``"balanced"``: every column holds exactly ``d * r`` non-zeros (D.U.B., N:M along
  columns); ``ceil(d * r)`` exact, ``d * r`` with the relaxed bits when ``relaxed``.

Bit-widths enter through ceilings (cell columns per weight, input slices); the relaxed
cost is :func:`jaxrob.hw._smooth.interp_int` of the exact cost over
``(weight_bits, act_bits)``, equal to it at integer bit-widths.

References:
  Peng, Huang, Jiang, Lu, Yu, "DNN+NeuroSim V2.0: An End-to-end Benchmarking Framework for
  Compute-in-Memory Accelerators for On-chip Training", IEEE TCAD 2021, arXiv:2003.06471;
  ADC fits read from the public DNN_NeuroSim_V1.3 source (github.com/neurosim/DNN_NeuroSim_V1.3).
  Ibrayev, Garg, Chakraborty, Roy, "Pruning for Improved ADC Efficiency in Crossbar-based
  Analog In-memory Accelerators", arXiv:2403.13082 (2024) (column sparsity -> ADC precision).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.hw._smooth import ceil_div, floor_div, interp_int
from jaxrob.hw._workload import Workload

__all__ = [
    "AdcCost", "AdcTech", "NEUROSIM_45NM_HP", "NEUROSIM_65NM_HP", "adc_energy", "adc_latency", "column_bits",
    "column_max_pmf", "crossbar_adc_cost", "weight_adc_cost",
]

KINDS = ("sar", "flash")
SPARSITY = ("unstructured", "balanced")


class AdcTech(NamedTuple):
    """Per-column ADC fit constants (NeuroSim V1.3 form; see the module docstring).

    Attributes:
      node_nm: technology node (documentation only).
      sar_uw_per_bit, sar_uw: SAR power ``sar_uw_per_bit * b + sar_uw`` in uW.
      flash_uw_per_comparator: flash power per comparator (``2**b - 1`` of them) in uW.
      sar_g_w, flash_g_w: conductance-term coefficients in W (at ``G = 1`` S).
      g_log10_slope: NeuroSim's ``exp(-slope * log10 R)``; the term is ``coef * G**(slope / ln 10)``.
      sar_ns_per_cycle: SAR cycle time (``b + 1`` cycles per conversion).
      flash_ns: flash conversion time.
      temp_coef: relative power increase per kelvin above 300 K.
    """

    node_nm: int = 65
    sar_uw_per_bit: float = 2.9503
    sar_uw: float = 22.047
    flash_uw_per_comparator: float = 9.9579
    sar_g_w: float = 0.128483
    flash_g_w: float = 0.1083
    g_log10_slope: float = 2.321
    sar_ns_per_cycle: float = 1.0
    flash_ns: float = 1.0
    temp_coef: float = 1.3e-3


#: NeuroSim V1.3, 65 nm high-performance roadmap (``SarADC.cpp``, ``MultilevelSenseAmp.cpp`` current mode).
NEUROSIM_65NM_HP = AdcTech()
#: NeuroSim V1.3, 45 nm high-performance roadmap.
NEUROSIM_45NM_HP = AdcTech(node_nm=45, sar_uw_per_bit=2.1843, sar_uw=11.931, flash_uw_per_comparator=7.7017,
                           sar_g_w=0.097754, flash_g_w=0.0754, g_log10_slope=2.296)


class AdcCost(NamedTuple):
    """Per-layer ADC cost, all ``(L,)`` float32.

    Attributes:
      energy_pj: ADC energy per forward pass (pJ).
      latency_ns: ADC conversion time per forward pass with the layer's crossbars working in
        parallel and ``columns_per_adc`` columns sharing one ADC (ns).
      conversions: ADC conversions per forward pass.
      bits: mean ADC precision over the conversions (expected, for unstructured sparsity).
    """

    energy_pj: jax.Array
    latency_ns: jax.Array
    conversions: jax.Array
    bits: jax.Array


def _check_tech(tech: Any) -> AdcTech:
    if not isinstance(tech, AdcTech):
        raise TypeError(f"tech must be an AdcTech (e.g. NEUROSIM_65NM_HP), got {type(tech).__name__}")
    return tech


def _nonneg(name: str, x: Any) -> None:
    if _validate.is_concrete(x):
        a = np.asarray(x, np.float64)
        if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got values in [{a.min()}, {a.max()}]")


def adc_energy(bits: jax.typing.ArrayLike, *, kind: str = "sar", tech: AdcTech = NEUROSIM_65NM_HP,
               column_conductance: jax.typing.ArrayLike = 0.0,
               temperature: jax.typing.ArrayLike = 300.0) -> jax.Array:
    """Energy of one ADC conversion (pJ) at precision ``bits`` (NeuroSim V1.3 fits).

    Args:
      bits: precision ``b``, any shape, real ``>= 0`` (the fits are continuous in ``b``).
      kind: ``"sar"`` or ``"flash"``.
      tech: the constants (:data:`NEUROSIM_65NM_HP` default, :data:`NEUROSIM_45NM_HP`).
      column_conductance: the column's conductance ``G`` in S (0: no conductance term).
      temperature: in K (NeuroSim's ``1 + 1.3e-3 (T - 300)`` factor).

    Returns:
      pJ per conversion, the broadcast shape of the inputs.

    Example:
      >>> round(float(adc_energy(5.0, kind="sar")), 4)   # (2.9503*5 + 22.047) uW * 6 ns
      0.2208
    """
    _validate.choice("kind", kind, KINDS)
    tech = _check_tech(tech)
    _nonneg("bits", bits)
    _nonneg("column_conductance", column_conductance)
    b = jnp.asarray(bits, jnp.float32)
    g = jnp.asarray(column_conductance, jnp.float32)
    gterm = jnp.where(g > 0, jnp.power(jnp.where(g > 0, g, 1.0), tech.g_log10_slope / math.log(10.0)), 0.0)
    temp = 1.0 + tech.temp_coef * (jnp.asarray(temperature, jnp.float32) - 300.0)
    if kind == "sar":
        power_uw = tech.sar_uw_per_bit * b + tech.sar_uw + 1e6 * tech.sar_g_w * gterm
    else:
        power_uw = tech.flash_uw_per_comparator * (jnp.exp2(b) - 1.0) + 1e6 * tech.flash_g_w * gterm
    return 1e-3 * power_uw * adc_latency(b, kind=kind, tech=tech) * temp      # uW * ns = 1e-3 pJ


def adc_latency(bits: jax.typing.ArrayLike, *, kind: str = "sar", tech: AdcTech = NEUROSIM_65NM_HP) -> jax.Array:
    """Time of one ADC conversion (ns): SAR ``(b + 1)`` cycles, flash one ``flash_ns`` step.

    Example:
      >>> float(adc_latency(6.0, kind="sar")), float(adc_latency(6.0, kind="flash"))
      (7.0, 1.0)
    """
    _validate.choice("kind", kind, KINDS)
    tech = _check_tech(tech)
    b = jnp.asarray(bits, jnp.float32)
    if kind == "sar":
        return tech.sar_ns_per_cycle * (b + 1.0)
    return jnp.full(b.shape, tech.flash_ns, jnp.float32)


def _bits(n: jax.Array, input_bits: jax.Array, cell_bits: jax.Array, relaxed: bool,
          saturate: bool = False) -> jax.Array:
    levels = (jnp.exp2(input_bits) - 1.0) * (jnp.exp2(cell_bits) - 1.0)
    if relaxed:
        x = n * levels
        if saturate:            # x on [0, 1], then max(log2 x, 1): exact at x = 0 and at powers of two
            return jnp.where(x < 1.0, x, jnp.maximum(jnp.log2(jnp.maximum(x, 1.0)), 1.0))
        return jnp.log2(x + 1.0)
    rng = jnp.round(jnp.ceil(n) * levels)
    if saturate:                # ceil(log2 r) = bit length of r - 1, at least 1 bit for a used column
        return jnp.where(rng > 0, jnp.maximum(jnp.frexp(jnp.maximum(rng - 1.0, 0.0))[1], 1), 0).astype(jnp.float32)
    # ceil(log2(r + 1)) == bit length of the integer r == frexp's exponent (exact in floating point)
    return jnp.frexp(rng)[1].astype(jnp.float32)


def column_bits(nonzeros: jax.typing.ArrayLike, *, input_bits: jax.typing.ArrayLike = 1,
                cell_bits: jax.typing.ArrayLike = 1, relaxed: bool = False, saturate: bool = False) -> jax.Array:
    """ADC precision a crossbar column with ``nonzeros`` non-zero cells needs to be lossless.

    ``ceil(log2(n * (2**input_bits - 1) * (2**cell_bits - 1) + 1))`` with ``n`` rounded up to
    an integer; 0 for ``n = 0``.  ``relaxed=True`` drops the ceilings: ``log2(n * ... + 1)``,
    exact where the argument is a power of two, at most one bit lower elsewhere.

    Args:
      nonzeros: ``n``, any shape, ``>= 0`` (a real expected count is allowed).
      input_bits: input bits applied per read (1 for bit-serial inputs), integers ``>= 1``.
      cell_bits: bits stored per crossbar cell, integers ``>= 1``.
      relaxed: smooth version.
      saturate: ``ceil(log2 range)`` bits (the top sum saturates) instead of ``ceil(log2(range + 1))``.

    Returns:
      float32 bits, the broadcast shape.

    Example:
      >>> column_bits(jnp.array([0, 1, 2, 3, 64, 128])).tolist()
      [0.0, 1.0, 2.0, 2.0, 7.0, 8.0]
    """
    _nonneg("nonzeros", nonzeros)
    for name, v in (("input_bits", input_bits), ("cell_bits", cell_bits)):
        if _validate.is_concrete(v):
            a = np.asarray(v, np.float64)
            if a.size and (a.min() < 1 or not np.all(a == np.round(a))):
                raise ValueError(f"{name} must be integers >= 1, got {v!r}")
    if not isinstance(relaxed, bool):
        raise TypeError(f"relaxed must be a bool, got {relaxed!r}")
    if not isinstance(saturate, bool):
        raise TypeError(f"saturate must be a bool, got {saturate!r}")
    return _bits(jnp.asarray(nonzeros, jnp.float32), jnp.asarray(input_bits, jnp.float32),
                 jnp.asarray(cell_bits, jnp.float32), relaxed, saturate)


def column_max_pmf(rows: int, r: jax.typing.ArrayLike, c: jax.typing.ArrayLike,
                   density: jax.typing.ArrayLike) -> jax.Array:
    """Law of the largest non-zero count among ``c`` columns of ``r`` i.i.d. Bernoulli(``density``) cells.

    ``P(max = k)`` for ``k = 0 .. rows`` (``rows >= r``: the static support size), from
    ``P(max <= k) = F(k)**c`` with the binomial CDF ``F``.  Differentiable in ``density``
    (on ``(0, 1)``; at 0 and 1 the law is a point mass and the gradient is taken as 0).

    Args:
      rows: static support bound (the crossbar's rows), a Python int.
      r: rows holding weights, ``0 <= r <= rows`` (any shape ``S``; integer-valued).
      c: columns, ``>= 1`` (shape broadcastable to ``S``).
      density: per-cell non-zero probability in ``[0, 1]`` (broadcastable to ``S``).

    Returns:
      ``S + (rows + 1,)`` probabilities summing to 1 along the last axis.
    """
    rows = _validate.number("rows", rows, min=0, integer=True)
    return _max_pmf(rows, jnp.asarray(r, jnp.float32), jnp.asarray(c, jnp.float32),
                    jnp.asarray(density, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _max_pmf(rows: int, r: jax.Array, c: jax.Array, d: jax.Array) -> jax.Array:
    r, c, d = jnp.broadcast_arrays(r, c, d)
    k = jnp.arange(rows + 1, dtype=jnp.float32)
    r_, c_, d_ = r[..., None], c[..., None], d[..., None]
    inside = (d_ > 0) & (d_ < 1)
    ds = jnp.where(inside, d_, 0.5)
    valid = k <= r_
    # log pmf(k) = r log(1 - d) + sum_{j < k} log[(r - j) / (j + 1) * d / (1 - d)]: a short float32 cumsum of
    # O(1) terms, more accurate than differences of large lgamma values
    j = k[:-1]
    steps = jnp.log(jnp.maximum(r_ - j, 1.0)) - jnp.log(j + 1.0) + jnp.log(ds) - jnp.log1p(-ds)
    logpmf = r_ * jnp.log1p(-ds) + jnp.concatenate([jnp.zeros_like(r_), jnp.cumsum(steps, axis=-1)], axis=-1)
    pmf = jnp.where(valid, jnp.exp(logpmf), 0.0)
    pmf = pmf / jnp.sum(pmf, axis=-1, keepdims=True)
    lower = jnp.cumsum(pmf, axis=-1)                                           # F(k)
    upper = jnp.cumsum(pmf[..., ::-1], axis=-1)[..., ::-1] - pmf              # 1 - F(k), accurate in the tail
    log_f = jnp.where(lower < 0.5, jnp.log(jnp.where(lower > 0, lower, 1.0)), jnp.log1p(-jnp.minimum(upper, 0.5)))
    log_f = jnp.where((lower > 0) | (lower >= 0.5), log_f, -jnp.inf)
    log_f = jnp.where(k >= r_, 0.0, log_f)
    le = jnp.exp(jnp.maximum(c_, 1.0) * log_f)                                # P(max <= k) = F(k)**c
    le = jnp.where(d_ <= 0, 1.0, jnp.where(d_ >= 1, jnp.where(k >= r_, 1.0, 0.0), le))
    return jnp.diff(le, axis=-1, prepend=0.0)


def _parse_crossbar(crossbar: Any) -> tuple[int, int]:
    if isinstance(crossbar, (int, np.integer)) and not isinstance(crossbar, bool):
        crossbar = (int(crossbar), int(crossbar))
    if not (isinstance(crossbar, (tuple, list)) and len(crossbar) == 2):
        raise TypeError(f"crossbar must be an int n (n x n) or a pair (rows, cols), got {crossbar!r}")
    rows = _validate.number("crossbar rows", crossbar[0], min=1, integer=True)
    cols = _validate.number("crossbar cols", crossbar[1], min=1, integer=True)
    return rows, cols


def _layer_cost(wl: Workload, wb: jax.Array, ab: jax.Array, *, rows: int, cols: int, kind: str, sparsity: str,
                input_bits: int, cell_bits: int, shared: bool, columns_per_adc: int, tech: AdcTech,
                conductance: Any, relaxed: bool, saturate: bool) -> AdcCost:
    """Exact cost at (integer-valued) ``wb``, ``ab``; every other input continuous."""
    f32 = jnp.float32
    K, Nw = wl.k, wl.n
    cells = ceil_div(wb, cell_bits)
    ncols = Nw * cells
    gr_full = floor_div(K, rows)
    r_last = K - gr_full * rows
    gc_full = floor_div(ncols, cols)
    c_last = ncols - gc_full * cols
    # crossbar types (r, c, how many): full x full, full x partial, partial x full, partial x partial
    r_t = jnp.stack([jnp.full_like(K, rows), jnp.full_like(K, rows), r_last, r_last], -1)
    c_t = jnp.stack([jnp.full_like(K, cols), c_last, jnp.full_like(K, cols), c_last], -1)
    n_t = jnp.stack([gr_full * gc_full, gr_full * (c_last > 0), (r_last > 0) * gc_full,
                     (r_last > 0) * (c_last > 0)], -1).astype(f32)
    n_t = jnp.where((r_t > 0) & (c_t > 0), n_t, 0.0)
    d = wl.weight_density[:, None]
    ib = jnp.asarray(input_bits, f32)
    cb = jnp.asarray(cell_bits, f32)

    def energy_of(b):
        return jnp.where(b > 0, adc_energy(b, kind=kind, tech=tech, column_conductance=conductance), 0.0)

    def latency_of(b):
        return jnp.where(b > 0, adc_latency(b, kind=kind, tech=tech), 0.0)

    if sparsity == "unstructured":
        k = jnp.arange(rows + 1, dtype=f32)
        bk = _bits(k, ib, cb, False, saturate)
        pmf = _max_pmf(rows, r_t, c_t if shared else jnp.ones_like(c_t), d)      # (L, 4, rows+1)
        e_conv = jnp.sum(pmf * energy_of(bk), -1)               # expected energy per conversion
        t_conv = jnp.sum(pmf * latency_of(bk), -1)
        b_conv = jnp.sum(pmf * bk, -1)
    else:
        b_conv = _bits(d * r_t, ib, cb, relaxed, saturate)
        e_conv = energy_of(b_conv)
        t_conv = latency_of(b_conv)
    slices = ceil_div(ab, input_bits)
    reads = wl.count * wl.groups * wl.m * slices                           # reads of each crossbar
    conv_per_read = jnp.sum(n_t * c_t, -1)
    energy = reads * jnp.sum(n_t * c_t * e_conv, -1)
    conversions = reads * conv_per_read
    bits = jnp.sum(n_t * c_t * b_conv, -1) / jnp.maximum(conv_per_read, 1.0)
    # the crossbars of a layer work in parallel: a read takes the slowest crossbar type's conversions
    latency = reads * columns_per_adc * jnp.max(jnp.where(n_t > 0, t_conv, 0.0), -1)
    return AdcCost(energy, latency, conversions, bits)


def crossbar_adc_cost(workload: Workload, *, crossbar: Any = 128, kind: str = "sar", sparsity: str = "unstructured",
                      input_bits: int = 1, cell_bits: int = 1, shared: bool = True, columns_per_adc: int = 1,
                      tech: AdcTech = NEUROSIM_65NM_HP, column_conductance: jax.typing.ArrayLike = 0.0,
                      relaxed: bool = False, saturate: bool = False) -> AdcCost:
    """Per-layer ADC energy, latency and conversions of a workload mapped onto crossbars.

    See the module docstring for the mapping and the two sparsity models.  Pure ``jnp`` in
    the workload's arrays (jit / vmap over workloads or ``column_conductance``);
    differentiable in ``weight_density`` (both models; relaxed bits for ``"balanced"``) and,
    with ``relaxed=True``, in ``weight_bits`` / ``act_bits`` (interpolation between integer
    bit-widths).

    Args:
      workload: a :class:`~jaxrob.hw.Workload` (``act_density`` is not used: zero inputs still convert).
      crossbar: ``n`` or ``(rows, cols)``.
      kind: ``"sar"`` or ``"flash"``.
      sparsity: ``"unstructured"`` (expected cost over i.i.d. zeros) or ``"balanced"`` (every
        column ``density * rows`` non-zeros).
      input_bits: input bits applied per read (1: bit-serial), ``>= 1``.
      cell_bits: bits per cell (a weight of ``b`` bits spans ``ceil(b / cell_bits)`` columns), ``>= 1``.
      shared: one precision per crossbar (its densest column) or one per column.
      columns_per_adc: columns multiplexed onto one ADC (latency only), ``>= 1``.
      tech: ADC constants.
      column_conductance: see :func:`adc_energy`.
      relaxed: smooth in the bit-widths (and in the balanced-column bits).
      saturate: see :func:`column_bits`.

    Returns:
      An :class:`AdcCost` of ``(L,)`` arrays.

    Example:
      >>> from jaxrob.hw._workload import make_workload
      >>> wl = make_workload([100.0], [128.0], [64.0], weight_bits=1, act_bits=1)
      >>> c = crossbar_adc_cost(wl, crossbar=128)
      >>> float(c.conversions[0]), float(c.bits[0])      # 100 reads x 64 columns at 8 bits
      (6400.0, 8.0)
    """
    rows, cols = _parse_crossbar(crossbar)
    _validate.choice("kind", kind, KINDS)
    _validate.choice("sparsity", sparsity, SPARSITY)
    input_bits = _validate.number("input_bits", input_bits, min=1, integer=True)
    cell_bits = _validate.number("cell_bits", cell_bits, min=1, integer=True)
    columns_per_adc = _validate.number("columns_per_adc", columns_per_adc, min=1, integer=True)
    for name, v in (("shared", shared), ("relaxed", relaxed), ("saturate", saturate)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    tech = _check_tech(tech)
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a jaxrob.hw Workload, got {type(workload).__name__}")
    for name in ("m", "k", "n", "groups", "count"):
        _nonneg(f"workload.{name}", getattr(workload, name))
    for name in ("weight_bits", "act_bits"):
        v = getattr(workload, name)
        if _validate.is_concrete(v) and np.size(v) and np.min(np.asarray(v)) < 1:
            raise ValueError(f"workload.{name} must be >= 1, got {np.asarray(v).tolist()}")
    if _validate.is_concrete(workload.weight_density):
        a = np.asarray(workload.weight_density)
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"workload.weight_density must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
    _nonneg("column_conductance", column_conductance)
    return _cost(workload, jnp.asarray(column_conductance, jnp.float32), rows=rows, cols=cols, kind=kind,
                 sparsity=sparsity, input_bits=input_bits, cell_bits=cell_bits, shared=shared,
                 columns_per_adc=columns_per_adc, tech=tech, relaxed=relaxed, saturate=saturate)


@functools.partial(jax.jit, static_argnames=("rows", "cols", "kind", "sparsity", "input_bits", "cell_bits", "shared",
                                             "columns_per_adc", "tech", "relaxed", "saturate"))
def _cost(workload: Workload, conductance: jax.Array, **kw: Any) -> AdcCost:
    wl = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), workload)
    if not kw["relaxed"]:
        return _layer_cost(wl, wl.weight_bits, wl.act_bits, conductance=conductance, **kw)
    # the four fields stacked (4, L), so interp_int evaluates the exact cost once per corner
    stacked = interp_int(lambda wb, ab: jnp.stack(_layer_cost(wl, wb, ab, conductance=conductance, **kw)),
                         wl.weight_bits, wl.act_bits)
    return AdcCost(*stacked)


def weight_adc_cost(w: jax.typing.ArrayLike, *, crossbar: Any = 128, kind: str = "sar", input_bits: int = 1,
                    cell_bits: int = 1, shared: bool = True, tech: AdcTech = NEUROSIM_65NM_HP,
                    column_conductance: jax.typing.ArrayLike = 0.0,
                    saturate: bool = False) -> tuple[jax.Array, jax.Array]:
    """ADC energy of one read of every crossbar holding a weight matrix, from its actual zeros.

    The kernel is mapped as :func:`jaxrob.prune.crossbar_matrix` does (rows = inputs, columns =
    outputs; one cell per weight: pass ``cell_bits`` = the stored bits per cell), cut into
    tiles by :func:`jaxrob.prune.crossbar_tiles`; non-zeros are counted per column per tile.

    Args:
      w: a kernel ``(in, out)`` or ``(*spatial, Cin, Cout)`` (or its mask).
      crossbar: ``n`` or ``(rows, cols)``; ``rows`` a power of two (D.U.B.'s convention).
      kind, input_bits, cell_bits, shared, tech, column_conductance, saturate: as :func:`crossbar_adc_cost`.

    Returns:
      ``(energy_pj, bits)``: the energy (pJ) of converting every real column of every used
      crossbar once, and the ``(grid_rows, grid_cols, cols)`` precision of every column (0 on
      padding columns and unused crossbars).  Multiply by reads (input vectors x input bit
      slices) for a per-inference figure.

    Example:
      >>> import jax.numpy as jnp
      >>> e, b = weight_adc_cost(jnp.ones((64, 4)).at[32:].set(0.0), crossbar=(64, 4))
      >>> b.max().item()                                  # 32 non-zeros per column
      6.0
    """
    from jaxrob.prune._dub import as_crossbar

    rows, cols = as_crossbar(crossbar)
    _validate.choice("kind", kind, KINDS)
    input_bits = _validate.number("input_bits", input_bits, min=1, integer=True)
    cell_bits = _validate.number("cell_bits", cell_bits, min=1, integer=True)
    for name, v in (("shared", shared), ("saturate", saturate)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    tech = _check_tech(tech)
    _nonneg("column_conductance", column_conductance)
    return _weight_cost(jnp.asarray(w), jnp.asarray(column_conductance, jnp.float32), rows=rows, cols=cols,
                        kind=kind, input_bits=input_bits, cell_bits=cell_bits, shared=shared, tech=tech,
                        saturate=saturate)


@functools.partial(jax.jit, static_argnames=("rows", "cols", "kind", "input_bits", "cell_bits", "shared", "tech",
                                             "saturate"))
def _weight_cost(w, conductance, *, rows, cols, kind, input_bits, cell_bits, shared, tech, saturate):
    from jaxrob.prune._dub import crossbar_matrix, crossbar_tiles

    n_out = crossbar_matrix(w).shape[1]
    tiles = crossbar_tiles(w != 0, crossbar=(rows, cols))
    counts = jnp.sum(tiles, axis=-2).astype(jnp.float32)                     # (gr, gc, cols)
    gc = counts.shape[1]
    real = (jnp.arange(gc)[:, None] * cols + jnp.arange(cols)[None, :]) < n_out
    counts = jnp.where(real[None], counts, 0.0)
    if shared:
        counts = jnp.broadcast_to(jnp.max(counts, -1, keepdims=True), counts.shape)
    bits = jnp.where(real[None], _bits(counts, jnp.float32(input_bits), jnp.float32(cell_bits), False, saturate),
                     0.0)
    e = jnp.where(bits > 0, adc_energy(bits, kind=kind, tech=tech, column_conductance=conductance), 0.0)
    return jnp.sum(e), bits
