"""Properties of the Square Attack: threat-model constraints, the L2 norm invariant, forward
passes only, search strength, monotone loss, gradient masking, determinism, one compile,
argument errors, and agreement of the schedule and patterns with torchattacks' port.

Compiles dominate on CPU: the tests share one input shape (8x8x1 images, 2 classes) and a few
static configurations; ``params``, ``x``, ``eps`` and ``key`` are traced.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.attacks import pgd
from jaxrob.attacks._square import eta, p_schedule, square

H = W = 8
B = 16
KEY = jax.random.key(0)
EPS = {"linf": 0.1, "l2": 1.0}


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _patch(weights):
    """2-class linear model: logit 1 reads a 3x3 patch (rows 2-4, cols 3-5) with ``weights``."""
    w = np.zeros((H, W), np.float32)
    w[2:5, 3:6] = np.asarray(weights, np.float32).reshape(3, 3)
    return w


def checker_model(eps):
    """Logit 1 minus logit 0 is ``sum_patch(w * delta) - 6.5 eps`` at the data below, with a
    +-1 checkerboard ``w``: a perturbation fools it iff its signs match ``w`` on at least 8 of
    the 9 patch pixels. Vertical stripes match at most 6, so search with small squares must."""
    w = _patch(np.where(np.indices((3, 3)).sum(0) % 2 == 0, 1.0, -1.0))
    params = {"w": jnp.asarray(np.stack([np.zeros(H * W), w.ravel()], 1), jnp.float32),
              "b": jnp.asarray([0.0, -(0.5 + 6.5 * eps)], jnp.float32)}
    return params


def plus_model(offset):
    """Logit 1 minus logit 0 is ``sum_patch(delta) - offset`` at the data below."""
    w = _patch(np.ones(9))
    return {"w": jnp.asarray(np.stack([np.zeros(H * W), w.ravel()], 1), jnp.float32),
            "b": jnp.asarray([0.0, -(4.5 + offset)], jnp.float32)}


def data(seed=0):
    """Images in [0, 1] with many pixels exactly at 0 or 1 (the box binds), 0.5 on the patch."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 1.0, 0.3, 0.95], size=(B, H, W, 1)).astype(np.float32)
    x[:, 2:5, 3:6] = 0.5
    return jnp.asarray(x), jnp.zeros((B,), jnp.int32)


def margin(params, x, y):
    z = np.asarray(linear(params, x), np.float64)
    return z[:, 1] - z[:, 0]  # the margin loss for y = 0


def _linf(d):
    return np.abs(np.asarray(d, np.float64)).reshape(d.shape[0], -1).max(axis=1)


def _l2(d):
    return np.sqrt((np.asarray(d, np.float64) ** 2).reshape(d.shape[0], -1).sum(axis=1))


# ------------------------------------------------------------- threat model and the L2 invariant


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_in_ball_and_box(norm):
    eps = EPS[norm]
    params = checker_model(eps) if norm == "linf" else plus_model(2.0)
    x, y = data()
    x_adv = square(linear, params, x, y, key=KEY, eps=eps, queries=300, norm=norm)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    dist = _linf(x_adv - x) if norm == "linf" else _l2(x_adv - x)
    assert np.all(dist <= eps * (1 + 1e-6) + 1e-7), dist.max()
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert np.any(dist > 0.5 * eps)  # it did move


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_without_box_points_are_on_the_sphere(norm):
    """Without a box, L-inf points are vertices (every coordinate at +-eps) and the L2
    square-pair update keeps the norm at exactly eps, as in the paper."""
    eps = EPS[norm]
    x, y = data(1)
    params = plus_model(2.0)
    x_adv = square(linear, params, x, y, key=KEY, eps=eps, queries=60, norm=norm, clip=None)
    d = np.asarray(x_adv - x, np.float64)
    if norm == "linf":
        np.testing.assert_allclose(np.abs(d), eps, rtol=1e-5)
    else:
        np.testing.assert_allclose(_l2(d), eps, rtol=1e-5)


# ------------------------------------------------------------------------------ search strength


def test_linf_breaks_checkerboard_that_init_cannot():
    eps = EPS["linf"]
    params = checker_model(eps)
    x, y = data()
    x_init = square(linear, params, x, y, key=KEY, eps=eps, queries=1)
    x_adv = square(linear, params, x, y, key=KEY, eps=eps, queries=300)
    assert np.all(margin(params, x_init, y) < 0)  # stripes never match a checkerboard
    assert np.all(margin(params, x_adv, y) > 0), margin(params, x_adv, y)
    # ... by aligning the perturbation with the weak direction on (at least 8 of 9) patch pixels.
    w = np.asarray(params["w"][:, 1]).reshape(H, W)[2:5, 3:6]
    d = np.asarray(x_adv - x)[:, 2:5, 3:6, 0]
    assert np.all(np.isclose(d, eps * w, atol=1e-6).sum(axis=(1, 2)) >= 8)


def test_l2_breaks_easy_examples():
    params = plus_model(1.5)  # needs sum_patch(delta) > 1.5 with ||delta||_2 <= 1 (max is 3)
    x, y = data()
    x_init = square(linear, params, x, y, key=KEY, eps=EPS["l2"], queries=1, norm="l2")
    x_adv = square(linear, params, x, y, key=KEY, eps=EPS["l2"], queries=300, norm="l2")
    assert np.mean(margin(params, x_init, y) > 0) < 0.5
    assert np.all(margin(params, x_adv, y) > 0), margin(params, x_adv, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_loss_never_below_the_start(norm):
    """Candidates are accepted only if they raise the loss: per example, the returned point's
    margin is at least that of the initial point (same key -> same start)."""
    eps = EPS[norm]
    params = checker_model(eps) if norm == "linf" else plus_model(2.0)
    x, y = data(2)
    start = margin(params, square(linear, params, x, y, key=KEY, eps=eps, queries=1, norm=norm), y)
    end = margin(params, square(linear, params, x, y, key=KEY, eps=eps, queries=300, norm=norm), y)
    assert np.all(end >= start - 1e-5)
    assert np.mean(end > start + 1e-3) > 0.5


def test_breaks_gradient_masked_model_where_pgd_fails(mnist_mlp):
    """Inputs quantised to 1/255 (a staircase): the gradient is zero everywhere, so PGD only
    has its random start, while the score-based search does not care."""
    m = mnist_mlp

    def masked(params, x):
        return m.apply_fn(params, jnp.round(x * 255.0) / 255.0)

    x, y = m.x[:32], m.y[:32]
    clean = np.asarray(jnp.argmax(masked(m.params, x), -1)) == y
    eps = 0.15
    x_pgd = pgd(masked, m.params, x, y, key=KEY, eps=eps, steps=10)
    x_sq = square(masked, m.params, x, y, key=KEY, eps=eps, queries=300)
    assert _linf(x_sq - x).max() <= eps + 1e-6
    acc_pgd = np.mean(clean & (np.asarray(jnp.argmax(masked(m.params, x_pgd), -1)) == y))
    acc_sq = np.mean(clean & (np.asarray(jnp.argmax(masked(m.params, x_sq), -1)) == y))
    assert acc_pgd > 0.6 and acc_sq < acc_pgd - 0.4, (acc_pgd, acc_sq)
    # Misclassified clean examples come back unchanged.
    np.testing.assert_array_equal(np.asarray(x_sq)[~clean], np.asarray(x)[~clean])


def test_targeted():
    """Three classes; every example pushed to the class whose logit reads the checkerboard,
    with the cross-entropy to the target (the official code's loss for targeted attacks)."""
    eps = EPS["linf"]
    two = checker_model(eps)
    params = {"w": jnp.concatenate([two["w"], jnp.zeros((H * W, 1))], 1),
              "b": jnp.concatenate([two["b"], jnp.array([-0.01])])}
    x, _ = data()
    t = jnp.ones((B,), jnp.int32)
    x_adv = square(linear, params, x, t, key=KEY, eps=eps, queries=300, targeted=True,
                   loss="ce")
    assert np.all(np.asarray(jnp.argmax(linear(params, x_adv), -1)) == 1)


# ------------------------------------------------------------------- determinism and compiles


def test_forward_only_same_key_same_result_one_compile():
    """The model's derivative rules raise, so this also shows that no gradient is taken."""
    traces = []

    @jax.custom_jvp
    def model(params, x):
        traces.append(x.shape)
        return linear(params, x)

    @model.defjvp
    def _jvp(primals, tangents):
        raise AssertionError("the attack asked for a derivative")

    params = plus_model(0.5)  # needs all nine patch pixels at +eps = 0.1
    x, y = data()
    with pytest.raises(AssertionError, match="derivative"):
        jax.grad(lambda xx: model(params, xx).sum())(x)
    a = square(model, params, x, y, key=KEY, eps=0.1, queries=100)
    assert np.all(margin(params, a, y) > 0)
    n = len(traces)
    b = square(model, params, x, y, key=KEY, eps=0.1, queries=100)
    c = square(model, params, x + 0.0, y, key=jax.random.key(1), eps=0.07, queries=100)
    assert len(traces) == n  # eps, key, x are traced: no retrace
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # Inside an outer jit with a traced eps (as robust_accuracy calls attacks): same result.
    d = jax.jit(lambda xx, yy, e: square(model, params, xx, yy, key=KEY, eps=e, queries=100))(
        x, y, 0.1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(d))


# ------------------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(key=0), TypeError, "typed PRNG key"),
    (dict(key=jax.random.PRNGKey(0)), TypeError, "legacy uint32"),
    (dict(eps=-0.1), ValueError, "eps must be >= 0"),
    (dict(queries=0), ValueError, "queries must be an integer >= 1"),
    (dict(queries=10.0), TypeError, "queries must be an integer"),
    (dict(norm="l1"), ValueError, "norm must be one of"),
    (dict(loss="cw"), ValueError, "loss must be one of 'margin', 'ce'"),
    (dict(p_init=0.0), ValueError, "p_init must be > 0"),
    (dict(p_init=1.5), ValueError, "p_init must be <= 1"),
    (dict(targeted=1), TypeError, "targeted must be a bool"),
    (dict(clip=(1.0, 0.0)), ValueError, "lo < hi"),
    (dict(x=np.full((2, 3, 8, 8), 0.5, np.float32)), ValueError, "looks channels-first"),
    (dict(x=np.full((2, 64), 0.5, np.float32)), ValueError, r"\(B, H, W, C\)"),
    (dict(x=np.full((2, 4, 4, 1), 0.5, np.float32), norm="l2"), ValueError, "at least 5x5"),
    (dict(x=np.full((2, 8, 8, 1), 1.5, np.float32)), ValueError, "clip range"),
    (dict(y=np.array([0, 2])), ValueError, "y"),
    (dict(y=np.array([0.0, 1.0])), (TypeError, ValueError), "y"),
    (dict(apply_fn=None), TypeError, "apply_fn must be callable"),
])
def test_argument_errors(kwargs, exc, match):
    args = dict(apply_fn=linear, params=plus_model(1.0), x=np.full((2, 8, 8, 1), 0.5, np.float32),
                y=np.array([0, 1]), key=KEY, eps=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        square(args.pop("apply_fn"), args.pop("params"), args.pop("x"), args.pop("y"), **args)


# ---------------------------------------------------------- agreement with torchattacks' port


def test_schedule_and_patterns_match_torchattacks():
    torch = pytest.importorskip("torch")
    ta = pytest.importorskip("torchattacks")
    for n, p_init in ((5000, 0.8), (1000, 0.05), (37, 0.3)):
        ref = types.SimpleNamespace(rescale_schedule=True, n_queries=n, p_init=p_init)
        expect = [ta.Square.p_selection(ref, i) for i in range(n)]
        np.testing.assert_array_equal(p_schedule(p_init, n), expect)
    dev = types.SimpleNamespace(device="cpu")
    dev.eta_rectangles = lambda a, b: ta.Square.eta_rectangles(dev, a, b)
    for s in (1, 3, 5, 6, 9, 25):
        torch.manual_seed(s)
        got = ta.Square.eta(dev, s).numpy()
        assert (np.allclose(got, eta(s), atol=1e-6) or np.allclose(got, eta(s).T, atol=1e-6)), s
