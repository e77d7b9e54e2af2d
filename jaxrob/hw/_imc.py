"""Precision limits of in-memory computing (IMC): noise model, SNR metrics, MPC, and QS / IS / QR compute models.

An IMC column computes an ``N``-term dot product ``y = sum_i w_i x_i`` in the analog domain
and digitizes it with a column ADC.  Following Gonugondla, Sakr, Dbouk and Shanbhag, the
output is written as the ideal dot product plus independent noise terms

    ``y_o = y + q_iy + eta_a + q_y``,

``q_iy`` the input (activation and weight) quantization noise referred to the output,
``eta_a`` the analog core's noise, ``q_y`` the ADC's quantization (and clipping) noise, and the
accuracy of the IMC is measured by SNR metrics (all linear power ratios here; :func:`db` and
:func:`from_db` convert):

* ``SQNR_qiy = sigma_y^2 / sigma_qiy^2`` (:func:`sqnr_input`),
* ``SNR_a = sigma_y^2 / sigma_eta_a^2``, the *compute SNR* of the analog core
  (:func:`qs_snr`, :func:`is_snr`, :func:`qr_snr`),
* ``SNR_A``: before the ADC, ``1/SNR_A = 1/SQNR_qiy + 1/SNR_a`` (:func:`snr_pre_adc`),
* ``SNR_T``: the total, ``1/SNR_T = 1/SQNR_qiy + 1/SNR_a + 1/SQNR_qy + 1/SNR_cc``
  (:func:`snr_total`; ``SQNR_qy`` the ADC's quantization noise, ``SNR_cc`` its clipping
  noise).

So ``SNR_T <= SNR_a``: the analog core fundamentally limits the IMC, and the precisions must be
chosen so that ``SNR_T -> SNR_a``.  The **minimum precision criterion** (MPC,
:func:`mpc_adc_bits`) picks the smallest ADC precision whose quantization noise costs at most
``loss_db`` of ``SNR_A``: the ADC's range is set by the output's *spread* (clipping at
``zeta_y`` standard deviations), not by the dot product's worst case, so it needs far fewer
bits than the lossless ``B_x + B_w + log2 N`` (:func:`adc_bits_full_precision`).

Three compute models underlie most IMCs; for each the module gives ``SNR_a``, energy and delay
per column dot product as closed forms of the design knob:

* **QS, charge summing** (:func:`qs_snr`, :func:`qs_energy`, :func:`qs_delay`): every cell
  discharges the precharged bit line (capacitance ``C_BL``) with its current for a time set by
  its input (pulse-width modulation), gated by its weight; the bit-line drop is
  ``dV = v * sum_i p_i`` with ``v = I_cell T_max / C_BL`` the unit (full-scale per-cell)
  discharge, the knob.  Noise: cell-current mismatch ``sigma_D`` (relative, per cell), the cells'
  channel thermal noise integrated on the bit line during their pulses, and the bit line's
  sampled ``kT / C_BL``.  Energy ``C_BL V_dd E[dV]``.  The bit line
  can only swing by ``dV_max`` before the cells leave saturation (**voltage headroom**), which
  bounds ``N`` for a target ``SNR_a`` (:func:`qs_max_rows`): the bound doubles for every 3 dB
  drop in ``SNR_a`` (exactly so without mismatch, about so far below the mismatch floor).
* **IS, current summing** (:func:`is_snr`, :func:`is_energy`, :func:`is_delay`): the cell
  currents sum into a load of resistance ``R = v / I_cell`` on the column node (capacitance
  ``C_BL``); the same noise sources and headroom as QS (the channel noise is filtered by
  ``R C_BL`` instead of integrated: half of QS's), but the currents flow for the settling time
  ``R C_BL ln(2^(B+1))`` to ``B``-bit accuracy, so the energy is QS's times ``(B + 1) ln 2``.
* **QR, charge redistribution** (:func:`qr_snr`, :func:`qr_energy`, :func:`qr_delay`): every
  cell charges its own capacitor ``C_u`` (the knob) to ``p_i V_dd``, then the ``N`` capacitors
  share charge: ``V_o = V_dd mean_i p_i``.  Noise: capacitor mismatch (Pelgrom,
  ``sigma_C = A_C / sqrt(C_u / 1 fF)``) and ``kT / (N C_u)``, both falling as ``1 / C_u``, so
  ``SNR_a`` grows linearly with ``C_u`` (and with energy ``N C_u V_dd^2 E[p]``) with no
  mismatch floor but an area bound ``C_u <= c_unit_max``; no headroom limit on ``N``.

Consequences (the paper's conclusions, reproduced by ``experiments/imc_limits.py``): QS is the
cheapest at low compute SNR but its ``SNR_a`` saturates at the mismatch floor
``sigma_p^2 / (E[p^2] sigma_D^2)`` and its energy climbs steeply towards it; QR costs a fixed
``N C_u V_dd^2`` but reaches high ``SNR_a``, so QS is preferred at low and QR at high compute
SNR; IS pays the settling factor over QS.  (QR's cost is at least ``N c_unit_min V_dd^2 E[p]``.)

Units: capacitance fF, energy fJ, current uA, time ns, voltage V (so ``fF * V^2 = fJ`` and
``fF * V / uA = ns``).  ``p_i`` are the per-term analog products normalised to ``[0, 1]``
(:class:`DotStats`).

**Provenance.** Only the abstracts of the paper (ICCAD 2020 and arXiv 2012.13645) could be
read from this environment; its equations were not.  The SNR metrics, MPC and the three
compute models follow the paper's description (the notation as far as we know it); the closed forms
here are *derived* from first principles (independent noise sources, uniform quantizers,
Gaussian clipping noise by the central limit theorem, ``kT/C`` sampling noise, Pelgrom
mismatch, RC settling), and every technology constant in :class:`IMCTech` is marked as the
paper's or ours.  The QS-headroom and regime trends match the paper's stated ones; the
paper's exact numbers (e.g. 3.3x QS energy per 6 dB) are printed beside ours by the experiment
rather than fitted.

References:
  Gonugondla, Sakr, Dbouk, Shanbhag, "Fundamental Limits on the Precision of In-memory
  Architectures", ICCAD 2020; journal version "Fundamental Limits on Energy-Delay-Accuracy of
  In-memory Architectures in Inference Applications", IEEE TCAD 2021, arXiv:2012.13645.
  Murmann, "Energy limits in A/D converters", IEEE FTFC 2013 (the ADC energy form).
  Pelgrom, Duinmaijer, Welbers, "Matching properties of MOS transistors", IEEE JSSC 1989.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.hw._smooth import interp_int

BOLTZMANN_FJ = 1.380649e-8          # k in fJ / K
MODELS = ("qs", "is", "qr")


def _positive_fields(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            _validate.number(f"{type(obj).__name__}.{name}", value, min=0.0, min_inclusive=False)


@dataclasses.dataclass(frozen=True)
class IMCTech:
    """Technology parameters of an SRAM IMC column (default: 65 nm CMOS, 512 rows).

    A pytree (every field is a leaf), so design studies may ``jax.vmap`` over technologies or
    differentiate with respect to a field.  Units: fF, fJ, uA, ns, V.

    Attributes:
      n_rows: rows of the array, the largest dot product per column (512: the paper's array).
      vdd: supply voltage, V (1.0: nominal 65 nm core supply; our choice).
      temperature: K (300; our choice).
      c_bl: bit-line (column-node) capacitance, fF (256 = 512 cells x 0.5 fF; our estimate).
      dv_max: bit-line voltage headroom of QS / IS, V (0.5: the access transistors stay in
        saturation; our choice).
      i_cell: cell discharge current at the compute word-line voltage, uA (10; our choice).
      sigma_d: relative cell-current mismatch ``sigma_I / I`` (0.03; our choice).
      qr_mismatch: capacitor mismatch ``sigma_C / C`` of a 1 fF capacitor; Pelgrom scaling
        ``1 / sqrt(C)`` (0.01, typical metal-fringe capacitors; our choice).
      c_unit_min, c_unit_max: realizable QR capacitor range, fF (0.5 and 5: lithography and
        area per cell; our choice).
      adc_k1, adc_k2: ADC energy ``k1 * B + k2 * 4**B`` fJ per conversion, the technology- and
        thermal-noise-limited fronts of Murmann's survey (100 fJ and 1e-3 fJ = 1 aJ; values our
        choice).
      gamma_n: channel thermal-noise factor of the cell transistors (2/3, long-channel value;
        our choice).
      v_ov: gate overdrive of the discharging cells, V (0.2: reduced word-line voltage keeps them
        in saturation; our choice); ``g_m = 2 I_cell / V_ov``.
      t_adc_bit: SAR ADC time per bit, ns (1.0; our choice).
      t_qr: QR charge-and-share time, ns (2.0; our choice).
    """

    n_rows: float = 512.0
    vdd: float = 1.0
    temperature: float = 300.0
    c_bl: float = 256.0
    dv_max: float = 0.5
    i_cell: float = 10.0
    sigma_d: float = 0.03
    qr_mismatch: float = 0.01
    c_unit_min: float = 0.5
    c_unit_max: float = 5.0
    adc_k1: float = 100.0
    adc_k2: float = 1e-3
    gamma_n: float = 2.0 / 3.0
    v_ov: float = 0.2
    t_adc_bit: float = 1.0
    t_qr: float = 2.0

    def __post_init__(self):
        _positive_fields(self, ("n_rows", "vdd", "temperature", "c_bl", "dv_max", "i_cell", "c_unit_min",
                                "c_unit_max", "adc_k1", "gamma_n", "v_ov", "t_adc_bit", "t_qr"))
        for name in ("sigma_d", "qr_mismatch", "adc_k2"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                _validate.number(f"IMCTech.{name}", value, min=0.0)

    @property
    def kt(self):
        """``k T`` in fJ."""
        return BOLTZMANN_FJ * self.temperature


@dataclasses.dataclass(frozen=True)
class DotStats:
    """Signal statistics of the dot product (a pytree, like :class:`IMCTech`).

    Attributes:
      p_mean, p_var: mean and variance of the per-term analog product ``p_i`` normalised to
        ``[0, 1]``.  Default: input ``x ~ U[0, 1]`` times a weight bit ``~ Bernoulli(1/2)``, so
        ``E[p] = 1/4`` and ``Var[p] = 1/6 - 1/16 = 5/48`` (our choice).
      zeta_x, zeta_w: peak-to-RMS ratios ``x_max / sqrt(E[x^2])`` and ``w_max / sqrt(E[w^2])``
        of the activations (unsigned) and weights (signed); ``sqrt(3)`` for uniform operands.
      zeta_y: ADC clipping level in output standard deviations (4: clipping noise ~ -52 dB;
        our choice).
    """

    p_mean: float = 0.25
    p_var: float = 5.0 / 48.0
    zeta_x: float = math.sqrt(3.0)
    zeta_w: float = math.sqrt(3.0)
    zeta_y: float = 4.0

    def __post_init__(self):
        _positive_fields(self, ("p_mean", "p_var", "zeta_x", "zeta_w", "zeta_y"))
        if isinstance(self.p_mean, numbers.Real) and self.p_mean > 1:
            raise ValueError(f"DotStats.p_mean must lie in (0, 1] (p is normalised), got {self.p_mean}")

    @property
    def p_m2(self):
        """``E[p^2]``."""
        return self.p_var + self.p_mean ** 2


for _cls in (IMCTech, DotStats):
    jax.tree_util.register_dataclass(_cls, data_fields=[f.name for f in dataclasses.fields(_cls)],
                                     meta_fields=[])


def db(x: jax.typing.ArrayLike) -> jax.Array:
    """Power ratio to dB."""
    return 10.0 * jnp.log10(jnp.asarray(x, jnp.float32))


def from_db(x_db: jax.typing.ArrayLike) -> jax.Array:
    """dB to power ratio."""
    return 10.0 ** (jnp.asarray(x_db, jnp.float32) / 10.0)


# ----------------------------------------------------------------------------- SNR metrics


def sqnr_input(bx: jax.typing.ArrayLike, bw: jax.typing.ArrayLike, stats: DotStats = DotStats()) -> jax.Array:
    """``SQNR_qiy``: the dot product's SNR against input quantization noise (linear).

    Unsigned ``B_x``-bit activations on ``[0, x_m]`` (step ``x_m 2^-B_x``) and signed ``B_w``-bit
    weights on ``[-w_m, w_m]`` (step ``w_m 2^(1-B_w)``), independent and zero-mean weights:
    ``sigma_y^2 = N E[w^2] E[x^2]`` and ``sigma_qiy^2 = N (E[w^2] D_x^2 / 12 + E[x^2] D_w^2 / 12)``
    (second-order term dropped), so ``N`` cancels:

        ``1 / SQNR_qiy = zeta_x^2 4^-B_x / 12 + zeta_w^2 4^-B_w / 3``.

    Args:
      bx, bw: activation and weight precisions (any shape; real values allowed).
      stats: the operands' peak-to-RMS ratios.

    Returns:
      ``SQNR_qiy`` (broadcast shape).
    """
    bx, bw = jnp.asarray(bx, jnp.float32), jnp.asarray(bw, jnp.float32)
    return 1.0 / (stats.zeta_x ** 2 * 4.0 ** -bx / 12.0 + stats.zeta_w ** 2 * 4.0 ** -bw / 3.0)


def sqnr_adc(by: jax.typing.ArrayLike, stats: DotStats = DotStats()) -> jax.Array:
    """``SQNR_qy = 3 * 4^B_y / zeta_y^2``: a ``B_y``-bit ADC over ``+-zeta_y sigma_y`` (linear)."""
    return 3.0 * 4.0 ** jnp.asarray(by, jnp.float32) / stats.zeta_y ** 2


def clipping_snr(stats: DotStats = DotStats()) -> jax.Array:
    """``SNR_cc``: signal to clipping-noise ratio of a Gaussian output clipped at ``+-zeta_y sigma``.

    ``E[(y - clip(y))^2] / sigma^2 = 2 [(1 + z^2) Q(z) - z phi(z)]`` (derived; the output is a
    sum of ``N`` independent terms, hence Gaussian by the central limit theorem).
    """
    z = jnp.asarray(stats.zeta_y, jnp.float32)
    q = 0.5 * jax.scipy.special.erfc(z / jnp.sqrt(2.0))
    phi = jnp.exp(-0.5 * z ** 2) / jnp.sqrt(2.0 * jnp.pi)
    return 1.0 / (2.0 * ((1.0 + z ** 2) * q - z * phi))


def snr_pre_adc(snr_a: jax.typing.ArrayLike, bx: jax.typing.ArrayLike, bw: jax.typing.ArrayLike,
                stats: DotStats = DotStats()) -> jax.Array:
    """``SNR_A``: ``1 / SNR_A = 1 / SQNR_qiy + 1 / SNR_a`` (linear)."""
    return 1.0 / (1.0 / sqnr_input(bx, bw, stats) + 1.0 / jnp.asarray(snr_a, jnp.float32))


def snr_total(snr_a: jax.typing.ArrayLike, bx: jax.typing.ArrayLike, bw: jax.typing.ArrayLike,
              by: jax.typing.ArrayLike, stats: DotStats = DotStats()) -> jax.Array:
    """``SNR_T``: ``1/SNR_T = 1/SQNR_qiy + 1/SNR_a + 1/SQNR_qy + 1/SNR_cc`` (linear).

    Args:
      snr_a: the analog core's compute SNR (linear).
      bx, bw, by: activation, weight and ADC precisions.
      stats: signal statistics (peak-to-RMS ratios, ADC clipping level).
    """
    return 1.0 / (1.0 / snr_pre_adc(snr_a, bx, bw, stats) + 1.0 / sqnr_adc(by, stats) + 1.0 / clipping_snr(stats))


def adc_bits_full_precision(bx: jax.typing.ArrayLike, bw: jax.typing.ArrayLike, n: jax.typing.ArrayLike) -> jax.Array:
    """The lossless output precision ``B_x + B_w + ceil(log2 N)`` (what MPC improves on)."""
    return (jnp.asarray(bx, jnp.float32) + jnp.asarray(bw, jnp.float32)
            + jnp.ceil(jnp.log2(jnp.asarray(n, jnp.float32))))


def mpc_adc_bits(snr_pre: jax.typing.ArrayLike, stats: DotStats = DotStats(), *, loss_db: float = 0.5,
                 relaxed: bool = False) -> jax.Array:
    """Minimum precision criterion: the fewest ADC bits costing at most ``loss_db`` of ``SNR_A``.

    Requiring ``1/SNR_A + 1/SQNR_qy <= 10^(loss_db/10) / SNR_A`` with
    ``SQNR_qy = 3 * 4^B / zeta_y^2`` gives

        ``B_MPC = ceil( log2( zeta_y^2 SNR_A / (3 (10^(loss_db/10) - 1)) ) / 2 )``,

    one more bit per 6 dB of ``SNR_A``.  (The paper's MPC sets the ADC precision from the
    pre-ADC SNR and clips at a multiple of the output's standard deviation; the ``loss_db``
    form and its 0.5 dB default are ours.)  Clipping noise is accounted in :func:`snr_total`.

    Args:
      snr_pre: ``SNR_A`` (linear, any shape).
      stats: supplies ``zeta_y``.
      loss_db: allowed drop from ``SNR_A`` to the ADC output, dB (> 0).
      relaxed: return the real-valued bound without the ceiling (for gradients); equal to the
        exact value wherever the bound is an integer.

    Returns:
      ADC bits (float32, at least 1).
    """
    _validate.number("loss_db", loss_db, min=0.0, min_inclusive=False)
    gamma = 10.0 ** (loss_db / 10.0) - 1.0
    b = 0.5 * jnp.log2(stats.zeta_y ** 2 * jnp.asarray(snr_pre, jnp.float32) / (3.0 * gamma))
    b = jnp.maximum(b, 1.0)
    return b if relaxed else jnp.ceil(b)


def adc_energy(bits: jax.typing.ArrayLike, tech: IMCTech = IMCTech()) -> jax.Array:
    """ADC energy per conversion, fJ: ``k1 B + k2 4^B`` (Murmann's survey fronts)."""
    b = jnp.asarray(bits, jnp.float32)
    return tech.adc_k1 * b + tech.adc_k2 * 4.0 ** b


def adc_delay(bits: jax.typing.ArrayLike, tech: IMCTech = IMCTech()) -> jax.Array:
    """SAR ADC conversion time, ns: ``B * t_adc_bit``."""
    return jnp.asarray(bits, jnp.float32) * tech.t_adc_bit


# ----------------------------------------------------------------------------- compute models


def _f(x):
    return jnp.asarray(x, jnp.float32)


def _summing_noise(model: str, tech: IMCTech):
    """``(a, b)`` of the QS / IS noise ``N E[p] a v + b``: current noise and sampled thermal noise."""
    factor = 4.0 if model == "qs" else 2.0
    return factor * tech.kt * tech.gamma_n / (tech.v_ov * tech.c_bl), tech.kt / tech.c_bl


def _summing_snr(model, n, v, tech, stats):
    a, b = _summing_noise(model, tech)
    n, v = _f(n), _f(v)
    noise = n * stats.p_m2 * tech.sigma_d ** 2 * v ** 2 + n * stats.p_mean * a * v + b
    return n * stats.p_var * v ** 2 / noise


def qs_snr(n: jax.typing.ArrayLike, v: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
           stats: DotStats = DotStats()) -> jax.Array:
    """Compute SNR of charge summing (linear).

        ``SNR_a = N sigma_p^2 v^2 / (N E[p^2] sigma_D^2 v^2 + N E[p] a v + kT / C_BL)``,
        ``a = 4 kT gamma / (V_ov C_BL)``.

    Signal ``v sum p_i``.  Noise (derived): cell-current mismatch ``v sum eps_i p_i``,
    ``eps_i ~ N(0, sigma_D^2)``; the channel thermal noise of each discharging cell
    (PSD ``4 kT gamma g_m``, ``g_m = 2 I_cell / V_ov``) integrated on ``C_BL`` over its pulse
    ``p_i T_max``, variance ``4 kT gamma p_i v / (V_ov C_BL)``; and the bit line's sampled
    ``kT / C_BL``.  Saturates at the mismatch floor ``sigma_p^2 / (E[p^2] sigma_D^2)``
    (:func:`qs_snr_floor`).

    Args:
      n: dot-product length ``N`` (rows active).
      v: unit discharge ``I_cell T_max / C_BL``, V (the knob).
      tech, stats: technology and signal statistics.

    Returns:
      ``SNR_a`` (linear), broadcast over ``n`` and ``v``.
    """
    return _summing_snr("qs", n, v, tech, stats)


def qs_energy(n: jax.typing.ArrayLike, v: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
              stats: DotStats = DotStats()) -> jax.Array:
    """Analog energy of charge summing per column dot product, fJ: ``C_BL V_dd N E[p] v``.

    (Restoring the mean bit-line drop ``E[dV] = N E[p] v`` from ``V_dd``; word-line drivers are
    not modelled.)
    """
    return tech.c_bl * tech.vdd * _f(n) * stats.p_mean * _f(v)


def qs_delay(v: jax.typing.ArrayLike, tech: IMCTech = IMCTech()) -> jax.Array:
    """Analog delay of charge summing, ns: the full-scale pulse ``T_max = C_BL v / I_cell``."""
    return tech.c_bl * _f(v) / tech.i_cell


def qs_headroom(n: jax.typing.ArrayLike, v: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
                stats: DotStats = DotStats()) -> jax.Array:
    """``dV_max / E[dV]`` of QS / IS: at least 1 when the mean swing ``N E[p] v`` fits the headroom.

    (Our criterion: the *mean* swing; the output's spread around it is
    ``sqrt(N) sigma_p v``, small beside ``N E[p] v`` for long dot products.)
    """
    return tech.dv_max / (_f(n) * stats.p_mean * _f(v))


def qs_max_rows(snr_a: jax.typing.ArrayLike, tech: IMCTech = IMCTech(), stats: DotStats = DotStats(),
                *, model: str = "qs") -> jax.Array:
    """Voltage-headroom bound on the dot-product length ``N`` for a target compute SNR (QS or IS).

    At the headroom limit ``N E[p] v = dV_max`` the noise terms of :func:`qs_snr` give
    ``1/SNR_a = f + N E[p]^2 (a / dV_max + b / dV_max^2) / sigma_p^2`` (``f`` the inverse mismatch
    floor, ``a``, ``b`` the current- and sampled-noise coefficients), so

        ``N_max = (1/SNR_a - f) sigma_p^2 / (E[p]^2 (a / dV_max + b / dV_max^2))``:

    it doubles for every 3 dB drop in ``SNR_a`` while the mismatch floor is far (exactly when
    ``sigma_D = 0``).  Non-positive when ``SNR_a`` is at or above the floor (unreachable).

    Args:
      snr_a: target compute SNR (linear).
      model: ``"qs"`` or ``"is"``.
    """
    _validate.choice("model", model, ("qs", "is"))
    a, b = _summing_noise(model, tech)
    s = _f(snr_a)
    f = stats.p_m2 * tech.sigma_d ** 2 / stats.p_var
    return (1.0 / s - f) * stats.p_var / (stats.p_mean ** 2 * (a / tech.dv_max + b / tech.dv_max ** 2))


def qs_snr_floor(tech: IMCTech = IMCTech(), stats: DotStats = DotStats()) -> jax.Array:
    """The QS / IS mismatch floor ``sigma_p^2 / (E[p^2] sigma_D^2)`` (linear; inf when ``sigma_D = 0``)."""
    return stats.p_var / (stats.p_m2 * _f(tech.sigma_d) ** 2)


def is_snr(n: jax.typing.ArrayLike, v: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
           stats: DotStats = DotStats()) -> jax.Array:
    """Compute SNR of current summing (linear), :func:`qs_snr` with ``a = 2 kT gamma / (V_ov C_BL)``.

    The cell currents flow through the load ``R = v / I_cell`` into the column node ``C_BL``;
    the channel noise of the cells (total ``g_m = 2 N E[p] I_cell / V_ov``) is filtered by
    ``R C_BL`` (noise bandwidth ``1 / (4 R C_BL)``), variance ``2 kT gamma N E[p] v / (V_ov C_BL)``
    -- half of QS's integrated noise -- plus the load's ``kT / C_BL`` and the same mismatch.
    """
    return _summing_snr("is", n, v, tech, stats)


def is_energy(n: jax.typing.ArrayLike, v: jax.typing.ArrayLike, bits: jax.typing.ArrayLike,
              tech: IMCTech = IMCTech(), stats: DotStats = DotStats()) -> jax.Array:
    """Analog energy of current summing, fJ.

    The summed current ``N E[p] I_cell`` flows from ``V_dd`` for the settling time
    ``R C_BL ln(2^(B+1))`` (to half an LSB of a ``B``-bit ADC), ``R = v / I_cell``:
    ``E = C_BL V_dd N E[p] v (B + 1) ln 2`` -- QS's energy times the settling factor.
    """
    return qs_energy(n, v, tech, stats) * (_f(bits) + 1.0) * math.log(2.0)


def is_delay(v: jax.typing.ArrayLike, bits: jax.typing.ArrayLike, tech: IMCTech = IMCTech()) -> jax.Array:
    """Analog delay of current summing, ns: ``R C_BL (B + 1) ln 2`` with ``R = v / I_cell``."""
    return qs_delay(v, tech) * (_f(bits) + 1.0) * math.log(2.0)


def qr_snr(n: jax.typing.ArrayLike, c_unit: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
           stats: DotStats = DotStats()) -> jax.Array:
    """Compute SNR of charge redistribution (linear).

    ``V_o = V_dd sum_i C_i p_i / sum_i C_i``; to first order in the mismatch
    ``C_i = C_u (1 + eps_i)``, ``sigma_eps = A_C / sqrt(C_u / 1 fF)``, the error is
    ``(V_dd / N) sum eps_i (p_i - mean p)`` and the sampled thermal noise is ``kT / (N C_u)``;
    the signal is ``V_dd^2 sigma_p^2 / N``.  Hence (``N`` cancels)

        ``SNR_a = C_u / (A_C^2 * 1 fF + kT / (sigma_p^2 V_dd^2))``.

    Args:
      n: dot-product length (kept for a uniform signature; the QR SNR does not depend on it).
      c_unit: the per-cell capacitor ``C_u``, fF (the knob).
    """
    c = _f(c_unit) + 0.0 * _f(n)
    return c / (tech.qr_mismatch ** 2 + tech.kt / (stats.p_var * tech.vdd ** 2))


def qr_energy(n: jax.typing.ArrayLike, c_unit: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
              stats: DotStats = DotStats()) -> jax.Array:
    """Analog energy of charge redistribution, fJ: charging ``N`` capacitors to ``p_i V_dd``, ``N C_u V_dd^2 E[p]``."""
    return _f(n) * _f(c_unit) * tech.vdd ** 2 * stats.p_mean


def qr_delay(tech: IMCTech = IMCTech()) -> jax.Array:
    """Analog delay of charge redistribution, ns: the charge-and-share time ``t_qr``."""
    return _f(tech.t_qr)


# ----------------------------------------------------------------------------- the whole column


class IMCCost(NamedTuple):
    """Accuracy and cost of one column dot product (each field broadcast over the inputs).

    Attributes:
      snr_a: compute SNR of the analog core (linear).
      snr_pre: ``SNR_A`` with input quantization (linear).
      snr_t: total ``SNR_T`` after the MPC-sized ADC (linear).
      adc_bits: ADC precision from MPC (capped at the lossless precision).
      energy_core, energy_adc, energy: analog, ADC and total energy, fJ.
      delay: analog plus ADC time, ns.
      headroom: ``dV_max / E[dV]`` (QS, IS; < 1 means the bit line clips) or ``1 / E[p]`` (QR).
    """

    snr_a: jax.Array
    snr_pre: jax.Array
    snr_t: jax.Array
    adc_bits: jax.Array
    energy_core: jax.Array
    energy_adc: jax.Array
    energy: jax.Array
    delay: jax.Array
    headroom: jax.Array


def _check_positive(name: str, x: Any, *, minimum: float = 0.0, inclusive: bool = False) -> None:
    if not _validate.is_concrete(x):
        return
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must be a real number or array, got {x!r} of dtype {a.dtype}")
    if a.size == 0:
        return
    bad = ~np.isfinite(a) | ((a < minimum) if inclusive else (a <= minimum))
    if bool(np.any(bad)):
        op = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be finite and {op} {minimum}; got values in "
                         f"[{float(np.min(a)):.4g}, {float(np.max(a)):.4g}]")


def imc_cost(model: str, n: jax.typing.ArrayLike, knob: jax.typing.ArrayLike, *, bx: jax.typing.ArrayLike = 8,
             bw: jax.typing.ArrayLike = 8, tech: IMCTech = IMCTech(), stats: DotStats = DotStats(),
             loss_db: float = 0.5, relaxed: bool = False) -> IMCCost:
    """SNR, MPC ADC precision, energy and delay of one IMC column dot product.

    The ADC precision is ``min(B_MPC(SNR_A), B_x + B_w + ceil(log2 N))``.  With
    ``relaxed=True`` the ceiling inside MPC is dropped and every bit-dependent quantity (ADC
    energy and delay, IS energy and delay, ``SNR_T``) is :func:`~jaxrob.hw._smooth.interp_int`
    of its exact value between the neighbouring integer precisions: continuous, equal to the
    exact cost where the MPC bound is an integer, and ``jax.grad``-able with respect to
    ``knob``, ``n``, the precisions and (as a pytree) the technology.

    Args:
      model: ``"qs"``, ``"is"`` or ``"qr"``.
      n: dot-product length ``N`` (any shape; 1 .. ``tech.n_rows`` when concrete).
      knob: QS / IS unit discharge ``v`` in V, or QR capacitor ``C_u`` in fF (positive).
      bx, bw: activation and weight precisions (>= 1).
      tech, stats: technology and signal statistics.
      loss_db: MPC's allowed SNR loss in the ADC, dB.
      relaxed: the smooth version (see above).

    Returns:
      :class:`IMCCost`, fields broadcast over ``n``, ``knob``, ``bx``, ``bw``.

    Example:
      >>> c = imc_cost("qs", 512, 1e-3)                     # 512-row QS column, 1 mV unit discharge
      >>> float(db(c.snr_a)) > 10 and float(c.adc_bits) < 16
      True
      >>> grid = jax.vmap(lambda v: imc_cost("qs", 512, v).energy)(jnp.geomspace(1e-4, 5e-3, 8))
    """
    _validate.choice("model", model, MODELS)
    if not isinstance(relaxed, bool):
        raise TypeError(f"relaxed must be a bool, got {relaxed!r}")
    _check_positive("n", n, minimum=1.0, inclusive=True)
    if _validate.is_concrete(n) and _validate.is_concrete(tech.n_rows) and np.size(n):
        if float(np.max(np.asarray(n))) > float(np.asarray(tech.n_rows)):
            raise ValueError(f"n must be <= tech.n_rows = {tech.n_rows} (rows of the array), "
                             f"got max {float(np.max(np.asarray(n)))}")
    _check_positive("knob", knob)
    _check_positive("bx", bx, minimum=1.0, inclusive=True)
    _check_positive("bw", bw, minimum=1.0, inclusive=True)
    _validate.number("loss_db", loss_db, min=0.0, min_inclusive=False)

    n, knob, bx, bw = _f(n), _f(knob), _f(bx), _f(bw)
    if model == "qr":
        snr_a = qr_snr(n, knob, tech, stats)
        headroom = jnp.broadcast_to(1.0 / _f(stats.p_mean), jnp.shape(snr_a))
    else:
        snr_a = qs_snr(n, knob, tech, stats)
        headroom = qs_headroom(n, knob, tech, stats)
    snr_pre = snr_pre_adc(snr_a, bx, bw, stats)
    full = adc_bits_full_precision(bx, bw, n)
    bits = jnp.minimum(mpc_adc_bits(snr_pre, stats, loss_db=loss_db, relaxed=relaxed), full)

    def core_energy(b):
        if model == "qs":
            return qs_energy(n, knob, tech, stats) + 0.0 * b
        if model == "is":
            return is_energy(n, knob, b, tech, stats)
        return qr_energy(n, knob, tech, stats) + 0.0 * b

    def core_delay(b):
        if model == "qs":
            return qs_delay(knob, tech) + 0.0 * b
        if model == "is":
            return is_delay(knob, b, tech)
        return qr_delay(tech) + 0.0 * b

    def at_bits(fn):
        return interp_int(fn, bits) if relaxed else fn(bits)

    energy_core = at_bits(core_energy)
    energy_adc = at_bits(lambda b: adc_energy(b, tech))
    delay = at_bits(lambda b: core_delay(b) + adc_delay(b, tech))
    snr_t = at_bits(lambda b: snr_total(snr_a, bx, bw, b, stats))
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in (snr_a, bits, energy_core, headroom)))
    out = (snr_a, snr_pre, snr_t, bits, energy_core, energy_adc, energy_core + energy_adc, delay, headroom)
    return IMCCost(*(jnp.broadcast_to(x, shape) for x in out))


def knob_for_snr(model: str, snr_a: jax.typing.ArrayLike, n: jax.typing.ArrayLike, tech: IMCTech = IMCTech(),
                 stats: DotStats = DotStats()) -> jax.Array:
    """The cheapest knob reaching a target compute SNR, or NaN where no design reaches it.

    QS / IS: inverting :func:`qs_snr`,
    ``v^2 = (kT / C_BL) / (N (sigma_p^2 / SNR_a - E[p^2] sigma_D^2))``, feasible below the mismatch
    floor and within the headroom (``N E[p] v <= dV_max``).  QR: inverting :func:`qr_snr`,
    ``C_u = SNR_a (A_C^2 + kT / (sigma_p^2 V_dd^2))`` raised to ``c_unit_min`` (a smaller capacitor
    cannot be built; the SNR is then above target) and feasible up to ``c_unit_max``.

    Args:
      model: ``"qs"``, ``"is"`` or ``"qr"``.
      snr_a: target compute SNR (linear, positive).
      n: dot-product length.

    Returns:
      The knob (V for QS / IS, fF for QR), NaN where infeasible.
    """
    _validate.choice("model", model, MODELS)
    _check_positive("snr_a", snr_a)
    _check_positive("n", n, minimum=1.0, inclusive=True)
    s, n = _f(snr_a), _f(n)
    if model == "qr":
        c = s * (tech.qr_mismatch ** 2 + tech.kt / (stats.p_var * tech.vdd ** 2)) + 0.0 * n
        c = jnp.maximum(c, tech.c_unit_min)
        return jnp.where(c <= tech.c_unit_max, c, jnp.nan)
    a, b = _summing_noise(model, tech)
    # N (sigma_p^2 - s E[p^2] sigma_D^2) v^2 - s N E[p] a v - s b = 0, the positive root.
    quad = n * (stats.p_var - s * stats.p_m2 * tech.sigma_d ** 2)
    lin = s * n * stats.p_mean * a
    safe = jnp.where(quad > 0, quad, 1.0)
    v = (lin + jnp.sqrt(lin ** 2 + 4.0 * safe * s * b)) / (2.0 * safe)
    ok = (quad > 0) & (n * stats.p_mean * v <= tech.dv_max * (1.0 + 1e-5))
    return jnp.where(ok, v, jnp.nan)
