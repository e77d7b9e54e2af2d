"""Properties of PGD and FGSM: threat-model constraints, closed forms, strength, restarts,
EOT, jit/vmap agreement and foreign models.

Compiles dominate the runtime on CPU, so tests share attack configurations where they can
(``eps`` and ``key`` are traced: only the static options and shapes make a new compile) and
reference values are computed in numpy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.attacks import ce_loss, cw_loss, fgsm, pgd

KEY = jax.random.key(0)
EPS = {"linf": 0.1, "l2": 1.5}


def _linf(d):
    return np.abs(np.asarray(d, np.float64)).reshape(d.shape[0], -1).max(axis=1)


def _l2(d):
    return np.sqrt((np.asarray(d, np.float64) ** 2).reshape(d.shape[0], -1).sum(axis=1))


def _np_log_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(logits, y):
    return -_np_log_softmax(logits)[np.arange(len(y)), np.asarray(y)]


def _np_cw(logits, y):
    z = np.asarray(logits, np.float64)
    idx = np.arange(len(y)), np.asarray(y)
    other = z.copy()
    other[idx] = -np.inf
    return other.max(-1) - z[idx]


def _outcome(m, x_adv, y, *, targeted=False):
    """Per-example (fooled, objective) at ``x_adv``, computed outside the attack."""
    logits = np.asarray(m.predict(m.params, x_adv))
    pred = logits.argmax(-1)
    ce = _np_ce(logits, y)
    return (pred == y, -ce) if targeted else (pred != y, ce)


def _ball_attack(m, norm, init, eps, key=KEY):
    """One attack configuration per (norm, init), shared by several tests."""
    return pgd(m.apply_fn, m.params, m.x[:32], m.y[:32], key=key, eps=eps, steps=3, norm=norm,
               init=init, init_scale=0.05)


# ----------------------------------------------------------------------------- losses


def test_losses_match_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 5, 16).astype(np.int32)
    ce, cw = jax.jit(lambda z, t: (ce_loss(z, t), cw_loss(z, t)))(logits, y)
    np.testing.assert_allclose(ce, _np_ce(logits, y), rtol=1e-5)
    np.testing.assert_allclose(cw, _np_cw(logits, y), rtol=1e-5)
    assert np.array_equal(np.asarray(cw) > 0, logits.argmax(-1) != y)  # > 0 iff misclassified


# ------------------------------------------------------------------ threat-model constraints


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("init", ["uniform", "normal", "zero"])
def test_result_in_ball_and_box(mnist_mlp, norm, init):
    m = mnist_mlp
    x, eps = m.x[:32], EPS[norm]
    x_adv = _ball_attack(m, norm, init, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    size = _linf(x_adv - x) if norm == "linf" else _l2(x_adv - x)
    assert size.max() <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert np.median(size) > 0.5 * eps  # it moved, towards the boundary of the ball


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("init", ["uniform", "normal", "zero"])
def test_eps_zero_returns_x_exactly(mnist_mlp, norm, init):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    assert np.array_equal(np.asarray(_ball_attack(m, norm, init, 0.0)), x)
    assert np.array_equal(np.asarray(fgsm(m.apply_fn, m.params, x, y, eps=0.0, norm=norm)), x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_without_box_only_ball(linear2, norm):
    apply_fn, params = linear2
    x = jnp.zeros((8, 2, 5, 2))  # on the box boundary: a box would block half the moves
    eps = 0.3
    x_adv = pgd(apply_fn, params, x, jnp.zeros(8, jnp.int32), key=KEY, eps=eps, steps=10,
                norm=norm, clip=None)
    size = _linf(x_adv - x) if norm == "linf" else _l2(x_adv - x)
    np.testing.assert_allclose(size, eps, rtol=1e-5)  # a linear model: on the sphere
    assert float(x_adv.min()) < 0.0  # which clip=(0, 1) would forbid


def test_zero_gradient_l2_no_nan(linear2):
    apply_fn, _ = linear2
    params = {"w": jnp.zeros((20, 2)), "b": jnp.zeros(2)}  # constant logits: zero gradient
    x = jnp.full((4, 2, 5, 2), 0.5)
    y = jnp.array([0, 1, 0, 1])
    for out in (pgd(apply_fn, params, x, y, key=KEY, eps=0.2, steps=10, norm="l2", init="zero"),
                fgsm(apply_fn, params, x, y, eps=0.2, norm="l2")):
        assert np.array_equal(np.asarray(out), np.asarray(x))


# -------------------------------------------------------------------------- closed forms


def _linear_problem(params):
    w = np.asarray(params["w"])
    y = np.array([0, 1, 0, 1], np.int32)
    u = (w[:, 1 - y] - w[:, y]).T  # (B, 20): the direction that grows the wrong logit
    return jnp.full((4, 2, 5, 2), 0.5), y, u


def test_linear_linf_optimum(linear2):
    """For a 2-class linear model the worst L-inf perturbation is eps*sign(w_other - w_y)."""
    apply_fn, params = linear2
    x, y, u = _linear_problem(params)
    eps = 0.05
    expected = 0.5 + eps * np.sign(u).reshape(x.shape)
    for x_adv in (pgd(apply_fn, params, x, y, key=KEY, eps=eps, steps=10),
                  pgd(apply_fn, params, x, y, key=KEY, eps=eps, steps=10, loss="cw"),
                  fgsm(apply_fn, params, x, y, eps=eps)):
        np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_linear_l2_optimum(linear2):
    """... and the worst L2 perturbation is eps * (w_other - w_y) / ||w_other - w_y||."""
    apply_fn, params = linear2
    x, y, u = _linear_problem(params)
    eps = 0.2
    expected = 0.5 + eps * (u / np.linalg.norm(u, axis=1, keepdims=True)).reshape(x.shape)
    for x_adv in (fgsm(apply_fn, params, x, y, eps=eps, norm="l2"),
                  pgd(apply_fn, params, x, y, key=KEY, eps=eps, steps=10, norm="l2", init="zero"),
                  # from a random start the angle to the optimum shrinks ~1.5x per step
                  pgd(apply_fn, params, x, y, key=KEY, eps=eps, steps=30, step_size=eps / 2,
                      norm="l2")):
        np.testing.assert_allclose(x_adv, expected, atol=1e-5)


# ------------------------------------------------------------------------------ strength


def test_huge_eps_breaks_everything(mnist_mlp):
    m = mnist_mlp
    fooled, _ = _outcome(m, _ball_attack(m, "linf", "uniform", 1.0), m.y[:32])
    assert fooled.mean() >= 0.97


def test_targeted_reaches_target(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    target = (y + 3) % 10
    assert np.mean(np.asarray(m.predict(m.params, x)).argmax(-1) == target) <= 0.05
    for loss in ("ce", "cw"):
        x_adv = pgd(m.apply_fn, m.params, x, target, key=KEY, eps=0.2, steps=10, targeted=True,
                    loss=loss)
        hit, _ = _outcome(m, x_adv, target, targeted=True)
        assert hit.mean() >= 0.9, (loss, hit.mean())


def test_pgd_stronger_than_fgsm(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    eps = 0.05
    f_fgsm, l_fgsm = _outcome(m, fgsm(m.apply_fn, m.params, x, y, eps=eps), y)
    f_pgd, l_pgd = _outcome(m, pgd(m.apply_fn, m.params, x, y, key=KEY, eps=eps, steps=10), y)
    _, l_clean = _outcome(m, x, y)
    assert f_pgd.sum() >= f_fgsm.sum()
    assert l_pgd.mean() > l_fgsm.mean() > l_clean.mean()
    assert np.mean(l_pgd >= l_fgsm - 1e-6) >= 0.9


def test_restarts_never_weaker(mnist_mlp):
    """Per example: fooled by some restart beats never fooled, then the higher loss wins;
    restart 0 is the single-restart attack, so R restarts are never weaker than one."""
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    key, eps = jax.random.key(3), 0.04
    one = _ball_attack(m, "linf", "uniform", eps, key=key)
    many = pgd(m.apply_fn, m.params, x, y, key=key, eps=eps, steps=3, restarts=4)
    assert _linf(many - x).max() <= eps + 1e-6
    f1, l1 = _outcome(m, one, y)
    f4, l4 = _outcome(m, many, y)
    assert np.all(f4 >= f1)
    same = f4 == f1
    assert np.all(l4[same] >= l1[same] - 1e-5)
    assert f4.sum() > f1.sum() or np.sum(l4 > l1 + 1e-4) >= 5  # later restarts found something


def test_trades_style_soft_target_loss(mnist_mlp):
    """A callable loss over a pytree of soft targets (TRADES: KL from the clean prediction)."""
    m = mnist_mlp
    x = m.x[:32]
    p_clean = jax.nn.softmax(m.predict(m.params, x))

    def kl(logits, targets):
        return jnp.sum(targets["p"] * (jnp.log(targets["p"]) - jax.nn.log_softmax(logits)), -1)

    eps = 0.1
    x_adv = pgd(m.apply_fn, m.params, x, {"p": p_clean}, key=KEY, eps=eps, steps=10, loss=kl,
                init="normal", restarts=2)
    assert _linf(x_adv - x).max() <= eps + 1e-6
    rng = np.random.default_rng(0)
    x_rand = np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), 0, 1)
    p = np.asarray(p_clean, np.float64)
    kl_of = lambda xx: np.sum(p * (np.log(p) - _np_log_softmax(m.predict(m.params, xx))), -1)
    kl_adv, kl_rand = kl_of(x_adv), kl_of(x_rand)
    assert kl_adv.mean() > 5 * kl_rand.mean() and kl_adv.min() > 0.0


# ------------------------------------------------------------- purity, jit and vmap


def test_same_key_same_result_different_key_different(mnist_mlp):
    m = mnist_mlp
    a = _ball_attack(m, "linf", "uniform", 0.1, key=jax.random.key(7))
    b = _ball_attack(m, "linf", "uniform", 0.1, key=jax.random.key(7))
    c = _ball_attack(m, "linf", "uniform", 0.1, key=jax.random.key(8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


class _Unhashable:
    """A model callable that cannot be a static jit argument: pgd then runs without its own jit."""

    __hash__ = None

    def __init__(self, f):
        self.f = f

    def __call__(self, params, x):
        return self.f(params, x)


def test_jit_matches_unjitted(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    kw = dict(key=KEY, eps=0.1, steps=3, norm="linf", init="uniform", init_scale=0.05)
    direct = _ball_attack(m, "linf", "uniform", 0.1)  # pgd's own jit
    jitted = jax.jit(lambda p, xx, yy: pgd(m.apply_fn, p, xx, yy, **kw))(m.params, x, y)
    unjitted = pgd(_Unhashable(m.apply_fn), m.params, x, y, **kw)
    np.testing.assert_allclose(jitted, direct, atol=1e-6)
    np.testing.assert_allclose(unjitted, direct, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_vmap_over_examples_matches_batch(mnist_mlp, norm):
    m = mnist_mlp
    x, y = jnp.asarray(m.x[:32]), jnp.asarray(m.y[:32])
    batched = _ball_attack(m, norm, "zero", EPS[norm])
    kw = dict(key=KEY, eps=EPS[norm], steps=3, norm=norm, init="zero")
    single = jax.vmap(lambda xi, yi: pgd(m.apply_fn, m.params, xi[None], yi[None], **kw)[0])(x, y)
    np.testing.assert_allclose(single, batched, atol=1e-5)


def test_traced_eps_inside_jit(mnist_mlp):
    """Inside a user's jit (e.g. a training step) eps may be traced: one trace for all eps."""
    m = mnist_mlp
    x, y = m.x[:8], m.y[:8]
    traces = []

    def attack(eps):
        traces.append(eps)
        return pgd(m.apply_fn, m.params, x, y, key=KEY, eps=eps, steps=2)

    f = jax.jit(attack)
    for eps in (0.0, 0.05, 0.1):
        assert _linf(f(eps) - x).max() <= eps + 1e-6
    assert len(traces) == 1


def test_no_gradient_through_attack(linear2):
    """Adversarial training differentiates the loss at x_adv w.r.t. params, never through PGD."""
    apply_fn, params = linear2
    x, y, _ = _linear_problem(params)

    def loss(p):
        x_adv = pgd(apply_fn, p, x, y, key=KEY, eps=0.05, steps=3)
        return ce_loss(apply_fn(p, x_adv), y).mean(), x_adv

    g, x_adv = jax.grad(loss, has_aux=True)(params)
    g_fixed = jax.grad(lambda p: ce_loss(apply_fn(p, x_adv), y).mean())(params)
    np.testing.assert_allclose(g["w"], g_fixed["w"], rtol=1e-6)


# --------------------------------------------------------------------- foreign models


def test_linen_module_and_plain_function():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.tanh(nn.Dense(16, name="hidden")(x.reshape(x.shape[0], -1)))
            return nn.Dense(4, name="head")(h)

    rng = np.random.default_rng(1)
    variables = {"params": {  # Linen's own layout, filled from numpy (no init compile)
        "hidden": {"kernel": rng.normal(0, 0.5, (18, 16)).astype(np.float32),
                   "bias": np.zeros(16, np.float32)},
        "head": {"kernel": rng.normal(0, 0.5, (16, 4)).astype(np.float32),
                 "bias": np.zeros(4, np.float32)}}}

    def plain(v, xx):  # the same network as a plain function over the Linen variables
        p = v["params"]
        h = jnp.tanh(xx.reshape(xx.shape[0], -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return h @ p["head"]["kernel"] + p["head"]["bias"]

    def predict(xx):
        p = variables["params"]
        h = np.tanh(np.asarray(xx).reshape(len(xx), -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return (h @ p["head"]["kernel"] + p["head"]["bias"]).argmax(-1)

    x = rng.uniform(size=(6, 3, 3, 2)).astype(np.float32)
    y = predict(x)  # attack the network's own predictions
    x_adv = pgd(Net().apply, variables, x, y, key=KEY, eps=0.5, steps=5)
    assert _linf(x_adv - x).max() <= 0.5 + 1e-6
    assert np.mean(predict(x_adv) != y) >= 0.5
    np.testing.assert_allclose(pgd(plain, variables, x, y, key=KEY, eps=0.5, steps=5), x_adv,
                               atol=1e-5)


def test_jaxrob_model_contract():
    models = pytest.importorskip("jaxrob.models")
    if not hasattr(models, "create"):
        pytest.skip("jaxrob.models.create is not available")
    model = models.create("mlp", hidden_sizes=(16,), key=jax.random.key(0))
    x = np.random.default_rng(0).uniform(size=(4, *model.input_shape)).astype(np.float32)
    y = np.arange(4) % model.num_classes
    x_adv = pgd(model.apply_fn, model.variables, x, y, key=KEY, eps=8 / 255, steps=2)
    assert _linf(x_adv - x).max() <= 8 / 255 + 1e-6
    assert _linf(x_adv - x).min() > 4 / 255


# ----------------------------------------------------------------------------- EOT


def _noise(k, x):
    return x + 0.3 * jax.random.normal(k, (x.size,)).reshape(x.shape)


def test_eot_averages_gradients(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    kw = dict(eps=0.1, steps=3, init="zero", transform=_noise)
    one = pgd(m.apply_fn, m.params, x, y, key=KEY, **kw)
    eot = pgd(m.apply_fn, m.params, x, y, key=KEY, eot_samples=32, **kw)
    assert np.array_equal(np.asarray(eot),
                          np.asarray(pgd(m.apply_fn, m.params, x, y, key=KEY, eot_samples=32, **kw)))
    assert not np.array_equal(np.asarray(one), np.asarray(eot))
    # averaging reduces the variance of the attack across keys
    one_b = pgd(m.apply_fn, m.params, x, y, key=jax.random.key(1), **kw)
    eot_b = pgd(m.apply_fn, m.params, x, y, key=jax.random.key(1), eot_samples=32, **kw)
    assert np.mean(np.asarray(eot != eot_b)) < 0.5 * np.mean(np.asarray(one != one_b))


def test_eot_randomized_model(linear2):
    """A randomized model takes ``key=``; with EOT, PGD follows the expected gradient."""
    apply_fn, params = linear2

    def noisy(p, x, *, key):  # negates the logits with probability 0.3
        flip = jnp.where(jax.random.bernoulli(key, 0.3, (x.shape[0], 1)), -1.0, 1.0)
        return flip * apply_fn(p, x)

    x = jnp.full((16, 2, 5, 2), 0.5)
    # Label each example with its losing class, so the margin m = z_other - z_y >= 0. The
    # expected CE, 0.7 softplus(m) + 0.3 softplus(-m), then grows with m (sigmoid(m) > 0.3
    # inside the ball), so its maximiser is the deterministic model's L-inf optimum.
    y = np.asarray(apply_fn(params, x)).argmin(-1)
    w = np.asarray(params["w"])
    eps = 0.02
    expected = 0.5 + eps * np.sign(w[:, 1 - y] - w[:, y]).T.reshape(x.shape)
    out = pgd(noisy, params, x, y, key=KEY, eps=eps, steps=10, randomized=True, eot_samples=64)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # one sample per step follows the flipped gradient 30% of the time
    single = pgd(noisy, params, x, y, key=KEY, eps=eps, steps=10, randomized=True)
    assert not np.allclose(single, expected, atol=1e-6)
