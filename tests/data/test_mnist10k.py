"""The embedded mnist10k data set: integrity, and the fixed stratified 8,000/2,000 split."""

from __future__ import annotations

import hashlib
import importlib.resources
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrob import data
from jaxrob.data import _mnist10k

# Class counts of the 10,000 digits, as documented in shared/data/README.md.
README_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


@pytest.fixture(scope="module")
def splits():
    return data.load("mnist10k", split="train"), data.load("mnist10k", split="test")


def test_packaged_file_matches_documented_contents():
    raw = importlib.resources.files("jaxrob.data").joinpath("mnist10k.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == _mnist10k.SHA256
    images, labels = _mnist10k._arrays()
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), README_COUNTS)
    # Real digits: ink at 255 on a 0 background, a minority of the pixels.
    assert images.min() == 0 and images.max() == 255 and 0.05 < (images > 127).mean() < 0.3


def test_split_sizes_and_metadata(splits):
    train, test = splits
    assert (len(train), len(test)) == (8000, 2000)
    for ds in splits:
        assert ds.in_memory and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
        assert ds.images.dtype == np.uint8 and ds.images.shape == (len(ds), 28, 28, 1)
        assert ds.labels.dtype == np.int32 and ds.labels.shape == (len(ds),)
    assert (train.name, train.split, test.split) == ("mnist10k", "train", "test")


def test_split_is_stratified(splits):
    train, test = splits
    test_counts = np.bincount(test.labels, minlength=10)
    total = test_counts + np.bincount(train.labels, minlength=10)
    np.testing.assert_array_equal(total, README_COUNTS)
    assert np.all(np.abs(test_counts - 0.2 * total) < 1.0)
    assert test_counts.sum() == 2000


def test_split_is_disjoint_and_covering(splits):
    train, test = splits
    images, labels = _mnist10k._arrays()
    digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()
    train_set = {digest(a) for a in train.images}
    test_set = {digest(a) for a in test.images}
    all_set = {digest(a) for a in images}
    assert len(all_set) == 10_000  # no duplicate digits, so set arithmetic is exact
    assert not train_set & test_set
    assert train_set | test_set == all_set


def test_split_follows_the_documented_rule(splits):
    """Recompute the split from its specification with exact fractions and compare."""
    train, test = splits
    images, labels = _mnist10k._arrays()
    expected_test = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        exact = Fraction(len(members) * 2000, 10_000)
        expected_test.append((exact - int(exact), -c, c, int(exact), members))
    # Largest remainder gets the leftover seats; ties to the smaller class.
    expected_test.sort(key=lambda t: (t[0], t[1]), reverse=True)
    leftover = 2000 - sum(t[3] for t in expected_test)
    chosen = []
    for rank, (_, _, c, base, members) in enumerate(expected_test):
        quota = base + (rank < leftover)
        by_digest = sorted(members, key=lambda i: hashlib.sha256(images[i].tobytes()).digest())
        chosen.extend(by_digest[:quota])
    chosen = np.sort(np.array(chosen))
    np.testing.assert_array_equal(test.images, images[chosen])
    np.testing.assert_array_equal(test.labels, labels[chosen])
    rest = np.setdiff1d(np.arange(10_000), chosen)  # train keeps file order
    np.testing.assert_array_equal(train.labels, labels[rest])


def test_split_is_deterministic_and_independent_of_global_rng(splits):
    train, test = splits
    np.random.seed(123)
    _mnist10k._split_indices.cache_clear()
    _mnist10k.load.cache_clear()
    again_train, again_test = data.load("mnist10k", split="train"), data.load("mnist10k", split="test")
    assert again_train is not train
    np.testing.assert_array_equal(again_train.images, train.images)
    np.testing.assert_array_equal(again_test.labels, test.labels)
    assert data.load("mnist10k", split="test") is again_test  # cached per process


def test_arrays_are_read_only(splits):
    train, _ = splits
    with pytest.raises(ValueError, match="read-only"):
        train.images[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        train.labels[0] = 1


def test_corrupted_file_raises(monkeypatch):
    raw = bytearray(_mnist10k._read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    monkeypatch.setattr(_mnist10k, "_read_bytes", lambda: bytes(raw))
    _mnist10k._arrays.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="corrupted.*sha256.*Reinstall"):
            _mnist10k._arrays()
    finally:
        _mnist10k._arrays.cache_clear()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=12).filter(lambda c: sum(c) > 0), st.data())
def test_stratified_quotas_properties(counts, draw):
    total = sum(counts)
    num_test = draw.draw(st.integers(0, total))
    q = _mnist10k.stratified_quotas(np.array(counts), num_test)
    assert q.sum() == num_test
    for qc, nc in zip(q, counts):
        assert abs(Fraction(int(qc)) - Fraction(nc * num_test, total)) < 1
        assert 0 <= qc <= nc


def test_unknown_split_and_name():
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'; got 'validation'"):
        data.load("mnist10k", split="validation")
    with pytest.raises(ValueError, match="'mnist10k'.*'cifar10'.*got 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(TypeError, match="name must be a str"):
        data.load(10)


def test_available_and_spec_agree_with_load():
    names = data.available()
    assert names[0] == "mnist10k"
    assert set(names) == {"mnist10k", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped"}
    s = data.spec("mnist10k")
    ds = data.load("mnist10k", split="test")
    assert (s.num_classes, s.input_shape, s.source) == (ds.num_classes, ds.input_shape, "embedded")
    assert data.spec("cifar100").num_classes == 100 and data.spec("svhn_cropped").splits[-1] == "extra"
