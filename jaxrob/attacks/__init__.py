"""Adversarial attacks on any ``apply_fn(params, x) -> logits``.

Attacks are pure functions ``attack(apply_fn, params, x, y, *, key, eps, ...)``
returning adversarial inputs; they jit, vmap and run inside a training step.

- :func:`pgd`: projected gradient descent (L-inf/L2, targeted, restarts, CE/CW or
  custom losses, EOT over random transforms or randomized models).
- :func:`fgsm`: the fast gradient sign method (one-step PGD from ``x``).
- :func:`apgd` / :func:`apgd_targeted`: Auto-PGD with the CE, DLR and targeted
  DLR losses (Croce & Hein), step-size schedule with checkpoints, L-inf/L2, EOT.
- :func:`square`: the score-based Square attack (Andriushchenko et al.), forward passes only.
- :func:`autoattack`: APGD-CE -> APGD-T -> Square, each on the points still robust
  (``version="rand"``: APGD-CE and APGD-DLR with EOT for randomized defenses).
- :func:`arc`: the ARC attack on randomized ensemble classifiers (Dbouk & Shanbhag).
- :func:`robust_accuracy` / :func:`accuracy`: batched evaluation, one compile for
  all radii.
- :func:`ce_loss` / :func:`cw_loss`: the per-example losses the attacks maximise.
- Transferability (TREND, Ravikumar et al. 2020): :func:`transfer_counts`,
  :func:`transfer_matrix`, :func:`fit_transfer_curve` (N(eps) = a(1 - e^{b eps})),
  :func:`transfer_metric`; ensemble attacks :func:`grad_sum_pgd`,
  :func:`sign_average_pgd`, :func:`sign_agreement_pgd` (:func:`ensemble_pgd`).
"""

from ._apgd import apgd, apgd_targeted, dlr_loss, dlr_targeted_loss
from ._arc import arc
from ._autoattack import AutoAttackResult, Stage, autoattack, autoattack_stages
from ._evaluate import accuracy, robust_accuracy
from ._losses import ce_loss, cw_loss
from ._pgd import fgsm, pgd
from ._square import square
from ._transfer import RULES as ENSEMBLE_RULES
from ._transfer import (TransferCounts, TransferFit, ensemble_pgd, fit_transfer_curve, grad_sum_pgd,
                        sign_agreement_pgd, sign_average_pgd, transfer_counts, transfer_curve, transfer_mask,
                        transfer_matrix, transfer_metric)

__all__ = [
    "AutoAttackResult", "Stage", "accuracy", "apgd", "apgd_targeted", "arc", "autoattack",
    "autoattack_stages", "ce_loss", "cw_loss", "dlr_loss", "dlr_targeted_loss", "fgsm", "pgd",
    "robust_accuracy", "square",
    "ENSEMBLE_RULES", "TransferCounts", "TransferFit", "ensemble_pgd", "fit_transfer_curve", "grad_sum_pgd",
    "sign_agreement_pgd", "sign_average_pgd", "transfer_counts", "transfer_curve", "transfer_mask",
    "transfer_matrix", "transfer_metric",
]
