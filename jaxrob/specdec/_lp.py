"""A dense simplex solver in JAX and the linear programs of multi-draft speculative sampling.

:func:`simplex` maximises ``c @ x`` subject to ``A @ x <= b``, ``x >= 0`` for ``b >= 0``
(the origin is feasible, so one phase suffices) with a dense tableau and Bland's
pivoting rule (smallest-index entering variable, smallest-basis-index tie-break in
the ratio test), which cannot cycle. It is a pure function of its arrays: it jits,
vmaps and runs on any backend; its loop is a ``lax.while_loop``.

The selection LPs below are written so that every constraint matrix has entries in
{0, +1, -1} with at most two non-zeros per column arranged as in a network matrix:
they are totally unimodular, every simplex pivot divides by +-1 and the tableau's
constraint part stays integral in floating point. Only the right-hand sides carry
rounding, so float32 solves are accurate to ~1e-6 on the small instances they are
meant for.

* :func:`coupling_lp` -- the optimal coupling of the draft tuple ``X = (X_1..X_K)``,
  ``X_k ~ q_k`` independent, and the output token ``Y ~ p`` maximising ``P(Y in X)``
  (the optimal-transport LP of Sun et al. 2023, arXiv:2310.15141, which Khisti et al.
  2025 take as their starting point). We solve the equivalent *max-flow* form over the
  accepted part only (variables ``u[x, j]``: mass of tuple ``x`` that outputs its
  ``j``-th token; ``sum_j u[x, j] <= Q(x)``, ``sum_{x_j = y} u[x, j] <= p(y)``) and
  complete the rest in product form, ``pi_rej(x, y) = r(x) d(y) / sum(d)`` with
  ``r = Q - accepted out of x`` and ``d = p - accepted into y``. Both marginals are
  then met exactly and the objective is unchanged, so the optimum equals the full
  coupling LP's (derived; the test-suite checks it against ``scipy.optimize.linprog``
  on the full ``V**K x V`` coupling LP).
* :func:`is_lp` -- the importance-sampling LP of the canonical decomposition
  (Khisti et al. 2025, Section 3, Theorem 1): choose draft ``j`` of tuple ``x`` with probability
  ``beta[x, j]``; the chosen token has law ``q_I(y) = sum_x Q(x) sum_{j: x_j = y}
  beta[x, j]``; maximise ``sum_y min(p(y), q_I(y))``, the acceptance of the
  single-draft speculative sampling step that follows. Written with the scaled
  variables ``u = Q beta`` and ``z_y <= min(p(y), q_I(y))``.
* :func:`pair_lp` -- the truncated LP over the top-``s`` tokens for a pair of
  drafts (the paper's "truncated LP" with threshold ``s``: Section 4, Algorithm 1, and
  the two-draft LP of its Appendix I): weights of the ordered pairs inside the top
  ``s`` are LP variables; everything else is fixed by the priority order
  ``p - q_1 q_2`` (see :func:`jaxrob.specdec.truncated_is`).

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
  Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal
  Transport", NeurIPS 2023, arXiv:2310.15141.
  Bland, "New finite pivoting rules for the simplex method", Math. Oper. Res. 2(2), 1977.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _select_checks as _checks

#: Status codes of :class:`LPSolution`.
OPTIMAL, ITERATION_LIMIT, UNBOUNDED = 0, 1, 2


class LPSolution(NamedTuple):
    """Result of :func:`simplex`.

    Attributes:
      x: ``(n,)`` the primal solution (clipped at 0).
      value: ``()`` the objective ``c @ x``.
      status: ``()`` int32: 0 optimal, 1 iteration limit reached, 2 unbounded.
      iterations: ``()`` int32 number of pivots taken.
    """

    x: jax.Array
    value: jax.Array
    status: jax.Array
    iterations: jax.Array


def _default_tol(dtype) -> float:
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-6


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _simplex_core(c: jax.Array, a: jax.Array, b: jax.Array, tol: jax.Array, max_iter: int) -> LPSolution:
    m, n = a.shape
    dtype = c.dtype
    tab = jnp.zeros((m + 1, n + m + 1), dtype)
    tab = tab.at[:m, :n].set(a).at[:m, n:n + m].set(jnp.eye(m, dtype=dtype)).at[:m, -1].set(b)
    tab = tab.at[m, :n].set(-c)
    basis = jnp.arange(n, n + m, dtype=jnp.int32)
    big = jnp.int32(n + m + 1)

    def cond(state):
        _, _, it, status = state
        return (status < 0) & (it < max_iter)

    def body(state):
        tab, basis, it, _ = state
        reduced = tab[m, :-1]
        improving = reduced < -tol
        any_improving = improving.any()
        j = jnp.argmax(improving)                        # Bland: smallest improving index
        col = tab[:m, j]
        rhs = tab[:m, -1]
        pos = col > tol
        ratio = jnp.where(pos, rhs / jnp.where(pos, col, 1.0), jnp.inf)
        rmin = ratio.min()
        tie = pos & (ratio <= rmin + tol * (1.0 + jnp.abs(rmin)))
        r = jnp.argmin(jnp.where(tie, basis, big))      # Bland: smallest basic index among ties
        unbounded = any_improving & ~pos.any()
        pivot_row = tab[r] / tab[r, j]
        new_tab = tab - tab[:, j][:, None] * pivot_row[None, :]
        new_tab = new_tab.at[r].set(pivot_row)
        do = any_improving & ~unbounded
        tab = jnp.where(do, new_tab, tab)
        basis = jnp.where(do, basis.at[r].set(j.astype(jnp.int32)), basis)
        status = jnp.where(~any_improving, OPTIMAL, jnp.where(unbounded, UNBOUNDED, -1)).astype(jnp.int32)
        return tab, basis, it + do.astype(jnp.int32), status

    tab, basis, it, status = lax.while_loop(cond, body, (tab, basis, jnp.int32(0), jnp.int32(-1)))
    status = jnp.where(status < 0, ITERATION_LIMIT, status).astype(jnp.int32)
    full = jnp.zeros((n + m,), dtype).at[basis].set(tab[:m, -1])
    x = jnp.maximum(full[:n], 0.0)
    return LPSolution(x=x, value=c @ x, status=status, iterations=it)


def simplex(c: jax.typing.ArrayLike, a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, *,
            max_iter: int | None = None, tol: float | None = None) -> LPSolution:
    """Maximises ``c @ x`` subject to ``a @ x <= b`` and ``x >= 0``, for ``b >= 0``.

    A dense tableau simplex with Bland's anti-cycling rule, in the dtype of the inputs
    (float64 under ``jax.enable_x64``). Because ``b >= 0``, the slack basis is feasible
    and no phase 1 is needed. Jittable and vmappable (a batch of LPs of one shape is
    solved in lock-step).

    Args:
      c: ``(n,)`` objective.
      a: ``(m, n)`` constraint matrix.
      b: ``(m,)`` right-hand side, ``>= 0``.
      max_iter: pivot limit (static); default ``50 * (m + n)``.
      tol: pivot tolerance; default 1e-6 (float32) or 1e-9 (float64).

    Returns:
      :class:`LPSolution` ``(x, value, status, iterations)``; ``status`` 0 is optimal.

    Example:
      >>> import jax.numpy as jnp
      >>> sol = simplex(jnp.array([1.0, 1.0]), jnp.array([[1.0, 2.0], [3.0, 1.0]]), jnp.array([4.0, 6.0]))
      >>> round(float(sol.value), 4)
      2.8

    References:
      Bland, "New finite pivoting rules for the simplex method", Math. Oper. Res. 2(2), 1977.
    """
    c = jnp.asarray(c)
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if c.ndim != 1 or a.ndim != 2 or b.ndim != 1 or a.shape != (b.shape[0], c.shape[0]):
        raise ValueError(f"simplex needs c (n,), a (m, n), b (m,); got c {c.shape}, a {a.shape}, b {b.shape}")
    if _validate.is_concrete(b) and b.size and float(jnp.min(b)) < 0:
        raise ValueError("simplex needs b >= 0 (the origin must be feasible); got a negative entry "
                         f"{float(jnp.min(b)):.4g}")
    dtype = jnp.result_type(c, a, b, jnp.float32)
    m, n = a.shape
    max_iter = 50 * (m + n) if max_iter is None else _checks.positive_int("max_iter", max_iter)
    tol = _default_tol(dtype) if tol is None else tol
    return _simplex_core(c.astype(dtype), a.astype(dtype), b.astype(dtype), jnp.asarray(tol, dtype), max_iter)


# --------------------------------------------------------------------------------------------
# Draft tuples


@functools.lru_cache(maxsize=None)
def tuples(vocab: int, k: int) -> np.ndarray:
    """All ``V**K`` draft tuples in lexicographic order, ``(V**K, K)`` int32 (static)."""
    return np.asarray(list(itertools.product(range(vocab), repeat=k)), np.int32).reshape(-1, k)


def tuple_index(drafts: jax.Array, vocab: int) -> jax.Array:
    """Row of ``drafts`` in :func:`tuples` (``sum_k drafts[k] V**(K-1-k)``)."""
    k = drafts.shape[0]
    weights = jnp.asarray([vocab ** (k - 1 - i) for i in range(k)], jnp.int32)
    return jnp.sum(drafts.astype(jnp.int32) * weights)


def tuple_probs(qs: jax.Array, *, replacement: bool = True) -> jax.Array:
    """Law of the draft tuple: ``Q(x) = prod_k q_k(x_k)`` (with replacement) or, without
    replacement, ``prod_k q(x_k) / (1 - q(x_1) - ... - q(x_{k-1}))`` for distinct tokens
    (sequential sampling without replacement from ``q = qs[0]``), 0 for tuples with repeats."""
    k, vocab = qs.shape
    tup = tuples(vocab, k)
    if replacement:
        return jnp.prod(qs[jnp.arange(k)[None, :], tup], axis=1)
    q = qs[0]
    probs = q[tup]                                              # (N, K)
    used = jnp.concatenate([jnp.zeros_like(probs[:, :1]), jnp.cumsum(probs, axis=1)[:, :-1]], axis=1)
    denom = 1.0 - used
    distinct = np.array([len(set(t)) == k for t in tup])
    step = jnp.where(denom > 0, probs / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.where(jnp.asarray(distinct), jnp.prod(step, axis=1), 0.0)


# --------------------------------------------------------------------------------------------
# The coupling (max-flow) LP and the importance-sampling LP


@functools.lru_cache(maxsize=None)
def _flow_matrix(vocab: int, k: int) -> np.ndarray:
    """``(N + V, N K)``: rows ``x`` (out of tuple ``x``) then rows ``y`` (into token ``y``)."""
    tup = tuples(vocab, k)
    n = tup.shape[0]
    a = np.zeros((n + vocab, n * k), np.float32)
    cols = np.arange(n * k)
    a[np.repeat(np.arange(n), k), cols] = 1.0
    a[n + tup.reshape(-1), cols] = 1.0
    return a


class Coupling(NamedTuple):
    """The optimal coupling of :func:`coupling_lp`.

    Attributes:
      accepted: ``(N, V)`` the accepted part ``pi(x, y)``, non-zero only for ``y`` in ``x``.
      rejected_tuple: ``(N,)`` ``r(x) = Q(x) - sum_y accepted(x, y)``.
      rejected_token: ``(V,)`` ``d(y) = p(y) - sum_x accepted(x, y)``; the rejected part of
        the coupling is ``r(x) d(y) / sum(d)``.
      tuple_probs: ``(N,)`` ``Q(x)``.
      value: ``()`` the optimal acceptance probability ``sum(accepted)``.
      status: ``()`` the simplex status (0 optimal).
    """

    accepted: jax.Array
    rejected_tuple: jax.Array
    rejected_token: jax.Array
    tuple_probs: jax.Array
    value: jax.Array
    status: jax.Array


def coupling_lp(p: jax.Array, qs: jax.Array) -> Coupling:
    """Solves the optimal-coupling LP for independent drafts ``X_k ~ qs[k]`` and target ``p``.

    Maximises ``P(Y in {X_1..X_K})`` over couplings of ``X`` (law ``prod_k q_k``) and
    ``Y ~ p`` in its max-flow form (module docstring), then repairs float rounding so
    that the accepted part never exceeds either marginal; the product-form completion
    then makes both marginals exact.

    Args:
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.

    Returns:
      :class:`Coupling`. Tuples are ordered as in :func:`tuples`.
    """
    k, vocab = qs.shape
    tup = tuples(vocab, k)
    n = tup.shape[0]
    q_tuple = tuple_probs(qs)
    a = jnp.asarray(_flow_matrix(vocab, k), p.dtype)
    b = jnp.concatenate([q_tuple, p])
    sol = simplex(jnp.ones((n * k,), p.dtype), a, b)
    u = sol.x.reshape(n, k)
    onehot = jax.nn.one_hot(jnp.asarray(tup), vocab, dtype=p.dtype)     # (N, K, V)
    acc = jnp.einsum("nk,nkv->nv", u, onehot)
    # Feasibility repair (rounding only): rows <= Q, then columns <= p.
    row = acc.sum(1)
    acc = acc * jnp.where(row > q_tuple, q_tuple / jnp.where(row > 0, row, 1.0), 1.0)[:, None]
    col = acc.sum(0)
    acc = acc * jnp.where(col > p, p / jnp.where(col > 0, col, 1.0), 1.0)[None, :]
    r = jnp.maximum(q_tuple - acc.sum(1), 0.0)
    d = jnp.maximum(p - acc.sum(0), 0.0)
    return Coupling(acc, r, d, q_tuple, acc.sum(), sol.status)


class ISWeights(NamedTuple):
    """The importance-sampling step of the canonical decomposition.

    Attributes:
      beta: ``(N, K)`` selection probabilities: given tuple ``x``, pick draft ``j``
        with probability ``beta[x, j]`` (rows sum to 1).
      q_is: ``(V,)`` the law of the selected token, ``q_I``.
      value: ``()`` ``sum_y min(p(y), q_I(y))``, the acceptance of the scheme.
      status: ``()`` the simplex status (0 optimal).
    """

    beta: jax.Array
    q_is: jax.Array
    value: jax.Array
    status: jax.Array


@functools.lru_cache(maxsize=None)
def _is_matrix(vocab: int, k: int) -> np.ndarray:
    """``(N + 2V, N K + V)``: rows ``x``: ``sum_j u <= Q``; rows ``y``: ``z_y - sum u <= 0``; rows ``z_y <= p_y``."""
    tup = tuples(vocab, k)
    n = tup.shape[0]
    a = np.zeros((n + 2 * vocab, n * k + vocab), np.float32)
    cols = np.arange(n * k)
    a[np.repeat(np.arange(n), k), cols] = 1.0
    a[n + tup.reshape(-1), cols] = -1.0
    a[n + np.arange(vocab), n * k + np.arange(vocab)] = 1.0
    a[n + vocab + np.arange(vocab), n * k + np.arange(vocab)] = 1.0
    return a


def is_weights_from_beta(beta: jax.Array, qs: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(q_I, sum min(p, q_I))`` for selection probabilities ``beta`` over :func:`tuples`."""
    k, vocab = qs.shape
    tup = tuples(vocab, k)
    q_tuple = tuple_probs(qs)
    onehot = jax.nn.one_hot(jnp.asarray(tup), vocab, dtype=p.dtype)
    q_is = jnp.einsum("n,nk,nkv->v", q_tuple, beta, onehot)
    return q_is, jnp.minimum(p, q_is).sum()


def is_lp(p: jax.Array, qs: jax.Array) -> ISWeights:
    """Solves the importance-sampling LP of the canonical decomposition (small ``V``).

    Maximise ``sum_y min(p(y), q_I(y))`` over the selection probabilities
    ``beta[x, j]`` (Khisti et al. 2025, Theorem 1, the canonical decomposition: the optimum
    equals the optimal acceptance probability). Unused selection mass of a tuple (the LP only needs
    ``sum_j beta <= 1``) goes to its first draft; that can only raise ``q_I``.

    Args:
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.

    Returns:
      :class:`ISWeights`.
    """
    k, vocab = qs.shape
    n = vocab ** k
    q_tuple = tuple_probs(qs)
    a = jnp.asarray(_is_matrix(vocab, k), p.dtype)
    b = jnp.concatenate([q_tuple, jnp.zeros((vocab,), p.dtype), p])
    c = jnp.concatenate([jnp.zeros((n * k,), p.dtype), jnp.ones((vocab,), p.dtype)])
    sol = simplex(c, a, b)
    u = sol.x[: n * k].reshape(n, k)
    beta = jnp.where(q_tuple[:, None] > 0, u / jnp.where(q_tuple > 0, q_tuple, 1.0)[:, None], 0.0)
    beta = jnp.clip(beta, 0.0, 1.0)
    total = beta.sum(1)
    beta = jnp.where(total[:, None] > 1.0, beta / jnp.where(total > 0, total, 1.0)[:, None], beta)
    beta = beta.at[:, 0].add(jnp.maximum(1.0 - beta.sum(1), 0.0))
    q_is, value = is_weights_from_beta(beta, qs, p)
    return ISWeights(beta, q_is, value, sol.status)


# --------------------------------------------------------------------------------------------
# The truncated pair LP


@functools.lru_cache(maxsize=None)
def _pair_matrix(s: int) -> np.ndarray:
    """``(s*s + 2s, 2 s*s + s)``; variables ``a[i, j]`` (pair ``(i, j)`` -> token ``i``),
    ``b[i, j]`` (-> token ``j``), ``z_i``; rows: ``a + b <= Q[i, j]``,
    ``z_i - sum_j a[i, j] - sum_j b[j, i] <= fixed_i``, ``z_i <= p_i``."""
    ss = s * s
    a = np.zeros((ss + 2 * s, 2 * ss + s), np.float32)
    idx = np.arange(ss)
    a[idx, idx] = 1.0
    a[idx, ss + idx] = 1.0
    first = idx // s
    second = idx % s
    a[ss + first, idx] = -1.0
    a[ss + second, ss + idx] = -1.0
    a[ss + np.arange(s), 2 * ss + np.arange(s)] = 1.0
    a[ss + s + np.arange(s), 2 * ss + np.arange(s)] = 1.0
    return a


def pair_lp(p_top: jax.Array, fixed: jax.Array, q_pair: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The truncated LP over ``s`` tokens for two drafts (Khisti et al. 2025, Algorithm 1).

    Variables: for each ordered pair ``(i, j)``, ``i != j``, of top tokens the mass sent
    to ``i`` and to ``j`` (at most ``q_1(i) q_2(j)`` together; any remainder goes to ``i``,
    which can only raise ``q_I``), and ``z_i <= min(p_i, q_I(i))``; maximise ``sum z``.
    The paper writes the same LP with one weight per pair in ``[0, 1]``.

    Args:
      p_top: ``(s,)`` target probabilities of the ``s`` top-priority tokens.
      fixed: ``(s,)`` the part of ``q_I`` on those tokens fixed by the priority rule
        (ties with themselves and wins over every lower-priority token).
      q_pair: ``(s, s)`` ``q_1(i) q_2(j)`` for ``i != j`` (diagonal ignored).

    Returns:
      ``(w, status)``: ``w[i, j]`` the probability of choosing the first draft when the
      drafts are ``(i, j)``, ``i != j`` (1 on the diagonal); the simplex status.
    """
    s = p_top.shape[0]
    q_pair = q_pair * (1.0 - jnp.eye(s, dtype=q_pair.dtype))
    a = jnp.asarray(_pair_matrix(s), p_top.dtype)
    b = jnp.concatenate([q_pair.reshape(-1), jnp.maximum(fixed, 0.0), p_top])
    c = jnp.concatenate([jnp.zeros((2 * s * s,), p_top.dtype), jnp.ones((s,), p_top.dtype)])
    sol = simplex(c, a, b)
    to_second = sol.x[s * s: 2 * s * s].reshape(s, s)
    w = jnp.where(q_pair > 0, 1.0 - to_second / jnp.where(q_pair > 0, q_pair, 1.0), 1.0)
    w = jnp.clip(w, 0.0, 1.0)
    return jnp.where(jnp.eye(s, dtype=bool), 1.0, w), sol.status


def as_float(x: Any) -> jax.Array:
    """A float array (float32 unless x64 inputs)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x, jnp.float32))
