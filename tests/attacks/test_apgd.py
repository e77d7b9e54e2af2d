"""APGD / APGD-T: checkpoint schedule, DLR losses, threat-model constraints, closed forms,
strength against PGD, restarts and targets never weaker, EOT, jit/vmap, argument errors,
and (slow) agreement with torchattacks' APGD on the same weights.

Compiles dominate on CPU: tests share configurations (``eps`` and ``key`` are traced).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrob
from jaxrob.attacks import pgd
from jaxrob.attacks._apgd import apgd, apgd_targeted, checkpoints, dlr_loss, dlr_targeted_loss

KEY = jax.random.key(0)
MNIST = pathlib.Path(jaxrob.__file__).parent / "data" / "mnist10k.npz"


def _norms(d, norm):
    d = np.asarray(d, np.float64).reshape(d.shape[0], -1)
    return np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))


def _fooled(m, x_adv, y):
    return np.asarray(m.predict(m.params, x_adv)).argmax(-1) != np.asarray(y)


def _official_checkpoints(n_iter):
    """The official loop's bookkeeping (counter3 / k), replayed: iterations after which it checks."""
    k, k_min, decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    out, counter3 = [], 0
    for i in range(n_iter):
        counter3 += 1
        if counter3 == k:
            out.append(i + 1)
            counter3 = 0
            k = max(k - decr, k_min)
    return tuple(out)


def test_checkpoints_match_paper_and_official_code():
    # The paper's p_j for 100 iterations: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    p, q, ps = 0.0, 0.22, []
    while q <= 1.0:
        ps.append(q)
        p, q = q, q + max(q - p - 0.03, 0.06)
    assert checkpoints(100) == tuple(round(100 * v) for v in ps) == (22, 41, 57, 70, 80, 87, 93, 99)
    for n in (1, 5, 10, 20, 37, 100, 250):
        assert checkpoints(n) == _official_checkpoints(n), n


def _np_dlr(z, y):
    z = np.asarray(z, np.float64)
    s = np.sort(z, axis=1)
    idx = np.arange(len(y)), np.asarray(y)
    other = z.copy()
    other[idx] = -np.inf
    return -(z[idx] - other.max(1)) / (s[:, -1] - s[:, -3] + 1e-12)


def _np_dlr_t(z, y, t):
    z = np.asarray(z, np.float64)
    s = np.sort(z, axis=1)
    r = np.arange(len(y))
    return -(z[r, y] - z[r, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def test_dlr_losses_match_definition_and_are_scale_shift_invariant():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, 64)
    t = (y + rng.integers(1, 10, 64)) % 10
    np.testing.assert_allclose(dlr_loss(jnp.asarray(z), jnp.asarray(y)), _np_dlr(z, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dlr_targeted_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(t)),
                               _np_dlr_t(z, y, t), rtol=1e-5, atol=1e-6)
    for a, b in ((7.5, -3.0), (0.2, 11.0)):
        np.testing.assert_allclose(dlr_loss(jnp.asarray(a * z + b), jnp.asarray(y)), _np_dlr(z, y),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dlr_targeted_loss(jnp.asarray(a * z + b), jnp.asarray(y), jnp.asarray(t)),
                                   _np_dlr_t(z, y, t), rtol=1e-4, atol=1e-5)
    # Positive exactly when misclassified.
    np.testing.assert_array_equal(np.asarray(dlr_loss(jnp.asarray(z), jnp.asarray(y))) > 0, z.argmax(1) != y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_closed_form(linear2, norm):
    """Binary linear model, no box: the minimal perturbation is margin / ||w_y - w_o||_dual.
    Just below it APGD cannot fool the model and returns the loss maximiser (the corner
    x + eps sign(d), or x + eps d / ||d||); just above it, it fools every example."""
    apply_fn, params = linear2
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    rng = np.random.default_rng(1)
    x = (0.5 + 0.05 * rng.normal(size=(4, 2, 5, 2))).astype(np.float32)
    z = x.reshape(4, -1) @ w + b
    y = z.argmax(-1)
    d = (w[:, 1 - y] - w[:, y]).T
    eps_star = np.abs(z[:, 0] - z[:, 1]) / np.linalg.norm(d, ord=1 if norm == "linf" else 2, axis=1)
    for i in range(4):
        xi, yi = jnp.asarray(x[i:i + 1]), jnp.asarray(y[i:i + 1])
        kw = dict(key=jax.random.key(i), steps=30, norm=norm, clip=None)
        below = np.asarray(apgd(apply_fn, params, xi, yi, eps=0.97 * eps_star[i], **kw)).reshape(-1)
        above = np.asarray(apgd(apply_fn, params, xi, yi, eps=1.03 * eps_star[i], **kw)).reshape(-1)
        u = np.sign(d[i]) if norm == "linf" else d[i] / np.linalg.norm(d[i])
        np.testing.assert_allclose(below, x[i].reshape(-1) + 0.97 * eps_star[i] * u, atol=2e-4)
        assert (below @ w + b).argmax() == y[i]
        assert (above @ w + b).argmax() != y[i]


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_in_ball_and_box_and_at_least_as_strong_as_pgd(mnist_mlp, norm, eps):
    m = mnist_mlp
    kw = dict(key=KEY, steps=10, norm=norm)  # the configuration shared with the next test
    x_adv = apgd(m.apply_fn, m.params, m.x, m.y, eps=eps, **kw)
    assert x_adv.shape == m.x.shape and x_adv.dtype == m.x.dtype
    assert _norms(x_adv - m.x, norm).max() <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    acc_apgd = 1 - _fooled(m, x_adv, m.y).mean()
    acc_pgd = 1 - _fooled(m, pgd(m.apply_fn, m.params, m.x, m.y, eps=eps, **kw), m.y).mean()
    assert acc_apgd <= acc_pgd, (acc_apgd, acc_pgd)
    assert acc_apgd < 1 - _fooled(m, m.x, m.y).mean() - 0.1
    # eps = 0 (same compile): nothing moves.
    np.testing.assert_array_equal(apgd(m.apply_fn, m.params, m.x, m.y, eps=0.0, **kw), m.x)


def test_restarts_never_weaker_and_keys(mnist_mlp):
    """Restart 0 is the restarts=1 run and a success is kept: more restarts only fool more."""
    m = mnist_mlp
    x, y = m.x, m.y
    kw = dict(key=KEY, eps=0.03, steps=10)
    one = apgd(m.apply_fn, m.params, x, y, **kw)
    three = apgd(m.apply_fn, m.params, x, y, restarts=3, **kw)
    f1, f3 = _fooled(m, one, y), _fooled(m, three, y)
    assert f1.any() and np.all(f3[f1]) and f3.sum() >= f1.sum()
    np.testing.assert_array_equal(apgd(m.apply_fn, m.params, x, y, **kw), one)  # same key, same result
    other = apgd(m.apply_fn, m.params, x, y, key=jax.random.key(1), eps=0.03, steps=10)
    assert not np.array_equal(np.asarray(other), np.asarray(one))


def test_more_target_classes_never_weaker(mnist_mlp):
    """Target 1 of n_target_classes=3 is the n_target_classes=1 run, and a success is kept."""
    m = mnist_mlp
    x, y = m.x, m.y
    kw = dict(key=KEY, eps=0.03, steps=10)
    t1 = _fooled(m, apgd_targeted(m.apply_fn, m.params, x, y, n_target_classes=1, **kw), y)
    t3 = _fooled(m, apgd_targeted(m.apply_fn, m.params, x, y, n_target_classes=3, **kw), y)
    assert t1.any() and np.all(t3[t1]) and t3.sum() > t1.sum()


def test_targeted_loss_reaches_targets(mnist_mlp):
    m = mnist_mlp
    x, y = m.x, m.y
    z = np.array(m.predict(m.params, x))
    z[np.arange(len(y)), y] = -np.inf
    target = z.argmax(1)  # the runner-up class
    x_adv = apgd(m.apply_fn, m.params, x, y, key=KEY, eps=0.1, steps=10, loss="ce-targeted",
                 target=jnp.asarray(target))
    pred = np.asarray(m.predict(m.params, x_adv)).argmax(-1)
    assert np.mean(pred == target) >= 0.9


def test_one_compile_for_two_calls(linear2):
    """eps, key, rho and params are traced: a second call with new values does not retrace."""
    apply_fn, params = linear2
    traces = []

    def counted(p, x):
        traces.append(1)
        return apply_fn(p, x)

    x = jnp.full((3, 2, 5, 2), 0.5)
    y = jnp.array([0, 1, 0])
    apgd(counted, params, x, y, key=KEY, eps=0.1, steps=3)
    n = len(traces)
    params2 = jax.tree.map(lambda a: a * 1.5, params)
    apgd(counted, params2, x * 0.9, y, key=jax.random.key(5), eps=0.2, steps=3, rho=0.5)
    assert n > 0 and len(traces) == n


def test_vmap_matches_loop(linear2):
    apply_fn, params = linear2
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.uniform(0.2, 0.8, size=(3, 4, 2, 5, 2)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 2, size=(3, 4)))

    def attack(x, y, eps):
        return apgd(apply_fn, params, x, y, key=KEY, eps=eps, steps=4, norm="l2")

    batched = jax.vmap(attack, in_axes=(0, 0, None))(xs, ys, 0.5)
    looped = jnp.stack([attack(xs[i], ys[i], 0.5) for i in range(3)])
    np.testing.assert_allclose(batched, looped, atol=1e-5)


def test_eot_plumbing(linear2):
    """A randomized model whose randomness cancels in the logits gives the deterministic result
    (EOT over 2 identical draws averages exactly). Real randomness: test_autoattack's "rand" test."""
    apply_fn, params = linear2
    x = jnp.full((4, 2, 5, 2), 0.5) + jnp.linspace(-0.1, 0.1, 80).reshape(4, 2, 5, 2)
    y = jnp.array([0, 1, 1, 0])
    kw = dict(key=KEY, eps=0.1, steps=5)

    def no_op_random(p, xx, *, key):
        return apply_fn(p, xx) + 0.0 * jax.random.normal(key, ())

    det = apgd(apply_fn, params, x, y, **kw)
    rnd = apgd(no_op_random, params, x, y, randomized=True, eot_samples=2, **kw)
    np.testing.assert_allclose(rnd, det, atol=1e-6)

    assert _norms(rnd - x, "linf").max() <= 0.1 + 1e-6


def test_argument_errors(linear2, mnist_mlp):
    apply_fn, params = linear2
    x, y = jnp.full((2, 2, 5, 2), 0.5), jnp.array([0, 1])
    m = mnist_mlp
    mx, my = m.x[:2], m.y[:2]
    ok = dict(key=KEY, eps=0.1, steps=2)
    with pytest.raises(ValueError, match="loss must be one of"):
        apgd(m.apply_fn, m.params, mx, my, loss="cw", **ok)
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(apply_fn, params, x, y, loss="dlr", **ok)
    with pytest.raises(ValueError, match="needs target="):
        apgd(m.apply_fn, m.params, mx, my, loss="dlr-targeted", **ok)
    with pytest.raises(ValueError, match="only used by the targeted"):
        apgd(m.apply_fn, m.params, mx, my, target=my, **ok)
    with pytest.raises(ValueError, match="target must lie in"):
        apgd(m.apply_fn, m.params, mx, my, loss="ce-targeted", target=jnp.array([0, 10]), **ok)
    with pytest.raises(ValueError, match="rho must lie in"):
        apgd(m.apply_fn, m.params, mx, my, rho=1.5, **ok)
    with pytest.raises(ValueError, match="norm must be one of"):
        apgd(m.apply_fn, m.params, mx, my, norm="l1", **ok)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        apgd(m.apply_fn, m.params, mx, my, key=KEY, eps=0.1, steps=0)
    with pytest.raises(TypeError, match="typed PRNG key"):
        apgd(m.apply_fn, m.params, mx, my, key=jax.random.PRNGKey(0), eps=0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        apgd(m.apply_fn, m.params, mx, my, key=KEY, eps=-0.1)
    with pytest.raises(ValueError, match="averages over randomness"):
        apgd(m.apply_fn, m.params, mx, my, eot_samples=3, **ok)
    with pytest.raises(ValueError, match="clip range"):
        apgd(m.apply_fn, m.params, mx + 2.0, my, **ok)
    with pytest.raises(ValueError, match=r"at most C - 1 = 9"):
        apgd_targeted(m.apply_fn, m.params, mx, my, n_target_classes=10, **ok)
    with pytest.raises(ValueError, match="for APGD-T"):
        apgd_targeted(m.apply_fn, m.params, mx, my, loss="dlr", **ok)


@pytest.mark.slow
def test_docstring_examples_run():
    import doctest

    from jaxrob.attacks import _apgd

    result = doctest.testmod(_apgd, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_agrees_with_torchattacks_apgd(mnist_mlp):
    """APGD-CE robust accuracy within 1 point of torchattacks' APGD, same MLP weights, 1,000
    held-out digits (benchmarks/bench_apgd_vs_torchattacks.py does the same for cnn_small)."""
    torch = pytest.importorskip("torch")
    torchattacks = pytest.importorskip("torchattacks")
    m = mnist_mlp
    data = np.load(MNIST)
    x = data["images"][6000:7000].astype(np.float32)[..., None] / 255.0
    y = data["labels"][6000:7000].astype(np.int32)
    eps, steps = 0.05, 100

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(np.asarray(m.params["w1"]).T.copy()))
        net[1].bias.copy_(torch.from_numpy(np.array(m.params["b1"])))
        net[3].weight.copy_(torch.from_numpy(np.asarray(m.params["w2"]).T.copy()))
        net[3].bias.copy_(torch.from_numpy(np.array(m.params["b2"])))
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))
    with torch.no_grad():
        clean_t = net(xt).argmax(1).numpy() == y
    clean_j = np.asarray(m.predict(m.params, x)).argmax(1) == y
    assert np.mean(clean_t == clean_j) >= 0.999

    atk = torchattacks.APGD(net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce")
    adv_t = atk(xt, yt)
    with torch.no_grad():
        acc_t = np.mean(clean_t & (net(adv_t).argmax(1).numpy() == y))
    adv_j = apgd(m.apply_fn, m.params, x, y, key=KEY, eps=eps, steps=steps)
    acc_j = np.mean(clean_j & ~_fooled(m, adv_j, y))
    assert 0.1 < acc_j < 0.9, acc_j  # a comparison that means something
    print(f"APGD-CE robust accuracy: jaxrob {acc_j:.4f}, torchattacks {acc_t:.4f}")
    assert abs(acc_j - acc_t) <= 0.01, (acc_j, acc_t)
