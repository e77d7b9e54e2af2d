"""The rec_arc experiment: a tiny end-to-end run through the CLI, and its presets."""

from __future__ import annotations

import dataclasses
import json

import pytest

import experiments
from experiments import rec_arc
from jaxrob import cli

TINY = ["train_examples=256", "epochs=1", "batch_size=64", "train_steps=1", "eps=0.1", "eval_examples=12",
        "eval_batch=12", "pgd_steps=2", "apgd_steps=2", "arc_steps=2", "seeds=0"]


@pytest.fixture
def registered():
    assert experiments.REGISTRY[rec_arc.NAME] == "experiments." + rec_arc.NAME  # `jaxrob run` finds it


@pytest.mark.slow
def test_tiny_run_writes_results_with_every_row(registered, tmp_path):
    run_dir, results = cli.run_experiment("rec_arc", overrides=TINY, out=tmp_path, progress=False)
    for name in ("config.json", "results.json", "results.md", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp"))
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["seeds"] == [0] and saved["results"]["eval_examples"] == 12
    per_seed = results["accuracy_per_seed"]
    assert set(per_seed) == {"single_clean", "single", "rec_clean", "rec_pgd_expected_loss",
                             "rec_pgd_expected_softmax", "rec_apgd", "rec_arc"}
    for row, values in per_seed.items():
        assert set(values) == {"0"} and all(0.0 <= v <= 1.0 for v in values.values()), row
    for s in ("0",):
        # ARC never raises the REC's expected accuracy above the clean value, example by example
        assert per_seed["rec_arc"][s] <= per_seed["rec_clean"][s]
        assert per_seed["single"][s] <= per_seed["single_clean"][s]
    mean = results["accuracy"]["rec_arc"]["mean"]
    assert mean == per_seed["rec_arc"]["0"] and results["accuracy"]["rec_arc"]["std"] == 0.0
    table = (run_dir / "results.md").read_text()
    assert "| REC, ARC-2 (eta = 1 eps) |" in table and "40.71" in table and "45.66" in table
    assert "+-" in table and "run-to-run spread" in table


def test_presets_validate_and_the_paper_preset_is_the_paper_setting():
    for config in rec_arc.PRESETS.values():
        config.validate()
    paper = rec_arc.PRESETS["paper"]
    assert (paper.dataset, paper.model, paper.norm) == ("cifar10", "resnet20", "linf")
    assert paper.eps == pytest.approx(8 / 255) and paper.alpha == (0.9, 0.1)
    assert paper.arc_steps == 20 and paper.arc_step_size is None  # eta = eps
    assert paper.pgd_steps == 20 and paper.pgd_step_size == pytest.approx(2 / 255)
    assert len(rec_arc.PRESETS["small"].seeds) == 3


@pytest.mark.parametrize("change,match", [
    (dict(alpha=(0.5, 0.6)), "sum to 1"),
    (dict(alpha=(1.0,)), "2 members"),
    (dict(seeds=()), "at least one seed"),
    (dict(seeds=(1, 1)), "distinct"),
    (dict(norm="l1"), "norm"),
    (dict(pgd_objectives=("loss",)), "pgd_objectives"),
    (dict(model="nope"), "model"),
    (dict(eps=0.0), "eps"),
])
def test_bad_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(rec_arc.PRESETS["small"], **change).validate()


def test_table_reports_mean_and_sample_std_over_seeds_and_the_verdict():
    config = dataclasses.replace(rec_arc.PRESETS["small"], seeds=(0, 1, 2), apgd_steps=0)
    rows = rec_arc._rows(config)
    per_seed = {k: [0.5, 0.5, 0.5] for k, _ in rows}
    per_seed["rec_pgd_expected_loss"] = [0.30, 0.32, 0.34]
    per_seed["rec_pgd_expected_softmax"] = [0.31, 0.33, 0.35]
    per_seed["rec_arc"] = [0.20, 0.21, 0.25]
    table = rec_arc._markdown(config, rows, per_seed, 500, [1.0, 2.0, 3.0])
    assert "| REC, ARC-20 (eta = 1 eps) | 22.00 +- 2.65 | 20.00, 21.00, 25.00 | 40.71 |" in table
    assert "| REC, adaptive PGD-20 (expected loss) | 32.00 +- 2.00 | 30.00, 32.00, 34.00 | 61.10 |" in table
    # gap to the stronger adaptive PGD (expected loss): 10, 11, 9 points; larger than the spread
    assert "(rec_pgd_expected_loss) and ARC: 10.00 +- 1.00 points" in table and "; larger than" in table
    per_seed["rec_arc"] = [0.29, 0.33, 0.30]
    assert "NOT larger" in rec_arc._markdown(config, rows, per_seed, 500, [1.0, 2.0, 3.0])
