"""The batching iterator: determinism, coverage, resumption, dtypes and argument checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxrob import data


def indexed(n: int, shape=(4, 4, 1)) -> data.Dataset:
    """n examples whose first pixel and label both hold the example's index (mod 256)."""
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return data.from_arrays(images, np.arange(n), num_classes=n)


def ids(batch) -> np.ndarray:
    return batch[1].copy()


def run(ds, **kw) -> list[np.ndarray]:
    return [ids(b) for b in data.batches(ds, **kw)]


def test_dtype_range_and_values():
    train = data.load("mnist10k", split="train")
    x, y = next(data.batches(train, batch_size=64, seed=5))
    assert x.dtype == np.float32 and x.shape == (64, 28, 28, 1)
    assert y.dtype == np.int32 and y.shape == (64,)
    assert x.min() >= 0.0 and x.max() <= 1.0
    # x is exactly the stored uint8 image / 255 for the labelled example.
    first = data.epoch_order(len(train), seed=5, epoch=0)[:64]
    np.testing.assert_array_equal(x, train.images[first] / np.float32(255))
    np.testing.assert_array_equal(y, train.labels[first])


def test_same_seed_same_order_different_seed_different_order():
    ds = indexed(100)
    a = run(ds, batch_size=10, seed=1, epochs=2)
    b = run(ds, batch_size=10, seed=1, epochs=2)
    c = run(ds, batch_size=10, seed=2, epochs=2)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    # Each epoch is reshuffled.
    assert not np.array_equal(np.concatenate(a[:10]), np.concatenate(a[10:]))


def test_order_ignores_numpy_global_state():
    ds = indexed(50)
    np.random.seed(0)
    a = run(ds, batch_size=7, seed=3)
    np.random.seed(1)
    np.random.random(10)
    b = run(ds, batch_size=7, seed=3)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))


@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 5), (7, 7), (5, 9)])
def test_each_epoch_covers_every_example_once_without_drop(n, batch_size):
    ds = indexed(n)
    out = run(ds, batch_size=batch_size, seed=0, epochs=3, drop_remainder=False)
    steps = data.steps_per_epoch(n, batch_size, drop_remainder=False)
    assert steps == -(-n // batch_size) and len(out) == 3 * steps
    for e in range(3):
        epoch = out[e * steps:(e + 1) * steps]
        assert [len(b) for b in epoch[:-1]] == [batch_size] * (steps - 1)
        assert len(epoch[-1]) == n - batch_size * (steps - 1)
        assert sorted(np.concatenate(epoch).tolist()) == list(range(n))
    # The image travels with its label.
    for x, y in data.batches(ds, batch_size=batch_size, drop_remainder=False):
        np.testing.assert_array_equal(np.round(x[:, 0, 0, 0] * 255), y % 256)


@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 5), (9, 9)])
def test_drop_remainder_sizes(n, batch_size):
    ds = indexed(n)
    out = run(ds, batch_size=batch_size, seed=4, epochs=2, drop_remainder=True)
    steps = data.steps_per_epoch(n, batch_size)
    assert steps == n // batch_size and len(out) == 2 * steps
    assert all(len(b) == batch_size for b in out)
    for e in range(2):  # no example twice within an epoch
        seen = np.concatenate(out[e * steps:(e + 1) * steps])
        assert len(set(seen.tolist())) == steps * batch_size


def test_no_shuffle_keeps_dataset_order():
    ds = indexed(10)
    out = run(ds, batch_size=4, shuffle=False, epochs=2, drop_remainder=False)
    np.testing.assert_array_equal(np.concatenate(out), np.tile(np.arange(10), 2))


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("start_step", [0, 1, 4, 5, 9, 13, 15])
def test_start_step_resumes_an_uninterrupted_run(drop_remainder, start_step):
    ds = indexed(23)
    kw = dict(batch_size=5, seed=9, epochs=3, drop_remainder=drop_remainder)
    full = run(ds, **kw)
    total = len(full)
    if start_step > total:
        with pytest.raises(ValueError, match="start_step"):
            data.batches(ds, start_step=start_step, **kw)
        return
    resumed = run(ds, start_step=start_step, **kw)
    assert len(resumed) == total - start_step
    for a, b in zip(resumed, full[start_step:]):
        np.testing.assert_array_equal(a, b)


def test_infinite_epochs_and_resume_far_ahead():
    ds = indexed(12)
    stream = data.batches(ds, batch_size=4, seed=2, epochs=None)
    first = [ids(b) for b in itertools.islice(stream, 30)]  # 10 epochs of 3 steps
    for e in range(10):
        assert sorted(np.concatenate(first[3 * e:3 * e + 3]).tolist()) == list(range(12))
    later = data.batches(ds, batch_size=4, seed=2, epochs=None, start_step=25)
    for a, b in zip((ids(b) for b in itertools.islice(later, 5)), first[25:30]):
        np.testing.assert_array_equal(a, b)
    # Equal to the finite run over the shared prefix.
    np.testing.assert_array_equal(np.concatenate(first[:9]), np.concatenate(run(ds, batch_size=4, seed=2, epochs=3)))


def test_epoch_order_is_a_permutation_depending_on_seed_and_epoch():
    p = data.epoch_order(1000, seed=7, epoch=3)
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, data.epoch_order(1000, seed=7, epoch=3))
    assert not np.array_equal(p, data.epoch_order(1000, seed=7, epoch=4))
    assert not np.array_equal(p, data.epoch_order(1000, seed=8, epoch=3))
    # A huge seed is a different stream, not a collision with (small seed, other epoch).
    assert not np.array_equal(data.epoch_order(50, seed=2**32, epoch=0), data.epoch_order(50, seed=0, epoch=1))


def test_steps_per_epoch_closed_form():
    for n in range(0, 30):
        for b in range(1, 12):
            assert data.steps_per_epoch(n, b) == len(range(0, n - b + 1, b))
            assert data.steps_per_epoch(n, b, drop_remainder=False) == len(range(0, n, b))


def test_as_arrays_in_memory_and_limit():
    test = data.load("mnist10k", split="test")
    x, y = data.as_arrays(test, limit=300)
    assert x.shape == (300, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x * 255, test.images[:300].astype(np.float32))
    np.testing.assert_array_equal(y, test.labels[:300])
    assert data.as_arrays(test, limit=10**6)[0].shape[0] == 2000
    y[0] += 1  # the caller owns the result
    assert test.labels[0] == y[0] - 1


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.5), ValueError, "batch_size must be an integer"),
    (dict(batch_size=11), ValueError, "batch_size must be <= len"),
    (dict(batch_size=2, seed=-1), ValueError, "seed must be >= 0"),
    (dict(batch_size=2, epochs=0), ValueError, "epochs must be >= 1"),
    (dict(batch_size=2, start_step=-1), ValueError, "start_step must be >= 0"),
    (dict(batch_size=2, epochs=2, start_step=11), ValueError, r"start_step must be <= .* = 10"),
    (dict(batch_size=2, shuffle=1), TypeError, "shuffle must be a bool"),
    (dict(batch_size=2, drop_remainder="no"), TypeError, "drop_remainder must be a bool"),
])
def test_bad_arguments_raise_eagerly(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        data.batches(indexed(10), **kwargs)  # no next(): checked at call time


def test_batch_larger_than_dataset_without_drop_is_one_batch():
    out = run(indexed(10), batch_size=11, drop_remainder=False)
    assert len(out) == 1 and sorted(out[0].tolist()) == list(range(10))
    with pytest.raises(TypeError, match="jaxrob.data.Dataset"):
        data.batches(np.zeros((3, 2)), batch_size=1)


def test_from_arrays_and_dataset_get_checks():
    ds = data.from_arrays(np.zeros((6, 5, 5), np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    assert ds.input_shape == (5, 5, 1) and ds.num_classes == 3
    x, y = ds.get([5, 0, 5])
    assert x.shape == (3, 5, 5, 1) and y.tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        ds.get([6])
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        ds.get([0.5])
    with pytest.raises(TypeError, match="uint8"):
        data.from_arrays(np.zeros((2, 3, 3, 1)), np.zeros(2, int))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        data.from_arrays(np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        data.from_arrays(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(3, int))


def test_any_random_access_source_works():
    """A plain list of records (no batched `__getitems__`) is a valid source."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 3, 3, 2), dtype=np.uint8)
    records = [{"image": im, "label": np.int64(i % 4)} for i, im in enumerate(images)]
    ds = data.Dataset(name="list", split="train", num_classes=4, input_shape=(3, 3, 2), source=records)
    assert len(ds) == 9 and not ds.in_memory
    x, y = ds.get([8, 1])
    np.testing.assert_array_equal(x, images[[8, 1]])
    assert y.dtype == np.int32 and y.tolist() == [0, 1]
    ref = data.from_arrays(images, np.arange(9) % 4)
    for (xa, ya), (xb, yb) in zip(data.batches(ds, batch_size=2, seed=3, drop_remainder=False),
                                  data.batches(ref, batch_size=2, seed=3, drop_remainder=False), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    bad = data.Dataset(name="bad", split="train", num_classes=4, input_shape=(3, 3, 1), source=records)
    with pytest.raises(ValueError, match=r"expected uint8 \(3, 3, 1\)"):
        bad.get([0])
    with pytest.raises(ValueError, match="not both"):
        data.Dataset(name="x", split="train", num_classes=4, input_shape=(3, 3, 2), source=records,
                     images=images, labels=np.zeros(9, np.int32))
