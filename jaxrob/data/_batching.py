"""Deterministic, resumable mini-batches as float32 NHWC numpy arrays.

Batch ``k`` of a run is a pure function of ``(dataset, batch_size, seed,
shuffle, drop_remainder, k)``: with ``S = steps_per_epoch(...)``, it is batch
``k mod S`` of epoch ``k // S``, and the order of epoch ``e`` depends only on
``(seed, e)``.  Restarting at ``start_step=k`` therefore yields exactly the
batches an uninterrupted run yields from step ``k`` on.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxrob import _validate
from jaxrob.data._dataset import Dataset, read_only

_CHUNK = 4096  # examples per read in as_arrays


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches in one pass over ``n`` examples.

    Args:
      n: number of examples, ``>= 0``.
      batch_size: examples per batch, ``>= 1``.
      drop_remainder: if True the last ``n % batch_size`` examples of an epoch
        are dropped, ``floor(n / batch_size)``; else a final smaller batch is
        kept, ``ceil(n / batch_size)``.

    Returns:
      The number of batches per epoch.

    Example:
      >>> steps_per_epoch(10, 4), steps_per_epoch(10, 4, drop_remainder=False)
      (2, 3)
    """
    n = _validate.number("n", n, min=0, integer=True)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    _check_bool("drop_remainder", drop_remainder)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of epoch ``epoch``: a permutation of ``range(n)``.

    It is ``argsort`` (stable) of ``n`` raw 64-bit words from a PCG64 bit
    generator seeded with ``SeedSequence(seed, spawn_key=(epoch,))``.  Only raw
    bit-generator output is used (not ``Generator.permutation``), so the order
    depends on nothing but ``(n, seed, epoch)``: not on numpy's global state,
    nor on the numpy version.

    Args:
      n: number of examples, ``>= 0``.
      seed: non-negative integer seed.
      epoch: non-negative epoch index.

    Returns:
      int64 array of shape ``(n,)``.
    """
    n = _validate.number("n", n, min=0, integer=True)
    seed = _validate.number("seed", seed, min=0, integer=True)
    epoch = _validate.number("epoch", epoch, min=0, integer=True)
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(epoch,))).random_raw(n)
    return np.argsort(bits, kind="stable")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1] (``x / 255``, correctly rounded), any shape."""
    x = images.astype(np.float32)
    np.divide(x, np.float32(255), out=x)
    return x


def batches(dataset: Dataset, *, batch_size: int, seed: int = 0, epochs: int | None = 1,
            shuffle: bool = True, drop_remainder: bool = True,
            start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterates over mini-batches ``(x, y)`` of ``dataset``, reproducibly and resumably.

    Each epoch visits the examples in the order :func:`epoch_order` gives for
    ``(seed, epoch)`` (or in dataset order if ``shuffle=False``), cut into
    consecutive batches; batches never straddle two epochs.  Step ``k`` (counted
    from 0 over the whole run) is batch ``k % S`` of epoch ``k // S`` with
    ``S = steps_per_epoch(len(dataset), batch_size, drop_remainder)``, so
    ``start_step=k`` resumes exactly where an interrupted run stopped.
    Arguments are checked when ``batches`` is called, not at the first ``next``.

    Args:
      dataset: a :class:`Dataset` from :func:`jaxrob.data.load`.
      batch_size: examples per batch, ``>= 1``; with ``drop_remainder`` at most
        ``len(dataset)``.
      seed: non-negative integer; same seed, same batches.
      epochs: number of passes, ``>= 1``, or ``None`` to repeat forever.
      shuffle: reshuffle every epoch (True) or keep dataset order (False).
      drop_remainder: drop each epoch's last ``len(dataset) % batch_size``
        examples so every batch has ``batch_size`` examples (one compile under
        jit); if False the last batch of an epoch is smaller.
      start_step: first step to yield, ``0 <= start_step <= epochs * S``.

    Returns:
      An iterator of ``(x, y)``: ``x`` float32 ``(B, H, W, C)`` in ``[0, 1]``,
      ``y`` int32 ``(B,)``.

    Example:
      >>> from jaxrob import data
      >>> train = data.load("mnist10k", split="train")
      >>> x, y = next(data.batches(train, batch_size=128, seed=0))
      >>> x.shape, x.dtype.name, y.shape, y.dtype.name
      ((128, 28, 28, 1), 'float32', (128,), 'int32')
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a jaxrob.data.Dataset (from jaxrob.data.load), "
                        f"got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"dataset {dataset.name}/{dataset.split} is empty")
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    seed = _validate.number("seed", seed, min=0, integer=True)
    _check_bool("shuffle", shuffle)
    _check_bool("drop_remainder", drop_remainder)
    if epochs is not None:
        epochs = _validate.number("epochs", epochs, min=1, integer=True)
    start_step = _validate.number("start_step", start_step, min=0, integer=True)
    if drop_remainder and batch_size > n:
        raise ValueError(f"batch_size must be <= len(dataset) = {n} when drop_remainder=True "
                         f"(else no batch would be produced); got {batch_size}")
    steps = steps_per_epoch(n, batch_size, drop_remainder)
    if epochs is not None and start_step > epochs * steps:
        raise ValueError(f"start_step must be <= epochs * steps_per_epoch = {epochs} * {steps} = "
                         f"{epochs * steps}; got {start_step}")
    return _iterate(dataset, n, batch_size, seed, epochs, shuffle, steps, start_step)


def _iterate(dataset: Dataset, n: int, batch_size: int, seed: int, epochs: int | None, shuffle: bool,
             steps: int, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    epoch, first = divmod(start_step, steps)
    while epochs is None or epoch < epochs:
        order = epoch_order(n, seed=seed, epoch=epoch) if shuffle else np.arange(n)
        for j in range(first, steps):
            images, labels = dataset.get(order[j * batch_size:(j + 1) * batch_size])
            yield to_float(images), labels
        first = 0
        epoch += 1


def as_arrays(dataset: Dataset, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` examples of ``dataset``, in dataset order, as arrays.

    Meant for small evaluation sets that fit in memory.

    Args:
      dataset: a :class:`Dataset`.
      limit: maximum number of examples, ``>= 1``; ``None`` (default) for all.
        A limit above ``len(dataset)`` returns the whole data set.

    Returns:
      ``(x, y)``: float32 ``(N, H, W, C)`` in ``[0, 1]`` and int32 ``(N,)``, with
      ``N = min(limit, len(dataset))``.

    Example:
      >>> from jaxrob import data
      >>> x, y = data.as_arrays(data.load("mnist10k", split="test"), limit=500)
      >>> x.shape, y.shape
      ((500, 28, 28, 1), (500,))
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a jaxrob.data.Dataset, got {type(dataset).__name__}")
    n = len(dataset)
    if limit is not None:
        n = min(n, _validate.number("limit", limit, min=1, integer=True))
    if dataset.in_memory:
        return to_float(dataset.images[:n]), dataset.labels[:n].copy()
    images, labels = _read_all(dataset, n)
    return to_float(images), labels


def to_memory(dataset: Dataset) -> Dataset:
    """Reads every example of ``dataset`` once into an in-memory :class:`Dataset`.

    Worth it for data sets that fit in RAM and are iterated for many epochs
    (MNIST, CIFAR: 50,000 x 32 x 32 x 3 uint8 is 150 MiB): later epochs then
    gather batches with one numpy indexing operation instead of decoding
    records.  :func:`batches` yields identical batches for the copy and the
    original.

    Args:
      dataset: a :class:`Dataset`; returned unchanged if already in memory.

    Returns:
      An in-memory :class:`Dataset` with the same name, split and examples.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a jaxrob.data.Dataset, got {type(dataset).__name__}")
    if dataset.in_memory:
        return dataset
    images, labels = _read_all(dataset, len(dataset))
    return Dataset(name=dataset.name, split=dataset.split, num_classes=dataset.num_classes,
                   input_shape=dataset.input_shape, images=read_only(images), labels=read_only(labels))


def _read_all(dataset: Dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples, read in chunks (one batched source read each)."""
    images = np.empty((n, *dataset.input_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        images[lo:hi], labels[lo:hi] = dataset.get(np.arange(lo, hi))
    return images, labels


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
