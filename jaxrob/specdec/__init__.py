"""Multi-draft speculative sampling: selection schemes, their exact acceptance, and a real LM driving them.

Selection schemes (``scheme(key, p, qs, drafts) -> (token, accepted)``; ``p`` the target's
``(V,)`` next-token law, ``qs`` the ``(K, V)`` draft laws, ``drafts`` the ``(K,)`` draft
tokens; the output token has law exactly ``p``): :func:`single_draft`, :func:`specinfer`,
:func:`spectr`, :func:`lp_optimal`, :func:`canonical_is`, :func:`truncated_is`.

Exact analysis: :func:`acceptance_probability` (closed form or enumeration, never
sampling), :func:`output_distribution`, :func:`exact_marginal`, :func:`optimal_acceptance`,
:func:`k2_optimal_acceptance`, :func:`k2_acceptance_is_one`, :func:`spectr_rho`, and the
JAX simplex solver :func:`simplex`.

Language model: :mod:`jaxrob.specdec.llama` (Llama decoder with KV cache, SmolLM2-135M
GGUF loader, tokenizer, early-exit drafts), sampling with temperature / top-k / top-p
(:func:`sampling_probs`, :func:`sample`), and :func:`speculative_generate`, the
multi-draft generation loop (block efficiency = tokens per target call).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxrob import specdec
  >>> p = jnp.array([0.5, 0.3, 0.2]); qs = jnp.array([[0.2, 0.3, 0.5]] * 2)
  >>> drafts = specdec.sample_drafts(jax.random.key(0), qs)
  >>> token, accepted = specdec.specinfer(jax.random.key(1), p, qs, drafts)
  >>> round(float(specdec.acceptance_probability(specdec.specinfer, p, qs)), 4)
  0.76

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234.
"""

from jaxrob.specdec import llama
from jaxrob.specdec._acceptance import (acceptance_probability, exact_marginal, k2_acceptance_is_one,
                                        k2_optimal_acceptance, optimal_acceptance)
from jaxrob.specdec._generation import GENERATION_SCHEMES, SpeculativeOutput, speculative_generate
from jaxrob.specdec._lp import LPSolution, simplex
from jaxrob.specdec._sampling import sample, sample_from_probs, sampling_probs
from jaxrob.specdec._schemes import (LP_TUPLE_LIMIT, SCHEMES, canonical_is, lp_optimal, output_distribution,
                                     sample_drafts, scheme_name, single_draft, specinfer, spectr, spectr_rho,
                                     truncated_is)

__all__ = [
    "llama",
    "single_draft", "specinfer", "spectr", "lp_optimal", "canonical_is", "truncated_is", "SCHEMES",
    "scheme_name", "sample_drafts", "output_distribution", "spectr_rho", "LP_TUPLE_LIMIT",
    "acceptance_probability", "exact_marginal", "optimal_acceptance", "k2_optimal_acceptance",
    "k2_acceptance_is_one", "simplex", "LPSolution",
    "sampling_probs", "sample_from_probs", "sample",
    "speculative_generate", "SpeculativeOutput", "GENERATION_SCHEMES",
]
