"""Experiments: one module per reproduced result.

Each module defines ``NAME``, ``DESCRIPTION``, a frozen ``Config`` dataclass, a
``PRESETS`` dict (``small`` for CPU minutes, ``paper`` for the full setting) and
``run(config, run_dir) -> dict``.  ``jaxrob run NAME`` finds them through
:data:`REGISTRY`; they ship inside the wheel, so they work after ``pip install .``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path. Add a line here for every new experiment.
REGISTRY: dict[str, str] = {
    "quickstart": "experiments.quickstart",
    "rec_arc": "experiments.rec_arc",
    "barre": "experiments.barre",
    "enresnet": "experiments.enresnet",
    "quant_robustness": "experiments.quant_robustness",
    "prune_robust": "experiments.prune_robust",
    "gdws": "experiments.gdws",
    "empir": "experiments.empir",
    "transferability": "experiments.transferability",
    "dub": "experiments.dub",
    "nm_sparsity": "experiments.nm_sparsity",
    "lowrank_utilization": "experiments.lowrank_utilization",
    "snn_encoding": "experiments.snn_encoding",
    "snn_prune": "experiments.snn_prune",
    "snn_robustness": "experiments.snn_robustness",
    "specdec_acceptance": "experiments.specdec_acceptance",
    "specdec_block_efficiency": "experiments.specdec_block_efficiency",
    "imc_limits": "experiments.imc_limits",
    "crossbar_adc": "experiments.crossbar_adc",
    "sosa_granularity": "experiments.sosa_granularity",
    "design_space": "experiments.design_space",
}


def get(name: str) -> ModuleType:
    """Imports the experiment module called ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])
