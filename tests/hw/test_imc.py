"""IMC precision limits (jaxrob/hw/_imc.py): closed forms, Monte Carlo of the noise models, the paper's trends,
monotonicity, relaxed == exact, gradients vs finite differences, vmap/jit, bad inputs."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.hw import _imc
from jaxrob.hw._imc import DotStats, IMCTech

TECH, STATS = IMCTech(), DotStats()
KT = 1.380649e-8 * 300.0          # fJ


# ----------------------------------------------------------------------------- closed forms


def test_snr_metric_closed_forms():
    # zeta^2 = 3 for uniform operands: 1/SQNR = 3 * 4^-8 / 12 + 3 * 4^-8 / 3 = 1.25 * 2^-16.
    assert float(_imc.sqnr_input(8, 8)) == pytest.approx(2 ** 16 / 1.25, rel=1e-5)
    assert float(_imc.sqnr_adc(6)) == pytest.approx(3 * 4096 / 16, rel=1e-6)
    q = 0.5 * math.erfc(4 / math.sqrt(2))
    phi = math.exp(-8) / math.sqrt(2 * math.pi)
    assert float(_imc.clipping_snr()) == pytest.approx(1 / (2 * (17 * q - 4 * phi)), rel=1e-3)
    snr_a, bx, bw, by = 300.0, 6, 5, 7
    inv = 1 / float(_imc.sqnr_input(bx, bw)) + 1 / snr_a
    assert float(_imc.snr_pre_adc(snr_a, bx, bw)) == pytest.approx(1 / inv, rel=1e-5)
    inv += 1 / float(_imc.sqnr_adc(by)) + 1 / float(_imc.clipping_snr())
    assert float(_imc.snr_total(snr_a, bx, bw, by)) == pytest.approx(1 / inv, rel=1e-5)
    assert float(_imc.adc_bits_full_precision(8, 8, 512)) == 25.0
    assert float(_imc.adc_bits_full_precision(8, 8, 500)) == 25.0
    assert float(_imc.db(100.0)) == pytest.approx(20.0) and float(_imc.from_db(30.0)) == pytest.approx(1000.0, rel=1e-5)


def test_mpc_closed_form_and_criterion():
    gamma = 10 ** 0.05 - 1
    real = 0.5 * math.log2(16 * 1000 / (3 * gamma))                      # 7.71 (gamma = 0.122)
    assert float(_imc.mpc_adc_bits(1000.0, relaxed=True)) == pytest.approx(real, rel=1e-5)
    assert float(_imc.mpc_adc_bits(1000.0)) == math.ceil(real) == 8
    # The criterion: B_MPC loses at most loss_db of SNR_A in quantization; one bit fewer loses more.
    for s_db in (8.0, 17.0, 26.5, 33.0, 41.0):
        s = 10 ** (s_db / 10)
        b = float(_imc.mpc_adc_bits(s, loss_db=0.5))
        with_adc = 1 / (1 / s + 1 / float(_imc.sqnr_adc(b)))
        assert 10 * math.log10(s / with_adc) <= 0.5 + 1e-4
        if b > 1:
            fewer = 1 / (1 / s + 1 / float(_imc.sqnr_adc(b - 1)))
            assert 10 * math.log10(s / fewer) > 0.5
    # One more bit per 6.02 dB; far fewer bits than the lossless precision at N = 512.
    assert float(_imc.mpc_adc_bits(4000.0, relaxed=True) - _imc.mpc_adc_bits(1000.0, relaxed=True)) == pytest.approx(1.0, rel=1e-5)
    assert float(_imc.imc_cost("qs", 512, 1e-3).adc_bits) < float(_imc.adc_bits_full_precision(8, 8, 512)) - 10


def test_compute_model_closed_forms():
    n, v = 256.0, 2e-3
    a_qs, a_is, b = 4 * KT * (2 / 3) / (0.2 * 256), 2 * KT * (2 / 3) / (0.2 * 256), KT / 256
    m2 = 5 / 48 + 1 / 16
    for fn, a in ((_imc.qs_snr, a_qs), (_imc.is_snr, a_is)):
        want = n * (5 / 48) * v ** 2 / (n * m2 * 0.03 ** 2 * v ** 2 + n * 0.25 * a * v + b)
        assert float(fn(n, v)) == pytest.approx(want, rel=1e-5)
    assert float(_imc.qs_energy(n, v)) == pytest.approx(256 * 1.0 * n * 0.25 * v, rel=1e-6)
    assert float(_imc.is_energy(n, v, 6)) == pytest.approx(float(_imc.qs_energy(n, v)) * 7 * math.log(2), rel=1e-6)
    assert float(_imc.qs_delay(v)) == pytest.approx(256 * v / 10.0, rel=1e-6)
    assert float(_imc.is_delay(v, 6)) == pytest.approx(256 * v / 10.0 * 7 * math.log(2), rel=1e-6)
    c = 2.0
    assert float(_imc.qr_snr(n, c)) == pytest.approx(c / (0.01 ** 2 + KT / (5 / 48)), rel=1e-5)
    assert float(_imc.qr_snr(16.0, c)) == pytest.approx(float(_imc.qr_snr(512.0, c)), rel=1e-6)
    assert float(_imc.qr_energy(n, c)) == pytest.approx(n * c * 0.25, rel=1e-6)
    assert float(_imc.qs_snr_floor()) == pytest.approx((5 / 48) / (m2 * 0.03 ** 2), rel=1e-5)
    # The headroom bound is where the cheapest QS design exactly fills the headroom.
    s = 10 ** 2.0
    n_max = float(_imc.qs_max_rows(s))
    assert float(_imc.qs_snr(n_max, TECH.dv_max / (n_max * 0.25))) == pytest.approx(s, rel=1e-4)


def test_knob_for_snr_inverts_the_snr():
    for model, fn in (("qs", _imc.qs_snr), ("is", _imc.is_snr), ("qr", _imc.qr_snr)):
        targets = _imc.from_db(jnp.array([5.0, 12.0, 20.0, 26.0]))
        knob = _imc.knob_for_snr(model, targets, 512)
        ok = np.isfinite(np.asarray(knob))
        assert ok.any()
        got = np.asarray(fn(512, jnp.where(ok, knob, 1.0)))[ok]
        if model == "qr":      # raised to the smallest capacitor: at least the target
            assert np.all(got >= np.asarray(targets)[ok] * (1 - 1e-5))
        else:
            np.testing.assert_allclose(got, np.asarray(targets)[ok], rtol=1e-4)
    # Above the QS floor there is no design; above c_unit_max neither for QR.
    assert np.isnan(float(_imc.knob_for_snr("qs", 1.01 * _imc.qs_snr_floor(), 512)))
    assert np.isnan(float(_imc.knob_for_snr("qr", 2 * _imc.qr_snr(512, TECH.c_unit_max), 512)))


# ----------------------------------------------------------------------------- Monte Carlo of the noise models


def _p(rng, shape):
    return rng.uniform(0, 1, shape) * rng.integers(0, 2, shape)        # x ~ U[0,1] times a Bernoulli(1/2) bit


def test_qs_and_is_snr_match_a_monte_carlo_of_their_noise_model():
    rng = np.random.default_rng(0)
    n, trials, v = 512, 6000, 1.5e-3
    tech = dataclasses.replace(TECH, sigma_d=0.03)
    p = _p(rng, (trials, n))
    signal = v * p.sum(1)
    for model, factor in (("qs", 4.0), ("is", 2.0)):
        eps = rng.normal(0, tech.sigma_d, (trials, n))
        var_cur = factor * KT * tech.gamma_n * p * v / (tech.v_ov * tech.c_bl)   # per cell, grows with its pulse
        current_noise = (rng.normal(0, 1, (trials, n)) * np.sqrt(var_cur)).sum(1)
        noise = (v * eps * p).sum(1) + current_noise + rng.normal(0, math.sqrt(KT / tech.c_bl), trials)
        mc = signal.var() / noise.var()
        model_snr = float(_imc.qs_snr(n, v, tech) if model == "qs" else _imc.is_snr(n, v, tech))
        assert 10 * math.log10(mc / model_snr) == pytest.approx(0.0, abs=0.25)


def test_qr_snr_matches_a_monte_carlo_of_charge_sharing_with_mismatched_capacitors():
    rng = np.random.default_rng(1)
    n, trials = 256, 6000
    for c_u in (0.5, 2.0):
        sigma_c = TECH.qr_mismatch / math.sqrt(c_u)
        p = _p(rng, (trials, n))
        caps = c_u * (1 + rng.normal(0, sigma_c, (trials, n)))
        v_out = TECH.vdd * (caps * p).sum(1) / caps.sum(1) + rng.normal(0, 1, trials) * np.sqrt(KT / caps.sum(1))
        ideal = TECH.vdd * p.mean(1)
        mc = ideal.var() / (v_out - ideal).var()
        assert 10 * math.log10(mc / float(_imc.qr_snr(n, c_u))) == pytest.approx(0.0, abs=0.3)


def test_input_quantization_and_clipping_noise_match_monte_carlo():
    rng = np.random.default_rng(2)
    n, trials, bx, bw = 64, 20000, 4, 3
    x = rng.uniform(0, 1, (trials, n))
    w = rng.uniform(-1, 1, (trials, n))
    xq = np.minimum(np.floor(x * 2 ** bx), 2 ** bx - 1) / 2 ** bx + 2.0 ** -bx / 2       # mid-rise, step 2^-bx
    dw = 2.0 / 2 ** bw
    wq = (np.floor(w / dw) + 0.5) * dw
    y = (w * x).sum(1)
    mc = y.var() / ((wq * xq).sum(1) - y).var()
    assert 10 * math.log10(mc / float(_imc.sqnr_input(bx, bw))) == pytest.approx(0.0, abs=0.3)
    g = rng.normal(0, 1, 2_000_000)
    for z in (1.5, 2.5):
        mc = 1 / np.mean((g - np.clip(g, -z, z)) ** 2)
        assert float(_imc.clipping_snr(DotStats(zeta_y=z))) == pytest.approx(mc, rel=0.05)


# ----------------------------------------------------------------------------- the paper's trends


def test_headroom_bound_doubles_per_3db_drop():
    no_mm = dataclasses.replace(TECH, sigma_d=0.0)
    s = _imc.from_db(jnp.array([30.0, 27.0, 24.0, 21.0]))
    n_max = np.asarray(_imc.qs_max_rows(s, no_mm), np.float64)
    np.testing.assert_allclose(n_max[1:] / n_max[:-1], 10 ** 0.3, rtol=1e-4)      # 3 dB = 1.995x
    n_is = np.asarray(_imc.qs_max_rows(s, no_mm, model="is"), np.float64)
    np.testing.assert_allclose(n_is[1:] / n_is[:-1], 10 ** 0.3, rtol=1e-4)
    assert np.all(n_is > n_max)                     # IS's filtered noise is half QS's integrated noise
    # With mismatch, still about 2x while the floor is far, and more near it; none above the floor.
    s = _imc.from_db(jnp.array([12.0, 9.0, 6.0]))
    r = np.asarray(_imc.qs_max_rows(s), np.float64)
    assert np.all((r[1:] / r[:-1] > 1.99) & (r[1:] / r[:-1] < 2.1))
    assert float(_imc.qs_max_rows(1.001 * _imc.qs_snr_floor())) <= 0


def test_qs_energy_ratio_per_6db_spans_the_papers_3_3x():
    floor = float(_imc.db(_imc.qs_snr_floor()))
    grid = np.arange(-5.0, floor - 1.0, 0.25)         # within the headroom of N = 512

    def energy(s_db):
        return np.asarray(_imc.qs_energy(512, _imc.knob_for_snr("qs", _imc.from_db(s_db), 512)), np.float64)

    ratio = energy(grid) / energy(grid - 6.0)
    assert np.all(np.isfinite(ratio))
    assert np.all(np.diff(ratio) > -1e-3)                   # steeper towards the floor
    assert ratio.min() > 10 ** 0.3 - 1e-3                    # never below 2x (sampled-noise limit, E ~ sqrt(SNR))
    assert ratio.min() < 2.5 and ratio.max() > 3.3          # passes through the paper's 3.3x below the floor
    mid = ratio[(grid > 5) & (grid < floor - 10)]
    assert np.all((mid > 2.0) & (mid < 4.0))                 # between the 2x and 4x noise regimes


def test_qs_preferred_at_low_and_qr_at_high_compute_snr():
    def core(model, s_db):
        k = _imc.knob_for_snr(model, _imc.from_db(s_db), 512)
        fn = {"qs": _imc.qs_energy, "qr": _imc.qr_energy}[model]
        return float(fn(512, k))

    for s_db in (5.0, 10.0, 15.0):
        assert core("qs", s_db) < core("qr", s_db)
    high = float(_imc.db(_imc.qs_snr_floor())) + 3.0
    assert math.isnan(core("qs", high)) and math.isfinite(core("qr", high))
    # IS reaches the same SNR as QS with the same knob but pays the settling factor.
    c_qs, c_is = _imc.imc_cost("qs", 512, 1e-3), _imc.imc_cost("is", 512, 1e-3)
    assert float(c_is.energy_core) > float(c_qs.energy_core)


# ----------------------------------------------------------------------------- monotonicity, zero work


@pytest.mark.parametrize("model,knob", [("qs", 1e-3), ("is", 1e-3), ("qr", 1.0)])
def test_costs_are_monotone_in_work_and_knob(model, knob):
    n = jnp.array([1.0, 8.0, 64.0, 200.0, 512.0])
    c = _imc.imc_cost(model, n, knob)
    assert np.all(np.diff(np.asarray(c.energy_core)) > 0)
    assert np.all(np.diff(np.asarray(c.energy)) > 0)           # more MACs never cost less
    assert np.all(np.diff(np.asarray(c.adc_bits)) >= 0)
    ks = knob * jnp.array([0.25, 0.5, 1.0, 2.0, 4.0])
    c = _imc.imc_cost(model, 256, ks)
    assert np.all(np.diff(np.asarray(c.snr_a)) > 0) and np.all(np.diff(np.asarray(c.energy_core)) > 0)
    assert np.all(np.asarray(c.snr_t) <= np.asarray(c.snr_a) * (1 + 1e-6))      # SNR_T never beats SNR_a
    s = _imc.from_db(jnp.linspace(-5.0, 60.0, 50))
    assert np.all(np.diff(np.asarray(_imc.mpc_adc_bits(s))) >= 0)


def test_zero_work_costs_zero_analog_energy():
    assert float(_imc.qs_energy(0.0, 1e-3)) == 0.0
    assert float(_imc.is_energy(0.0, 1e-3, 6)) == 0.0
    assert float(_imc.qr_energy(0.0, 1.0)) == 0.0
    # ... and so does a column whose products are all zero (E[p] -> 0).
    zero = DotStats(p_mean=1e-30, p_var=1e-30)
    assert float(_imc.qs_energy(512, 1e-3, TECH, zero)) == pytest.approx(0.0, abs=1e-20)
    assert float(_imc.qr_energy(512, 1.0, TECH, zero)) == pytest.approx(0.0, abs=1e-20)


# ----------------------------------------------------------------------------- relaxation and gradients


def test_relaxed_equals_exact_at_integer_precisions():
    # At the lossless cap the ADC precision is an integer in both versions.
    for model, knob in (("qs", 1e-3), ("is", 2e-3), ("qr", 2.0)):
        ex = _imc.imc_cost(model, 2, knob, bx=1, bw=1)
        rx = _imc.imc_cost(model, 2, knob, bx=1, bw=1, relaxed=True)
        assert float(ex.adc_bits) == float(rx.adc_bits) == float(_imc.adc_bits_full_precision(1, 1, 2)) == 3.0
        for a, b in zip(ex, rx):
            assert float(a) == pytest.approx(float(b), rel=1e-6)
    # A QR design whose MPC bound sits just below the integer 7: relaxed -> exact.
    gamma = 10 ** 0.05 - 1
    s_pre = 4 ** (7 - 1e-4) * 3 * gamma / 16
    snr_a = 1 / (1 / s_pre - 1 / float(_imc.sqnr_input(8, 8)))
    c = snr_a * (TECH.qr_mismatch ** 2 + KT / (5 / 48))
    ex, rx = _imc.imc_cost("qr", 512, c), _imc.imc_cost("qr", 512, c, relaxed=True)
    assert float(ex.adc_bits) == 7.0 and float(rx.adc_bits) == pytest.approx(7.0, abs=1e-3)
    for a, b in zip(ex, rx):
        assert float(a) == pytest.approx(float(b), rel=1e-3)


def _fd(f, x, rel=1e-3):
    h = abs(x) * rel
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("model,knob", [("qs", 1.3e-3), ("is", 0.7e-3), ("qr", 1.7)])
def test_gradients_match_finite_differences(model, knob):
    def total(k):
        return _imc.imc_cost(model, 300.0, k, bx=6.3, bw=5.0, relaxed=True).energy

    def snr_t(k):
        return _imc.db(_imc.imc_cost(model, 300.0, k, relaxed=True).snr_t)

    bits = float(_imc.imc_cost(model, 300.0, knob, relaxed=True).adc_bits)
    assert abs(bits - round(bits)) > 0.02                    # away from a kink of the interpolation
    for f in (total, snr_t):
        g = float(jax.grad(f)(jnp.float32(knob)))
        fd = float(_fd(lambda k: float(f(jnp.float32(k))), knob))
        assert g == pytest.approx(fd, rel=2e-2)
        assert g > 0
    # With respect to N (the work), a precision and a technology constant (the pytree).
    g_n = float(jax.grad(lambda n: _imc.imc_cost(model, n, knob, relaxed=True).energy)(300.0))
    assert g_n == pytest.approx(_fd(lambda n: float(_imc.imc_cost(model, n, knob, relaxed=True).energy), 300.0),
                                rel=2e-2)
    g_b = float(jax.grad(lambda b: _imc.db(_imc.imc_cost(model, 300.0, knob, bx=b, relaxed=True).snr_t))(4.3))
    assert g_b == pytest.approx(_fd(lambda b: float(_imc.db(_imc.imc_cost(model, 300.0, knob, bx=b,
                                                                             relaxed=True).snr_t)), 4.3), rel=2e-2)
    field = "c_bl" if model != "qr" else "qr_mismatch"
    base = getattr(TECH, field)

    def by_tech(x):
        return _imc.imc_cost(model, 300.0, knob, tech=dataclasses.replace(TECH, **{field: x}), relaxed=True).energy

    g_tech = jax.grad(lambda t: _imc.imc_cost(model, 300.0, knob, tech=t, relaxed=True).energy)(TECH)
    g_t = float(getattr(g_tech, field))
    assert g_t == pytest.approx(_fd(lambda x: float(by_tech(x)), base), rel=3e-2, abs=1e-3)


# ----------------------------------------------------------------------------- vmap / jit


def test_vmap_and_jit_agree_with_a_loop():
    knobs = jnp.geomspace(2e-4, 3e-3, 7)
    ns = jnp.array([16.0, 64.0, 128.0, 256.0, 300.0, 400.0, 512.0])
    f = lambda n, k: _imc.imc_cost("qs", n, k, relaxed=True)  # noqa: E731
    batched = jax.vmap(f)(ns, knobs)
    jitted = jax.jit(jax.vmap(f))(ns, knobs)
    for i in (0, 3, 6):
        one = f(ns[i], knobs[i])
        for a, b, c in zip(batched, jitted, one):
            assert float(a[i]) == pytest.approx(float(c), rel=1e-5)
            assert float(b[i]) == pytest.approx(float(c), rel=1e-5)
    # Over technologies, as a pytree with a leading axis.
    techs = jax.tree_util.tree_map(lambda x: jnp.stack([jnp.float32(x), jnp.float32(x) * 2]), TECH)
    e = jax.vmap(lambda t: _imc.imc_cost("qr", 512, 1.0, tech=t).energy_core)(techs)
    assert float(e[1]) == pytest.approx(4 * float(e[0]), rel=1e-5)          # V_dd doubled: 4x C V^2


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(model="mram"), ValueError, "model"),
    (dict(n=0), ValueError, "n must"),
    (dict(n=1024), ValueError, "n_rows"),
    (dict(knob=-1e-3), ValueError, "knob"),
    (dict(knob=float("nan")), ValueError, "knob"),
    (dict(bx=0), ValueError, "bx"),
    (dict(bw=0.5), ValueError, "bw"),
    (dict(loss_db=0.0), ValueError, "loss_db"),
    (dict(relaxed=1), TypeError, "relaxed"),
    (dict(knob="big"), TypeError, "knob"),
])
def test_bad_inputs_raise(kwargs, err, msg):
    args = dict(model="qs", n=64, knob=1e-3)
    args.update(kwargs)
    with pytest.raises(err, match=msg):
        _imc.imc_cost(args.pop("model"), args.pop("n"), args.pop("knob"), **args)


def test_bad_technology_and_statistics_raise():
    with pytest.raises(ValueError, match="c_bl"):
        IMCTech(c_bl=-1.0)
    with pytest.raises(ValueError, match="sigma_d"):
        IMCTech(sigma_d=-0.1)
    with pytest.raises(ValueError, match="p_mean"):
        DotStats(p_mean=1.5)
    with pytest.raises(ValueError, match="zeta_y"):
        DotStats(zeta_y=0.0)
    with pytest.raises(ValueError, match="model"):
        _imc.qs_max_rows(100.0, model="qr")
    with pytest.raises(ValueError, match="snr_a"):
        _imc.knob_for_snr("qs", -1.0, 64)
    with pytest.raises(ValueError, match="loss_db"):
        _imc.mpc_adc_bits(100.0, loss_db=-1.0)
