"""Sparsity on hardware: a zero-skipping accelerator, sparse weight formats, SparCE, SNN energy.

**Zero-skipping accelerator** (:func:`zero_skip_cost`).  The energy model of the sponge /
energy-latency attack literature's ASIC simulator (45 nm, Horowitz's figures): every
*non-zero* operand moved from DRAM costs ``e_dram`` = 1950 pJ and every *effective* MAC (both
operands non-zero) ``e_mac`` = 3.7 pJ (a 32-bit float multiply):

    ``E = e_dram * (nnz weights + nnz input activations + nnz output activations)
    + e_mac * MACs * d_w * d_a``,

per layer, with ``d_w`` / ``d_a`` the weight / input-activation densities of the
:class:`~jaxrob.hw.Workload` (expected counts: i.i.d. zeros).  Operands are stored
compressed, so only non-zeros move (the format's index overhead is not counted in this
model; :func:`format_bits` gives it).  Latency is ours (the energy model has none):
``effective MACs / macs_per_cycle + DRAM elements / dram_elems_per_cycle`` cycles (compute and
memory not overlapped), with the two throughputs in :class:`ZeroSkipTech`.  Input elements
are the GEMM's ``M x K`` (the im2col view, an upper bound for a convolution) unless
``input_elems`` gives the real feature-map sizes (e.g. from
:func:`conv_input_elems` of the layers' :class:`~jaxrob.hw.LayerInfo`).

The densities of a real model come from :func:`operand_densities`, which evaluates the
model's jaxpr on data and records, for every convolution / matrix product that depends on
the input, the fraction of non-zero entries of its activation and weight operands -- in the
layer order of :func:`jaxrob.hw._workload.extract`.
:func:`soft_density` is the smooth L0 surrogate ``x**2 / (x**2 + sigma)`` for gradients
(e.g. energy-latency attacks).

**Sparse weight formats** (:func:`format_bits` exact from a matrix, :func:`expected_format_bits`
from a density).  A matrix ``(R, C)`` with ``nnz`` non-zeros, ``v``-bit values (as
:func:`jaxrob.prune.crossbar_matrix`: rows = inputs, columns = outputs; scans go down a
column, the order in which sparsity-integrated IMC macros store a column's weights):

* ``dense``:   ``R C v``;
* ``bitmap``:  ``R C + nnz v`` (one presence bit per position);
* ``coo``:     ``nnz (v + ceil(log2 R) + ceil(log2 C))``;
* ``csr``:     ``nnz (v + ceil(log2 C)) + (R + 1) ceil(log2(R C + 1))`` (column index per
  value, one pointer per row plus one, wide enough for any count);
* ``csc``:     the same with ``R`` and ``C`` swapped (compressed along columns);
* ``rle``:     column-major run-length (Eyeriss style): entries ``(run, value)`` of
  ``run_bits + v`` bits; a run of ``z`` zeros before a non-zero needs
  ``floor(z / 2**run_bits)`` extra entries holding an explicit zero; trailing zeros cost
  nothing.  Expected, with ``q = 1 - d`` and ``B = 2**run_bits``: a non-zero at row ``i``
  of its column is preceded by ``>= jB`` zeros with probability ``q**(jB)`` (``jB <= i``), so
  ``E[entries] = C d (R + sum_{j=1}^{(R-1)//B} (R - jB) q**(jB))`` (exact for i.i.d. zeros);
* ``nm``:      N:M along columns: each group of ``M`` consecutive rows of a column keeps
  ``N`` slots of ``v + ceil(log2 M)`` bits: ``C ceil(R / M) N (v + ceil(log2 M))``; the
  exact count checks the matrix satisfies N:M.

**SparCE** (:func:`sparce_skip_fraction`, :func:`sparce_runtime`).  SparCE (Sen et al.)
detects at run time that a loaded operand is zero and skips, before fetching them, the
instructions that only serve to multiply-accumulate it.  The paper's model details could not
be retrieved here (only its abstract); the estimate below is derived from the mechanism it
describes: an inner-product loop body of ``body`` instructions per MAC (default 7: load
activation, load weight, multiply, add, two pointer increments, branch); when the first
loaded operand is zero the ``skip_first`` (3: second load, multiply, add) dependent
instructions are skipped, else when the second is zero ``skip_second`` (2: multiply, add).
With independent zeros the fraction of instructions skipped is

    ``f = [(1 - d1) skip_first + d1 (1 - d2) skip_second] / body``,

and, with equal cost per instruction, the run-time reduction is ``f`` times the fraction of
run time spent in such loops (Amdahl).  The paper reports 19-31 % application-level
execution-time reduction on a scalar core (abstract).

**SNN energy** (:func:`snn_workload_energy`, :func:`snn_energy`) in the same pJ units,
through :mod:`jaxrob.snn._energy`'s ``E_AC`` / ``E_MAC`` (0.9 / 4.6 pJ, 45 nm): a layer with
analog input costs ``E_MAC * MACs * T``, a spiking one ``E_AC * synops`` with
``synops = rate * T * MACs`` (each input spike drives its fan-out; ``rate`` = spikes per input
per step).

References:
  Shumailov, Zhao, Bates, Papernot, Mullins, Anderson, "Sponge Examples: Energy-Latency
  Attacks on Neural Networks", IEEE EuroS&P 2021, arXiv:2006.03463 (ASIC energy model,
  1950 pJ DRAM access and 3.7 pJ per operation from Horowitz).
  Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014.
  Chen, Emer, Sze, "Eyeriss: A Spatial Architecture for Energy-Efficient Dataflow for CNNs",
  ISCA 2016 (run-length compression).
  Sen, Jain, Venkataramani, Raghunathan, "SparCE: Sparsity Aware General-Purpose Core
  Extensions to Accelerate Deep Neural Networks", IEEE TC 2019, arXiv:1711.06315.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.hw._workload import LayerInfo, Workload

__all__ = [
    "FORMATS", "OperandDensities", "SparceLoop", "ZeroSkipCost", "ZeroSkipTech", "conv_input_elems",
    "expected_format_bits", "format_bits", "operand_densities", "snn_energy", "snn_workload_energy",
    "soft_density", "sparce_runtime", "sparce_skip_fraction", "zero_skip_cost",
]

FORMATS = ("dense", "bitmap", "coo", "csr", "csc", "rle", "nm")


def _check_unit(name: str, x: Any) -> None:
    if _validate.is_concrete(x):
        a = np.asarray(x, np.float64)
        if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{a.min()}, {a.max()}]")


def _check_nonneg(name: str, x: Any) -> None:
    if _validate.is_concrete(x):
        a = np.asarray(x, np.float64)
        if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got values in [{a.min()}, {a.max()}]")


def _check_workload(wl: Any) -> Workload:
    if not isinstance(wl, Workload):
        raise TypeError(f"workload must be a jaxrob.hw Workload, got {type(wl).__name__}")
    for name in ("m", "k", "n", "groups", "count"):
        _check_nonneg(f"workload.{name}", getattr(wl, name))
    _check_unit("workload.weight_density", wl.weight_density)
    _check_unit("workload.act_density", wl.act_density)
    return wl


# --------------------------------------------------------------------------------------------------------------
# zero-skipping accelerator
# --------------------------------------------------------------------------------------------------------------

class ZeroSkipTech(NamedTuple):
    """Energy and throughput constants of the zero-skipping accelerator.

    Attributes:
      e_dram_pj: energy per non-zero element moved from DRAM (1950 pJ, 45 nm; Sponge Examples' ASIC model).
      e_mac_pj: energy per effective MAC (3.7 pJ, a 32-bit float multiply at 45 nm, Horowitz).
      macs_per_cycle: effective MACs per cycle (our assumption: 256 PEs).
      dram_elems_per_cycle: DRAM elements per cycle (our assumption: 8, i.e. 32 B/cycle of fp32).
    """

    e_dram_pj: float = 1950.0
    e_mac_pj: float = 3.7
    macs_per_cycle: float = 256.0
    dram_elems_per_cycle: float = 8.0


class ZeroSkipCost(NamedTuple):
    """Per-layer zero-skipping accelerator cost, ``(L,)`` float32 each.

    Attributes:
      energy_pj: total energy; ``dram_energy_pj + compute_energy_pj``.
      dram_energy_pj, compute_energy_pj: its two parts.
      cycles: latency in cycles.
      effective_macs: MACs with both operands non-zero (expected).
      dram_elems: non-zero elements moved from DRAM (expected).
    """

    energy_pj: jax.Array
    dram_energy_pj: jax.Array
    compute_energy_pj: jax.Array
    cycles: jax.Array
    effective_macs: jax.Array
    dram_elems: jax.Array


def conv_input_elems(workload: Workload, infos: Sequence[LayerInfo]) -> np.ndarray:
    """Input feature-map elements per layer (all groups, all ``count`` runs): ``(L,)`` numpy.

    For a convolution with ``LayerInfo`` geometry (padded ``ifmap_hw``, ``filter_hw``,
    ``stride``, ``channels`` per group): ``M / (Ho Wo) * H W * channels * groups * count``
    (``M = batch Ho Wo``); other layers: ``M K groups count``.
    """
    _check_workload(workload)
    m, k, g, c = (np.asarray(getattr(workload, f), np.float64) for f in ("m", "k", "groups", "count"))
    if len(infos) != m.shape[0]:
        raise ValueError(f"infos has {len(infos)} entries but the workload has {m.shape[0]} layers")
    out = m * k * g * c
    for i, info in enumerate(infos):
        if info.kind == "conv" and info.ifmap_hw and info.filter_hw and info.channels and info.stride:
            (h, w), (kh, kw), s = info.ifmap_hw, info.filter_hw, info.stride
            ho, wo = (h - kh) // s + 1, (w - kw) // s + 1
            out[i] = m[i] / (ho * wo) * h * w * info.channels * g[i] * c[i]
    return out


def zero_skip_cost(workload: Workload, *, tech: ZeroSkipTech = ZeroSkipTech(),
                   input_elems: jax.typing.ArrayLike | None = None,
                   output_density: jax.typing.ArrayLike = 1.0) -> ZeroSkipCost:
    """Energy and latency of a zero-skipping accelerator per layer (see the module docstring).

    Args:
      workload: a :class:`~jaxrob.hw.Workload`; ``weight_density`` and ``act_density`` set the
        skipped compute and the compressed traffic.
      tech: constants.
      input_elems: ``(L,)`` input activation elements per layer (default the im2col ``M K groups
        count``); see :func:`conv_input_elems`.
      output_density: ``(L,)`` or scalar fraction of non-zero outputs written back (default 1;
        the next layer's ``act_density`` after a ReLU).

    Returns:
      A :class:`ZeroSkipCost`; linear (hence differentiable) in both densities; a layer with no MACs
      (an empty dimension) costs nothing, its weights are not fetched either.

    Example:
      >>> from jaxrob.hw._workload import make_workload
      >>> wl = make_workload([1.0], [2.0], [1.0], weight_density=0.5, act_density=1.0)
      >>> c = zero_skip_cost(wl)          # 1 weight + 2 inputs + 1 output from DRAM, 1 effective MAC
      >>> round(float(c.energy_pj[0]), 1)
      7803.7
    """
    wl = _check_workload(workload)
    if not isinstance(tech, ZeroSkipTech):
        raise TypeError(f"tech must be a ZeroSkipTech, got {type(tech).__name__}")
    _check_unit("output_density", output_density)
    per = wl.count * wl.groups
    n_w = per * wl.k * wl.n * wl.weight_density
    n_in = per * wl.m * wl.k if input_elems is None else jnp.asarray(input_elems, jnp.float32)
    if input_elems is not None:
        _check_nonneg("input_elems", input_elems)
        if jnp.shape(n_in) != wl.m.shape:
            raise ValueError(f"input_elems must have shape {wl.m.shape} (one entry per layer), got {jnp.shape(n_in)}")
    n_in = n_in * wl.act_density
    n_out = per * wl.m * wl.n * jnp.asarray(output_density, jnp.float32)
    elems = (n_w + n_in + n_out) * (wl.macs > 0)        # a layer with no work (no MACs) moves nothing
    eff = wl.macs * wl.weight_density * wl.act_density
    e_dram = tech.e_dram_pj * elems
    e_mac = tech.e_mac_pj * eff
    cycles = eff / tech.macs_per_cycle + elems / tech.dram_elems_per_cycle
    return ZeroSkipCost(e_dram + e_mac, e_dram, e_mac, cycles, eff, elems)


def soft_density(x: jax.typing.ArrayLike, *, sigma: float = 1e-4) -> jax.Array:
    """Smooth fraction of non-zeros, ``mean(x**2 / (x**2 + sigma))`` (-> exact density as sigma -> 0).

    Example:
      >>> round(float(soft_density(jnp.array([0.0, 1.0, -2.0, 0.0]), sigma=1e-8)), 4)
      0.5
    """
    sigma = _validate.number("sigma", sigma, min=0.0, min_inclusive=False)
    x = jnp.asarray(x, jnp.float32)
    return jnp.mean(x * x / (x * x + sigma))


class OperandDensities(NamedTuple):
    """Per-layer operand densities measured on data, in the layer order of :func:`jaxrob.hw._workload.extract`.

    Attributes:
      kinds: ``"conv"``, ``"dense"`` or ``"matmul"`` per layer (as ``extract``'s :class:`LayerInfo`).
      act_density: ``(L,)`` non-zero fraction of the operand that depends on the input (the left
        one of a ``matmul``), over the batch and, inside loops, over all iterations.
      weight_density: ``(L,)`` the same for the other operand (the kernel of a ``dense`` / ``conv``).
      shapes: ``(activation shape, weight shape)`` per layer.
    """

    kinds: tuple[str, ...]
    act_density: np.ndarray
    weight_density: np.ndarray
    shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
          "remat", "remat2", "checkpoint")


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "consts") and hasattr(sub, "jaxpr"):
            return sub.jaxpr, list(sub.consts)
        if hasattr(sub, "eqns"):
            return sub, []
    return None


def _is_literal(v) -> bool:
    return type(v).__name__ == "Literal"


def _record(records: dict, key: tuple, kind: str, act, weight) -> None:
    a, w = np.asarray(act), np.asarray(weight)
    r = records.setdefault(key, [kind, 0, 0, 0, 0, (a.shape, w.shape)])
    r[1] += int(np.count_nonzero(a))
    r[2] += a.size
    r[3] += int(np.count_nonzero(w))
    r[4] += w.size


def _eval_recording(jaxpr, consts, args, deps, records: dict, path: tuple) -> tuple[list, list]:
    """Evaluates ``jaxpr`` eagerly; returns outputs and whether each depends on the model input."""
    env: dict = {}
    dep: dict = {}

    def read(v):
        return v.val if _is_literal(v) else env[v]

    def rdep(v):
        return False if _is_literal(v) else dep[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v], dep[v] = c, False
    for v, a, d in zip(jaxpr.invars, args, deps):
        env[v], dep[v] = a, d
    for i, eqn in enumerate(jaxpr.eqns):
        vals = [read(v) for v in eqn.invars]
        dps = [rdep(v) for v in eqn.invars]
        name = eqn.primitive.name
        key = path + (i,)
        if name in ("conv_general_dilated", "dot_general") and (dps[0] or dps[1]):
            ai = 1 if (dps[1] and not dps[0]) else 0
            kind = "conv" if name == "conv_general_dilated" else ("matmul" if dps[0] and dps[1] else "dense")
            _record(records, key, kind, vals[ai], vals[1 - ai])
        sub = _sub_jaxpr(eqn)
        if name == "scan" and eqn.params["length"] > 0:
            outs, odeps = _eval_scan(eqn, vals, dps, records, key)
        elif name == "while":
            outs, odeps = _eval_while(eqn, vals, dps, records, key)
        elif sub is not None and len(sub[0].invars) == len(vals):
            outs, odeps = _eval_recording(sub[0], sub[1], vals, dps, records, key)
        else:
            outs = eqn.primitive.bind(*vals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            odeps = [any(dps)] * len(outs)
        for v, o, d in zip(eqn.outvars, outs, odeps):
            env[v], dep[v] = o, d
    return [read(v) for v in jaxpr.outvars], [rdep(v) for v in jaxpr.outvars]


def _eval_scan(eqn, vals, dps, records, key):
    p = eqn.params
    nc, nk, body = p["num_consts"], p["num_carry"], p["jaxpr"]
    consts, carry, xs = vals[:nc], list(vals[nc:nc + nk]), vals[nc + nk:]
    cdep, kdep, xdep = dps[:nc], list(dps[nc:nc + nk]), dps[nc + nk:]
    n = int(p["length"])
    ys: list = [None] * n
    ydep: list = []
    for t in (reversed(range(n)) if p["reverse"] else range(n)):
        outs, od = _eval_recording(body.jaxpr, body.consts, list(consts) + carry + [x[t] for x in xs],
                                   list(cdep) + kdep + list(xdep), records, key)
        carry = list(outs[:nk])
        kdep = [a or b for a, b in zip(kdep, od[:nk])]
        ys[t], ydep = outs[nk:], od[nk:]
    stacked = [jnp.stack([y[j] for y in ys]) for j in range(len(ys[0]))]
    return carry + stacked, kdep + list(ydep)


def _eval_while(eqn, vals, dps, records, key):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond, body = p["cond_jaxpr"], p["body_jaxpr"]
    cc, bc, carry = vals[:cn], vals[cn:cn + bn], list(vals[cn + bn:])
    ccd, bcd, kdep = dps[:cn], dps[cn:cn + bn], list(dps[cn + bn:])
    while bool(_eval_recording(cond.jaxpr, cond.consts, list(cc) + carry, list(ccd) + kdep, {}, key)[0][0]):
        carry, od = _eval_recording(body.jaxpr, body.consts, list(bc) + carry, list(bcd) + kdep, records, key)
        kdep = [a or b for a, b in zip(kdep, od)]
    return carry, kdep


def operand_densities(apply_fn: Callable, params: Any, x: jax.typing.ArrayLike) -> OperandDensities:
    """Measured non-zero fractions of the operands of every convolution and matrix product.

    Traces ``apply_fn(params, x)`` to a jaxpr and evaluates it equation by equation
    (eagerly, descending into ``jit`` / custom-derivative / ``remat`` calls and running
    ``scan`` and ``while_loop`` bodies iteration by iteration), recording for every
    ``conv_general_dilated`` / ``dot_general`` that depends on ``x`` the fraction of non-zero
    entries of its input-dependent operand (the activation) and of the other one (the
    weight), over the whole batch and all loop iterations.  The layers, their kinds and
    their order are those of :func:`jaxrob.hw._workload.extract` (same dependence rule, one
    layer per equation, a layer in a loop once), so
    ``wl._replace(act_density=jnp.asarray(d.act_density))`` sets a workload's measured
    densities.  Exception: for ``lax.cond`` the branch taken on this data is measured while
    ``extract`` keeps the costliest branch; the lengths then differ and the caller must
    match layers.

    Args:
      apply_fn: ``(params, x) -> output``, any JAX function.
      params: its parameters (e.g. a Model's ``variables``).
      x: a batch of inputs (a pytree of arrays is allowed).

    Returns:
      An :class:`OperandDensities`.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda p, x: jnp.maximum(x @ p["w1"], 0.0) @ p["w2"]
      >>> p = {"w1": jnp.array([[1.0, -1.0]]), "w2": jnp.ones((2, 1))}
      >>> operand_densities(f, p, jnp.ones((3, 1))).act_density.tolist()    # x dense; relu kills half
      [1.0, 0.5]
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (params, x) -> output, got {type(apply_fn).__name__}")
    closed = jax.make_jaxpr(apply_fn)(params, x)
    n_params = len(jax.tree_util.tree_leaves(params))
    flat = jax.tree_util.tree_leaves((params, x))
    deps = [i >= n_params for i in range(len(flat))]
    records: dict = {}
    with jax.disable_jit():
        _eval_recording(closed.jaxpr, list(closed.consts), flat, deps, records, ())
    if not records:
        return OperandDensities((), np.zeros(0, np.float32), np.zeros(0, np.float32), ())
    rows = list(records.values())
    return OperandDensities(tuple(r[0] for r in rows),
                            np.asarray([r[1] / max(r[2], 1) for r in rows], np.float32),
                            np.asarray([r[3] / max(r[4], 1) for r in rows], np.float32),
                            tuple(r[5] for r in rows))


# --------------------------------------------------------------------------------------------------------------
# sparse weight formats
# --------------------------------------------------------------------------------------------------------------

def _clog2(n: int) -> int:
    """``ceil(log2 n)`` for an int ``n >= 1`` (0 for 1)."""
    return int(n - 1).bit_length()


def _check_format(fmt: str, value_bits: int, run_bits: int, n: int | None, m: int | None) -> None:
    _validate.choice("fmt", fmt, FORMATS)
    _validate.number("value_bits", value_bits, min=1, integer=True)
    _validate.number("run_bits", run_bits, min=1, integer=True)
    if fmt == "nm":
        if n is None or m is None:
            raise ValueError("fmt='nm' needs n and m (N non-zeros kept per group of M rows), e.g. n=2, m=4")
        _validate.number("m", m, min=1, integer=True)
        _validate.number("n", n, min=1, max=m, integer=True)


def _dense_like(shape: Any) -> tuple[int, int]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
        raise ValueError(f"shape must be (rows, cols), got {shape!r}")
    r = _validate.number("rows", shape[0], min=1, integer=True)
    c = _validate.number("cols", shape[1], min=1, integer=True)
    return r, c


_INDEXED = ("bitmap", "coo", "csr", "csc")


def _indexed_bits(fmt: str, nnz: Any, R: int, C: int, v: int) -> Any:
    """Bits of the formats whose size depends only on the number of non-zeros (exact or expected)."""
    if fmt == "bitmap":
        return R * C + nnz * v
    if fmt == "coo":
        return nnz * (v + _clog2(R) + _clog2(C))
    if fmt == "csr":
        return nnz * (v + _clog2(C)) + (R + 1) * _clog2(R * C + 1)
    return nnz * (v + _clog2(R)) + (C + 1) * _clog2(R * C + 1)                # csc


def format_bits(w: jax.typing.ArrayLike, fmt: str, *, value_bits: int = 8, run_bits: int = 4, n: int | None = None,
                m: int | None = None) -> int:
    """Exact storage (bits) of a 2-D weight matrix in a sparse format (formulas in the module docstring).

    Eager (numpy), counts the matrix's exact zeros.

    Args:
      w: ``(R, C)`` matrix (rows = inputs, columns = outputs; use
        :func:`jaxrob.prune.crossbar_matrix` for a convolution kernel).
      fmt: one of :data:`FORMATS`.
      value_bits: bits per stored value.
      run_bits: run-length field width (``rle``).
      n, m: N:M along columns (``nm``).

    Returns:
      Python int.

    Raises:
      ValueError: not 2-D, unknown format, bad sizes, or a matrix that is not N:M for ``nm``.

    Example:
      >>> import numpy as np
      >>> w = np.array([[1, 0], [0, 0], [0, 2], [0, 0]])
      >>> [format_bits(w, f, value_bits=8) for f in ("dense", "bitmap", "coo")]
      [64, 24, 22]
    """
    _check_format(fmt, value_bits, run_bits, n, m)
    a = np.asarray(jax.device_get(w))
    if a.ndim != 2:
        raise ValueError(f"w must be a 2-D (rows, cols) matrix, got shape {a.shape}")
    R, C = a.shape
    nz = a != 0
    nnz = int(nz.sum())
    v = value_bits
    if fmt == "dense":
        return R * C * v
    if fmt in _INDEXED:
        return _indexed_bits(fmt, nnz, R, C, v)
    if fmt == "rle":
        B = 2 ** run_bits
        entries = 0
        for col in nz.T:
            idx = np.flatnonzero(col)
            runs = np.diff(np.concatenate([[-1], idx])) - 1          # zeros before each non-zero
            entries += int(idx.size + np.sum(runs // B))
        return entries * (run_bits + v)
    groups = -(-R // m)
    pad = np.zeros((groups * m, C), bool)
    pad[:R] = nz
    per_group = pad.reshape(groups, m, C).sum(axis=1)
    if per_group.max(initial=0) > n:
        raise ValueError(f"the matrix is not {n}:{m} along columns: a group of {m} rows holds "
                         f"{int(per_group.max())} non-zeros (> {n})")
    return C * groups * n * (v + _clog2(m))


def expected_format_bits(shape: tuple[int, int], density: jax.typing.ArrayLike, fmt: str, *, value_bits: int = 8,
                         run_bits: int = 4, n: int | None = None, m: int | None = None) -> jax.Array:
    """Expected storage (bits) of an ``(R, C)`` matrix whose entries are non-zero with probability ``density``.

    ``nnz = density R C``; the formulas of :func:`format_bits` in expectation (``rle``:
    geometric runs; ``nm``: independent of the density, which must then be ``<= n / m``).
    ``jnp``, differentiable in ``density``.

    Example:
      >>> float(expected_format_bits((4, 2), 0.25, "bitmap", value_bits=8))
      24.0
    """
    _check_format(fmt, value_bits, run_bits, n, m)
    R, C = _dense_like(shape)
    _check_unit("density", density)
    d = jnp.asarray(density, jnp.float32)
    nnz = d * R * C
    v = value_bits
    if fmt == "dense":
        return jnp.full(d.shape, float(R * C * v))
    if fmt in _INDEXED:
        return _indexed_bits(fmt, nnz, R, C, v)
    if fmt == "rle":
        B = 2 ** run_bits
        j = np.arange(1, (R - 1) // B + 1, dtype=np.float32)          # pad entries j = 1 .. floor((R-1)/B)
        pads = jnp.sum((R - j * B) * jnp.power(1.0 - d[..., None], j * B), axis=-1)
        return C * d * (R + pads) * (run_bits + v)
    if _validate.is_concrete(d) and d.size and float(jnp.max(d)) > n / m + 1e-6:
        raise ValueError(f"density {float(jnp.max(d))} exceeds {n}:{m} (at most {n / m})")
    return jnp.full(d.shape, float(C * (-(-R // m)) * n * (v + _clog2(m))))


# --------------------------------------------------------------------------------------------------------------
# SparCE
# --------------------------------------------------------------------------------------------------------------

class SparceLoop(NamedTuple):
    """The inner-product loop body SparCE skips in (our derivation; see the module docstring).

    Attributes:
      body: instructions per MAC iteration.
      skip_first: instructions skipped when the first-loaded operand is zero.
      skip_second: instructions skipped when only the second-loaded operand is zero.
      first: which operand is loaded first, ``"act"`` or ``"weight"``.
    """

    body: float = 7.0
    skip_first: float = 3.0
    skip_second: float = 2.0
    first: str = "act"


def _check_loop(loop: Any) -> SparceLoop:
    if not isinstance(loop, SparceLoop):
        raise TypeError(f"loop must be a SparceLoop, got {type(loop).__name__}")
    _validate.choice("loop.first", loop.first, ("act", "weight"))
    _validate.number("loop.body", loop.body, min=0.0, min_inclusive=False)
    _validate.number("loop.skip_first", loop.skip_first, min=0.0, max=loop.body)
    _validate.number("loop.skip_second", loop.skip_second, min=0.0, max=loop.skip_first)
    return loop


def sparce_skip_fraction(weight_density: jax.typing.ArrayLike, act_density: jax.typing.ArrayLike, *,
                         loop: SparceLoop = SparceLoop()) -> jax.Array:
    """Fraction of a sparse inner-product loop's instructions SparCE skips (independent zeros).

    ``[(1 - d1) skip_first + d1 (1 - d2) skip_second] / body`` with ``d1`` the density of the
    operand loaded first.  In ``[0, skip_first / body]``; 0 for dense operands.

    Example:
      >>> round(float(sparce_skip_fraction(1.0, 0.5)), 4)     # half the activations zero: 1.5 / 7
      0.2143
    """
    loop = _check_loop(loop)
    _check_unit("weight_density", weight_density)
    _check_unit("act_density", act_density)
    dw = jnp.asarray(weight_density, jnp.float32)
    da = jnp.asarray(act_density, jnp.float32)
    d1, d2 = (da, dw) if loop.first == "act" else (dw, da)
    return ((1.0 - d1) * loop.skip_first + d1 * (1.0 - d2) * loop.skip_second) / loop.body


def sparce_runtime(workload: Workload, *, loop: SparceLoop = SparceLoop(),
                   kernel_fraction: jax.typing.ArrayLike = 1.0) -> tuple[jax.Array, jax.Array]:
    """SparCE's estimated run-time reduction for a workload on a scalar core.

    Instructions per layer are taken proportional to its MACs (``body`` per MAC), so the
    network-level skipped fraction is the MAC-weighted mean of the per-layer fractions; the
    run-time reduction is that times ``kernel_fraction``, the share of run time spent in the
    conv / matrix loops (Amdahl; the paper reports 19-31 % application-level reduction).

    Returns:
      ``(per-layer skipped fraction (L,), network run-time reduction ())``.
    """
    wl = _check_workload(workload)
    _check_unit("kernel_fraction", kernel_fraction)
    f = sparce_skip_fraction(wl.weight_density, wl.act_density, loop=loop)
    macs = wl.macs
    total = jnp.sum(macs)
    net = jnp.where(total > 0, jnp.sum(f * macs) / jnp.where(total > 0, total, 1.0), 0.0)
    return f, net * jnp.asarray(kernel_fraction, jnp.float32)


# --------------------------------------------------------------------------------------------------------------
# SNN energy in the same units
# --------------------------------------------------------------------------------------------------------------

def snn_workload_energy(workload: Workload, *, rate: jax.typing.ArrayLike, timesteps: int,
                        analog_input: jax.typing.ArrayLike = False, e_ac: float | None = None,
                        e_mac: float | None = None) -> jax.Array:
    """Per-layer SNN compute energy (pJ) of a workload from input firing rates.

    ``synops = rate * T * MACs`` (every input spike drives the layer's fan-out), then
    :func:`jaxrob.snn._energy.layer_energy`: ``E_MAC * MACs * T`` for an analog-input layer,
    ``E_AC * synops`` otherwise.  ``E_AC`` / ``E_MAC`` default to the SNN module's 45 nm
    0.9 / 4.6 pJ.

    Args:
      workload: the SNN's synapse layers as a :class:`~jaxrob.hw.Workload` (one timestep).
      rate: ``(L,)`` or scalar spikes per input element per timestep, in ``[0, 1]``.
      timesteps: ``T >= 1``.
      analog_input: ``(L,)`` or scalar bool, layers whose input is analog (direct encoding's first layer).
      e_ac, e_mac: pJ per accumulate / multiply-accumulate.

    Returns:
      ``(L,)`` pJ per example.
    """
    from jaxrob.snn._energy import E_AC_45NM_PJ, E_MAC_45NM_PJ, layer_energy

    wl = _check_workload(workload)
    _check_unit("rate", rate)
    T = _validate.number("timesteps", timesteps, min=1, integer=True)
    e_ac = E_AC_45NM_PJ if e_ac is None else _validate.number("e_ac", e_ac, min=0.0)
    e_mac = E_MAC_45NM_PJ if e_mac is None else _validate.number("e_mac", e_mac, min=0.0)
    macs = wl.macs
    synops = jnp.asarray(rate, jnp.float32) * T * macs
    return layer_energy(synops=synops, macs=macs, analog_input=jnp.asarray(analog_input, bool), timesteps=T,
                        e_ac=e_ac, e_mac=e_mac)


def snn_energy(model: Any, stats: Any, **kw: Any) -> dict[str, Any]:
    """The SNN module's per-layer energy from simulated spike statistics (pJ), re-exported for ``jaxrob.hw``.

    Exactly :func:`jaxrob.snn.energy` (``model.simulate`` statistics in, ``{"layers", "total",
    "ann", "ratio"}`` out); the units match :func:`zero_skip_cost` and :func:`snn_workload_energy`.
    """
    from jaxrob.snn._energy import energy

    return energy(model, stats, **kw)
