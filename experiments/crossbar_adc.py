"""ADC energy vs column sparsity on crossbars: unstructured, N:M and D.U.B.-style sparsity.

A crossbar's ADCs must resolve the sum of its densest column, so pruning saves ADC energy
only when every column of a crossbar loses non-zeros together.  This experiment measures it
with :mod:`jaxrob.hw._adc` on a network's kernels (rows = inputs, columns = outputs, the
:func:`jaxrob.prune.crossbar_matrix` mapping), binary inputs applied bit-serially and one
bit per cell (so a column of ``n`` non-zeros needs ``ceil(log2 n)`` bits with saturating ADCs,
the default and D.U.B.'s convention, or ``ceil(log2(n + 1))`` lossless), with the
NeuroSim V1.3 65 nm SAR and flash ADC fits:

1. **ADC energy per conversion vs column non-zeros** (``rows / 2**k`` non-zeros, the levels
   D.U.B. balances to): bits, SAR and flash pJ.
2. **Masks at matched target sparsity** from :mod:`jaxrob.prune`, on the network's kernels:

   * ``unstructured``: per-layer magnitude pruning (:func:`jaxrob.prune.magnitude_masks`);
   * ``N:M``: ``N = (1 - s) M`` of every ``M`` consecutive rows of each crossbar column
     (:func:`jaxrob.prune.nm_mask` on the crossbar matrix, rows zero-padded to a multiple of ``M``);
   * ``D.U.B.``: power-of-two balanced columns per crossbar (:func:`jaxrob.prune.dub_masks`
     with ``sparsity=s``; the pruning step only, without D.U.B.'s regularised training).

   For each: actual sparsity, crossbars in use, mean ADC bits and the ADC energy of reading
   every crossbar once (:func:`jaxrob.hw._adc.weight_adc_cost`, one shared precision per
   crossbar) relative to the dense kernels, for SAR and flash ADCs, beside the analytic
   model of :func:`jaxrob.hw._adc.crossbar_adc_cost` at the same density (``unstructured``:
   the expectation over i.i.d. zeros; ``balanced``: every column ``density x rows``).
   Every crossbar read counts once, as in :func:`jaxrob.prune.crossbar_report` (for a
   convolution, a per-inference figure multiplies each layer by its output positions).

The weights are the network's random initialisation: the ADC cost depends on the masks'
zero pattern only, and the patterns of the three methods do not need training to differ
(magnitude pruning of random weights is close to i.i.d. sparsity; trained weights can
concentrate non-zeros in some columns, which only raises the unstructured cost).

Run it:

    jaxrob run crossbar_adc                  # preset small: mlp hidden layers on 64x64 crossbars (CPU seconds)
    jaxrob run crossbar_adc --preset paper   # vgg11_bn convolutions on 128x128 crossbars

or ``python -c "from experiments import crossbar_adc as e; import pathlib;
e.run(e.PRESETS['small'], pathlib.Path('runs/crossbar_adc'))"``.
Outputs: ``results.md``, ``results.json``.

References:
  Ibrayev, Garg, Chakraborty, Roy, "Pruning for Improved ADC Efficiency in Crossbar-based
  Analog In-memory Accelerators", arXiv:2403.13082 (2024).
  Peng et al., "DNN+NeuroSim V2.0", IEEE TCAD 2021, arXiv:2003.06471 (ADC fits, V1.3 source).
  Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch",
  ICLR 2021, arXiv:2102.04010.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _snn
from jaxrob import _io, _validate, models
from jaxrob.hw._adc import adc_energy, column_bits, crossbar_adc_cost, weight_adc_cost
from jaxrob.hw._workload import make_workload
from jaxrob.prune import crossbar_matrix, crossbar_report, dub_masks, from_crossbar_matrix, magnitude_masks, nm_mask
from jaxrob.prune._masks import named_leaves, path_name

NAME = "crossbar_adc"
DESCRIPTION = "crossbar ADC energy vs column sparsity: unstructured, N:M and D.U.B.-style masks (SAR / flash)"
METHODS = ("unstructured", "N:M", "D.U.B.")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings.

    Attributes:
      model: registry name of the network (random initialisation).
      layers: ``hidden`` (every kernel but the classifier), ``conv`` (convolutions only) or ``all``.
      crossbar: crossbar size ``n`` (``n x n``, a power of two).
      sparsities: target sparsities; each ``(1 - s) * nm_m`` must be a positive integer.
      nm_m: the ``M`` of N:M.
      saturate: saturating ADCs, ``ceil(log2 n)`` bits for ``n`` non-zeros (the top sum clips; D.U.B.'s
        convention, the default), or ``False`` for the lossless ``ceil(log2(n + 1))`` (see
        :func:`jaxrob.hw._adc.column_bits`: a dense column of ``2**k`` cells then sits one level past a
        bit boundary, and any pruning of every column saves a bit).
      seed: initialisation seed.
    """

    model: str = "mlp"
    layers: str = "hidden"
    crossbar: int = 64
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.875, 0.9375)
    nm_m: int = 16
    saturate: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.model not in models.available():
            raise ValueError(f"model must be one of {', '.join(models.available())}; got {self.model!r}")
        _validate.choice("layers", self.layers, ("hidden", "conv", "all"))
        c = _validate.number("crossbar", self.crossbar, min=2, integer=True)
        if c & (c - 1):
            raise ValueError(f"crossbar must be a power of two (D.U.B.'s levels are rows / 2**k), got {c}")
        m = _validate.number("nm_m", self.nm_m, min=2, integer=True)
        if c % m:
            raise ValueError(f"nm_m must divide the crossbar rows ({c}) so N:M groups do not straddle crossbars, "
                             f"got {m}")
        if not self.sparsities:
            raise ValueError("sparsities must be a non-empty tuple of fractions in (0, 1)")
        for s in self.sparsities:
            _validate.number("sparsity", s, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
            n = (1 - s) * m
            if abs(n - round(n)) > 1e-9 or round(n) < 1:
                raise ValueError(f"sparsity {s} needs (1 - s) * nm_m = {n:g} to be a positive integer (N of N:M)")
        if not isinstance(self.saturate, bool):
            raise TypeError(f"saturate must be a bool, got {self.saturate!r}")
        _validate.number("seed", self.seed, min=0, integer=True)


PRESETS = {
    "small": Config(),
    "paper": Config(model="vgg11_bn", layers="conv", crossbar=128, sparsities=(0.5, 0.75, 0.875, 0.9375, 0.96875),
                    nm_m=32),
}


def _where(layers: str, num_classes: int = 10):
    def where(name, leaf):
        if name.rsplit("/", 1)[-1] != "kernel" or np.ndim(leaf) < 2:
            return False
        if layers == "conv":
            return np.ndim(leaf) >= 3
        if layers == "hidden":
            return np.shape(leaf)[-1] != num_classes
        return True
    return where


def _nm_crossbar_mask(w: Any, n: int, m: int) -> jax.Array:
    """N:M along the crossbar columns: groups of ``m`` consecutive rows of ``crossbar_matrix(w)``.

    Rows are zero-padded to a multiple of ``m`` (a convolution's ``Cin * KH * KW`` need not be
    one), so the last group of a column keeps at most ``n`` of its real weights.  With ``m``
    dividing the crossbar rows every full crossbar column holds exactly ``rows * n / m``
    non-zeros (``jaxrob.prune.nm_masks`` groups along ``Cin`` instead, strided in this row order).
    """
    mat = crossbar_matrix(jnp.asarray(w))
    pad = -mat.shape[0] % m
    mask = nm_mask(jnp.pad(mat, ((0, pad), (0, 0))), n=n, m=m, axis=0)[:mat.shape[0]]
    return from_crossbar_matrix(mask, jnp.shape(w))


def _masks(method: str, params: Any, s: float, config: Config, where) -> Any:
    if method == "unstructured":
        return magnitude_masks(params, sparsity=s, where=where)
    if method == "N:M":
        n = int(round((1 - s) * config.nm_m))
        selected = {name for name, _ in named_leaves(params, where=where)}
        return jax.tree_util.tree_map_with_path(
            lambda path, w: (_nm_crossbar_mask(w, n, config.nm_m) if path_name(path) in selected
                             else jnp.ones(jnp.shape(w), bool)), params)
    return dub_masks(params, crossbar=config.crossbar, sparsity=s, where=where)


def _measure(kernels: list[tuple[str, Any]], crossbar: int, saturate: bool) -> dict[str, float]:
    """ADC energy per read of every crossbar (pJ), mean bits, crossbars used, sparsity of masked kernels."""
    out = {"sar_pj": 0.0, "flash_pj": 0.0, "bits_sum": 0.0, "conversions": 0.0, "used": 0, "crossbars": 0,
           "zeros": 0, "size": 0}
    for _, w in kernels:
        e_sar, bits = weight_adc_cost(w, crossbar=crossbar, kind="sar", saturate=saturate)
        e_flash, _ = weight_adc_cost(w, crossbar=crossbar, kind="flash", saturate=saturate)
        b = np.asarray(bits)
        out["sar_pj"] += float(e_sar)
        out["flash_pj"] += float(e_flash)
        out["bits_sum"] += float(b.sum())
        out["conversions"] += int((b > 0).sum())
        out["used"] += int((b.max(-1) > 0).sum())
        out["crossbars"] += int(b.shape[0] * b.shape[1])
        a = np.asarray(w)
        out["zeros"] += int((a == 0).sum())
        out["size"] += int(a.size)
    out["mean_bits"] = out["bits_sum"] / max(out["conversions"], 1)
    out["sparsity"] = out["zeros"] / max(out["size"], 1)
    return out


def _analytic(kernels: list[tuple[str, Any]], crossbar: int, density: float, saturate: bool) -> dict[str, float]:
    """crossbar_adc_cost of the same matrices (one read each) at a density, both sparsity models, both ADCs."""
    shapes = [crossbar_matrix(jnp.asarray(w)).shape for _, w in kernels]
    wl = make_workload([1.0] * len(shapes), [s[0] for s in shapes], [s[1] for s in shapes], weight_bits=1,
                       act_bits=1, weight_density=density)
    return {f"{sp}_{kind}_pj": float(jnp.sum(crossbar_adc_cost(wl, crossbar=crossbar, kind=kind, sparsity=sp,
                                                               saturate=saturate).energy_pj))
            for sp in ("unstructured", "balanced") for kind in ("sar", "flash")}


def run(config: Config, ctx: Any) -> dict:
    """Builds the model, prunes it three ways at each sparsity, measures ADC cost, writes ``results.md``."""
    config.validate()
    ctx = _snn.context(ctx, NAME)
    log = ctx.log
    t0 = time.perf_counter()
    net = models.create(config.model, key=jax.random.key(config.seed))
    where = _where(config.layers)
    params = net.params
    kernels = named_leaves(params, where=where)
    if not kernels:
        raise ValueError(f"layers={config.layers!r} selects no kernel of {config.model}")
    rows = config.crossbar

    levels = []
    for k in range(int(math.log2(rows)) + 1):
        n = rows // 2 ** k
        b = float(column_bits(n, saturate=config.saturate))
        levels.append({"nonzeros": n, "density": n / rows, "bits": b, "sar_pj": float(adc_energy(b, kind="sar")),
                       "flash_pj": float(adc_energy(b, kind="flash"))})

    dense = _measure(kernels, rows, config.saturate)
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "levels": levels,
                               "layers": {n: list(np.shape(w)) for n, w in kernels}, "dense": dense, "rows": []}
    log.info(f"{config.model}: {len(kernels)} kernels on {dense['crossbars']} crossbars of {rows}x{rows}; dense "
             f"ADC energy per read {dense['sar_pj']:.1f} pJ (SAR), {dense['flash_pj']:.1f} pJ (flash)")
    for s in config.sparsities:
        analytic = _analytic(kernels, rows, 1.0 - s, config.saturate)
        for method in METHODS:
            masks = _masks(method, params, s, config, where)
            mask_of = dict(named_leaves(masks, where=lambda name, leaf: True))
            masked = [(n, jnp.where(mask_of[n], w, 0.0)) for n, w in kernels]
            meas = _measure(masked, rows, config.saturate)
            # the D.U.B. report (bits ceil(log2 n) + offset; its relative 2**bits energy does not depend on the offset)
            dub_rep = crossbar_report(masks, crossbar=rows, where=where)
            row = {"method": method, "target": s, "sparsity": meas["sparsity"], "crossbars_used": meas["used"],
                   "crossbars": meas["crossbars"], "mean_bits": meas["mean_bits"],
                   "sar_rel": meas["sar_pj"] / dense["sar_pj"], "flash_rel": meas["flash_pj"] / dense["flash_pj"],
                   "model_unstructured_sar_rel": analytic["unstructured_sar_pj"] / dense["sar_pj"],
                   "model_balanced_sar_rel": analytic["balanced_sar_pj"] / dense["sar_pj"],
                   "model_unstructured_flash_rel": analytic["unstructured_flash_pj"] / dense["flash_pj"],
                   "model_balanced_flash_rel": analytic["balanced_flash_pj"] / dense["flash_pj"],
                   "dub_report_exp_rel": dub_rep.adc_energy("exponential")}
            results["rows"].append(row)
            log.info(f"s={s:.4f} {method:>12}: sparsity {meas['sparsity']:.4f}, bits {meas['mean_bits']:.2f}, "
                     f"SAR x{row['sar_rel']:.3f}, flash x{row['flash_rel']:.3f}")
    results["seconds"] = time.perf_counter() - t0
    _io.write_json(ctx.run_dir / "results.json", results)
    _io.write_text(ctx.run_dir / "results.md", _table(results, config))
    log.info(f"done in {results['seconds']:.1f} s")
    return results


def _table(results: dict, config: Config) -> str:
    rows = config.crossbar
    conv = "saturating, ceil(log2 n) bits" if config.saturate else "lossless, ceil(log2(n + 1)) bits"
    lines = [f"# crossbar_adc: ADC energy vs column sparsity ({config.model}, {config.layers} kernels, "
             f"{rows}x{rows} crossbars, NeuroSim V1.3 65 nm HP ADC fits, {conv})", "",
             "## ADC energy per conversion vs column non-zeros (binary inputs and cells)", "",
             "| column non-zeros | density | ADC bits | SAR pJ | flash pJ |", "|---:|---:|---:|---:|---:|"]
    for lv in results["levels"]:
        lines.append(f"| {lv['nonzeros']} | {lv['density']:.4g} | {lv['bits']:.0f} | {lv['sar_pj']:.4f} | "
                     f"{lv['flash_pj']:.4f} |")
    d = results["dense"]
    lines += ["", f"## Masks at matched target sparsity (dense: {d['crossbars']} crossbars, "
                  f"{d['mean_bits']:.2f} mean bits, {d['sar_pj']:.1f} pJ SAR / {d['flash_pj']:.1f} pJ flash "
                  "per read of every crossbar)", "",
              "ADC energy relative to the dense kernels (lower is better); *model* columns: "
              "`crossbar_adc_cost` at density 1 - s (i.i.d. zeros / balanced columns); "
              "*D.U.B. report*: `jaxrob.prune.crossbar_report`'s exponential (2^bits) model "
              "(ceil(log2 n) bits, the saturating convention).", "",
              "| target s | method | sparsity | crossbars used | mean bits | SAR | flash | model unstr. SAR | "
              "model bal. SAR | model unstr. flash | model bal. flash | D.U.B. report (exp.) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['target']:g} | {r['method']} | {r['sparsity']:.4f} | {r['crossbars_used']}/"
                     f"{r['crossbars']} | {r['mean_bits']:.2f} | {r['sar_rel']:.3f} | {r['flash_rel']:.3f} | "
                     f"{r['model_unstructured_sar_rel']:.3f} | {r['model_balanced_sar_rel']:.3f} | "
                     f"{r['model_unstructured_flash_rel']:.3f} | {r['model_balanced_flash_rel']:.3f} | "
                     f"{r['dub_report_exp_rel']:.3f} |")
    lines += ["", "Paper (Ibrayev et al. 2024): up to 7.13x ADC-energy improvement (CIFAR-10) and 1.27x (ImageNet) "
                  "for D.U.B. over dense, with unstructured pruning at similar sparsity giving far less; their "
                  "energy model differs (see `jaxrob.prune.CrossbarReport`).", "",
              f"{results['seconds']:.1f} s."]
    return "\n".join(lines) + "\n"
