"""ARC: the attack on randomized ensemble classifiers of Dbouk & Shanbhag (ICML 2022).

A randomized ensemble classifier (REC) answers each query with member ``f_i``
drawn with probability ``alpha_i``; its accuracy at a point is the exact
expectation ``sum_i alpha_i 1[argmax f_i(x) = y]``. Gradient attacks on an
expected loss (adaptive PGD) can fail on RECs even when a norm-bounded
adversarial example exists; ARC instead walks to the linearised decision
boundaries of the members, one member at a time, and keeps a step only if the
REC's expected accuracy does not increase.

The algorithm (Algorithm 1 of the paper; details as in the authors' code,
``attack.py`` of github.com/hsndbk4/ARC):

* ``delta = 0``, ``v = E-acc(x)``. For ``k = 1..K``:

  * ``delta_l = 0``, ``v_l = v``. For the members in order of decreasing
    ``alpha``, at the point ``x + delta + delta_l``:

    - ``m`` = the member's predicted class; for every other class ``j`` (or
      the ``g`` runner-up logits in the lite variant) the distance to the
      linearised boundary ``zeta_j = |z_m - z_j| / ||w_j||_q`` with
      ``w_j = grad z_m - grad z_j`` and ``q`` the dual norm (1 for L-inf,
      2 for L2); the closest ``j`` gives the direction ``g = -sign(w)``
      (L-inf) or ``-w / ||w||_2`` (L2) and the distance ``zeta``;
    - step ``beta = eta``, except (from the second member of the sweep on)
      when the boundary is closer than ``eta``:
      ``beta = eta / (eta - zeta) * |zeta - <g2, delta_l>| + rho`` with
      ``g2 = -w / ||w||_q`` and ``rho = 0.05 * eps`` by default (the step
      that keeps the previous members' progress while still crossing this
      member's boundary after the rescaling below);
    - candidate ``delta_l' = eta * (delta_l + beta g) / ||delta_l + beta g||_p``;
      if ``E-acc(Proj(x + delta + delta_l')) <= v_l`` it is accepted
      (``delta_l = delta_l'``, ``v_l`` updated).

  * ``x + delta + delta_l`` is projected onto the eps-ball and the ``clip``
    box and accepted under the same rule (``<=`` the current ``v``).

Everything is per example: each has its own ``m``, ``j``, step and acceptances.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate
from jaxrob.ensembles._core import Members, as_members, check_alpha, expected_correct, num_members

from . import _checks
from ._pgd import _projector

PyTree = Any

# The authors' code adds 1e-10 to every norm it divides by; so do we (float32 norms of
# gradients and perturbations are far above it, and a zero vector stays zero, never NaN).
_TINY = 1e-10


class _Config(NamedTuple):
    """Static options of one ARC call (hashable: one compile per config, ensemble and shape)."""

    steps: int
    norm: str
    top_g: int | None  # None: every other class (full ARC); g: the g runner-up logits (ARC-lite)
    clip: tuple[float, float] | None


def _flat_norm(v: jax.Array, norm: str) -> jax.Array:
    """Per-example ``l1`` / ``l2`` / ``linf`` norm over all axes but the first, in float32: ``(B,)``."""
    v = v.reshape(v.shape[0], -1).astype(jnp.float32)
    if norm == "l1":
        return jnp.sum(jnp.abs(v), axis=-1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1))
    return jnp.max(jnp.abs(v), axis=-1)


def _bcast(v: jax.Array, ndim: int) -> jax.Array:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with ``ndim`` axes."""
    return v.reshape(v.shape + (1,) * (ndim - 1))


def _closest_boundary(apply_fn: Callable, params: PyTree, point: jax.Array,
                      cfg: _Config) -> tuple[jax.Array, jax.Array]:
    """One member's nearest linearised decision boundary at ``point``, per example.

    Only the needed gradients are formed: one forward pass, then one
    vector-Jacobian product per competitor class (vmapped), each with the
    cotangent ``e_m - e_j`` so that it returns ``w_j = grad z_m - grad z_j``
    directly. Full ARC has ``C - 1`` competitors per example (the classes other
    than the prediction ``m``); ARC-lite has the ``g`` runner-up logits.

    Returns:
      ``(zeta, w)``: ``(B,)`` float32 distances ``|z_m - z_j| / (||w_j||_q + 1e-10)``
      of the closest competitor ``j``, and its ``(B, ...)`` float32 ``w_j``.
    """
    logits, vjp_fn = jax.vjp(lambda xx: apply_fn(params, xx), point)
    z = logits.astype(jnp.float32)
    c = z.shape[-1]
    if cfg.top_g is None:
        m = jnp.argmax(z, axis=-1)
        k = jnp.arange(c - 1)
        comp = k[None, :] + (k[None, :] >= m[:, None])  # (B, C-1): every class but m
    else:
        _, top = lax.top_k(z, cfg.top_g + 1)
        m, comp = top[:, 0], top[:, 1:]  # (B,), (B, g)
    z_m = jnp.take_along_axis(z, m[:, None], axis=-1)
    gap = jnp.abs(z_m - jnp.take_along_axis(z, comp, axis=-1))  # (B, K)
    cot = (jax.nn.one_hot(m, c, dtype=logits.dtype)[None]
           - jax.nn.one_hot(comp.T, c, dtype=logits.dtype))  # (K, B, C)
    (w,) = jax.vmap(vjp_fn)(cot)  # (K, B, ...)
    q = "l1" if cfg.norm == "linf" else "l2"
    dual = jax.vmap(lambda wk: _flat_norm(wk, q))(w)  # (K, B)
    zeta = gap.T / (dual + _TINY)  # (K, B)
    best = jnp.argmin(zeta, axis=0)  # first minimum, as the reference's strict '<' update
    zeta_best = jnp.take_along_axis(zeta, best[None], axis=0)[0]
    w_best = jnp.take_along_axis(w, _bcast(best, w.ndim - 1)[None], axis=0)[0]
    return zeta_best, w_best.astype(jnp.float32)


def _local_candidate(zeta: jax.Array, w: jax.Array, d_loc: jax.Array, adaptive: jax.Array | bool,
                     eta: jax.Array, rho: jax.Array, norm: str) -> jax.Array:
    """The candidate local step of one member: ``eta * u / ||u||_p`` with ``u = d_loc + beta g``.

    ``g = -sign(w)`` (L-inf) or ``-w / ||w||_2`` (L2) points at the member's
    closest linearised boundary, at distance ``zeta``. ``beta = eta``, except
    where ``adaptive`` (every member of the sweep but the first) and the
    boundary is closer than ``eta``: then
    ``beta = eta / (eta - zeta) * |zeta - <g2, d_loc>| + rho`` with
    ``g2 = -w / ||w||_q``, large enough that the rescaled step still crosses
    this member's linearised boundary (the authors' code: ``|.|`` and the
    margin ``rho``). All arrays are per example: ``zeta (B,)``, ``w`` and
    ``d_loc`` ``(B, ...)``; ``rho`` is absolute here.
    """
    nd = w.ndim
    if norm == "linf":
        g = -jnp.sign(w)
        g2 = -w / _bcast(_flat_norm(w, "l1") + _TINY, nd)
    else:
        g = g2 = -w / _bcast(_flat_norm(w, "l2") + _TINY, nd)
    along = jnp.sum((g2 * d_loc).reshape(w.shape[0], -1), axis=-1)
    beta_c = eta / (eta - zeta + _TINY) * jnp.abs(zeta - along) + rho
    beta = jnp.where(adaptive & (zeta < eta), beta_c, eta)
    u = d_loc + _bcast(beta, nd) * g
    return _bcast(eta / (_flat_norm(u, norm) + _TINY), nd) * u


def _member_geometry(members: Members, params: PyTree, cfg: _Config):
    """``geometry(i, point) -> (zeta, w)`` for member ``i`` (a traced index into the member axis).

    Members are sliced out of the stacked params with a dynamic index; with
    several architecture groups, ``lax.switch`` picks the group.
    """
    groups = members.groups(params)
    sizes = [num_members(p) for p in groups]

    def branch(f, p):
        def run(local, point):
            p_i = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, local, keepdims=False), p)
            return _closest_boundary(f, p_i, point, cfg)
        return run

    branches = [branch(f, p) for f, p in zip(members.apply_fns, groups)]
    if len(branches) == 1:
        return branches[0]
    offsets = np.cumsum([0] + sizes[:-1])
    group_of = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes), jnp.int32)
    offset_of = jnp.asarray(np.repeat(offsets, sizes), jnp.int32)

    def geometry(i, point):
        return lax.switch(group_of[i], branches, i - offset_of[i], point)

    return geometry


def _arc(members: Members, params: PyTree, x: jax.Array, y: jax.Array, alpha: jax.Array,
         eps: jax.Array, eta: jax.Array, rho: jax.Array, cfg: _Config) -> jax.Array:
    """The ARC loop (arguments already validated)."""
    x = jnp.asarray(x)
    dtype, nd = x.dtype, x.ndim
    alpha = jnp.asarray(alpha, jnp.float32)
    eps = jnp.asarray(eps, jnp.float32)
    eta = jnp.asarray(eta, jnp.float32)
    rho = jnp.asarray(rho, jnp.float32) * eps
    project = _projector(x, eps.astype(dtype), cfg.norm, cfg.clip)
    geometry = _member_geometry(members, params, cfg)
    num = members.num_members(params)
    # The authors' order: np.flip(np.argsort(alpha)); argsort is stable, so this is the same
    # permutation (ties: the later member first).
    order = jnp.flip(jnp.argsort(alpha, stable=True))

    def accuracy(xa):
        return expected_correct(members(params, xa), y, alpha)  # (B,)

    def member_step(pos, carry):
        x_min, d_loc, acc_loc = carry
        zeta, w = geometry(order[pos], x_min + d_loc.astype(dtype))
        cand = _local_candidate(zeta, w, d_loc, pos > 0, eta, rho, cfg.norm)
        acc = accuracy(project(x_min + cand.astype(dtype)))
        ok = acc <= acc_loc
        return x_min, jnp.where(_bcast(ok, nd), cand, d_loc), jnp.minimum(acc, acc_loc)

    def iteration(_, carry):
        x_min, acc_min = carry
        _, d_loc, _ = lax.fori_loop(0, num, member_step,
                                    (x_min, jnp.zeros(x.shape, jnp.float32), acc_min))
        x_new = project(x_min + d_loc.astype(dtype))
        acc = accuracy(x_new)
        ok = acc <= acc_min
        return jnp.where(_bcast(ok, nd), x_new, x_min), jnp.minimum(acc, acc_min)

    x0 = project(x)
    x_adv, _ = lax.fori_loop(0, cfg.steps, iteration, (x0, accuracy(x0)))
    return lax.stop_gradient(x_adv)


_arc_jit = jax.jit(_arc, static_argnums=(0, 8))


def arc(members: Members | Callable[..., jax.Array], params: PyTree, x: jax.typing.ArrayLike,
        y: jax.typing.ArrayLike, *, alpha: jax.typing.ArrayLike, eps: float | jax.Array,
        norm: str = "linf", steps: int = 20, step_size: float | jax.Array | None = None,
        top_g: int | None = None, rho: float | jax.Array = 0.05,
        clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """ARC: Attacking Randomized ensembles of Classifiers (L-inf or L2).

    Minimises the REC's exact expected accuracy
    ``sum_i alpha_i 1[argmax f_i(x_adv) = y]`` inside the eps-ball. Each of the
    ``steps`` iterations sweeps the members in order of decreasing ``alpha``;
    for each member, at the current point, it finds the closest linearised
    decision boundary (over every class other than the member's prediction,
    or the ``top_g`` runner-up logits for ARC-lite), steps towards it (step
    ``step_size``, adapted when the boundary is closer; see the module
    docstring), rescales the local step to norm ``step_size``, projects onto
    the eps-ball and the ``clip`` box, and keeps it only if the expected
    accuracy does not increase. The sweep's accumulated step is then accepted
    under the same rule, so the expected accuracy of ``x_adv`` is never above
    that of ``x``, per example. Deterministic (zero start, as the paper's
    evaluation), one compile per ensemble, options and shapes; ``alpha``,
    ``eps``, ``step_size``, ``rho`` and ``params`` are traced.

    Cost per iteration and member: one forward and ``C - 1`` (or ``top_g``)
    backward passes of that member, and one forward pass of the whole ensemble
    (one ``vmap``) for the acceptance test; ``M`` times per iteration.

    Args:
      members: a :class:`jaxrob.ensembles.Members` (or one ``apply_fn`` for
        stacked params).
      params: the members' stacked params (a tuple of them for several groups).
      x: ``(B, ...)`` float inputs inside ``clip``.
      y: ``(B,)`` integer labels.
      alpha: ``(M,)`` sampling probabilities on the simplex.
      eps: radius of the threat model, ``>= 0``.
      norm: ``"linf"`` or ``"l2"`` (per example, over all non-batch axes).
      steps: iterations ``K``, ``>= 1`` (the paper uses 20).
      step_size: the local step norm ``eta`` ``> 0``; default ``eps`` (the
        paper's L-inf setting; a smaller ``eta`` makes the linearisation more
        accurate).
      top_g: None for full ARC (every class), or ``g`` in ``[1, C - 1]`` for
        ARC-lite (the ``g`` largest logits after the prediction);
        ``top_g = C - 1`` is full ARC.
      rho: the adaptive step's margin as a fraction of ``eps`` (``rho * eps``;
        the authors use ``0.05``), ``>= 0``.
      clip: valid input box ``(lo, hi)``, or None.

    Returns:
      ``x_adv`` with the shape and dtype of ``x``, ``||x_adv - x|| <= eps`` per
      example, inside ``clip``; carries no gradient.

    References:
      Dbouk & Shanbhag, "Adversarial Vulnerability of Randomized Ensembles",
      ICML 2022, arXiv:2206.06737 (Algorithm 1; step rule, order ties and
      ``rho = 0.05 eps`` as in the authors' code, github.com/hsndbk4/ARC).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob import ensembles
      >>> members = ensembles.Members(lambda p, x: x @ p)  # two linear members on R^2
      >>> params = ensembles.stack([jnp.array([[1.0, -1.0], [0.0, 0.0]]),   # class 0 iff x_0 > 0
      ...                           jnp.array([[0.0, 0.0], [1.0, -1.0]])])  # class 0 iff x_1 > 0
      >>> x, y, alpha = jnp.array([[0.6, 0.6]]), jnp.array([0]), jnp.array([0.7, 0.3])
      >>> x_adv = arc(members, params, x, y, alpha=alpha, eps=0.7, clip=None)
      >>> ensembles.expected_correct(members(params, x_adv), y, alpha).tolist()
      [0.0]
    """
    members = as_members(members)
    num = members.num_members(params)
    alpha = check_alpha(alpha, num)
    _checks.scalar("eps", eps, min=0.0)
    _validate.choice("norm", norm, _checks.NORMS)
    steps = _checks.positive_int("steps", steps)
    if step_size is not None:
        _checks.scalar("step_size", step_size, min=0.0, min_inclusive=False)
    _checks.scalar("rho", rho, min=0.0)
    clip = _checks.clip_range(clip)
    _checks.inputs(x, clip)
    batch = x.shape[0]
    if not hasattr(y, "dtype"):
        raise TypeError(f"y must be an integer array of shape ({batch},), got {type(y).__name__}")
    _validate.labels("y", y, batch=batch)
    out = jax.eval_shape(members, params, jax.ShapeDtypeStruct(tuple(x.shape), x.dtype))
    if len(out.shape) != 3 or out.shape[:2] != (num, batch):
        raise ValueError(f"members must return logits of shape (M, B, C) = ({num}, {batch}, C), "
                         f"got {out.shape}")
    c = int(out.shape[-1])
    if c < 2:
        raise ValueError(f"ARC needs at least 2 classes, the members return {c} logits")
    if _validate.is_concrete(y):
        _validate.labels("y", y, batch=batch, num_classes=c)
    if top_g is not None:
        top_g = _checks.positive_int("top_g", top_g)
        if top_g > c - 1:
            raise ValueError(f"top_g must be in [1, C - 1] = [1, {c - 1}] (runner-up classes "
                             f"besides the prediction), got {top_g}; None means all of them")
    cfg = _Config(steps=steps, norm=norm, top_g=top_g, clip=clip)
    f = _arc_jit if _checks.hashable(members, cfg) else _arc
    eta = eps if step_size is None else step_size
    return f(members, params, x, jnp.asarray(y), alpha, eps, eta, rho, cfg)
