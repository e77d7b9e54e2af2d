"""The :class:`Dataset` record shared by every source (embedded arrays or TFDS)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np


class DatasetNotFoundError(ValueError):
    """A TFDS data set is not prepared (downloaded and converted) in ``data_dir``."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image-classification split with random access to its examples.

    Examples live either in memory (``images`` and ``labels`` are numpy arrays,
    as for the embedded ``mnist10k``) or in a random-access ``source`` (a TFDS
    ``ArrayRecordDataSource`` whose records are ``{"image": uint8 (H, W, C),
    "label": int}``).  :meth:`get` reads a batch of examples from either, so the
    batching code never needs to know which one it has.

    Attributes:
      name: the name the data set was loaded under, e.g. ``"mnist10k"``.
      split: the split, e.g. ``"train"``.
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
      input_shape: per-example image shape ``(H, W, C)``.
      images: uint8 array of shape ``(N, H, W, C)`` (read-only), or ``None``
        when the examples live in ``source``.
      labels: int32 array of shape ``(N,)`` (read-only), or ``None``.
      source: a random-access sequence of ``{"image", "label"}`` records
        (``__len__``, ``__getitem__`` and, if it has one, the batched
        ``__getitems__``), or ``None`` for in-memory data.
    """

    name: str
    split: str
    num_classes: int
    input_shape: tuple[int, int, int]
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self):
        in_memory = self.images is not None or self.labels is not None
        if in_memory == (self.source is not None):
            raise ValueError("Dataset needs either `images` and `labels` (in memory) or a `source`, not both "
                             "and not neither")
        if in_memory:
            if self.images is None or self.labels is None:
                raise ValueError("an in-memory Dataset needs both `images` and `labels`")
            if self.images.dtype != np.uint8 or self.images.shape[1:] != tuple(self.input_shape):
                raise ValueError(f"images must be uint8 of shape (N, {', '.join(map(str, self.input_shape))}); "
                                 f"got {self.images.dtype} {self.images.shape}")
            if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
                raise ValueError(f"labels must be int32 of shape ({self.images.shape[0]},); "
                                 f"got {self.labels.dtype} {self.labels.shape}")

    @property
    def in_memory(self) -> bool:
        """True if the examples are numpy arrays in memory (``images``/``labels``)."""
        return self.source is None

    def __len__(self) -> int:
        return len(self.labels) if self.source is None else len(self.source)

    def __repr__(self) -> str:
        storage = "memory" if self.in_memory else type(self.source).__name__
        return (f"Dataset(name={self.name!r}, split={self.split!r}, len={len(self)}, "
                f"num_classes={self.num_classes}, input_shape={self.input_shape}, storage={storage})")

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reads the examples at ``indices``, in that order.

        Args:
          indices: 1-D integer indices in ``[0, len(self))``; repeats allowed.

        Returns:
          ``(images, labels)``: uint8 ``(B, H, W, C)`` and int32 ``(B,)``, with
          ``B = len(indices)``.  For in-memory data this is one fancy-indexing
          gather; for a TFDS source, one batched ``__getitems__`` read.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(f"indices must be a 1-D sequence of integers; got dtype {idx.dtype} "
                             f"and shape {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}) for {self.name}/{self.split}; "
                             f"got values in [{idx.min()}, {idx.max()}]")
        if self.source is None:
            return self.images[idx], self.labels[idx]
        return self._read_source(idx)

    def _read_source(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = idx.tolist()
        if not keys:
            return (np.zeros((0, *self.input_shape), np.uint8), np.zeros((0,), np.int32))
        getitems = getattr(self.source, "__getitems__", None)
        records = getitems(keys) if getitems is not None else [self.source[k] for k in keys]
        images = np.stack([np.asarray(r["image"]) for r in records])
        labels = np.asarray([r["label"] for r in records]).astype(np.int32)
        if images.dtype != np.uint8 or images.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"{self.name}/{self.split}: records hold images of dtype {images.dtype} and shape "
                             f"{images.shape[1:]}, expected uint8 {tuple(self.input_shape)}")
        return images, labels


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (no copy), so arrays shared between Datasets can't be mutated."""
    view = a.view()
    view.flags.writeable = False
    return view
