"""The README's tour runs as written."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


# The tour trains for an epoch and runs ARC (about a minute); its pieces are tested in tests/attacks,
# tests/ensembles and tests/train, so it runs with the slow tests.
@pytest.mark.slow
def test_readme_tour_runs():
    text = README.read_text()
    tour = text[text.index("## A short tour"):text.index("## What is in the box")]
    blocks = re.findall(r"```python\n(.*?)```", tour, flags=re.S)
    assert len(blocks) == 3
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), ns)
    acc = ns["acc"]
    assert set(acc) == {0.0, 0.1} and acc[0.1] <= acc[0.0]
    assert acc[0.0] > 0.8  # one epoch of PGD-AT on 8,000 digits already classifies well
    rec = ns["rec_acc"]
    assert rec["arc"] <= rec["clean"] and rec["pgd"] <= rec["clean"]  # ARC never raises the REC's accuracy
    assert rec["worst"] <= min(rec["arc"], rec["pgd"]) + 1e-6
    for x_adv in (ns["x_adv"], ns["x_pgd"], ns["x_arc"]):
        assert np.max(np.abs(np.asarray(x_adv) - np.asarray(ns["x_test"]))) <= 0.1 + 1e-6


@pytest.mark.slow  # compile-heavy (T = 16, 28x28 DCT); create/simulate/summarize/twin: tests/snn
def test_readme_spiking_example_runs():
    text = README.read_text()
    section = text[text.index("## Spiking networks"):text.index("## Multi-draft speculative sampling")]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(block, str(README), "exec"), ns)
    assert ns["logits"].shape == (8, 10)
    assert ns["ann"].spiking is False and ns["net"].spiking is True


def test_readme_speculative_sampling_example_runs():
    text = README.read_text()
    section = text[text.index("## Multi-draft speculative sampling"):text.index("## Hardware cost models")]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(block, str(README), "exec"), ns)
    assert int(ns["accepted"]) in (-1, 0, 1) and 0 <= int(ns["token"]) < 3
    sd = ns["specdec"]
    got = [float(sd.acceptance_probability(s, ns["p"], ns["qs"])) for s in ("single_draft", "specinfer", "spectr",
                                                                           "canonical_is")]
    np.testing.assert_allclose(got, [0.70, 0.76, 0.79, 0.86], atol=0.005)     # the values the README prints
    np.testing.assert_allclose(float(sd.optimal_acceptance(ns["p"], ns["qs"])), 0.86, atol=1e-5)


def test_readme_hardware_example_runs():
    text = README.read_text()
    section = text[text.index("## Hardware cost models"):text.index("## Experiments")]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(block, str(README), "exec"), ns)
    assert len(ns["layers"]) == 20 and float(ns["wl"].macs.sum()) == 40_551_040
    assert 0 < float(ns["cost"].total_utilization) <= 1
    cycles = np.asarray(ns["cycles"])
    assert cycles.shape == (121,) and cycles[0] > cycles[-1]       # bigger arrays, fewer cycles
    assert float(ns["slope"]) < 0
    d_bits, d_dens = np.asarray(ns["d_bits"]), np.asarray(ns["d_dens"])
    assert d_bits.shape == d_dens.shape == (20,) and np.all(d_bits > 0) and np.all(d_dens > 0)  # fewer bits, sparser: cheaper
