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
"""

from ._core import (Averaged, Members, Sampled, as_members, average, check_alpha, expected_correct,
                    member_logits, num_members, project_simplex, rec_sample, stack, unstack)
from ._rec import OBJECTIVES, expected_ce, rec_accuracy, rec_pgd, rec_robust_accuracy, rec_sampled_accuracy

__all__ = [
    "OBJECTIVES", "Averaged", "Members", "Sampled", "as_members", "average", "check_alpha", "expected_ce",
    "expected_correct", "member_logits", "num_members", "project_simplex", "rec_accuracy", "rec_pgd",
    "rec_robust_accuracy", "rec_sample", "rec_sampled_accuracy", "stack", "unstack",
]
