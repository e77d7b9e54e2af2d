"""Transferability of adversarial examples between models, and TREND's ensemble attacks.

* :func:`transfer_mask` / :func:`transfer_counts` / :func:`transfer_matrix`:
  which adversarial examples crafted on a source model *transfer* to a target
  model, counted the way TREND does (below);
* :func:`fit_transfer_curve`: least-squares fit of ``N(eps) = a (1 - exp(b eps))``
  to the number of transferred examples over a sweep of eps;
* :func:`transfer_metric`: TREND's normalised transferability from the fits;
* :func:`ensemble_pgd` (and :func:`grad_sum_pgd`, :func:`sign_average_pgd`,
  :func:`sign_agreement_pgd`): L-inf PGD on an ensemble whose step direction
  combines the members' separate input gradients.

Counting (TREND's ``trans.py``): an example ``(x, y)`` with adversarial ``x'``
crafted on source ``s`` is *eligible* for target ``t`` when ``s`` classifies
``x`` correctly, ``s`` misclassifies ``x'`` and ``t`` classifies ``x``
correctly; it is *transferred* when, in addition, ``t`` misclassifies ``x'``.
The per-eps transfer rate is ``transferred / eligible`` (TREND's normalisation:
the source's successes on points the target gets right).  For ``t = s``
transferred = eligible = the source's own white-box successes.

References:
  Ravikumar, Kodge, Garg & Roy, "TREND: Transferability based Robust ENsemble
  Design", IEEE Transactions on Artificial Intelligence 2022, arXiv:2008.01524
  (code: github.com/purdue-nrl/TREND).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _checks, _losses, _pgd

PyTree = Any

#: Step-direction rules of :func:`ensemble_pgd` (TREND's D-AG, A-GD and U-GD attacks).
RULES = ("grad_sum", "sign_average", "sign_agreement")


# --------------------------------------------------------------------------- counting


def _labels(name: str, a: Any) -> jax.Array:
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class labels (take argmax of the logits first), got dtype {a.dtype}")
    return a


def transfer_mask(y: jax.typing.ArrayLike, source_clean: jax.typing.ArrayLike, source_adv: jax.typing.ArrayLike,
                  target_clean: jax.typing.ArrayLike, target_adv: jax.typing.ArrayLike
                  ) -> tuple[jax.Array, jax.Array]:
    """Per-example TREND transfer indicators from predicted labels.

    Args:
      y: ``(B,)`` true labels.
      source_clean, source_adv: ``(B,)`` source predictions on ``x`` and on ``x'`` (crafted on the source).
      target_clean, target_adv: ``(B,)`` target predictions on ``x`` and ``x'``.

    Returns:
      ``(transferred, eligible)``, ``(B,)`` bools: eligible = source right on ``x``,
      wrong on ``x'`` and target right on ``x``; transferred = eligible and target wrong on ``x'``.

    Example:
      >>> import jax.numpy as jnp
      >>> t, e = transfer_mask(jnp.array([0, 0, 0, 0]), jnp.array([0, 0, 0, 1]), jnp.array([1, 1, 0, 1]),
      ...                      jnp.array([0, 1, 0, 0]), jnp.array([2, 2, 2, 2]))
      >>> t.tolist(), e.tolist()
      ([True, False, False, False], [True, False, False, False])
    """
    arrays = [_labels(n, a) for n, a in (("y", y), ("source_clean", source_clean), ("source_adv", source_adv),
                                         ("target_clean", target_clean), ("target_adv", target_adv))]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"y and the four predictions must have the same shape, got {[a.shape for a in arrays]}")
    y, sc, sa, tc, ta = arrays
    eligible = (sc == y) & (sa != y) & (tc == y)
    return eligible & (ta != y), eligible


class TransferCounts(NamedTuple):
    """Transfer statistics between ``K`` models (rows: source, columns: target).

    Attributes:
      transferred: ``(K, K)`` int, number of transferred examples (TREND's ``num_trans_images``).
      eligible: ``(K, K)`` int, number of eligible examples (TREND's ``num_gen_imgs``).
      rate: ``(K, K)`` float, ``transferred / eligible`` (0 where nothing is eligible).
    """

    transferred: jax.Array
    eligible: jax.Array
    rate: jax.Array


def transfer_counts(y: jax.typing.ArrayLike, clean_preds: jax.typing.ArrayLike,
                    adv_preds: jax.typing.ArrayLike) -> TransferCounts:
    """TREND's transfer counts for every (source, target) pair of ``K`` models.

    Args:
      y: ``(B,)`` true labels.
      clean_preds: ``(K, B)`` predictions of every model on the clean inputs.
      adv_preds: ``(K, K, B)``; ``adv_preds[s, t]`` are target ``t``'s predictions on the
        adversarial examples crafted on source ``s``.

    Returns:
      :class:`TransferCounts` with ``(K, K)`` entries (the diagonal counts white-box successes).
    """
    y = _labels("y", y)
    clean = _labels("clean_preds", clean_preds)
    adv = _labels("adv_preds", adv_preds)
    if clean.ndim != 2 or clean.shape[1:] != y.shape or y.ndim != 1:
        raise ValueError(f"clean_preds must be (K, B) for y of shape (B,), got {clean.shape} and {y.shape}")
    k = clean.shape[0]
    if adv.shape != (k, k, y.shape[0]):
        raise ValueError(f"adv_preds must be (K, K, B) = {(k, k, y.shape[0])}, got {adv.shape}")
    src_clean = clean[:, None, :]
    src_adv = jnp.diagonal(adv, axis1=0, axis2=1).T[:, None, :]  # (K, 1, B): source on its own x'
    t, e = transfer_mask(jnp.broadcast_to(y, adv.shape), jnp.broadcast_to(src_clean, adv.shape),
                         jnp.broadcast_to(src_adv, adv.shape), jnp.broadcast_to(clean[None], adv.shape), adv)
    transferred = jnp.sum(t, axis=-1)
    eligible = jnp.sum(e, axis=-1)
    rate = jnp.where(eligible > 0, transferred / jnp.maximum(eligible, 1), 0.0)
    return TransferCounts(transferred, eligible, rate)


def _predict(apply_fn, params, x, batch_size):
    outs = [jnp.argmax(apply_fn(params, x[i:i + batch_size]), axis=-1) for i in range(0, x.shape[0], batch_size)]
    return jnp.concatenate(outs)


def transfer_matrix(models: Sequence[tuple[Callable[..., jax.Array], PyTree]], x: jax.typing.ArrayLike,
                    y: jax.typing.ArrayLike, *, key: jax.Array, eps: float,
                    attack: Callable[..., jax.Array] = _pgd.pgd, batch_size: int = 500,
                    **attack_kwargs: Any) -> TransferCounts:
    """Crafts adversarial examples on each model and counts how many transfer to each other model.

    For source ``s``: ``x'_s = attack(apply_fn_s, params_s, x, y, key=fold_in(key, s), eps=eps,
    **attack_kwargs)`` (batch by batch), then every model predicts on ``x'_s``.

    Args:
      models: ``K`` pairs ``(apply_fn, params)``; each is both a source and a target.
        Models with input quantization should attack through it with BPDA (e.g.
        ``jaxrob.quant._input.quantize_input``, whose gradient is the identity).
      x: ``(B, ...)`` clean inputs; y: ``(B,)`` labels.
      key: typed PRNG key.
      eps: attack radius.
      attack: an attack with :func:`jaxrob.attacks.pgd`'s calling convention.
      batch_size: examples per attack call.
      **attack_kwargs: e.g. ``steps=10``.

    Returns:
      :class:`TransferCounts` (``K x K``).

    References:
      Ravikumar et al., arXiv:2008.01524 (``trans.py`` in purdue-nrl/TREND).
    """
    if not models:
        raise ValueError("models must hold at least one (apply_fn, params) pair")
    for i, m in enumerate(models):
        if not (isinstance(m, (tuple, list)) and len(m) == 2 and callable(m[0])):
            raise TypeError(f"models[{i}] must be a pair (apply_fn, params), got {type(m).__name__}")
    key = _checks.typed_key("key", key)
    batch_size = _checks.positive_int("batch_size", batch_size)
    x, y = jnp.asarray(x), jnp.asarray(y)
    clean = jnp.stack([_predict(f, p, x, batch_size) for f, p in models])
    adv = []
    for s, (f, p) in enumerate(models):
        k = jax.random.fold_in(key, s)
        xs = jnp.concatenate([attack(f, p, x[i:i + batch_size], y[i:i + batch_size], key=jax.random.fold_in(k, i),
                                     eps=eps, **attack_kwargs) for i in range(0, x.shape[0], batch_size)])
        adv.append(jnp.stack([_predict(g, q, xs, batch_size) for g, q in models]))
    return transfer_counts(y, clean, jnp.stack(adv))


# --------------------------------------------------------------------------- fit over eps


class TransferFit(NamedTuple):
    """Least-squares fit ``N(eps) = a (1 - exp(b eps))``; leaves broadcast over leading axes.

    Attributes:
      a: amplitude (the saturation count when ``b < 0``).
      b: rate (``< 0`` for a saturating curve; ``> 0`` for an accelerating one, then ``a < 0``).
      sse: the residual sum of squares.
    """

    a: jax.Array
    b: jax.Array
    sse: jax.Array


def transfer_curve(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, eps: jax.typing.ArrayLike) -> jax.Array:
    """``a (1 - exp(b eps))`` (broadcasting)."""
    return jnp.asarray(a) * -jnp.expm1(jnp.asarray(b) * jnp.asarray(eps))


def _fit_one(eps, n, grid, iterations):
    def sse_a(b):
        f = -jnp.expm1(b * eps)
        ff = jnp.dot(f, f)
        a = jnp.where(ff > 0, jnp.dot(f, n) / jnp.where(ff > 0, ff, 1.0), 0.0)
        r = n - a * f
        return jnp.dot(r, r), a

    sse = jax.vmap(lambda b: sse_a(b)[0])(grid)
    i = jnp.argmin(sse)
    lo, hi = grid[jnp.maximum(i - 1, 0)], grid[jnp.minimum(i + 1, grid.shape[0] - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def golden(_, bracket):  # golden-section search of the (smooth) profile sse(b) on [lo, hi]
        lo, hi = bracket
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        left = sse_a(c)[0] < sse_a(d)[0]
        return jnp.where(left, lo, c), jnp.where(left, d, hi)

    lo, hi = lax.fori_loop(0, iterations, golden, (lo, hi))
    cands = jnp.stack([grid[i], 0.5 * (lo + hi)])
    sses, amps = jax.vmap(sse_a)(cands)
    j = jnp.argmin(sses)
    return amps[j], cands[j], sses[j]


@jax.jit
def _fit(eps, counts):
    scale = jnp.max(jnp.abs(eps))
    mags = jnp.logspace(-3.0, 3.0, 241) / scale
    grid = jnp.concatenate([-mags[::-1], mags[:150]])  # b < 0 (saturating) and b > 0 up to 1e0.75 / max eps
    flat = counts.reshape(-1, counts.shape[-1])
    a, b, sse = jax.vmap(lambda n: _fit_one(eps, n, grid, 60))(flat)
    shape = counts.shape[:-1]
    return TransferFit(a.reshape(shape), b.reshape(shape), sse.reshape(shape))


def fit_transfer_curve(eps: jax.typing.ArrayLike, counts: jax.typing.ArrayLike) -> TransferFit:
    """Fits ``N(eps) = a (1 - exp(b eps))`` to transfer counts by least squares (TREND's model).

    The fit is separable: for a fixed ``b`` the best ``a`` is the linear
    least-squares coefficient ``<N, f> / <f, f>`` with ``f = 1 - exp(b eps)``, so
    we minimise the profile ``SSE(b)`` over ``b`` alone (variable projection): a
    log-spaced grid of ``|b|`` from ``1e-3`` to ``1e3`` over ``max|eps|`` (both
    signs), then 60 golden-section steps between the best grid point's
    neighbours.  This needs no starting point, unlike the authors' SciPy
    ``curve_fit`` (Levenberg-Marquardt from ``a = 10000, b = -150``), and gives
    the same minimiser where that converges.  Runs in JAX (jit), vectorised over
    any leading axes of ``counts``.

    Args:
      eps: ``(E,)`` radii, at least 2 distinct values, not all 0.
      counts: ``(..., E)`` transferred counts (or rates) at those radii.

    Returns:
      :class:`TransferFit` with leaves of shape ``counts.shape[:-1]``.

    Raises:
      ValueError: shapes that do not match, fewer than 2 radii, or non-finite values.

    References:
      Ravikumar et al., arXiv:2008.01524 (``fit_calc_TM.py`` in purdue-nrl/TREND).

    Example:
      >>> import jax.numpy as jnp
      >>> eps = jnp.linspace(0.01, 0.1, 10)
      >>> fit = fit_transfer_curve(eps, 800.0 * (1 - jnp.exp(-30.0 * eps)))
      >>> round(float(fit.a)), round(float(fit.b))
      (800, -30)
    """
    eps = np.asarray(eps, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if eps.ndim != 1 or eps.shape[0] < 2 or len(np.unique(eps)) < 2 or not np.any(eps != 0):
        raise ValueError(f"eps must be a 1-D array of at least 2 distinct radii, not all 0, got {eps.tolist()}")
    if counts.ndim < 1 or counts.shape[-1] != eps.shape[0]:
        raise ValueError(f"counts must have shape (..., {eps.shape[0]}) (last axis: one count per eps), "
                         f"got {counts.shape}")
    if not (np.all(np.isfinite(eps)) and np.all(np.isfinite(counts))):
        raise ValueError("eps and counts must be finite")
    return _fit(jnp.asarray(eps, jnp.float32), jnp.asarray(counts, jnp.float32))


def transfer_metric(fit: TransferFit, eps: float) -> jax.Array:
    """TREND's normalised transferability ``N_st(eps) / N_ss(eps)`` from fitted curves.

    ``N_st`` is the fitted number of examples crafted on source ``s`` that
    transfer to target ``t``; ``N_ss`` the fitted number of the source's own
    white-box successes.  The authors' ``fit_calc_TM.py`` writes this ratio as
    ``a_st*(1-exp(b_st*eps))/a_ss*(1-exp(b_ss*eps))``, which Python parses as
    ``(N_st / a_ss) * (1 - exp(b_ss eps))``; we compute the ratio of the two
    fitted curves that the expression is evidently meant to be.

    Args:
      fit: a :class:`TransferFit` of ``(K, K)`` (source, target) curves.
      eps: the radius to evaluate at (TREND: 8/255 on CIFAR-10).

    Returns:
      ``(K, K)`` transferability, 1 on the diagonal (0 where the source has no successes).
    """
    a, b = jnp.asarray(fit.a), jnp.asarray(fit.b)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or b.shape != a.shape:
        raise ValueError(f"fit must hold (K, K) source x target curves, got a {a.shape} and b {b.shape}")
    _checks.scalar("eps", eps, min=0.0, min_inclusive=False)
    n = transfer_curve(a, b, eps)
    own = jnp.diagonal(n)[:, None]
    return jnp.where(own != 0, n / jnp.where(own != 0, own, 1.0), 0.0)


# --------------------------------------------------------------------------- ensemble attacks


class _Config(NamedTuple):
    steps: int
    rule: str
    init: str
    loss: Any
    clip: tuple[float, float] | None


def _per_member_logits(members, params, xs):
    """``(M, B, C)`` logits where member ``m`` sees its own copy ``xs[m]`` of the input."""
    unroll = jax.default_backend() == "cpu" if members.unroll is None else members.unroll
    outs, start = [], 0
    for f, p in zip(members.apply_fns, members.groups(params)):
        n = jax.tree.leaves(p)[0].shape[0]
        xg = xs[start:start + n]
        if unroll:
            outs.append(jnp.stack([f(jax.tree.map(lambda a, i=i: a[i], p), xg[i]) for i in range(n)]))
        else:
            outs.append(jax.vmap(f)(p, xg))
        start += n
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


def _combine(g: jax.Array, rule: str) -> jax.Array:
    """The L-inf step direction from the members' gradients ``g`` (M, B, ...)."""
    if rule == "grad_sum":
        return jnp.sign(jnp.sum(g, axis=0))
    s = jnp.sign(g)
    total = jnp.sum(s, axis=0)
    if rule == "sign_average":
        return jnp.sign(total)
    return jnp.where(jnp.abs(total) == g.shape[0], jnp.sign(total), jnp.zeros_like(total))


def _ensemble_attack(members, params, x, y, key, eps, step_size, cfg: _Config):
    x = jnp.asarray(x)
    dtype = x.dtype
    eps = jnp.asarray(eps, dtype)
    step = 2.5 * eps / cfg.steps if step_size is None else jnp.asarray(step_size, dtype)
    loss_fn = _losses.resolve(cfg.loss)
    project = _pgd._projector(x, eps, "linf", cfg.clip)
    m = members.num_members(params)

    def objective(xs):  # sum over members and examples; d/d xs[m] is member m's own gradient
        z = _per_member_logits(members, params, xs)
        return jnp.sum(jax.vmap(lambda zm: loss_fn(zm, y).astype(jnp.float32))(z))

    grad = jax.grad(objective)
    # The keys of pgd(restarts=1): the same random start for the same key.
    k_init, _, _ = jax.random.split(jax.random.fold_in(key, 0), 3)
    xa = project(_pgd._init(k_init, x, eps, jnp.asarray(0.001, dtype), "linf", cfg.init))

    def step_fn(_, xa):
        g = grad(jnp.broadcast_to(xa, (m, *xa.shape)))
        return project(xa + step * _combine(g, cfg.rule).astype(dtype))

    return lax.stop_gradient(lax.fori_loop(0, cfg.steps, step_fn, xa))


_ensemble_attack_jit = jax.jit(_ensemble_attack, static_argnums=(0, 7))


def ensemble_pgd(members: Any, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                 key: jax.Array, eps: float | jax.Array, steps: int, rule: str = "sign_agreement",
                 step_size: float | jax.Array | None = None, init: str = "uniform",
                 loss: str | Callable[[jax.Array, Any], jax.Array] = "ce",
                 clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """L-inf PGD on an ensemble, stepping along a combination of the members' own gradients.

    Every step computes each member's input gradient ``g_m`` of its own loss
    (one backward pass for all members: member ``m`` sees its own copy of the
    input) and moves ``x`` by ``step_size`` along

    * ``"grad_sum"``: ``sign(sum_m g_m)`` (TREND's D-AG, "direction of the
      average gradient"; the plain PGD on the sum of the members' losses);
    * ``"sign_average"``: ``sign(sum_m sign(g_m))`` (A-GD, "average gradient
      direction": a per-coordinate majority of the members' signs, 0 on a tie,
      exactly as the authors' code steps);
    * ``"sign_agreement"``: ``sign(g_1)`` where every member's sign agrees, 0
      elsewhere (U-GD, "unanimous gradient direction", TREND's proposed attack
      against "gradient domination" by one member),

    then projects onto the eps-ball and ``clip`` with the projection of
    :func:`jaxrob.attacks.pgd`.  The random start, default step
    (``2.5 * eps / steps``) and keys are those of ``pgd(restarts=1)``, so with
    one member (or identical members) every rule is ``pgd`` on that member.
    Members with input quantization are attacked through it with BPDA when
    their ``apply_fn`` uses ``jaxrob.quant._input.quantize_input``.

    Args:
      members: a :class:`jaxrob.ensembles.Members` (or one ``apply_fn`` for stacked params).
      params: the members' parameters (stacked; a tuple per group for several groups).
      x: ``(B, ...)`` inputs inside ``clip``; y: ``(B,)`` labels (or targets for a callable ``loss``).
      key: typed PRNG key (random start).
      eps: L-inf radius, ``>= 0``.
      steps: iterations, ``>= 1``.
      rule: ``"grad_sum"``, ``"sign_average"`` or ``"sign_agreement"``.
      step_size: step length; default ``2.5 * eps / steps``.
      init: ``"uniform"`` (in the ball), ``"zero"`` or ``"normal"`` (as in ``pgd``).
      loss: ``"ce"``, ``"cw"`` or a callable ``loss(logits, y) -> (B,)``, per member.
      clip: valid input box, or None.

    Returns:
      ``x_adv``, shape and dtype of ``x``, within eps of ``x`` (L-inf) and inside ``clip``.

    References:
      Ravikumar, Kodge, Garg & Roy, "TREND: Transferability based Robust ENsemble
      Design", arXiv:2008.01524 (``perturb_bpda_ensemble`` in purdue-nrl/TREND:
      ``avg``, ``sign_avg`` and ``sign_all``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.ensembles import stack
      >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p
      >>> params = stack([jnp.eye(4, 3), jnp.eye(4, 3)[::-1]])
      >>> x = jnp.full((2, 2, 2, 1), 0.5)
      >>> x_adv = ensemble_pgd(f, params, x, jnp.array([0, 1]), key=jax.random.key(0), eps=0.1, steps=5)
      >>> bool(jnp.max(jnp.abs(x_adv - x)) <= 0.1 + 1e-6)
      True
    """
    from jaxrob.ensembles._core import as_members
    members = as_members(members)
    key = _checks.typed_key("key", key)
    steps = _checks.positive_int("steps", steps)
    _validate.choice("rule", rule, RULES)
    _validate.choice("init", init, _checks.INITS)
    if step_size is not None:
        _checks.scalar("step_size", step_size, min=0.0, min_inclusive=False)
    _checks.scalar("eps", eps, min=0.0)
    _checks.loss_spec(loss)
    clip = _checks.clip_range(clip)
    _checks.inputs(x, clip)
    x = jnp.asarray(x)
    _checks.targets(y, batch=x.shape[0], loss=loss)
    members.groups(params)  # raises for a params/groups mismatch
    cfg = _Config(steps=steps, rule=rule, init=init, loss=loss, clip=clip)
    f = _ensemble_attack_jit if _checks.hashable(members, cfg) else _ensemble_attack
    return f(members, params, x, y, key, eps, step_size, cfg)


def grad_sum_pgd(members: Any, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                 key: jax.Array, eps: float | jax.Array, steps: int, **kwargs: Any) -> jax.Array:
    """:func:`ensemble_pgd` with ``rule="grad_sum"`` (TREND's D-AG)."""
    return ensemble_pgd(members, params, x, y, key=key, eps=eps, steps=steps, rule="grad_sum", **kwargs)


def sign_average_pgd(members: Any, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                     key: jax.Array, eps: float | jax.Array, steps: int, **kwargs: Any) -> jax.Array:
    """:func:`ensemble_pgd` with ``rule="sign_average"`` (TREND's A-GD)."""
    return ensemble_pgd(members, params, x, y, key=key, eps=eps, steps=steps, rule="sign_average", **kwargs)


def sign_agreement_pgd(members: Any, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                       key: jax.Array, eps: float | jax.Array, steps: int, **kwargs: Any) -> jax.Array:
    """:func:`ensemble_pgd` with ``rule="sign_agreement"`` (TREND's U-GD)."""
    return ensemble_pgd(members, params, x, y, key=key, eps=eps, steps=steps, rule="sign_agreement", **kwargs)
