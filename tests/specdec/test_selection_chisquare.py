"""10^6 jitted draws per scheme: drafts from their law, then the scheme; the tokens follow p.

Pearson's chi-square of the token counts against ``p`` and a z-test of the acceptance
rate against :func:`acceptance_probability`. Marked slow (one compile per scheme,
10^6 draws each).
"""

import jax
import numpy as np
import pytest

from jaxrob.specdec import _acceptance as acc
from jaxrob.specdec import _schemes as sch

stats = pytest.importorskip("scipy.stats")
N = 1_000_000


def _instance(seed, v, k, identical):
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.6, size=(k + 1, v))
    x /= x.sum(-1, keepdims=True)
    p = x[0].astype(np.float32)
    qs = (np.repeat(x[1:2], k, axis=0) if identical else x[1:]).astype(np.float32)
    return p, qs


@pytest.mark.slow
@pytest.mark.parametrize("scheme, options, v, k, identical", [
    (sch.single_draft, {}, 5, 1, True),
    (sch.specinfer, {}, 5, 3, False),
    (sch.specinfer, {"replacement": False}, 5, 3, True),
    (sch.spectr, {}, 5, 3, True),
    (sch.lp_optimal, {}, 5, 3, True),
    (sch.canonical_is, {}, 5, 2, False),
    (sch.truncated_is, {"s": 2}, 5, 3, True),
    (sch.truncated_is, {"s": 2, "alphabet": 4}, 8, 2, False),
], ids=lambda x: getattr(x, "__name__", None))
def test_million_draws_follow_the_target(scheme, options, v, k, identical):
    p, qs = _instance(17 * v + k, v, k, identical)
    replacement = options.get("replacement", True)

    def draw(key):
        k_drafts, k_scheme = jax.random.split(key)
        drafts = sch.sample_drafts(k_drafts, qs, replacement=replacement)
        return scheme(k_scheme, p, qs, drafts, **options)

    tokens, accepted = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(v * k), N))
    counts = np.bincount(np.asarray(tokens), minlength=v)
    assert counts[p == 0].sum() == 0
    keep = p > 0
    p64 = p[keep].astype(np.float64)
    assert stats.chisquare(counts[keep], p64 / p64.sum() * counts.sum()).pvalue > 1e-4
    rate = float((np.asarray(accepted) >= 0).mean())
    exact = float(acc.acceptance_probability(scheme, p, qs, **options))
    assert abs(rate - exact) < 5 * np.sqrt(max(exact * (1 - exact), 1e-6) / N)
