"""EnResNet: noise injection, the noisy ResNet, its stacked ensemble and joint PGD training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrob import attacks, models, train
from jaxrob import ensembles as E
from jaxrob.ensembles._enresnet import (NoisyPreActResNet, enresnet, inject_noise, noisy_resnet,
                                        randomized_average, randomized_train_apply)
from jaxrob.models import _layers as L
from jaxrob.models._resnet import PreActResNet

SHAPE = (8, 8, 1)
TINY = dict(depth=8, width=4, input_shape=SHAPE)
X = jnp.asarray(np.random.default_rng(0).uniform(size=(6, *SHAPE)), jnp.float32)
Y = jnp.asarray([0, 1, 2, 3, 4, 5])


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


@functools.cache
def _ensemble(m, noise_scale=0.1, unroll=False):
    return enresnet(m, key=jax.random.key(0), noise_scale=noise_scale, unroll=unroll, **TINY)


@functools.cache
def _member(seed, noise_scale=0.1):
    return noisy_resnet(key=jax.random.fold_in(jax.random.key(0), seed), noise_scale=noise_scale, **TINY)


def _plain(seed):
    """The plain PreActResNet with the member's architecture and initialisation key."""
    module = PreActResNet(input_shape=SHAPE, num_classes=10, mean=L.MNIST_MEAN, std=L.MNIST_STD, stem_width=4,
                          widths=(4, 8, 16), blocks=(1, 1, 1), strides=(1, 2, 2),
                          rngs=L.ParamKeys(jax.random.fold_in(jax.random.key(0), seed)))
    return models.from_nnx(module, name="plain", input_shape=SHAPE, num_classes=10)


# --------------------------------------------------------------------------- the noise


@pytest.mark.parametrize("std_over", ["example", "batch"])
def test_injected_noise_has_scale_a_times_std(std_over):
    r = np.random.default_rng(1)
    x = jnp.asarray(r.normal(size=(4, 16, 16, 8)) * np.array([0.5, 1.0, 2.0, 4.0])[:, None, None, None]
                    + 3.0, jnp.float32)
    a = 0.1
    noise = np.asarray(inject_noise(x, a, key=jax.random.key(2), std_over=std_over) - x, np.float64)
    xs = np.asarray(x, np.float64)
    if std_over == "example":  # per-example scale: the four examples have different spreads
        std = np.std(xs.reshape(4, -1), axis=1, ddof=1)[:, None]
        z = noise.reshape(4, -1) / (a * std)
    else:  # torch.std(out): one unbiased std over the whole batch tensor
        z = noise.reshape(1, -1) / (a * np.std(xs, ddof=1))
    n = z.shape[1]
    assert np.all(np.abs(z.mean(axis=1)) < 4 / np.sqrt(n))
    np.testing.assert_allclose(z.std(axis=1), 1.0, atol=0.03)


def test_noise_on_a_real_block_output_is_a_std_times_gaussian():
    """The hook adds a * std(out) * N(0, 1) to the output of an actual residual block."""
    module = NoisyPreActResNet(noise_scale=0.1, input_shape=(16, 16, 3), num_classes=10, mean=L.CIFAR10_MEAN,
                               std=L.CIFAR10_STD, stem_width=8, widths=(8, 16, 32), blocks=(1, 1, 1),
                               strides=(1, 2, 2), rngs=L.ParamKeys(jax.random.key(0)))
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(8, 16, 16, 3)), jnp.float32)
    out = module.layer1[0](module.conv1(x), train=False, key=None)
    noisy = module.block_output(out, 0, train=False, key=jax.random.key(4))
    std = np.std(np.asarray(out).reshape(8, -1), axis=1, ddof=1)
    z = (np.asarray(noisy - out).reshape(8, -1) / (0.1 * std[:, None]))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    np.testing.assert_allclose(np.abs(z).mean(), np.sqrt(2 / np.pi), atol=0.02)  # Gaussian, not uniform


def test_noise_is_differentiable_through_std_and_zero_scale_is_identity():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 10)), jnp.float32)
    assert inject_noise(x, 0.0, key=jax.random.key(0)) is x
    g = jax.grad(lambda v: jnp.sum(inject_noise(v, 0.5, key=jax.random.key(0))))(x)
    assert not np.allclose(g, 1.0)  # the std term contributes to the gradient, as in the reference code


# --------------------------------------------------------------------------- the noisy ResNet


def test_zero_noise_is_the_plain_preact_resnet_exactly():
    noisy, plain = _member(0, noise_scale=0.0), _plain(0)
    assert _equal(noisy.variables, plain.variables)
    out = noisy.apply_fn(noisy.variables, X, key=jax.random.key(7))
    assert jnp.array_equal(out, plain.apply_fn(plain.variables, X))
    logits, stats = noisy.train_apply(noisy.variables, X, key=jax.random.key(7))
    ref_logits, ref_stats = plain.train_apply(plain.variables, X, key=jax.random.key(7))
    assert jnp.array_equal(logits, ref_logits) and _equal(stats, ref_stats)


def test_noise_is_random_across_keys_and_fixed_by_the_key():
    net = _member(0)
    f = jax.jit(net.apply_fn)
    a, b, c = (f(net.variables, X, key=jax.random.key(k)) for k in (1, 1, 2))
    assert jnp.array_equal(a, b)
    assert not jnp.allclose(a, c)
    plain = _plain(0).apply_fn(_plain(0).variables, X)
    assert float(jnp.max(jnp.abs(a - plain))) > 1e-4  # noise on at test time: a randomized model
    la, _ = net.train_apply(net.variables, X, key=jax.random.key(1))
    lc, _ = net.train_apply(net.variables, X, key=jax.random.key(2))
    assert not jnp.allclose(la, lc)  # and in train mode


def test_noisy_model_needs_a_key():
    net = _member(0)
    module = NoisyPreActResNet(noise_scale=0.1, input_shape=SHAPE, num_classes=10, mean=L.MNIST_MEAN,
                               std=L.MNIST_STD, stem_width=4, widths=(4, 8, 16), blocks=(1, 1, 1),
                               strides=(1, 2, 2), rngs=L.ParamKeys(jax.random.key(0)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        module(X)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        net.apply_fn(net.variables, X)
    plain = _member(0, noise_scale=0.0)  # deterministic: usable without a key
    assert jnp.array_equal(plain.apply_fn(plain.variables, X), plain.apply_fn(plain.variables, X, key=jax.random.key(1)))


# --------------------------------------------------------------------------- the ensemble


def test_zero_noise_ensemble_is_the_plain_averaged_ensemble_exactly():
    en = _ensemble(3, noise_scale=0.0)
    plains = [_plain(i) for i in range(3)]
    stacked = E.stack([p.variables for p in plains])
    assert _equal(en.variables, stacked)
    ref = E.average(E.Members(plains[0].apply_fn, unroll=False))(stacked, X)
    assert jnp.array_equal(en.apply_fn(en.variables, X, key=jax.random.key(3)), ref)
    unrolled = _ensemble(3, noise_scale=0.0, unroll=True)
    np.testing.assert_allclose(unrolled.apply_fn(en.variables, X, key=jax.random.key(3)), ref, rtol=1e-5, atol=1e-6)


def test_param_count_is_m_times_the_member():
    for m in (1, 2, 3):
        assert _ensemble(m).num_params() == m * _member(0).num_params()
    # The reference PreAct ResNet-20 (16-32-64 channels, 1x1 projection shortcuts, 10 classes).
    module = nnx.eval_shape(lambda: NoisyPreActResNet(
        input_shape=(32, 32, 3), num_classes=10, mean=L.CIFAR10_MEAN, std=L.CIFAR10_STD, stem_width=16,
        widths=(16, 32, 64), blocks=(3, 3, 3), strides=(1, 2, 2), rngs=L.ParamKeys(jax.random.key(0))))
    assert models.count_params(nnx.state(module, nnx.Param)) == 272_282


@pytest.mark.parametrize("unroll", [False, True])
def test_vmap_over_members_equals_the_member_loop_with_independent_noise(unroll):
    en = _ensemble(3, unroll=unroll)
    key = jax.random.key(11)
    keys = jax.random.split(key, 3)
    members = E.unstack(en.variables)
    net = _member(0)
    loop = [net.apply_fn(v, X, key=k) for v, k in zip(members, keys)]
    np.testing.assert_allclose(en.apply_fn(en.variables, X, key=key), sum(loop) / 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(en.apply_fn.member_logits(en.variables, X, key=key), jnp.stack(loop),
                               rtol=1e-5, atol=1e-6)
    # Independent noise: the same member under the ensemble's member keys gives different outputs.
    same = E.stack([members[0]] * 3)
    z = en.apply_fn.member_logits(same, X, key=key)
    assert not jnp.allclose(z[0], z[1]) and not jnp.allclose(z[1], z[2])

    logits, stats = en.train_apply(en.variables, X, key=key)
    per = [net.train_apply(v, X, key=k) for v, k in zip(members, keys)]
    np.testing.assert_allclose(logits, sum(p[0] for p in per) / 3, rtol=1e-5, atol=1e-6)
    for i, (_, s) in enumerate(per):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), stats, s)


def test_randomized_average_of_a_foreign_model():
    def noisy_linear(p, x, *, key):
        return x @ p + jax.random.normal(key, (x.shape[0], p.shape[1]))

    params = E.stack([jnp.eye(3), 2 * jnp.eye(3)])
    x = jnp.ones((4, 3))
    key = jax.random.key(0)
    k0, k1 = jax.random.split(key, 2)
    expect = (noisy_linear(params[0], x, key=k0) + noisy_linear(params[1], x, key=k1)) / 2
    np.testing.assert_allclose(randomized_average(noisy_linear)(params, x, key=key), expect, rtol=1e-6)
    probs = randomized_average(noisy_linear, over="probs")(params, x, key=key)
    expect_p = (jax.nn.softmax(noisy_linear(params[0], x, key=k0)) + jax.nn.softmax(noisy_linear(params[1], x, key=k1))) / 2
    np.testing.assert_allclose(jnp.exp(probs), expect_p, rtol=1e-5)
    assert randomized_average(noisy_linear) == randomized_average(noisy_linear)  # hashable, shares compiles


@pytest.mark.slow
def test_eot_accuracy_draws_fresh_noise_per_call_and_batch():
    en = enresnet(2, key=jax.random.key(0), noise_scale=3.0, **TINY)  # heavy noise: predictions flip
    x = jnp.tile(X[:1], (48, 1, 1, 1))
    y = jnp.zeros((48,), jnp.int32) + int(jnp.argmax(en.apply_fn(en.variables, X[:1], key=jax.random.key(0))))
    acc = lambda k: attacks.accuracy(en.apply_fn, en.variables, x, y, key=jax.random.key(k), randomized=True,
                                     batch_size=16)
    assert acc(1) == acc(1)
    values = {acc(k) for k in range(1, 5)}
    assert len(values) > 1  # a new key draws new noise
    assert any(0.0 < v < 1.0 for v in values)  # 48 copies of one image disagree: noise per example and batch
    with pytest.raises(ValueError, match="key is required"):
        attacks.accuracy(en.apply_fn, en.variables, x, y, randomized=True)


# --------------------------------------------------------------------------- joint PGD training


@pytest.mark.slow
def test_joint_pgd_training_through_the_randomized_ensemble_updates_every_member():
    en = _ensemble(2)
    opt = train.make_optimizer("sgd", learning_rate=0.05)
    loss = train.pgd_at(0.1, steps=2, step_size=0.05, randomized=True)
    assert dict(loss.hparams)["randomized"] is True
    assert "randomized" not in dict(train.pgd_at(0.1).hparams)  # unchanged fingerprint for ordinary models
    step = train.make_train_step(en.apply_fn, en.train_apply, opt, loss, donate=False)
    state = train.TrainState.create(en.variables["params"], opt, key=jax.random.key(0),
                                    batch_stats=en.variables["batch_stats"])
    new, metrics = step(state, X, Y, jax.random.key(1))
    again, _ = step(state, X, Y, jax.random.key(1))
    assert _equal(new.params, again.params)  # same key, same step
    delta = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b), axis=tuple(range(1, a.ndim))), new.params,
                         state.params)
    moved = np.max(np.stack(jax.tree.leaves(delta)), axis=0)  # per member
    assert moved.shape == (2,) and np.all(moved > 0)
    assert np.isfinite(float(metrics["loss"]))
    # The attack needs the key: without randomized=True PGD would call apply_fn(params, x).
    with pytest.raises(TypeError, match="key"):
        train.make_train_step(en.apply_fn, en.train_apply, opt, train.pgd_at(0.1, steps=1), donate=False)(
            state, X, Y, jax.random.key(1))


def test_randomized_train_apply_requires_callables():
    with pytest.raises(TypeError, match="train_apply must be callable"):
        randomized_train_apply(None)
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        randomized_average(3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(noise_scale=-0.1), ValueError, "noise_scale must be >= 0"),
    (dict(noise_std="channel"), ValueError, "noise_std must be one of"),
    (dict(depth=21), ValueError, "depth must be 6n \\+ 2"),
    (dict(width=0), ValueError, "width must be >= 1"),
    (dict(input_shape=(8, 8)), ValueError, "input_shape must be a 3-tuple"),
    (dict(num_members=0), ValueError, "num_members must be >= 1"),
    (dict(key=0), TypeError, "key must be a PRNG key"),
    (dict(over="median"), ValueError, "over must be one of"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(key=jax.random.key(0), **TINY)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        if "over" in kwargs:
            randomized_average(lambda p, x, *, key: x, over=kwargs["over"])
        elif "num_members" in kwargs:
            enresnet(args.pop("num_members"), **args)
        else:
            noisy_resnet(**args)
    with pytest.raises(ValueError, match="std_over must be one of"):
        inject_noise(X, 0.1, key=jax.random.key(0), std_over="channel")
