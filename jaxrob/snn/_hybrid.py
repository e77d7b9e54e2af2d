"""Hybrid training: convert a trained ANN twin to an SNN, then fine-tune with surrogate gradients.

Conversion keeps every weight and sets each spike layer's threshold from the
ANN's activations on calibration data: ``V_th(l)`` is the ``percentile``-th
percentile of the *positive* pre-activations of layer ``l`` (the inputs of its
ReLU that pass it).  Because jaxrob's spike layers emit ``V_th * o`` (see
:mod:`jaxrob.snn._models`), a neuron firing at rate ``r`` carries ``r * V_th ~= relu(a)``
and no weight needs rescaling.  A robust percentile instead of the maximum
(Rueckauer et al. 2017) trades a little clipping of rare large activations for
much higher firing rates, hence fewer timesteps; DCT-SNN uses the 99.9th
percentile, Rathi et al. the 99.7th.  The converted SNN is then trained further
by BPTT (:func:`jaxrob.train.fit` on the spiking model), which is the "hybrid"
scheme of Rathi et al. (2020) used by DCT-SNN.

Thresholds are set from the ANN in one pass (all layers at once), not layer by
layer from the SNN's own currents as in Rathi et al.'s code; with the amplitude
``V_th`` spikes, the ANN activations are the rate-coded targets, so the two agree
up to the rate-coding error.  We chose the one-pass version for speed and say so.

References:
  Rathi, Srinivasan, Panda, Roy, "Enabling deep spiking neural networks with hybrid
  conversion and spike timing dependent backpropagation", ICLR 2020, arXiv:2005.01807.
  Rueckauer, Lungu, Hu, Pfeiffer, Liu, "Conversion of continuous-valued deep networks
  to efficient event-driven networks for image classification", Front. Neurosci. 2017.
  Garg, Chowdhury, Roy, "DCT-SNN", ICCV 2021, arXiv:2010.01795.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.models._base import PyTree
from jaxrob.snn._models import SpikingModel, twin


def activation_thresholds(model: SpikingModel, variables: PyTree, x: Any, *, percentile: float = 99.7,
                          batch_size: int = 256) -> dict[str, float]:
    """Per-spike-layer thresholds: the ``percentile`` of the ANN twin's positive pre-activations on ``x``.

    Args:
      model: a spiking model or its ANN twin (either; the ANN twin is used).
      variables: the (trained) variables.
      x: calibration images ``(N, H, W, C)`` in [0, 1].
      percentile: in (0, 100].
      batch_size: images per forward pass.

    Returns:
      ``{spike_layer_name: threshold}`` (floats > 0).
    """
    if not isinstance(model, SpikingModel):
        raise TypeError(f"model must be a jaxrob.snn SpikingModel, got {type(model).__name__}")
    _validate.number("percentile", percentile, min=0.0, max=100.0, min_inclusive=False)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of NHWC images, got shape {x.shape}")
    ann = twin(model, spiking=False) if model.spiking else model
    forward = jax.jit(lambda v, xb: ann.simulate(v, xb)[1]["preactivations"])
    positives: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), batch_size):
        pre = forward(variables, jnp.asarray(x[i:i + batch_size]))
        for name, a in pre.items():
            a = np.asarray(a).ravel()
            positives.setdefault(name, []).append(a[a > 0])
    out = {}
    for name, chunks in positives.items():
        vals = np.concatenate(chunks)
        # A layer that never activates gets threshold 1 (any positive value is equivalent: it never fires).
        out[name] = float(np.percentile(vals, percentile)) if vals.size else 1.0
    return out


def convert(model: SpikingModel, variables: PyTree, x: Any, *, percentile: float = 99.7,
            batch_size: int = 256) -> PyTree:
    """ANN-to-SNN conversion: the same weights, thresholds from :func:`activation_thresholds`.

    Args:
      model: the spiking model (its neurons must not learn the threshold, or the
        threshold is written into ``params`` instead of ``batch_stats``; both work).
      variables: trained variables of the ANN twin (``twin(model)``).
      x: calibration images in [0, 1].
      percentile, batch_size: see :func:`activation_thresholds`.

    Returns:
      New ``variables`` for ``model`` with every spike layer's threshold set.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob import snn
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=16)
      >>> v = snn.convert(net, net.variables, jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)))
      >>> bool(v["batch_stats"]["lif1"]["threshold"] > 0)
      True
    """
    thresholds = activation_thresholds(model, variables, x, percentile=percentile, batch_size=batch_size)
    variables = jax.tree.map(lambda a: a, variables)
    for name, thr in thresholds.items():
        coll = "params" if (name in variables["params"] and "threshold" in variables["params"][name]) else "batch_stats"
        variables[coll][name] = dict(variables[coll][name], threshold=jnp.asarray(thr, jnp.float32))
    return variables
