"""The EnResNet experiment: presets validate, a tiny run writes its tables, evaluation keys are fresh."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

import experiments
from experiments import enresnet as exp
from jaxrob import cli

TINY = ["train_examples=200", "batch_size=100", "width=2", "train_steps=1", "eval_steps=2", "eval_eot=2",
        "apgd_steps=0", "eval_examples=20", "eval_batch_size=20"]


def test_presets_validate_and_build_the_paper_pairing():
    for config in exp.PRESETS.values():
        config.validate()
    paper = exp.PRESETS["paper"]
    assert (paper.dataset, paper.members, paper.depth, paper.baseline_depth) == ("cifar10", 2, 20, 44)
    assert (paper.train_eps, paper.train_steps, paper.train_step_size, paper.noise_scale) == (0.031, 10, 0.007, 0.1)


@pytest.mark.parametrize("override, message", [
    ("depth=9", "depth must be 6n \\+ 2"), ("noise_std=channel", "noise_std must be one of"),
    ("members=0", "members must be >= 1"), ("eval_init=normal", "eval_init must be one of"),
])
def test_bad_settings_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        cli.apply_overrides(exp.PRESETS["small"], [override]).validate()


def test_evaluation_predicts_with_fresh_noise():
    """A randomized model that is right only for the noise draw of one key: evaluations must not reuse keys."""
    config = exp.PRESETS["small"]

    def lucky(params, x, *, key):  # correct (class 0) iff the draw of this call's key is positive
        s = jnp.sign(jax.random.normal(key, ()))
        return jnp.stack([s * jnp.ones(x.shape[0]), jnp.zeros(x.shape[0])], axis=-1) + 0 * params

    x, y = jnp.full((40, 4), 0.5), jnp.zeros((40,), jnp.int32)
    cfg = cli.apply_overrides(config, ["eval_steps=1", "eval_eot=2", "apgd_steps=0", "eval_batch_size=10"])
    results = [exp.evaluate(lucky, jnp.zeros(()), x, y, randomized=True, config=cfg, key=jax.random.key(k))
               for k in range(6)]
    values = {r["clean"] for r in results}
    assert values - {0.0, 1.0}  # batches draw different noise: not all-or-nothing
    assert len(values) > 1  # and evaluations with different keys differ
    again = exp.evaluate(lucky, jnp.zeros(()), x, y, randomized=True, config=cfg, key=jax.random.key(0))
    assert again == results[0]


@pytest.mark.slow  # about 60 s of compiles on 2 cores; the enresnet library has its own fast tests
def test_tiny_run_writes_results(tmp_path):
    assert experiments.REGISTRY[exp.NAME] == "experiments.enresnet"  # `jaxrob run` finds it
    run_dir, results = cli.run_experiment(exp.NAME, overrides=TINY, out=tmp_path, progress=False)
    for name in ("config.json", "results.json", "results.md", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp"))
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["width"] == 2
    rows = results["models"]
    en, plain = rows["En2ResNet8 (a=0.1)"], rows["ResNet14"]
    assert en["randomized"] and not plain["randomized"]
    for r in rows.values():
        accs = r["accuracy"]
        assert all(0.0 <= v <= 1.0 for v in accs.values())
        assert accs["pgd"] <= accs["clean"] + 0.15  # robust counts need a correct clean prediction too (own draw)
    assert plain["accuracy"]["pgd_eot"] == plain["accuracy"]["pgd"]  # deterministic: EOT changes nothing
    table = (run_dir / "results.md").read_text()
    assert "| En2ResNet8 (a=0.1) |" in table and "PGD-2 + EOT-2" in table and "85.62" in table
    assert "apgd_eot" not in en["accuracy"]  # apgd_steps=0 skips APGD
