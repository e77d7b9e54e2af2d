"""The crossbar_adc experiment: presets, config checks, and a small run whose rows obey the ADC model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import crossbar_adc


def test_presets_validate_and_bad_configs_raise():
    for config in crossbar_adc.PRESETS.values():
        config.validate()
    small = crossbar_adc.PRESETS["small"]
    with pytest.raises(ValueError, match="crossbar must be a power of two"):
        dataclasses.replace(small, crossbar=48).validate()
    with pytest.raises(ValueError, match="positive integer"):
        dataclasses.replace(small, sparsities=(0.3,)).validate()
    with pytest.raises(ValueError, match="layers must be one of"):
        dataclasses.replace(small, layers="dense").validate()
    with pytest.raises(ValueError, match="model must be one of"):
        dataclasses.replace(small, model="gpt").validate()
    with pytest.raises(ValueError, match="nm_m must divide the crossbar rows"):
        dataclasses.replace(small, nm_m=48, sparsities=(0.5,)).validate()


def test_nm_masks_on_the_crossbar_matrix_of_a_convolution():
    import jax
    from jaxrob.prune import crossbar_matrix

    w = jax.random.normal(jax.random.key(0), (3, 3, 3, 8))          # 27 crossbar rows, not a multiple of 4
    mask = crossbar_adc._nm_crossbar_mask(w, 1, 4)
    counts = np.asarray(crossbar_matrix(mask)).reshape(27, 8)
    groups = np.pad(counts, ((0, 1), (0, 0))).reshape(7, 4, 8).sum(axis=1)
    assert mask.shape == w.shape and np.all(groups == 1)               # exactly 1 of every 4 rows, last group too


@pytest.mark.slow
def test_small_run_orders_the_methods_as_the_model_predicts(tmp_path):
    config = dataclasses.replace(crossbar_adc.PRESETS["small"], sparsities=(0.75, 0.9375))
    results = crossbar_adc.run(config, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["config"]["crossbar"] == 64
    table = (tmp_path / "results.md").read_text()
    assert "| N:M |" in table and "| D.U.B. |" in table
    levels = {lv["nonzeros"]: lv for lv in results["levels"]}
    assert levels[64]["bits"] == 6 and levels[32]["bits"] == 5 and levels[1]["bits"] == 1     # saturating ADCs
    assert results["dense"]["crossbars"] == 13 * 4 + 4 * 4          # 784x256 and 256x256 on 64x64
    rows = {(r["target"], r["method"]): r for r in results["rows"]}
    for s in config.sparsities:
        un, nm, dub = rows[(s, "unstructured")], rows[(s, "N:M")], rows[(s, "D.U.B.")]
        assert un["sparsity"] == pytest.approx(s, abs=1e-3) and nm["sparsity"] == pytest.approx(s, abs=1e-6)
        # N:M columns are balanced: exactly the balanced model
        assert nm["sar_rel"] == pytest.approx(nm["model_balanced_sar_rel"], rel=1e-4)
        assert nm["flash_rel"] == pytest.approx(nm["model_balanced_flash_rel"], rel=1e-4)
        # magnitude pruning of random weights is close to i.i.d. zeros
        assert un["sar_rel"] == pytest.approx(un["model_unstructured_sar_rel"], rel=0.05)
        # balanced sparsity saves more ADC energy than unstructured at the same target
        assert nm["sar_rel"] < un["sar_rel"] and nm["flash_rel"] < un["flash_rel"]
        # D.U.B.'s pruning step alone (no balance-regularised training) rounds each crossbar's densest column
        # to a power of two, so its sparsity is near, not at, the target; it still saves ADC energy
        assert 0.5 < dub["sparsity"] < 1 and 0 < dub["sar_rel"] < 1 and 0 < dub["dub_report_exp_rel"] < 1
    assert rows[(0.9375, "N:M")]["sar_rel"] < 0.8 * rows[(0.9375, "unstructured")]["sar_rel"]
    assert rows[(0.75, "unstructured")]["dub_report_exp_rel"] == pytest.approx(
        rows[(0.75, "unstructured")]["flash_rel"], rel=0.05)         # flash ~ 2**bits, as the report's model
