"""Precision limits of in-memory computing: compute SNR vs energy for QS, IS and QR, MPC ADC bits, regimes.

Gonugondla et al.'s study of a 512-row SRAM IMC column in 65 nm (their journal version,
arXiv:2012.13645), with :mod:`jaxrob.hw._imc`'s closed forms and its default 65 nm technology:

1. **Compute SNR vs energy.**  For each target ``SNR_a`` the cheapest design of each compute
   model (:func:`~jaxrob.hw._imc.knob_for_snr`: QS / IS unit discharge, QR capacitor), its
   analog and total energy per column dot product (ADC sized by MPC), ADC bits and ``SNR_T``;
   "-" where the model cannot reach the target (QS / IS mismatch floor or headroom, QR
   capacitor above its area bound).
2. **ADC bits from MPC vs dot-product length** ``N``, beside the lossless
   ``B_x + B_w + ceil(log2 N)``: QS at its headroom-limited discharge and QR at 1 fF.
3. **Regimes**: which model is cheapest at each ``SNR_a`` and where QS hands over to QR.
4. **Voltage-headroom bound** on ``N`` vs ``SNR_a`` (and with mismatch switched off).
5. **The paper's 512-row figures beside ours.**  The paper's numbers come from its abstracts
   (ICCAD 2020 and arXiv:2012.13645; the full text was not readable here): QS energy falls
   3.3x per 6 dB drop in ``SNR_a``; the headroom bound on ``N`` doubles per 3 dB drop; QS is
   preferred at low and QR at high compute SNR.  Our technology constants are documented
   choices, not a fit, so the table reports where our model shows the 3.3x rather than forcing it.

Run it:

    jaxrob run imc_limits                  # small: 3 dB grid, seconds on CPU
    jaxrob run imc_limits --preset paper   # 1 dB grid, every power-of-two N

Outputs in ``runs/imc_limits/<timestamp>/``: ``results.md``, ``results.json``.

References:
  Gonugondla, Sakr, Dbouk, Shanbhag, "Fundamental Limits on the Precision of In-memory
  Architectures", ICCAD 2020; "Fundamental Limits on Energy-Delay-Accuracy of In-memory
  Architectures in Inference Applications", IEEE TCAD 2021, arXiv:2012.13645.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _snn
from jaxrob import _io, _validate
from jaxrob.hw import _imc

NAME = "imc_limits"
DESCRIPTION = "IMC precision limits: compute SNR vs energy of QS / IS / QR, MPC ADC bits vs N, regimes, headroom bound"

#: The paper's figures for its 512-row 65 nm SRAM array (from the ICCAD 2020 and arXiv:2012.13645 abstracts).
PAPER = {
    "rows": 512,
    "technology_nm": 65,
    "qs_energy_ratio_per_6db": 3.3,
    "qs_headroom_n_ratio_per_3db": 2.0,
    "preferred": "QS at low compute SNR, QR at high compute SNR",
}
MODELS = ("qs", "is", "qr")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the IMC-limits study.

    Attributes:
      n_rows: dot-product length of the SNR-energy and regime tables (the paper: 512).
      bx, bw: activation and weight precisions.
      snr_db: target compute SNRs (dB) of the SNR-energy table.
      n_values: dot-product lengths of the MPC table (each <= n_rows).
      headroom_snr_db: target SNRs (dB) of the headroom-bound table.
      loss_db: MPC's allowed SNR loss in the ADC (dB).
      qr_c_unit: QR capacitor of the MPC table (fF).
      ratio_step_db: resolution (dB) of the search for the SNR where QS energy falls 3.3x per 6 dB.
    """

    n_rows: int = 512
    bx: int = 8
    bw: int = 8
    snr_db: tuple[float, ...] = tuple(float(s) for s in range(6, 46, 3))
    n_values: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    headroom_snr_db: tuple[float, ...] = (15.0, 18.0, 21.0, 24.0, 27.0)
    loss_db: float = 0.5
    qr_c_unit: float = 1.0
    ratio_step_db: float = 0.1

    def validate(self) -> None:
        _validate.number("n_rows", self.n_rows, min=1, integer=True)
        _validate.number("bx", self.bx, min=1, max=16, integer=True)
        _validate.number("bw", self.bw, min=1, max=16, integer=True)
        for name in ("snr_db", "headroom_snr_db"):
            vals = getattr(self, name)
            if not vals or any(not isinstance(v, (int, float)) or not math.isfinite(v) or not -20 <= v <= 80
                               for v in vals):
                raise ValueError(f"{name} must be a non-empty tuple of SNRs in [-20, 80] dB, got {vals}")
        if not self.n_values or any(int(n) != n or not 1 <= n <= self.n_rows for n in self.n_values):
            raise ValueError(f"n_values must be a non-empty tuple of integers in [1, n_rows={self.n_rows}], "
                             f"got {self.n_values}")
        _validate.number("loss_db", self.loss_db, min=0.0, min_inclusive=False)
        _validate.number("qr_c_unit", self.qr_c_unit, min=0.0, min_inclusive=False)
        _validate.number("ratio_step_db", self.ratio_step_db, min=0.001, max=1.0)


PRESETS = {
    "small": Config(),
    "paper": Config(snr_db=tuple(float(s) for s in range(0, 47)), n_values=tuple(2 ** k for k in range(1, 10)),
                    headroom_snr_db=tuple(float(s) for s in range(9, 31, 3)), ratio_step_db=0.01),
}


def _tech(config: Config) -> _imc.IMCTech:
    return dataclasses.replace(_imc.IMCTech(), n_rows=float(max(config.n_rows, 512)))


@functools.partial(jax.jit, static_argnames=("model", "loss_db"))
def _designs(model, targets, n, bx, bw, tech, stats, loss_db):
    """The cheapest knob per target SNR and its cost (one compile per model)."""
    knob = _imc.knob_for_snr(model, targets, n, tech, stats)
    safe = jnp.where(jnp.isfinite(knob), knob, 1e-3 if model != "qr" else 1.0)
    return knob, _imc.imc_cost(model, n, safe, bx=bx, bw=bw, tech=tech, stats=stats, loss_db=loss_db)


@functools.partial(jax.jit, static_argnames=("model", "loss_db"))
def _cost(model, n, knob, bx, bw, tech, stats, loss_db):
    return _imc.imc_cost(model, n, knob, bx=bx, bw=bw, tech=tech, stats=stats, loss_db=loss_db)


def snr_energy(config: Config, tech: _imc.IMCTech, stats: _imc.DotStats) -> dict[str, Any]:
    """Cheapest design per model and target SNR: per model, arrays over ``config.snr_db``."""
    targets = _imc.from_db(jnp.asarray(config.snr_db, jnp.float32))
    out: dict[str, Any] = {"snr_db": list(config.snr_db)}
    for model in MODELS:
        knob, cost = _designs(model, targets, float(config.n_rows), config.bx, config.bw, tech, stats,
                              config.loss_db)
        ok = np.isfinite(np.asarray(knob))

        def col(x, fn=float):
            return [fn(v) if o else None for v, o in zip(np.asarray(x), ok)]

        out[model] = {"knob": col(knob), "snr_a_db": col(_imc.db(cost.snr_a)), "snr_t_db": col(_imc.db(cost.snr_t)),
                      "adc_bits": col(cost.adc_bits, int), "energy_core_fj": col(cost.energy_core),
                      "energy_fj": col(cost.energy), "delay_ns": col(cost.delay)}
    for key, field in (("preferred_core", "energy_core_fj"), ("preferred_total", "energy_fj")):
        pref = []
        for i in range(len(config.snr_db)):
            cands = [(out[m][field][i], m) for m in MODELS if out[m][field][i] is not None]
            pref.append(min(cands)[1].upper() if cands else None)
        out[key] = pref
    return out


def mpc_table(config: Config, tech: _imc.IMCTech, stats: _imc.DotStats) -> dict[str, Any]:
    """MPC ADC bits vs N for QS at its headroom-limited discharge and QR at ``qr_c_unit``."""
    n = jnp.asarray(config.n_values, jnp.float32)
    v = tech.dv_max / (n * stats.p_mean)
    rows: dict[str, Any] = {"n": list(config.n_values),
                            "full_bits": [int(b) for b in _imc.adc_bits_full_precision(config.bx, config.bw, n)]}
    for model, knob in (("qs", v), ("qr", jnp.full_like(n, config.qr_c_unit))):
        cost = _cost(model, n, knob, config.bx, config.bw, tech, stats, config.loss_db)
        rows[model] = {"snr_a_db": [float(x) for x in _imc.db(cost.snr_a)],
                       "snr_pre_db": [float(x) for x in _imc.db(cost.snr_pre)],
                       "mpc_bits": [int(b) for b in cost.adc_bits],
                       "snr_t_db": [float(x) for x in _imc.db(cost.snr_t)]}
    return rows


def headroom_table(config: Config, tech: _imc.IMCTech, stats: _imc.DotStats) -> dict[str, Any]:
    """N_max of QS vs target SNR, with the default mismatch and with none."""
    s = _imc.from_db(jnp.asarray(config.headroom_snr_db, jnp.float32))
    n_max = np.asarray(_imc.qs_max_rows(s, tech, stats))
    n_max0 = np.asarray(_imc.qs_max_rows(s, dataclasses.replace(tech, sigma_d=0.0), stats))
    return {"snr_db": list(config.headroom_snr_db),
            "n_max": [float(x) if x > 0 else None for x in n_max],
            "n_max_no_mismatch": [float(x) for x in n_max0]}


def qs_energy_ratio(config: Config, tech: _imc.IMCTech, stats: _imc.DotStats) -> dict[str, Any]:
    """QS analog energy ratio E(s) / E(s - 6 dB) over a fine grid, and where it equals the paper's 3.3x."""
    floor_db = float(_imc.db(_imc.qs_snr_floor(tech, stats)))
    grid = np.arange(-10.0, floor_db, config.ratio_step_db)
    e_hi = np.asarray(_imc.qs_energy(config.n_rows, _imc.knob_for_snr("qs", _imc.from_db(grid), config.n_rows,
                                                                      tech, stats), tech, stats))
    e_lo = np.asarray(_imc.qs_energy(config.n_rows, _imc.knob_for_snr("qs", _imc.from_db(grid - 6.0),
                                                                      config.n_rows, tech, stats), tech, stats))
    ratio = e_hi / e_lo
    ok = np.isfinite(ratio)
    grid, ratio = grid[ok], ratio[ok]
    target = PAPER["qs_energy_ratio_per_6db"]
    above = np.nonzero(ratio >= target)[0]
    at = float(grid[above[0]]) if above.size else None
    marks = {}
    for s in (0.0, 10.0, 15.0, 20.0, 25.0):
        i = int(np.argmin(np.abs(grid - s)))
        if abs(grid[i] - s) < 2 * config.ratio_step_db:
            marks[f"{s:g}"] = float(ratio[i])
    return {"floor_db": floor_db, "snr_db_at_paper_ratio": at, "ratio_at": marks,
            "ratio_min": float(ratio.min()), "ratio_median": float(np.median(ratio))}


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def _table(results: dict, config: Config) -> str:
    se, mp, hr, qr = results["snr_energy"], results["mpc"], results["headroom"], results["qs_ratio"]
    cross = results["crossover_db"]
    lines = [f"# imc_limits: in-memory computing precision limits ({config.n_rows} rows, 65 nm defaults)", "",
             f"B_x = {config.bx}, B_w = {config.bw}, MPC loss {config.loss_db} dB, ADC clipped at "
             f"{results['zeta_y']:g} sigma.  Energies in fJ per column dot product (analog / total with the "
             "MPC-sized ADC).  '-': the model cannot reach that SNR_a.", "",
             "## Paper's 512-row figures beside ours", "",
             "| quantity | paper | ours |", "|---|---|---|",
             f"| QS energy per 6 dB drop in SNR_a | 3.3x | {_fmt(qr['ratio_at'].get('10'), '.2f')}x at 10 dB, "
             f"{_fmt(qr['ratio_at'].get('20'), '.2f')}x at 20 dB, {_fmt(qr['ratio_at'].get('25'), '.2f')}x at 25 dB; "
             f"3.3x at {_fmt(qr['snr_db_at_paper_ratio'], '.1f')} dB (analog energy) |",
             f"| headroom bound on N per 3 dB drop | 2x | {_fmt(results['headroom_ratio_no_mismatch'], '.3f')}x without "
             f"mismatch, {_fmt(results['headroom_ratio'], '.2f')}x with it (first step of the table below) |",
             f"| preferred model | QS at low, QR at high SNR_a | QS below {_fmt(cross, '.0f')} dB, QR above "
             "(analog energy) |",
             f"| max SNR_a of QS (mismatch floor) | bounded (energy, area, swing) | {qr['floor_db']:.1f} dB |",
             f"| max SNR_a of QR (C_u <= {results['c_unit_max']:g} fF) | higher than QS | "
             f"{results['qr_max_snr_db']:.1f} dB |", "",
             "## Compute SNR vs energy", "",
             "| SNR_a (dB) | QS analog | QS total | QS bits | IS analog | IS total | IS bits | QR analog | QR total "
             "| QR bits | QR SNR_a | cheapest (analog) | cheapest (total) |",
             "|" + "---|" * 13]
    for i, s in enumerate(se["snr_db"]):
        row = [f"{s:g}"]
        for m in MODELS:
            row += [_fmt(se[m]["energy_core_fj"][i]), _fmt(se[m]["energy_fj"][i]), _fmt(se[m]["adc_bits"][i], "d")]
        row += [_fmt(se["qr"]["snr_a_db"][i], ".1f"), se["preferred_core"][i] or "-", se["preferred_total"][i] or "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "(QR's capacitor cannot go below its minimum, so at low targets it delivers a higher SNR_a "
              "than asked, shown in 'QR SNR_a'.)", "",
              "## ADC bits from MPC vs dot-product length", "",
              "| N | lossless bits | QS SNR_a (dB) | QS MPC bits | QS SNR_T (dB) | QR SNR_a (dB) | QR MPC bits "
              "| QR SNR_T (dB) |", "|" + "---|" * 8]
    for i, n in enumerate(mp["n"]):
        lines.append(f"| {n} | {mp['full_bits'][i]} | {mp['qs']['snr_a_db'][i]:.1f} | {mp['qs']['mpc_bits'][i]} | "
                     f"{mp['qs']['snr_t_db'][i]:.1f} | {mp['qr']['snr_a_db'][i]:.1f} | {mp['qr']['mpc_bits'][i]} | "
                     f"{mp['qr']['snr_t_db'][i]:.1f} |")
    lines += ["", "QS runs at its headroom-limited discharge v = dV_max / (N E[p]); QR at "
              f"C_u = {config.qr_c_unit:g} fF.", "", "## Voltage-headroom bound on N (QS)", "",
              "| SNR_a (dB) | N_max | N_max without mismatch |", "|---|---|---|"]
    for i, s in enumerate(hr["snr_db"]):
        lines.append(f"| {s:g} | {_fmt(hr['n_max'][i], '.4g')} | {hr['n_max_no_mismatch'][i]:.4g} |")
    lines += ["", "## Notes", "",
              "- The paper's numbers are from its abstracts; its equations were not readable here, so the compute "
              "models are derived from first principles in `jaxrob/hw/_imc.py` (see its docstring) and the "
              "technology constants are our documented choices, not fitted to the paper.",
              "- Our QS analog energy grows 2x per 6 dB where the sampled kT/C noise dominates (low SNR), 4x where "
              "the cells' integrated channel noise dominates, and faster near the mismatch floor; the paper's 3.3x "
              "lies between, so it is reported as the SNR where our ratio reaches it.",
              f"- Run time {results['seconds']:.2f} s."]
    return "\n".join(lines) + "\n"


def run(config: Config, ctx: Any) -> dict:
    """Computes the four tables and writes ``results.md``; returns the results dict."""
    config.validate()
    ctx = _snn.context(ctx, NAME)
    t0 = time.perf_counter()
    tech, stats = _tech(config), _imc.DotStats()
    results: dict[str, Any] = {"paper": PAPER, "zeta_y": stats.zeta_y, "c_unit_max": tech.c_unit_max}
    results["snr_energy"] = snr_energy(config, tech, stats)
    results["mpc"] = mpc_table(config, tech, stats)
    results["headroom"] = headroom_table(config, tech, stats)
    results["qs_ratio"] = qs_energy_ratio(config, tech, stats)
    # Crossover of the analog energies: the lowest SNR_a at which QR is no dearer than QS (QS out of reach counts).
    fine = np.arange(-10.0, 60.0, 0.1)
    s = _imc.from_db(fine)
    e_qs = np.asarray(_imc.qs_energy(config.n_rows, _imc.knob_for_snr("qs", s, config.n_rows, tech, stats), tech,
                                     stats))
    e_qr = np.asarray(_imc.qr_energy(config.n_rows, _imc.knob_for_snr("qr", s, config.n_rows, tech, stats), tech,
                                     stats))
    qr_wins = np.isfinite(e_qr) & (~np.isfinite(e_qs) | (e_qr <= e_qs))
    results["crossover_db"] = float(fine[np.argmax(qr_wins)]) if qr_wins.any() else None
    results["qr_max_snr_db"] = float(_imc.db(_imc.qr_snr(config.n_rows, tech.c_unit_max, tech, stats)))
    hr = results["headroom"]
    step = hr["snr_db"][1] - hr["snr_db"][0] if len(hr["snr_db"]) > 1 else None

    def per_3db(a, b):
        return (a / b) ** (3.0 / step) if step and a and b else None

    results["headroom_ratio_no_mismatch"] = per_3db(hr["n_max_no_mismatch"][0], hr["n_max_no_mismatch"][1])
    results["headroom_ratio"] = per_3db(hr["n_max"][0], hr["n_max"][1])
    results["seconds"] = time.perf_counter() - t0
    _io.write_text(ctx.run_dir / "results.md", _table(results, config))
    ctx.log.info(f"imc_limits done in {results['seconds']:.2f} s; QS->QR crossover at {results['crossover_db']} dB")
    return results
