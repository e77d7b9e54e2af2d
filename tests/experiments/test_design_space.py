"""design_space: the vmapped sweep equals per-design calls, and the gradient search lands near the sweep's optimum."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from jaxrob import hw
from jaxrob.cli import RunContext


def test_presets_validate_and_bad_configs_raise():
    from experiments import design_space as e
    for c in e.PRESETS.values():
        c.validate()
    small = e.PRESETS["small"]
    assert (small.max_size - small.min_size + 1) ** 2 * len(small.dataflows) >= 100_000
    for bad, msg in [(dict(workloads=("vgg",)), "workloads"), (dict(dataflows=("xs",)), "dataflows"),
                     (dict(max_size=4), "max_size"), (dict(sigma_decay=0.0), "sigma_decay"), (dict(starts=0), "starts")]:
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(small, **bad).validate()


def test_sweep_matches_single_calls_and_search_is_near_the_optimum(tmp_path):
    from experiments import design_space as e
    config = dataclasses.replace(e.PRESETS["small"], min_size=8, max_size=40, dataflows=("os",), starts=4, steps=60,
                                 chunk=500)
    wl = hw.make_workload(m=[3136, 784, 196], k=[576, 1152, 2304], n=[64, 128, 256])
    vals, _ = e.sweep(wl, "os", config)
    assert vals.shape == (33, 33)
    for r, c in [(8, 8), (17, 33), (40, 12)]:
        one = float(e._log_edp(wl, float(r), float(c), "os", config, False))
        np.testing.assert_allclose(vals[r - 8, c - 8], one, rtol=1e-6)
    best = float(vals.min())
    plain = e.gradient_search(wl, "os", dataclasses.replace(config, line_search=False))
    assert plain["log_edp"] >= best - 1e-5                      # nothing beats the exhaustive sweep
    assert np.exp(plain["log_edp"] - best) - 1 < 0.10           # the gradient stage alone: within 10 %
    gs = e.gradient_search(wl, "os", config)                    # + exact coordinate descent
    assert best - 1e-5 <= gs["log_edp"] <= plain["log_edp"] + 1e-6
    assert gs["exact_evaluations"] > plain["exact_evaluations"]
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("test_design_space"))
    tiny = dataclasses.replace(config, workloads=("bert_base",))
    results = e.run(tiny, ctx)
    row = results["rows"][0]
    assert row["search_gap"] >= -1e-6 and row["search_rank"] >= 1
    assert "| bert_base | os |" in (tmp_path / "results.md").read_text()
