"""Hardware cost models as differentiable ``jnp`` functions (issue #7, in progress).

Every cost is a pure function of a :class:`Workload` (per-layer GEMM dimensions,
bit-widths and densities, a pytree of arrays) and hardware parameters: jittable,
``vmap``-able over design points, differentiable with respect to continuous hardware
parameters and per-layer precision and sparsity. Integer knobs (array rows and columns,
bit-widths) get documented relaxations that equal the exact cost at integer points
(:func:`interp_int`).

* Workloads: :func:`extract` (any ``apply_fn``'s convolutions and matrix products from
  its jaxpr), :func:`resnet50`, :func:`mobilenet_v2`, :func:`bert_base_layer`,
  :func:`to_scalesim_topology`.
* Systolic arrays: :func:`systolic_cost` (output/weight/input stationary; cycle counts as
  SCALE-Sim 3.0.0's, one cycle apart); multi-pod arrays after SOSA, :func:`multipod_cost`,
  :func:`multi_tenant_cost`, :func:`interconnect` (crossbar, butterfly, Benes, mesh; the
  scaling formulas are ours, only the paper's abstract was readable).
* In-memory computing: :func:`imc_cost`, SNR metrics, MPC ADC bits, QS / IS / QR models
  (Gonugondla et al.; derived from the abstracts, see :mod:`jaxrob.hw._imc`).
* Crossbar ADCs: :func:`crossbar_adc_cost`, :func:`weight_adc_cost`, :func:`adc_energy`
  (NeuroSim V1.3 SAR and flash fits), :func:`column_bits`.
* Sparsity: :func:`zero_skip_cost`, :func:`operand_densities`, :func:`format_bits`,
  :func:`sparce_skip_fraction`, :func:`snn_workload_energy`.

The design-space sweep and gradient search are the ``design_space`` experiment.
"""

from jaxrob.hw._adc import (NEUROSIM_45NM_HP, NEUROSIM_65NM_HP, AdcCost, AdcTech, adc_energy, adc_latency,
                            column_bits, column_max_pmf, crossbar_adc_cost, weight_adc_cost)
from jaxrob.hw._imc import (DotStats, IMCCost, IMCTech, adc_bits_full_precision, clipping_snr, db, from_db,
                            imc_cost, is_delay, is_energy, is_snr, knob_for_snr, mpc_adc_bits, qr_delay, qr_energy,
                            qr_snr, qs_delay, qs_energy, qs_headroom, qs_max_rows, qs_snr, qs_snr_floor, snr_pre_adc,
                            snr_total, sqnr_adc, sqnr_input)
from jaxrob.hw._imc import adc_delay as imc_adc_delay
from jaxrob.hw._imc import adc_energy as imc_adc_energy
from jaxrob.hw._multipod import (INTERCONNECTS, Interconnect, MultiPodCost, MultiPodTech, TenancyCost, interconnect,
                                 multi_tenant_cost, multipod_cost)
from jaxrob.hw._smooth import ceil_div, floor_div, interp_int, soft_ceil
from jaxrob.hw._sparse import (FORMATS, OperandDensities, SparceLoop, ZeroSkipCost, ZeroSkipTech, conv_input_elems,
                               expected_format_bits, format_bits, operand_densities, snn_energy, snn_workload_energy,
                               soft_density, sparce_runtime, sparce_skip_fraction, zero_skip_cost)
from jaxrob.hw._systolic import DATAFLOWS, SystolicCost, SystolicEnergy, systolic_cost
from jaxrob.hw._workload import (SCALESIM_HEADER, LayerInfo, Workload, bert_base_layer, extract, make_workload,
                                 mobilenet_v2, resnet50, to_scalesim_topology)

__all__ = [
    "Workload", "LayerInfo", "make_workload", "extract", "resnet50", "mobilenet_v2", "bert_base_layer",
    "to_scalesim_topology", "SCALESIM_HEADER",
    "interp_int", "soft_ceil", "ceil_div", "floor_div",
    "systolic_cost", "SystolicCost", "SystolicEnergy", "DATAFLOWS",
    "multipod_cost", "multi_tenant_cost", "interconnect", "MultiPodCost", "MultiPodTech", "TenancyCost",
    "Interconnect", "INTERCONNECTS",
    "IMCTech", "DotStats", "IMCCost", "imc_cost", "knob_for_snr", "sqnr_input", "sqnr_adc", "clipping_snr",
    "snr_pre_adc", "snr_total", "mpc_adc_bits", "adc_bits_full_precision", "imc_adc_energy", "imc_adc_delay",
    "qs_snr", "qs_energy", "qs_delay", "qs_headroom", "qs_max_rows", "qs_snr_floor", "is_snr", "is_energy",
    "is_delay", "qr_snr", "qr_energy", "qr_delay", "db", "from_db",
    "AdcTech", "AdcCost", "NEUROSIM_65NM_HP", "NEUROSIM_45NM_HP", "adc_energy", "adc_latency", "column_bits",
    "column_max_pmf", "crossbar_adc_cost", "weight_adc_cost",
    "FORMATS", "OperandDensities", "SparceLoop", "ZeroSkipCost", "ZeroSkipTech", "conv_input_elems",
    "expected_format_bits", "format_bits", "operand_densities", "snn_energy", "snn_workload_energy",
    "soft_density", "sparce_runtime", "sparce_skip_fraction", "zero_skip_cost",
]
