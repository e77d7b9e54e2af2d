"""The transferability experiment: presets, validation, and a tiny end-to-end run (slow)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from experiments import transferability as tr
from jaxrob.cli import RunContext


def test_presets_validate():
    for config in tr.PRESETS.values():
        config.validate()
    assert tr.PRESETS["paper"].metric_eps == pytest.approx(8 / 255)  # fit_calc_TM.py's eps
    with pytest.raises(ValueError, match="at least 2 distinct radii"):
        dataclasses.replace(tr.PRESETS["small"], epsilons=(0.1, 0.1)).validate()
    with pytest.raises(ValueError, match="input_bits"):
        dataclasses.replace(tr.PRESETS["small"], input_bits=0).validate()


@pytest.mark.slow
def test_transferability_tiny_run(tmp_path):
    config = dataclasses.replace(tr.PRESETS["small"], train_examples=128, epochs=1, eval_examples=32,
                                 attack_steps=2, epsilons=(0.05, 0.3), ensemble_steps=2)
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("test_tr"))
    results = tr.run(config, ctx)
    json.dumps(results)
    counts, eligible = np.asarray(results["transferred"]), np.asarray(results["eligible"])
    assert counts.shape == (5, 5, 2) and np.all(counts <= eligible)
    np.testing.assert_array_equal(np.einsum("iie->ie", counts), np.einsum("iie->ie", eligible))
    np.testing.assert_allclose(np.diag(np.asarray(results["metric"])), 1.0, atol=1e-6)
    rows = results["ensemble"]["rows"]
    assert set(rows) == {"clean", "grad_sum", "sign_average", "sign_agreement"}
    assert "TREND metric" in (tmp_path / "results.md").read_text()
