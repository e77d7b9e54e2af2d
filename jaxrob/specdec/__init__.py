"""Multi-draft speculative sampling (issue #6, in progress).

Built so far, in private modules and not yet part of the public API:
``_llama`` (a Llama decoder over a params pytree with a static KV cache and
shared-prefix block scoring), ``_gguf`` (SmolLM2-135M from its GGUF file),
``_tokenizer`` (the BPE tokenizer rebuilt from the GGUF metadata) and
``_sampling`` (temperature / top-k / top-p).  The draft-selection schemes and
their exact acceptance probabilities follow.
"""
