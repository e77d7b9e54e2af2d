"""Fixtures that write small TFDS data sets to disk, the way `tfds build` would, without TensorFlow.

Records are `tf.train.Example` protos (TFDS's own copy of the proto, no TF) with
the image PNG-encoded by PIL, written with `array_record`; `dataset_info.json`
and `features.json` come from the real builder's `DatasetInfo`.  Reading such a
folder back goes through exactly the code path a truly prepared data set does.
"""

from __future__ import annotations

import io

import numpy as np
import pytest


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def write_tfds(name: str, data_dir, splits: dict, *, file_format: str = "array_record",
               records: bool = True) -> None:
    """Writes `splits = {split: (uint8 images (N, H, W, C), int labels (N,))}` as a prepared TFDS data set.

    With `records=False` only the metadata is written (what `tfds.testing.mock_data`
    with `MockPolicy.USE_FILES` needs: the records themselves are mocked).
    """
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module
    from tensorflow_datasets.proto import tf_example_pb2

    builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
    path = builder.data_path
    path.mkdir(parents=True, exist_ok=True)
    infos = []
    for split, (images, labels) in splits.items():
        template = tfds.core.ShardedFileTemplate(data_dir=path, dataset_name=name, split=split,
                                                 filetype_suffix=file_format)
        if records:
            writer = array_record_module.ArrayRecordWriter(
                str(template.sharded_filepaths(1)[0]), "group_size:1")
            for image, label in zip(images, labels):
                example = tf_example_pb2.Example()
                example.features.feature["image"].bytes_list.value.append(_png(image))
                example.features.feature["label"].int64_list.value.append(int(label))
                writer.write(example.SerializeToString())
            writer.close()
        infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(labels)], num_bytes=0,
                                         filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(path)


def random_split(shape: tuple[int, ...], n: int, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, num_classes, n)


@pytest.fixture
def tfds_writer():
    return write_tfds


@pytest.fixture
def make_split():
    return random_split
