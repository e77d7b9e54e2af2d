"""Ensembles as one function over stacked member parameters.

An ensemble of ``M`` models of one architecture is that architecture's
``apply_fn`` and a pytree whose leaves carry a leading member axis of size
``M`` (:func:`stack`); :class:`Members` evaluates all members at once with
``jax.vmap``. Members of different architectures form groups, one
``(apply_fn, stacked params)`` per architecture, concatenated in group order.

On top of the member logits ``(M, B, C)``:

* deterministic ensembles average logits or probabilities (:func:`average`);
* a randomized ensemble classifier (REC) answers each query with member ``i``
  drawn with probability ``alpha_i``. Its accuracy at a point is the exact
  expectation ``sum_i alpha_i 1[argmax f_i(x) = y]`` (:func:`expected_correct`);
  sampled inference (:func:`rec_sample`) is there to check it and to deploy it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate

PyTree = Any
ApplyFn = Callable[..., jax.Array]

_ALPHA_TOL = 1e-5


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks member pytrees of identical structure and shapes along a new leading axis.

    Args:
      trees: a non-empty sequence of pytrees (e.g. ``[m.variables for m in models]``).

    Returns:
      One pytree whose leaves have shape ``(M, *leaf.shape)``.

    Example:
      >>> import jax.numpy as jnp
      >>> stack([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])["w"].shape
      (2, 3)
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack needs at least one member pytree, got an empty sequence")
    struct = jax.tree.structure(trees[0])
    shapes = [np.shape(a) for a in jax.tree.leaves(trees[0])]
    for i, t in enumerate(trees[1:], start=1):
        if jax.tree.structure(t) != struct:
            raise ValueError(f"member {i} has a different pytree structure from member 0; "
                             "members of different architectures go in separate groups (see Members)")
        other = [np.shape(a) for a in jax.tree.leaves(t)]
        if other != shapes:
            bad = next(j for j, (a, b) in enumerate(zip(shapes, other)) if a != b)
            raise ValueError(f"member {i} has leaf {bad} of shape {other[bad]}, member 0 has {shapes[bad]}; "
                             "stacked members must have identical shapes")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(stacked: PyTree) -> list[PyTree]:
    """Inverse of :func:`stack`: a list of ``M`` member pytrees."""
    m = num_members(stacked)
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(m)]


def num_members(stacked: PyTree) -> int:
    """Size of the leading member axis of a stacked pytree (checked to agree across leaves)."""
    leaves = jax.tree.leaves(stacked)
    if not leaves:
        raise ValueError("stacked params hold no arrays")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of stacked params must have the same leading member axis, "
                         f"got leading sizes {sorted(s for s in sizes if s is not None)}"
                         + (" and scalars" if None in sizes else ""))
    return int(sizes.pop())


def _default_unroll() -> bool:
    """Members are unrolled on XLA:CPU, vmapped elsewhere (see :class:`Members`)."""
    return jax.default_backend() == "cpu"


@dataclasses.dataclass(frozen=True)
class Members:
    """All members' logits: ``members(params, x) -> (M, B, C)``.

    With one ``apply_fn``, ``params`` is one stacked pytree (:func:`stack`).
    With several (members of different architectures), ``params`` is a tuple
    with one stacked pytree per ``apply_fn``, and the member axis is their
    concatenation in that order.

    Each group is evaluated with one ``jax.vmap`` over its member axis
    (``unroll=False``) or by slicing the member axis inside the traced function,
    one call per member (``unroll=True``); both give the same result. The
    default ``unroll=None`` unrolls on the CPU backend only: XLA:CPU turns a
    convolution whose kernel is batched by ``vmap`` into a grouped convolution
    that we measured 2.7x (``cnn_small``) to 4.3x (``resnet20``) slower than
    the unrolled members, forward and backward; on GPU/TPU ``vmap`` is the fast
    form. Either way it is one traced function, never a Python loop at run time.

    ``Members`` is a frozen dataclass, so two equal instances hash alike and
    share the compile caches of the functions that take them as static
    arguments.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> linear = lambda p, x: x @ p
      >>> members = Members(linear)
      >>> params = stack([jnp.eye(2), -jnp.eye(2)])
      >>> members(params, jnp.ones((5, 2))).shape
      (2, 5, 2)
    """

    apply_fns: tuple[ApplyFn, ...]
    unroll: bool | None = None

    def __init__(self, *apply_fns: ApplyFn, unroll: bool | None = None):
        if not apply_fns:
            raise ValueError("Members needs at least one apply_fn")
        for f in apply_fns:
            if not callable(f):
                raise TypeError(f"every member function must be callable as apply_fn(params, x), got {f!r}")
        if unroll is not None and not isinstance(unroll, bool):
            raise TypeError(f"unroll must be True, False or None (unrolled on CPU only), got {unroll!r}")
        object.__setattr__(self, "apply_fns", tuple(apply_fns))
        object.__setattr__(self, "unroll", unroll)

    def groups(self, params: PyTree) -> tuple[PyTree, ...]:
        """``params`` as a tuple with one stacked pytree per group."""
        if len(self.apply_fns) == 1:
            return (params,)
        if not isinstance(params, (tuple, list)) or len(params) != len(self.apply_fns):
            raise ValueError(f"an ensemble of {len(self.apply_fns)} architecture groups takes params as a "
                             f"tuple of {len(self.apply_fns)} stacked pytrees, got {type(params).__name__}"
                             + (f" of length {len(params)}" if isinstance(params, (tuple, list)) else ""))
        return tuple(params)

    def num_members(self, params: PyTree) -> int:
        """Total number of members ``M`` over all groups."""
        return sum(num_members(p) for p in self.groups(params))

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        unroll = _default_unroll() if self.unroll is None else self.unroll
        outs = []
        for f, p in zip(self.apply_fns, self.groups(params)):
            if unroll:
                outs.append(jnp.stack([f(jax.tree.map(lambda a, i=i: a[i], p), x)
                                       for i in range(num_members(p))]))
            else:
                outs.append(jax.vmap(f, in_axes=(0, None))(p, x))
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


def as_members(members: Members | ApplyFn) -> Members:
    """Accepts a :class:`Members` or a single ``apply_fn`` (one architecture)."""
    if isinstance(members, Members):
        return members
    if callable(members):
        return Members(members)
    raise TypeError(f"members must be a jaxrob.ensembles.Members or an apply_fn, got {members!r}")


def check_alpha(alpha: Any, num_members: int | None = None) -> jax.Array:
    """Checks sampling probabilities: a 1-D vector on the probability simplex.

    Args:
      alpha: ``(M,)`` non-negative weights summing to 1 (tolerance ``1e-5``).
      num_members: the ensemble size ``M`` it must match, if known.

    Returns:
      ``alpha`` as a float32 ``jax.Array``.
    """
    if isinstance(alpha, jax.core.Tracer):
        if alpha.ndim != 1 or (num_members is not None and alpha.shape[0] != num_members):
            raise ValueError(f"alpha must have shape ({num_members or 'M'},), got {alpha.shape}")
        return alpha.astype(jnp.float32)
    try:
        a = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a vector of probabilities, got {alpha!r}") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"alpha must be a non-empty 1-D vector of probabilities, got shape {a.shape}")
    if num_members is not None and a.size != num_members:
        raise ValueError(f"alpha has {a.size} entries but the ensemble has {num_members} members")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"alpha must be non-negative and finite, got {a.tolist()}")
    if abs(a.sum() - 1.0) > _ALPHA_TOL:
        raise ValueError(f"alpha must sum to 1 (it is a distribution over members), got sum {a.sum():.6g}")
    return jnp.asarray(a, jnp.float32)


def project_simplex(v: jax.typing.ArrayLike) -> jax.Array:
    """Euclidean projection onto the probability simplex (sort-based, exact).

    References:
      Wang & Carreira-Perpinan, "Projection onto the probability simplex: An
      efficient algorithm with a simple proof", arXiv:1309.1541.
    """
    v = jnp.asarray(v, jnp.float32)
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u)
    k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = jnp.sum(u - (css - 1.0) / k > 0)  # the condition holds exactly for k <= rho
    theta = (css[rho - 1] - 1.0) / rho
    return jnp.maximum(v - theta, 0.0)


def member_logits(members: Members | ApplyFn, params: PyTree, x: jax.Array) -> jax.Array:
    """``(M, B, C)`` logits of every member (a function form of ``Members.__call__``)."""
    return as_members(members)(params, x)


@dataclasses.dataclass(frozen=True)
class Averaged:
    """A deterministic ensemble ``apply_fn(params, x) -> (B, C)``; see :func:`average`."""

    members: Members
    over: str
    weighted: bool = False

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        if self.weighted:
            params, w = params
        z = self.members(params, x).astype(jnp.float32)  # (M, B, C)
        m = z.shape[0]
        w = jnp.full((m,), 1.0 / m, jnp.float32) if not self.weighted else jnp.asarray(w, jnp.float32)
        if self.over == "logits":
            return jnp.einsum("m,mbc->bc", w, z)
        # log of the weighted mean of softmaxes, computed stably in log space
        log_p = jax.nn.log_softmax(z, axis=-1)
        return jax.nn.logsumexp(log_p, axis=0, b=w[:, None, None])


_OVER = ("logits", "probs")


def average(members: Members | ApplyFn, *, over: str = "logits", weighted: bool = False) -> Averaged:
    """A deterministic ensemble as one ``apply_fn``.

    ``over="logits"`` returns the (weighted) mean of the members' logits;
    ``over="probs"`` returns ``log(sum_i w_i softmax(f_i(x)))``, whose argmax is
    the prediction of the averaged probabilities and whose cross-entropy is the
    CE of the expected softmax (the objective of an adaptive attack on a REC).

    Args:
      members: a :class:`Members` (or one ``apply_fn`` for stacked params).
      over: ``"logits"`` or ``"probs"``.
      weighted: if False the result is called as ``f(params, x)`` with uniform
        weights; if True as ``f((params, w), x)`` with ``w`` an ``(M,)`` weight
        vector (e.g. a REC's ``alpha``), traced, so new weights never recompile.

    Returns:
      A hashable ``apply_fn`` usable by every attack and by :func:`jaxrob.attacks.accuracy`.

    Example:
      >>> import jax.numpy as jnp
      >>> f = average(lambda p, x: x @ p)
      >>> f(stack([jnp.eye(2), 3 * jnp.eye(2)]), jnp.array([[1.0, 0.0]])).tolist()
      [[2.0, 0.0]]
    """
    _validate.choice("over", over, _OVER)
    if not isinstance(weighted, bool):
        raise TypeError(f"weighted must be a bool, got {weighted!r}")
    return Averaged(as_members(members), over, weighted)


def expected_correct(logits: jax.Array, y: jax.Array, alpha: jax.Array) -> jax.Array:
    """A REC's exact per-example accuracy ``sum_i alpha_i 1[argmax_c logits[i, b, c] = y_b]``.

    Args:
      logits: ``(M, B, C)`` member logits.
      y: ``(B,)`` integer labels.
      alpha: ``(M,)`` sampling probabilities.

    Returns:
      ``(B,)`` float32 expected accuracies in [0, 1].
    """
    hit = (jnp.argmax(logits, axis=-1) == y[None, :]).astype(jnp.float32)  # (M, B)
    return jnp.einsum("m,mb->b", jnp.asarray(alpha, jnp.float32), hit)


@dataclasses.dataclass(frozen=True)
class Sampled:
    """A REC as a randomized ``apply_fn(params, x, *, key) -> (B, C)``; see :func:`rec_sample`."""

    members: Members

    def __call__(self, params: PyTree, x: jax.Array, *, key: jax.Array) -> jax.Array:
        params, alpha = params
        z = self.members(params, x)  # (M, B, C)
        idx = jax.random.categorical(key, jnp.log(jnp.asarray(alpha, jnp.float32)), shape=(x.shape[0],))
        return jnp.take_along_axis(z, idx[None, :, None], axis=0)[0]


def rec_sample(members: Members | ApplyFn) -> Sampled:
    """A randomized ensemble classifier as a randomized ``apply_fn``.

    Called as ``f((params, alpha), x, key=key)``: every example of the batch
    is answered by its own member, drawn independently with probabilities
    ``alpha`` — what a deployed REC does. It fits every API that takes
    ``randomized=True`` (:func:`jaxrob.attacks.pgd` with EOT,
    :func:`jaxrob.attacks.accuracy`). All members are evaluated (one vmap) and
    one is selected per example, so its cost is the full ensemble's.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = rec_sample(lambda p, x: x @ p)
      >>> params = stack([jnp.eye(2), -jnp.eye(2)])
      >>> f((params, jnp.array([1.0, 0.0])), jnp.ones((3, 2)), key=jax.random.key(0)).tolist()
      [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    return Sampled(as_members(members))
