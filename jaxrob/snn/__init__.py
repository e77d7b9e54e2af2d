"""Spiking neural networks as pure functions over time.

A neuron is an ``(init, step)`` pair (:class:`LIF`, :class:`IF`, :class:`ALIF`);
a network is one ``lax.scan`` over timesteps; training is backpropagation through
time with surrogate gradients (``jax.custom_jvp`` spike functions).  Spiking
models keep the library's one contract, ``apply_fn(variables, x) -> logits``, so
:func:`jaxrob.train.fit`, every attack and every pytree transform (quantization,
pruning masks) work on them unchanged.

* Surrogate spike functions: :class:`PiecewiseLinear` (Bellec et al.),
  :class:`FastSigmoid` (SuperSpike), :class:`Arctan`, :class:`Sigmoid`,
  :class:`Triangle`, :class:`Boxcar`, :class:`Custom`.
* Neurons: :class:`LIF` (DCT-SNN's discrete LIF; soft/hard/no reset, learnable
  leak and threshold), :func:`IF`, :class:`ALIF` (adaptive threshold);
  :func:`simulate` runs a layer over time.
* Encoders: :class:`Direct`, :class:`PoissonRate`, :class:`Latency`, :class:`DCT`
  (DCT-SNN, Garg et al., ICCV 2021).
* Models: :func:`create` (``mlp``, ``cnn_small``, ``vgg9``) with readout by
  accumulated membrane potential, and :func:`twin` (the matching ANN over the same
  variables); hybrid training by :func:`convert` (thresholds from activation
  percentiles) then surrogate-gradient fine-tuning.
* Statistics and energy: ``model.simulate`` returns firing rates, spike counts and
  synaptic operations per layer; :func:`energy` / :func:`summarize` give the
  AC/MAC energy estimate (45 nm: 0.9 / 4.6 pJ) as jnp functions.
* Spatio-temporal pruning (Chowdhury et al., arXiv:2104.12528): :func:`pca_widths`,
  :func:`compress`, :func:`temporal_prune`, :func:`quantize_weights`.
"""

from ._encoders import (DCT, ENCODERS, DCTState, Direct, Encoder, Latency, LatencyState, PoissonRate, PoissonState,
                        dct_basis, encoder, zigzag)
from ._energy import E_AC_45NM_PJ, E_MAC_45NM_PJ, energy, layer_energy, summarize
from ._hybrid import activation_thresholds, convert
from ._models import ARCHITECTURES, NeuronConst, SpikingModel, available, create, twin
from ._neurons import ALIF, IF, LIF, RESETS, ALIFState, LIFState, simulate
from ._prune import (compress, compression_report, explained_variance_ratio, layer_widths, pca_width, pca_widths,
                     potential_covariances, quantize_weights, spike_layer_synapses, temporal_prune,
                     width_for_variance, widths_from_covariances)
from ._surrogate import (SURROGATES, Arctan, Boxcar, Custom, FastSigmoid, PiecewiseLinear, Sigmoid, Surrogate,
                         Triangle, heaviside, surrogate)

__all__ = [
    "ALIF", "ALIFState", "ARCHITECTURES", "Arctan", "Boxcar", "Custom", "DCT", "DCTState", "Direct",
    "E_AC_45NM_PJ", "E_MAC_45NM_PJ", "ENCODERS", "Encoder", "FastSigmoid", "IF", "LIF", "LIFState", "Latency",
    "LatencyState", "NeuronConst", "PiecewiseLinear", "PoissonRate", "PoissonState", "RESETS", "SURROGATES",
    "Sigmoid", "SpikingModel", "Surrogate", "Triangle", "activation_thresholds", "available", "compress",
    "compression_report", "convert", "create", "dct_basis", "encoder", "energy", "explained_variance_ratio",
    "heaviside", "layer_energy", "layer_widths", "pca_width", "pca_widths", "potential_covariances",
    "quantize_weights", "simulate", "spike_layer_synapses", "summarize", "surrogate", "temporal_prune", "twin",
    "width_for_variance", "widths_from_covariances", "zigzag",
]
