"""Auto-PGD (APGD) and its targeted variant APGD-T, the gradient attacks of AutoAttack.

APGD is PGD without a step-size parameter: it starts with step ``2 * eps``, adds
momentum, and at a fixed schedule of checkpoints halves the step of the examples
whose loss stopped increasing, restarting them from the best point found so far.
Everything is per example and vectorised; the iterations are one
``lax.fori_loop`` and restarts and target classes ``lax.scan`` s, all under
``jax.jit``.

The details follow the paper's Algorithm 1 and the official implementation
(``autoattack/autopgd_base.py`` of github.com/fra31/auto-attack, which
torchattacks' ``APGD``/``APGDT`` copy):

* checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in the official integer
  form: the first interval is ``max(int(0.22 steps), 1)`` iterations, each next
  one ``max(int(0.03 steps), 1)`` shorter, down to ``max(int(0.06 steps), 1)``;
* at a checkpoint the step of an example is halved, and the example restarts
  from its best point (and that point's gradient), if the loss increased in at
  most ``rho`` times the iterations since the previous checkpoint, or if its
  step was not halved at the previous checkpoint and its best loss did not
  improve since then (the official code counts ``<= rho * k``; it starts as if
  the step had just been halved, so the second condition is off at the first
  checkpoint);
* the update is ``z = P(x_k + eta * dir(g))``,
  ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with ``a = 1`` at
  the first step and ``0.75`` after, ``dir`` = sign (L-inf) or ``g / ||g||``
  (L2), and ``P`` the projection onto the eps-ball followed by clipping into
  the box (for L2 the official code projects onto the ball and then clips,
  which is what :func:`jaxrob.attacks.pgd` does too); after a restart from
  ``x_best`` the momentum term is ``x_best - x_k``, as in the official code;
* the random start is ``x + eps * t / ||t||_inf`` with ``t ~ U[-1, 1]^d``
  (L-inf) or ``x + eps * t / ||t||_2`` with ``t ~ N(0, I)`` (L2), clipped;
* whether the first iteration increased the loss is judged against the loss
  at the random start, as in the paper (the official code compares with a
  not yet filled buffer entry there).

Returned point, per example: the most recent iterate that is misclassified if
there is one (``argmax != y``, for the targeted losses too, as in the official
code), else the iterate of highest loss. The official code returns the clean
input for examples it does not break; returning the highest-loss point instead
changes no robust accuracy and is what adversarial training wants.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _checks, _losses, _pgd

PyTree = Any
ApplyFn = Callable[..., jax.Array]
Transform = Callable[[jax.Array, jax.Array], jax.Array]

LOSSES = ("ce", "dlr", "ce-targeted", "dlr-targeted")
_TARGETED = ("ce-targeted", "dlr-targeted")
_MIN_CLASSES = {"ce": 2, "dlr": 3, "ce-targeted": 2, "dlr-targeted": 4}
_DLR_TINY = 1e-12  # the official denominator offset


def _pick(logits: jax.Array, idx: jax.Array) -> jax.Array:
    """``logits[b, idx[b]]`` as a one-hot contraction (elementwise gradient, no scatter)."""
    return jnp.sum(jnp.where(jax.nn.one_hot(idx, logits.shape[-1], dtype=bool), logits, 0.0), axis=-1)


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of Logits Ratio, per example.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2
    >= ...`` the sorted logits. Positive exactly when the example is
    misclassified, and unchanged when all logits are shifted by a constant or
    scaled by a positive factor (up to the ``1e-12``), so its gradient does not
    vanish on over-confident models the way cross-entropy's does.

    Args:
      logits: ``(B, C)`` logits, ``C >= 3``.
      y: ``(B,)`` integer labels in ``[0, C)``.

    Returns:
      ``(B,)`` float32 losses.

    References:
      Croce & Hein, "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690.
    """
    z = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(onehot, -jnp.inf, z), axis=-1)
    top = lax.top_k(z, 3)[0]
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted Difference of Logits Ratio, per example (to be maximised).

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``: it grows as the
    target logit ``z_t`` overtakes the true logit ``z_y``; shift- and
    scale-invariant like :func:`dlr_loss`.

    Args:
      logits: ``(B, C)`` logits, ``C >= 4``.
      y: ``(B,)`` true labels.
      target: ``(B,)`` target labels.

    Returns:
      ``(B,)`` float32 losses.

    References:
      Croce & Hein, "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690.
    """
    z = logits.astype(jnp.float32)
    top = lax.top_k(z, 4)[0]
    return -(_pick(z, y) - _pick(z, target)) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


def _loss_fn(name: str) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """``loss(logits, y, target) -> (B,)`` for a name in :data:`LOSSES` (larger = more adversarial)."""
    if name == "ce":
        return lambda z, y, t: _losses.ce_loss(z, y)
    if name == "dlr":
        return lambda z, y, t: dlr_loss(z, y)
    if name == "ce-targeted":
        return lambda z, y, t: -_losses.ce_loss(z, t)
    return dlr_targeted_loss


def checkpoints(steps: int) -> tuple[int, ...]:
    """Iterations (1-based counts of steps done) after which APGD checks its step size.

    The official integer form of ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06)``: intervals of ``max(int(0.22 steps), 1)``
    iterations, each ``max(int(0.03 steps), 1)`` shorter than the one before,
    never shorter than ``max(int(0.06 steps), 1)``.

    Args:
      steps: number of iterations, ``>= 1``.

    Returns:
      The increasing checkpoint iterations ``<= steps``; for ``steps=100``:
      ``(22, 41, 57, 70, 80, 87, 93, 99)``.
    """
    steps = _checks.positive_int("steps", steps)
    k, k_min, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, w = [], k
    while w <= steps:
        out.append(w)
        k = max(k - decr, k_min)
        w += k
    return tuple(out)


def _schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(length, is_ckpt)`` per iteration index ``i`` (0-based): whether step ``i + 1`` ends a
    checkpoint interval, and that interval's length (0 elsewhere)."""
    length = np.zeros(steps, np.int32)
    prev = 0
    for w in checkpoints(steps):
        length[w - 1] = w - prev
        prev = w
    return length, length > 0


class _Config(NamedTuple):
    """Static (compile-time) options of one APGD run; hashable, so one compile per config and shape."""

    steps: int
    norm: str
    loss: str
    restarts: int
    eot_samples: int
    transform: Transform | None
    randomized: bool
    clip: tuple[float, float] | None


class _State(NamedTuple):
    """Per-example loop state of one APGD run (all arrays have leading axis B)."""

    x: jax.Array            # current iterate x_k
    x_prev: jax.Array       # x_{k-1} (momentum)
    grad: jax.Array         # gradient at x_k (or at x_best after a restart)
    loss: jax.Array         # loss at the last computed iterate, (B,)
    x_best: jax.Array       # highest-loss iterate
    grad_best: jax.Array
    loss_best: jax.Array
    x_found: jax.Array      # most recent misclassified iterate
    found: jax.Array        # (B,) bool
    step: jax.Array         # (B, 1, ..., 1) step size
    count: jax.Array        # (B,) loss increases since the last checkpoint
    loss_best_ckpt: jax.Array  # best loss at the last checkpoint
    reduced: jax.Array      # (B,) bool: step halved at the last checkpoint


def _start(key: jax.Array, x: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
    """The official random start: ``x + eps * t / ||t||`` (``t`` uniform in [-1, 1]^d for L-inf,
    standard normal for L2), before clipping."""
    axes = tuple(range(1, x.ndim))
    if norm == "linf":
        t = 2.0 * _pgd._draw(jax.random.uniform, key, x.shape) - 1.0
        scale = jnp.max(jnp.abs(t), axis=axes, keepdims=True)
    else:
        t = _pgd._draw(jax.random.normal, key, x.shape)
        scale = jnp.sqrt(jnp.sum(jnp.square(t), axis=axes, keepdims=True))
    return x + (eps * (t / jnp.maximum(scale, _pgd._TINY))).astype(x.dtype)


def _expectation(fn, key, eot_samples):
    """Mean of ``fn(k)`` over ``eot_samples`` keys folded from ``key`` (EOT), in a scan."""
    if eot_samples == 1:
        return fn(key)

    def add(acc, i):
        return jax.tree.map(jnp.add, acc, fn(jax.random.fold_in(key, i))), None

    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, key))
    total, _ = lax.scan(add, zero, jnp.arange(eot_samples))
    return jax.tree.map(lambda t: (t / eot_samples).astype(t.dtype), total)


def _run(apply_fn, params, x, y, target, key, eps, rho, cfg: _Config):
    """``restarts`` APGD runs from independent starts; per example ``(x_out, fooled, best_loss)``."""
    dtype = x.dtype
    eps = jnp.asarray(eps, dtype)
    rho = jnp.asarray(rho, jnp.float32)
    loss_fn = _loss_fn(cfg.loss)
    project = _pgd._projector(x, eps, cfg.norm, cfg.clip)
    lengths, is_ckpt = (jnp.asarray(a) for a in _schedule(cfg.steps))
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)

    def objective(xa, k):
        logits = _pgd.forward(apply_fn, params, xa, k, transform=cfg.transform, randomized=cfg.randomized)
        obj = loss_fn(logits, y, target).astype(jnp.float32)
        return jnp.sum(obj), (obj, logits.astype(jnp.float32))

    grad_fn = jax.grad(objective, has_aux=True)

    def evaluate(xa, k):
        """EOT-averaged ``(grad, loss, fooled)`` at ``xa``; fooled = argmax of the mean logits != y."""
        g, (loss, logits) = _expectation(lambda kk: grad_fn(xa, kk), k, cfg.eot_samples)
        return g, loss, jnp.argmax(logits, axis=-1) != y

    def sel(mask, a, b):
        return jnp.where(mask.reshape(bshape), a, b)

    def single(k_init, k_steps):
        x0 = project(_start(k_init, x, eps, cfg.norm))
        g0, loss0, fooled0 = evaluate(x0, jax.random.fold_in(k_steps, cfg.steps))
        s0 = _State(x=x0, x_prev=x0, grad=g0, loss=loss0, x_best=x0, grad_best=g0, loss_best=loss0,
                    x_found=x0, found=fooled0, step=jnp.broadcast_to(2.0 * eps, bshape).astype(dtype),
                    count=jnp.zeros(loss0.shape, jnp.int32), loss_best_ckpt=loss0,
                    reduced=jnp.ones(loss0.shape, bool))

        def body(i, s: _State) -> _State:
            a = jnp.where(i > 0, 0.75, 1.0).astype(dtype)
            z = project(s.x + s.step * _pgd._direction(s.grad, cfg.norm))
            x_new = project(s.x + a * (z - s.x) + (1 - a) * (s.x - s.x_prev))
            g, loss, fooled = evaluate(x_new, jax.random.fold_in(k_steps, i))
            count = s.count + (loss > s.loss).astype(jnp.int32)
            better = loss > s.loss_best
            x_best, grad_best = sel(better, x_new, s.x_best), sel(better, g, s.grad_best)
            loss_best = jnp.where(better, loss, s.loss_best)
            # Checkpoint: halve the step and go back to x_best where progress stalled.
            ckpt = is_ckpt[i]
            oscillating = count.astype(jnp.float32) <= lengths[i].astype(jnp.float32) * rho
            stalled = ~s.reduced & (s.loss_best_ckpt >= loss_best)
            reduce = ckpt & (oscillating | stalled)
            return _State(
                x=sel(reduce, x_best, x_new), x_prev=s.x, grad=sel(reduce, grad_best, g), loss=loss,
                x_best=x_best, grad_best=grad_best, loss_best=loss_best,
                x_found=sel(fooled, x_new, s.x_found), found=s.found | fooled,
                step=sel(reduce, s.step / 2, s.step),
                count=jnp.where(ckpt, 0, count),
                loss_best_ckpt=jnp.where(ckpt, loss_best, s.loss_best_ckpt),
                reduced=jnp.where(ckpt, reduce, s.reduced))

        s = lax.fori_loop(0, cfg.steps, body, s0)
        return sel(s.found, s.x_found, s.x_best), s.found, s.loss_best

    def restart(best, r):
        k_init, k_steps = jax.random.split(jax.random.fold_in(key, r))
        xr, fr, lr = single(k_init, k_steps)
        return _merge(best, (xr, fr, lr), first=r == 0), None

    if cfg.restarts == 1:
        k_init, k_steps = jax.random.split(jax.random.fold_in(key, 0))
        return single(k_init, k_steps)
    b = x.shape[0]
    init = (x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))
    out, _ = lax.scan(restart, init, jnp.arange(cfg.restarts))
    return out


def _merge(best, new, *, first=False):
    """Per example, ``new`` replaces ``best`` if it fools the model and ``best`` does not, or if
    neither/both fool it and its loss is higher (ties keep ``best``, so the first success stays)."""
    bx, bf, bl = best
    nx, nf, nl = new
    take = first | (nf & ~bf) | ((nf == bf) & ~bf & (nl > bl))
    return (jnp.where(take.reshape((-1,) + (1,) * (bx.ndim - 1)), nx, bx),
            jnp.where(take, nf, bf), jnp.where(take, nl, bl))


def _apgd(apply_fn, params, x, y, target, key, eps, rho, cfg):
    x_adv, _, _ = _run(apply_fn, params, jnp.asarray(x), y, target, key, eps, rho, cfg)
    return lax.stop_gradient(x_adv)


def _target_classes(apply_fn, params, x, y, key, cfg, n):
    """``(B, n)``: the ``k``-th highest non-true class of the (EOT-averaged) clean logits, k = 1..n."""
    def logits_fn(k):
        return _pgd.forward(apply_fn, params, x, k, transform=cfg.transform,
                            randomized=cfg.randomized).astype(jnp.float32)
    z = _expectation(logits_fn, key, cfg.eot_samples)
    z = jnp.where(jax.nn.one_hot(y, z.shape[-1], dtype=bool), -jnp.inf, z)
    return lax.top_k(z, n)[1]


def _apgd_targeted(apply_fn, params, x, y, key, eps, rho, cfg, n_targets):
    x = jnp.asarray(x)
    k_target, k_attack = jax.random.split(key)
    targets = _target_classes(apply_fn, params, x, y, k_target, cfg, n_targets)

    def one_target(best, inp):
        j, t = inp
        new = _run(apply_fn, params, x, y, t, jax.random.fold_in(k_attack, j), eps, rho, cfg)
        return _merge(best, new, first=j == 0), None

    b = x.shape[0]
    init = (x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))
    (x_adv, _, _), _ = lax.scan(one_target, init, (jnp.arange(n_targets), targets.T))
    return lax.stop_gradient(x_adv)


_apgd_jit = jax.jit(_apgd, static_argnums=(0, 8))
_apgd_targeted_jit = jax.jit(_apgd_targeted, static_argnums=(0, 7, 8))


def _check(apply_fn, params, x, y, *, key, eps, steps, norm, loss, restarts, rho, eot_samples,
           transform, randomized, clip):
    """Eager checks shared by :func:`apgd` and :func:`apgd_targeted`; returns ``(key, cfg, C)``."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x) -> logits, got {apply_fn!r}")
    key = _checks.typed_key("key", key)
    _checks.scalar("eps", eps, min=0.0)
    steps = _checks.positive_int("steps", steps)
    if norm not in _checks.NORMS:
        raise ValueError(f"norm must be one of {_checks.NORMS} for APGD; got {norm!r}")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} for APGD; got {loss!r}")
    restarts = _checks.positive_int("restarts", restarts)
    _checks.scalar("rho", rho, min=0.0)
    if not isinstance(rho, jax.core.Tracer) and float(rho) > 1.0:
        raise ValueError(f"rho must lie in [0, 1] (a fraction of successful steps), got {rho!r}")
    eot_samples = _checks.positive_int("eot_samples", eot_samples)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable transform(key, x) -> x, got {transform!r}")
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    if eot_samples > 1 and transform is None and not randomized:
        raise ValueError(f"eot_samples={eot_samples} averages over randomness, but there is none: "
                         "pass a random `transform(key, x)` or `randomized=True` for a model "
                         "called as apply_fn(params, x, key=key)")
    clip = _checks.clip_range(clip)
    _checks.inputs(x, clip)
    _checks.targets(y, batch=x.shape[0], loss="ce")
    num_classes = _checks.num_classes(apply_fn, params, x, randomized=randomized)
    if num_classes < _MIN_CLASSES[loss]:
        raise ValueError(f"loss={loss!r} needs a model with at least {_MIN_CLASSES[loss]} classes, "
                         f"got {num_classes} logits")
    _checks.label_range(apply_fn, params, x, y, randomized=randomized)
    cfg = _Config(steps=steps, norm=norm, loss=loss, restarts=restarts, eot_samples=eot_samples,
                  transform=transform, randomized=randomized, clip=clip)
    return key, cfg, num_classes


def apgd(apply_fn: ApplyFn, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
         key: jax.Array, eps: float | jax.Array, steps: int = 100, norm: str = "linf",
         loss: str = "ce", target: jax.typing.ArrayLike | None = None, restarts: int = 1,
         rho: float = 0.75, eot_samples: int = 1, transform: Transform | None = None,
         randomized: bool = False, clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """Auto-PGD: PGD with momentum and an automatic, per-example step-size schedule.

    Starts from a random point of the eps-ball with step ``2 * eps``; every
    step is a momentum step (0.75) on top of a projected (sign / normalised)
    gradient step; at checkpoints at 22%, 41%, 57%, ... of ``steps`` the step
    of an example is halved and it restarts from its best point when its loss
    increased in at most a fraction ``rho`` of the steps since the last
    checkpoint, or when neither its step nor its best loss changed since then.
    The module docstring lists where the official implementation (followed
    here) fixes details the paper leaves open.

    Per example, the result is the most recent iterate that is misclassified
    (``argmax != y``, also for the targeted losses) if there is one, else the
    iterate of highest loss; with ``restarts > 1`` the first run that
    misclassifies is kept, and if none does, the one of highest loss. Arguments are
    checked eagerly; the attack runs under ``jax.jit`` (compiled once per
    ``apply_fn``, static options and shapes; ``eps``, ``rho``, ``params`` and
    the arrays are traced), and it is pure, so it also runs inside your own
    ``jit``/``vmap``. The result carries no gradient.

    Randomness (EOT): ``transform(key, x) -> x`` is applied before the model at
    every forward pass and ``randomized=True`` declares a model called as
    ``apply_fn(params, x, key=key)``, as in :func:`jaxrob.attacks.pgd`; the
    gradient, the loss and the logits deciding success are averaged over
    ``eot_samples`` draws.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``, any JAX function.
      params: pytree of model variables.
      x: ``(B, ...)`` float inputs inside ``clip``.
      y: ``(B,)`` integer true labels.
      key: typed PRNG key (``jax.random.key``); restart ``r`` uses
        ``fold_in(key, r)``.
      eps: radius of the threat model, ``>= 0``.
      steps: iterations per restart, ``>= 1`` (AutoAttack uses 100).
      norm: ``"linf"`` or ``"l2"``.
      loss: ``"ce"`` (cross-entropy), ``"dlr"`` (:func:`dlr_loss`, needs
        ``C >= 3``), ``"ce-targeted"`` (minus the cross-entropy to ``target``)
        or ``"dlr-targeted"`` (:func:`dlr_targeted_loss`, ``C >= 4``).
      target: ``(B,)`` target classes, required by (and only allowed with) the
        targeted losses.
      restarts: independent random restarts, ``>= 1``.
      rho: the fraction of loss increases below which the step is halved.
      eot_samples: samples averaged per step (Expectation over Transformation).
      transform: optional random input transformation ``transform(key, x)``.
      randomized: if True, the model takes a ``key`` keyword argument.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``, with ``||x_adv - x|| <= eps``
      per example and values inside ``clip``.

    References:
      Croce & Hein, "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690
      (code: github.com/fra31/auto-attack).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
      >>> w = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
      >>> x, y = jnp.array([[0.6, 0.4]]), jnp.array([0])
      >>> x_adv = apgd(apply_fn, w, x, y, key=jax.random.key(0), eps=0.15, steps=10)
      >>> int(jnp.argmax(apply_fn(w, x_adv), -1)[0]), bool(jnp.max(jnp.abs(x_adv - x)) <= 0.15)
      (1, True)
    """
    key, cfg, num_classes = _check(apply_fn, params, x, y, key=key, eps=eps, steps=steps, norm=norm,
                                   loss=loss, restarts=restarts, rho=rho, eot_samples=eot_samples,
                                   transform=transform, randomized=randomized, clip=clip)
    if loss in _TARGETED:
        if target is None:
            raise ValueError(f"loss={loss!r} needs target=: an integer array of shape ({x.shape[0]},)")
        _checks.targets(target, batch=x.shape[0], loss="ce")
        if _validate.is_concrete(target):
            _validate.labels("target", target, batch=x.shape[0], num_classes=num_classes)
    elif target is not None:
        raise ValueError(f"target= is only used by the targeted losses {_TARGETED}; got loss={loss!r}")
    else:
        target = y
    f = _apgd_jit if _checks.hashable(apply_fn, cfg) else _apgd
    return f(apply_fn, params, x, y, target, key, eps, rho, cfg)


def apgd_targeted(apply_fn: ApplyFn, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                  key: jax.Array, eps: float | jax.Array, steps: int = 100, norm: str = "linf",
                  n_target_classes: int = 9, loss: str = "dlr-targeted", restarts: int = 1,
                  rho: float = 0.75, eot_samples: int = 1, transform: Transform | None = None,
                  randomized: bool = False, clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """APGD-T: targeted APGD against each of the top non-true classes in turn.

    For ``k = 1..n_target_classes`` the target of an example is the ``k``-th
    highest non-true logit at the clean input, and :func:`apgd` runs with the
    targeted DLR loss towards it. Per example the first target whose run
    misclassifies the example is kept (success means ``argmax != y``, as in
    AutoAttack; APGD-T is an untargeted evaluation with a targeted loss); if no
    target succeeds, the run of highest loss. The targets are a ``lax.scan``,
    so every example is attacked with every target; :func:`autoattack`
    instead attacks each target only on the examples still robust.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``.
      params: pytree of model variables.
      x: ``(B, ...)`` float inputs inside ``clip``.
      y: ``(B,)`` integer true labels.
      key: typed PRNG key.
      eps: radius of the threat model, ``>= 0``.
      steps: APGD iterations per target and restart.
      norm: ``"linf"`` or ``"l2"``.
      n_target_classes: number of targets, ``1 <= n <= C - 1`` (AutoAttack: 9).
      loss: ``"dlr-targeted"`` (needs ``C >= 4``) or ``"ce-targeted"``.
      restarts: restarts per target.
      rho: step-size halving threshold (see :func:`apgd`).
      eot_samples: EOT samples per step (and for the clean logits that pick the
        targets).
      transform: optional random input transformation ``transform(key, x)``.
      randomized: if True, the model takes a ``key`` keyword argument.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``, inside the eps-ball and ``clip``.

    References:
      Croce & Hein, "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn = lambda p, x: x @ p
      >>> x, y = jnp.array([[0.5, 0.4, 0.3, 0.2]]), jnp.array([0])
      >>> x_adv = apgd_targeted(apply_fn, jnp.eye(4), x, y, key=jax.random.key(0), eps=0.1,
      ...                       steps=10, n_target_classes=3)
      >>> int(jnp.argmax(x_adv @ jnp.eye(4), -1)[0]) != 0
      True
    """
    if loss not in _TARGETED:
        raise ValueError(f"loss must be one of {_TARGETED} for APGD-T; got {loss!r}")
    key, cfg, num_classes = _check(apply_fn, params, x, y, key=key, eps=eps, steps=steps, norm=norm,
                                   loss=loss, restarts=restarts, rho=rho, eot_samples=eot_samples,
                                   transform=transform, randomized=randomized, clip=clip)
    n = _checks.positive_int("n_target_classes", n_target_classes)
    if n > num_classes - 1:
        raise ValueError(f"n_target_classes must be at most C - 1 = {num_classes - 1} for a "
                         f"{num_classes}-class model, got {n}")
    f = _apgd_targeted_jit if _checks.hashable(apply_fn, cfg) else _apgd_targeted
    return f(apply_fn, params, x, y, key, eps, rho, cfg, n)
