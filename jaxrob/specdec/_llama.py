"""A Llama-architecture decoder as pure functions over a params pytree, with a static KV cache.

The model (Llama 2/3 family, used by SmolLM2): token embedding -> ``n_layers`` pre-norm
blocks ``x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))`` -> RMSNorm -> vocabulary head
(tied to the embedding when the checkpoint has no separate output matrix).  Attention is
causal grouped-query attention (``n_heads`` query heads share ``n_kv_heads`` key/value
heads) with rotary position embeddings in the "rotate half" convention (the pair
``(i, i + head_dim/2)`` of each head is rotated by angle ``pos * base**(-2i/head_dim)``);
:mod:`jaxrob.specdec._gguf` un-permutes llama.cpp's q/k weights to match this convention.

Params pytree (``x @ W`` layout; the per-layer tensors are stacked on a leading layer axis
so the layers run as one ``lax.scan`` body and compile once)::

    {"embed": (V, D), "final_norm": (D,), ["lm_head": (D, V)], ["exit": {"norm": (D,), "proj": (D, D)}],
     "layers": {"attn_norm": (N, D), "wq": (N, D, H*hd), "wk": (N, D, KV*hd), "wv": (N, D, KV*hd),
                "wo": (N, H*hd, D), "mlp_norm": (N, D), "w_gate": (N, D, F), "w_up": (N, D, F),
                "w_down": (N, F, D)}}

Functions (all pure; ``config`` is a static, hashable :class:`LlamaConfig`):

* :func:`apply` -- uncached causal forward, ``(T,) tokens -> (T, V) logits``: the house
  ``apply_fn`` (``functools.partial(apply, config=cfg)``).
* :func:`prefill` / :func:`extend` -- a :class:`KVCache` of fixed ``max_len`` per sequence;
  ``extend`` appends a block of ``T`` tokens (``T = 1``: one decoding step).  Prompts are
  padded to a multiple of ``bucket`` so prefill compiles once per bucket.
* :func:`score_block` / :func:`extend_block` / :func:`commit` -- speculative decoding: ``B``
  candidate continuations of one shared prefix cache are scored in one batched forward pass.
  Their keys/values go into a small per-candidate :class:`BlockKV` buffer (the prefix cache
  is read, never copied ``B`` times); attention for a block token covers the prefix
  (positions ``< cache.length``) plus its own candidate's tokens up to itself.
  ``commit`` then writes the first ``n`` entries of the chosen candidate's buffer into the
  prefix cache.  ``extend_block`` with ``T = 1`` is also how a draft model decodes ``B``
  candidates autoregressively on top of a shared prefix.
* :func:`early_exit` / :func:`fit_exit_head` -- the self-speculative draft: the first
  ``n`` layers, followed by the final norm and tied head, optionally with a small trainable
  exit head (its own RMSNorm scale and a zero-initialised residual ``D x D`` adapter)
  distilled to the full model's next-token distribution.  Since the first ``n`` layers are
  the target's, the draft's prefix cache is the target's cache cut to its first ``n``
  layers (:func:`truncate_cache`).
* :func:`generate` -- plain autoregressive sampling (the baseline speculative decoding is
  compared with), one ``lax.scan``.

Cache capacity: writes past ``max_len`` are dropped (scatter ``mode="drop"``), never wrapped
or clamped onto earlier positions; the Python entry points raise ``ValueError`` when a
concrete cache would overflow.  Under an outer ``jit`` the caller keeps
``cache.length + T <= max_len``.

References:
  LLaMA: Open and Efficient Foundation Language Models, Touvron et al., 2023,
  arXiv:2302.13971.  RoFormer: Enhanced Transformer with Rotary Position Embedding, Su et
  al., 2021, arXiv:2104.09864.  GQA: Training Generalized Multi-Query Transformer Models
  from Multi-Head Checkpoints, Ainslie et al., EMNLP 2023, arXiv:2305.13245.  GLU Variants
  Improve Transformer (SwiGLU), Shazeer, 2020, arXiv:2002.05202.  Root Mean Square Layer
  Normalization, Zhang & Sennrich, NeurIPS 2019, arXiv:1910.07467.  Draft & Verify: Lossless
  Large Language Model Acceleration via Self-Speculative Decoding, Zhang et al., ACL 2024,
  arXiv:2309.08168 (layer-skipping drafts); LayerSkip: Enabling Early Exit Inference and
  Self-Speculative Decoding, Elhoushi et al., ACL 2024, arXiv:2404.16710 (early-exit drafts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrob import _validate

from . import _sampling

__all__ = ["LlamaConfig", "KVCache", "BlockKV", "init_params", "apply", "init_cache", "prefill",
           "extend", "init_block", "extend_block", "score_block", "commit", "truncate_cache",
           "early_exit", "fit_exit_head", "generate"]


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-architecture decoder (hashable: a static jit argument).

    Attributes:
      vocab_size: V.
      dim: model width D.
      n_layers: number of decoder blocks N.
      n_heads: query heads H.
      n_kv_heads: key/value heads (divides ``n_heads``; grouped-query attention).
      hidden_dim: SwiGLU width F.
      head_dim: per-head width hd; ``0`` means ``dim // n_heads``.  Must be even (RoPE).
      rope_base: RoPE frequency base (1e4 for Llama 2, 1e5 for SmolLM2).
      norm_eps: RMSNorm epsilon.
      max_position: the context length the model was trained for (caches may not exceed it).
      tie_embeddings: the head is ``embed.T`` (no ``lm_head`` leaf).
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int = 0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    max_position: int = 2048
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim",
                     "max_position"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        _validate.number("head_dim", self.head_dim, min=0, integer=True)
        _validate.number("rope_base", self.rope_base, min=0.0, min_inclusive=False)
        _validate.number("norm_eps", self.norm_eps, min=0.0)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads}) for grouped-query attention")
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise ValueError(f"dim ({self.dim}) is not divisible by n_heads ({self.n_heads}); "
                                 "give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def smollm2_135m(cls) -> "LlamaConfig":
        """SmolLM2-135M: 30 layers, d=576, 9/3 heads, F=1536, V=49,152, RoPE base 1e5."""
        return cls(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                   rope_base=100000.0, norm_eps=1e-5, max_position=8192)


def init_params(config: LlamaConfig, *, key: jax.Array, dtype: Any = jnp.float32) -> dict:
    """Random parameters (normal, std 0.02; norms at 1) with the pytree layout above."""
    key = _validate.prng_key("key", key)
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    return _init_params(key, config, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _init_params(key, config, dtype):
    c = config
    n, d, hd, f = c.n_layers, c.dim, c.head_dim, c.hidden_dim
    shapes = {"wq": (n, d, c.n_heads * hd), "wk": (n, d, c.n_kv_heads * hd),
              "wv": (n, d, c.n_kv_heads * hd), "wo": (n, c.n_heads * hd, d),
              "w_gate": (n, d, f), "w_up": (n, d, f), "w_down": (n, f, d),
              "embed": (c.vocab_size, d)}
    if not c.tie_embeddings:
        shapes["lm_head"] = (d, c.vocab_size)
    # One normal draw sliced into the tensors: a single threefry kernel to compile.
    sizes = [math.prod(s) for s in shapes.values()]
    flat = 0.02 * jax.random.normal(key, (sum(sizes),), dtype)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    w = {name: part.reshape(s) for (name, s), part in zip(shapes.items(), parts)}
    params = {"embed": w.pop("embed"), "final_norm": jnp.ones((d,), dtype)}
    if "lm_head" in w:
        params["lm_head"] = w.pop("lm_head")
    params["layers"] = dict(w, attn_norm=jnp.ones((n, d), dtype), mlp_norm=jnp.ones((n, d), dtype))
    return params


def _expected_shapes(c: LlamaConfig) -> dict:
    n, d, hd, f = c.n_layers, c.dim, c.head_dim, c.hidden_dim
    return {"embed": (c.vocab_size, d), "final_norm": (d,),
            "layers": {"attn_norm": (n, d), "wq": (n, d, c.n_heads * hd), "wk": (n, d, c.n_kv_heads * hd),
                       "wv": (n, d, c.n_kv_heads * hd), "wo": (n, c.n_heads * hd, d), "mlp_norm": (n, d),
                       "w_gate": (n, d, f), "w_up": (n, d, f), "w_down": (n, f, d)}}


def _check_params(params: Any, config: Any) -> None:
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    if not isinstance(params, dict) or "layers" not in params:
        raise TypeError("params must be the Llama params dict (keys 'embed', 'layers', 'final_norm'); "
                        f"got {type(params).__name__}")
    want = _expected_shapes(config)
    if not config.tie_embeddings:
        want["lm_head"] = (config.dim, config.vocab_size)
    if "exit" in params:
        want["exit"] = {"norm": (config.dim,), "proj": (config.dim, config.dim)}
    for section, spec in want.items():
        if section not in params:
            raise ValueError(f"params has no {section!r} entry (tie_embeddings={config.tie_embeddings})")
        got = params[section]
        items = spec.items() if isinstance(spec, dict) else [(None, spec)]
        for name, shape in items:
            leaf = got if name is None else got.get(name) if isinstance(got, dict) else None
            where = section if name is None else f"{section}.{name}"
            if leaf is None:
                raise ValueError(f"params has no {where!r} entry")
            if tuple(np.shape(leaf)) != shape:
                raise ValueError(f"params[{where!r}] has shape {tuple(np.shape(leaf))}, but the config "
                                 f"({config.n_layers} layers, dim {config.dim}, ...) needs {shape}")


def _check_tokens(name: str, tokens: Any, config: LlamaConfig, ndim: int) -> jax.Array:
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != ndim:
        want = "(T,)" if ndim == 1 else "(B, T)"
        raise ValueError(f"{name} must have shape {want}, got {tokens.shape}")
    if tokens.shape[-1] < 1:
        raise ValueError(f"{name} must hold at least one token, got shape {tokens.shape}")
    if _validate.is_concrete(tokens):
        a = np.asarray(tokens)
        if a.min() < 0 or a.max() >= config.vocab_size:
            raise ValueError(f"{name} must lie in [0, {config.vocab_size}), got values in "
                             f"[{a.min()}, {a.max()}]")
    return jnp.asarray(tokens, jnp.int32)


# ----------------------------------------------------------------------------- building blocks


def _rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


def _rope_tables(positions: jax.Array, c: LlamaConfig) -> tuple[jax.Array, jax.Array]:
    inv_freq = c.rope_base ** (-jnp.arange(0, c.head_dim, 2, dtype=jnp.float32) / c.head_dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq          # (T, hd/2)
    return jnp.cos(angles), jnp.sin(angles)


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on ``x`` of shape (T, heads, hd)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _qkv(lp: dict, x: jax.Array, cos, sin, c: LlamaConfig):
    h = _rms_norm(x, lp["attn_norm"], c.norm_eps)
    t = x.shape[0]
    q = (h @ lp["wq"]).reshape(t, c.n_heads, c.head_dim)
    k = (h @ lp["wk"]).reshape(t, c.n_kv_heads, c.head_dim)
    v = (h @ lp["wv"]).reshape(t, c.n_kv_heads, c.head_dim)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, c: LlamaConfig) -> jax.Array:
    """GQA attention: q (T, H, hd), k/v (S, KV, hd), mask (T, S) bool -> (T, H*hd)."""
    t = q.shape[0]
    g = c.n_heads // c.n_kv_heads
    qg = q.reshape(t, c.n_kv_heads, g, c.head_dim).astype(jnp.float32)
    s = jnp.einsum("tkgd,skd->kgts", qg, k.astype(jnp.float32)) / math.sqrt(c.head_dim)
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("kgts,skd->tkgd", p, v.astype(jnp.float32))
    return o.reshape(t, c.n_heads * c.head_dim).astype(q.dtype)


def _finish_layer(lp: dict, x: jax.Array, attn: jax.Array, c: LlamaConfig) -> jax.Array:
    x = x + attn @ lp["wo"]
    h = _rms_norm(x, lp["mlp_norm"], c.norm_eps)
    return x + (jax.nn.silu(h @ lp["w_gate"]) * (h @ lp["w_up"])) @ lp["w_down"]


def _head(params: dict, x: jax.Array, c: LlamaConfig) -> jax.Array:
    if "exit" in params:
        h = _rms_norm(x, params["exit"]["norm"], c.norm_eps)
        h = h + h @ params["exit"]["proj"]
    else:
        h = _rms_norm(x, params["final_norm"], c.norm_eps)
    w = params["lm_head"] if "lm_head" in params else params["embed"].T
    return (h @ w).astype(jnp.float32)


# ----------------------------------------------------------------------------- uncached forward


def _hidden(params: dict, tokens: jax.Array, c: LlamaConfig) -> jax.Array:
    t = tokens.shape[0]
    cos, sin = _rope_tables(jnp.arange(t), c)
    mask = jnp.tril(jnp.ones((t, t), bool))

    def layer(x, lp):
        q, k, v = _qkv(lp, x, cos, sin, c)
        return _finish_layer(lp, x, _attend(q, k, v, mask, c), c), None

    x, _ = jax.lax.scan(layer, params["embed"][tokens], params["layers"])
    return x


@functools.partial(jax.jit, static_argnames=("config",))
def _apply(params, tokens, config):
    return _head(params, _hidden(params, tokens, config), config)


def apply(params: dict, tokens: jax.typing.ArrayLike, *, config: LlamaConfig) -> jax.Array:
    """Uncached causal forward pass of one sequence.

    Args:
      params: the params pytree.
      tokens: ``(T,)`` int token ids in ``[0, V)``; positions are ``0 .. T-1``.
      config: the model's :class:`LlamaConfig`.

    Returns:
      ``(T, V)`` float32 next-token logits (row ``t`` predicts token ``t + 1``).

    Example:
      >>> cfg = LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
      >>> p = init_params(cfg, key=jax.random.key(0))
      >>> apply(p, jnp.array([1, 2, 3]), config=cfg).shape
      (3, 11)
    """
    _check_params(params, config)
    return _apply(params, _check_tokens("tokens", tokens, config, 1), config)


# ----------------------------------------------------------------------------- KV cache


class KVCache(NamedTuple):
    """Keys/values of one sequence's first ``length`` tokens (post-RoPE keys).

    Attributes:
      k: ``(N, max_len, KV, hd)``.
      v: ``(N, max_len, KV, hd)``.
      length: int32 scalar, number of valid positions (entries at ``>= length`` are ignored).
    """

    k: jax.Array
    v: jax.Array
    length: jax.Array


class BlockKV(NamedTuple):
    """Keys/values of ``B`` candidate blocks that continue one :class:`KVCache`.

    Attributes:
      k: ``(B, N, L, KV, hd)``; candidate ``b``'s token ``j`` sits at position
        ``cache.length + j``.
      v: ``(B, N, L, KV, hd)``.
      length: int32 ``(B,)``, tokens written so far per candidate.
    """

    k: jax.Array
    v: jax.Array
    length: jax.Array


def init_cache(config: LlamaConfig, max_len: int, *, dtype: Any = jnp.float32) -> KVCache:
    """An empty cache holding up to ``max_len <= config.max_position`` positions."""
    max_len = _validate.number("max_len", max_len, min=1, max=config.max_position, integer=True)
    shape = (config.n_layers, max_len, config.n_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def init_block(config: LlamaConfig, batch: int, block_len: int, *, dtype: Any = jnp.float32) -> BlockKV:
    """Empty buffers for ``batch`` candidate blocks of up to ``block_len`` tokens each."""
    batch = _validate.number("batch", batch, min=1, integer=True)
    block_len = _validate.number("block_len", block_len, min=1, integer=True)
    shape = (batch, config.n_layers, block_len, config.n_kv_heads, config.head_dim)
    return BlockKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


def _cached_forward(params, tokens, prefix, buf_k, buf_v, buf_len, c: LlamaConfig):
    """Runs ``tokens`` (T,) after ``prefix`` (a KVCache or None) and a buffer holding ``buf_len``
    tokens; writes their k/v into the buffer at ``buf_len ..``.  -> (logits (T, V), buf_k, buf_v)."""
    t = tokens.shape[0]
    prefix_len = 0 if prefix is None else prefix.length
    cos, sin = _rope_tables(prefix_len + buf_len + jnp.arange(t), c)
    slots = buf_len + jnp.arange(t)                                    # buffer slots of the new tokens
    buf_mask = jnp.arange(buf_k.shape[1])[None, :] <= slots[:, None]   # (T, Lb): causal within buffer
    if prefix is not None:
        pre_mask = jnp.broadcast_to(jnp.arange(prefix.k.shape[1]) < prefix.length, (t, prefix.k.shape[1]))
        mask = jnp.concatenate([pre_mask, buf_mask], axis=1)
    else:
        mask = buf_mask

    def layer(x, xs):
        lp, bk, bv = xs[:3]
        q, k, v = _qkv(lp, x, cos, sin, c)
        bk = bk.at[slots].set(k.astype(bk.dtype), mode="drop")
        bv = bv.at[slots].set(v.astype(bv.dtype), mode="drop")
        if prefix is not None:
            keys, vals = jnp.concatenate([xs[3], bk]), jnp.concatenate([xs[4], bv])
        else:
            keys, vals = bk, bv
        return _finish_layer(lp, x, _attend(q, keys, vals, mask, c), c), (bk, bv)

    xs = (params["layers"], buf_k, buf_v) + (() if prefix is None else (prefix.k, prefix.v))
    x, (buf_k, buf_v) = jax.lax.scan(layer, params["embed"][tokens], xs)
    return _head(params, x, c), buf_k, buf_v


@functools.partial(jax.jit, static_argnames=("config",))
def _extend(params, cache, tokens, n_valid, config):
    logits, k, v = _cached_forward(params, tokens, None, cache.k, cache.v, cache.length, config)
    return logits, KVCache(k, v, cache.length + n_valid)


@functools.partial(jax.jit, static_argnames=("config",))
def _extend_block(params, cache, block, tokens, config):
    def one(bk, bv, blen, toks):
        logits, bk, bv = _cached_forward(params, toks, cache, bk, bv, blen, config)
        return logits, bk, bv, blen + toks.shape[0]

    logits, k, v, length = jax.vmap(one)(block.k, block.v, block.length, tokens)
    return logits, BlockKV(k, v, length)


def _check_cache(cache: Any, config: LlamaConfig, name: str = "cache") -> None:
    if not isinstance(cache, KVCache):
        raise TypeError(f"{name} must be a KVCache (from init_cache or prefill), got {type(cache).__name__}")
    want = (config.n_layers, config.n_kv_heads, config.head_dim)
    got = (cache.k.shape[0], cache.k.shape[2], cache.k.shape[3]) if cache.k.ndim == 4 else None
    if got != want or cache.v.shape != cache.k.shape:
        raise ValueError(f"{name} has k/v shapes {cache.k.shape}/{cache.v.shape}; the config needs "
                         f"(n_layers={want[0]}, max_len, n_kv_heads={want[1]}, head_dim={want[2]})")


def _check_room(length: Any, extra: int, max_len: int, what: str) -> None:
    if _validate.is_concrete(length):
        n = int(np.max(np.asarray(length)))
        if n + extra > max_len:
            raise ValueError(f"{what}: {n} cached + {extra} new tokens exceed the cache's "
                             f"max_len={max_len}; make a larger cache (init_cache / prefill max_len)")


def extend(params: dict, cache: KVCache, tokens: jax.typing.ArrayLike, *, config: LlamaConfig,
           n_valid: Any = None) -> tuple[jax.Array, KVCache]:
    """Appends ``T`` tokens to one sequence's cache and returns their logits.

    Args:
      params: the params pytree.
      cache: the sequence's :class:`KVCache`.
      tokens: ``(T,)`` token ids at positions ``cache.length .. cache.length + T - 1``
        (``T = 1`` is one decoding step).
      config: the model's config.
      n_valid: advance ``length`` by this many tokens only (``<= T``; default ``T``); the
        trailing ``T - n_valid`` tokens are padding whose k/v are written but ignored.

    Returns:
      ``(logits (T, V) float32, new cache)``.

    Raises:
      ValueError: the cache would overflow, or shapes/ids don't match the config.
    """
    _check_params(params, config)
    _check_cache(cache, config)
    tokens = _check_tokens("tokens", tokens, config, 1)
    t = tokens.shape[0]
    if n_valid is None:
        n_valid = t
    elif _validate.is_concrete(n_valid):
        n_valid = _validate.number("n_valid", n_valid, min=0, max=t, integer=True)
    _check_room(cache.length, t, cache.k.shape[1], "extend")
    return _extend(params, cache, tokens, jnp.asarray(n_valid, jnp.int32), config)


def prefill(params: dict, tokens: jax.typing.ArrayLike, *, config: LlamaConfig, max_len: int,
            bucket: int = 64) -> tuple[jax.Array, KVCache]:
    """Runs a prompt into a fresh cache of ``max_len`` positions.

    The prompt is padded to a multiple of ``bucket`` (capped at ``max_len``), so prompts of
    different lengths share one compilation per bucket.

    Args:
      params: the params pytree.
      tokens: ``(T,)`` prompt token ids, ``1 <= T <= max_len``.
      config: the model's config.
      max_len: cache capacity (prompt + everything generated later), ``<= config.max_position``.
      bucket: padding granularity (>= 1).

    Returns:
      ``(logits (T, V) float32, cache)`` with ``cache.length == T``.

    Example:
      >>> cfg = LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
      >>> p = init_params(cfg, key=jax.random.key(0))
      >>> logits, cache = prefill(p, jnp.array([1, 2, 3]), config=cfg, max_len=16)
      >>> logits.shape, int(cache.length)
      ((3, 11), 3)
    """
    _check_params(params, config)
    tokens = _check_tokens("tokens", tokens, config, 1)
    bucket = _validate.number("bucket", bucket, min=1, integer=True)
    max_len = _validate.number("max_len", max_len, min=1, max=config.max_position, integer=True)
    t = tokens.shape[0]
    if t > max_len:
        raise ValueError(f"the prompt has {t} tokens but max_len is {max_len}")
    padded = min(-(-t // bucket) * bucket, max_len)
    toks = jnp.pad(tokens, (0, padded - t))
    cache = init_cache(config, max_len, dtype=params["embed"].dtype)
    logits, cache = _extend(params, cache, toks, jnp.asarray(t, jnp.int32), config)
    return logits[:t], cache


def extend_block(params: dict, cache: KVCache, block: BlockKV, tokens: jax.typing.ArrayLike, *,
                 config: LlamaConfig) -> tuple[jax.Array, BlockKV]:
    """Appends ``T`` tokens to each of ``B`` candidate blocks that continue ``cache``.

    Candidate ``b``'s new token ``j`` attends to the prefix (``cache``'s first
    ``cache.length`` positions), to candidate ``b``'s earlier block tokens and to itself; the
    prefix cache is read, not modified or copied per candidate.

    Args:
      params: the params pytree.
      cache: the shared prefix :class:`KVCache`.
      block: the candidates' :class:`BlockKV` (from :func:`init_block` or an earlier call).
      tokens: ``(B, T)`` new token ids.
      config: the model's config.

    Returns:
      ``(logits (B, T, V) float32, updated block)``.
    """
    _check_params(params, config)
    _check_cache(cache, config)
    tokens = _check_tokens("tokens", tokens, config, 2)
    if not isinstance(block, BlockKV):
        raise TypeError(f"block must be a BlockKV (from init_block), got {type(block).__name__}")
    if block.k.ndim != 5 or block.k.shape[0] != tokens.shape[0] or block.k.shape[1:2] + block.k.shape[3:] != (
            config.n_layers, config.n_kv_heads, config.head_dim):
        raise ValueError(f"block k has shape {block.k.shape}; with tokens of shape {tokens.shape} it must be "
                         f"({tokens.shape[0]}, {config.n_layers}, block_len, {config.n_kv_heads}, "
                         f"{config.head_dim})")
    _check_room(block.length, tokens.shape[1], block.k.shape[2], "extend_block (block buffer)")
    return _extend_block(params, cache, block, tokens, config)


def score_block(params: dict, cache: KVCache, tokens: jax.typing.ArrayLike, *,
                config: LlamaConfig) -> tuple[jax.Array, BlockKV]:
    """Scores ``B`` candidate continuations of a shared prefix in one batched forward pass.

    This is the target model's verification step in (multi-draft) speculative decoding:
    ``tokens[b]`` are the ``L`` tokens of candidate ``b`` at positions ``cache.length ..
    cache.length + L - 1``, and ``logits[b, j]`` is the next-token distribution after
    candidate ``b``'s first ``j + 1`` tokens -- exactly what a from-scratch forward over
    ``prefix + tokens[b]`` gives at those positions.

    Args:
      params: the params pytree.
      cache: the prefix :class:`KVCache` (read only).
      tokens: ``(B, L)`` candidate token ids.
      config: the model's config.

    Returns:
      ``(logits (B, L, V) float32, block)``; pass ``block`` to :func:`commit` to append the
      accepted tokens of one candidate to the cache.

    Example:
      >>> cfg = LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
      >>> p = init_params(cfg, key=jax.random.key(0))
      >>> _, cache = prefill(p, jnp.array([1, 2, 3]), config=cfg, max_len=16)
      >>> logits, block = score_block(p, cache, jnp.array([[4, 5], [6, 7]]), config=cfg)
      >>> cache = commit(cache, block, 2, index=1)    # accept candidate 1's two tokens
      >>> logits.shape, int(cache.length)
      ((2, 2, 11), 5)
    """
    if not hasattr(tokens, "shape"):
        tokens = np.asarray(tokens)
    if len(tokens.shape) != 2:
        raise ValueError(f"tokens must have shape (B, L), got {tokens.shape}")
    dtype = cache.k.dtype if isinstance(cache, KVCache) else jnp.float32
    block = init_block(config, tokens.shape[0], tokens.shape[1], dtype=dtype)
    return extend_block(params, cache, block, tokens, config=config)


@jax.jit
def _commit(cache, block, n, index):
    bk, bv = block.k[index], block.v[index]                        # (N, L, KV, hd)
    slots = cache.length + jnp.arange(bk.shape[1])
    return KVCache(cache.k.at[:, slots].set(bk, mode="drop"),
                   cache.v.at[:, slots].set(bv, mode="drop"), cache.length + n)


def commit(cache: KVCache, block: BlockKV, n: Any, *, index: Any = 0) -> KVCache:
    """Appends the first ``n`` tokens of candidate ``index`` of ``block`` to ``cache``.

    Args:
      cache: the prefix :class:`KVCache` the block was scored against.
      block: from :func:`score_block` / :func:`extend_block` on that cache.
      n: number of accepted tokens, ``0 <= n <= block.length[index]`` (may be traced).
      index: which candidate (may be traced).

    Returns:
      The cache with ``length + n`` positions.  (All ``L`` block entries are written; those
      past ``n`` lie beyond ``length`` and are ignored and later overwritten.)
    """
    if not isinstance(cache, KVCache) or not isinstance(block, BlockKV):
        raise TypeError("commit needs a KVCache and the BlockKV scored against it, got "
                        f"{type(cache).__name__} and {type(block).__name__}")
    if block.k.shape[1:2] + block.k.shape[3:] != cache.k.shape[:1] + cache.k.shape[2:]:
        raise ValueError(f"block k shape {block.k.shape} does not match cache k shape {cache.k.shape}")
    b = block.k.shape[0]
    if _validate.is_concrete(index):
        index = _validate.number("index", index, min=0, max=b - 1, integer=True)
    if _validate.is_concrete(n):
        limit = int(block.length[index]) if (_validate.is_concrete(block.length)
                                             and _validate.is_concrete(index)) else block.k.shape[2]
        n = _validate.number("n", n, min=0, max=limit, integer=True)
        _check_room(cache.length, n, cache.k.shape[1], "commit")
    return _commit(cache, block, jnp.asarray(n, jnp.int32), jnp.asarray(index, jnp.int32))


# ----------------------------------------------------------------------------- early-exit draft


def early_exit(config: LlamaConfig, params: dict, n_layers: int, *,
               exit_head: bool = False) -> tuple[LlamaConfig, dict]:
    """The draft model made of the first ``n_layers`` blocks of ``params``.

    It keeps the final RMSNorm and the (tied) head.  With ``exit_head=True`` it gets an
    ``"exit"`` entry -- its own RMSNorm scale (initialised to ``final_norm``) and a
    zero-initialised residual adapter ``h + h @ proj`` (D x D) -- which
    :func:`fit_exit_head` trains; at initialisation it computes the same logits as without.

    Args:
      config, params: the full model.
      n_layers: ``1 <= n_layers <= config.n_layers``.
      exit_head: add the trainable exit head.

    Returns:
      ``(draft_config, draft_params)``; the layer arrays are slices of the full model's
      (no retraining of the body).

    References:
      LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding, Elhoushi et
      al., ACL 2024, arXiv:2404.16710.
    """
    _check_params(params, config)
    n_layers = _validate.number("n_layers", n_layers, min=1, max=config.n_layers, integer=True)
    draft_cfg = dataclasses.replace(config, n_layers=n_layers)
    draft = {k: v for k, v in params.items() if k not in ("layers", "exit")}
    draft["layers"] = jax.tree.map(lambda a: a[:n_layers], params["layers"])
    if exit_head:
        d = config.dim
        draft["exit"] = {"norm": jnp.asarray(params["final_norm"]),
                         "proj": jnp.zeros((d, d), params["final_norm"].dtype)}
    return draft_cfg, draft


def truncate_cache(cache: KVCache, n_layers: int) -> KVCache:
    """The first ``n_layers`` layers of a cache: an early-exit draft's prefix cache."""
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
    n_layers = _validate.number("n_layers", n_layers, min=1, max=cache.k.shape[0], integer=True)
    return KVCache(cache.k[:n_layers], cache.v[:n_layers], cache.length)


@functools.partial(jax.jit, static_argnames=("config", "steps", "learning_rate"))
def _fit_exit(params, tokens, target_logits, config, steps, learning_rate):
    hidden = jax.vmap(lambda t: _hidden(params, t, config))(tokens)          # (S, T, D), frozen body
    target = jax.nn.softmax(target_logits.astype(jnp.float32), axis=-1)
    opt = optax.adam(learning_rate)

    def loss_fn(exit_params):
        p = dict(params, exit=exit_params)
        logq = jax.nn.log_softmax(jax.vmap(lambda h: _head(p, h, config))(hidden), axis=-1)
        kl = jnp.sum(target * (jnp.log(jnp.maximum(target, 1e-30)) - logq), axis=-1)
        return jnp.mean(kl)

    def step(carry, _):
        ex, state = carry
        loss, g = jax.value_and_grad(loss_fn)(ex)
        updates, state = opt.update(g, state, ex)
        return (optax.apply_updates(ex, updates), state), loss

    (ex, _), losses = jax.lax.scan(step, (params["exit"], opt.init(params["exit"])), None, length=steps)
    return dict(params, exit=ex), losses


def fit_exit_head(params: dict, tokens: jax.typing.ArrayLike, target_logits: jax.typing.ArrayLike, *,
                  config: LlamaConfig, steps: int = 50, learning_rate: float = 1e-3) -> tuple[dict, jax.Array]:
    """Distills an early-exit draft's exit head to the target's next-token distributions.

    Minimizes the mean ``KL(target || draft)`` over the positions of ``tokens`` with Adam,
    training only ``params["exit"]`` (the body stays the target's first layers, so the
    draft can keep sharing the target's KV cache).  Full-batch, ``steps`` iterations in one
    ``lax.scan``.

    Args:
      params: draft params with an exit head (``early_exit(..., exit_head=True)``).
      tokens: ``(T,)`` or ``(S, T)`` training token ids.
      target_logits: ``(T, V)`` or ``(S, T, V)`` the full model's logits on ``tokens``
        (``apply(target_params, tokens, config=target_config)``).
      config: the draft's config.
      steps: Adam iterations (>= 1).
      learning_rate: Adam step size (> 0).

    Returns:
      ``(params with the trained exit head, losses (steps,))`` -- the loss before each step.
    """
    _check_params(params, config)
    if "exit" not in params:
        raise ValueError("params has no exit head; make the draft with early_exit(..., exit_head=True)")
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    tokens = _check_tokens("tokens", tokens, config, 2)
    target_logits = jnp.asarray(target_logits)
    if target_logits.ndim == 2:
        target_logits = target_logits[None]
    if target_logits.shape != tokens.shape + (config.vocab_size,):
        raise ValueError(f"target_logits must have shape {tokens.shape + (config.vocab_size,)} "
                         f"(tokens' shape + vocab), got {target_logits.shape}")
    steps = _validate.number("steps", steps, min=1, integer=True)
    learning_rate = float(_validate.number("learning_rate", learning_rate, min=0.0, min_inclusive=False))
    return _fit_exit(params, tokens, target_logits, config, steps, learning_rate)


# ----------------------------------------------------------------------------- generation


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def _generate(params, cache, logits, key, temperature, top_k, top_p, config, steps):
    def step(carry, i):
        cache, logits = carry
        probs = _sampling._probs(logits, temperature, top_k, top_p)
        tok = _sampling._draw(jax.random.fold_in(key, i), probs)
        new_logits, new_cache = _extend(params, cache, tok[None], jnp.int32(1), config)
        return (new_cache, new_logits[0]), tok

    (cache, _), toks = jax.lax.scan(step, (cache, logits), jnp.arange(steps))
    return toks, cache


def generate(params: dict, prompt: jax.typing.ArrayLike, *, config: LlamaConfig, steps: int,
             key: jax.Array | None = None, temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0,
             max_len: int | None = None) -> jax.Array:
    """Plain autoregressive sampling (one token per forward pass) after a prompt.

    Args:
      params: the params pytree.
      prompt: ``(T,)`` prompt ids.
      config: the model's config.
      steps: number of tokens to generate (>= 1).
      key: typed PRNG key; may be omitted only for greedy decoding (``temperature=0``).
      temperature, top_k, top_p: see :func:`jaxrob.specdec._sampling.sampling_probs`.
      max_len: cache size (default: ``T + steps`` rounded up to a multiple of 64).

    Returns:
      ``(steps,)`` int32 generated token ids (the prompt not included).

    Example:
      >>> cfg = LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
      >>> p = init_params(cfg, key=jax.random.key(0))
      >>> generate(p, jnp.array([1, 2]), config=cfg, steps=4, temperature=0.0).shape
      (4,)
    """
    _check_params(params, config)
    prompt = _check_tokens("prompt", prompt, config, 1)
    steps = _validate.number("steps", steps, min=1, integer=True)
    greedy = _validate.is_concrete(temperature) and float(temperature) == 0.0
    if key is None:
        if not greedy:
            raise ValueError("generate needs key=jax.random.key(seed) unless temperature=0 (greedy)")
        key = jax.random.key(0)
    key = _validate.prng_key("key", key)
    _sampling._check(jnp.zeros((config.vocab_size,)), temperature, top_k, top_p)
    need = prompt.shape[0] + steps
    if max_len is None:
        max_len = min(-(-need // 64) * 64, config.max_position)
    if need > max_len:
        raise ValueError(f"prompt ({prompt.shape[0]}) + steps ({steps}) exceeds max_len {max_len}")
    logits, cache = prefill(params, prompt, config=config, max_len=max_len)
    toks, _ = _generate(params, cache, logits[-1], key, jnp.asarray(temperature, jnp.float32),
                        jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32), config, steps)
    return toks
