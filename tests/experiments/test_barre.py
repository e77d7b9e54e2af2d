"""Smoke test of the BARRE experiment on a tiny configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest

import experiments
from jaxrob import cli, models

TINY = ["train_examples=128", "epochs=1", "batch_size=64", "train_steps=2", "osp_examples=32",
        "osp_iterations=2", "osp_arc_steps=2", "eval_examples=32", "pgd_steps=2", "apgd_steps=3", "arc_steps=2"]


@pytest.fixture
def registered():
    assert experiments.REGISTRY["barre"] == "experiments." + "barre"  # `jaxrob run` finds it


def test_presets_validate():
    from experiments import barre
    for name, config in barre.PRESETS.items():
        config.validate()
    paper = barre.PRESETS["paper"]
    assert paper.model == "resnet20" and paper.num_members == 5 and paper.dataset == "cifar10"
    net = models.create_abstract(paper.model, num_classes=10, input_shape=(32, 32, 3))  # the paper's network builds
    assert net.num_params() > 250_000
    with pytest.raises(ValueError, match="num_members must be >= 1"):
        dataclasses.replace(barre.PRESETS["small"], num_members=0).validate()
    with pytest.raises(ValueError, match="schedule must be one of"):
        dataclasses.replace(barre.PRESETS["small"], schedule="step").validate()


@pytest.mark.slow
def test_barre_runs_and_writes_results(registered, tmp_path):
    run_dir, results = cli.run_experiment("barre", overrides=TINY, out=tmp_path, progress=False)
    for name in ("config.json", "results.json", "results.md", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp"))
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["num_members"] == 2
    rows = results["accuracy"]
    assert {"IAT", "BARRE (uniform alpha)"} <= set(rows)
    for r in rows.values():
        assert all(0.0 <= r[k] <= 1.0 for k in ("clean", "pgd", "apgd", "arc"))
        assert r["arc"] <= r["clean"] + 1e-6  # ARC never raises the expected accuracy
        assert sum(r["alpha"]) == pytest.approx(1.0, abs=1e-5)
    osp = results["alpha_search"]
    assert osp["robust_error"] <= osp["uniform_error"] + 1e-7
    table = (run_dir / "results.md").read_text()
    assert "| IAT |" in table and "ARC-2" in table
    assert (run_dir / "checkpoints" / "barre" / "member_1").is_dir()
