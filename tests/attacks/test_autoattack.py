"""AutoAttack composition: stages attack only still-robust points, accuracies are
non-increasing and match the returned adversarial inputs, the versions' stages and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.attacks._apgd import apgd, apgd_targeted
from jaxrob.attacks._autoattack import AutoAttackResult, Stage, autoattack, autoattack_stages

KEY = jax.random.key(0)


def identity4(p, x):
    """4-class model whose logits are the flattened 4 pixels (times a scalar parameter)."""
    return x.reshape(x.shape[0], -1) * p


def _shift_attack(apply_fn, params, x, y, *, key, eps):
    """Deterministic: moves eps from the true class' pixel to the next class' pixel."""
    del apply_fn, params, key
    d = jax.nn.one_hot((y + 1) % 4, 4) - jax.nn.one_hot(y, 4)
    return jnp.clip(x + eps * d.reshape(x.shape), 0.0, 1.0)


RECORDED: list[np.ndarray] = []


def _record_attack(apply_fn, params, x, y, *, key, eps):
    """Returns x unchanged and records (at run time) the inputs it was given."""
    del apply_fn, params, key, y, eps
    jax.debug.callback(lambda a: RECORDED.append(np.asarray(a)), x)
    return x


def test_stages_attack_only_still_robust_points():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.9, size=(37, 2, 2, 1)).astype(np.float32)
    y = rng.integers(0, 4, 37).astype(np.int32)
    flat = x.reshape(37, 4)  # a view: the first 25 examples are made correct, with random margins
    flat[np.arange(25), y[:25]] = np.maximum(flat[np.arange(25), y[:25]], flat[:25].max(1) + 0.01)
    x = flat.reshape(37, 2, 2, 1)
    eps = 0.2
    correct = flat.argmax(1) == y
    shifted = flat.copy()
    shifted[np.arange(37), y] -= eps
    shifted[np.arange(37), (y + 1) % 4] += eps
    expected = correct & (np.clip(shifted, 0, 1).argmax(1) == y)
    assert 0 < expected.sum() < correct.sum()

    RECORDED.clear()
    stages = [Stage("shift", _shift_attack), Stage("record", _record_attack)]
    res = autoattack(identity4, jnp.float32(1.0), x, y, key=KEY, eps=eps, batch_size=8, stages=stages)
    jax.effects_barrier()
    assert isinstance(res, AutoAttackResult)
    np.testing.assert_array_equal(np.asarray(res.robust), expected)
    assert res.accuracy == {"clean": correct.mean(), "shift": expected.mean(), "record": expected.mean()}
    # The recording stage saw exactly the examples still robust after "shift" (plus padding copies).
    seen = np.concatenate(RECORDED).reshape(-1, 4)
    assert len(RECORDED) == -(-expected.sum() // 8)
    seen_ids = {int(np.flatnonzero((flat == row).all(1))[0]) for row in seen}
    assert seen_ids == set(np.flatnonzero(expected).tolist())
    # x_adv: the shifted input where broken by "shift", the clean input elsewhere.
    broken = correct & ~expected
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(37, 4)[broken], np.clip(shifted, 0, 1)[broken])
    np.testing.assert_array_equal(np.asarray(res.x_adv).reshape(37, 4)[~broken], flat[~broken])


def test_standard_version_consistent_with_x_adv(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:40], m.y[:40]
    eps = 0.05
    res = autoattack(m.apply_fn, m.params, x, y, key=KEY, eps=eps, batch_size=16, steps=5,
                     n_target_classes=2, queries=30)
    acc = res.accuracy
    assert list(acc) == ["clean", "apgd-ce", "apgd-t", "square"]
    values = list(acc.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert acc["apgd-ce"] < acc["clean"]
    pred = np.asarray(m.predict(m.params, res.x_adv)).argmax(-1)
    np.testing.assert_array_equal(np.asarray(res.robust), pred == y)
    assert acc["square"] == pytest.approx(float(np.mean(res.robust)))
    assert acc["clean"] == pytest.approx(float(np.mean(np.asarray(m.predict(m.params, x)).argmax(-1) == y)))
    d = np.abs(np.asarray(res.x_adv) - np.asarray(x)).reshape(40, -1).max(1)
    assert d.max() <= eps + 1e-6 and float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert np.all(d[np.asarray(res.robust)] == 0.0)  # unbroken examples are returned clean


def test_rand_version_on_randomized_model():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.8, size=(12, 2, 2, 1)).astype(np.float32)
    y = (np.arange(12) % 4).astype(np.int32)

    def noisy(p, xx, *, key):
        return identity4(p, xx) + 0.05 * jax.random.normal(key, (xx.shape[0], 4))

    res = autoattack(noisy, jnp.float32(1.0), x, y, key=KEY, eps=0.1, version="rand", randomized=True,
                     steps=3, eot_samples=2)
    assert list(res.accuracy) == ["clean", "apgd-ce", "apgd-dlr"]
    v = list(res.accuracy.values())
    assert v[0] >= v[1] >= v[2] and v[2] == pytest.approx(float(np.mean(res.robust)))
    assert np.abs(np.asarray(res.x_adv) - x).max() <= 0.1 + 1e-6


def test_version_stages():
    st = autoattack_stages("standard", norm="l2", num_classes=5, steps=7)
    assert [s.name for s in st] == ["apgd-ce", "apgd-t", "square"]
    assert st[0].attack is apgd and dict(st[0].kwargs)["steps"] == 7 and dict(st[0].kwargs)["norm"] == "l2"
    assert st[1].attack is apgd_targeted and dict(st[1].kwargs)["n_target_classes"] == 4  # C - 1
    assert dict(st[2].kwargs)["queries"] == 5000 and dict(st[2].kwargs)["p_init"] == 0.8
    rand = autoattack_stages("rand", randomized=True)
    assert [(s.name, dict(s.kwargs)["loss"], dict(s.kwargs)["eot_samples"]) for s in rand] == [
        ("apgd-ce", "ce", 20), ("apgd-dlr", "dlr", 20)]
    hash(st), hash(rand)  # static: the compiled batches are cached across calls


def test_argument_errors(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:4], m.y[:4]
    kw = dict(key=KEY, eps=0.1)
    with pytest.raises(ValueError, match="version must be one of"):
        autoattack(m.apply_fn, m.params, x, y, version="plus", **kw)
    with pytest.raises(TypeError, match="unknown AutoAttack override"):
        autoattack(m.apply_fn, m.params, x, y, n_iter=5, **kw)
    with pytest.raises(ValueError, match="randomized defenses"):
        autoattack(m.apply_fn, m.params, x, y, version="rand", **kw)
    with pytest.raises(ValueError, match="use version='rand'"):
        autoattack(m.apply_fn, m.params, x, y, randomized=True, **kw)
    with pytest.raises(ValueError, match="at least 4"):
        autoattack(lambda p, xx: xx.reshape(xx.shape[0], -1)[:, :3], None, x, y % 3, **kw)
    with pytest.raises(TypeError, match="put the settings into each Stage"):
        autoattack(m.apply_fn, m.params, x, y, stages=[Stage("a", apgd)], steps=3, **kw)
    with pytest.raises(ValueError, match="distinct"):
        autoattack(m.apply_fn, m.params, x, y, stages=[Stage("a", apgd), Stage("a", apgd)], **kw)
    with pytest.raises(TypeError, match="Stage"):
        autoattack(m.apply_fn, m.params, x, y, stages=[("a", apgd)], **kw)
    with pytest.raises(TypeError, match="typed PRNG key"):
        autoattack(m.apply_fn, m.params, x, y, key=0, eps=0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        autoattack(m.apply_fn, m.params, x, y, key=KEY, eps=-1.0)


@pytest.mark.slow
def test_docstring_examples_run():
    import doctest

    from jaxrob.attacks import _autoattack

    result = doctest.testmod(_autoattack, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
