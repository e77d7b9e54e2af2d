"""Token-level draft selection for multi-draft speculative sampling.

K draft tokens ``drafts[k] ~ qs[k]`` are drawn independently (or, for SpecInfer without
replacement, sequentially without replacement from one draft model); a *selection
scheme* reads them together with the target distribution ``p`` and outputs one token
whose law is exactly ``p``, accepting one of the drafts as often as it can.

Every scheme here is a pure function ``scheme(key, p, qs, drafts, **options) ->
(token, accepted)`` over a vocabulary of ``V`` tokens:

* ``p``: ``(V,)`` the target distribution; ``qs``: ``(K, V)`` the draft distributions
  (identical drafts = identical rows); ``drafts``: ``(K,)`` int32.
* ``token``: ``()`` int32, distributed exactly as ``p`` when the drafts follow their law.
* ``accepted``: ``()`` int32, the index of the draft the scheme accepted
  (``drafts[accepted] == token``), or ``-1`` when the token came from a residual
  distribution. A residual token can coincide with a draft token; that is not counted
  as an acceptance (:func:`acceptance_probability` is ``P(accepted >= 0)``).

They jit, vmap over a batch of positions (``jax.vmap(scheme)(keys, ps, qss, draftss)``)
and give the same output for the same key. Their exact conditional law given the
drafts is :func:`output_distribution`.

Notation: the paper of Khisti et al. writes ``p`` for the draft and ``q`` for the
target (following SpecTr); we follow the issue and write ``p`` for the target.

References:
  Leviathan, Kalman, Matias, "Fast Inference from Transformers via Speculative
  Decoding", ICML 2023, arXiv:2211.17192.
  Chen, Borgeaud, Irving, Lespiau, Sifre, Jumper, "Accelerating Large Language Model
  Decoding with Speculative Sampling", arXiv:2302.01318, 2023.
  Miao et al., "SpecInfer: Accelerating Large Language Model Serving with Tree-based
  Speculative Inference and Verification", ASPLOS 2024, arXiv:2305.09781.
  Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal
  Transport", NeurIPS 2023, arXiv:2310.15141.
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _lp
from . import _select_checks as _checks

#: Largest number of draft tuples ``V**K`` the exact LP schemes (:func:`lp_optimal`,
#: :func:`canonical_is`) enumerate; their simplex tableau has about ``V**K (K + 1)`` columns.
LP_TUPLE_LIMIT = 1024
#: Largest number of draft tuples enumerated to compute an acceptance probability exactly.
ENUMERATION_LIMIT = 1 << 20


# --------------------------------------------------------------------------------------------
# Shared kernels


def _accept_prob(p_val: jax.Array, q_val: jax.Array) -> jax.Array:
    """``P(U q < p)`` for ``U ~ U[0, 1)``: ``min(1, p/q)``, and ``1[p > 0]`` when ``q = 0``."""
    safe_q = jnp.where(q_val > 0, q_val, 1.0)
    return jnp.where(q_val > 0, jnp.minimum(1.0, p_val / safe_q), (p_val > 0).astype(p_val.dtype))


def _normalise(w: jax.Array, fallback: jax.Array) -> jax.Array:
    total = w.sum()
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), fallback)


def _residual(p: jax.Array, q: jax.Array) -> jax.Array:
    """The normalised residual ``max(0, p - q) / sum(max(0, p - q))`` (``p`` if it is all zero)."""
    return _normalise(jnp.maximum(p - q, 0.0), p)


_BLOCK = 256


def _inverse_cdf(w: jax.Array, u: jax.Array) -> jax.Array:
    """Smallest ``i`` with ``cumsum(w)[i] > u`` (``searchsorted(..., side="right")``), clamped to the
    last index of positive weight (guards ``u`` rounding up to the total)."""
    idx = jnp.sum(jnp.cumsum(w) <= u)
    last = w.shape[0] - 1 - jnp.argmax((w > 0)[::-1])
    return jnp.where(idx >= w.shape[0], last, idx)


def _sample_index(key: jax.Array, w: jax.Array) -> jax.Array:
    """One index drawn with probability ``w / sum(w)`` (``w >= 0``, ``sum(w) > 0``).

    Inverse CDF in two levels -- blocks of 256 weights, then the weights inside the chosen
    block -- so a draw costs one pass of sums over ``V`` plus two short prefix sums (a
    prefix sum over all of ``V`` is slow on XLA's CPU backend)."""
    v = w.shape[0]
    if v <= 2 * _BLOCK:
        return _inverse_cdf(w, jax.random.uniform(key, (), w.dtype) * w.sum()).astype(jnp.int32)
    nb = -(-v // _BLOCK)
    blocks = jnp.pad(w, (0, nb * _BLOCK - v)).reshape(nb, _BLOCK)
    sums = blocks.sum(1)
    u = jax.random.uniform(key, (), w.dtype) * sums.sum()
    b = _inverse_cdf(sums, u)
    u_in = u - jnp.where(b > 0, jnp.cumsum(sums)[jnp.maximum(b - 1, 0)], 0.0)
    i = _inverse_cdf(blocks[b], jnp.maximum(u_in, 0.0))
    return (b * _BLOCK + i).astype(jnp.int32)


def _uniform(key: jax.Array, dtype) -> jax.Array:
    return jax.random.uniform(key, (), dtype)


def _first_index(drafts: jax.Array, token: jax.Array) -> jax.Array:
    return jnp.argmax(drafts == token).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# Single-draft speculative sampling


def _single_sample(key, p, qs, drafts):
    k_acc, k_res = jax.random.split(key)
    x, q = drafts[0], qs[0]
    accept = _uniform(k_acc, p.dtype) < _accept_prob(p[x], q[x])
    y = _sample_index(k_res, _residual(p, q))
    return jnp.where(accept, x, y).astype(jnp.int32), jnp.where(accept, 0, -1).astype(jnp.int32)


def _single_law(p, qs, drafts):
    x, q = drafts[0], qs[0]
    a = _accept_prob(p[x], q[x])
    return a * jax.nn.one_hot(x, p.shape[0], dtype=p.dtype) + (1 - a) * _residual(p, q), a


def _single_acceptance(p, qs):
    return jnp.minimum(p, qs[0]).sum()


# --------------------------------------------------------------------------------------------
# SpecInfer: recursive rejection sampling


def _specinfer_draft_law(q_row: jax.Array, used: jax.Array, replacement: bool) -> jax.Array:
    if replacement:
        return q_row
    masked = jnp.where(used, 0.0, q_row)
    return _normalise(masked, q_row)


def _specinfer_sample(key, p, qs, drafts, replacement):
    k, vocab = qs.shape
    keys = jax.random.split(key, k + 1)

    def step(carry, inp):
        p_cur, done, token, idx, used = carry
        j, key_j, x, q_row = inp
        q_j = _specinfer_draft_law(q_row, used, replacement)
        acc = (~done) & (_uniform(key_j, p.dtype) < _accept_prob(p_cur[x], q_j[x]))
        token = jnp.where(acc, x, token)
        idx = jnp.where(acc, j, idx)
        p_cur = jnp.where(done | acc, p_cur, _residual(p_cur, q_j))
        return (p_cur, done | acc, token, idx, used.at[x].set(True)), None

    init = (p, jnp.asarray(False), jnp.int32(0), jnp.int32(-1), jnp.zeros((vocab,), bool))
    (p_fin, done, token, idx, _), _ = lax.scan(step, init, (jnp.arange(k, dtype=jnp.int32), keys[:k], drafts, qs))
    y = _sample_index(keys[k], p_fin)
    return jnp.where(done, token, y).astype(jnp.int32), jnp.where(done, idx, -1).astype(jnp.int32)


def _specinfer_law(p, qs, drafts, replacement):
    k, vocab = qs.shape

    def step(carry, inp):
        p_cur, reach, dist, used = carry
        x, q_row = inp
        q_j = _specinfer_draft_law(q_row, used, replacement)
        a = _accept_prob(p_cur[x], q_j[x])
        dist = dist + reach * a * jax.nn.one_hot(x, vocab, dtype=p.dtype)
        return (_residual(p_cur, q_j), reach * (1 - a), dist, used.at[x].set(True)), None

    init = (p, jnp.asarray(1.0, p.dtype), jnp.zeros_like(p), jnp.zeros((vocab,), bool))
    (p_fin, reach, dist, _), _ = lax.scan(step, init, (drafts, qs))
    return dist + reach * p_fin, 1 - reach


def _specinfer_acceptance_replacement(p, qs):
    """``1 - prod_k (1 - beta_k)``, ``beta_k = sum min(p_k, q_k)``, ``p_{k+1} = residual(p_k, q_k)``:
    the residual chain does not depend on the rejected tokens (derived)."""

    def step(carry, q):
        p_cur, reject = carry
        return (_residual(p_cur, q), reject * (1 - jnp.minimum(p_cur, q).sum())), None

    (_, reject), _ = lax.scan(step, (p, jnp.asarray(1.0, p.dtype)), qs)
    return 1 - reject


# --------------------------------------------------------------------------------------------
# SpecTr K-SEQ


def _spectr_beta(p, q, rho):
    return jnp.minimum(q, p / rho).sum()


def _spectr_rho(p: jax.Array, q: jax.Array, k: int, iters: int = 12) -> jax.Array:
    """Smallest ``rho`` in ``[1, K]`` with ``h(rho) = 1 - (1 - beta(rho))**K - rho beta(rho) <= 0``.

    ``h`` is continuous and decreasing (``beta`` decreases, ``rho beta(rho) = sum min(rho q, p)``
    increases), ``h(K) <= 0`` by Bernoulli's inequality. Regula falsi with the Illinois
    modification on the bracket ``[lo, hi]``, ``h(lo) > 0 >= h(hi)``; returns ``hi``, so the
    residual of K-SEQ stays non-negative. One pass over ``V`` per iteration; 12 iterations
    put ``rho`` within ~1e-5 of the float64 root on 300 random instances (V up to 3,000,
    K up to 8), an acceptance loss below 1e-6."""

    def h(rho):
        beta = _spectr_beta(p, q, rho)
        return 1 - (1 - beta) ** k - rho * beta

    one = jnp.asarray(1.0, p.dtype)
    hi0 = jnp.asarray(float(k), p.dtype)

    def body(_, state):
        lo, hi, hlo, hhi, side = state
        denom = hlo - hhi
        x = jnp.where(denom > 0, lo + hlo * (hi - lo) / jnp.where(denom > 0, denom, 1.0), 0.5 * (lo + hi))
        x = jnp.clip(x, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo))   # keep it strictly inside
        hx = h(x)
        valid = hx <= 0
        # Illinois: halve the retained end's value when the same end is kept twice in a row
        lo_n, hlo_n = jnp.where(valid, lo, x), jnp.where(valid, hlo, hx)
        hi_n, hhi_n = jnp.where(valid, x, hi), jnp.where(valid, hx, hhi)
        hlo_n = jnp.where(valid & (side == 1), 0.5 * hlo_n, hlo_n)
        hhi_n = jnp.where(~valid & (side == -1), 0.5 * hhi_n, hhi_n)
        return lo_n, hi_n, hlo_n, hhi_n, jnp.where(valid, 1, -1)

    h1 = h(one)
    lo, hi, *_ = lax.fori_loop(0, iters, body, (one, hi0, h1, h(hi0), jnp.int32(0)))
    return jnp.where(h1 <= 0, one, hi)


def _spectr_parts(p, q, k):
    rho = _spectr_rho(p, q, k)
    beta = _spectr_beta(p, q, rho)
    p_acc = 1 - (1 - beta) ** k
    scale = jnp.where(beta > 0, p_acc / jnp.where(beta > 0, beta, 1.0), 0.0)
    residual = _normalise(jnp.maximum(p - scale * jnp.minimum(q, p / rho), 0.0), p)
    return rho, beta, residual


def _spectr_sample(key, p, qs, drafts):
    k = qs.shape[0]
    q = qs[0]
    rho, _, residual = _spectr_parts(p, q, k)
    k_acc, k_res = jax.random.split(key)
    a = _accept_prob(p[drafts], rho * q[drafts])
    accepts = jax.random.uniform(k_acc, (k,), p.dtype) < a
    first = jnp.argmax(accepts).astype(jnp.int32)
    any_acc = accepts.any()
    y = _sample_index(k_res, residual)
    return jnp.where(any_acc, drafts[first], y).astype(jnp.int32), jnp.where(any_acc, first, -1).astype(jnp.int32)


def _spectr_law(p, qs, drafts):
    k, vocab = qs.shape
    q = qs[0]
    rho, _, residual = _spectr_parts(p, q, k)
    a = _accept_prob(p[drafts], rho * q[drafts])
    reach = jnp.concatenate([jnp.ones((1,), p.dtype), jnp.cumprod(1 - a)])
    first = reach[:-1] * a
    dist = jnp.einsum("k,kv->v", first, jax.nn.one_hot(drafts, vocab, dtype=p.dtype)) + reach[-1] * residual
    return dist, 1 - reach[-1]


def _spectr_acceptance(p, qs):
    k = qs.shape[0]
    q = qs[0]
    rho = _spectr_rho(p, q, k)
    return 1 - (1 - _spectr_beta(p, q, rho)) ** k


# --------------------------------------------------------------------------------------------
# The optimal coupling (LP)


def _lp_conditional(p, qs, drafts):
    """``(weights (2V,), total)``: accepted part then rejected part of ``pi(x_t, .)``."""
    vocab = p.shape[0]
    cp = _lp.coupling_lp(p, qs)
    t = _lp.tuple_index(drafts, vocab)
    d_total = cp.rejected_token.sum()
    rej = jnp.where(d_total > 0, cp.rejected_tuple[t] * cp.rejected_token / jnp.where(d_total > 0, d_total, 1.0), 0.0)
    acc = cp.accepted[t]
    weights = jnp.concatenate([acc, rej])
    impossible = weights.sum() <= 0                          # Q(x) = 0: a tuple the drafts cannot produce
    weights = jnp.where(impossible, jnp.concatenate([jnp.zeros_like(p), p]), weights)
    return weights


def _lp_sample(key, p, qs, drafts):
    vocab = p.shape[0]
    j = _sample_index(key, _lp_conditional(p, qs, drafts))
    token = (j % vocab).astype(jnp.int32)
    return token, jnp.where(j < vocab, _first_index(drafts, token), -1).astype(jnp.int32)


def _lp_law(p, qs, drafts):
    vocab = p.shape[0]
    w = _lp_conditional(p, qs, drafts)
    w = w / w.sum()
    return w[:vocab] + w[vocab:], w[:vocab].sum()


def _lp_acceptance(p, qs):
    return _lp.coupling_lp(p, qs).value


# --------------------------------------------------------------------------------------------
# The canonical decomposition: importance sampling + single-draft speculative sampling


def _is_then_sd_sample(key, p, drafts, beta_t, q_is):
    k_sel, k_acc, k_res = jax.random.split(key, 3)
    j = _sample_index(k_sel, beta_t)
    x = drafts[j]
    accept = _uniform(k_acc, p.dtype) < _accept_prob(p[x], q_is[x])
    y = _sample_index(k_res, _residual(p, q_is))
    return jnp.where(accept, x, y).astype(jnp.int32), jnp.where(accept, j, -1).astype(jnp.int32)


def _is_then_sd_law(p, drafts, beta_t, q_is):
    vocab = p.shape[0]
    a = _accept_prob(p[drafts], q_is[drafts])                 # (K,)
    dist = jnp.einsum("k,kv->v", beta_t * a, jax.nn.one_hot(drafts, vocab, dtype=p.dtype))
    acc = (beta_t * a).sum()
    return dist + (1 - acc) * _residual(p, q_is), acc


def _canonical_parts(p, qs, drafts):
    isw = _lp.is_lp(p, qs)
    return isw.beta[_lp.tuple_index(drafts, p.shape[0])], isw.q_is


def _canonical_sample(key, p, qs, drafts):
    beta_t, q_is = _canonical_parts(p, qs, drafts)
    return _is_then_sd_sample(key, p, drafts, beta_t, q_is)


def _canonical_law(p, qs, drafts):
    beta_t, q_is = _canonical_parts(p, qs, drafts)
    return _is_then_sd_law(p, drafts, beta_t, q_is)


def _canonical_acceptance(p, qs):
    return _lp.is_lp(p, qs).value


# --------------------------------------------------------------------------------------------
# Truncated importance sampling (truncated LP / truncated alphabet)


class PairRule(NamedTuple):
    """The selection rule of one round of :func:`truncated_is` (two drafts ``(a, b)``).

    Attributes:
      rank: ``(V,)`` int32 priority (0 = highest); tokens outside a truncated alphabet
        share the rank ``alphabet``.
      top: ``(s,)`` the ``s`` highest-priority tokens (ranks ``0..s-1``).
      w: ``(s, s)`` LP weights: probability of choosing the first draft for a pair of
        top tokens ``(top[i], top[j])``.
      q_is: ``(V,)`` the law of the chosen token.
      status: ``()`` the simplex status of the truncated LP (0 optimal).
    """

    rank: jax.Array
    top: jax.Array
    w: jax.Array
    q_is: jax.Array
    status: jax.Array


_TOPK_BLOCK = 1024


def _top_k_indices(x: jax.Array, k: int) -> jax.Array:
    """Indices of the ``k`` largest entries, largest first, ties to the lower index (as ``lax.top_k``).

    For long vectors, in two stages (top ``k`` of each block of 1024, then of the
    candidates): the same result, and it keeps XLA's CPU backend on its fast top-k path
    inside programs that also hold a ``while_loop`` (a single ``top_k`` over 49,152 entries
    was measured at ~25 ms per row there, the cost of a full sort, vs ~1 ms in two stages)."""
    v = x.shape[0]
    if k > _TOPK_BLOCK or v <= 4 * _TOPK_BLOCK:
        return lax.top_k(x, k)[1].astype(jnp.int32)
    nb = -(-v // _TOPK_BLOCK)
    blocks = jnp.pad(x, (0, nb * _TOPK_BLOCK - v), constant_values=-jnp.inf).reshape(nb, _TOPK_BLOCK)
    vals, idx = lax.top_k(blocks, k)
    idx = idx + (jnp.arange(nb, dtype=idx.dtype) * _TOPK_BLOCK)[:, None]
    _, j = lax.top_k(vals.reshape(-1), k)
    return idx.reshape(-1)[j].astype(jnp.int32)


def _pair_rule(p: jax.Array, q1: jax.Array, q2: jax.Array, s: int, alphabet: int | None) -> PairRule:
    vocab = p.shape[0]
    score = p - q1 * q2
    tot1, tot2 = q1.sum(), q2.sum()
    if alphabet is None:
        order = jnp.argsort(-score, stable=True).astype(jnp.int32)
        rank = jnp.zeros((vocab,), jnp.int32).at[order].set(jnp.arange(vocab, dtype=jnp.int32))
        below1 = jnp.zeros_like(q1).at[order].set(tot1 - jnp.cumsum(q1[order]))
        below2 = jnp.zeros_like(q2).at[order].set(tot2 - jnp.cumsum(q2[order]))
        top = order[:s]
    else:
        inside_tokens = _top_k_indices(score, alphabet)
        rank = jnp.full((vocab,), alphabet, jnp.int32).at[inside_tokens].set(jnp.arange(alphabet, dtype=jnp.int32))
        inside = jnp.zeros((vocab,), bool).at[inside_tokens].set(True)
        in1, in2 = q1[inside_tokens], q2[inside_tokens]
        out1, out2 = tot1 - in1.sum(), tot2 - in2.sum()
        # inside: every lower-ranked inside token and every outside token ranks below;
        # outside: the other outside tokens tie (each side chosen with probability 1/2).
        below1 = jnp.where(inside, jnp.zeros_like(q1).at[inside_tokens].set(out1 + in1.sum() - jnp.cumsum(in1)),
                           0.5 * (out1 - q1))
        below2 = jnp.where(inside, jnp.zeros_like(q2).at[inside_tokens].set(out2 + in2.sum() - jnp.cumsum(in2)),
                           0.5 * (out2 - q2))
        top = inside_tokens[:s]
    base = q1 * q2 + q1 * below2 + q2 * below1
    # The top-s block: pairs inside it are LP variables; every token outside ranks below.
    t1, t2 = q1[top], q2[top]
    rest1, rest2 = tot1 - t1.sum(), tot2 - t2.sum()
    fixed = t1 * t2 + t1 * rest2 + t2 * rest1
    q_pair = t1[:, None] * t2[None, :]
    w, status = _lp.pair_lp(p[top], fixed, q_pair)
    off = 1.0 - jnp.eye(s, dtype=p.dtype)
    q_top = fixed + (q_pair * w * off).sum(1) + (q_pair * (1 - w) * off).sum(0)
    q_is = base.at[top].set(q_top)
    return PairRule(rank, top, w, q_is, status)


def _pair_weight(rule: PairRule, a: jax.Array, b: jax.Array, s: int) -> jax.Array:
    """Probability that the rule chooses the first draft ``a`` over ``b``."""
    ra, rb = rule.rank[a], rule.rank[b]
    both_top = (ra < s) & (rb < s)
    w_top = rule.w[jnp.minimum(ra, s - 1), jnp.minimum(rb, s - 1)]
    by_rank = jnp.where(ra < rb, 1.0, jnp.where(ra > rb, 0.0, 0.5)).astype(rule.w.dtype)
    return jnp.where(a == b, 1.0, jnp.where(both_top, w_top, by_rank))


def _truncated_rounds(p, qs, drafts, s, alphabet, guard, track_positions: bool, key=None):
    """Runs the tournament. Returns ``(q_is, winner_pos, pos_probs)``; with a ``key`` the
    winner is drawn, with ``track_positions`` its law over the draft positions is tracked."""
    k = qs.shape[0]
    init = (qs[0], jnp.int32(0), jax.nn.one_hot(0, k, dtype=p.dtype))
    if k == 1:
        return init
    keys = None if key is None else jax.random.split(key, k - 1)

    def round_(carry, inp):
        q_w, win_pos, pos_probs = carry
        r, q_r, x_r, key_r = inp
        rule = _pair_rule(p, q_w, q_r, s, alphabet)
        # Use the round only if it beats keeping the incumbent (weight 1 on every pair, law q_w):
        # the truncations can make the LP's rule worse than ignoring the new draft (ours).
        use = (jnp.minimum(p, rule.q_is).sum() > jnp.minimum(p, q_w).sum()) if guard else jnp.asarray(True)

        def weight(a):
            return jnp.where(use, _pair_weight(rule, a, x_r, s), 1.0)

        if key_r is not None:
            keep = _uniform(key_r, p.dtype) < weight(drafts[win_pos])
            win_pos = jnp.where(keep, win_pos, r)
        if track_positions:
            wv = jax.vmap(weight)(drafts)
            moved = (pos_probs * (1 - wv)).sum()
            pos_probs = (pos_probs * wv).at[r].add(moved)
        return (jnp.where(use, rule.q_is, q_w), win_pos, pos_probs), None

    (q_is, win, pos), _ = lax.scan(round_, init, (jnp.arange(1, k, dtype=jnp.int32), qs[1:], drafts[1:], keys))
    return q_is, win, pos


def _truncated_sample(key, p, qs, drafts, s, alphabet, guard):
    k_sel, k_sd = jax.random.split(key)
    q_is, win, _ = _truncated_rounds(p, qs, drafts, s, alphabet, guard, False, key=k_sel)
    beta_t = jax.nn.one_hot(win, qs.shape[0], dtype=p.dtype)
    return _is_then_sd_sample(k_sd, p, drafts, beta_t, q_is)


def _truncated_law(p, qs, drafts, s, alphabet, guard):
    q_is, _, pos = _truncated_rounds(p, qs, drafts, s, alphabet, guard, True)
    return _is_then_sd_law(p, drafts, pos, q_is)


def _truncated_acceptance(p, qs, s, alphabet, guard):
    q_is, _, _ = _truncated_rounds(p, qs, jnp.zeros((qs.shape[0],), jnp.int32), s, alphabet, guard, False)
    return jnp.minimum(p, q_is).sum()


# --------------------------------------------------------------------------------------------
# Registry and public API


class _Impl(NamedTuple):
    sample: Callable[..., Any]
    law: Callable[..., Any]
    acceptance: Callable[..., Any]
    option_names: tuple[str, ...]
    raw_law: Callable[..., Any]


_IMPLS: dict[str, _Impl] = {}


def _jit(fn, statics):
    return jax.jit(fn, static_argnames=statics) if statics else jax.jit(fn)


def _register(name, sample, law, acceptance, options=()):
    _IMPLS[name] = _Impl(_jit(sample, options), _jit(law, options), _jit(acceptance, options), tuple(options), law)


_register("single_draft", _single_sample, _single_law, _single_acceptance)
_register("specinfer", _specinfer_sample, _specinfer_law,
          lambda p, qs, replacement: _specinfer_acceptance_replacement(p, qs), ("replacement",))
_register("spectr", _spectr_sample, _spectr_law, _spectr_acceptance)
_register("lp_optimal", _lp_sample, _lp_law, _lp_acceptance)
_register("canonical_is", _canonical_sample, _canonical_law, _canonical_acceptance)
_register("truncated_is", _truncated_sample, _truncated_law, _truncated_acceptance, ("s", "alphabet", "guard"))


def _inputs(p, qs):
    p = _checks.target("p", p)
    qs = _checks.drafts_dists("qs", qs, p.shape[0])
    dtype = jnp.result_type(p, qs, jnp.float32)
    return p.astype(dtype), qs.astype(dtype)


def _scheme_options(name: str, p: jax.Array, qs: jax.Array, options: dict[str, Any]) -> dict[str, Any]:
    """Validates the options of scheme ``name`` (and the scheme's own input requirements)."""
    allowed = _IMPLS[name].option_names
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{name} got unexpected option(s) {unknown}; it accepts {list(allowed) or 'none'}")
    k, vocab = qs.shape
    out = dict(options)
    if name == "specinfer":
        rep = out.get("replacement", True)
        if not isinstance(rep, (bool, np.bool_)):
            raise TypeError(f"replacement must be True or False, got {rep!r}")
        out["replacement"] = bool(rep)
        if not rep:
            _checks.identical_rows("qs", qs, "for SpecInfer without replacement (one draft model sampled "
                                   "without replacement)")
            if _validate.is_concrete(qs) and int(np.count_nonzero(np.asarray(qs[0]))) < k:
                raise ValueError(f"sampling K = {k} drafts without replacement needs a draft distribution with "
                                 f"at least {k} tokens of non-zero probability")
    elif name == "spectr":
        _checks.identical_rows("qs", qs, "for SpecTr's K-SEQ, which is defined for i.i.d. drafts")
    elif name in ("lp_optimal", "canonical_is"):
        _checks.enumeration_size(name, vocab, k, LP_TUPLE_LIMIT)
    elif name == "truncated_is":
        s = _checks.positive_int("s", out.get("s", 5))
        alphabet = out.get("alphabet", None)
        if alphabet is not None:
            alphabet = _checks.positive_int("alphabet", alphabet)
            if alphabet > vocab:
                raise ValueError(f"alphabet must be <= V = {vocab}, got {alphabet}")
        s = min(s, vocab if alphabet is None else alphabet)     # s is capped at the ranked tokens
        guard = out.get("guard", True)
        if not isinstance(guard, (bool, np.bool_)):
            raise TypeError(f"guard must be True or False, got {guard!r}")
        out["s"], out["alphabet"], out["guard"] = s, alphabet, bool(guard)
    return out


def _run(name: str, key: Any, p: Any, qs: Any, drafts: Any, options: dict[str, Any]):
    key = _checks.typed_key("key", key)
    p, qs = _inputs(p, qs)
    drafts = _checks.draft_tokens("drafts", drafts, qs.shape[0], p.shape[0])
    opts = _scheme_options(name, p, qs, options)
    if name == "specinfer" and not opts["replacement"] and _validate.is_concrete(drafts):
        if len(set(np.asarray(drafts).tolist())) != drafts.shape[0]:
            raise ValueError("SpecInfer without replacement needs distinct draft tokens (drafts sampled "
                             f"without replacement), got {np.asarray(drafts).tolist()}")
    return _IMPLS[name].sample(key, p, qs, drafts, **opts)


def single_draft(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
                 drafts: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Single-draft speculative sampling on ``drafts[0]`` (the other drafts are ignored).

    Accept ``x = drafts[0]`` with probability ``min(1, p(x) / q(x))``, ``q = qs[0]``;
    otherwise output a sample of the normalised residual ``max(0, p - q)``
    (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Algorithm 2).

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions; only ``qs[0]`` is used.
      drafts: ``(K,)`` int32 draft tokens; only ``drafts[0]`` is used.

    Returns:
      ``(token, accepted)``: ``()`` int32 each; ``accepted`` is 0 or -1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = jnp.array([0.5, 0.3, 0.2]); qs = jnp.array([[0.2, 0.3, 0.5]])
      >>> token, accepted = single_draft(jax.random.key(0), p, qs, jnp.array([2]))

    References:
      Leviathan, Kalman, Matias, "Fast Inference from Transformers via Speculative
      Decoding", ICML 2023, arXiv:2211.17192; Chen et al., "Accelerating Large Language
      Model Decoding with Speculative Sampling", arXiv:2302.01318.
    """
    return _run("single_draft", key, p, qs, drafts, {})


def specinfer(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike, drafts: jax.typing.ArrayLike,
              *, replacement: bool = True) -> tuple[jax.Array, jax.Array]:
    """SpecInfer's recursive rejection sampling (multi-step speculative sampling).

    Visit the drafts in order ``k = 0..K-1`` with a running target ``p_k`` (``p_0 = p``):
    accept ``drafts[k]`` with probability ``min(1, p_k(x) / q_k(x))``; on rejection set
    ``p_{k+1} = norm(max(0, p_k - q_k))``. If every draft is rejected, output a sample
    of ``p_K`` (Miao et al. 2024, multi-step speculative sampling, their stochastic
    verification). Each step is
    single-draft speculative sampling against the running target, so the output law is
    ``p`` for independent drafts with any laws ``q_k``.

    SpecInfer picks the next child at random; with independent drafts the fixed order
    used here gives the same output law for identical drafts (exchangeability) and a
    valid scheme for non-identical ones.

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.
      drafts: ``(K,)`` int32 draft tokens.
      replacement: ``True`` (default): drafts drawn independently, ``drafts[k] ~ qs[k]``
        (:func:`sample_drafts`). ``False``: drafts drawn *without* replacement from one
        draft model ``q = qs[0]`` (rows must be identical, tokens distinct:
        ``sample_drafts(key, qs, replacement=False)``); step ``k`` then uses
        ``q_k = q`` restricted to the tokens not yet drafted and renormalised, which is
        the law of ``drafts[k]`` given the earlier drafts (derived; the output law is
        again exactly ``p``).

    Returns:
      ``(token, accepted)``: ``()`` int32 each.

    References:
      Miao et al., "SpecInfer: Accelerating Large Language Model Serving with Tree-based
      Speculative Inference and Verification", ASPLOS 2024, arXiv:2305.09781.
    """
    return _run("specinfer", key, p, qs, drafts, {"replacement": replacement})


def spectr(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
           drafts: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """SpecTr's K-SEQ draft selection for K i.i.d. drafts from ``q = qs[0]``.

    With ``beta(rho) = sum_y min(q(y), p(y)/rho)``, ``rho*`` is the smallest ``rho`` in
    ``[1, K]`` with ``1 - (1 - beta(rho))^K <= rho beta(rho)`` (the root of
    ``1 - (1 - beta)^K = rho beta``; found by bisection, :func:`spectr_rho`). Accept the
    first draft ``x`` (in order) that passes its test, with probability
    ``min(1, p(x) / (rho* q(x)))``; if none does, sample the residual
    ``p_res ∝ p - min(q, p/rho*) (1 - (1 - beta)^K) / beta`` (Sun et al. 2023, K-SEQ
    and its residual distribution). The acceptance probability is
    ``1 - (1 - beta(rho*))^K``. Any ``rho`` with the inequality keeps the residual
    non-negative, so the bisection's upper end keeps the output law exact.

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` identical rows (K-SEQ is defined for i.i.d. drafts).
      drafts: ``(K,)`` int32 draft tokens.

    Returns:
      ``(token, accepted)``: ``()`` int32 each.

    References:
      Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal
      Transport", NeurIPS 2023, arXiv:2310.15141.
    """
    return _run("spectr", key, p, qs, drafts, {})


def lp_optimal(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
               drafts: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The optimal selection scheme: sample the optimal coupling's conditional given the drafts.

    Solves (inside the function, with :func:`simplex`) the LP over couplings of the draft
    tuple ``X`` (law ``prod_k q_k``) and the output ``Y ~ p`` maximising ``P(Y in X)``
    (Sun et al. 2023's optimal-transport LP, the starting point of Khisti et al. 2025), in its
    equivalent max-flow form with a product-form rejection part (see
    :func:`jaxrob.specdec._lp.coupling_lp`; the reduction is derived). Then draws ``Y``
    from ``pi(X = drafts, .) / Q(drafts)``. Exact for small vocabularies only: the LP
    has ``V**K`` tuples (at most :data:`LP_TUPLE_LIMIT`).

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions (independent drafts, identical or not).
      drafts: ``(K,)`` int32 draft tokens.

    Returns:
      ``(token, accepted)``: ``accepted`` is the first draft equal to ``token`` when the
      token came from the coupling's accepted part, else -1.

    References:
      Sun et al., "SpecTr: Fast Speculative Decoding via Optimal Transport", NeurIPS 2023,
      arXiv:2310.15141; Khisti et al., "Multi-Draft Speculative Sampling: Canonical
      Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
    """
    return _run("lp_optimal", key, p, qs, drafts, {})


def canonical_is(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
                 drafts: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The canonical two-step optimal scheme: importance sampling, then single-draft speculative sampling.

    Step 1 picks draft ``J`` with probability ``beta[drafts, J]``; step 2 runs
    single-draft speculative sampling on ``drafts[J]`` against ``p`` with the law
    ``q_I`` of the picked token as the draft distribution (accept with
    ``min(1, p/q_I)``, else sample ``norm(max(0, p - q_I))``). The weights ``beta``
    maximise ``sum_y min(p(y), q_I(y))`` -- the importance-sampling LP over the
    ``V**K x K`` selection probabilities (:func:`jaxrob.specdec._lp.is_lp`); by the
    paper's canonical decomposition (Section 3, Theorem 1 and Figure 1: importance
    sampling of one draft, then single-draft speculative sampling) its optimum equals the
    optimal acceptance probability, which the tests check against :func:`lp_optimal`'s LP
    and against ``scipy``. The output law is exactly ``p`` for *any* weights, because step 2
    uses the ``q_I`` the weights induce. Small vocabularies only (``V**K`` at most
    :data:`LP_TUPLE_LIMIT`); :func:`truncated_is` is the large-vocabulary version.

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions (independent drafts).
      drafts: ``(K,)`` int32 draft tokens.

    Returns:
      ``(token, accepted)``: ``accepted`` is the picked ``J`` when step 2 accepts, else -1.

    References:
      Khisti et al., "Multi-Draft Speculative Sampling: Canonical Decomposition and
      Theoretical Limits", ICLR 2025, arXiv:2410.18234 (Section 3, Theorem 1, Figure 1).
    """
    return _run("canonical_is", key, p, qs, drafts, {})


def truncated_is(key: jax.Array, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike, drafts: jax.typing.ArrayLike,
                 *, s: int = 5, alphabet: int | None = None, guard: bool = True) -> tuple[jax.Array, jax.Array]:
    """Weighted importance sampling with a truncated LP (and optionally a truncated alphabet).

    The fast approximation of :func:`canonical_is` for large vocabularies: the paper's
    Section 4 ("Faster Importance Weighted Speculative Sampling"), truncated LP with
    threshold ``s`` (Algorithm 1; the two-draft LP of its Appendix I) and truncated
    alphabet. For two drafts ``(a, b)`` with laws ``(q_1, q_2)``, the tokens are ranked by
    the priority ``p(y) - q_1(y) q_2(y)`` (highest first); ``Omega_1`` is the ``s``
    highest-priority tokens. For a pair of distinct tokens both in ``Omega_1``, the
    probability of choosing each is an LP weight (``O(s^2)`` variables instead of
    ``O(V^2)``); for every other pair the higher-priority token is chosen. The law ``q_I``
    of the chosen token then has a closed form (``q_1 q_2`` plus each token's wins over
    the lower-priority ones, prefix sums over the ranking, plus the LP block), and the LP
    maximises ``sum_y min(p(y), q_I(y))`` over the free weights. The chosen token goes
    through single-draft speculative sampling against ``q_I``, so the output law is
    exactly ``p`` for any weights. For ``K > 2`` drafts the pair rule is applied to
    successive pairs (the paper's Algorithm 2): the winner so far, whose law is the
    previous round's ``q_I``, meets ``drafts[k]`` (law ``qs[k]``). Cost: ``K - 1`` sorts
    (or top-k) of ``V`` and ``K - 1`` LPs with ``2 s^2 + s`` variables.

    With ``alphabet = n``, only the ``n`` highest-priority tokens are ranked
    (``lax.top_k`` instead of a full sort), and two distinct tokens outside them tie: each
    is chosen with probability 1/2. The paper's Table 2 sweeps ``n`` in {10, 20, 40, 50}
    and ``s`` in {5, 10, 15}; ``n = 40`` with ``s = 5`` did best. The 1/2 tie rule is
    ours (derived: it keeps ``q_I`` in closed form without ranking the tail).

    The LP's maximiser need not be unique; for ``K = 2`` every maximiser gives the same
    acceptance, for ``K > 2`` the later rounds (and so the acceptance) can depend on which
    one the simplex returns. The fixed rule outside the LP block is what makes the scheme
    fast, and also what can cost acceptance: when ``p`` and the drafts are close and
    spread over many tokens (where picking a draft at random would be near-optimal), a
    small ``s`` can even fall below single-draft acceptance; on peaked, LLM-like
    distributions with a hotter draft it is within ~1e-2 of the optimum at ``s = 5`` (see
    the benchmark). Raise ``s`` to trade speed for acceptance; ``s = V`` with ``K = 2`` is
    the full importance-sampling LP, whose optimum is the optimal acceptance. ``guard``
    (default on) skips a round whose rule would lower the acceptance.

    Sources: the priority score, the fixed part of ``q_I``, the LP over the top-``s``
    block and the successive pairs for ``K > 2`` agree with the paper as read through its
    section summaries and a third-party implementation that cites its Appendix I and
    Algorithm 2; ``tests/specdec/test_selection_paper_truncated.py`` checks them against an
    independent HiGHS implementation of that definition. Every choice keeps the output law
    exact; only the acceptance probability depends on them, and
    :func:`acceptance_probability` gives it exactly.

    Args:
      key: a typed PRNG key.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions (independent drafts).
      drafts: ``(K,)`` int32 draft tokens.
      s: LP truncation threshold (static), ``>= 1``; capped at ``V`` (or at
        ``alphabet``).
      alphabet: truncated alphabet size ``n``, ``1 <= n <= V`` (static), or ``None``
        to rank the whole vocabulary.
      guard: ``True`` (default): a round is used only if its rule raises
        ``sum_y min(p(y), q_I(y))`` above keeping the winner so far (weight 1 on every
        pair), so the acceptance is never below single-draft and never decreases when a
        draft is added (ours, not the paper's; any fixed choice made from ``(p, qs)``
        alone keeps the output law exact). ``False``: every round's rule as defined above.

    Returns:
      ``(token, accepted)``: ``accepted`` is the index of the selected draft when
      step 2 accepts it, else -1.

    References:
      Khisti et al., "Multi-Draft Speculative Sampling: Canonical Decomposition and
      Theoretical Limits", ICLR 2025, arXiv:2410.18234 (Section 4, Algorithms 1-2,
      Appendix I).
    """
    return _run("truncated_is", key, p, qs, drafts, {"s": s, "alphabet": alphabet, "guard": guard})


#: The schemes by name.
SCHEMES: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "single_draft": single_draft, "specinfer": specinfer, "spectr": spectr,
    "lp_optimal": lp_optimal, "canonical_is": canonical_is, "truncated_is": truncated_is,
}
_NAMES = {fn: name for name, fn in SCHEMES.items()}


def scheme_name(scheme: Any) -> str:
    """The registry name of ``scheme`` (a scheme function or its name)."""
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        return scheme
    if isinstance(scheme, functools.partial):
        raise TypeError("pass the scheme function itself and its options as keyword arguments, "
                        "not a functools.partial")
    try:
        return _NAMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheme {scheme!r}; pass one of {', '.join(SCHEMES)} "
                         "(the function or its name)") from None


def output_distribution(scheme: Any, p: jax.typing.ArrayLike, qs: jax.typing.ArrayLike,
                        drafts: jax.typing.ArrayLike, **options: Any) -> tuple[jax.Array, jax.Array]:
    """The exact law of a scheme's output given the drafts, and its acceptance probability.

    Sums over the scheme's internal randomness in closed form (accept tests, residual
    draws, selection weights, LP coupling rows). Averaging it over the draft law gives
    ``p`` for every scheme -- the property the tests check by enumerating draft tuples.

    Args:
      scheme: a scheme function (e.g. :func:`specinfer`) or its name.
      p: ``(V,)`` target distribution.
      qs: ``(K, V)`` draft distributions.
      drafts: ``(K,)`` int32 draft tokens.
      **options: the scheme's options (``replacement=``, ``s=``, ``alphabet=``).

    Returns:
      ``(dist, accept)``: ``(V,)`` the law of ``token`` and ``()`` ``P(accepted >= 0)``,
      both conditional on ``drafts``.
    """
    name = scheme_name(scheme)
    p, qs = _inputs(p, qs)
    drafts = _checks.draft_tokens("drafts", drafts, qs.shape[0], p.shape[0])
    opts = _scheme_options(name, p, qs, options)
    return _IMPLS[name].law(p, qs, drafts, **opts)


def spectr_rho(p: jax.typing.ArrayLike, q: jax.typing.ArrayLike, k: int) -> jax.Array:
    """SpecTr's division factor ``rho*`` for ``K = k`` i.i.d. drafts from ``q`` (see :func:`spectr`).

    Args:
      p: ``(V,)`` target distribution.
      q: ``(V,)`` draft distribution.
      k: number of drafts, ``>= 1``.

    Returns:
      ``()`` the smallest ``rho`` in ``[1, k]`` with ``1 - (1 - beta)^k <= rho beta``.
    """
    p = _checks.target("p", p)
    q = _checks.target("q", q)
    if q.shape != p.shape:
        raise ValueError(f"q has vocabulary size {q.shape[0]} but the target p has {p.shape[0]}")
    k = _checks.positive_int("k", k)
    dtype = jnp.result_type(p, q, jnp.float32)
    p, q = p.astype(dtype), q.astype(dtype)
    return jax.jit(_spectr_rho, static_argnums=2)(p, q, k)


@functools.partial(jax.jit, static_argnames=("replacement",))
def _sample_drafts(key, qs, replacement):
    k, vocab = qs.shape
    keys = jax.random.split(key, k)
    if replacement:
        return jax.vmap(_sample_index)(keys, qs)

    def step(used, inp):
        key_j, q_row = inp
        x = _sample_index(key_j, jnp.where(used, 0.0, q_row))
        return used.at[x].set(True), x

    _, xs = lax.scan(step, jnp.zeros((vocab,), bool), (keys, qs))
    return xs


def sample_drafts(key: jax.Array, qs: jax.typing.ArrayLike, *, replacement: bool = True) -> jax.Array:
    """Draws the K draft tokens, ``drafts[k] ~ qs[k]`` independently (or without replacement).

    Args:
      key: a typed PRNG key.
      qs: ``(K, V)`` draft distributions.
      replacement: ``False`` draws sequentially without replacement from ``qs[0]``
        (identical rows, at least K tokens of non-zero probability), the draft law of
        ``specinfer(..., replacement=False)``.

    Returns:
      ``(K,)`` int32 draft tokens.
    """
    key = _checks.typed_key("key", key)
    qs = _checks.drafts_dists("qs", qs, np.shape(qs)[-1] if np.ndim(qs) == 2 else -1)
    qs = qs.astype(jnp.result_type(qs, jnp.float32))
    if not isinstance(replacement, (bool, np.bool_)):
        raise TypeError(f"replacement must be True or False, got {replacement!r}")
    if not replacement:
        _checks.identical_rows("qs", qs, "to sample without replacement from one draft model")
        if _validate.is_concrete(qs) and int(np.count_nonzero(np.asarray(qs[0]))) < qs.shape[0]:
            raise ValueError(f"sampling K = {qs.shape[0]} drafts without replacement needs at least "
                             f"{qs.shape[0]} tokens of non-zero probability")
    return _sample_drafts(key, qs, bool(replacement))
