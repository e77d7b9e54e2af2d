"""TFDS image-classification data sets read through random-access data sources.

Examples are read from data prepared on disk in the ArrayRecord (or Parquet)
format with ``builder.as_data_source`` -- what ``tfds.data_source(name,
download=False)`` does -- which decodes records with numpy and PIL/OpenCV and
never imports TensorFlow.  Nothing here downloads: preparing is checked first
with ``builder.is_prepared()`` (a look at local files), and a missing data set
raises :class:`DatasetNotFoundError` that says how to prepare it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from jaxrob.data._dataset import Dataset, DatasetNotFoundError


class TfdsSpec(NamedTuple):
    num_classes: int
    input_shape: tuple[int, int, int]
    splits: tuple[str, ...]


# Static facts, so that shapes are known without touching the disk; cross-checked
# against the builder's features on every load.
SPECS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec(10, (28, 28, 1), ("train", "test")),
    "fashion_mnist": TfdsSpec(10, (28, 28, 1), ("train", "test")),
    "cifar10": TfdsSpec(10, (32, 32, 3), ("train", "test")),
    "cifar100": TfdsSpec(100, (32, 32, 3), ("train", "test")),
    "svhn_cropped": TfdsSpec(10, (32, 32, 3), ("train", "test", "extra")),
}

# One term of a TFDS split expression: a split name with an optional slice, e.g. "train[:90%]".
_SPLIT_TERM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(\[[^\]]*\])?\s*")


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a declared dependency
        raise ImportError("TFDS data sets need tensorflow-datasets (pip install tensorflow-datasets "
                          "array-record); the embedded 'mnist10k' data set needs neither") from e
    return tfds


def _how_to_prepare(name: str, data_dir: str | None) -> str:
    dir_arg = data_dir if data_dir is not None else "~/tensorflow_datasets"
    return (
        f"Prepare it on a machine with internet access (preparing needs TensorFlow; reading does not), "
        f"in the ArrayRecord format, e.g.\n"
        f"    tfds build {name} --data_dir={dir_arg} --file_format=array_record\n"
        f"or in Python\n"
        f"    tfds.builder({name!r}, data_dir={dir_arg!r}).download_and_prepare(file_format='array_record')\n"
        f"then copy that folder here and pass data_dir=... (or set TFDS_DATA_DIR). "
        f"For offline work use the embedded data set: load('mnist10k').")


def _check_split(name: str, split: str, available: list[str]) -> None:
    terms = split.split("+")
    for term in terms:
        m = _SPLIT_TERM.fullmatch(term)
        if m is None or m.group(1) not in available:
            raise ValueError(f"split {split!r} is not a split of {name!r}; the prepared splits are "
                             f"{', '.join(map(repr, available))} (slices such as 'train[:90%]' are allowed)")


def load(name: str, split: str, data_dir: str | None) -> Dataset:
    """Opens a prepared TFDS split as a random-access :class:`Dataset` (see :func:`jaxrob.data.load`)."""
    tfds = _import_tfds()
    spec = SPECS[name]
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"TFDS data set {name!r} is not prepared in data_dir={data_dir!r} (looked for "
            f"{builder.data_path}), and jaxrob never downloads. " + _how_to_prepare(name, data_dir))
    info = builder.info
    formats = set(info.available_file_formats())
    if not formats & set(tfds.core.file_adapters.FileFormat.with_random_access()):
        raise DatasetNotFoundError(
            f"TFDS data set {name!r} in {builder.data_path} is prepared only in the "
            f"{', '.join(sorted(str(f.value) for f in formats))} format, which has no random access. "
            + _how_to_prepare(name, data_dir))
    _check_split(name, split, list(info.splits.keys()))
    image, label = info.features["image"], info.features["label"]
    if tuple(image.shape) != spec.input_shape or label.num_classes != spec.num_classes:
        raise ValueError(f"TFDS data set {name!r} in {builder.data_path} has images of shape {tuple(image.shape)} "
                         f"and {label.num_classes} classes; jaxrob expects {spec.input_shape} and "
                         f"{spec.num_classes}. Was it prepared by a different TFDS version?")
    try:
        source = builder.as_data_source(split=split)
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(f"split {split!r} of {name!r} could not be opened: {e}") from e
    return Dataset(name=name, split=split, num_classes=spec.num_classes, input_shape=spec.input_shape,
                   source=source)
