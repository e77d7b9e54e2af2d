"""Smoke test of the GDWS experiment on a tiny configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxrob import models


def test_presets_validate():
    from experiments import gdws
    for config in gdws.PRESETS.values():
        config.validate()
    paper = gdws.PRESETS["paper"]
    assert paper.dataset == "cifar10" and paper.model == "vgg16_bn" and not paper.lego_relative
    assert paper.eval_eps == pytest.approx(8 / 255) and paper.eval_steps == 100
    net = models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3))  # the paper's network builds
    assert net.num_params() > 14_000_000
    with pytest.raises(ValueError, match="at least one budget"):
        dataclasses.replace(gdws.PRESETS["small"], mego_budgets=(), lego_budgets=()).validate()
    with pytest.raises(ValueError, match="mego_budgets must be >"):
        dataclasses.replace(gdws.PRESETS["small"], mego_budgets=(0.0,)).validate()


@pytest.mark.slow  # about 20 s of compiles; the suite keeps its 10-minute budget
def test_gdws_experiment_runs_and_writes_results(tmp_path):
    from experiments import gdws
    config = dataclasses.replace(gdws.PRESETS["small"], train_examples=128, epochs=1, train_steps=1,
                                 alpha_examples=16, alpha_steps=1, eval_examples=32, eval_steps=2,
                                 mego_budgets=(0.1,), lego_budgets=(0.0,), uniform_mego=False)
    results = gdws.run(config, tmp_path / "run")
    assert (tmp_path / "run" / "results.md").is_file()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"]["original"]["model_macs"] == 4_643_840  # cnn_small, per example
    rows = {(r["method"], r["budget"]): r for r in results["rows"]}
    base = results["original"]
    assert base["layers"] == ["params/conv2/kernel"]
    # LEGO with beta = 0 keeps every filter: the original network, so the same clean accuracy
    exact = rows[("lego", 0.0)]
    assert exact["g"] == base["g_full"] == 32 * 9 and exact["relative_error"] == pytest.approx(0.0, abs=1e-9)
    assert exact["clean"] == pytest.approx(base["clean"])
    # the MAC budget is met (G = floor(0.1 * 64 * 32 * 9 / 73) = 25 filters) at a positive error
    m = rows[("mego", 0.1)]
    assert m["g"] == 25 and m["layer_macs"] <= 0.1 * base["layer_macs"] and m["reduction"] > 2.5
    assert 0.0 < m["relative_error"] < 1.0
    for r in results["rows"]:
        assert 0.0 <= r["pgd"] <= r["clean"] <= 1.0
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| MEGO | MACs <= 0.1 x | robust |" in table and "| original conv |" in table
