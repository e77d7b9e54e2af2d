"""Exact acceptance probabilities of the selection schemes and the optimal acceptance.

:func:`acceptance_probability` gives ``P(accepted >= 0)`` of any scheme in
:mod:`jaxrob.specdec._schemes` exactly -- by a closed form where one exists, otherwise
by enumerating the draft tuples -- never by sampling.

:func:`optimal_acceptance` is the largest acceptance any scheme can reach for
independent drafts ``X_k ~ q_k`` and target ``p``. By max-flow/min-cut on the coupling
LP (source -> tuple ``x`` with capacity ``Q(x)``, ``x`` -> each token of ``x``, token
``y`` -> sink with capacity ``p(y)``), a cut is a set ``S`` of tokens on the source
side of the sink edges; the tuples that can reach a token outside ``S`` are those not
entirely inside ``S``, so

    ``P* = min_S [p(S) + 1 - prod_k q_k(S)] = 1 - max_S [prod_k q_k(S) - p(S)]``

(derived). For identical drafts, an optimal ``S`` is a prefix of the tokens sorted by
``p/q`` in increasing order: removing ``i`` from / adding ``j`` to an optimal ``S`` must
not help, and the convexity of ``t -> t^K`` then gives
``p_i/q_i < K q(S)^{K-1} <= p_j/q_j`` (derived), so ``P*`` takes ``O(V log V)``.

For ``K = 2`` identical drafts the paper gives the acceptance-one condition (its Eq. (5),
Theorem 2) and an explicit expression for ``P*`` (its Eq. (6), Theorem 3; Figure 2 plots
it). Written in our notation (the paper's ``p`` is the draft and ``q`` the target; here
``p`` is the target), with the tokens ordered so that
``p_1/q_1 >= p_2/q_2 >= ... >= p_V/q_V``:

    ``P* = min_{0 <= i <= V} [ sum_{s > i} p_s + (sum_{s <= i} q_s)^2
                               + 2 (sum_{s <= i} q_s)(sum_{s > i} q_s) ]``     (Eq. (6))

and ``P* = 1`` iff ``(sum_{s in S} q_s)^2 <= sum_{s in S} p_s`` for every token set ``S``
(Eq. (5)). These are the min-cut formula above with ``K = 2``; the tests check both
against the coupling LP and brute force over all token sets, so they state the same
values as the paper's theorems whatever the paper's own arrangement of the terms.

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
  Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal
  Transport", NeurIPS 2023, arXiv:2310.15141.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _lp
from . import _schemes
from . import _select_checks as _checks

#: Largest vocabulary for which :func:`optimal_acceptance` enumerates the ``2**V`` token
#: sets of non-identical drafts.
SUBSET_LIMIT = 16
#: Draft tuples enumerated in one ``vmap`` by :func:`exact_marginal` (larger sets go in chunks).
_VMAP_TUPLES = 8192


def acceptance_probability(scheme: Any, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
                           **options: Any) -> jax.Array:
    """The exact probability that ``scheme`` accepts one of the drafts (``accepted >= 0``).

    Closed forms (derived unless noted):

    * :func:`~jaxrob.specdec.single_draft`: ``sum_y min(p(y), q_1(y))`` (Leviathan et al.
      2023's expected acceptance rate).
    * :func:`~jaxrob.specdec.specinfer` with replacement: ``1 - prod_k (1 - beta_k)``,
      ``beta_k = sum_y min(p_k(y), q_k(y))`` along the residual chain
      ``p_{k+1} = norm(max(0, p_k - q_k))``, which does not depend on the rejected
      tokens. Without replacement the draft law of step ``k`` depends on the earlier
      drafts: exact enumeration of the ``V**K`` ordered tuples.
    * :func:`~jaxrob.specdec.spectr`: ``1 - (1 - beta(rho*))^K`` (Sun et al. 2023).
    * :func:`~jaxrob.specdec.lp_optimal`: the coupling LP's optimum.
    * :func:`~jaxrob.specdec.canonical_is` and :func:`~jaxrob.specdec.truncated_is`:
      ``sum_y min(p(y), q_I(y))`` for the law ``q_I`` of the selected token (the
      acceptance of single-draft speculative sampling with draft law ``q_I``).

    Args:
      scheme: a scheme function (e.g. :func:`~jaxrob.specdec.spectr`) or its name.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.
      **options: the scheme's options (``replacement=``, ``s=``, ``alphabet=``).

    Returns:
      ``()`` the acceptance probability.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob.specdec import _schemes
      >>> p = jnp.array([0.5, 0.3, 0.2]); qs = jnp.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
      >>> round(float(acceptance_probability(_schemes.single_draft, p, qs)), 4)
      0.7
    """
    name = _schemes.scheme_name(scheme)
    p, qs = _schemes._inputs(p, qs)
    opts = _schemes._scheme_options(name, p, qs, options)
    if name == "specinfer" and not opts["replacement"]:
        return exact_acceptance(name, p, qs, **opts)
    return _schemes._IMPLS[name].acceptance(p, qs, **opts)


@functools.partial(jax.jit, static_argnames=("name", "replacement", "s", "alphabet", "guard"))
def _enumerate(name, p, qs, replacement=True, s=None, alphabet=None, guard=True):
    k, vocab = qs.shape
    tup = jnp.asarray(_lp.tuples(vocab, k))
    weights = _lp.tuple_probs(qs, replacement=replacement)
    law = _schemes._IMPLS[name].raw_law
    opts = {}
    if name == "specinfer":
        opts["replacement"] = replacement
    if name == "truncated_is":
        opts["s"], opts["alphabet"], opts["guard"] = s, alphabet, guard
    fn = jax.vmap(functools.partial(law, p, qs, **opts))
    n = tup.shape[0]
    if n <= _VMAP_TUPLES:
        dists, accs = fn(tup)
    else:                               # chunks of V**j tuples: no remainder, one compiled body
        chunk = vocab ** max(j for j in range(k + 1) if vocab ** j <= _VMAP_TUPLES)
        dists, accs = jax.lax.map(fn, tup.reshape(n // chunk, chunk, k))
        dists, accs = dists.reshape(n, vocab), accs.reshape(n)
    return weights @ dists, weights @ accs


def exact_marginal(scheme: Any, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
                   **options: Any) -> tuple[jax.Array, jax.Array]:
    """``(P(token = y) for all y, P(accepted >= 0))`` by enumerating all ``V**K`` draft tuples.

    Sums :func:`~jaxrob.specdec.output_distribution` over the draft law (independent
    drafts ``prod_k q_k(x_k)``, or sequential sampling without replacement for
    ``specinfer(..., replacement=False)``). No sampling: the first output must equal
    ``p`` for every valid scheme.

    Args:
      scheme: a scheme function or its name.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.
      **options: the scheme's options.

    Returns:
      ``((V,) output marginal, () acceptance probability)``.
    """
    name = _schemes.scheme_name(scheme)
    p, qs = _schemes._inputs(p, qs)
    opts = _schemes._scheme_options(name, p, qs, options)
    _checks.enumeration_size("exact enumeration", p.shape[0], qs.shape[0], _schemes.ENUMERATION_LIMIT)
    return _enumerate(name, p, qs, **opts)


def exact_acceptance(scheme: Any, p: jax.Array, qs: jax.Array, **options: Any) -> jax.Array:
    """``P(accepted >= 0)`` by enumerating the draft tuples (see :func:`exact_marginal`)."""
    return exact_marginal(scheme, p, qs, **options)[1]


# --------------------------------------------------------------------------------------------
# The optimal acceptance probability


def _ratio_order(p: jax.Array, q: jax.Array) -> jax.Array:
    """Tokens by increasing ``p/q`` (``q = 0`` last: such a token never helps a cut)."""
    ratio = jnp.where(q > 0, p / jnp.where(q > 0, q, 1.0), jnp.inf)
    return jnp.argsort(ratio, stable=True)


@functools.partial(jax.jit, static_argnames=("k",))
def _optimal_identical(p, q, k):
    order = _ratio_order(p, q)
    zero = jnp.zeros((1,), p.dtype)
    p_pre = jnp.concatenate([zero, jnp.cumsum(p[order])])
    q_pre = jnp.concatenate([zero, jnp.cumsum(q[order])])
    return jnp.clip(1.0 - jnp.max(q_pre ** k - p_pre), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _subsets(vocab: int) -> np.ndarray:
    idx = np.arange(1 << vocab)[:, None]
    return ((idx >> np.arange(vocab)[None, :]) & 1).astype(np.float32)


@jax.jit
def _optimal_subsets(p, qs):
    masks = jnp.asarray(_subsets(p.shape[0]), p.dtype)            # (2^V, V)
    gap = jnp.prod(masks @ qs.T, axis=1) - masks @ p
    return jnp.clip(1.0 - jnp.max(gap), 0.0, 1.0)


def optimal_acceptance(p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike, *,
                       identical: bool | None = None) -> jax.Array:
    """The optimal acceptance probability ``P* = 1 - max_S [prod_k q_k(S) - p(S)]`` (closed form).

    The value of the coupling LP (:func:`~jaxrob.specdec.lp_optimal`) and of the
    canonical importance-sampling scheme (:func:`~jaxrob.specdec.canonical_is`), from
    the max-flow/min-cut duality (module docstring; derived). For identical drafts the
    maximum runs over the ``V + 1`` prefixes of the tokens sorted by ``p/q``
    (``O(V log V)``, any ``V``); otherwise over all ``2**V`` token sets (``V <=``
    :data:`SUBSET_LIMIT`).

    Args:
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.
      identical: whether the rows of ``qs`` are identical; ``None`` detects it when
        ``qs`` is concrete (under ``jit``, ``None`` means ``False``).

    Returns:
      ``()`` ``P*``.
    """
    p, qs = _schemes._inputs(p, qs)
    if identical is None:
        identical = bool(_checks.rows_identical_if_concrete(qs))
    elif identical:
        _checks.identical_rows("qs", qs, "when identical=True")
    if identical:
        return _optimal_identical(p, qs[0], qs.shape[0])
    if p.shape[0] > SUBSET_LIMIT:
        raise ValueError(f"optimal_acceptance for non-identical drafts enumerates all 2**V token sets; "
                         f"V = {p.shape[0]} is above the limit {SUBSET_LIMIT} (for identical drafts pass "
                         "identical rows, which takes O(V log V))")
    return _optimal_subsets(p, qs)


def _k2_inputs(p, q):
    p = _checks.target("p", p)
    q = _checks.target("q", q)
    if q.shape != p.shape:
        raise ValueError(f"q has vocabulary size {q.shape[0]} but the target p has {p.shape[0]}; "
                         "both must be over the same V tokens")
    dtype = jnp.result_type(p, q, jnp.float32)
    return p.astype(dtype), q.astype(dtype)


@jax.jit
def _k2_formula(p, q):
    order = jnp.argsort(-jnp.where(q > 0, p / jnp.where(q > 0, q, 1.0), jnp.inf), stable=True)
    zero = jnp.zeros((1,), p.dtype)
    q_head = jnp.concatenate([zero, jnp.cumsum(q[order])])             # sum_{s <= i} q_s, i = 0..V
    p_tail = p.sum() - jnp.concatenate([zero, jnp.cumsum(p[order])])   # sum_{s > i} p_s
    q_tail = q.sum() - q_head
    return jnp.clip(jnp.min(p_tail + q_head ** 2 + 2 * q_head * q_tail), 0.0, 1.0)


def k2_optimal_acceptance(p: jax.typing.ArrayLike, q: jax.typing.ArrayLike) -> jax.Array:
    """The optimal acceptance probability for ``K = 2`` identical drafts, explicit expression.

    With the tokens ordered so that ``p_1/q_1 >= ... >= p_V/q_V`` (``p`` target, ``q``
    draft),

        ``P* = min_{0 <= i <= V} [ sum_{s > i} p_s + (sum_{s <= i} q_s)^2
                                   + 2 (sum_{s <= i} q_s)(sum_{s > i} q_s) ]``

    -- the explicit expression for two identical drafts of Khisti et al. 2025, Theorem 3,
    Eq. (6), in our notation (``p`` target, ``q`` draft; module docstring). It is the
    min-cut formula of :func:`optimal_acceptance` with ``K = 2``, and equals the LP optimum
    in the tests. The bracket is ``p(T) + P(at least one draft outside T)`` for the tail
    set ``T``.

    Args:
      p: ``(V,)`` target distribution.
      q: ``(V,)`` draft distribution (both drafts).

    Returns:
      ``()`` ``P*``.

    References:
      Khisti et al., "Multi-Draft Speculative Sampling: Canonical Decomposition and
      Theoretical Limits", ICLR 2025, arXiv:2410.18234 (Theorem 3, Eq. (6)).
    """
    p, q = _k2_inputs(p, q)
    return _k2_formula(p, q)


@jax.jit
def _k2_gap(p, q):
    order = _ratio_order(p, q)
    zero = jnp.zeros((1,), p.dtype)
    p_pre = jnp.concatenate([zero, jnp.cumsum(p[order])])
    q_pre = jnp.concatenate([zero, jnp.cumsum(q[order])])
    return jnp.max(q_pre ** 2 - p_pre)


def k2_acceptance_is_one(p: jax.typing.ArrayLike, q: jax.typing.ArrayLike, *, atol: float = 1e-6) -> jax.Array:
    """Whether two identical drafts from ``q`` can always be accepted for target ``p``.

    True iff ``(sum_{s in S} q_s)^2 <= sum_{s in S} p_s`` for every token set ``S``:
    the necessary and sufficient condition of Khisti et al. 2025, Theorem 2, Eq. (5), in
    our notation (``p`` target, ``q`` draft). Checked on the ``V + 1`` prefixes of the
    tokens sorted by increasing ``p/q``, which contain a maximiser of ``q(S)^2 - p(S)``
    (derived, module docstring), so it costs ``O(V log V)`` instead of ``2**V`` sets.

    Args:
      p: ``(V,)`` target distribution.
      q: ``(V,)`` draft distribution.
      atol: slack for rounding: the condition is tested as ``max_S [q(S)^2 - p(S)] <= atol``.

    Returns:
      ``()`` bool.

    References:
      Khisti et al., "Multi-Draft Speculative Sampling: Canonical Decomposition and
      Theoretical Limits", ICLR 2025, arXiv:2410.18234 (Theorem 2, Eq. (5)).
    """
    p, q = _k2_inputs(p, q)
    return _k2_gap(p, q) <= atol
