"""TFDS data sets: read back prepared ArrayRecord data, mock_data, errors, and no TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jaxrob import data  # noqa: E402

CASES = [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)]


@pytest.mark.parametrize("name,shape,num_classes", CASES)
def test_reads_prepared_array_record_exactly(tmp_path, tfds_writer, make_split, name, shape, num_classes):
    train = make_split(shape, 23, num_classes, seed=1)
    train[0][:, 0, 0, 0] = np.arange(23)  # tag each image with its index
    test = make_split(shape, 9, num_classes, seed=2)
    tfds_writer(name, tmp_path, {"train": train, "test": test})

    ds = data.load(name, split="train", data_dir=str(tmp_path))
    assert not ds.in_memory
    assert (len(ds), ds.num_classes, ds.input_shape) == (23, num_classes, shape)
    assert len(data.load(name, split="test", data_dir=tmp_path)) == 9

    # Random access: a batch read in any order returns exactly what was written.
    idx = np.array([22, 0, 5, 5, 13])
    images, labels = ds.get(idx)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, train[0][idx])
    np.testing.assert_array_equal(labels, train[1][idx])

    # The batching iterator over the source: one epoch covers every example once, scaled to [0, 1].
    xs, ys = zip(*data.batches(ds, batch_size=5, seed=3, drop_remainder=False))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and x.shape == (23, *shape)
    seen = np.round(x[:, 0, 0, 0] * 255).astype(int)
    assert sorted(seen) == list(range(23)) and not np.array_equal(seen, np.arange(23))
    np.testing.assert_array_equal(x * 255, train[0][seen].astype(np.float32))
    np.testing.assert_array_equal(y, train[1][seen])

    x_all, y_all = data.as_arrays(ds)
    np.testing.assert_array_equal(x_all * 255, train[0].astype(np.float32))
    np.testing.assert_array_equal(y_all, train[1])

    # An in-memory copy holds the same examples and yields the same batches.
    mem = data.to_memory(ds)
    assert mem.in_memory and data.to_memory(mem) is mem
    np.testing.assert_array_equal(mem.images, train[0])
    kw = dict(batch_size=4, seed=11, epochs=2)
    for (xa, ya), (xb, yb) in zip(data.batches(ds, **kw), data.batches(mem, **kw), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_tfds_slices_are_passed_through(tmp_path, tfds_writer, make_split):
    train = make_split((28, 28, 1), 20, 10, seed=0)
    tfds_writer("mnist", tmp_path, {"train": train})
    ds = data.load("mnist", split="train[5:15]", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.get(np.arange(10))[0], train[0][5:15])


@pytest.fixture
def mock_getitems_fix(monkeypatch):
    """tfds 4.9.10's mock sets `__getitems__` as a plain instance attribute of a MagicMock, so it is
    called without `self` and fails; patch the helper it wraps to not expect `self`."""
    from tensorflow_datasets.testing import mocking

    def getitems(record_keys, generator, serialized=False):
        assert not serialized
        return [generator[k] for k in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems)


@pytest.mark.parametrize("name,shape,num_classes", CASES)
def test_mock_data_through_load_and_batches(tmp_path, tfds_writer, mock_getitems_fix, name, shape,
                                            num_classes):
    # mock_data replaces the records; USE_FILES reads the metadata (split names, file format) from
    # data_dir, so `load` sees a prepared data set exactly as it would a real one.
    tfds_writer(name, tmp_path, {"train": (np.zeros((0, *shape), np.uint8), np.zeros(0)),
                                 "test": (np.zeros((0, *shape), np.uint8), np.zeros(0))}, records=False)
    with tfds.testing.mock_data(num_examples=37, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tmp_path)):
        ds = data.load(name, split="train", data_dir=str(tmp_path))
        assert (len(ds), ds.input_shape, ds.num_classes) == (37, shape, num_classes)
        # The batched read agrees with reading the records one by one.
        idx = np.array([36, 2, 17, 2])
        images, labels = ds.get(idx)
        np.testing.assert_array_equal(images, np.stack([ds.source[i]["image"] for i in idx]))
        np.testing.assert_array_equal(labels, [int(ds.source[i]["label"]) for i in idx])
        assert labels.min() >= 0 and labels.max() < num_classes

        batches = list(data.batches(ds, batch_size=8, seed=0, epochs=2))
        assert len(batches) == 2 * (37 // 8)
        for x, y in batches:
            assert x.shape == (8, *shape) and x.dtype == np.float32 and y.dtype == np.int32
            assert 0.0 <= x.min() and x.max() <= 1.0
        with pytest.raises(ValueError, match="'extra'"):
            data.load(name, split="extra", data_dir=str(tmp_path))


def test_unprepared_dataset_fails_fast_with_instructions(tmp_path):
    empty = tmp_path / "tfds"
    for name in ("mnist", "cifar100"):
        start = time.perf_counter()
        with pytest.raises(data.DatasetNotFoundError) as info:
            data.load(name, split="train", data_dir=str(empty))
        assert time.perf_counter() - start < 10.0
        message = str(info.value)
        assert isinstance(info.value, ValueError)
        assert "not prepared" in message and "mnist10k" in message
        assert f"tfds build {name}" in message and "download_and_prepare" in message
        assert str(empty) in message
    assert not empty.exists()  # nothing was created or downloaded


def test_tfrecord_only_dataset_is_rejected(tmp_path, tfds_writer):
    tfds_writer("mnist", tmp_path, {"train": (np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0))},
                file_format="tfrecord", records=False)
    with pytest.raises(data.DatasetNotFoundError, match="prepared only in the tfrecord format") as info:
        data.load("mnist", data_dir=str(tmp_path))
    assert "download_and_prepare(file_format='array_record')" in str(info.value)


def test_unknown_split_lists_prepared_splits(tmp_path, tfds_writer, make_split):
    tfds_writer("mnist", tmp_path, {"train": make_split((28, 28, 1), 3, 10, 0),
                                    "test": make_split((28, 28, 1), 3, 10, 1)})
    with pytest.raises(ValueError, match="'validation'.*'train', 'test'"):
        data.load("mnist", split="validation", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not a split"):
        data.load("mnist", split="train+bogus[:5]", data_dir=str(tmp_path))


def test_no_tensorflow_import(tmp_path, tfds_writer, make_split):
    """A fake `tensorflow` on the path records any import of it: loading and batching must not trigger one."""
    fake = tmp_path / "fake_site" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\nopen(os.environ['JAXROB_TF_MARKER'], 'w').close()\nraise ImportError('fake tensorflow')\n")
    tfds_writer("cifar10", tmp_path / "tfds", {"train": make_split((32, 32, 3), 10, 10, 0)})
    marker = tmp_path / "tf_was_imported"
    script = textwrap.dedent(f"""
        import os, sys
        from jaxrob import data
        ds = data.load("cifar10", split="train", data_dir={str(tmp_path / "tfds")!r})
        x, y = next(data.batches(ds, batch_size=4))
        assert x.shape == (4, 32, 32, 3)
        data.load("mnist10k")
        try:
            data.load("mnist", data_dir={str(tmp_path / "empty")!r})
        except data.DatasetNotFoundError:
            pass
        print("tensorflow" in sys.modules, os.path.exists(os.environ["JAXROB_TF_MARKER"]))
        try:  # positive control: the detector does see a real import
            import tensorflow
        except ImportError:
            pass
        print(os.path.exists(os.environ["JAXROB_TF_MARKER"]))
    """)
    env = dict(os.environ, JAXROB_TF_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr


@pytest.mark.parametrize("name", [n for n in data.available() if n != "mnist10k"])
def test_static_spec_matches_tfds_builder(tmp_path, name):
    builder = tfds.builder(name, data_dir=str(tmp_path))  # reads the builder's code, no data
    spec = data.spec(name)
    assert tuple(builder.info.features["image"].shape) == spec.input_shape
    assert builder.info.features["label"].num_classes == spec.num_classes
    assert builder.info.features["image"].np_dtype == np.uint8
