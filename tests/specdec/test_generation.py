"""Multi-draft speculative generation on tiny random Llama models.

The central check: the law of a short generated sequence equals the target's exact
sequence law (chi-square over every possible continuation), for drafts that differ from
the target, with several schemes, numbers of drafts and an early-exit draft.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrob.specdec import _generation as G, _llama as L, _sampling as S

CFG = L.LlamaConfig(vocab_size=5, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24,
                    rope_base=100.0, max_position=64)


@pytest.fixture(scope="module")
def params():
    p = L.init_params(CFG, key=jax.random.key(3))
    # Sharper next-token laws than the init gives (so drafts at another temperature differ).
    return jax.tree.map(lambda a: a * 6.0 if a.ndim > 1 else a, p)


def _sequence_law(params, prompt, steps, temperature, top_p=1.0):
    """Exact law of the ``steps``-token continuation under plain sampling from the target."""
    seqs = np.array(list(itertools.product(range(CFG.vocab_size), repeat=steps)), np.int32)
    full = jnp.concatenate([jnp.tile(prompt, (len(seqs), 1)), jnp.asarray(seqs)], axis=1)
    logits = jax.vmap(lambda t: L.apply(params, t, config=CFG))(full)             # (S, T, V)
    t = prompt.shape[0]
    probs = S.sampling_probs(logits[:, t - 1:t - 1 + steps], temperature=temperature, top_p=top_p)
    law = np.prod(np.take_along_axis(np.asarray(probs, np.float64), seqs[:, :, None], 2)[..., 0], axis=1)
    return seqs, law


def _run_many(params, prompt, steps, n, *, scheme, k, length, draft=None, dtemp=1.6, temperature=1.0,
              top_p=1.0, opts=()):
    """``n`` independent generations in one vmapped call of the jitted loop."""
    dparams, dcfg = (params, CFG) if draft is None else draft
    _, cache = L.prefill(params, prompt[:-1], config=CFG, max_len=32, bucket=8)
    dtemp = jnp.broadcast_to(jnp.asarray(dtemp, jnp.float32), (k,))

    def one(key):
        return G._run(params, dparams, cache, prompt[-1], key, jnp.float32(temperature), dtemp,
                      jnp.int32(0), jnp.float32(top_p), CFG, dcfg, scheme, opts, k, length, steps, None)

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), n))


def _chi2_pvalue(seqs, law, tokens):
    index = np.ravel_multi_index(np.asarray(tokens).T, (CFG.vocab_size,) * seqs.shape[1])
    counts = np.bincount(index, minlength=len(law))
    expected = law / law.sum() * len(index)
    keep = expected >= 5                      # pool the rare cells into one
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


N = 20_000
PROMPT = jnp.array([1, 3], jnp.int32)


@pytest.mark.parametrize("scheme,k,length,opts", [
    ("specinfer", 3, 2, (("replacement", True),)),
])
def test_sequence_law_is_the_targets(params, scheme, k, length, opts):
    steps = 3
    seqs, law = _sequence_law(params, PROMPT, steps, 1.0)
    out = _run_many(params, PROMPT, steps, N, scheme=scheme, k=k, length=length, opts=opts)
    assert np.all(np.asarray(out.num_tokens) >= steps)
    # drafts really differ from the target, so blocks end early sometimes and not always
    eff = np.asarray(out.num_tokens) / np.asarray(out.num_blocks)
    assert 1.0 < eff.mean() < length + 1
    assert _chi2_pvalue(seqs, law, out.tokens) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("scheme,k,length,opts,dtemp", [
    ("single_draft", 1, 3, (), 1.6),
    ("spectr", 4, 2, (), 1.6),
    ("truncated_is", 3, 2, (("alphabet", None), ("guard", True), ("s", 2)), 1.6),
    ("truncated_is", 3, 2, (("alphabet", None), ("guard", True), ("s", 2)), (0.7, 1.3, 2.0)),
    ("specinfer", 2, 2, (("replacement", True),), (0.8, 1.8)),
    ("canonical_is", 2, 2, (), 1.6),
])
def test_sequence_law_is_the_targets_more(params, scheme, k, length, opts, dtemp):
    steps = 3
    seqs, law = _sequence_law(params, PROMPT, steps, 1.0)
    out = _run_many(params, PROMPT, steps, N, scheme=scheme, k=k, length=length, opts=opts, dtemp=dtemp)
    assert _chi2_pvalue(seqs, law, out.tokens) > 1e-3


@pytest.mark.slow
def test_sequence_law_early_exit_draft_and_top_p(params):
    steps = 3
    seqs, law = _sequence_law(params, PROMPT, steps, 0.9, top_p=0.8)
    draft = L.early_exit(CFG, params, 1)[::-1]
    out = _run_many(params, PROMPT, steps, N, scheme="specinfer", k=2, length=3, draft=draft, dtemp=1.0,
                    temperature=0.9, top_p=0.8, opts=(("replacement", True),))
    assert _chi2_pvalue(seqs, law, out.tokens) > 1e-3


def test_chi_square_detects_a_wrong_law(params):
    """The check above can fail: the draft's own law (temperature 1.6) is rejected."""
    steps = 3
    seqs, law = _sequence_law(params, PROMPT, steps, 1.0)
    _, wrong = _sequence_law(params, PROMPT, steps, 1.6)
    rng = np.random.default_rng(0)
    draws = seqs[rng.choice(len(seqs), size=N, p=wrong / wrong.sum())]
    assert _chi2_pvalue(seqs, law, draws) < 1e-6


def test_identical_draft_accepts_every_token(params):
    """Draft = target at the target's temperature: every block outputs L + 1 tokens."""
    out = G.speculative_generate(params, PROMPT, config=CFG, steps=12, key=jax.random.key(0),
                                 scheme="specinfer", num_drafts=2, draft_len=3, draft_temperature=1.0)
    assert int(out.num_blocks) == 3 and int(out.num_tokens) == 12
    assert out.block_efficiency == 4.0
    np.testing.assert_array_equal(out.block_tokens[:3], [4, 4, 4])


def test_eos_stops_generation(params):
    out = G.speculative_generate(params, PROMPT, config=CFG, steps=40, key=jax.random.key(2),
                                 scheme="specinfer", num_drafts=2, draft_len=3, eos=0)
    toks = np.asarray(out.tokens)
    n = int(out.num_tokens)
    assert n < 40 and toks[n - 1] == 0 and np.all(toks[n:] == 0)
    assert not np.any(toks[:n - 1] == 0)
    assert int(np.asarray(out.block_tokens).sum()) == n


def test_prompt_of_one_token(params):
    # same static configuration as the test above: one compilation for both
    out = G.speculative_generate(params, jnp.array([2]), config=CFG, steps=12, key=jax.random.key(0),
                                 scheme="specinfer", num_drafts=2, draft_len=3)
    assert out.tokens.shape == (12,) and int(out.num_tokens) >= 12


@pytest.mark.parametrize("kwargs,match", [
    ({"scheme": "spectr", "draft_temperature": (1.0, 1.5)}, "identical drafts"),
    ({"draft_temperature": 0.0}, "draft_temperature"),
    ({"draft_temperature": (1.0, 1.0, 1.0)}, "draft_temperature"),
    ({"num_drafts": 0}, "num_drafts"),
    ({"draft_len": 0}, "draft_len"),
    ({"scheme": "nope"}, "unknown scheme"),
    ({"temperature": 0.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"scheme": "specinfer", "scheme_options": {"replacement": False}}, "replacement"),
    ({"scheme": "truncated_is", "scheme_options": {"s": 0}}, "s"),
    ({"max_len": 8, "steps": 20}, "max_len"),
    ({"eos": 5}, "eos"),
])
def test_bad_inputs_raise(params, kwargs, match):
    args = dict(config=CFG, steps=4, key=jax.random.key(0), num_drafts=2, draft_len=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        G.speculative_generate(params, PROMPT, **args)


def test_draft_must_be_a_layer_prefix(params):
    other = L.LlamaConfig(vocab_size=5, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=24,
                          rope_base=100.0, max_position=64)
    with pytest.raises(ValueError, match="layer prefix"):
        G.speculative_generate(params, PROMPT, config=CFG, steps=4, key=jax.random.key(0),
                               draft_params=L.init_params(other, key=jax.random.key(0)), draft_config=other)
    with pytest.raises(ValueError, match="both"):
        G.speculative_generate(params, PROMPT, config=CFG, steps=4, key=jax.random.key(0), draft_params=params)
