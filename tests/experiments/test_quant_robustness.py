"""The quant_robustness experiment: presets, validation, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import quant_robustness as qr
from jaxrob import models

TINY = dict(train_examples=256, epochs=1, qat_epochs=1, batch_size=64, uniform_bits=(2,), eval_examples=32,
            pgd_steps=2, apgd_steps=2, train_steps=1, ptq=False, regimes=("normal",))


def test_presets_validate():
    for config in qr.PRESETS.values():
        config.validate()
    paper = qr.PRESETS["paper"]
    assert paper.dataset == "cifar10" and paper.model == "resnet20"
    assert models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3)).num_params() > 250_000
    with pytest.raises(ValueError, match="regimes entry must be one of"):
        dataclasses.replace(qr.PRESETS["small"], regimes=("fancy",)).validate()
    with pytest.raises(ValueError, match="uniform_bits entry must be >= 2"):
        dataclasses.replace(qr.PRESETS["small"], uniform_bits=(1,)).validate()
    with pytest.raises(ValueError, match="dbq_branches must be >= 1"):
        dataclasses.replace(qr.PRESETS["small"], dbq_branches=0).validate()


@pytest.mark.slow
def test_runs_and_writes_the_table(tmp_path):
    config = dataclasses.replace(qr.PRESETS["small"], **TINY)
    results = qr.run(config, tmp_path)
    rows = results["rows"]["normal"]
    assert set(rows) == {"FP32 [-]", "uniform 2-bit [QAT]", "ternary (TWN) [QAT]", "DBQ K=2 [QAT]",
                         "BinaryRelax (binary) [QAT]"}
    for name, r in rows.items():
        assert 0 <= r["apgd"] <= r["clean"] + 1e-9 and 0 <= r["pgd"] <= r["clean"] + 1e-9
    assert rows["BinaryRelax (binary) [QAT]"]["levels"] == 2  # exactly binary per output channel
    assert rows["ternary (TWN) [QAT]"]["levels"] <= 3 and rows["uniform 2-bit [QAT]"]["levels"] <= 3
    assert rows["DBQ K=2 [QAT]"]["levels"] <= 5
    fp = rows["FP32 [-]"]["size_bits"]
    assert rows["BinaryRelax (binary) [QAT]"]["size_bits"] < rows["ternary (TWN) [QAT]"]["size_bits"] < fp / 10
    table = (tmp_path / "results.md").read_text()
    assert "| BinaryRelax (binary) | QAT |" in table and "APGD-CE-2" in table
    json.dumps(results)  # serialisable
