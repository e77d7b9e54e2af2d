"""Pieces shared by the spiking-network experiments (``snn_encoding``, ``snn_robustness``).

Hybrid training as in DCT-SNN and Rathi et al.: train the ANN twin, convert it
(same weights, thresholds from activation percentiles), fine-tune the SNN with
surrogate-gradient BPTT; and the batched evaluation that also returns spike
counts, synaptic operations and the compute-energy estimate.

References:
  Rathi, Srinivasan, Panda, Roy, "Enabling deep spiking neural networks with hybrid
  conversion and spike timing dependent backpropagation", ICLR 2020, arXiv:2005.01807.
  Garg, Chowdhury, Roy, "DCT-SNN: Using DCT to distribute spatial information over
  time for low-latency spiking neural networks", ICCV 2021, arXiv:2010.01795.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import data, train
from jaxrob.snn._encoders import DCT, Direct, Encoder, PoissonRate
from jaxrob.snn._energy import summarize
from jaxrob.snn._models import SpikingModel, create
from jaxrob.snn._neurons import LIF
from jaxrob.snn._surrogate import PiecewiseLinear

ENCODERS = ("direct", "poisson", "dct")


def context(ctx: Any, name: str) -> Any:
    """Accepts the CLI's RunContext or a bare output folder (then logs to stdout)."""
    if hasattr(ctx, "run_dir"):
        return ctx
    from jaxrob.cli import RunContext
    run_dir = pathlib.Path(ctx)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"jaxrob.{name}")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.setLevel(logging.INFO)
        log.propagate = False
    return RunContext(run_dir=run_dir, resume=False, progress=False, log=log)


def encoder(name: str, timesteps: int, config: Any, *, frequencies: int | None = None,
            dct_thresholds: tuple[float, float] | None = None) -> Encoder:
    """The encoder ``name`` for a run of ``timesteps`` steps.

    DCT with ``timesteps`` below one full cycle (``block**2`` steps) keeps only the
    ``timesteps`` lowest zig-zag frequencies (one cycle of them), unless
    ``frequencies`` is given explicitly; ``dct_thresholds`` fixes its accumulator
    thresholds (see :func:`dct_thresholds`), None computes them per image.
    """
    if name == "direct":
        return Direct()
    if name == "poisson":
        return PoissonRate(max_rate=1.0, signed=config.poisson_signed)
    if name == "dct":
        full = config.dct_block ** 2
        k = min(timesteps, full) if frequencies is None else frequencies
        return DCT(block=config.dct_block, stride=config.dct_stride, frequencies=None if k == full else k,
                   thresholds=dct_thresholds)
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")


def dct_thresholds(config: Any, x: np.ndarray, *, batch_size: int = 128) -> tuple[float, float]:
    """Fixed DCT accumulator thresholds ``(th_neg, th_pos)``: the mean over the images ``x`` of their
    per-image 6.5th / 93.5th percentile thresholds (what ``DCT.init`` computes).

    The authors' code takes the percentiles over each batch; fixing them from
    calibration images is as close, keeps every image's code independent of its
    batch, and saves the per-image sort of all ``block**2`` components in every
    forward pass, which dominates the cost of DCT encoding on XLA's CPU backend.
    """
    enc = DCT(block=config.dct_block, stride=config.dct_stride)
    def thresholds(xb):
        state = enc.init(xb)
        return state.th_neg, state.th_pos

    init = jax.jit(thresholds)
    x = (np.asarray(x, np.float32) - config.mean) / config.std
    pos, neg = [], []
    for start in range(0, len(x), batch_size):
        th_neg, th_pos = init(jnp.asarray(x[start:start + batch_size]))
        pos.append(np.asarray(th_pos).ravel())
        neg.append(np.asarray(th_neg).ravel())
    return float(np.mean(np.concatenate(neg))), float(np.mean(np.concatenate(pos)))


def neuron(config: Any) -> LIF:
    """LIF neurons of every hidden layer: soft reset, piecewise-linear surrogate (DCT-SNN's)."""
    return LIF(leak=config.leak, threshold=1.0, reset="soft", surrogate=PiecewiseLinear(config.surrogate_gamma))


def build(config: Any, train_ds: data.Dataset, *, key: jax.Array, spiking: bool, timesteps: int = 1,
          enc: Encoder | None = None) -> SpikingModel:
    """The experiment's network (``config.arch``) in spiking or ANN mode; same ``key``, same variable tree."""
    kw: dict[str, Any] = {}
    if config.arch == "mlp":
        kw["hidden_sizes"] = tuple(config.hidden_sizes)
    c = train_ds.input_shape[-1]
    return create(config.arch, key=key, timesteps=timesteps, encoder=enc or Direct(), neuron=neuron(config),
                  spiking=spiking, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                  mean=(config.mean,) * c, std=(config.std,) * c, dropout=config.dropout, **kw)


def fit(model: SpikingModel, variables: Any, train_ds: data.Dataset, *, epochs: int, learning_rate: float,
        batch_size: int, key: jax.Array, seed: int, progress: bool) -> tuple[Any, list]:
    """Adam (cosine schedule) through :func:`jaxrob.train.fit`; returns ``(variables, history)``."""
    model = dataclasses.replace(model, variables=variables)
    state, hist = train.fit(model, train_ds, epochs=epochs, batch_size=batch_size, key=key, seed=seed,
                            optimizer={"name": "adam", "learning_rate": learning_rate, "schedule": "cosine"},
                            progress=progress)
    return state.variables(), hist


def energy_view(model: SpikingModel) -> Any:
    """What :func:`jaxrob.snn.energy` reads (``layer_info``), with the first synapse's input marked
    analog only under :class:`Direct` encoding.

    Under Poisson and DCT encoding the first layer receives (signed) spikes, so its
    operations are accumulates (``E_AC * synops``), not ``E_MAC * MACs * T``.  The
    core's ``layer_info`` follows the same rule (it once charged every encoder's first
    layer as analog); stating it here keeps the tables' energy rule explicit and tested.
    """
    info = {k: dict(v) for k, v in model.layer_info.items()}
    first = next(k for k, v in info.items() if v["kind"] != "spike")
    info[first]["analog_input"] = isinstance(model.encoder, Direct)
    return types.SimpleNamespace(layer_info=info)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    return a if len(a) == size else np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


@functools.lru_cache(maxsize=16)
def _jitted_simulate(simulate: Any, timesteps: int | None) -> Any:
    """One compiled ``simulate`` per model (and T), reused by every evaluation of it."""
    return jax.jit(lambda v, xb, k: simulate(v, xb, key=k, timesteps=timesteps))


def evaluate_snn(model: SpikingModel, variables: Any, x: np.ndarray, y: np.ndarray, *, key: jax.Array,
                 batch_size: int = 500, timesteps: int | None = None) -> dict[str, Any]:
    """Accuracy of ``model.simulate`` on ``(x, y)`` and the batch means of :func:`summarize`.

    Batch ``i`` uses ``fold_in(key, i)`` (the Poisson draws); the last batch is padded
    and its padding left out of every mean.

    Returns:
      ``{"accuracy", "spikes" (hidden spikes per example), "synops", "energy_pj",
      "ann_energy_pj", "energy_ratio", "rate": {layer: mean firing rate}}``.
    """
    n = len(y)
    bs = min(batch_size, n)
    sim = _jitted_simulate(model.simulate, timesteps)
    view = energy_view(model)
    correct = 0
    sums: dict[str, float] = {"spikes": 0.0, "synops": 0.0, "energy_pj": 0.0}
    rates: dict[str, float] = {}
    ann_pj = 0.0
    for i, start in enumerate(range(0, n, bs)):
        valid = min(bs, n - start)
        logits, stats = sim(variables, jnp.asarray(_pad(x[start:start + bs], bs)), jax.random.fold_in(key, i))
        correct += int(jnp.sum(jnp.argmax(logits[:valid], -1) == jnp.asarray(y[start:start + valid])))
        stats = jax.tree.map(lambda a: a[:valid] if a.ndim else a, stats)
        s = summarize(view, stats)
        sums["spikes"] += valid * s["spikes_total"]
        sums["synops"] += valid * s["synops_total"]
        sums["energy_pj"] += valid * s["energy_pj"]
        for k, r in s["rate"].items():
            rates[k] = rates.get(k, 0.0) + valid * r
        ann_pj = s["ann_energy_pj"]
    out = {k: v / n for k, v in sums.items()}
    out.update(accuracy=correct / n, ann_energy_pj=ann_pj, energy_ratio=ann_pj / out["energy_pj"],
               rate={k: v / n for k, v in rates.items()})
    return out


def ann_energy_pj(model: SpikingModel) -> float:
    """The ANN twin's compute energy per example: ``E_MAC * sum of MACs`` (45 nm, 4.6 pJ)."""
    from jaxrob.snn._energy import E_MAC_45NM_PJ
    return float(E_MAC_45NM_PJ * sum(v["macs"] for v in model.layer_info.values() if v["kind"] != "spike"))
