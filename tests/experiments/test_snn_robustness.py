"""The snn_robustness experiment: presets and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import snn_robustness as sr

TINY = dict(train_examples=256, eval_examples=48, ann_epochs=2, ann_learning_rate=3e-3, batch_size=32,
            calib_examples=128, hidden_sizes=(32, 32), direct_timesteps=2, poisson_timesteps=2, noise_sigmas=(0.3,),
            epsilons=(0.05, 0.2), pgd_steps=2, eot_samples=2, attack_batch=32)


def test_presets_validate():
    for config in sr.PRESETS.values():
        config.validate()
    paper = sr.PRESETS["paper"]
    assert (paper.dataset, paper.arch) == ("cifar10", "vgg9") and paper.encoders == ("direct", "poisson", "dct")
    assert paper.epsilons[-1] == pytest.approx(8 / 255)
    small = sr.PRESETS["small"]
    with pytest.raises(ValueError, match="epsilons entry must be <= 1"):
        dataclasses.replace(small, epsilons=(2.0,)).validate()
    with pytest.raises(TypeError, match="noise_sigmas must be a non-empty tuple"):
        dataclasses.replace(small, noise_sigmas=()).validate()
    with pytest.raises(ValueError, match="encoders entry must be one of"):
        dataclasses.replace(small, encoders=("latency",)).validate()


@pytest.mark.slow
def test_runs_and_writes_the_tables(tmp_path):
    config = dataclasses.replace(sr.PRESETS["small"], **TINY)
    r = sr.run(config, tmp_path)
    names = ["ANN (source)", "SNN direct T=2", "SNN direct T=2: weights as ANN", "SNN poisson T=2",
             "SNN poisson T=2: weights as ANN"]
    assert list(r["clean"]) == names and list(r["noise"]) == names and list(r["pgd"]) == names
    for name in names:
        clean = r["clean"][name]
        assert 0.0 <= r["noise"][name][0.3] <= 1.0
        for attack, accs in r["pgd"][name].items():
            assert list(accs) == [0.05, 0.2]
            assert all(0.0 <= a <= clean + 1e-9 for a in accs.values()), (name, attack)
    snn_attacks = {"white-box PGD", "transfer from source ANN", "transfer from own weights as ANN", "worst case"}
    assert set(r["pgd"]["SNN direct T=2"]) == snn_attacks
    assert set(r["pgd"]["SNN poisson T=2"]) == snn_attacks | {"EOT-PGD (2 draws)"}
    assert set(r["pgd"]["ANN (source)"]) == set(r["pgd"]["SNN direct T=2: weights as ANN"]) == {"white-box PGD"}
    for name in ("SNN direct T=2", "SNN poisson T=2"):
        rows = r["pgd"][name]
        for eps in (0.05, 0.2):  # worst case = robust to every attack, so at most the weakest of them
            assert rows["worst case"][eps] <= min(v[eps] for k, v in rows.items() if k != "worst case") + 1e-9
    # the ANN was trained, and at eps = 0.2 PGD breaks most of an undefended MNIST MLP
    assert r["clean"]["ANN (source)"] > 0.3
    assert r["pgd"]["ANN (source)"]["white-box PGD"][0.2] < r["clean"]["ANN (source)"]
    table = (tmp_path / "results.md").read_text()
    assert "| SNN poisson T=2 | EOT-PGD (2 draws) |" in table and "Gradient-obfuscation check" in table
    json.dumps(r)
