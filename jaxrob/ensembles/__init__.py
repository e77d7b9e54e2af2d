"""Deterministic and randomized ensembles over stacked member parameters.

* :func:`stack` / :func:`unstack`: member pytrees <-> one pytree with a leading member axis.
* :class:`Members`: all members' logits ``(M, B, C)`` with one ``jax.vmap`` per
  architecture group.
* :func:`average`: a deterministic ensemble (mean logits or mean probabilities).
* Randomized ensemble classifiers (REC): :func:`check_alpha`,
  :func:`expected_correct` (exact per-example accuracy), :func:`rec_accuracy`,
  :func:`rec_sampled_accuracy`, :func:`rec_robust_accuracy`, :func:`rec_sample`
  (sampled inference as a randomized ``apply_fn``) and :func:`rec_pgd`
  (adaptive PGD on the expected loss or the expected softmax).
* BARRE (Dbouk & Shanbhag, ICML 2023): :func:`barre_fit` trains members one
  after another against the current REC with :func:`barre_loss` (CE + :func:`mce`);
  :func:`optimal_alpha` finds the sampling probabilities from ARC error rates.
* EnResNet (Wang et al., NeurIPS 2019): :func:`enresnet` builds an ensemble of
  noise-injected pre-activation ResNets (:func:`noisy_resnet`,
  :func:`inject_noise`) as a randomized ``apply_fn``.
* EMPIR (Sen et al., ICLR 2020): :func:`empir` votes over mixed-precision DoReFa
  members (:func:`mixed_precision_model`) with :func:`empir_vote`;
  :func:`empir_surrogate` is the authors' attack surrogate and
  :func:`empir_attack_probs` the averaged probabilities an adaptive attack targets.
"""

from ._core import (Averaged, Members, Sampled, as_members, average, check_alpha, expected_correct,
                    member_logits, num_members, project_simplex, rec_sample, stack, unstack)
from ._barre import AlphaSearch, barre_fit, barre_loss, mce, optimal_alpha, rec_adversary
from ._empir import (EMPIR, DorefaActivation, DorefaWeights, EMPIRSurrogate, empir, empir_attack_probs,
                     empir_surrogate, empir_vote, hidden_kernels, mixed_precision_model)
from ._enresnet import (NOISE_STD, NoisyPreActResNet, RandomizedAveraged, RandomizedTrainApply, enresnet, inject_noise,
                        noisy_resnet, randomized_average, randomized_train_apply)
from ._rec import OBJECTIVES, expected_ce, rec_accuracy, rec_pgd, rec_robust_accuracy, rec_sampled_accuracy

__all__ = [
    "EMPIR", "DorefaActivation", "DorefaWeights", "EMPIRSurrogate", "empir", "empir_attack_probs",
    "empir_surrogate", "empir_vote", "hidden_kernels", "mixed_precision_model",
    "AlphaSearch", "NOISE_STD", "NoisyPreActResNet", "RandomizedAveraged", "RandomizedTrainApply", "barre_fit",
    "barre_loss", "enresnet", "inject_noise", "mce", "noisy_resnet", "optimal_alpha",
    "randomized_average", "randomized_train_apply", "rec_adversary",
    "OBJECTIVES", "Averaged", "Members", "Sampled", "as_members", "average", "check_alpha", "expected_ce",
    "expected_correct", "member_logits", "num_members", "project_simplex", "rec_accuracy", "rec_pgd",
    "rec_robust_accuracy", "rec_sample", "rec_sampled_accuracy", "stack", "unstack",
]
