"""Pruning, structured sparsity and low-rank compression as pytree transforms.

Masks are pytrees with the structure of the parameters (all-ones for leaves that are
not pruned); ``apply_fn(apply_masks(params, masks), x)`` runs a pruned model and
``train.fit(masked_model(model, masks), ...)`` fine-tunes one with the pruned weights
held at zero. Every method reports per-layer and total sparsity (:func:`sparsity`).

* Unstructured magnitude pruning, per layer or global (:func:`magnitude_masks`), with
  the gradual polynomial schedule of Zhu & Gupta (:func:`gradual_pruning`).
* N:M sparsity with SR-STE (Zhou et al., ICLR 2021): :func:`nm_masks`, :func:`srste`, :func:`nm_model`.
* Channel pruning by relaxed variable splitting, RVSM / RGSM (Dinh et al. 2020):
  :func:`rvsm`, :func:`rgsm` (optax transformations), :func:`channel_sparsity`.
* Block-based column-row pruning (GRIM, Niu et al. 2021): :func:`bcr_masks`.
* D.U.B. crossbar-attuned pruning (Ibrayev et al. 2024): :func:`dub_loss`,
  :func:`dub_masks`, :func:`dub_fit`, :func:`crossbar_report`.
* GDWS (Dbouk & Shanbhag, NeurIPS 2021): :func:`gdws_approximate` turns a trained
  model's convolutions into generalized depthwise-separable ones (MEGO / LEGO) and
  reports the MACs; :func:`gdws_alphas` computes the robustness-derived error weights.
* Utilized rank (Garg et al. 2024): :func:`fit_subspaces`, :func:`project`,
  :func:`utilization`, :func:`mean_layer_utilization`, :func:`factorize`,
  :func:`projected_model`.
"""

from ._bcr import bcr_group_lasso, bcr_mask, bcr_masks
from ._dub import (CrossbarReport, DubResult, LayerCrossbars, as_crossbar, balance_penalty, crossbar_matrix,
                   crossbar_report, crossbar_tiles, dub_fit, dub_loss, dub_masks, from_crossbar_matrix,
                   power_of_two_level, relaxed_l0)
from ._gdws import (ConvLayer, GDWSConv, GDWSModel, LayerReport, MACReport, channel_singular_values, conv_layers,
                    conv_macs, gdws_alphas, gdws_approximate, gdws_conv, gdws_decompose, gdws_kernel, gdws_macs,
                    gdws_transform, kernel_matrix, lego_ranks, mego_ranks, weighted_error)
from ._lowrank import (LayerSpec, LayerStats, LayerSubspace, LowRankFactors, compression, factorize, find_layers,
                       fit_subspaces, input_stats, layer_inputs, mean_layer_utilization, project, projected_model,
                       subspaces, utilization)
from ._magnitude import (GradualPruningState, gradual_pruning, magnitude_masks, magnitude_prune, polynomial_sparsity,
                         topk_mask)
from ._masks import (LayerSparsity, SparsityReport, apply_masks, check_masks, combine_masks, default_where, dense_masks,
                     masked_model, sparsity)
from ._nm import nm_mask, nm_masks, nm_model, nm_sparse_params, srste
from ._rvsm import (RGSM_DEFAULTS, RVSM_DEFAULTS, SplitState, channel_sparsity, conv_kernels, group_hard_threshold,
                    group_norms, hard_threshold, rgsm, rgsm_masks, rgsm_weights, rvsm, rvsm_masks, rvsm_weights)

__all__ = [
    "ConvLayer", "CrossbarReport", "DubResult", "GDWSConv", "GDWSModel", "GradualPruningState", "LayerCrossbars",
    "LayerReport", "LayerSparsity", "LayerSpec", "LayerStats", "LayerSubspace", "LowRankFactors", "MACReport",
    "RGSM_DEFAULTS", "RVSM_DEFAULTS", "SparsityReport", "SplitState", "apply_masks", "as_crossbar",
    "balance_penalty", "bcr_group_lasso", "bcr_mask", "bcr_masks", "channel_singular_values", "channel_sparsity",
    "check_masks", "combine_masks", "compression", "conv_kernels", "conv_layers", "conv_macs", "crossbar_matrix",
    "crossbar_report", "crossbar_tiles", "default_where", "dense_masks", "dub_fit", "dub_loss", "dub_masks",
    "factorize", "find_layers", "fit_subspaces", "from_crossbar_matrix", "gdws_alphas", "gdws_approximate",
    "gdws_conv", "gdws_decompose", "gdws_kernel", "gdws_macs", "gdws_transform", "gradual_pruning",
    "group_hard_threshold", "group_norms", "hard_threshold", "input_stats", "kernel_matrix", "layer_inputs",
    "lego_ranks", "magnitude_masks", "magnitude_prune", "masked_model", "mean_layer_utilization", "mego_ranks",
    "nm_mask", "nm_masks", "nm_model", "nm_sparse_params", "polynomial_sparsity", "power_of_two_level", "project",
    "projected_model", "relaxed_l0", "rgsm", "rgsm_masks", "rgsm_weights", "rvsm", "rvsm_masks", "rvsm_weights",
    "sparsity", "srste", "subspaces", "topk_mask", "utilization", "weighted_error",
]
