"""Systolic-array design space: one vmapped sweep over >= 100,000 arrays, and a gradient search that finds its optimum.

For a workload (ResNet-50, MobileNetV2 or BERT-base from :mod:`jaxrob.hw`), every array of
``R x C`` PEs with ``R, C`` in ``[min_size, max_size]`` and every dataflow (output, weight,
input stationary) is costed by :func:`jaxrob.hw.systolic_cost` in one ``jax.vmap`` per
dataflow (``(max_size - min_size + 1)**2`` designs each; 320**2 = 102,400 in the small
preset).  The objective is the energy-delay product

    ``EDP = (E_dynamic + e_idle * R * C * cycles) * cycles``

where ``e_idle`` (pJ per PE per cycle: clock and leakage of a PE whether busy or not) is
our modelling choice -- without it a larger array is never worse, and the optimum would
sit at the largest size.  The gradient search runs Adam on ``(log R, log C)`` over the
*relaxed* cost (:func:`jaxrob.hw.interp_int` between integer designs, exact at integer
points), averaged over a 4 x 4 grid of offsets of width ``sigma`` that shrinks geometrically
(graduated smoothing: the relaxed cost is piecewise linear with a kink at every change
of a tile count), from ``starts`` initial points spread over the range, all starts in one
``vmap``; each end point is rounded and its integer neighbourhood (``+-polish``) is
evaluated exactly, and the best of them starts an exact coordinate descent (all ``R`` at
the current ``C``, then all ``C`` at the current ``R``, until neither moves;
``line_search``).  The search reports the design after the gradient stage and after the
line search against the sweep's optimum, and the exact and relaxed evaluations it used.

Run it:

    jaxrob run design_space                  # small: ResNet-50, R, C in [4, 323], 3 dataflows (307,200 designs)
    jaxrob run design_space --preset paper   # ResNet-50, MobileNetV2 and BERT-base, R, C in [4, 515]

Outputs in ``runs/design_space/<timestamp>/``: ``results.md``, ``results.json``, ``log.txt``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _snn
from jaxrob import _io, _validate, hw

NAME = "design_space"
DESCRIPTION = "systolic-array design space: a >= 100k-design vmapped sweep and a gradient search that reaches its optimum"

WORKLOADS = ("resnet50", "mobilenet_v2", "bert_base")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the design-space study.

    Attributes:
      workloads: a subset of ``("resnet50", "mobilenet_v2", "bert_base")`` (batch 1; BERT at 128 tokens).
      min_size, max_size: the range of ``R`` and of ``C``.
      dataflows: a subset of ``("os", "ws", "is")``.
      idle_pj: energy per PE per cycle, busy or idle (pJ; our choice, about a tenth of an
        8-bit MAC at 45 nm).
      buffer_words: each SRAM buffer's size (words).
      starts: gradient-search starting points per dataflow.
      steps, learning_rate: Adam on ``(log R, log C)``.
      sigma, sigma_decay: smoothing width in log space, shrinking geometrically from ``sigma``
        to ``sigma * sigma_decay`` over the steps.
      polish: integer neighbourhood radius evaluated exactly around each end point.
      line_search: finish with exact coordinate descent (all ``R`` at the current ``C``, then
        all ``C`` at the current ``R``, until neither moves).
      chunk: designs per vmapped call (bounds memory).
    """

    workloads: tuple[str, ...] = ("resnet50",)
    min_size: int = 4
    max_size: int = 323
    dataflows: tuple[str, ...] = ("os", "ws", "is")
    idle_pj: float = 0.02
    buffer_words: float = 65536.0
    starts: int = 16
    steps: int = 200
    learning_rate: float = 0.05
    sigma: float = 0.5
    sigma_decay: float = 0.1
    polish: int = 4
    line_search: bool = True
    chunk: int = 32768

    def validate(self) -> None:
        if not self.workloads or any(w not in WORKLOADS for w in self.workloads):
            raise ValueError(f"workloads must be a non-empty subset of {WORKLOADS}, got {self.workloads}")
        if not self.dataflows or any(d not in hw.DATAFLOWS for d in self.dataflows):
            raise ValueError(f"dataflows must be a non-empty subset of {hw.DATAFLOWS}, got {self.dataflows}")
        _validate.number("min_size", self.min_size, min=1, integer=True)
        _validate.number("max_size", self.max_size, min=self.min_size + 1, integer=True)
        _validate.number("idle_pj", self.idle_pj, min=0.0)
        _validate.number("buffer_words", self.buffer_words, min=1.0)
        _validate.number("starts", self.starts, min=1, integer=True)
        _validate.number("steps", self.steps, min=1, integer=True)
        _validate.number("learning_rate", self.learning_rate, min=0.0, min_inclusive=False)
        _validate.number("sigma", self.sigma, min=0.0)
        _validate.number("sigma_decay", self.sigma_decay, min=0.0, max=1.0, min_inclusive=False)
        _validate.number("polish", self.polish, min=0, integer=True)
        _validate.number("chunk", self.chunk, min=1, integer=True)


PRESETS = {
    "small": Config(),
    "paper": Config(workloads=WORKLOADS, max_size=515, starts=25, steps=300),
}


def _workload(name: str) -> hw.Workload:
    if name == "resnet50":
        return hw.resnet50()[0]
    if name == "mobilenet_v2":
        return hw.mobilenet_v2()[0]
    return hw.bert_base_layer()[0]


def _log_edp(wl, rows, cols, dataflow, config, relaxed):
    c = hw.systolic_cost(wl, rows, cols, dataflow=dataflow, ifmap_buffer=config.buffer_words,
                         filter_buffer=config.buffer_words, ofmap_buffer=config.buffer_words, relaxed=relaxed)
    cycles = c.total_cycles
    energy = c.total_energy + config.idle_pj * rows * cols * cycles
    return jnp.log(energy) + jnp.log(cycles)


def sweep(wl, dataflow: str, config: Config) -> tuple[np.ndarray, float]:
    """Exact log-EDP of every ``(R, C)`` in the range: ``(values (S, S), seconds)``."""
    sizes = np.arange(config.min_size, config.max_size + 1, dtype=np.float32)
    rr, cc = np.meshgrid(sizes, sizes, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    fn = jax.jit(jax.vmap(lambda r, c: _log_edp(wl, r, c, dataflow, config, False)))
    fn(rr[:config.chunk], cc[:config.chunk]).block_until_ready()             # compile
    t0 = time.perf_counter()
    vals = np.concatenate([np.asarray(fn(rr[i:i + config.chunk], cc[i:i + config.chunk]))
                           for i in range(0, rr.size, config.chunk)])
    return vals.reshape(sizes.size, sizes.size), time.perf_counter() - t0


def gradient_search(wl, dataflow: str, config: Config) -> dict:
    """Adam on the relaxed log-EDP over ``(log R, log C)`` from ``starts`` points, then integer polish."""
    lo, hi = float(np.log(config.min_size)), float(np.log(config.max_size))
    g = np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), int(np.ceil(np.sqrt(config.starts))))
    x0 = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)[:config.starts].astype(np.float32)
    opt = optax.adam(config.learning_rate)

    # Graduated smoothing: the relaxed cost is piecewise linear and jagged (one kink per change of a
    # tile count), so each step descends the average over a fixed 4 x 4 grid of offsets of width
    # sigma in log space, with sigma shrinking geometrically to ~0 (a standard continuation method).
    q = np.array([-1.15, -0.32, 0.32, 1.15], np.float32)              # quartile midpoints of N(0, 1)
    offsets = jnp.asarray(np.stack(np.meshgrid(q, q, indexing="ij"), -1).reshape(-1, 2))
    sigmas = jnp.asarray(config.sigma * (config.sigma_decay ** (np.arange(config.steps) / max(config.steps - 1, 1))),
                         jnp.float32)

    def objective(x, sigma):
        pts = jnp.exp(jnp.clip(x[None] + sigma * offsets, lo, hi))
        return jnp.mean(jax.vmap(lambda p: _log_edp(wl, p[0], p[1], dataflow, config, True))(pts))

    def run_one(x):
        def step(carry, sigma):
            x, state = carry
            val, grad = jax.value_and_grad(objective)(x, sigma)
            upd, state = opt.update(grad, state, x)
            return (jnp.clip(optax.apply_updates(x, upd), lo, hi), state), val
        (x, _), vals = jax.lax.scan(step, (x, opt.init(x)), sigmas)
        return x, vals

    t0 = time.perf_counter()
    xs, _ = jax.jit(jax.vmap(run_one))(jnp.asarray(x0))
    ends = np.clip(np.round(np.exp(np.asarray(xs))), config.min_size, config.max_size)
    # polish: exact cost on each end point's integer neighbourhood
    d = np.arange(-config.polish, config.polish + 1)
    cand = (ends[:, None, None, :] + np.stack(np.meshgrid(d, d, indexing="ij"), -1)[None]).reshape(-1, 2)
    cand = np.unique(np.clip(cand, config.min_size, config.max_size), axis=0).astype(np.float32)
    exact = np.asarray(jax.jit(jax.vmap(lambda r, c: _log_edp(wl, r, c, dataflow, config, False)))(
        cand[:, 0], cand[:, 1]))
    best = int(np.argmin(exact))
    out = {"rows": int(cand[best, 0]), "cols": int(cand[best, 1]), "log_edp": float(exact[best]),
           "end_points": ends.astype(int).tolist(), "exact_evaluations": int(cand.shape[0]),
           "relaxed_evaluations": int(config.starts * config.steps * 16),     # 16 offsets per step
           "seconds": time.perf_counter() - t0}
    if config.line_search:
        out.update(_line_search(wl, dataflow, config, out))
        out["seconds"] = time.perf_counter() - t0
    return out


def _line_search(wl, dataflow: str, config: Config, start: dict) -> dict:
    """Exact coordinate descent from the gradient search's design: all ``R`` at fixed ``C``, then all
    ``C`` at fixed ``R``, until neither moves (the final stage of the search; its exact evaluations
    are counted)."""
    sizes = np.arange(config.min_size, config.max_size + 1, dtype=np.float32)
    fn = jax.jit(jax.vmap(lambda r, c: _log_edp(wl, r, c, dataflow, config, False)))
    r, c, v = float(start["rows"]), float(start["cols"]), start["log_edp"]
    evals = start["exact_evaluations"]
    for _ in range(20):
        moved = False
        for axis in (0, 1):
            rr = sizes if axis == 0 else np.full_like(sizes, r)
            cc = np.full_like(sizes, c) if axis == 0 else sizes
            vals = np.asarray(fn(rr, cc))
            evals += sizes.size
            i = int(np.argmin(vals))
            if vals[i] < v - 1e-7:
                v, moved = float(vals[i]), True
                r, c = (float(sizes[i]), c) if axis == 0 else (r, float(sizes[i]))
        if not moved:
            break
    return {"gradient_rows": start["rows"], "gradient_cols": start["cols"], "gradient_log_edp": start["log_edp"],
            "rows": int(r), "cols": int(c), "log_edp": v, "exact_evaluations": evals}


def run(config: Config, ctx: Any) -> dict:
    """Sweeps and searches every (workload, dataflow); writes ``results.md``."""
    config.validate()
    ctx = _snn.context(ctx, NAME)
    log = ctx.log
    t_run = time.perf_counter()
    n_side = config.max_size - config.min_size + 1
    results: dict[str, Any] = {"designs_per_dataflow": n_side ** 2, "rows": []}
    for wname in config.workloads:
        wl = _workload(wname)
        for df in config.dataflows:
            vals, secs = sweep(wl, df, config)
            i, j = np.unravel_index(int(np.argmin(vals)), vals.shape)
            opt_r, opt_c, opt_v = i + config.min_size, j + config.min_size, float(vals[i, j])
            rank = lambda v: int(np.sum(vals < v - 1e-6)) + 1          # noqa: E731  (1 = the optimum)
            gs = gradient_search(wl, df, config)
            row = {"workload": wname, "dataflow": df, "sweep_rows": int(opt_r), "sweep_cols": int(opt_c),
                   "sweep_log_edp": opt_v, "sweep_seconds": secs, "designs_per_second": n_side ** 2 / secs,
                   "search": gs, "search_gap": float(np.exp(gs["log_edp"] - opt_v) - 1.0),
                   "search_rank": rank(gs["log_edp"]), "square_best": None}
            diag = np.diag(vals)
            k = int(np.argmin(diag))
            row["square_best"] = {"size": k + config.min_size, "edp_vs_optimum": float(np.exp(diag[k] - opt_v))}
            results["rows"].append(row)
            log.info(f"{wname} {df}: sweep optimum {opt_r}x{opt_c} ({n_side ** 2} designs, {secs:.2f} s); "
                     f"gradient search {gs['rows']}x{gs['cols']} (EDP gap {row['search_gap']:.2%}, "
                     f"rank {row['search_rank']})")
    results["seconds"] = time.perf_counter() - t_run
    _io.write_text(ctx.run_dir / "results.md", _table(results, config))
    return results


def _table(results: dict, config: Config) -> str:
    n = results["designs_per_dataflow"]
    lines = [f"# Systolic-array design space ({NAME})", "",
             f"R, C in [{config.min_size}, {config.max_size}] ({n:,} designs per dataflow, one vmapped sweep each); "
             f"objective EDP with {config.idle_pj} pJ per PE-cycle of idle energy; buffers {config.buffer_words:.0f} "
             f"words each. Gradient search: Adam on (log R, log C) of the relaxed cost, {config.starts} starts x "
             f"{config.steps} steps, then exact evaluation of the +-{config.polish} integer neighbourhood.", "",
             "| workload | dataflow | sweep optimum | sweep designs/s | best square (EDP / optimum) | "
             "after the gradient stage (EDP gap) | after the line search | EDP gap | rank in sweep | "
             "exact / relaxed evaluations |",
             "|---|---|---|---:|---|---|---|---:|---:|---:|"]
    for r in results["rows"]:
        s = r["search"]
        if "gradient_rows" in s:
            gap = max(float(np.exp(s["gradient_log_edp"] - r["sweep_log_edp"]) - 1.0), 0.0)
            grad = f"{s['gradient_rows']}x{s['gradient_cols']} ({gap:.2%})"
        else:
            grad = f"{s['rows']}x{s['cols']} ({r['search_gap']:.2%})"
        final = f"{s['rows']}x{s['cols']}" if "gradient_rows" in s else "-"
        lines.append(f"| {r['workload']} | {r['dataflow']} | {r['sweep_rows']}x{r['sweep_cols']} | "
                     f"{r['designs_per_second']:,.0f} | {r['square_best']['size']}x{r['square_best']['size']} "
                     f"({r['square_best']['edp_vs_optimum']:.3f}) | {grad} | {final} | {max(r['search_gap'], 0.0):.2%} | "
                     f"{r['search_rank']} | {s['exact_evaluations']:,} / {s['relaxed_evaluations']:,} |")
    lines.append("")
    return "\n".join(lines)
