"""The `jaxrob` command: list, run (with presets, overrides, results) and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import REGISTRY
from jaxrob import cli

TINY = ["epochs=1", "batch_size=100", "train_examples=300", "train_steps=1", "eval_steps=2",
        "eval_examples=100", "eval_epsilons=0,0.1,0.3"]


def test_list_names_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY) and "presets: small, paper" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown experiment 'nope'; known experiments: " + ", ".join(sorted(REGISTRY))),
    (["run", "quickstart", "--preset", "huge"], "no preset 'huge'; presets: small, paper"),
    (["run", "quickstart", "--set", "epoch=3"], "unknown config key 'epoch'"),
    (["run", "quickstart", "--set", "epochs=three"], "--set epochs: expected int, got 'three'"),
    (["run", "quickstart", "--set", "epochs=0"], "epochs must be >= 1"),
    (["run", "quickstart", "--set", "dataset=imagenet"], "dataset must be one of"),
    (["run", "quickstart", "--set", "epochs"], "--set takes key=value"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_overrides_are_cast_to_the_field_types():
    import experiments.quickstart as q
    c = cli.apply_overrides(q.PRESETS["small"], ["eval_epsilons=0,0.05", "learning_rate=3e-4", "data_dir=none"])
    assert c.eval_epsilons == (0.0, 0.05) and c.learning_rate == 3e-4 and c.data_dir is None


def test_quickstart_runs_writes_results_and_resumes(tmp_path):
    run_dir, results = cli.run_experiment("quickstart", overrides=TINY, out=tmp_path, progress=False)
    assert run_dir.parent == tmp_path / "quickstart"
    for name in ("config.json", "results.json", "results.md", "robustness.png", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp"))  # no temporary file left behind
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["train_examples"] == 300
    acc = results["accuracy"]
    assert set(acc) == {"standard", "pgd_at (eps=0.1)"}
    for curve in acc.values():
        values = [curve[e] for e in ("0", "0.1", "0.3")]
        assert all(0 <= v <= 1 for v in values) and values == sorted(values, reverse=True)
    table = (run_dir / "results.md").read_text()
    assert "| standard |" in table and "eps=0.3" in table
    assert (run_dir / "checkpoints" / "pgd_at").is_dir()

    # --resume finds the same run (same config), restores the finished checkpoints and trains no
    # further, so the models -- and with the same keys, the evaluation -- are identical.
    again, results2 = cli.run_experiment("quickstart", overrides=TINY, out=tmp_path, progress=False, resume=True)
    assert again == run_dir
    assert results2["accuracy"] == results["accuracy"]
    assert results2["history"] == results["history"]


@pytest.mark.slow  # a fresh interpreter (~4 s of imports); `list` itself: test_list_names_every_experiment
def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "jaxrob.cli", "list"], capture_output=True, text=True, check=True)
    assert "quickstart" in out.stdout
