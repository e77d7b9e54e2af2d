"""Shared by the selection tests: random distributions, test cases, and one run of a scheme's
sampler checked against its exact law.  Imported as ``specdec_cases`` (see ``conftest.py``)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob.specdec import _schemes as sch


def dists(rng, n, v, alpha=0.6):
    x = rng.gamma(alpha, size=(n, v))
    return (x / x.sum(-1, keepdims=True)).astype(np.float32)


def case(seed, v, k, identical, sparse=False):
    """A target ``p`` (V,) and drafts ``qs`` (K, V); ``sparse``: zeros in ``p`` and the drafts, partly disjoint supports."""
    rng = np.random.default_rng(seed)
    p = dists(rng, 1, v)[0]
    qs = np.repeat(dists(rng, 1, v), k, axis=0) if identical else dists(rng, k, v)
    if sparse:
        p[: v // 2] = 0.0
        qs[:, -1] = 0.0
        qs[0, v // 2] = 0.0
        if identical:
            qs[:] = qs[0]
        p /= p.sum()
        qs /= qs.sum(-1, keepdims=True)
    return p, qs


def chi2_pvalue(counts, probs):
    """Pearson's chi-square p-value of ``counts`` against ``probs`` (zero-probability cells must be empty)."""
    from scipy import stats
    counts = np.asarray(counts, np.float64)
    probs = np.asarray(probs, np.float64)
    assert counts[probs <= 1e-12].sum() == 0, "a zero-probability token was sampled"
    keep = probs > 1e-12
    if keep.sum() < 2:
        return 1.0
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    return stats.chisquare(counts[keep], expected).pvalue


def check_sampler_against_law(scheme, options, *, v, k, identical, n=4000, seed=0, replacement=True,
                              unbatched_law_inputs=False):
    """vmap == loop, same key -> same output, jit; the conditional law given fixed drafts
    (chi-square) and the acceptance rate (z-test) against :func:`output_distribution`."""
    rng = np.random.default_rng(seed)
    batch = 3
    ps = dists(rng, batch + 1, v)
    if identical:
        qss = np.repeat(dists(rng, batch + 1, v)[:, None], k, axis=1)
    else:
        qss = np.stack([dists(rng, k, v) for _ in range(batch + 1)])
    draw_keys = jax.random.split(jax.random.key(seed + 1), batch + 1)
    drafts = np.stack([np.asarray(sch.sample_drafts(kk, q, replacement=replacement)) for kk, q in zip(draw_keys, qss)])
    for attempt in range(20):       # fixed drafts whose conditional law is not a point mass: a sharper test
        law, _ = sch.output_distribution(scheme, ps[batch], qss[batch], drafts[batch], **options)
        if np.count_nonzero(np.asarray(law) > 1e-6) >= 2:
            break
        drafts[batch] = np.asarray(sch.sample_drafts(jax.random.key(100 + attempt), qss[batch], replacement=replacement))
    keys = jax.random.split(jax.random.key(seed + 2), batch + n)
    fn = lambda kk, p, q, d: scheme(kk, p, q, d, **options)  # noqa: E731
    if unbatched_law_inputs:
        # LP schemes: the n law-test draws share (p, qs, drafts), so the LP is solved once
        t3, a3 = jax.jit(jax.vmap(fn))(keys[:batch], jnp.asarray(ps[:batch]), jnp.asarray(qss[:batch]),
                                       jnp.asarray(drafts[:batch]))
        tn, an = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(keys[batch:], jnp.asarray(ps[batch]),
                                                                      jnp.asarray(qss[batch]), jnp.asarray(drafts[batch]))
        tokens, accepted = np.r_[np.asarray(t3), np.asarray(tn)], np.r_[np.asarray(a3), np.asarray(an)]
    else:
        # three different positions, then n copies of the fourth (for the law test), in one batch
        idx = np.r_[np.arange(batch), np.full(n, batch)]
        tokens, accepted = jax.jit(jax.vmap(fn))(keys, jnp.asarray(ps[idx]), jnp.asarray(qss[idx]),
                                                 jnp.asarray(drafts[idx]))
        tokens, accepted = np.asarray(tokens), np.asarray(accepted)
    # vmap == loop, and the same key gives the same output
    for i in range(batch):
        t1, a1 = scheme(keys[i], ps[i], qss[i], drafts[i], **options)
        t2, a2 = scheme(keys[i], ps[i], qss[i], drafts[i], **options)
        assert (int(t1), int(a1)) == (int(t2), int(a2)) == (int(tokens[i]), int(accepted[i]))
    # accepted index semantics
    ok = accepted >= 0
    assert np.all(accepted >= -1) and np.all(accepted < k)
    d_rows = drafts[np.r_[np.arange(batch), np.full(n, batch)]]
    assert np.all(d_rows[ok, accepted[ok]] == tokens[ok])
    # conditional law given the drafts
    law, acc = sch.output_distribution(scheme, ps[batch], qss[batch], drafts[batch], **options)
    assert np.count_nonzero(np.asarray(law) > 1e-6) >= 2
    counts = np.bincount(tokens[batch:], minlength=v)
    assert chi2_pvalue(counts, np.asarray(law)) > 1e-4
    rate = ok[batch:].mean()
    se = np.sqrt(max(float(acc) * (1 - float(acc)), 1e-4) / n)
    assert abs(rate - float(acc)) < 5 * se
    return law, acc
