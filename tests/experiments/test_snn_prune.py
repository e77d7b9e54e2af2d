"""Smoke test of the snn_prune experiment on a tiny configuration."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from jaxrob import _io
from jaxrob.cli import RunContext

TINY = dict(train_examples=200, eval_examples=100, energy_examples=50, calib_examples=150, batch_size=100,
            hidden_sizes=(24, 24), timesteps=4, temporal_timesteps=(2,), ann_epochs=1, snn_epochs=1,
            variance=0.9)


def test_presets_validate():
    from experiments import snn_prune as e
    for config in e.PRESETS.values():
        config.validate()
    paper = e.PRESETS["paper"]
    assert (paper.arch, paper.dataset, paper.timesteps, paper.variance, paper.percentile, paper.leak) == \
        ("vgg9", "cifar10", 100, 0.999, 99.9, 0.9901)
    assert paper.temporal_timesteps[-1] < paper.timesteps and paper.quant_bits == 5
    small = e.PRESETS["small"]
    for bad, msg in [(dict(temporal_timesteps=(6, 10)), "strictly decreasing"),
                     (dict(temporal_timesteps=(16,)), "start below"), (dict(temporal_timesteps=()), "non-empty"),
                     (dict(variance=0.0), "variance must be > 0"), (dict(encoder="dct"), "encoder must be one of"),
                     (dict(quant_bits=1), "quant_bits must be >= 2"), (dict(mean=(0.5,)), "same length")]:
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(small, **bad).validate()


@pytest.mark.slow
def test_snn_prune_runs_and_writes_results(tmp_path):
    from experiments import snn_prune as e
    config = dataclasses.replace(e.PRESETS["small"], **TINY)
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("test_snn_prune"))
    results = e.run(config, ctx)
    _io.write_json(tmp_path / "results.json", results)   # JSON-serialisable, as `jaxrob run` writes it
    rows = results["rows"]
    assert tuple(rows) == e.ROWS
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["energy_pj"] > 0 and r["energy_ratio"] > 0
    assert rows["ann"]["compression"] == rows["snn"]["compression"] == 1.0
    assert rows["spatial"]["compression"] > 1.0                       # PCA at 90% narrows a 24-wide layer
    assert rows["spatial"]["compression"] == pytest.approx(results["compression_report"]["compression"], rel=1e-6)
    assert rows["quantized"]["compression"] > 6 * rows["spatial"]["compression"]   # 4-bit kernels (~8x, biases float)
    assert rows["spatiotemporal"]["timesteps"] == 2 < rows["spatial"]["timesteps"] == rows["snn"]["timesteps"] == 4
    assert rows["spatiotemporal"]["spikes"] < rows["spatial"]["spikes"]   # fewer steps, fewer spikes
    assert all(1 <= w <= 24 for w in results["widths"].values())
    assert [s["timesteps"] for s in results["temporal_log"]] == [2]
    table = (tmp_path / "results.md").read_text()
    assert "| SNN, spatially + temporally pruned |" in table and "89.04" in table
    assert json.loads((tmp_path / "results.json").read_text())["paper"]["spatiotemporal_accuracy"] == 89.04
