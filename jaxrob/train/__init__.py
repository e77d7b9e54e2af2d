"""Training: optax optimizers, pure jitted train steps, robust losses, orbax checkpoints.

The pieces, smallest first:

* :func:`make_optimizer` / :func:`make_schedule`: optax SGD/Adam/AdamW with
  constant, piecewise or cosine schedules and kernel-only weight decay.
* :class:`TrainState`: ``(step, params, batch_stats, opt_state, rng)``, arrays only.
* Losses: :func:`cross_entropy`, :func:`pgd_at` (Madry et al.), :func:`trades`
  (Zhang et al.), each a :class:`Loss` spec with a pure loss function.
* :func:`make_train_step`: loss, gradient and optax update in one ``jax.jit``,
  for a jaxrob :class:`~jaxrob.models.Model` or any pure ``apply_fn(params, x)``;
  data-parallel over a :func:`make_mesh` mesh with :func:`shard_batch`.
* :class:`Checkpoints`: atomic orbax checkpoints with a config fingerprint.
* :func:`fit`: the epoch loop with progress bar, periodic checkpoints and exact resume.
"""

from jaxrob.train._checkpoint import CheckpointError, Checkpoints
from jaxrob.train._fit import fit
from jaxrob.train._losses import Loss, cross_entropy, pgd_at, trades
from jaxrob.train._optim import kernel_mask, make_optimizer, make_schedule
from jaxrob.train._state import ModelFns, TrainState
from jaxrob.train._step import evaluate, make_mesh, make_train_step, replicate, shard_batch

__all__ = [
    "CheckpointError", "Checkpoints", "Loss", "ModelFns", "TrainState", "cross_entropy", "evaluate", "fit",
    "kernel_mask", "make_mesh", "make_optimizer", "make_schedule", "make_train_step", "pgd_at",
    "replicate", "shard_batch", "trades",
]
