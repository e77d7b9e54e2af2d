"""Square Attack: a score-based (gradient-free) random-search attack, L-inf and L2.

The attack queries only the model's logits. From a structured random start it
repeatedly proposes a candidate that changes one random square window of the
perturbation (L-inf), or moves perturbation mass between two random squares
(L2), and keeps the candidate for an example only if it raises that example's
loss. The square side shrinks along a fixed schedule of the iteration.

One call is a single ``lax.fori_loop`` over the query budget under ``jax.jit``;
all examples move in parallel, each with its own random windows and signs, and
examples that are already misclassified are frozen (their candidates are never
accepted, and an iteration is skipped outright once the whole batch is fooled).
Everything shape-dependent (the side-length schedule, the L2 patterns) is a
compile-time constant, so there is one compile per ``apply_fn``, static options
and shapes; ``eps``, ``params``, ``x``, ``y`` and ``key`` are traced.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _checks, _losses

PyTree = Any
ApplyFn = Callable[..., jax.Array]

LOSSES = ("margin", "ce")
# The official p schedule: p_init is halved each time the (rescaled) iteration passes one of these.
_P_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_MAX_REDRAWS = 64  # L-inf: sign redraws for a window that would not change x_best (each fails w.p. <= 1/2)
_TINY = 1e-12


class _Config(NamedTuple):
    """Static (compile-time) options; hashable, so one compile per config and shape."""

    norm: str
    queries: int
    p_init: float
    loss: str
    targeted: bool
    clip: tuple[float, float] | None


# ------------------------------------------------------------------ static schedule and patterns


def p_schedule(p_init: float, queries: int) -> np.ndarray:
    """The fraction ``p`` of pixels changed at each iteration ``i = 0 .. queries - 1``.

    The piecewise-constant schedule of the official code: ``p_init`` halved each
    time ``int(i / queries * 10000)`` passes 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 (the schedule written for 10,000 queries, rescaled to the budget).

    Returns:
      ``(queries,)`` float64 array.
    """
    it = (np.arange(queries) / queries * 10000).astype(np.int64)
    halvings = (it[:, None] > np.asarray(_P_BOUNDS)).sum(axis=1)
    return p_init / 2.0 ** halvings


def _stage_starts(queries: int) -> np.ndarray:
    """First iteration of schedule stages 1..9 (``queries`` if never reached); the stage of
    iteration ``i`` is ``sum(i >= starts)``."""
    it = (np.arange(queries) / queries * 10000).astype(np.int64)
    stage = (it[:, None] > np.asarray(_P_BOUNDS)).sum(axis=1)  # non-decreasing in i
    return np.searchsorted(stage, np.arange(1, len(_P_BOUNDS) + 1), side="left").astype(np.int32)


def _sides(norm: str, p_init: float, h: int, w: int, c: int) -> np.ndarray:
    """Square side per schedule stage (10 stages), as in the official code.

    L-inf: ``round(sqrt(p * h * w))`` clamped to ``[1, h - 1]``. L2: at least 3 and
    odd. Both are also capped at ``min(h, w) - 1`` so that a window always fits
    with at least two positions (the official code assumes square images).
    """
    p = p_init / 2.0 ** np.arange(len(_P_BOUNDS) + 1)
    s = np.rint(np.sqrt(p * (c * h * w) / c)).astype(np.int64)
    if norm == "linf":
        s = np.maximum(s, 1)
    else:
        s = np.maximum(s, 3)
        s = s + (s % 2 == 0)
    return np.minimum(s, min(h, w) - 1).astype(np.int32)


def _eta_rect(a: int, b: int) -> np.ndarray:
    """The ``(a, b)`` pseudo-Gaussian bump of the official L2 attack, unit L2 norm.

    The official code adds ``1 / (k + 1)^2`` on concentric rectangles of radius
    ``k = 0 .. max(a // 2, b // 2)`` around ``(a // 2, b // 2)``; so the value at a
    pixel at Chebyshev distance ``m`` from the centre is ``sum_{k >= m} 1 / (k + 1)^2``.
    """
    if a == 0 or b == 0:
        return np.zeros((a, b))
    k = max(a // 2, b // 2) + 1
    tail = np.cumsum((1.0 / np.arange(1, k + 1) ** 2)[::-1])[::-1]  # tail[m] = sum_{j=m}^{k-1} 1/(j+1)^2
    m = np.maximum(np.abs(np.arange(a)[:, None] - a // 2), np.abs(np.arange(b)[None, :] - b // 2))
    d = tail[m]
    return d / np.sqrt(np.sum(d ** 2))


def eta(s: int) -> np.ndarray:
    """The ``(s, s)`` L2 update pattern: a bump on the top half, minus one on the bottom half.

    Unit L2 norm (the official ``meta_pseudo_gaussian_pert`` with two sub-squares,
    before its random transpose).
    """
    d = np.zeros((s, s))
    d[: s // 2] = _eta_rect(s // 2, s)
    d[s // 2:] = -_eta_rect(s - s // 2, s)
    return d / np.sqrt(np.sum(d ** 2))


def _l2_init_cells(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The official L2 start: a grid of ``(h // 5)``-sided cells, each holding ``eta``
    (or its transpose). Returns the two ``(G, h, w)`` stacks, one cell per row."""
    s = h // 5
    start = (h - 5 * s) // 2
    cells, cells_t = [], []
    e = eta(s)
    for a in range(h // s):
        for b in range(w // s):
            vh, vw = start + a * s, start + b * s
            if vh >= h or vw >= w:
                continue
            nh, nw = min(s, h - vh), min(s, w - vw)  # the official slices are cut at the border
            for out, pat in ((cells, e), (cells_t, e.T)):
                cell = np.zeros((h, w))
                cell[vh:vh + nh, vw:vw + nw] = pat[:nh, :nw]
                out.append(cell)
    return np.stack(cells).astype(np.float32), np.stack(cells_t).astype(np.float32)


# --------------------------------------------------------------------------------- the attack


def _window(vh: jax.Array, vw: jax.Array, s: jax.Array, h: int, w: int) -> jax.Array:
    """``(B, h, w)`` mask of the per-example square ``[vh, vh + s) x [vw, vw + s)``."""
    rows, cols = jnp.arange(h), jnp.arange(w)
    in_h = (rows >= vh[:, None]) & (rows < (vh + s)[:, None])
    in_w = (cols >= vw[:, None]) & (cols < (vw + s)[:, None])
    return in_h[:, :, None] & in_w[:, None, :]


def _uniform(key: jax.Array, b: int, n: int) -> jax.Array:
    """``(b, n)`` uniforms from one rank-1 draw (XLA:CPU compiles rank-1 threefry fastest)."""
    return jax.random.uniform(key, (b * n,), jnp.float32).reshape(b, n)


def _corner(u: jax.Array, s: jax.Array, size: int) -> jax.Array:
    """Per-example window start, uniform over ``[0, size - s)`` (official ``randint``), from
    uniforms ``u`` of shape ``(B,)``."""
    return jnp.minimum(jnp.floor(u * (size - s)).astype(jnp.int32), size - s - 1)


def _signs(u: jax.Array, dtype) -> jax.Array:
    """Random signs +-1, from uniforms."""
    return jnp.where(u < 0.5, 1.0, -1.0).astype(dtype)


def _l2_norm(v: jax.Array, axis) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axis, keepdims=True))


def _square(apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: jax.Array, key: jax.Array,
            eps: jax.Array, cfg: _Config) -> jax.Array:
    """The Square Attack loop (arguments already validated)."""
    x = jnp.asarray(x)
    dtype = x.dtype
    b, h, w, c = x.shape
    eps = jnp.asarray(eps, jnp.float32)
    eps_x = eps.astype(dtype)
    loss_fn = _losses.cw_loss if cfg.loss == "margin" else _losses.ce_loss
    sign = -1.0 if cfg.targeted else 1.0
    box = (lambda v: v) if cfg.clip is None else (lambda v: jnp.clip(v, cfg.clip[0], cfg.clip[1]))

    def evaluate(xa):
        """Objective to maximise (margin ``max_{j != y} z_j - z_y`` or CE; negated when
        targeted) and whether ``xa`` fools the model (argmax != y, or == y if targeted)."""
        logits = apply_fn(params, xa)
        obj = sign * loss_fn(logits, y).astype(jnp.float32)
        pred = jnp.argmax(logits, axis=-1)
        return obj, (pred == y) if cfg.targeted else (pred != y)

    k_init, k_loop = jax.random.split(key)
    if cfg.norm == "linf":
        # Vertical stripes: one random sign per (example, column, channel), as in the paper.
        stripes = _signs(_uniform(k_init, b, w * c), dtype).reshape(b, 1, w, c)
        x_best = box(x + eps_x * stripes)
    else:
        cells, cells_t = (jnp.asarray(a) for a in _l2_init_cells(h, w))
        g = cells.shape[0]
        u = _uniform(k_init, b, g * (c + 1))
        transposed = u[:, :g] < 0.5
        signs = _signs(u[:, g:], jnp.float32).reshape(b, g, c)
        # Two (B*C, G) x (G, h*w) products; no (B, G, h, w) intermediate.
        delta = (jnp.einsum("bgc,ghw->bhwc", jnp.where(transposed[..., None], 0.0, signs), cells)
                 + jnp.einsum("bgc,ghw->bhwc", jnp.where(transposed[..., None], signs, 0.0), cells_t))
        x_best = box(x + (delta * (eps / jnp.maximum(_l2_norm(delta, (1, 2, 3)), _TINY))).astype(dtype))

    _, clean_fooled = evaluate(x)
    best, fooled = evaluate(x_best)
    done = clean_fooled | fooled

    starts = jnp.asarray(_stage_starts(cfg.queries))
    sides = jnp.asarray(_sides(cfg.norm, cfg.p_init, h, w, c))

    def propose_linf(k, x_best, done, s):
        u = _uniform(k, b, 2 + c)
        vh, vw = _corner(u[:, 0], s, h), _corner(u[:, 1], s, w)
        win = _window(vh, vw, s, h, w)[..., None]

        def candidate(sg):  # the window set to x +- eps per channel (then into the box)
            return jnp.where(win, box(x + eps_x * sg[:, None, None, :]), x_best)

        def changes(sg):
            return jnp.any(candidate(sg) != x_best, axis=(1, 2, 3))

        # As the official code: redraw the signs until the candidate differs from x_best
        # (bounded; examples that are done, or eps = 0, never ask for a redraw).
        sg0 = _signs(u[:, 2:], dtype)
        settled0 = changes(sg0) | done | (eps <= 0)

        def redraw(state):
            t, sg, settled = state
            sg = jnp.where(settled[:, None], sg, _signs(_uniform(jax.random.fold_in(k, t), b, c), dtype))
            return t + 1, sg, changes(sg) | settled

        _, sg, _ = lax.while_loop(lambda st: (st[0] < _MAX_REDRAWS) & ~jnp.all(st[2]), redraw,
                                  (jnp.int32(1), sg0, settled0))
        return candidate(sg)

    if cfg.norm == "l2":
        uniq, stage_to_pat = np.unique(_sides("l2", cfg.p_init, h, w, c), return_inverse=True)
        smax = int(uniq.max())
        table = np.zeros((len(uniq), smax, smax), np.float32)
        for i, s_u in enumerate(uniq):
            table[i, :s_u, :s_u] = eta(int(s_u))
        table, stage_to_pat = jnp.asarray(table), jnp.asarray(stage_to_pat.astype(np.int32))

    def propose_l2(k, x_best, stage, s):
        u = _uniform(k, b, 5 + c)
        vh, vw = _corner(u[:, 0], s, h), _corner(u[:, 1], s, w)
        vh2, vw2 = _corner(u[:, 2], s, h), _corner(u[:, 3], s, w)
        win1 = _window(vh, vw, s, h, w)[..., None]
        win2 = _window(vh2, vw2, s, h, w)[..., None]
        delta = (x_best - x).astype(jnp.float32)
        norm_img = _l2_norm(delta, (1, 2, 3))                                   # (B, 1, 1, 1)
        norm_win1 = _l2_norm(jnp.where(win1, delta, 0.0), (1, 2))               # (B, 1, 1, C)
        norm_both = _l2_norm(jnp.where(win1 | win2, delta, 0.0), (1, 2))        # (B, 1, 1, C)
        # eta(s), randomly transposed per example, placed at the window by a gather.
        pat = table[stage_to_pat[stage]]
        li = jnp.clip(jnp.arange(h)[None, :] - vh[:, None], 0, smax - 1)[:, :, None]
        lj = jnp.clip(jnp.arange(w)[None, :] - vw[:, None], 0, smax - 1)[:, None, :]
        tr = (u[:, 4] < 0.5)[:, None, None]
        bump = jnp.where(win1[..., 0], jnp.where(tr, pat[lj, li], pat[li, lj]), 0.0)
        new = bump[..., None] * _signs(u[:, 5:], jnp.float32)[:, None, None, :]
        new = new + jnp.where(win1, delta, 0.0) / jnp.maximum(norm_win1, _TINY)
        # Per channel, window 1 gets the mass of both windows plus an equal share of the
        # slack eps^2 - ||delta||^2; window 2 is emptied, so ||delta|| becomes eps again.
        budget = jnp.sqrt(jnp.maximum(eps ** 2 - norm_img ** 2, 0.0) / c + norm_both ** 2)
        new = new * (budget / jnp.maximum(_l2_norm(new, (1, 2)), _TINY))
        delta = jnp.where(win1, new, jnp.where(win2, 0.0, delta))
        delta = delta * (eps / jnp.maximum(_l2_norm(delta, (1, 2, 3)), _TINY))
        return box(x + delta.astype(dtype))

    def step(i, state):
        def attempt(state):
            x_best, best, done = state
            k = jax.random.fold_in(k_loop, i)
            stage = jnp.sum(i >= starts)
            s = sides[stage]
            if cfg.norm == "linf":
                x_new = propose_linf(k, x_best, done, s)
            else:
                x_new = propose_l2(k, x_best, stage, s)
            obj, fooled = evaluate(x_new)
            # Keep a candidate if it raises the loss, or (AutoAttack's rule) if it fools the model.
            accept = ~done & ((obj > best) | fooled)
            x_best = jnp.where(accept[:, None, None, None], x_new, x_best)
            return x_best, jnp.where(accept, obj, best), done | (accept & fooled)

        return lax.cond(jnp.any(~state[2]), attempt, lambda st: st, state)

    # One query went to the start; queries - 1 random-search steps follow (official L-inf count).
    if cfg.queries > 1:
        x_best, _, _ = lax.fori_loop(0, cfg.queries - 1, step, (x_best, best, done))
    x_adv = jnp.where(clean_fooled[:, None, None, None], x, x_best)
    return lax.stop_gradient(x_adv)


_square_jit = jax.jit(_square, static_argnums=(0, 6))


def _image_batch(x: Any, norm: str) -> None:
    """Checks the NHWC layout the windows are drawn over."""
    shape = tuple(np.shape(x))
    if len(shape) != 4:
        raise ValueError(f"x must be a batch of images (B, H, W, C) (NHWC, channels last), got "
                         f"shape {shape}; add the missing axes (e.g. x[..., None] for one channel)")
    _, h, w, c = shape
    if h <= 4 and c > 4:
        raise ValueError(f"x must be NHWC (B, H, W, C): the squares are drawn over axes 1 and 2 as "
                         f"image rows and columns, but shape {shape} looks channels-first "
                         f"(B, C, H, W); pass x.transpose(0, 2, 3, 1) and an apply_fn that "
                         f"takes channels-last images")
    need = 5 if norm == "l2" else 2
    if min(h, w) < need:
        raise ValueError(f"norm={norm!r} needs images of at least {need}x{need} pixels (NHWC), "
                         f"got H={h}, W={w} from shape {shape}")


def square(apply_fn: ApplyFn, params: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
           key: jax.Array, eps: float | jax.Array, queries: int = 5000, norm: str = "linf",
           p_init: float = 0.8, loss: str = "margin", targeted: bool = False,
           clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """Square Attack: score-based black-box random search (L-inf or L2).

    Uses only forward passes of ``apply_fn`` (no gradients), so it is the attack
    to run against models whose gradients are masked or obfuscated; AutoAttack
    runs it for that reason. Each example starts from the official
    initialisation (L-inf: vertical stripes of ``+-eps``, one random sign per
    column and channel; L2: a grid of ``H // 5``-sided cells, each holding a pair
    of pseudo-Gaussian bumps of opposite signs, rescaled to norm ``eps``). Each
    iteration then proposes, per example, a random square window of side ``s``:

    * L-inf: the window is set to ``x +- eps`` with one random sign per channel
      (signs are redrawn while that would leave ``x_best`` unchanged, as in the
      official code); every coordinate stays at ``x +- eps`` (before clipping).
    * L2: window 1 receives a new bump pair (random sign per channel, randomly
      transposed) plus its old content, rescaled so that it holds the mass of
      window 1 and window 2 together plus any unused budget; window 2 is
      emptied, and the perturbation is rescaled to norm ``eps``.

    The candidate (clipped into ``clip``) replaces an example's current point
    only if it raises that example's loss (or, as in AutoAttack's version, if it
    fools the model); examples already fooled are not updated. The side is
    ``round(sqrt(p * H * W))`` where ``p`` starts at ``p_init`` and is halved at
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000,
    rescaled to ``queries`` (see :func:`p_schedule`); L2 sides are odd and
    ``>= 3``, all sides are below ``min(H, W)``. Examples misclassified at ``x``
    (or classified as the target when ``targeted``) are returned unchanged.

    Windows, signs and transposes are drawn independently per example (the
    official code draws one window per batch for L2). The loop is one
    ``lax.fori_loop`` under ``jax.jit``, compiled once per ``apply_fn``, options
    and shapes; an iteration is skipped once the whole batch is fooled.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``; any JAX function,
        differentiable or not (only its values are used).
      params: pytree of model variables.
      x: ``(B, H, W, C)`` float images, channels last (NHWC), inside ``clip``.
        The squares are drawn over the spatial axes 1 and 2, so channels-first
        batches must be transposed first.
      y: ``(B,)`` integer labels (true labels, or targets if ``targeted``).
      key: typed PRNG key (``jax.random.key``).
      eps: radius of the threat model, ``>= 0``.
      queries: forward passes per example, counting the one at the start: one
        initialisation and ``queries - 1`` random-search steps (plus one pass at
        ``x`` to find already-misclassified examples). ``>= 1``.
      norm: ``"linf"`` or ``"l2"`` (per example, over ``H, W, C``).
      p_init: initial fraction of pixels in the square, in ``(0, 1]``; the paper
        uses 0.05 (L-inf) and 0.1 (L2) for standard models on ImageNet, and
        AutoAttack 0.8.
      loss: ``"margin"`` (``max_{j != y} z_j - z_y``, positive iff misclassified)
        or ``"ce"`` (cross-entropy); maximised, or its negation at the target
        when ``targeted``.
      targeted: if True, push the prediction towards the labels ``y``.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``: the best point found per
      example, with ``||x_adv - x|| <= eps`` and values inside ``clip``. Its loss
      is never below that of the start (with ``loss="ce"`` a fooling candidate is
      kept even if its loss is lower, so this holds for ``"margin"``).

    References:
      Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
      black-box adversarial attack via random search", ECCV 2020,
      arXiv:1912.00049 (schedule, initialisations, L2 update and the
      redraw-if-unchanged rule follow the official code, max-andr/square-attack;
      the accept-if-fooled rule follows AutoAttack's version, fra31/auto-attack).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.zeros((16, 2)).at[:, 1].set(1.0)
      >>> apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p + jnp.array([4.0, 0.0])
      >>> x = jnp.full((2, 4, 4, 1), 0.2)
      >>> x_adv = square(apply_fn, w, x, jnp.array([0, 0]), key=jax.random.key(0),
      ...                eps=0.1, queries=50)
      >>> bool(jnp.max(jnp.abs(x_adv - x)) <= 0.1 + 1e-6)
      True
      >>> apply_fn(w, x_adv).argmax(-1).tolist()  # pushed from class 0 to class 1
      [1, 1]
    """
    key = _checks.typed_key("key", key)
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x) -> logits, got {apply_fn!r}")
    queries = _checks.positive_int("queries", queries)
    _checks.scalar("eps", eps, min=0.0)
    _validate.choice("norm", norm, _checks.NORMS)
    _validate.choice("loss", loss, LOSSES)
    p_init = float(_validate.number("p_init", p_init, min=0.0, max=1.0, min_inclusive=False))
    if not isinstance(targeted, bool):
        raise TypeError(f"targeted must be a bool, got {targeted!r}")
    clip = _checks.clip_range(clip)
    _checks.inputs(x, clip)
    _image_batch(x, norm)
    _checks.targets(y, batch=x.shape[0], loss="ce")
    _checks.label_range(apply_fn, params, x, y, randomized=False)
    cfg = _Config(norm=norm, queries=queries, p_init=p_init, loss=loss, targeted=targeted, clip=clip)
    f = _square_jit if _checks.hashable(apply_fn) else _square
    return f(apply_fn, params, x, y, key, eps, cfg)
