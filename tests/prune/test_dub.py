"""D.U.B. crossbar-attuned pruning: mapping, relaxed L0, balance penalty, power-of-two masks, report, fit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data, train
from jaxrob.prune._dub import (as_crossbar, balance_penalty, crossbar_matrix, crossbar_report, crossbar_tiles,
                               dub_fit, dub_loss, dub_masks, from_crossbar_matrix, power_of_two_level, relaxed_l0)
from jaxrob.prune._masks import sparsity


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------- mapping

def test_crossbar_matrix_dense_and_conv_layout():
    w = jnp.asarray(_rng().normal(size=(5, 7)), jnp.float32)
    assert crossbar_matrix(w) is not None and np.array_equal(crossbar_matrix(w), w)
    k = _rng(1).normal(size=(3, 2, 4, 6)).astype(np.float32)          # HWIO
    m = np.asarray(crossbar_matrix(k))
    assert m.shape == (3 * 2 * 4, 6)
    for kh in range(3):
        for kw in range(2):
            for cin in range(4):  # row = cin * KH * KW + kh * KW + kw (the authors' OIHW flatten order)
                np.testing.assert_array_equal(m[cin * 6 + kh * 2 + kw], k[kh, kw, cin])
    np.testing.assert_array_equal(from_crossbar_matrix(m, k.shape), k)
    k1 = _rng(2).normal(size=(5, 3, 2)).astype(np.float32)            # a 1-D conv kernel (W, Cin, Cout)
    np.testing.assert_array_equal(from_crossbar_matrix(crossbar_matrix(k1), k1.shape), k1)
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        crossbar_matrix(jnp.ones(3))


def test_crossbar_tiles_are_padded_blocks():
    w = _rng().normal(size=(70, 21)).astype(np.float32)
    t = np.asarray(crossbar_tiles(w, crossbar=(32, 8)))
    assert t.shape == (3, 3, 32, 8)
    for i in range(3):
        for j in range(3):
            block = w[32 * i:32 * i + 32, 8 * j:8 * j + 8]
            np.testing.assert_array_equal(t[i, j, :block.shape[0], :block.shape[1]], block)
            assert not t[i, j, block.shape[0]:].any() and not t[i, j, :, block.shape[1]:].any()


@pytest.mark.parametrize("bad, exc, msg", [
    ((48, 8), ValueError, "power of two"), ((0, 8), ValueError, ">= 1"), ((8, 0), ValueError, ">= 1"),
    ((64,), TypeError, "pair"), ("64", TypeError, "pair"), (True, TypeError, "pair"), ((8.5, 8), ValueError, "integer"),
])
def test_bad_crossbar_sizes(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        as_crossbar(bad)
    params = {"d": {"kernel": jnp.ones((8, 8))}}
    for fn in (lambda: balance_penalty(params, crossbar=bad), lambda: dub_masks(params, crossbar=bad),
               lambda: crossbar_report(params, crossbar=bad), lambda: relaxed_l0(params["d"]["kernel"], crossbar=bad),
               lambda: dub_loss(strength=1.0, crossbar=bad)):
        with pytest.raises(exc, match=msg):
            fn()


def test_as_crossbar_forms():
    assert as_crossbar(64) == (64, 64) and as_crossbar((128, 10)) == (128, 10) and as_crossbar([1, 3]) == (1, 3)


# ---------------------------------------------------------------------------------------------- relaxed L0

def test_relaxed_l0_equals_l0_on_flat_columns_and_lower_bounds_it():
    rng = _rng(3)
    counts = np.array([0, 1, 3, 8, 5, 2, 8, 7])
    w = np.zeros((8, 8), np.float32)
    for c, n in enumerate(counts):
        w[rng.permutation(8)[:n], c] = rng.choice([-2.5, 2.5])
    np.testing.assert_allclose(relaxed_l0(w, crossbar=(8, 8))[0, 0], counts, rtol=1e-5, atol=1e-5)
    v = rng.normal(size=(16, 12)).astype(np.float32) * (rng.random((16, 12)) < 0.5)
    h = np.asarray(relaxed_l0(v, crossbar=(16, 4))).reshape(-1)
    assert np.all(h <= (v != 0).sum(axis=0) + 1e-4) and np.all(h >= 0)
    np.testing.assert_allclose(relaxed_l0(37.0 * v, crossbar=(16, 4)), relaxed_l0(v, crossbar=(16, 4)), rtol=1e-4)


# ------------------------------------------------------------------------------------------ balance penalty

def _penalty_reference(w: np.ndarray, rows: int, cols: int) -> float:
    """Loops over crossbars: unbiased variance of the real columns' Hoyer measures."""
    m = w if w.ndim == 2 else np.moveaxis(w, -2, 0).reshape(-1, w.shape[-1])
    total = 0.0
    for i in range(0, m.shape[0], rows):
        for j in range(0, m.shape[1], cols):
            t = m[i:i + rows, j:j + cols].astype(np.float64)
            h = np.abs(t).sum(0) ** 2 / ((t ** 2).sum(0) + 1e-6)
            total += h.var(ddof=1) if len(h) > 1 else 0.0
    return total


def test_balance_penalty_matches_loops_and_excludes_padding():
    rng = _rng(4)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 5, 9)).astype(np.float32) * (rng.random((3, 3, 5, 9)) < .6),
                       "bias": np.ones(9, np.float32)},
              "dense": {"kernel": rng.normal(size=(40, 13)).astype(np.float32) * (rng.random((40, 13)) < .3)}}
    want = sum(_penalty_reference(params[k]["kernel"], 16, 4) for k in ("conv", "dense"))
    got = balance_penalty(params, crossbar=(16, 4))
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    np.testing.assert_allclose(float(jax.jit(lambda p: balance_penalty(p, crossbar=(16, 4)))(params)), want,
                               rtol=1e-4)


def test_balance_penalty_zero_iff_balanced():
    rng = _rng(5)
    col = rng.normal(size=16).astype(np.float32) * (rng.random(16) < 0.5)
    # every column a permutation of the same values (different supports, same relaxed L0): balanced
    w = np.stack([rng.permutation(col) for _ in range(8)], axis=1)
    assert float(balance_penalty({"k": {"kernel": w}}, crossbar=(16, 8))) == pytest.approx(0.0, abs=1e-6)
    w2 = w.copy()
    w2[:, 3] = rng.normal(size=16)                        # one dense column: unbalanced
    assert float(balance_penalty({"k": {"kernel": w2}}, crossbar=(16, 8))) > 1e-2
    # balance is per crossbar: two crossbars at different levels are both balanced
    w3 = np.concatenate([w, np.ones((16, 8), np.float32)], axis=1)
    assert float(balance_penalty({"k": {"kernel": w3}}, crossbar=(16, 8))) == pytest.approx(0.0, abs=1e-5)
    assert float(balance_penalty({"k": {"kernel": w3}}, crossbar=(16, 16))) > 1.0


def test_penalty_gradient_matches_finite_differences_of_the_relaxation():
    rng = _rng(6)
    with jax.enable_x64(True):
        w = jnp.asarray(rng.normal(size=(12, 6)) * (rng.random((12, 6)) < 0.7) + 0.05, jnp.float64)
        h = 1e-6
        eye = jnp.asarray(np.eye(w.size).reshape((w.size,) + w.shape) * h)

        @jax.jit  # one compile for every piece
        def pieces(v, eye):
            plain = lambda u: balance_penalty({"k": {"kernel": u}}, crossbar=(8, 4), gate=False)  # noqa: E731
            gated = lambda u: balance_penalty({"k": {"kernel": u}}, crossbar=(8, 4))  # noqa: E731
            hoy = lambda u: relaxed_l0(u, crossbar=(8, 4))  # noqa: E731
            fd = jax.vmap(lambda e: (plain(v + e) - plain(v - e)) / (2 * h))(eye).reshape(v.shape)
            return jax.grad(plain)(v), fd, hoy(v), jax.jacobian(hoy)(v), jax.grad(gated)(v)

        g, fd, hv, jac, got = (np.asarray(a) for a in pieces(w, eye))
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)

        # gated: the chain rule with only the positive part of dPenalty/dH passed to the relaxed L0 norms
        var_grad = np.zeros_like(hv)
        valid = np.zeros_like(hv, bool)
        valid[:, 0, :] = True
        valid[:, 1, :2] = True                           # 6 outputs: the second crossbar column has 2 real columns
        for i in range(hv.shape[0]):
            for j in range(hv.shape[1]):
                sel = valid[i, j]
                x = hv[i, j, sel]
                var_grad[i, j, sel] = 2 * (x - x.mean()) / (len(x) - 1)
        want = np.einsum("abc,abcij->ij", np.maximum(var_grad, 0.0), jac)   # jac: (gr, gc, cols, 12, 6)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        assert not np.allclose(got, g)


def test_penalty_vmaps_over_stacked_params():
    rng = _rng(7)
    ws = rng.normal(size=(3, 20, 10)).astype(np.float32) * (rng.random((3, 20, 10)) < 0.5)
    f = lambda w: balance_penalty({"k": {"kernel": w}}, crossbar=(8, 4))  # noqa: E731
    np.testing.assert_allclose(jax.vmap(f)(ws), np.stack([f(w) for w in ws]), rtol=1e-5)


def _linear(params, x):
    """A foreign model: one dense layer on the flattened image."""
    return x.reshape(x.shape[0], -1) @ params["dense"]["kernel"] + params["dense"]["bias"]


def _linear_params(seed=0):
    k = _rng(seed).normal(size=(28 * 28, 10)).astype(np.float32) * 0.05
    return {"dense": {"kernel": k, "bias": np.zeros(10, np.float32)}}


def test_dub_loss_adds_the_penalty():
    params = _linear_params()
    fns = train.ModelFns(_linear, None)
    x = _rng(1).random((4, 28, 28, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)
    base = train.cross_entropy()
    k = jax.random.key(2)
    reg = dub_loss(base, strength=0.5, crossbar=(16, 4))
    zero = dub_loss(base, strength=0.0, crossbar=16)

    @jax.jit  # one compile for the three losses
    def losses(p):
        (l0, _), (l1, (_, metrics)), (l2, _) = (f(fns, p, {}, x, y, key=k) for f in (base, reg, zero))
        return l0, l1, metrics, l2, balance_penalty(p, crossbar=(16, 4))

    l0, l1, metrics, l2, pen = losses(params)
    np.testing.assert_allclose(float(l1), float(l0) + 0.5 * float(pen), rtol=1e-6)
    assert float(metrics["balance_penalty"]) == pytest.approx(float(pen), rel=1e-6)
    assert float(metrics["task_loss"]) == pytest.approx(float(l0), rel=1e-6)
    assert float(l2) == float(l0)
    assert reg.name == "dub+cross_entropy" and reg.config["dub_strength"] == 0.5
    with pytest.raises(ValueError, match="strength must be >= 0"):
        dub_loss(base, strength=-1.0, crossbar=16)
    with pytest.raises(TypeError, match="jaxrob.train.Loss"):
        dub_loss(lambda *a: 0.0, strength=1.0, crossbar=16)


# ------------------------------------------------------------------------------------------------ pruning

def test_power_of_two_level_rule():
    n = np.arange(0, 1100)
    got = np.asarray(power_of_two_level(n))
    for v, p in zip(n, got):
        if v == 0:
            assert p == 0
            continue
        q = 1 << int(math.floor(math.log2(v)))
        assert p == (q if v <= 1.5 * q else 2 * q), (v, p)
        assert p & (p - 1) == 0


def _mask_reference(w: np.ndarray, rows: int, cols: int, t: float) -> np.ndarray:
    """Loops: per crossbar, level from the densest column's significant count; keep top-|w| per column."""
    m = w if w.ndim == 2 else np.moveaxis(w, -2, 0).reshape(-1, w.shape[-1])
    mask = np.zeros(m.shape, bool)
    for i in range(0, m.shape[0], rows):
        for j in range(0, m.shape[1], cols):
            t_abs = np.abs(m[i:i + rows, j:j + cols])
            n_star = int((t_abs > t).sum(0).max())
            p = int(power_of_two_level(n_star))
            p = min(p, t_abs.shape[0])
            for c in range(t_abs.shape[1]):
                keep = np.argsort(-t_abs[:, c], kind="stable")[:p]
                mask[i + keep, j + c] = True
    return mask if w.ndim == 2 else np.moveaxis(mask.reshape((w.shape[-2],) + w.shape[:-2] + (w.shape[-1],)), 0, -2)


@pytest.mark.parametrize("shape, crossbar", [((70, 21), (32, 8)), ((3, 3, 6, 10), (16, 4)), ((64, 16), (64, 16))])
def test_dub_masks_match_loops_and_are_power_of_two_and_balanced(shape, crossbar):
    rng = _rng(8)
    w = (rng.normal(size=shape) * (rng.random(shape) < 0.45)).astype(np.float32)
    params = {"layer": {"kernel": w, "bias": np.ones(shape[-1], np.float32)}}
    masks = dub_masks(params, crossbar=crossbar, tol=0.3)
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    assert masks["layer"]["kernel"].dtype == jnp.bool_ and masks["layer"]["bias"].all()
    mk = np.asarray(masks["layer"]["kernel"])
    np.testing.assert_array_equal(mk, _mask_reference(w, *crossbar, 0.3))
    rows, cols = crossbar
    counts = np.asarray(crossbar_tiles(mk.astype(np.float32), crossbar=crossbar)).sum(axis=-2)
    m = np.asarray(crossbar_matrix(w))
    for i in range(counts.shape[0]):
        real_rows = min(rows, m.shape[0] - i * rows)
        for j in range(counts.shape[1]):
            real = counts[i, j, :min(cols, m.shape[1] - j * cols)]
            assert len(set(real.tolist())) == 1                          # balanced: one count per crossbar
            c = int(real[0])
            assert c == real_rows or c & (c - 1) == 0                     # a power of two (or 0, or the short column)
            if real_rows == rows:
                assert c == 0 or (rows // c) * c == rows                  # density 2**-k of a full crossbar
    rep = crossbar_report(masks, crossbar=crossbar)
    assert rep.balanced_fraction == 1.0


def test_dub_masks_keep_the_largest_magnitudes_within_each_column():
    rng = _rng(9)
    w = rng.normal(size=(32, 8)).astype(np.float32)
    mk = np.asarray(dub_masks({"k": {"kernel": w}}, crossbar=(32, 8), sparsity=0.7)["k"]["kernel"])
    for c in range(8):
        kept, dropped = np.abs(w[mk[:, c], c]), np.abs(w[~mk[:, c], c])
        assert kept.size and (dropped.size == 0 or kept.min() >= dropped.max())
    # unstructured: the kept rows differ between columns
    assert len({tuple(np.flatnonzero(mk[:, c])) for c in range(8)}) > 1


def test_dub_masks_extremes_and_sparsity_targets():
    rng = _rng(10)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    params = {"k": {"kernel": w}}
    assert np.asarray(dub_masks(params, crossbar=64, tol=0.0)["k"]["kernel"]).all()         # nothing insignificant
    assert not np.asarray(dub_masks(params, crossbar=64, tol=1e9)["k"]["kernel"]).any()     # all pruned away
    for s in (0.3, 0.5, 0.75, 0.9):
        got = sparsity(dub_masks(params, crossbar=(64, 8), sparsity=s)).total
        # rounding to a power of two moves the sparsity, but within a factor 2 of the density
        assert 0.5 * (1 - s) - 1e-9 <= 1 - got <= 2 * (1 - s) + 1e-9
    per_layer = dub_masks({"a": {"kernel": w}, "b": {"kernel": w}}, crossbar=64, sparsity={"a/kernel": 0.0,
                                                                                           "b/kernel": 0.97})
    assert np.asarray(per_layer["a"]["kernel"]).all() and not np.asarray(per_layer["b"]["kernel"]).all()
    with pytest.raises(ValueError, match="no entry"):
        dub_masks({"a": {"kernel": w}, "b": {"kernel": w}}, crossbar=64, sparsity={"a/kernel": 0.5})
    with pytest.raises(ValueError, match="not selected"):
        dub_masks(params, crossbar=64, sparsity={"k/kernel": 0.5, "x/kernel": 0.5})
    with pytest.raises(ValueError, match="sparsity must be <= 1"):
        dub_masks(params, crossbar=64, sparsity=1.5)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        dub_masks(params, crossbar=64, tol=-1.0)
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        dub_masks({"k": {"kernel": jnp.ones(4)}}, crossbar=64)


# ------------------------------------------------------------------------------------------------- report

def test_report_adc_model_by_hand():
    w = np.ones((128, 6), np.float32)
    w[64 + 16:, :] = 0.0          # second crossbar row: every column 16 non-zeros
    w[:64, 0] = 0.0               # first crossbar: column 0 empty, others dense (unbalanced)
    rep = crossbar_report({"d": {"kernel": w}}, crossbar=(64, 4))
    layer = rep.layers[0]
    assert layer.adc_bits.tolist() == [[8, 8], [6, 6]]        # log2(64)+2 = 8 bits; 16 non-zeros -> 4 + 2
    assert layer.imbalance.tolist() == [[64, 0], [0, 0]]
    assert rep.crossbars == rep.crossbars_used == 4
    conv = np.array([[4, 2], [4, 2]])                          # real columns per crossbar (6 outputs, cols 4)
    dense = (2.0 ** 8 * conv).sum()
    want = (np.array([[2 ** 8, 2 ** 8], [2 ** 6, 2 ** 6]]) * conv).sum() / dense
    assert rep.adc_energy() == pytest.approx(want)
    assert rep.adc_energy("linear") == pytest.approx((np.array([[8, 8], [6, 6]]) * conv).sum() / (8 * conv).sum())
    assert rep.balanced_fraction == pytest.approx(3 / 4)
    empty = crossbar_report({"d": {"kernel": np.zeros((128, 6))}}, crossbar=(64, 4))
    assert empty.crossbars_used == 0 and empty.adc_energy() == 0.0 and empty.sparsity == 1.0
    dense_rep = crossbar_report({"d": {"kernel": np.ones((100, 6))}}, crossbar=(64, 4), adc_bits=7)
    assert dense_rep.adc_energy() == 1.0 and dense_rep.adc_improvement("linear") == 1.0
    assert dense_rep.layers[0].adc_bits.tolist() == [[7, 7], [7, 7]]   # 36 rows need ceil(log2 36) + 1 = 7 bits
    with pytest.raises(ValueError, match="scaling must be one of"):
        rep.adc_energy("quadratic")
    with pytest.raises(ValueError, match="adc_bits must be >= 1"):
        crossbar_report({"d": {"kernel": w}}, crossbar=64, adc_bits=0)


def test_dub_beats_unbalanced_magnitude_masks_on_adc_energy():
    rng = _rng(11)
    w = rng.normal(size=(256, 64)).astype(np.float32)
    params = {"k": {"kernel": w}}
    dub = dub_masks(params, crossbar=64, sparsity=0.75)
    s = sparsity(dub).total
    mag = {"k": {"kernel": np.abs(w) > np.quantile(np.abs(w), s)}}
    r_dub, r_mag = crossbar_report(dub, crossbar=64), crossbar_report(mag, crossbar=64)
    assert abs(r_mag.sparsity - r_dub.sparsity) < 0.01
    assert r_dub.power_of_two_fraction == 1.0 and r_dub.balanced_fraction == 1.0
    assert r_mag.balanced_fraction < 1.0
    assert r_dub.adc_improvement() > 1.5 * r_mag.adc_improvement()
    assert "| **total** |" in r_dub.table() and r_dub.as_dict()["crossbars"] == 4


# ---------------------------------------------------------------------------------------------------- fit

@pytest.mark.slow  # two compiled train steps; the dub experiment's smoke test runs dub_fit on a jaxrob model
def test_dub_fit_runs_the_three_phases_on_a_foreign_model():
    rng = _rng(12)
    x = rng.random((64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    ds = data.from_arrays((x * 255).astype(np.uint8), y, num_classes=10, name="tiny")
    res = dub_fit((_linear, _linear_params()), ds, crossbar=(64, 8), strength=1e-3, epochs=1, finetune_epochs=1,
                  batch_size=32,
                  key=jax.random.key(1), optimizer={"name": "sgd", "learning_rate": 0.05, "weight_decay": 1e-3},
                  finetune_optimizer={"name": "sgd", "learning_rate": 0.01, "momentum": 0.0}, sparsity=0.6,
                  progress=False)
    assert len(res.history["regularized"]) == 1 and len(res.history["finetune"]) == 1
    assert "balance_penalty" in res.history["regularized"][0]
    rep = crossbar_report(res.masks, crossbar=(64, 8))
    assert rep.balanced_fraction == 1.0 and rep.power_of_two_fraction == 1.0
    apply_fn, params = res.model                                    # a foreign model stays a foreign model
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(res.masks)):
        assert not np.asarray(p)[~np.asarray(m)].any()              # pruned weights stayed exactly zero
    assert sparsity(params).total == pytest.approx(sparsity(res.masks).total)
    assert apply_fn(params, jnp.asarray(x[:2])).shape == (2, 10)
