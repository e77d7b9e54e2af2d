"""BARRE: the MCE term, the REC training attack and loss, member chaining, and the OSP search for alpha."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import data, models, train
from jaxrob import ensembles as E
from jaxrob.attacks import pgd
from jaxrob.attacks._arc import arc
from jaxrob.ensembles import _barre
from jaxrob.ensembles._barre import barre_fit, barre_loss, mce, optimal_alpha, rec_adversary
from jaxrob.train._state import model_fns


def linear(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def _linear_params(seed, d=6, c=3, scale=1.0):
    r = np.random.default_rng(seed)
    return {"w": (scale * r.standard_normal((d, c))).astype(np.float32), "b": np.zeros(c, np.float32)}


def _data(n=32, d=6, c=3, seed=0):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.uniform(0.2, 0.8, (n, d)), jnp.float32),
            jnp.asarray(r.integers(0, c, n), jnp.int32))


# ------------------------------------------------------------------------------------------------ MCE

def test_mce_matches_its_closed_form():
    z = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    y = jnp.array([0, 2])
    # -log softmax(-z)_j = z_j + logsumexp(-z); mean over the two wrong classes
    lse = [np.log(np.exp(-2.0) + 2.0), np.log(1.0 + np.exp(-1.0) + np.exp(1.0))]
    expected = [0.0 + lse[0], (0.0 + 1.0) / 2 + lse[1]]
    np.testing.assert_allclose(mce(z, y), expected, rtol=1e-6)


def test_mce_gradient_raises_the_true_logit_and_lowers_the_wrong_ones():
    r = np.random.default_rng(0)
    z = jnp.asarray(r.normal(size=(6, 10)) * 2, jnp.float32)
    y = jnp.asarray(r.integers(0, 10, 6))
    z_eq, y_eq = jnp.array([[1.0, 0.5, 0.5, 0.5]]), jnp.array([0])

    def margin(z):
        zy = jnp.take_along_axis(z, y[:, None], 1)[:, 0]
        return zy - jnp.max(jnp.where(jax.nn.one_hot(y, 10, dtype=bool), -jnp.inf, z), axis=1)

    @jax.jit
    def compute():
        g = jax.grad(lambda z: jnp.sum(mce(z, y)))(z)
        g_eq = jax.grad(lambda z: jnp.sum(mce(z, y_eq)))(z_eq)
        return g, g_eq, margin(z), margin(z - 0.5 * g)

    g, g_eq, m_before, m_after = jax.device_get(compute())
    g_true = g[np.arange(6), np.asarray(y)]
    assert np.all(g_true < 0)
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-6)  # shift invariant: the wrong ones get +|g_true|
    assert np.all(g_eq[0, 1:] > 0) and g_eq[0, 0] < 0  # equal wrong logits: each one is pushed down
    assert np.all(m_after > m_before)  # a gradient step widens the margin z_y - max_{j != y} z_j


def test_mce_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        mce(jnp.zeros((3, 1)), jnp.zeros(3, jnp.int32))


# ------------------------------------------------------------------------------------------------ loss

def _rec_pgd(params_list, x, y, key, eps, steps, weight=1.0):
    stacked = E.stack(params_list)
    m = len(params_list)
    return pgd(E.average(E.Members(linear), over="probs", weighted=True), (stacked, jnp.full((m,), 1 / m, jnp.float32)),
               x, y, key=key, eps=eps, steps=steps, loss=_barre._CeMce(weight))


def _member_loss(p, x, y, weight=1.0):
    z = linear(p, x)
    return float(jnp.mean(_barre._ce(z, y)) + weight * jnp.mean(mce(z, y)))


def test_loss_attacks_the_whole_rec_not_only_the_trained_member():
    p0, p1 = _linear_params(1), _linear_params(2)
    x, y = _data()
    key = jax.random.key(3)
    eps, steps = 0.3, 5
    loss = barre_loss(E.stack([p0]), eps=eps, steps=steps)
    value, (_, metrics) = loss(model_fns(linear, None), p1, {}, x, y, key=key)
    k_attack = jax.random.split(key, 3)[1]  # jaxrob.train's convention: (forward, attack, second forward)
    x_rec = _rec_pgd([p0, p1], x, y, k_attack, eps, steps)
    x_self = pgd(linear, p1, x, y, key=k_attack, eps=eps, steps=steps, loss=_barre._CeMce(1.0))
    assert float(value) == pytest.approx(_member_loss(p1, x_rec, y), rel=1e-5)
    assert abs(_member_loss(p1, x_self, y) - float(value)) > 1e-2  # attacking f_m alone is something else
    assert float(metrics["ce"]) + float(metrics["mce"]) == pytest.approx(float(value), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(float(jnp.mean(jnp.argmax(linear(p1, x_rec), -1) == y)))
    assert loss.name == "barre" and loss.config["members"] == 2 and loss.config["eps"] == eps


def test_rec_attack_fools_a_frozen_member_that_attacking_the_new_one_leaves_alone():
    """The new member is perfectly robust (constant logits, zero input gradient): PGD on it alone
    cannot move, but the REC attack moves towards the frozen member's errors."""
    frozen = _linear_params(1, scale=3.0)
    robust = {"w": np.zeros((6, 3), np.float32), "b": np.array([0.0, 0.1, 0.0], np.float32)}
    x, _ = _data(n=64)
    y = jnp.argmax(linear(frozen, x), -1).astype(jnp.int32)  # the frozen member is right on clean data
    key = jax.random.key(0)
    x_rec = rec_adversary(linear, E.stack([frozen]), robust, x, y, key=key, eps=0.5, steps=10, init="zero")
    x_self = pgd(linear, robust, x, y, key=key, eps=0.5, steps=10, init="zero", loss=_barre._CeMce(1.0))
    np.testing.assert_array_equal(x_self, x)  # zero gradient: no move
    acc = lambda xa: float(jnp.mean(jnp.argmax(linear(frozen, xa), -1) == y))
    assert acc(x_self) == 1.0 and acc(x_rec) < 0.2


def test_first_member_without_mce_is_pgd_adversarial_training():
    p = _linear_params(4)
    x, y = _data()
    key = jax.random.key(1)
    ours, _ = barre_loss(None, eps=0.1, steps=4, mce_weight=0.0)(model_fns(linear, None), p, {}, x, y, key=key)
    ref, _ = train.pgd_at(0.1, steps=4)(model_fns(linear, None), p, {}, x, y, key=key)
    assert float(ours) == pytest.approx(float(ref), rel=1e-4)


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        barre_loss(None, eps=-0.1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        barre_loss(None, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="mce_weight must be >= 0"):
        barre_loss(None, eps=0.1, mce_weight=-1.0)
    with pytest.raises(ValueError, match="norm must be one of"):
        barre_loss(None, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="alpha has 3 entries but the ensemble has 2 members"):
        barre_loss(E.stack([_linear_params(0)]), eps=0.1, alpha=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="without arrays"):
        barre_loss({}, eps=0.1)
    loss = barre_loss({"v": jnp.zeros((1, 3))}, eps=0.1)  # frozen members of another structure
    with pytest.raises(ValueError, match="pytree structure"):
        loss(model_fns(linear, None), _linear_params(0), {}, *_data(), key=jax.random.key(0))


# ------------------------------------------------------------------------------------------------ barre_fit

@pytest.fixture(scope="module")
def tiny_mnist():
    full = data.load("mnist10k", split="train")
    return data.from_arrays(full.images[:64], full.labels[:64], num_classes=10, name="mnist10k", split="train[:64]")


def test_members_are_chained_and_stacked_in_order(monkeypatch):
    """Orchestration only (a stand-in for fit that adds 1 to every parameter): member m starts from
    member m - 1's result, trains against m frozen members, and the stack keeps every member's result."""
    calls = []

    def fake_fit(model, train_data, **kw):
        apply_fn, params = model
        calls.append({"init": params, "members": kw["loss"].config["members"], "seed": kw["seed"],
                      "key": kw["key"]})
        return types.SimpleNamespace(params=jax.tree.map(lambda a: a + 1.0, params)), [{"epoch": 1}]

    monkeypatch.setattr(_barre, "fit", fake_fit)
    p_init = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    stacked, histories = barre_fit((linear, p_init), None, num_members=3, epochs=1, batch_size=2,
                                   key=jax.random.key(0), eps=0.1, optimizer={"name": "sgd", "learning_rate": 0.1},
                                   seed=5)
    assert [c["members"] for c in calls] == [1, 2, 3] and [c["seed"] for c in calls] == [5, 6, 7]
    for m in range(3):
        np.testing.assert_array_equal(calls[m]["init"]["w"], np.full((4, 3), float(m)))
        np.testing.assert_array_equal(stacked["w"][m], np.full((4, 3), m + 1.0))
    keys = [jax.random.key_data(c["key"]).tolist() for c in calls]
    assert len({str(k) for k in keys}) == 3  # a fresh key per member
    assert len(histories) == 3


@pytest.mark.slow
def test_barre_fit_trains_each_member_from_the_previous_one(tiny_mnist, monkeypatch):
    calls = []
    real_fit = _barre.fit

    def recording_fit(model, train_data, **kw):
        state, history = real_fit(model, train_data, **kw)
        calls.append({"init": jax.tree.map(np.asarray, model.variables),
                      "final": jax.tree.map(np.asarray, state.variables())})
        return state, history

    monkeypatch.setattr(_barre, "fit", recording_fit)
    net = models.create("mlp", hidden_sizes=(8,), key=jax.random.key(0))
    stacked, histories = barre_fit(net, tiny_mnist, num_members=2, epochs=1, batch_size=32, key=jax.random.key(1),
                                   eps=0.1, steps=1, progress=False,
                                   optimizer={"name": "adam", "learning_rate": 1e-2})
    leaves = jax.tree.leaves
    for a, b in zip(leaves(calls[0]["init"]), leaves(net.variables)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(calls[1]["init"]), leaves(calls[0]["final"])):  # member 1 starts where member 0 ended
        np.testing.assert_array_equal(a, b)
    for m in range(2):  # training member 1 did not change member 0; each member was trained
        for a, b in zip(leaves(jax.tree.map(lambda s: s[m], stacked)), leaves(calls[m]["final"])):
            np.testing.assert_array_equal(a, b)
        assert not all(np.array_equal(a, b) for a, b in zip(leaves(calls[m]["final"]), leaves(calls[m]["init"])))
    # the stack is in apply_fn's format: all members at once with Members
    assert set(stacked) == {"params", "batch_stats"} and E.num_members(stacked) == 2
    x, _ = data.as_arrays(tiny_mnist, limit=5)
    assert E.Members(net.apply_fn)(stacked, x).shape == (2, 5, 10)
    assert len(histories) == 2 and {"loss", "accuracy", "ce", "mce"} <= set(histories[1][0])


def test_barre_fit_argument_errors(tiny_mnist):
    kw = dict(epochs=1, batch_size=32, key=jax.random.key(0), optimizer={"name": "sgd", "learning_rate": 0.1})
    model = (linear, _linear_params(0, d=784, c=10))
    with pytest.raises(ValueError, match="num_members must be an integer >= 1"):
        barre_fit(model, tiny_mnist, num_members=0, eps=0.1, **kw)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        barre_fit(model, tiny_mnist, num_members=2, eps=-1.0, **kw)


# ------------------------------------------------------------------------------------------------ optimal alpha

def _table_members(errors_per_member, n=10, c=3):
    """Members whose prediction on example b is read from a table: member i errs on the first
    errors_per_member[i] examples. x is one-hot of the example index."""
    y = np.arange(n) % c
    tables = []
    for k in errors_per_member:
        pred = y.copy()
        pred[:k] = (y[:k] + 1) % c
        tables.append(np.eye(c, dtype=np.float32)[pred])
    return (lambda p, x: x @ p), E.stack([jnp.asarray(t) for t in tables]), jnp.eye(n), jnp.asarray(y)


def _reference_osp(e, alpha, iterations, lr):
    """The loop of the public code (train_barre.py) for error rates e that do not depend on alpha."""
    best, eta_best = None, 1.0
    for t in range(iterations):
        eta = float(np.dot(e, alpha))
        if eta <= eta_best:
            best, eta_best = alpha.copy(), eta
        alpha = np.asarray(E.project_simplex(alpha - lr / (t + 1) * e))
    return best, eta_best


def test_optimal_alpha_moves_towards_the_better_member():
    apply_fn, params, x, y = _table_members([4, 1])
    identity = lambda p, a, x, y, k: x  # noqa: E731  (error rates independent of alpha: e = [0.4, 0.1])
    res = optimal_alpha(apply_fn, params, x, y, key=jax.random.key(0), attack=identity, iterations=4, lr=0.5)
    np.testing.assert_allclose(res.member_errors, np.tile([0.4, 0.1], (4, 1)), atol=1e-6)
    best, eta = _reference_osp(np.array([0.4, 0.1]), np.array([0.5, 0.5]), 4, 0.5)
    np.testing.assert_allclose(res.alpha, best, atol=1e-6)
    assert float(res.robust_error) == pytest.approx(eta, abs=1e-6)
    assert float(res.alpha[1]) > 0.5 and float(res.robust_error) < 0.25  # uniform: 0.25
    np.testing.assert_allclose(res.alphas[0], [0.5, 0.5])


def test_optimal_alpha_under_arc_keeps_the_best_iterate_and_its_error_is_exact():
    r = np.random.default_rng(0)
    params = E.stack([_linear_params(s, d=6, c=3, scale=2.0) for s in (1, 2, 3)])
    x, y = _data(n=40)
    y = jnp.argmax(linear(jax.tree.map(lambda a: a[0], params), x), -1).astype(jnp.int32)
    y = jnp.where(jnp.asarray(r.uniform(size=40) < 0.2), (y + 1) % 3, y)
    members = E.Members(linear)
    res = optimal_alpha(members, params, x, y, key=jax.random.key(0), eps=0.05, iterations=3, lr=2.0,
                        batch_size=16, arc_steps=3)
    a = np.asarray(res.alpha)
    assert a.shape == (3,) and np.all(a >= 0) and a.sum() == pytest.approx(1.0, abs=1e-5)
    assert float(res.robust_error) == pytest.approx(float(np.min(res.robust_errors)))
    assert float(res.robust_error) <= float(res.robust_errors[0])  # never worse than uniform
    np.testing.assert_allclose(res.robust_errors, np.sum(res.alphas * res.member_errors, axis=1), atol=1e-6)
    # the error at the returned alpha is the REC's exact robust error under ARC at that alpha
    attack = lambda xb, yb, k: arc(members, params, xb, yb, alpha=res.alpha, eps=0.05, steps=3,  # noqa: E731
                                   step_size=0.05, top_g=2)
    acc = E.rec_robust_accuracy(members, params, x, y, alpha=res.alpha, attack=attack, key=jax.random.key(0),
                                batch_size=16)
    assert float(res.robust_error) == pytest.approx(1.0 - acc, abs=1e-5)


def test_optimal_alpha_padding_does_not_change_the_result():
    apply_fn, params, x, y = _table_members([3, 5, 1], n=11)
    attack = lambda p, a, x, y, k: x  # noqa: E731
    one = optimal_alpha(apply_fn, params, x, y, key=jax.random.key(0), attack=attack, iterations=3)
    padded = optimal_alpha(apply_fn, params, x, y, key=jax.random.key(0), attack=attack, iterations=3,
                           batch_size=4)
    np.testing.assert_allclose(one.member_errors, padded.member_errors, atol=1e-6)
    np.testing.assert_allclose(one.member_errors[0], [3 / 11, 5 / 11, 1 / 11], atol=1e-6)
    np.testing.assert_allclose(one.alpha, padded.alpha, atol=1e-6)


def test_optimal_alpha_argument_errors():
    apply_fn, params, x, y = _table_members([1, 2])
    attack = lambda p, a, x, y, k: x  # noqa: E731
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="either eps"):
        optimal_alpha(apply_fn, params, x, y, key=key)
    with pytest.raises(TypeError, match="either eps"):
        optimal_alpha(apply_fn, params, x, y, key=key, eps=0.1, attack=attack)
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        optimal_alpha(apply_fn, params, x, y, key=key, attack=attack, iterations=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        optimal_alpha(apply_fn, params, x, y, key=key, attack=attack, lr=0.0)
    with pytest.raises(ValueError, match="alpha must sum to 1"):
        optimal_alpha(apply_fn, params, x, y, key=key, attack=attack, alpha=[0.5, 0.6])
    with pytest.raises(ValueError, match="alpha has 3 entries"):
        optimal_alpha(apply_fn, params, x, y, key=key, attack=attack, alpha=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="y must have shape"):
        optimal_alpha(apply_fn, params, x, y[:3], key=key, attack=attack)
    with pytest.raises(TypeError, match="typed PRNG key"):
        optimal_alpha(apply_fn, params, x, y, key=0, attack=attack)
    with pytest.raises(TypeError, match="attack must be a callable"):
        optimal_alpha(apply_fn, params, x, y, key=key, attack="arc")
