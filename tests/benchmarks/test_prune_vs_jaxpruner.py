"""jaxrob's magnitude and N:M masks equal JaxPruner's on the same weights (skipped without jaxpruner).

JaxPruner is not on PyPI here; see ``benchmarks/bench_prune_vs_jaxpruner.py`` for how it is installed.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

jaxpruner = pytest.importorskip("jaxpruner")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrob import models  # noqa: E402

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_prune_vs_jaxpruner.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_prune_vs_jaxpruner", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def params():
    return models.create("mlp", hidden_sizes=(32,), key=jax.random.key(3)).params


@pytest.mark.parametrize("rule", ["magnitude/layer", "magnitude/global", "magnitude/global-normalized",
                                  "nm/2:4", "nm/1:4"])
def test_masks_identical_and_ties_differ_only_in_tie_choice(bench, params, rule):
    ours, theirs = jax.jit(bench.jaxrob_fn(rule)), jax.jit(bench.jaxpruner_fn(jaxpruner, rule))
    res = bench.compare(ours(params), theirs(params))
    assert res["differ"] == 0
    assert res["pruned_jaxrob"] == res["pruned_jaxpruner"] > 0
    tied = bench.tied(params)
    mo, mt = ours(tied), theirs(tied)
    if rule.startswith("nm/"):
        # opposite tie rules inside a group (JaxPruner keeps the higher index), same magnitudes kept
        assert bench.nm_same_up_to_ties(tied, mo, mt, 4)
        assert bench.compare(mo, mt)["differ"] > 0   # the tied tree does exercise the rule
    else:
        assert bench.compare(mo, mt)["differ"] == 0
    # the pruned counts are round(n (1 - s)) kept per layer in both
    if rule == "magnitude/layer":
        for leaf in jax.tree.leaves(mo):
            if not leaf.all():
                assert int(np.sum(leaf)) == int(np.round(leaf.size * np.float32(1 - bench.SPARSITY)))
