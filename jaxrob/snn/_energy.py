"""Spike statistics and the standard SNN vs ANN compute-energy estimate.

The estimate used throughout the SNN papers this library follows (DCT-SNN,
spatio-temporal pruning, DIET-SNN, hybrid training): every synaptic operation
driven by a spike is an *accumulate* (AC: the weight is added to the membrane
potential), every operation on an analog value is a *multiply-accumulate*
(MAC), and energy is operations times energy per operation.  In 45 nm CMOS
(Horowitz, ISSCC 2014) a 32-bit float add costs 0.9 pJ and a multiply 3.7 pJ, so

    E_AC = 0.9 pJ,    E_MAC = 3.7 + 0.9 = 4.6 pJ.

For an SNN of ``T`` steps, a layer whose input is analog (the first layer under
direct encoding) costs ``E_MAC * MACs * T``; every other layer costs
``E_AC * synops``, where ``synops`` counts, over all timesteps, every non-zero
input times the number of outputs it feeds (its fan-out, exact at padded
borders).  The ANN costs ``E_MAC * MACs``.  Memory traffic and neuron updates are
not counted, as in the papers.

Everything here is a ``jnp`` function of arrays, differentiable in the firing
statistics, so the hardware cost models (``jaxrob.hw``) and hardware-aware losses
can build on it.

References:
  Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014.
  Garg, Chowdhury, Roy, "DCT-SNN", ICCV 2021, arXiv:2010.01795 (section on energy).
  Chowdhury, Garg, Roy, "Spatio-temporal pruning and quantization for low-latency
  spiking neural networks", IJCNN 2021, arXiv:2104.12528.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxrob import _validate

E_AC_45NM_PJ = 0.9
E_MAC_45NM_PJ = 4.6


def layer_energy(*, synops: jax.Array, macs: jax.Array | float, analog_input: bool | jax.Array,
                 timesteps: jax.Array | int, e_ac: float = E_AC_45NM_PJ, e_mac: float = E_MAC_45NM_PJ) -> jax.Array:
    """Energy (pJ) of one SNN layer: ``E_MAC * macs * T`` if its input is analog, else ``E_AC * synops``.

    Args:
      synops: spike-driven synaptic operations over the whole inference (any shape, e.g. per example).
      macs: dense multiply-accumulates of the layer for one timestep.
      analog_input: whether the layer's input is analog (then it runs as MACs every step).
      timesteps: number of timesteps ``T``.
      e_ac, e_mac: energy per accumulate / multiply-accumulate in pJ.
    """
    return jnp.where(analog_input, e_mac * jnp.asarray(macs, jnp.float32) * timesteps,
                     e_ac * jnp.asarray(synops, jnp.float32))


def energy(model: Any, stats: Mapping[str, Any], *, e_ac: float = E_AC_45NM_PJ,
           e_mac: float = E_MAC_45NM_PJ) -> dict[str, Any]:
    """Per-layer and total compute energy (pJ per example) of an SNN inference, and its ANN twin's.

    Args:
      model: a :class:`~jaxrob.snn.SpikingModel` (its ``layer_info``).
      stats: the statistics from ``model.simulate(variables, x)`` (spiking mode).
      e_ac, e_mac: energy per operation in pJ (default: 45 nm, 0.9 and 4.6).

    Returns:
      ``{"layers": {name: (N,)}, "total": (N,), "ann": float, "ratio": (N,)}`` -- energy
      per example of each synapse layer and in total, the ANN twin's energy
      (``E_MAC * sum of MACs``), and ANN / SNN.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob import snn
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=4)
      >>> _, stats = net.simulate(net.variables, jnp.zeros((1, 28, 28, 1)))
      >>> e = snn.energy(net, stats)
      >>> sorted(e)
      ['ann', 'layers', 'ratio', 'total']
    """
    _validate.number("e_ac", e_ac, min=0.0)
    _validate.number("e_mac", e_mac, min=0.0)
    if "synops" not in stats or "timesteps" not in stats:
        raise ValueError("stats must be the spiking statistics returned by model.simulate(variables, x) "
                         "of a spiking model (keys 'synops', 'timesteps', ...)")
    T = stats["timesteps"]
    layers = {}
    ann = 0.0
    for name, info in model.layer_info.items():
        if info["kind"] == "spike":
            continue
        layers[name] = layer_energy(synops=stats["synops"][name], macs=info["macs"],
                                    analog_input=info["analog_input"], timesteps=T, e_ac=e_ac, e_mac=e_mac)
        ann += e_mac * info["macs"]
    total = sum(layers.values())
    return {"layers": layers, "total": total, "ann": ann, "ratio": ann / total}


def summarize(model: Any, stats: Mapping[str, Any], **energy_kw) -> dict[str, Any]:
    """Batch means of the statistics as plain floats: firing rate and spikes per layer, synops, energy.

    Returns:
      ``{"timesteps", "rate": {layer}, "spikes": {layer}, "spikes_total", "synops": {layer},
      "synops_total", "energy_pj", "ann_energy_pj", "energy_ratio"}`` (per example).
    """
    e = energy(model, stats, **energy_kw)
    mean = lambda a: float(jnp.mean(a))  # noqa: E731
    out = {"timesteps": int(stats["timesteps"]),
           "rate": {k: mean(v) for k, v in stats["rate"].items()},
           "spikes": {k: mean(v) for k, v in stats["spikes"].items()},
           "synops": {k: mean(v) for k, v in stats["synops"].items()}}
    out["spikes_total"] = sum(out["spikes"].values())
    out["synops_total"] = sum(out["synops"].values())
    out["energy_pj"] = mean(e["total"])
    out["ann_energy_pj"] = float(e["ann"])
    out["energy_ratio"] = out["ann_energy_pj"] / out["energy_pj"]
    return out
