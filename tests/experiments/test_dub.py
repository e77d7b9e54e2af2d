"""Smoke test of the D.U.B. experiment on a tiny configuration, and its presets."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import dub
from jaxrob import models
from jaxrob.prune._masks import named_leaves


def test_presets_validate_and_paper_selects_the_conv_layers():
    for config in dub.PRESETS.values():
        config.validate()
    paper = dub.PRESETS["paper"]
    assert (paper.model, paper.dataset, paper.crossbar, paper.layers) == ("vgg11_bn", "cifar10", 64, "conv")
    net = models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3))
    selected = named_leaves(net.params, where=dub._where(paper, 10))
    assert len(selected) == 8 and all(len(x.shape) == 4 for _, x in selected)   # VGG-11's eight convolutions
    small = dub.PRESETS["small"]
    net = models.create_abstract(small.model, num_classes=10, input_shape=(28, 28, 1))
    assert [n for n, _ in named_leaves(net.params, where=dub._where(small, 10))] == ["hidden/0/kernel",
                                                                                     "hidden/1/kernel"]
    with pytest.raises(ValueError, match="crossbar must be a power of two"):
        dataclasses.replace(small, crossbar=48).validate()
    with pytest.raises(ValueError, match="layers must be one of"):
        dataclasses.replace(small, layers="dense").validate()
    with pytest.raises(ValueError, match="prune_sparsity must be < 1"):
        dataclasses.replace(small, prune_sparsity=1.0).validate()


@pytest.mark.slow
def test_dub_runs_and_writes_results(tmp_path):
    config = dataclasses.replace(dub.PRESETS["small"], crossbar=32, train_examples=256, eval_examples=200,
                                 pretrain_epochs=1, dub_epochs=1, finetune_epochs=0, batch_size=64,
                                 prune_sparsity=0.8)
    results = dub.run(config, tmp_path)
    for name in ("results.json", "results.md"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["crossbar"] == 32
    rows = results["rows"]
    assert list(rows) == ["D.U.B.", "D.U. (no balance regularizer)", "unstructured magnitude"]
    for r in rows.values():
        assert 0.0 <= r["acc_pruned"] <= 1.0 and r["acc_finetuned"] == r["acc_pruned"]   # no fine-tuning here
        assert r["report"]["crossbars"] == 25 * 8 + 8 * 8          # 784x256 and 256x256 on 32x32 crossbars
    d, m = rows["D.U.B."]["report"], rows["unstructured magnitude"]["report"]
    assert d["power_of_two_fraction"] == 1.0 and d["balanced_fraction"] == 1.0
    assert rows["D.U. (no balance regularizer)"]["report"]["power_of_two_fraction"] == 1.0
    for layer, s in rows["D.U.B."]["per_layer_sparsity"].items():     # magnitude pruned to D.U.B.'s sparsity
        assert rows["unstructured magnitude"]["per_layer_sparsity"][layer] == pytest.approx(s, abs=1e-4)
    assert d["adc_improvement"] > m["adc_improvement"]                 # the paper's point, at matched sparsity
    pen = results["balance_penalty"]
    assert np.isfinite(pen["dub_epoch_means"][0]) and pen["dub"] >= 0 and pen["no_regularizer"] >= 0
    table = (tmp_path / "results.md").read_text()
    assert "| D.U.B. |" in table and "| unstructured magnitude |" in table and "7.13x" in table
