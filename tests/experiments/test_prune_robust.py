"""Smoke test of the prune_robust experiment on a tiny configuration."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from jaxrob import _io, models
from jaxrob.cli import RunContext

TINY = dict(train_examples=200, epochs=1, batch_size=100, train_steps=1, eval_examples=50, pgd_steps=2,
            apgd_steps=2, rvsm_beta=1.0, rvsm_lamb=0.5 * 0.05 ** 2, rgsm_beta=1.0, rgsm_lamb1=0.5 * 2.0 ** 2)


def test_presets_validate():
    from experiments import prune_robust as e
    for config in e.PRESETS.values():
        config.validate()
    paper = e.PRESETS["paper"]
    assert (paper.model, paper.dataset, paper.epochs, paper.batch_size) == ("resnet20", "cifar10", 200, 128)
    assert (paper.rvsm_beta, paper.rvsm_lamb, paper.rgsm_beta, paper.rgsm_lamb1, paper.rgsm_lamb2) == \
        (1e-2, 1e-6, 1.0, 1e-2, 1e-5)   # the reference code's defaults
    net = models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3))
    assert net.num_params() > 250_000
    small = e.PRESETS["small"]
    with pytest.raises(ValueError, match="methods must be"):
        dataclasses.replace(small, methods=()).validate()
    with pytest.raises(ValueError, match="methods\\[i\\] must be one of"):
        dataclasses.replace(small, methods=("admm",)).validate()
    with pytest.raises(ValueError, match="rgsm_beta must be > 0"):
        dataclasses.replace(small, rgsm_beta=0.0).validate()
    with pytest.raises(ValueError, match="groups must be one of"):
        dataclasses.replace(small, groups="filter").validate()


def _ctx(tmp_path):
    return RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("test_prune_robust"))


@pytest.mark.slow
def test_rgsm_row_alone(tmp_path):
    """The fast check (one training compile): RGSM zeroes whole input channels of conv2 and nothing else."""
    from experiments import prune_robust as e
    config = dataclasses.replace(e.PRESETS["small"], **{**TINY, "apgd_steps": 0}, methods=("rgsm",))
    results = e.run(config, _ctx(tmp_path))
    (row,) = results["rows"].values()
    assert 0.0 <= row["pgd"] <= row["clean"] <= 1.0 and "apgd" not in row   # apgd_steps=0 skips APGD
    conv2 = row["sparsity"]["conv2/kernel"]
    assert 0.0 < conv2["zero_input_channels"] < 1.0
    assert conv2["zero_fraction"] == pytest.approx(conv2["zero_input_channels"])   # only whole channels
    assert row["sparsity"]["conv1/kernel"]["zero_fraction"] == 0.0
    table = (tmp_path / "results.md").read_text()
    assert "| PGD-AT + RGSM |" in table and "PGD-AT (unpruned)" not in table


@pytest.mark.slow
def test_prune_robust_runs_and_writes_results(tmp_path):
    from experiments import prune_robust as e
    config = dataclasses.replace(e.PRESETS["small"], **TINY)
    config.validate()
    results = e.run(config, _ctx(tmp_path))
    _io.write_json(tmp_path / "results.json", results)   # JSON-serialisable, as `jaxrob run` writes it
    rows = results["rows"]
    assert list(rows) == ["baseline", "rvsm", "rgsm"]
    for r in rows.values():
        assert 0.0 <= r["apgd"] <= r["clean"] and 0.0 <= r["pgd"] <= r["clean"] <= 1.0
    sp = {m: r["sparsity"]["total"] for m, r in rows.items()}
    assert sp["baseline"]["zero_fraction"] == 0.0 and sp["baseline"]["zero_input_channels"] == 0.0
    # threshold 0.05 on He-normal conv weights (std 0.08-0.47): a good share but not all of them zeroed
    assert 0.1 < sp["rvsm"]["zero_fraction"] < 0.9 and sp["rvsm"]["zero_input_channels"] == 0.0
    # group threshold 2.0 on conv2's input channels (norms about 2 at init): channels zeroed whole
    conv2 = rows["rgsm"]["sparsity"]["conv2/kernel"]
    assert 0.0 < conv2["zero_input_channels"] < 1.0
    assert conv2["zero_fraction"] == pytest.approx(conv2["zero_input_channels"])
    table = (tmp_path / "results.md").read_text()
    assert "| PGD-AT + RGSM |" in table and "APGD-CE-2" in table and "8.69" in table
    assert json.loads((tmp_path / "results.json").read_text())["paper"]["robust_accuracy_gain_ifgsm20"] == 5.42
    assert (tmp_path / "checkpoints" / "rgsm").is_dir()
