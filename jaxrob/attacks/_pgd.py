"""Projected gradient descent (PGD) and FGSM, sharing one attack loop.

The loop is ``_attack``: a random (or zero) start in the eps-ball, ``steps``
iterations of ``x <- Proj(x + step_size * direction(grad))`` under
``lax.fori_loop``, and ``restarts`` independent runs under ``lax.scan`` that
keep the worst case per example. FGSM is the same loop with one step of size
``eps`` from ``x`` itself.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxrob import _validate

from . import _checks, _losses

PyTree = Any
ApplyFn = Callable[..., jax.Array]
Transform = Callable[[jax.Array, jax.Array], jax.Array]

_TINY = 1e-12  # floor for L2 norms: a zero gradient or zero perturbation stays zero, never NaN


class _Config(NamedTuple):
    """Static (compile-time) options of one attack; hashable, so one compile per config and shape."""

    steps: int
    norm: str
    init: str
    restarts: int
    loss: Any
    targeted: bool
    eot_samples: int
    transform: Transform | None
    randomized: bool
    clip: tuple[float, float] | None
    has_labels: bool


def forward(apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array, *,
            transform: Transform | None, randomized: bool) -> jax.Array:
    """The attacked pipeline: ``apply_fn(params, transform(k1, x)[, key=k2])``."""
    if transform is not None:
        key, k_t = jax.random.split(key)
        x = transform(k_t, x)
    if randomized:
        return apply_fn(params, x, key=key)
    return apply_fn(params, x)


def _l2(v: jax.Array) -> jax.Array:
    """Per-example L2 norm of a ``(B, ...)`` array, shaped ``(B, 1, ..., 1)``, in float32."""
    axes = tuple(range(1, v.ndim))
    return jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=axes, keepdims=True))


def _projector(x: jax.Array, eps: jax.Array, norm: str, clip: tuple[float, float] | None):
    """Returns ``proj(x_adv)``: onto the eps-ball around ``x``, then into the ``clip`` box."""
    if norm == "linf":
        # Ball and box are both boxes, so their intersection is one precomputed box.
        lo, hi = x - eps, x + eps
        if clip is not None:
            lo, hi = jnp.maximum(lo, clip[0]), jnp.minimum(hi, clip[1])
        return lambda xa: jnp.clip(xa, lo, hi)

    def project_l2(xa):
        d = xa - x
        d = d * jnp.minimum(1.0, eps / jnp.maximum(_l2(d), _TINY)).astype(d.dtype)
        xa = x + d
        # x is inside the box, so clipping only shrinks |d| coordinatewise: still in the ball.
        return xa if clip is None else jnp.clip(xa, clip[0], clip[1])

    return project_l2


def _direction(g: jax.Array, norm: str) -> jax.Array:
    """Steepest-ascent direction for a unit step: sign (L-inf) or normalised gradient (L2)."""
    if norm == "linf":
        return jnp.sign(g)
    return (g.astype(jnp.float32) / jnp.maximum(_l2(g), _TINY)).astype(g.dtype)


def _draw(sampler, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Samples a flat vector and reshapes it: the same distribution, but XLA:CPU compiles a
    rank-1 threefry several times faster than a rank-4 one."""
    return sampler(key, (math.prod(shape),), jnp.float32).reshape(shape)


def _init(key: jax.Array, x: jax.Array, eps: jax.Array, init_scale: jax.Array, norm: str,
          init: str) -> jax.Array:
    """Starting point (before projection): uniform in the eps-ball, x + init_scale*N(0, I), or x."""
    if init == "zero":
        return x
    if init == "normal":
        return x + (init_scale * _draw(jax.random.normal, key, x.shape)).astype(x.dtype)
    if norm == "linf":
        return x + (2.0 * _draw(jax.random.uniform, key, x.shape) - 1.0).astype(x.dtype) * eps
    # Uniform in the L2 ball: a uniform direction, radius eps * u^(1/d).
    k_dir, k_rad = jax.random.split(key)
    d = math.prod(x.shape[1:])
    z = _draw(jax.random.normal, k_dir, x.shape)
    z = z / jnp.maximum(_l2(z), _TINY)
    u = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    r = jnp.exp(jnp.log(u) / d)
    return x + (z * r).astype(x.dtype) * eps


def _attack(apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: PyTree, key: jax.Array,
            eps: jax.Array, step_size: jax.Array | None, init_scale: jax.Array,
            cfg: _Config) -> jax.Array:
    """The one PGD loop (arguments already validated)."""
    x = jnp.asarray(x)
    dtype = x.dtype
    eps = jnp.asarray(eps, dtype)
    step = 2.5 * eps / cfg.steps if step_size is None else jnp.asarray(step_size, dtype)
    loss_fn = _losses.resolve(cfg.loss)
    sign = -1.0 if cfg.targeted else 1.0
    project = _projector(x, eps, cfg.norm, cfg.clip)

    def objective(xa, k):
        logits = forward(apply_fn, params, xa, k, transform=cfg.transform,
                         randomized=cfg.randomized)
        obj = sign * loss_fn(logits, y).astype(jnp.float32)
        return jnp.sum(obj), (obj, logits)

    grad_fn = jax.grad(objective, has_aux=True)

    def expectation(fn, k):
        """E over the attack's randomness (EOT), by ``eot_samples`` draws in a scan."""
        if cfg.eot_samples == 1:
            return fn(k)
        def add(acc, i):
            return jax.tree.map(jnp.add, acc, fn(jax.random.fold_in(k, i))), None
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, k))
        total, _ = lax.scan(add, zero, jnp.arange(cfg.eot_samples))
        return jax.tree.map(lambda t: (t / cfg.eot_samples).astype(t.dtype), total)

    def run(k_init, k_steps):
        xa = project(_init(k_init, x, eps, init_scale, cfg.norm, cfg.init))

        def step_fn(i, xa):
            g, _ = expectation(lambda k: grad_fn(xa, k), jax.random.fold_in(k_steps, i))
            return project(xa + step * _direction(g, cfg.norm))

        return lax.fori_loop(0, cfg.steps, step_fn, xa)

    if cfg.restarts == 1:
        k_init, k_steps, _ = jax.random.split(jax.random.fold_in(key, 0), 3)
        return lax.stop_gradient(run(k_init, k_steps))

    def score(xa, k):
        _, (obj, logits) = expectation(lambda kk: objective(xa, kk), k)
        if not cfg.has_labels:
            return obj, jnp.zeros(obj.shape, bool)
        pred = jnp.argmax(logits, axis=-1)
        return obj, (pred == y) if cfg.targeted else (pred != y)

    def restart(best, r):
        best_x, best_success, best_obj = best
        k_init, k_steps, k_eval = jax.random.split(jax.random.fold_in(key, r), 3)
        xa = run(k_init, k_steps)
        obj, success = score(xa, k_eval)
        # Broken by any restart beats never broken; otherwise the highest loss wins.
        better = ((r == 0) | (success & ~best_success)
                  | ((success == best_success) & (obj > best_obj)))
        best_x = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), xa, best_x)
        return (best_x, jnp.where(better, success, best_success),
                jnp.where(better, obj, best_obj)), None

    b = x.shape[0]
    best0 = (x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))
    (x_adv, _, _), _ = lax.scan(restart, best0, jnp.arange(cfg.restarts))
    return lax.stop_gradient(x_adv)


_attack_jit = jax.jit(_attack, static_argnums=(0, 8))


def _run(apply_fn, params, x, y, key, eps, step_size, init_scale, cfg):
    """Runs the attack jitted (cached per apply_fn, config and shapes) when the static parts hash."""
    f = _attack_jit if _checks.hashable(apply_fn, cfg) else _attack
    return f(apply_fn, params, x, y, key, eps, step_size, init_scale, cfg)


def _common_checks(apply_fn, params, x, y, *, eps, norm, targeted, loss, clip, randomized):
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x) -> logits, got {apply_fn!r}")
    _checks.scalar("eps", eps, min=0.0)
    _validate.choice("norm", norm, _checks.NORMS)
    for name, flag in (("targeted", targeted), ("randomized", randomized)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    _checks.loss_spec(loss)
    clip = _checks.clip_range(clip)
    _checks.inputs(x, clip)
    batch = x.shape[0]
    _checks.targets(y, batch=batch, loss=loss)
    if isinstance(loss, str):
        _checks.label_range(apply_fn, params, x, y, randomized=randomized)
    return clip, _checks.is_label_array(y, batch)


def pgd(apply_fn: ApplyFn, params: PyTree, x: jax.typing.ArrayLike, y: PyTree, *,
        key: jax.Array, eps: float | jax.Array, steps: int, step_size: float | jax.Array | None = None,
        norm: str = "linf", init: str = "uniform", init_scale: float = 0.001, restarts: int = 1,
        targeted: bool = False, loss: str | Callable[[jax.Array, PyTree], jax.Array] = "ce",
        eot_samples: int = 1, transform: Transform | None = None, randomized: bool = False,
        clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """Projected gradient descent attack (untargeted or targeted, L-inf or L2).

    Each step moves ``x_adv`` by ``step_size`` along the sign of the gradient of
    the loss (L-inf) or the per-example normalised gradient (L2), then projects
    onto the eps-ball around ``x`` and into the ``clip`` box. Arguments are
    checked eagerly; the loop runs under ``jax.jit`` (compiled once per
    ``apply_fn``, static options and shapes; ``eps``, ``step_size`` and ``params``
    are traced). ``pgd`` is pure, so it also runs inside your own ``jit``/``vmap``
    (e.g. in an adversarial-training step). The result carries no gradient.

    Restarts: ``restarts`` runs from independent random starts (keys
    ``fold_in(key, r)``; restart 0 is the ``restarts=1`` attack); per example,
    a run that fools the model (misclassified, or classified as the target when
    ``targeted``) beats one that does not, and otherwise the highest loss wins.
    When ``y`` is not an integer label array (a callable ``loss`` with soft
    targets) only the loss is compared. Each restart's final point costs one
    more forward pass (``eot_samples`` of them with EOT, scored by the averaged
    loss and the argmax of the averaged logits); ``restarts=1`` skips it.

    Randomness (EOT): ``transform(key, x) -> x`` is a random input
    transformation applied before the model at every forward pass, and
    ``randomized=True`` declares a stochastic model called as
    ``apply_fn(params, x, key=key)``. The gradient of each step is averaged over
    ``eot_samples`` fresh draws (``eot_samples > 1`` needs one of the two).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``, any JAX function.
      params: pytree of model variables (e.g. ``Model.variables``).
      x: ``(B, ...)`` float inputs inside ``clip``.
      y: ``(B,)`` integer labels (true labels, or targets if ``targeted``); for
        a callable ``loss``, any pytree of per-example targets.
      key: typed PRNG key (``jax.random.key``).
      eps: radius of the threat model, ``>= 0``; ``eps=0`` returns ``x``.
      steps: number of gradient steps, ``>= 1``.
      step_size: step length; default ``2.5 * eps / steps``.
      norm: ``"linf"`` or ``"l2"`` (per example, over all non-batch axes).
      init: ``"uniform"`` (uniform in the eps-ball), ``"normal"``
        (``x + init_scale * N(0, I)``, the TRADES start) or ``"zero"`` (``x``).
      init_scale: standard deviation of the ``"normal"`` start.
      restarts: independent random restarts, ``>= 1``.
      targeted: if True, push the prediction towards the labels ``y``.
      loss: ``"ce"`` (cross-entropy), ``"cw"`` (margin ``max_{j!=y} z_j - z_y``)
        or a callable ``loss(logits, y) -> (B,)`` to maximise (minimised when
        ``targeted``).
      eot_samples: gradient samples averaged per step (Expectation over
        Transformation), ``>= 1``.
      transform: optional random input transformation ``transform(key, x)``.
      randomized: if True, the model takes a ``key`` keyword argument.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``, with
      ``||x_adv - x|| <= eps`` per example and values inside ``clip``.

    References:
      Madry et al., "Towards Deep Learning Models Resistant to Adversarial
      Attacks", ICLR 2018, arXiv:1706.06083. Athalye et al., "Obfuscated
      Gradients Give a False Sense of Security", ICML 2018, arXiv:1802.00420.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.ones((4, 3)) * jnp.arange(3.0)
      >>> apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
      >>> x = jnp.full((2, 2, 2, 1), 0.5)
      >>> x_adv = pgd(apply_fn, w, x, jnp.array([2, 2]), key=jax.random.key(0),
      ...             eps=0.1, steps=10)
      >>> bool(jnp.max(jnp.abs(x_adv - x)) <= 0.1 + 1e-6)
      True
    """
    key = _checks.typed_key("key", key)
    steps = _checks.positive_int("steps", steps)
    if step_size is not None:
        _checks.scalar("step_size", step_size, min=0.0, min_inclusive=False)
    _validate.choice("init", init, _checks.INITS)
    _checks.scalar("init_scale", init_scale, min=0.0, min_inclusive=False)
    restarts = _checks.positive_int("restarts", restarts)
    eot_samples = _checks.positive_int("eot_samples", eot_samples)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable transform(key, x) -> x, got {transform!r}")
    if eot_samples > 1 and transform is None and not randomized:
        raise ValueError(f"eot_samples={eot_samples} averages over randomness, but there is none: "
                         "pass a random `transform(key, x)` or `randomized=True` for a model "
                         "called as apply_fn(params, x, key=key)")
    clip, has_labels = _common_checks(apply_fn, params, x, y, eps=eps, norm=norm, targeted=targeted,
                                      loss=loss, clip=clip, randomized=randomized)
    cfg = _Config(steps=steps, norm=norm, init=init, restarts=restarts, loss=loss,
                  targeted=targeted, eot_samples=eot_samples, transform=transform,
                  randomized=randomized, clip=clip, has_labels=has_labels)
    return _run(apply_fn, params, x, y, key, eps, step_size, init_scale, cfg)


def fgsm(apply_fn: ApplyFn, params: PyTree, x: jax.typing.ArrayLike, y: PyTree, *,
         eps: float | jax.Array, norm: str = "linf", targeted: bool = False,
         loss: str | Callable[[jax.Array, PyTree], jax.Array] = "ce",
         clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """Fast gradient (sign) method: one step of size ``eps`` from ``x``.

    ``x + eps * sign(grad)`` for L-inf, ``x + eps * grad / ||grad||`` for L2,
    then clipped into ``clip``; the one-step, zero-start case of :func:`pgd`.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``.
      params: pytree of model variables.
      x: ``(B, ...)`` float inputs inside ``clip``.
      y: ``(B,)`` integer labels (targets if ``targeted``), or any pytree of
        targets for a callable ``loss``.
      eps: perturbation size, ``>= 0``.
      norm: ``"linf"`` or ``"l2"``.
      targeted: if True, step towards the labels ``y``.
      loss: ``"ce"``, ``"cw"`` or a callable ``loss(logits, y) -> (B,)``.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``.

    References:
      Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
      ICLR 2015, arXiv:1412.6572.

    Example:
      >>> import jax.numpy as jnp
      >>> apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
      >>> x_adv = fgsm(apply_fn, jnp.eye(4, 2), jnp.full((1, 4), 0.5), jnp.array([0]), eps=0.1)
      >>> [round(v, 3) for v in x_adv[0].tolist()]
      [0.4, 0.6, 0.5, 0.5]
    """
    clip, has_labels = _common_checks(apply_fn, params, x, y, eps=eps, norm=norm, targeted=targeted,
                                      loss=loss, clip=clip, randomized=False)
    cfg = _Config(steps=1, norm=norm, init="zero", restarts=1, loss=loss, targeted=targeted,
                  eot_samples=1, transform=None, randomized=False, clip=clip, has_labels=has_labels)
    return _run(apply_fn, params, x, y, jax.random.key(0), eps, eps, 1.0, cfg)
