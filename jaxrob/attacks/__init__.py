"""Adversarial attacks on any ``apply_fn(params, x) -> logits``.

Attacks are pure functions ``attack(apply_fn, params, x, y, *, key, eps, ...)``
returning adversarial inputs; they jit, vmap and run inside a training step.

- :func:`pgd`: projected gradient descent (L-inf/L2, targeted, restarts, CE/CW or
  custom losses, EOT over random transforms or randomized models).
- :func:`fgsm`: the fast gradient sign method (one-step PGD from ``x``).
- :func:`robust_accuracy` / :func:`accuracy`: batched evaluation, one compile for
  all radii.
- :func:`ce_loss` / :func:`cw_loss`: the per-example losses the attacks maximise.
"""

from ._evaluate import accuracy, robust_accuracy
from ._losses import ce_loss, cw_loss
from ._pgd import fgsm, pgd

__all__ = ["accuracy", "ce_loss", "cw_loss", "fgsm", "pgd", "robust_accuracy"]
