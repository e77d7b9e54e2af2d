"""Bad arguments fail eagerly, before anything is compiled, with a message naming them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.attacks import accuracy, fgsm, pgd, robust_accuracy

KEY = jax.random.key(0)


def _model(params, x):
    return x.reshape(x.shape[0], -1) @ params


PARAMS = np.ones((6, 3), np.float32)  # 3 classes on (B, 2, 3) inputs
X = np.full((4, 2, 3), 0.5, np.float32)
Y = np.array([0, 1, 2, 0], np.int32)


def _pgd(**overrides):
    kw = dict(key=KEY, eps=0.1, steps=2)
    kw.update(overrides)
    args = {k: kw.pop(k) for k in ("apply_fn", "params", "x", "y") if k in kw}
    return pgd(args.get("apply_fn", _model), args.get("params", PARAMS), args.get("x", X),
               args.get("y", Y), **kw)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(eps=-0.1), ValueError, "eps must be >= 0"),
    (dict(eps=float("nan")), ValueError, "eps must be finite"),
    (dict(eps="big"), TypeError, "eps must be a real number"),
    (dict(eps=np.ones(2)), ValueError, "eps must be a scalar"),
    (dict(steps=0), ValueError, "steps must be an integer >= 1"),
    (dict(steps=2.5), TypeError, "steps must be an integer"),
    (dict(step_size=0.0), ValueError, "step_size must be > 0"),
    (dict(step_size=-1.0), ValueError, "step_size must be > 0"),
    (dict(norm="l1"), ValueError, "norm must be one of 'linf', 'l2'"),
    (dict(init="gauss"), ValueError, "init must be one of"),
    (dict(init_scale=0.0), ValueError, "init_scale must be > 0"),
    (dict(loss="mse"), ValueError, "loss must be one of 'ce', 'cw'"),
    (dict(loss=3), TypeError, "loss must be one of"),
    (dict(restarts=0), ValueError, "restarts must be an integer >= 1"),
    (dict(eot_samples=0), ValueError, "eot_samples must be an integer >= 1"),
    (dict(eot_samples=4), ValueError, "eot_samples=4 averages over randomness"),
    (dict(transform="noise"), TypeError, "transform must be None or a callable"),
    (dict(targeted=1), TypeError, "targeted must be a bool"),
    (dict(randomized="yes"), TypeError, "randomized must be a bool"),
    (dict(clip=(1.0, 0.0)), ValueError, "clip must be a finite pair with lo < hi"),
    (dict(clip=0.5), TypeError, "clip must be None or a pair"),
    (dict(key=jax.random.PRNGKey(0)), TypeError, "legacy uint32 key"),
    (dict(key=0), TypeError, "key must be a typed PRNG key"),
    (dict(key=jax.random.split(KEY, 2)), ValueError, "key must be a single PRNG key"),
    (dict(x=X + 0.6), ValueError, r"x must lie in the clip range \[0, 1\]"),
    (dict(x=X - 0.6), ValueError, r"x must lie in the clip range"),
    (dict(x=np.where(X > 0, np.nan, X)), ValueError, "x contains NaN"),
    (dict(x=(X * 255).astype(np.uint8)), TypeError, "x must be a float array"),
    (dict(x=[[0.5]]), TypeError, "x must be an array"),
    (dict(x=np.float32(0.5)), ValueError, "x must have a leading batch axis"),
    (dict(y=np.array([0, 1, 3, 0])), ValueError, r"y must lie in \[0, 3\)"),
    (dict(y=np.array([0, -1, 2, 0])), ValueError, r"y must lie in \[0, 3\)"),
    (dict(y=np.array([0, 1, 2])), ValueError, r"y must have shape \(4,\)"),
    (dict(y=np.zeros((4, 3))), TypeError, "y must hold integer class indices"),
    (dict(y=[0, 1, 2, 0]), TypeError, "y must be an integer array"),
    (dict(apply_fn="model"), TypeError, "apply_fn must be callable"),
    (dict(apply_fn=lambda p, x: _model(p, x)[0]), ValueError, "logits of shape"),
])
def test_pgd_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        _pgd(**overrides)


def test_callable_loss_targets_must_match_batch():
    kl = lambda logits, t: jnp.sum(t["p"] * -jax.nn.log_softmax(logits), -1)
    with pytest.raises(ValueError, match="leading axis 4"):
        _pgd(loss=kl, y={"p": np.full((3, 3), 1 / 3, np.float32)})
    with pytest.raises(ValueError, match="at least one array"):
        _pgd(loss=kl, y={})


def test_clip_range_is_the_input_check():
    x = np.full((4, 2, 3), 2.0, np.float32)
    with pytest.raises(ValueError, match=r"clip range \[-1, 1\]"):
        _pgd(x=x, clip=(-1.0, 1.0))
    with pytest.raises(ValueError, match=r"steps must be"):  # clip=None: x unchecked, steps still
        _pgd(x=x, clip=None, steps=0)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(eps=-1.0), ValueError, "eps must be >= 0"),
    (dict(norm="inf"), ValueError, "norm must be one of"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(y=np.array([0, 1, 5, 0])), ValueError, r"y must lie in \[0, 3\)"),
])
def test_fgsm_rejects(overrides, error, match):
    kw = dict(eps=0.1)
    kw.update(overrides)
    y = kw.pop("y", Y)
    with pytest.raises(error, match=match):
        fgsm(_model, PARAMS, X, y, **kw)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(epsilons=[0.1, -0.1]), ValueError, r"epsilons\[i\] must be >= 0"),
    (dict(epsilons=[]), ValueError, "at least one radius"),
    (dict(attack="cw"), ValueError, "attack must be one of 'pgd', 'fgsm'"),
    (dict(attack=3), TypeError, "attack must be one of"),
    (dict(eps=0.1), TypeError, "pass epsilons="),
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (dict(key=jax.random.PRNGKey(0)), TypeError, "typed PRNG key"),
    (dict(progress="no"), TypeError, "progress must be a bool"),
    (dict(y=np.array([0, 1, 3, 0])), ValueError, r"y must lie in \[0, 3\)"),
    (dict(y=np.array([0, 1])), ValueError, r"y must have shape \(4,\)"),
    (dict(x=X[:0], y=Y[:0]), ValueError, "at least one example"),
    (dict(x=X + 1.0), ValueError, "clip range"),
])
def test_robust_accuracy_rejects(overrides, error, match):
    kw = dict(epsilons=[0.0, 0.1], key=KEY, steps=2, progress=False)
    kw.update(overrides)
    x, y = kw.pop("x", X), kw.pop("y", Y)
    with pytest.raises(error, match=match):
        robust_accuracy(_model, PARAMS, x, y, **kw)


def test_accuracy_rejects():
    with pytest.raises(ValueError, match="key is required"):
        accuracy(_model, PARAMS, X, Y, randomized=True)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        accuracy(_model, PARAMS, X, Y + 1)
    with pytest.raises(ValueError, match="batch_size must be"):
        accuracy(_model, PARAMS, X, Y, batch_size=-2)


def test_checks_run_under_an_outer_jit():
    """Traced values skip the value checks (no tracer errors); static options are still checked."""
    f = jax.jit(lambda x, eps: pgd(_model, PARAMS, x, Y, key=KEY, eps=eps, steps=1))
    assert f(X, 0.1).shape == X.shape
    with pytest.raises(ValueError, match="steps must be"):
        jax.jit(lambda x: pgd(_model, PARAMS, x, Y, key=KEY, eps=0.1, steps=0))(X)


def test_concrete_inputs_closed_over_inside_an_outer_jit_are_checked_not_traced():
    x = jnp.full((2, 4), 0.5)
    y = jnp.array([0, 1])
    attack = jax.jit(lambda w: pgd(lambda p, xx: xx @ p, w, x, y, key=jax.random.key(0),
                                           eps=0.1, steps=2))
    assert float(jnp.max(jnp.abs(attack(jnp.eye(4, 2)) - x))) <= 0.1 + 1e-6
    bad = jnp.full((2, 4), 1.5)
    with pytest.raises(ValueError, match="clip range"):
        jax.jit(lambda w: pgd(lambda p, xx: xx @ p, w, bad, y, key=jax.random.key(0),
                                      eps=0.1, steps=2))(jnp.eye(4, 2))
