"""Smoke test of the low-rank utilization experiment on a tiny configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import lowrank_utilization as exp

TINY = dataclasses.replace(exp.PRESETS["small"], models=("mlp",), train_examples=600, val_examples=200,
                           epochs=1, batch_size=100, fit_examples=200, energies=(0.5, 0.9, 1.0), max_drop=0.02,
                           ft_epochs=1, eval_examples=300, stats_batch_size=100)


def test_presets_validate():
    for config in exp.PRESETS.values():
        config.validate()
    paper = exp.PRESETS["paper"]
    assert paper.dataset == "cifar10" and set(paper.models) == {"resnet20", "vgg16_bn"}
    for bad, match in ((dict(energies=(0.0,)), "energies"), (dict(models=()), "models"),
                       (dict(models=("nope",)), "model must be one of"), (dict(max_drop=2.0), "max_drop")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(exp.PRESETS["small"], **bad).validate()


@pytest.mark.slow  # ~25 s of CPU (two train-step compiles, evaluations): over this file's share of the budget
def test_runs_and_writes_the_table(tmp_path):
    results = exp.run(TINY, tmp_path)
    for name in ("results.json", "results.md"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["models"] == ["mlp"]
    r = results["models"][0]
    sweep = r["sweep"]
    assert [s["energy"] for s in sweep] == [0.5, 0.9, 1.0]
    mlus = [s["mlu"] for s in sweep]
    assert all(0.0 <= m <= 1.0 for m in mlus) and mlus == sorted(mlus) and mlus[-1] == 1.0
    # At full energy every layer is kept whole: the projected model is the trained one.
    assert sweep[-1]["test"] == pytest.approx(r["baseline"]["test"], abs=1 / 300 + 1e-9)  # a tie may flip
    assert sweep[-1]["val"] >= r["baseline"]["val"] - TINY.max_drop  # so an energy is always chosen
    assert r["chosen_energy"] in (0.5, 0.9, 1.0)
    c = r["compression"]
    assert c["params_before"] == r["num_params"] and c["params_after"] <= c["params_before"]
    for layer in c["layers"].values():
        assert layer["rank"] == min(layer["k_in"], layer["k_out"])
        assert 0.0 <= layer["utilization"] <= 1.0
    assert 0.0 <= r["fine_tuned_test"] <= 1.0
    table = (tmp_path / "results.md").read_text()
    assert "mean layer utilization" in table and "| mlp |" in table and "hidden/0" in table
