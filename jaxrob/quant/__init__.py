"""Quantization as pure functions and pytree transforms.

Every quantizer is a pure ``jnp`` function with a documented gradient rule (the one
straight-through estimator, :func:`straight_through`, or the paper's own gradient),
usable on weights, activations or inputs, per tensor or per channel (``axis=``).
Weight quantization is a ``params -> params`` transform, so
``apply_fn(quantize_params(params, fn), x)`` is post-training quantization and
``train.fit(quantized_model(model, fn), ...)`` is quantization-aware training;
activation quantizers are a model option (``models.create(name, activation=fn)``).

* Uniform: :func:`fake_quant` (symmetric or affine, 1-16 bits, STE inside the range),
  :func:`quantize` / :func:`dequantize` (integer codes), :func:`calibrate` (abs-max,
  percentile, MSE-optimal clipping for PTQ).
* Learned: :func:`lsq` (Esser et al., ICLR 2020), :func:`pact` (Choi et al. 2018).
* :func:`dorefa_weights` / :func:`dorefa_activations` (Zhou et al. 2016).
* :func:`binary`, :func:`ternary` (TWN); :func:`dbq`, the differentiable branch
  quantizer (Dbouk et al., ECCV 2020); :func:`binary_relax` and its schedule
  (Yin et al. 2018).
* :func:`quantize_input`: input bit-depth reduction with a BPDA (identity) gradient.
* :func:`assign_precision`: per-layer precision from noise gains (Sakr et al., ICML 2017).
* :func:`quantize_params`, :func:`quantized_model`, :func:`size_in_bits`.
"""

from ._binary import binary, ternary
from ._binary_relax import (binary_relax, binary_relax_finalize, binary_relax_model, binary_relax_params,
                            eta_schedule, project_binary, project_ternary, schedule_step, scheduled_model)
from ._calibrate import calibrate, quantization_mse
from ._dbq import (dbq, dbq_bits_per_weight, dbq_branches, dbq_finalize, dbq_init, dbq_init_params, dbq_levels,
                   dbq_model, dbq_params, dbq_thresholds, temperature_schedule)
from ._dorefa import dorefa_activations, dorefa_weights, quantize_k
from ._input import quantize_input
from ._lsq import lsq, lsq_init, lsq_levels, pact
from ._precision import (activation_noise_gains, assign_precision, mismatch_bound, precision_for_budget,
                         quantize_fixed_point, step_size, weight_noise_gains, weight_ranges)
from ._ste import straight_through
from ._tree import LayerSize, SizeReport, is_kernel, leaf_path, quantize_params, quantized_model, size_in_bits
from ._uniform import code_dtype, code_range, dequantize, fake_quant, quantize, scale_and_zero_point

__all__ = [
    "LayerSize", "SizeReport", "activation_noise_gains", "assign_precision", "binary", "binary_relax",
    "binary_relax_finalize", "binary_relax_model", "binary_relax_params", "calibrate", "code_dtype", "code_range",
    "dbq", "dbq_bits_per_weight", "dbq_branches", "dbq_finalize", "dbq_init", "dbq_init_params", "dbq_levels",
    "dbq_model", "dbq_params", "dbq_thresholds", "dequantize", "dorefa_activations", "dorefa_weights",
    "eta_schedule", "fake_quant", "is_kernel", "leaf_path", "lsq", "lsq_init", "lsq_levels", "mismatch_bound",
    "pact", "precision_for_budget", "project_binary", "project_ternary", "quantization_mse", "quantize",
    "quantize_fixed_point", "quantize_input", "quantize_k", "quantize_params", "quantized_model",
    "scale_and_zero_point", "schedule_step", "scheduled_model", "size_in_bits", "step_size", "straight_through",
    "temperature_schedule", "ternary", "weight_noise_gains", "weight_ranges",
]
