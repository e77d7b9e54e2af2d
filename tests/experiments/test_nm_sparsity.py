"""The nm_sparsity experiment: presets validate, a tiny run writes its table with exact N:M sparsities."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import nm_sparsity as exp
from jaxrob import models
from jaxrob.prune._masks import named_leaves


def test_presets_validate_and_paper_preset_keeps_the_first_conv_dense():
    for config in exp.PRESETS.values():
        config.validate()
    paper = exp.PRESETS["paper"]
    assert (paper.dataset, paper.model, paper.lambdas) == ("cifar10", "resnet20", (0.0, 2e-4))
    net = models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3))
    pruned = [name for name, _ in named_leaves(net.params, where=exp._where(4))]
    assert "conv1/kernel" not in pruned and "fc/kernel" in pruned and len(pruned) == 19


@pytest.mark.parametrize("field, value, message", [
    ("patterns", ("2-4",), "must look like"), ("patterns", ("5:4",), "1 <= N <= M"),
    ("lambdas", (-1.0,), "lambdas"), ("epochs", 0, "epochs must be >= 1"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(exp.PRESETS["small"], **{field: value}).validate()


def test_tiny_run_writes_results(tmp_path):
    config = dataclasses.replace(exp.PRESETS["small"], train_examples=200, epochs=2, batch_size=100,
                                 eval_examples=100, patterns=("1:4",), lambdas=(2e-4,))
    results = exp.run(config, tmp_path)
    rows = {(r["pattern"], r["lambda_w"]): r for r in results["rows"]}
    assert set(rows) == {("dense", None), ("1:4", 2e-4)}
    assert rows[("dense", None)]["sparsity"] == 0.0
    for (pattern, lam), r in rows.items():
        assert 0.0 <= r["accuracy"] <= 1.0
        if pattern != "dense":   # every mlp kernel has an input size divisible by 4: exact N:M sparsity
            n, m = exp.parse_pattern(pattern)
            assert r["sparsity"] == pytest.approx(1 - n / m)
            assert len(r["sad_per_epoch"]) == 1 and 0.0 <= r["sad_last"] <= 1.0
    table = (tmp_path / "results.md").read_text()
    assert "| dense | dense |" in table and "| 1:4 | SR-STE (λ_W=0.0002) |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["patterns"] == ["1:4"] and len(saved["results"]["rows"]) == 2
