"""BARRE: boosting algorithm for robust randomized ensembles (Dbouk & Shanbhag, ICML 2023).

BARRE builds a randomized ensemble classifier (REC) one member at a time:

1. member ``m`` starts from the parameters of member ``m - 1`` (the first from
   the model's initialisation);
2. only member ``m`` is trained; the earlier members are frozen. Each batch is
   attacked with PGD against the *whole current REC* -- the frozen members
   plus the member being trained, sampled uniformly -- maximising the
   cross-entropy of the expected softmax plus the MCE term
   (:func:`barre_loss`), and member ``m`` minimises
   ``CE(f_m(x_adv), y) + MCE(f_m(x_adv), y)``;
3. the sampling probabilities are then optimised by projected subgradient
   descent with the members' error rates under ARC as the subgradient
   (:func:`optimal_alpha`).

:func:`barre_fit` runs steps 1-2 with :func:`jaxrob.train.fit` for every member.

References:
  Dbouk & Shanbhag, "On the Robustness of Randomized Ensembles to Adversarial
  Perturbations", ICML 2023, arXiv:2302.01375; public code hsndbk4/BARRE
  (``train_barre.py``, ``attack.py``), which the details below follow.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrob import _validate
from jaxrob.attacks import _checks
from jaxrob.attacks._pgd import pgd
from jaxrob.train._fit import History, fit
from jaxrob.train._losses import Loss
from jaxrob.train._state import unpack_model

from ._core import Members, as_members, average, check_alpha, num_members, project_simplex
from ._rec import _check as _check_rec

PyTree = Any
Attack = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------- losses

def mce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example MCE term: the mean over the wrong classes of ``-log_softmax(-logits)``.

    ``mce(z, y) = 1/(C-1) * sum_{j != y} -log softmax(-z)_j``. Minimising it
    raises the true logit and lowers the wrong ones as a group: its gradient is
    ``-softmax(-z)_y < 0`` on the true logit and sums to ``+softmax(-z)_y`` over
    the wrong ones (it is invariant to adding a constant to all logits).

    Args:
      logits: ``(B, C)`` logits (or log-probabilities), ``C >= 2``.
      y: ``(B,)`` integer labels.

    Returns:
      ``(B,)`` float32 values.

    References:
      Zhang, Zhang, Wang, "Building Robust Ensembles via Margin Boosting",
      ICML 2022, arXiv:2206.03362 (the MCE loss); its use in BARRE (weight 1,
      normalised by ``C - 1``) follows hsndbk4/BARRE's ``train_barre.py``.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(mce(jnp.array([[2.0, 0.0, 0.0]]), jnp.array([0]))[0]), 4)  # log(2 + e^-2)
      0.7586
    """
    z = logits.astype(jnp.float32)
    c = z.shape[-1]
    if c < 2:
        raise ValueError(f"mce needs at least 2 classes, got logits of shape {z.shape}")
    log_q = jax.nn.log_softmax(-z, axis=-1)
    wrong = 1.0 - jax.nn.one_hot(y, c, dtype=jnp.float32)
    return -jnp.sum(log_q * wrong, axis=-1) / (c - 1)


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)


@dataclasses.dataclass(frozen=True)
class _CeMce:
    """``CE(z, y) + weight * MCE(z, y)`` per example; hashable, so PGD compiles once for it."""

    weight: float

    def __call__(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        out = _ce(logits, y)
        return out if self.weight == 0.0 else out + self.weight * mce(logits, y)


def _append_member(frozen: PyTree | None, current: PyTree) -> PyTree:
    """Stacked variables of the frozen members followed by ``current`` (member axis first)."""
    if frozen is None:
        return jax.tree.map(lambda a: jnp.asarray(a)[None], current)
    if jax.tree.structure(frozen) != jax.tree.structure(current):
        raise ValueError("the frozen members' variables must have the pytree structure of the trained "
                         f"model's apply_fn argument; got {jax.tree.structure(frozen)} for the frozen members "
                         f"and {jax.tree.structure(current)} for the model")
    return jax.tree.map(lambda f, c: jnp.concatenate([f, jnp.asarray(c, f.dtype)[None]], axis=0), frozen, current)


def rec_adversary(apply_fn: Callable, frozen: PyTree | None, current: PyTree, x: jax.Array, y: jax.Array, *,
                  key: jax.Array, eps: float | jax.Array, steps: int = 10, step_size: float | None = None,
                  alpha: jax.typing.ArrayLike | None = None, mce_weight: float = 1.0, norm: str = "linf",
                  init: str = "uniform") -> jax.Array:
    """BARRE's training attack: PGD against the REC of the frozen members and the current one.

    Maximises ``CE(z, y) + mce_weight * MCE(z, y)`` of ``z = log(sum_i alpha_i
    softmax(f_i(x')))`` (the log of the expected softmax, see
    :func:`jaxrob.ensembles.average` with ``over="probs"``) over the eps-ball.

    Args:
      apply_fn: the members' ``apply_fn(variables, x) -> (B, C)`` (eval mode).
      frozen: stacked variables of the ``m - 1`` frozen members (leading member
        axis), or ``None`` when the current member is the first.
      current: the current member's variables (the ``apply_fn`` argument).
      x: ``(B, ...)`` inputs in [0, 1]; y: ``(B,)`` labels.
      key: typed PRNG key (the random start).
      eps, steps, step_size, norm, init: as in :func:`jaxrob.attacks.pgd`
        (``step_size=None`` is ``2.5 * eps / steps``: ``2/255`` for the paper's
        ``eps = 8/255``, 10 steps).
      alpha: ``(m,)`` sampling probabilities of the REC; ``None`` is uniform, as
        during BARRE's training.
      mce_weight: weight of the MCE term in the attack's objective (the public
        code uses the training loss's ``other_weight``, 1).

    Returns:
      ``x_adv`` of the shape of ``x`` (no gradient flows through it).

    References:
      Dbouk & Shanbhag, ICML 2023, arXiv:2302.01375 (``apgd_attack`` in
      hsndbk4/BARRE's ``attack.py``; it starts uniformly in half the ball, here
      PGD's uniform start in the whole ball is used).
    """
    stacked = _append_member(frozen, jax.lax.stop_gradient(current))
    m = num_members(stacked)
    alpha = jnp.full((m,), 1.0 / m, jnp.float32) if alpha is None else check_alpha(alpha, m)
    rec = average(Members(apply_fn), over="probs", weighted=True)
    x_adv = pgd(rec, (stacked, alpha), x, y, key=key, eps=eps, steps=steps, step_size=step_size, norm=norm,
                init=init, loss=_CeMce(float(mce_weight)))
    return jax.lax.stop_gradient(x_adv)


def barre_loss(frozen: PyTree | None, *, eps: float, steps: int = 10, step_size: float | None = None,
               mce_weight: float = 1.0, alpha: jax.typing.ArrayLike | None = None, norm: str = "linf",
               init: str = "uniform") -> Loss:
    """The loss of one BARRE boosting round, as a :class:`jaxrob.train.Loss`.

    Per batch: ``x_adv = rec_adversary(...)`` against the REC formed by the
    ``frozen`` members and the member being trained (eval mode, current
    parameters, treated as constants), then ``loss = mean CE(f_m(x_adv), y) +
    mce_weight * mean MCE(f_m(x_adv), y)`` with a train-mode forward pass of
    the trained member only. The frozen members' stacked variables are
    captured as constants of the loss: gradients reach the trained member
    alone. With ``frozen=None`` (the first member) this is PGD adversarial
    training with the MCE term.

    Metrics: ``loss``, ``accuracy`` (of the trained member on ``x_adv``),
    ``ce``, ``mce``.

    Args:
      frozen: stacked variables of the previous members in the format the
        model's ``apply_fn`` takes (``{"params", "batch_stats"}`` with a leading
        member axis for a jaxrob model; see :func:`jaxrob.ensembles.stack`), or
        ``None``.
      eps: radius, ``>= 0`` (``8/255`` on CIFAR-10).
      steps: PGD iterations, ``>= 1`` (10).
      step_size: PGD step; ``None`` is ``2.5 * eps / steps`` (``2/255``).
      mce_weight: weight of the MCE term, ``>= 0``, in both the attack and
        the training loss (``--other_weight 1`` in the public code).
      alpha: sampling probabilities of the ``m`` current members; ``None``
        (uniform) is BARRE's choice.
      norm: ``"linf"`` or ``"l2"``.
      init: PGD start, ``"uniform"``, ``"normal"`` or ``"zero"``.

    Returns:
      A :class:`jaxrob.train.Loss` named ``"barre"``.

    References:
      Dbouk & Shanbhag, "On the Robustness of Randomized Ensembles to
      Adversarial Perturbations", ICML 2023, arXiv:2302.01375 (Algorithm 2 and
      hsndbk4/BARRE's ``train_barre.py``).

    Example:
      >>> from jaxrob.ensembles._barre import barre_loss
      >>> barre_loss(None, eps=8 / 255).config["members"]
      1
    """
    eps = float(_validate.number("eps", eps, min=0.0))
    steps = _validate.number("steps", steps, min=1, integer=True)
    if step_size is not None:
        step_size = float(_validate.number("step_size", step_size, min=0.0, min_inclusive=False))
    mce_weight = float(_validate.number("mce_weight", mce_weight, min=0.0))
    _validate.choice("norm", norm, _checks.NORMS)
    _validate.choice("init", init, _checks.INITS)
    if frozen is not None:
        if not jax.tree.leaves(frozen):
            raise ValueError("frozen must be None (no previous member) or stacked member variables; "
                             "got a pytree without arrays")
        frozen = jax.tree.map(jnp.asarray, frozen)
    m = 1 if frozen is None else num_members(frozen) + 1
    if alpha is not None:
        alpha = check_alpha(alpha, m)

    def fn(model, params, batch_stats, x, y, key):
        k_fwd, k_attack, _ = jax.random.split(key, 3)
        current = model.eval_variables(params, batch_stats)
        x_adv = rec_adversary(model.apply_fn, frozen, current, x, y, key=k_attack, eps=eps, steps=steps,
                              step_size=step_size, alpha=alpha, mce_weight=mce_weight, norm=norm, init=init)
        logits, new_stats = model.train_logits(params, batch_stats, x_adv, key=k_fwd)
        ce = jnp.mean(_ce(logits, y))
        mc = jnp.mean(mce(logits, y))
        loss = ce + mce_weight * mc
        acc = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        return loss, (new_stats, {"loss": loss, "accuracy": acc, "ce": ce, "mce": mc})

    hp = (("eps", eps), ("steps", steps), ("step_size", step_size), ("mce_weight", mce_weight), ("norm", norm),
          ("init", init), ("members", m),
          ("alpha", None if alpha is None else [round(float(a), 8) for a in np.asarray(alpha)]))
    return Loss("barre", hp, fn)


# --------------------------------------------------------------------------------------------- training

def _variables(state, foreign: bool) -> PyTree:
    return state.params if foreign else state.variables()


def barre_fit(model: Any, train_data: Any, *, num_members: int, epochs: int, batch_size: int, key: jax.Array,
              optimizer: Mapping[str, Any] | optax.GradientTransformation, eps: float, steps: int = 10,
              step_size: float | None = None, mce_weight: float = 1.0, norm: str = "linf", seed: int = 0,
              checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
              mesh: Any = None, config: Mapping[str, Any] | None = None) -> tuple[PyTree, list[History]]:
    """Trains a BARRE randomized ensemble, one member after the other.

    Member ``m`` (``m = 0 .. num_members - 1``) starts from the trained
    variables of member ``m - 1`` (member 0 from ``model``'s), gets a fresh
    optimizer state, and is trained by :func:`jaxrob.train.fit` with
    :func:`barre_loss` against the frozen members ``0 .. m - 1`` and uniform
    sampling probabilities, with key ``fold_in(key, m)`` and data seed
    ``seed + m``. The sampling probabilities are optimised afterwards with
    :func:`optimal_alpha`.

    Differences from the public code (hsndbk4/BARRE): it also re-optimises the
    sampling probabilities during the second half of training from the fourth
    member on (so later PGD examples use them), and keeps each member's epoch
    with the best ARC accuracy on the test set; here every member is trained
    for ``epochs`` epochs against the uniform REC and the last epoch is kept.

    Args:
      model: a :class:`jaxrob.models.Model` or ``(apply_fn, params)``.
      train_data: a :class:`jaxrob.data.Dataset`.
      num_members: ensemble size ``M >= 1``.
      epochs, batch_size, optimizer, mesh, progress: per member, as in
        :func:`jaxrob.train.fit` (the paper: 100 epochs, SGD 0.1, momentum 0.9,
        weight decay 5e-4, learning rate x0.1 at 50% and 75% of training).
      key: typed PRNG key.
      eps, steps, step_size, mce_weight, norm: as in :func:`barre_loss`.
      seed: data-order seed of member 0, ``>= 0``.
      checkpoint_dir: if given, member ``m`` checkpoints into
        ``checkpoint_dir/member_m`` (see :func:`jaxrob.train.fit`).
      resume: resume every member from its checkpoints (finished members are
        restored without training).
      config: extra JSON description added to every member's checkpoint fingerprint.

    Returns:
      ``(variables, histories)``: the members' variables stacked on a leading
      axis of size ``M`` in the format of ``apply_fn``'s first argument (so
      ``Members(model.apply_fn)(variables, x)`` evaluates them all), and the
      :func:`jaxrob.train.fit` history of every member.

    References:
      Dbouk & Shanbhag, "On the Robustness of Randomized Ensembles to
      Adversarial Perturbations", ICML 2023, arXiv:2302.01375.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob import data
      >>> from jaxrob.ensembles._barre import barre_fit
      >>> full = data.load("mnist10k", split="train")
      >>> ds = data.from_arrays(full.images[:64], full.labels[:64], num_classes=10)
      >>> linear = lambda p, x: x.reshape(len(x), -1) @ p
      >>> stacked, hist = barre_fit((linear, jnp.zeros((784, 10))), ds, num_members=2, epochs=1,
      ...                           batch_size=32, key=jax.random.key(0), eps=0.1, steps=2,
      ...                           optimizer={"name": "sgd", "learning_rate": 0.1}, progress=False)
      >>> stacked.shape, len(hist)
      ((2, 784, 10), 2)
    """
    fns, params, batch_stats = unpack_model(model)
    foreign = not hasattr(model, "train_apply")
    num_members_ = _checks.positive_int("num_members", num_members)
    seed = _validate.number("seed", seed, min=0, integer=True)
    key = _validate.prng_key("key", key)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    # Fail on bad loss arguments before any training.
    barre_loss(None, eps=eps, steps=steps, step_size=step_size, mce_weight=mce_weight, norm=norm)

    frozen = None
    histories: list[History] = []
    current = model
    for m in range(num_members_):
        loss = barre_loss(frozen, eps=eps, steps=steps, step_size=step_size, mce_weight=mce_weight, norm=norm)
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"member_{m}"
        state, history = fit(current, train_data, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                             key=jax.random.fold_in(key, m), loss=loss, seed=seed + m, checkpoint_dir=ckpt,
                             resume=resume, progress=progress, mesh=mesh,
                             config={**dict(config or {}), "barre_member": m, "barre_members": num_members_})
        histories.append(history)
        variables = _variables(state, foreign)
        frozen = jax.tree.map(lambda a: jnp.asarray(a)[None], variables) if frozen is None else \
            _append_member(frozen, variables)
        # The next member starts from this one.
        current = (fns.apply_fn, state.params) if foreign else dataclasses.replace(model, variables=variables)
    return frozen, histories


# --------------------------------------------------------------------------------------------- alpha

class AlphaSearch(NamedTuple):
    """Result of :func:`optimal_alpha`.

    Attributes:
      alpha: ``(M,)`` the best sampling probabilities found.
      robust_error: the REC's expected error ``alpha . e(alpha)`` at ``alpha``
        under the attack (on the examples given).
      alphas: ``(T, M)`` the iterates ``alpha_t`` that were evaluated.
      member_errors: ``(T, M)`` the per-member error rates ``e(alpha_t)`` on the
        adversarial examples against the REC with ``alpha_t``.
      robust_errors: ``(T,)`` ``alpha_t . e(alpha_t)``.
    """

    alpha: jax.Array
    robust_error: jax.Array
    alphas: jax.Array
    member_errors: jax.Array
    robust_errors: jax.Array


@dataclasses.dataclass(frozen=True)
class _Arc:
    """The default attack of :func:`optimal_alpha`: ARC as in hsndbk4/BARRE's OSP step."""

    members: Members
    eps: float
    steps: int
    step_size: float
    top_g: int | None

    def __call__(self, params, alpha, x, y, key):
        from jaxrob.attacks._arc import arc  # written alongside; imported when first used
        return arc(self.members, params, x, y, alpha=alpha, eps=self.eps, steps=self.steps,
                   step_size=self.step_size, top_g=self.top_g)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _search(members, attack, iterations, params, xb, yb, valid, alpha0, lr, key):
    nb = xb.shape[0]
    n = jnp.sum(valid)

    def member_errors(alpha, k):
        def one(i):
            x_adv = attack(params, alpha, xb[i], yb[i], jax.random.fold_in(k, i))
            wrong = (jnp.argmax(members(params, x_adv), axis=-1) != yb[i][None, :]) & valid[i][None, :]
            return jnp.sum(wrong, axis=1).astype(jnp.float32)  # (M,)

        return jnp.sum(jax.lax.map(one, jnp.arange(nb)), axis=0) / n

    def step(carry, t):
        alpha, best, best_err = carry
        e = member_errors(alpha, jax.random.fold_in(key, t))
        eta = jnp.dot(alpha, e)
        better = eta <= best_err  # ties go to the later iterate, as in the public code
        best = jnp.where(better, alpha, best)
        best_err = jnp.where(better, eta, best_err)
        nxt = project_simplex(alpha - lr / (t + 1.0) * e)
        return (nxt, best, best_err), (alpha, e, eta)

    init = (alpha0, alpha0, jnp.asarray(jnp.inf, jnp.float32))
    (_, best, best_err), (alphas, errs, etas) = jax.lax.scan(step, init, jnp.arange(iterations))
    return AlphaSearch(best, best_err, alphas, errs, etas)


def optimal_alpha(members: Members | Callable, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike,
                  *, key: jax.Array, eps: float | None = None, attack: Attack | None = None,
                  iterations: int = 10, lr: float = 2.0, alpha: jax.typing.ArrayLike | None = None,
                  batch_size: int = 256, arc_steps: int = 10, arc_top_g: int | None = 2) -> AlphaSearch:
    """Optimal sampling probabilities of a REC by projected subgradient descent (BARRE's OSP).

    The REC's robust error ``eta(alpha) = sum_i alpha_i e_i(alpha)``, with
    ``e_i(alpha)`` the error rate of member ``i`` on adversarial examples
    crafted against the REC with probabilities ``alpha``, is minimised by

        alpha_{t+1} = project_simplex(alpha_t - lr / (t + 1) * e(alpha_t))

    starting from ``alpha`` (default uniform), ``e(alpha_t)`` serving as the
    subgradient. After ``iterations`` evaluations the iterate with the lowest
    ``eta`` (the later one on ties) is returned, so the result is never worse
    than the start on these examples. Everything runs in one jitted
    ``lax.scan`` over iterations and ``lax.map`` over batches (the last batch
    padded and masked).

    Args:
      members: a :class:`jaxrob.ensembles.Members` (or one ``apply_fn``).
      params: the members' stacked variables.
      x: ``(N, ...)`` inputs (the public code uses 2,048 or 4,096 training examples).
      y: ``(N,)`` labels.
      key: typed PRNG key; iteration ``t``, batch ``b`` passes
        ``fold_in(fold_in(key, t), b)`` to the attack.
      eps: radius of the default attack, ARC with ``arc_steps`` steps of size
        ``eps`` and ``top_g=arc_top_g`` (the settings of the public code's
        OSP). Give either ``eps`` or ``attack``.
      attack: ``attack(params, alpha, x, y, key) -> x_adv`` for one batch, a
        pure function (it runs under ``jit``), e.g. ``lambda p, a, x, y, k:
        rec_pgd(members, p, x, y, alpha=a, key=k, eps=8/255, steps=20)``. It
        is a static argument: reuse one object to reuse the compilation.
      iterations: number of evaluated iterates ``T >= 1`` (10).
      lr: initial step ``> 0``; step ``t`` is ``lr / (t + 1)``. The public
        code uses 10 times the current training learning rate when it runs
        OSP during training and 2 when it runs it after training.
      alpha: ``(M,)`` starting probabilities; ``None`` is uniform.
      batch_size: examples per attack call.
      arc_steps, arc_top_g: options of the default ARC attack.

    Returns:
      An :class:`AlphaSearch` (``alpha``, ``robust_error`` and the iterates).

    References:
      Dbouk & Shanbhag, "On the Robustness of Randomized Ensembles to
      Adversarial Perturbations", ICML 2023, arXiv:2302.01375 (the OSP
      algorithm; ``osp_iter`` and its loop in hsndbk4/BARRE's
      ``train_barre.py`` / ``eval_robustness.py``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.ensembles import stack
      >>> from jaxrob.ensembles._barre import optimal_alpha
      >>> linear = lambda p, x: x @ p
      >>> params = stack([jnp.eye(2), jnp.eye(2)[::-1]])  # member 1 is always wrong on these labels
      >>> x, y = jnp.eye(2), jnp.array([0, 1])
      >>> res = optimal_alpha(linear, params, x, y, key=jax.random.key(0),
      ...                     attack=lambda p, a, x, y, k: x, iterations=3)
      >>> res.alpha.tolist(), float(res.robust_error)
      ([1.0, 0.0], 0.0)
    """
    key = _checks.typed_key("key", key)
    if (eps is None) == (attack is None):
        raise TypeError("optimal_alpha takes either eps (for the default ARC attack) or attack(params, alpha, "
                        "x, y, key) -> x_adv, not both and not neither")
    members = as_members(members)
    m = members.num_members(params)
    alpha0 = jnp.full((m,), 1.0 / m, jnp.float32) if alpha is None else alpha
    members, alpha0, bs = _check_rec(members, params, x, y, alpha0, batch_size)
    iterations = _checks.positive_int("iterations", iterations)
    lr = float(_validate.number("lr", lr, min=0.0, min_inclusive=False))
    if attack is None:
        eps = float(_validate.number("eps", eps, min=0.0))
        arc_steps = _checks.positive_int("arc_steps", arc_steps)
        if arc_top_g is not None:
            arc_top_g = _checks.positive_int("arc_top_g", arc_top_g)
        attack = _Arc(members, eps, arc_steps, eps, arc_top_g)
    elif not callable(attack):
        raise TypeError(f"attack must be a callable attack(params, alpha, x, y, key) -> x_adv, got {attack!r}")
    if not _checks.hashable(attack):
        raise TypeError("attack must be hashable (a function or a frozen dataclass): it is a static argument")

    x = jnp.asarray(x)
    y = jnp.asarray(y)
    n = x.shape[0]
    nb = math.ceil(n / bs)
    pad = nb * bs - n
    valid = jnp.arange(nb * bs) < n
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        y = jnp.concatenate([y, jnp.repeat(y[-1:], pad, axis=0)])
    xb = x.reshape((nb, bs) + x.shape[1:])
    yb = y.reshape(nb, bs)
    return _search(members, attack, iterations, params, xb, yb, valid.reshape(nb, bs), alpha0,
                   jnp.float32(lr), key)
