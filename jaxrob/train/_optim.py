"""Optimizers and learning-rate schedules, built from optax.

The schedules are written out in closed form (rather than composed from optax's
schedule zoo) so that their value at every step is stated once, in the
docstring, and tested against that statement.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxrob import _validate

PyTree = Any
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine")


def kernel_mask(params: PyTree) -> PyTree:
    """The default weight-decay mask: ``True`` for leaves with ``ndim >= 2``.

    Convolution and dense kernels are decayed; biases, batch-norm scales and
    offsets (all 1-D) and scalars are not, following common practice for
    ResNets (e.g. Goyal et al., 2017, "Accurate, Large Minibatch SGD").

    Args:
      params: a pytree of arrays.

    Returns:
      A pytree of Python bools with the structure of ``params``.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_schedule(learning_rate: float, *, schedule: str = "constant", total_steps: int | None = None,
                  boundaries: Sequence[float] = (0.5, 0.75), decay_factor: float = 0.1,
                  warmup_steps: int = 0) -> optax.Schedule:
    """A learning-rate schedule ``step -> lr`` in closed form.

    With ``lr = learning_rate``, ``T = total_steps`` and ``W = warmup_steps``:

    * ``"constant"``: ``lr``.
    * ``"piecewise"``: ``lr * decay_factor ** k(s)`` where ``k(s)`` is the number of
      boundaries ``b`` with ``s >= round(b * T)``; boundaries are fractions of
      ``T`` measured from step 0 (the Madry / Rice et al. ``[0.5, 0.75]`` recipe).
    * ``"cosine"``: ``lr * (1 + cos(pi * t)) / 2`` with
      ``t = clip((s - W) / (T - W), 0, 1)``: a full cosine over the steps after
      warm-up, reaching 0 at ``s = T``.

    If ``W > 0`` the value above is multiplied by ``min(1, s / W)`` (linear
    warm-up from 0, as in optax's ``linear_schedule`` and big_vision).

    Args:
      learning_rate: peak learning rate, ``> 0``.
      schedule: ``"constant"``, ``"piecewise"`` or ``"cosine"``.
      total_steps: number of training steps ``T``; required unless the schedule
        is constant without warm-up.
      boundaries: increasing fractions in ``(0, 1)`` of ``T`` where the piecewise
        schedule multiplies the rate by ``decay_factor``.
      decay_factor: piecewise multiplier, in ``(0, 1]``.
      warmup_steps: ``W >= 0`` linear warm-up steps, ``W < T``.

    Returns:
      A function of the (integer) step count returning a float32 scalar.

    Example:
      >>> from jaxrob.train import make_schedule
      >>> sched = make_schedule(0.1, schedule="piecewise", total_steps=100)
      >>> [round(float(sched(s)), 6) for s in (49, 50, 75)]
      [0.1, 0.01, 0.001]
    """
    lr = _validate.number("learning_rate", learning_rate, min=0.0, min_inclusive=False)
    _validate.choice("schedule", schedule, SCHEDULES)
    warmup = _validate.number("warmup_steps", warmup_steps, min=0, integer=True)
    if schedule != "constant" or warmup > 0:
        if total_steps is None:
            raise ValueError(f"total_steps is required for schedule={schedule!r}"
                             + (f" with warmup_steps={warmup}" if warmup else "") + "; got None")
    if total_steps is not None:
        total = _validate.number("total_steps", total_steps, min=1, integer=True)
        if warmup >= total:
            raise ValueError(f"warmup_steps must be < total_steps={total}, got {warmup}")
    else:
        total = None

    if schedule == "constant":
        def main(s):
            return jnp.full((), lr, jnp.float32)
    elif schedule == "piecewise":
        bounds = tuple(boundaries)
        for i, b in enumerate(bounds):
            _validate.number(f"boundaries[{i}]", b, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
        if any(b1 >= b2 for b1, b2 in zip(bounds, bounds[1:])):
            raise ValueError(f"boundaries must be strictly increasing fractions of total_steps, got {bounds}")
        factor = _validate.number("decay_factor", decay_factor, min=0.0, max=1.0, min_inclusive=False)
        steps = jnp.asarray([round(b * total) for b in bounds], jnp.int32)

        def main(s):
            k = jnp.sum(jnp.asarray(s)[..., None] >= steps, axis=-1)
            return (lr * jnp.float32(factor) ** k).astype(jnp.float32)
    else:  # cosine
        span = total - warmup

        def main(s):
            t = jnp.clip((jnp.asarray(s, jnp.float32) - warmup) / span, 0.0, 1.0)
            return (lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t))).astype(jnp.float32)

    if warmup == 0:
        return main

    def with_warmup(s):
        ramp = jnp.minimum(1.0, jnp.asarray(s, jnp.float32) / warmup)
        return (main(s) * ramp).astype(jnp.float32)

    return with_warmup


def make_optimizer(name: str = "sgd", *, learning_rate: float, momentum: float = 0.9, nesterov: bool = False,
                   weight_decay: float = 0.0, schedule: str = "constant", total_steps: int | None = None,
                   boundaries: Sequence[float] = (0.5, 0.75), decay_factor: float = 0.1, warmup_steps: int = 0,
                   decay_mask: Callable[[PyTree], PyTree] | None = None,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
    """An optax optimizer with a learning-rate schedule and masked weight decay.

    * ``"sgd"``: SGD with (optionally Nesterov) momentum; weight decay is the
      classic coupled L2 term ``g + weight_decay * w`` added to the gradient
      before momentum (PyTorch's ``SGD(weight_decay=...)``).
    * ``"adam"``: Adam with the same coupled L2 term; ``momentum`` is Adam's
      ``b1`` and ``nesterov=True`` gives NAdam.
    * ``"adamw"``: Adam with decoupled weight decay (Loshchilov & Hutter,
      "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101),
      scaled by the scheduled learning rate as in optax.

    Weight decay applies only where ``decay_mask(params)`` is ``True``; the
    default, :func:`kernel_mask`, selects leaves with ``ndim >= 2`` (kernels), so
    biases and batch-norm parameters are not decayed.

    Args:
      name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
      learning_rate: peak learning rate, ``> 0``.
      momentum: SGD momentum in ``[0, 1)`` (0 disables it); Adam's ``b1``.
      nesterov: Nesterov momentum (SGD) or NAdam (adam/adamw).
      weight_decay: ``>= 0``.
      schedule, total_steps, boundaries, decay_factor, warmup_steps: see
        :func:`make_schedule`.
      decay_mask: ``params -> pytree of bools`` selecting decayed leaves;
        defaults to :func:`kernel_mask`.
      grad_clip_norm: if given, gradients are first clipped to this global norm.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob.train import make_optimizer
      >>> opt = make_optimizer("sgd", learning_rate=0.1, momentum=0.0)
      >>> params = {"w": jnp.ones((2, 2))}
      >>> updates, _ = opt.update({"w": jnp.ones((2, 2))}, opt.init(params), params)
      >>> round(float(updates["w"][0, 0]), 6)
      -0.1
    """
    _validate.choice("name", name, OPTIMIZERS)
    sched = make_schedule(learning_rate, schedule=schedule, total_steps=total_steps, boundaries=boundaries,
                          decay_factor=decay_factor, warmup_steps=warmup_steps)
    mom = _validate.number("momentum", momentum, min=0.0, max=1.0, max_inclusive=False)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and name == "sgd" and mom == 0.0:
        raise ValueError("nesterov=True needs momentum > 0 for sgd, got momentum=0.0")
    wd = _validate.number("weight_decay", weight_decay, min=0.0)
    if decay_mask is not None and not callable(decay_mask):
        raise TypeError(f"decay_mask must be a callable params -> pytree of bools, got {type(decay_mask).__name__}")
    mask = decay_mask if decay_mask is not None else kernel_mask

    parts = []
    if grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(
            _validate.number("grad_clip_norm", grad_clip_norm, min=0.0, min_inclusive=False)))
    if name == "adamw":
        parts.append(optax.adamw(sched, b1=mom, weight_decay=wd, mask=mask, nesterov=nesterov))
    else:
        if wd > 0:
            parts.append(optax.add_decayed_weights(wd, mask=mask))
        if name == "sgd":
            parts.append(optax.sgd(sched, momentum=mom if mom > 0 else None, nesterov=nesterov))
        else:
            parts.append(optax.adam(sched, b1=mom, nesterov=nesterov))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)
