"""Multi-draft speculative generation with a Llama target and a layer-prefix draft.

One *block* of :func:`speculative_generate`:

1. **Draft.** ``K`` drafts of ``L`` tokens each are sampled autoregressively and
   independently from the draft model, all continuing the current prefix.  Draft ``k``
   samples at its own temperature (identical drafts: one temperature; non-identical
   drafts: the paper's setting of one draft model at several temperatures).  The exact
   probability vectors the draft tokens were drawn from are kept.
2. **Score.** The target scores all ``K (L + 1)`` tokens ``[x_last, d_k1, ..., d_kL]`` in
   one batched forward pass over the shared prefix KV cache (:func:`score_block`): one
   *target call* per block.
3. **Select.** A token-level selection scheme walks the positions ``j = 1..L``.  At
   position ``j`` only the *valid* drafts take part -- those whose first ``j - 1`` tokens
   equal the tokens output so far (Khisti et al. 2025, Section 2) -- compacted to the
   front, so the scheme sees ``K_j <= K`` drafts (one compiled branch per count,
   ``lax.switch``).  The scheme outputs a token distributed exactly as the target's
   next-token distribution.  The drafts that stay valid are those whose ``j``-th token
   equals the output; the walk goes on while one does (a residual token that happens to
   equal a valid draft's token keeps that draft valid -- exact, since the scheme looked
   at no later draft token).  If a draft stays valid through all ``L`` positions, a
   *bonus* token is sampled from the target's distribution after it, so a block outputs
   between 1 and ``L + 1`` tokens.
4. **Commit.** The target's keys/values of the accepted prefix are appended to the cache;
   the last output token is fed at the start of the next block.

Why the output law is exactly the target's (derived): given the tokens output so far,
the ``(j)``-th tokens of the valid drafts are independent draws from the draft's
next-token law at that prefix -- the drafts are independent and the scheme has read only
their earlier tokens -- which is exactly the input a selection scheme requires.  The test
suite checks the law of short generations of a tiny random model against the target's
exact sequence law with a chi-square test.

The draft must be a *layer prefix* of the target: the target itself (at another
temperature) or :func:`~jaxrob.specdec.llama.early_exit` (optionally with its exit head).
Its prefix KV cache is then the target's cache cut to its layers, so no separate draft
cache is kept.

Metrics: *block efficiency* = tokens output / target calls (``num_tokens / num_blocks``);
token rate and the selection step's cost are measured by the experiments and benchmarks.

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
  Sun et al., "SpecTr: Fast Speculative Decoding via Optimal Transport", NeurIPS 2023,
  arXiv:2310.15141.  Miao et al., "SpecInfer", ASPLOS 2024, arXiv:2305.09781.
  Leviathan, Kalman, Matias, "Fast Inference from Transformers via Speculative Decoding",
  ICML 2023, arXiv:2211.17192.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrob import _validate

from . import _llama
from . import _sampling
from . import _schemes

__all__ = ["SpeculativeOutput", "speculative_generate", "GENERATION_SCHEMES"]

#: Schemes usable in generation (independent drafts; the LP schemes only for tiny vocabularies).
GENERATION_SCHEMES = ("single_draft", "specinfer", "spectr", "truncated_is", "canonical_is", "lp_optimal")


class SpeculativeOutput(NamedTuple):
    """What :func:`speculative_generate` returns.

    Attributes:
      tokens: ``(steps,)`` int32 generated tokens (the prompt not included); after an
        end-of-sequence token, the remaining entries are ``eos``.
      num_tokens: int32, tokens output before stopping (``>= steps`` unless ``eos`` was
        produced: the last block may overshoot ``steps``; up to and including ``eos``).
      num_blocks: int32, blocks run = target calls (the prompt's prefill not counted).
      block_tokens: ``(steps,)`` int32 tokens output by each block (0 after the last); a
        block outputs its accepted draft tokens plus one residual or bonus token.
    """

    tokens: jax.Array
    num_tokens: jax.Array
    num_blocks: jax.Array
    block_tokens: jax.Array

    @property
    def block_efficiency(self) -> float:
        """Tokens output per target call, ``num_tokens / num_blocks``."""
        return float(self.num_tokens) / max(int(self.num_blocks), 1)


def _compact_order(valid: jax.Array) -> jax.Array:
    """Indices with the valid drafts first (stable)."""
    return jnp.argsort(~valid, stable=True).astype(jnp.int32)


def _select(name, opts, key, p, qs, drafts, valid):
    """Runs scheme ``name`` on the valid drafts only; returns the output token."""
    k = qs.shape[0]
    order = _compact_order(valid)
    qs_c, drafts_c = qs[order], drafts[order]
    n_valid = valid.sum().astype(jnp.int32)
    sample = _schemes._IMPLS[name].sample

    def branch(m):
        return lambda: sample(key, p, qs_c[:m], drafts_c[:m], **opts)[0]

    if k == 1:
        return branch(1)()
    return lax.switch(jnp.clip(n_valid - 1, 0, k - 1), [branch(m) for m in range(1, k + 1)])


@functools.partial(jax.jit, static_argnames=("config", "draft_config", "name", "opts", "k", "length",
                                              "steps", "eos"))
def _run(params, draft_params, cache, last, key, temperature, draft_temperature, top_k, top_p,
         config, draft_config, name, opts, k, length, steps, eos):
    opts = dict(opts)
    out_len = steps + length + 1
    dtype = cache.k.dtype
    probs_fn = jax.vmap(_sampling._probs, in_axes=(0, 0, None, None))      # per-draft temperatures

    def block(state):
        cache, last, key, out, n_out, n_blocks, block_tokens, done = state
        key, k_draft, k_walk = jax.random.split(key, 3)

        # 1. K drafts of L tokens from the draft model (shares the target's first layers' cache).
        dcache = _llama.truncate_cache(cache, draft_config.n_layers)
        dblock = _llama.init_block(draft_config, k, length, dtype=dtype)

        def draft_step(carry, inp):
            dblock, tok = carry
            step_key = inp
            logits, dblock = _llama._extend_block(draft_params, dcache, dblock, tok[:, None], draft_config)
            q = probs_fn(logits[:, 0], draft_temperature, top_k, top_p)                 # (K, V)
            nxt = jax.vmap(_sampling._draw)(jax.random.split(step_key, k), q)
            return (dblock, nxt), (nxt, q)

        _, (dtoks, dprobs) = lax.scan(draft_step, (dblock, jnp.full((k,), last, jnp.int32)),
                                      jax.random.split(k_draft, length))             # (L, K), (L, K, V)

        # 2. One target call scores [last, d_1..d_L] for every draft.
        seqs = jnp.concatenate([jnp.full((k, 1), last, jnp.int32), dtoks.T], axis=1)   # (K, L + 1)
        tblock = _llama.init_block(config, k, length + 1, dtype=dtype)
        tlogits, tblock = _llama._extend_block(params, cache, tblock, seqs, config)
        tprobs = jax.vmap(jax.vmap(_sampling._probs, in_axes=(0, None, None, None)),
                          in_axes=(0, None, None, None))(tlogits, temperature, top_k, top_p)  # (K, L+1, V)

        # 3. Walk the positions with the valid drafts.
        def walk(carry, inp):
            valid, alive, m, chosen, toks = carry
            j, pos_key = inp

            def live():
                c = jnp.argmax(valid).astype(jnp.int32)
                p = tprobs[c, j]
                is_bonus = j == length
                jj = jnp.minimum(j, length - 1)
                y = lax.cond(is_bonus,
                             lambda: _sampling._draw(pos_key, p),
                             lambda: _select(name, opts, pos_key, p, dprobs[jj], dtoks[jj], valid))
                still = valid & (dtoks[jj] == y) & ~is_bonus
                return still, still.any(), m + 1, c, toks.at[j].set(y)

            return lax.cond(alive, live, lambda: (valid, alive, m, chosen, toks)), None

        init = (jnp.ones((k,), bool), jnp.asarray(True), jnp.int32(0), jnp.int32(0),
                jnp.zeros((length + 1,), jnp.int32))
        (_, _, m, chosen, toks), _ = lax.scan(
            walk, init, (jnp.arange(length + 1, dtype=jnp.int32), jax.random.split(k_walk, length + 1)))

        # 4. Commit [last, y_1 .. y_{m-1}] (chosen draft's keys/values) and feed y_m next block.
        cache = _llama._commit(cache, tblock, m, chosen)
        if eos is not None:
            hit = (toks == eos) & (jnp.arange(length + 1) < m)
            m = jnp.where(hit.any(), jnp.argmax(hit).astype(jnp.int32) + 1, m)
            done = hit.any()
        out = lax.dynamic_update_slice(out, toks, (n_out,))
        block_tokens = block_tokens.at[n_blocks].set(m, mode="drop")
        return (cache, toks[m - 1], key, out, n_out + m, n_blocks + 1, block_tokens, done)

    def cond(state):
        return (state[4] < steps) & ~state[7]

    z = jnp.zeros((steps,), jnp.int32)
    state = (cache, last, key, jnp.zeros((out_len,), jnp.int32), jnp.int32(0), jnp.int32(0), z,
             jnp.asarray(False))
    cache, _, _, out, n_out, n_blocks, block_tokens, _ = lax.while_loop(cond, block, state)
    tokens = out[:steps]
    if eos is not None:
        tokens = jnp.where(jnp.arange(steps) < n_out, tokens, eos)
    return SpeculativeOutput(tokens, n_out, n_blocks, block_tokens)


def _check_draft(config: _llama.LlamaConfig, draft_config: Any) -> _llama.LlamaConfig:
    if not isinstance(draft_config, _llama.LlamaConfig):
        raise TypeError(f"draft_config must be a LlamaConfig, got {type(draft_config).__name__}")
    if draft_config.n_layers > config.n_layers or dataclasses.replace(
            draft_config, n_layers=config.n_layers) != config:
        raise ValueError("the draft must be a layer prefix of the target (the target itself, or "
                         "llama.early_exit(config, params, n)): its config may differ from the target's "
                         f"only by n_layers <= {config.n_layers}; got {draft_config}")
    return draft_config


def speculative_generate(params: dict, prompt: jax.typing.ArrayLike, *, config: _llama.LlamaConfig,
                         steps: int, key: jax.Array, scheme: Any = "truncated_is",
                         scheme_options: dict | None = None, num_drafts: int = 2, draft_len: int = 5,
                         draft_params: dict | None = None, draft_config: _llama.LlamaConfig | None = None,
                         temperature: Any = 1.0, draft_temperature: Any = 1.2, top_k: Any = 0,
                         top_p: Any = 1.0, eos: int | None = None,
                         max_len: int | None = None) -> SpeculativeOutput:
    """Samples ``steps`` tokens from the target by multi-draft speculative decoding.

    The output has exactly the law of plain sampling from the target with the given
    ``temperature`` / ``top_k`` / ``top_p`` (see the module docstring for one block).  The
    whole loop over blocks is one ``lax.while_loop`` in one jitted function: it compiles
    once per (config, scheme, ``num_drafts``, ``draft_len``, ``steps``, ``max_len``), not
    per prompt (prompts share :func:`~jaxrob.specdec.llama.prefill`'s buckets).

    Args:
      params: the target's params pytree.
      prompt: ``(T,)`` prompt token ids, ``T >= 1``.
      config: the target's config.
      steps: tokens to generate (>= 1).
      key: a typed PRNG key.
      scheme: a selection scheme (function or name) from :data:`GENERATION_SCHEMES`;
        ``"spectr"`` needs identical drafts (one ``draft_temperature``); ``"lp_optimal"``
        and ``"canonical_is"`` only fit tiny vocabularies.
      scheme_options: the scheme's options (e.g. ``{"s": 5, "alphabet": 50}`` for
        ``truncated_is``); SpecInfer runs with replacement (independent drafts).
      num_drafts: ``K >= 1``.
      draft_len: ``L >= 1`` draft tokens per draft and block.
      draft_params, draft_config: a layer-prefix draft (default: the target itself).
      temperature: the target's sampling temperature (> 0).
      draft_temperature: the drafts' temperature (> 0): a scalar, or ``(K,)`` for
        non-identical drafts.
      top_k, top_p: applied to the target and the drafts alike.
      eos: stop after this token id (optional).
      max_len: KV-cache size (default ``T + steps + draft_len + 1`` rounded up to 64).

    Returns:
      A :class:`SpeculativeOutput`; ``.block_efficiency`` is tokens per target call.

    Raises:
      ValueError: bad sizes, temperatures, scheme, or a draft that is not a layer prefix.

    Example:
      >>> cfg = llama.LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
      >>> p = llama.init_params(cfg, key=jax.random.key(0))
      >>> out = speculative_generate(p, jnp.array([1, 2]), config=cfg, steps=6, key=jax.random.key(1),
      ...                            scheme="specinfer", num_drafts=2, draft_len=3)
      >>> out.tokens.shape, int(out.num_tokens) >= 6
      ((6,), True)
    """
    _llama._check_params(params, config)
    prompt = _llama._check_tokens("prompt", prompt, config, 1)
    steps = _validate.number("steps", steps, min=1, integer=True)
    key = _validate.prng_key("key", key)
    k = _validate.number("num_drafts", num_drafts, min=1, integer=True)
    length = _validate.number("draft_len", draft_len, min=1, integer=True)
    name = _schemes.scheme_name(scheme)
    if name not in GENERATION_SCHEMES:
        raise ValueError(f"scheme {name!r} cannot drive generation; use one of {', '.join(GENERATION_SCHEMES)}")
    if draft_params is None and draft_config is None:
        draft_params, draft_config = params, config
    elif draft_params is None or draft_config is None:
        raise ValueError("pass both draft_params and draft_config, or neither (the target drafts for itself)")
    draft_config = _check_draft(config, draft_config)
    _llama._check_params(draft_params, draft_config)
    if eos is not None:
        eos = _validate.number("eos", eos, min=0, max=config.vocab_size - 1, integer=True)

    temp = float(_validate.number("temperature", temperature, min=0.0, min_inclusive=False))
    dtemp = np.asarray(draft_temperature, np.float32)
    if dtemp.ndim == 0:
        dtemp = np.full((k,), dtemp, np.float32)
    if dtemp.shape != (k,) or not np.all(np.isfinite(dtemp)) or np.any(dtemp <= 0):
        raise ValueError(f"draft_temperature must be a positive scalar or a ({k},) array of positive "
                         f"values (one per draft), got {draft_temperature!r}")
    _sampling._check(jnp.zeros((config.vocab_size,)), temp, top_k, top_p)

    # Validate the scheme's options on a representative input (identical rows iff one temperature).
    identical = bool(np.all(dtemp == dtemp[0]))
    vocab = config.vocab_size
    probe_p = jnp.full((vocab,), 1.0 / vocab)
    probe_q = jnp.tile(probe_p, (k, 1)) if identical else jnp.tile(probe_p, (k, 1)).at[1:, 0].add(1e-2)
    if name == "spectr" and not identical:
        raise ValueError("SpecTr's K-SEQ is defined for identical drafts: pass one draft_temperature")
    options = dict(scheme_options or {})
    if name == "specinfer":
        if options.get("replacement", True) is not True:
            raise ValueError("generation drafts are independent: SpecInfer runs with replacement=True")
        options["replacement"] = True
    if name in ("lp_optimal", "canonical_is"):
        for m in range(1, k + 1):
            _schemes._checks.enumeration_size(name, vocab, m, _schemes.LP_TUPLE_LIMIT)
        opts = {}
    else:
        probe_q = probe_q / probe_q.sum(1, keepdims=True)
        opts = _schemes._scheme_options(name, probe_p, probe_q, options)
    if name in ("lp_optimal", "canonical_is") and options:
        raise TypeError(f"{name} takes no options, got {sorted(options)}")

    t = prompt.shape[0]
    need = t + steps + length + 1
    if max_len is None:
        max_len = min(-(-need // 64) * 64, config.max_position)
    max_len = _validate.number("max_len", max_len, min=1, max=config.max_position, integer=True)
    if need > max_len:
        raise ValueError(f"prompt ({t}) + steps ({steps}) + draft_len + 1 ({length + 1}) exceed max_len {max_len}")
    if t > 1:
        _, cache = _llama.prefill(params, prompt[:-1], config=config, max_len=max_len)
    else:
        cache = _llama.init_cache(config, max_len, dtype=params["embed"].dtype)
    return _run(params, draft_params, cache, prompt[-1], key, jnp.float32(temp), jnp.asarray(dtemp),
                jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32), config, draft_config,
                name, tuple(sorted(opts.items())), k, length, steps, eos)
