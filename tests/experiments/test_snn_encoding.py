"""The snn_encoding experiment: presets, its helpers against closed forms, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import _snn
from experiments import snn_encoding as se
from jaxrob import data
from jaxrob.attacks import accuracy
from jaxrob.snn._encoders import DCT, Direct, PoissonRate

TINY = dict(train_examples=256, eval_examples=64, ann_epochs=2, ann_learning_rate=3e-3, batch_size=32,
            calib_examples=128, hidden_sizes=(32, 32), direct_timesteps=(2,), poisson_timesteps=(2,),
            dct_timesteps=(4, 16), poisson_extra_timesteps=(4,), dct_drop_frequencies=(8,))


def _tiny_train():
    ds = data.load("mnist10k", split="train")
    return data.from_arrays(ds.images[:64], ds.labels[:64], num_classes=10, name="mnist10k", split="train[:64]")


def test_presets_validate():
    for config in se.PRESETS.values():
        config.validate()
    paper = se.PRESETS["paper"]
    assert (paper.dataset, paper.arch) == ("cifar10", "vgg9") and 48 in paper.dct_timesteps
    assert se.PAPER["accuracy"] == 0.8994 and se.PAPER["timesteps"] == 48
    small = se.PRESETS["small"]
    with pytest.raises(ValueError, match="encoders entry must be one of"):
        dataclasses.replace(small, encoders=("morse",)).validate()
    with pytest.raises(ValueError, match="dct_drop_frequencies entry must be <= 15"):
        dataclasses.replace(small, dct_drop_frequencies=(16,)).validate()
    with pytest.raises(ValueError, match="poisson_timesteps must hold at least one T"):
        dataclasses.replace(small, poisson_timesteps=()).validate()


def test_encoder_choice_follows_timesteps():
    cfg = se.PRESETS["small"]
    assert isinstance(_snn.encoder("direct", 8, cfg), Direct)
    assert isinstance(_snn.encoder("poisson", 8, cfg), PoissonRate) and not _snn.encoder("poisson", 8, cfg).signed
    # below one cycle DCT keeps the T lowest frequencies; from one cycle on, all 16
    assert _snn.encoder("dct", 4, cfg).period() == 4
    assert _snn.encoder("dct", 32, cfg).period() == 16 and _snn.encoder("dct", 32, cfg).frequencies is None
    assert _snn.encoder("dct", 32, cfg, frequencies=8).period() == 8
    assert isinstance(_snn.encoder("dct", 16, cfg), DCT)


def test_fixed_dct_thresholds_are_the_mean_of_the_per_image_ones():
    cfg = dataclasses.replace(se.PRESETS["small"], mean=0.25, std=0.5)
    x, _ = data.as_arrays(_tiny_train(), limit=6)
    th_neg, th_pos = _snn.dct_thresholds(cfg, x, batch_size=4)  # two batches, the second one short
    state = DCT(block=4).init((x - 0.25) / 0.5)
    assert th_neg == pytest.approx(float(np.mean(state.th_neg)), rel=1e-5) and th_neg < 0
    assert th_pos == pytest.approx(float(np.mean(state.th_pos)), rel=1e-5) and th_pos > 0
    enc = _snn.encoder("dct", 16, cfg, dct_thresholds=(th_neg, th_pos))
    assert enc.thresholds == (th_neg, th_pos)


def test_energy_view_charges_the_first_layer_as_macs_only_under_direct_coding():
    cfg = dataclasses.replace(se.PRESETS["small"], hidden_sizes=(16, 8))
    train_ds = _tiny_train()
    for enc_name in _snn.ENCODERS:
        model = _snn.build(cfg, train_ds, key=jax.random.key(0), spiking=True, timesteps=16,
                           enc=_snn.encoder(enc_name, 16, cfg))
        info = _snn.energy_view(model).layer_info
        assert info["fc1"]["analog_input"] == (enc_name == "direct")
        assert not info["fc2"]["analog_input"] and not info["fc3"]["analog_input"]
        assert _snn.ann_energy_pj(model) == pytest.approx(4.6 * (784 * 16 + 16 * 8 + 8 * 10))


def test_evaluate_snn_matches_apply_fn_and_the_energy_closed_form():
    cfg = dataclasses.replace(se.PRESETS["small"], hidden_sizes=(16, 8))
    train_ds = _tiny_train()
    T = 3
    model = _snn.build(cfg, train_ds, key=jax.random.key(0), spiking=True, timesteps=T, enc=Direct())
    x, y = data.as_arrays(train_ds, limit=40)
    # batches of 16 (the last one padded): the padding must not count
    res = _snn.evaluate_snn(model, model.variables, x, y, key=jax.random.key(1), batch_size=16)
    assert res["accuracy"] == pytest.approx(accuracy(model.apply_fn, model.variables, x, y, batch_size=40))
    # closed form: fc1 (784 -> 16) as MACs every step (direct coding); fc2 (16 -> 8) and fc3 (8 -> 10)
    # one accumulate per hidden spike and fan-out
    _, stats = model.simulate(model.variables, x)
    s1, s2 = (np.asarray(stats["spikes"][k]) for k in ("lif1", "lif2"))
    expected = 4.6 * 784 * 16 * T + 0.9 * (8 * s1 + 10 * s2)
    assert res["energy_pj"] == pytest.approx(expected.mean(), rel=1e-5)
    assert res["spikes"] == pytest.approx((s1 + s2).mean(), rel=1e-5)
    ann = 4.6 * (784 * 16 + 16 * 8 + 8 * 10)
    assert res["ann_energy_pj"] == pytest.approx(ann)
    assert res["energy_ratio"] == pytest.approx(ann / res["energy_pj"])
    assert set(res["rate"]) == {"lif1", "lif2"}
    assert res["rate"]["lif1"] == pytest.approx(s1.mean() / (16 * T), rel=1e-5)


@pytest.mark.slow
def test_runs_and_writes_the_table(tmp_path):
    config = dataclasses.replace(se.PRESETS["small"], **TINY)
    results = se.run(config, tmp_path)
    rows = results["rows"]
    got = [(r["encoder"], r["timesteps"], r["kind"]) for r in rows]
    assert got == [("direct", 2, "fine-tuned"), ("poisson", 2, "fine-tuned"), ("dct", 4, "fine-tuned"),
                   ("dct", 16, "fine-tuned"), ("poisson", 4, "trained at T=2"), ("dct", 8, "8/16 freq. (drop)")]
    by = {(r["encoder"], r["timesteps"]): r for r in rows}
    assert by[("dct", 4)]["frequencies"] == 4 and by[("dct", 16)]["frequencies"] == 16
    assert by[("dct", 8)]["frequencies"] == 8 and by[("dct", 8)]["trained_at"] == 16
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["spikes"] > 0 and r["synops"] > 0
        assert r["energy_ratio"] == pytest.approx(results["ann_energy_pj"] / r["energy_pj"])
        assert (r["converted_accuracy"] is None) == (r["kind"] != "fine-tuned")
    # direct coding pays the first layer as MACs every step: at least E_MAC * 784 * 32 * T
    assert by[("direct", 2)]["energy_pj"] >= 4.6 * 784 * 32 * 2
    assert 0.3 < results["ann_accuracy"] <= 1.0
    assert all(t > 0 for t in results["thresholds"].values())
    table = (tmp_path / "results.md").read_text()
    assert "| dct | 8 | 8 | 16 (8/16 freq. (drop)) |" in table and "89.94" in table
    json.dumps(results)
