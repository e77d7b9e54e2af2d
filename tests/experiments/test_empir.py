"""The EMPIR experiment: presets, validation, and a tiny end-to-end run (slow)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from experiments import empir
from jaxrob import models
from jaxrob.cli import RunContext


def test_presets_validate_and_paper_setting():
    for config in empir.PRESETS.values():
        config.validate()
    small, paper = empir.PRESETS["small"], empir.PRESETS["paper"]
    assert (small.weight_bits1, small.activation_bits1, small.weight_bits2, small.activation_bits2) == (2, 4, 2, 4)
    assert (paper.weight_bits1, paper.activation_bits1, paper.weight_bits2, paper.activation_bits2) == (4, 2, 2, 2)
    assert models.create_abstract(paper.model, input_shape=(32, 32, 3)).num_params() > 250_000
    assert empir.PAPER["mnist10k"]["EMPIR"]["pgd"] == 17.51  # the authors' README
    with pytest.raises(ValueError, match="weight_bits1 must be 1..16 or >= 32"):
        dataclasses.replace(small, weight_bits1=20).validate()
    with pytest.raises(ValueError, match="eps"):
        dataclasses.replace(small, eps=1.5).validate()


@pytest.mark.slow
def test_empir_tiny_run(tmp_path):
    config = dataclasses.replace(empir.PRESETS["small"], train_examples=128, epochs=1, eval_examples=32,
                                 attack_steps=2, adaptive_steps=3)
    config.validate()
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("test_empir"))
    results = empir.run(config, ctx)
    json.dumps(results)  # serialisable
    acc = results["accuracy"]
    assert set(acc) == {"member 1", "member 2", "FP baseline (member 3)", "EMPIR"}
    for row in acc.values():
        assert all(0.0 <= v <= 1.0 for v in row.values())
    e = acc["EMPIR"]
    assert e["adaptive_pgd"] <= e["clean"] + 1e-9 and e["adaptive_apgd"] <= e["clean"] + 1e-9
    table = (tmp_path / "results.md").read_text()
    assert "| **EMPIR** | a4w2 + a4w2 + FP32 |" in table and "paper: EMPIR" in table
