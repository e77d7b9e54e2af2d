"""Batched evaluation: accuracy and robust_accuracy (one compile for all radii)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob import attacks
from jaxrob.attacks import accuracy, fgsm, pgd, robust_accuracy

KEY = jax.random.key(0)


def _counting(apply_fn):
    """Wraps a model so that ``calls`` counts how often it is traced or run eagerly."""
    def f(params, x):
        f.calls += 1
        return apply_fn(params, x)
    f.calls = 0
    return f


def test_accuracy_matches_numpy_with_padding(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:100], m.y[:100]
    expected = np.mean(np.asarray(m.predict(m.params, x)).argmax(-1) == y)
    for bs in (32, 100, 256):  # 100 = 3*32 + 4: the last batch is padded
        assert accuracy(m.apply_fn, m.params, x, y, batch_size=bs) == pytest.approx(expected)


def test_robust_accuracy_properties(mnist_mlp, capsys):
    m = mnist_mlp
    x, y = m.x[:96], m.y[:96]
    eps = [0.0, 0.02, 0.05, 0.1, 1.0]
    res = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=eps, key=KEY, steps=5,
                          batch_size=64, progress=True)
    assert "robust accuracy" in capsys.readouterr().err  # the progress bar
    assert list(res) == eps and all(0.0 <= a <= 1.0 for a in res.values())
    assert res[0.0] == pytest.approx(accuracy(m.apply_fn, m.params, x, y))
    values = [res[e] for e in eps]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[1] < values[0] and res[1.0] <= 0.02  # an undefended model breaks
    # the same key gives the same numbers
    assert robust_accuracy(m.apply_fn, m.params, x, y, epsilons=eps, key=KEY, steps=5,
                           batch_size=64, progress=False) == res


def test_raw_pgd_accuracy_non_increasing_in_eps(mnist_mlp):
    """Without robust_accuracy's cumulative rule, PGD alone is already monotone here."""
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]
    accs = [np.mean(np.asarray(m.predict(m.params, pgd(m.apply_fn, m.params, x, y, key=KEY, eps=e,
                                                        steps=3, init_scale=0.05))).argmax(-1) == y)
            for e in (0.0, 0.02, 0.05, 0.1)]  # the config of test_pgd's shared attack
    assert all(a >= b for a, b in zip(accs, accs[1:])) and accs[-1] < accs[0]


def test_robust_accuracy_matches_manual_attack(mnist_mlp):
    """A deterministic attack (zero start) is per example, so batching must not change it."""
    m = mnist_mlp
    x, y = m.x[:40], m.y[:40]
    kw = dict(steps=3, init="zero", norm="l2")
    res = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=[0.5, 1.0], key=KEY, batch_size=16,
                          progress=False, **kw)  # 40 = 2*16 + 8: a padded batch
    clean = np.asarray(m.predict(m.params, x)).argmax(-1) == y
    robust = clean
    for e in (0.5, 1.0):
        x_adv = pgd(m.apply_fn, m.params, x, y, key=KEY, eps=e, **kw)
        robust = robust & (np.asarray(m.predict(m.params, x_adv)).argmax(-1) == y)
        assert res[e] == pytest.approx(robust.mean())


def test_pgd_not_weaker_than_fgsm(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:64], m.y[:64]
    eps = [0.02, 0.05]
    r_pgd = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=eps, key=KEY, steps=10,
                            progress=False)
    r_fgsm = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=eps, key=KEY, attack="fgsm",
                             progress=False)
    assert all(r_pgd[e] <= r_fgsm[e] for e in eps)
    assert r_pgd[0.05] < r_fgsm[0.05]


def test_compiles_once_for_all_epsilons(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:50], m.y[:50]  # 50 = 32 + 18: the padded batch must not recompile
    f = _counting(m.apply_fn)
    robust_accuracy(f, m.params, x, y, epsilons=[0.05], key=KEY, steps=2, batch_size=32,
                    progress=False)
    traces_one_eps = f.calls
    robust_accuracy(f, m.params, x, y, epsilons=[0.0, 0.01, 0.03, 0.1], key=KEY, steps=2,
                    batch_size=32, progress=False)
    assert f.calls == traces_one_eps  # cached: new radii are only new traced values
    g = _counting(m.apply_fn)
    robust_accuracy(g, m.params, x, y, epsilons=[0.0, 0.01, 0.03, 0.1], key=KEY, steps=2,
                    batch_size=32, progress=False)
    assert g.calls == traces_one_eps  # a fresh model: four radii cost what one did


def test_callable_attack_and_fgsm_agree(mnist_mlp):
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]

    def my_fgsm(apply_fn, params, x, y, *, key, eps):
        del key
        return fgsm(apply_fn, params, x, y, eps=eps)

    a = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=[0.05], key=KEY, attack=my_fgsm,
                        progress=False)
    b = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=[0.05], key=KEY, attack="fgsm",
                        progress=False)
    assert a == b


def test_random_pipeline_uses_transform_for_predictions(mnist_mlp):
    """With a transform, predictions (eps=0 included) go through it: a transform that
    destroys the input gives chance-level accuracy, and a fixed key fixes the result."""
    m = mnist_mlp
    x, y = m.x[:32], m.y[:32]

    def scramble(k, xx):  # replaces the image by noise
        return jax.random.uniform(k, (xx.size,)).reshape(xx.shape)

    kw = dict(epsilons=[0.0, 0.05], key=KEY, steps=2, transform=scramble, eot_samples=2,
              progress=False)
    res = robust_accuracy(m.apply_fn, m.params, x, y, **kw)
    assert res[0.0] <= 0.4
    assert robust_accuracy(m.apply_fn, m.params, x, y, **kw) == res
    acc = accuracy(m.apply_fn, m.params, x, y, key=KEY, transform=scramble)
    assert acc <= 0.4


@pytest.mark.slow
def test_docstring_examples_run():
    import doctest

    from jaxrob.attacks import _evaluate, _pgd

    for module in (_pgd, _evaluate):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_robust_accuracy_equals_the_definition_with_a_deterministic_attack(mnist_mlp):
    """Attacking only the still-robust examples (the compacted loop) gives exactly the
    definition: correct clean and on the attack at every radius <= eps."""
    m = mnist_mlp
    x, y = m.x[:150], m.y[:150]
    eps = [0.0, 0.02, 0.05, 0.1]
    res = robust_accuracy(m.apply_fn, m.params, x, y, epsilons=eps, key=KEY, attack="fgsm",
                          batch_size=64, progress=False)
    ok = np.asarray(m.predict(m.params, x)).argmax(-1) == np.asarray(y)
    expected = {0.0: ok.mean()}
    for e in eps[1:]:
        ok &= np.asarray(m.predict(m.params, fgsm(m.apply_fn, m.params, x, y, eps=e))).argmax(-1) == np.asarray(y)
        expected[e] = ok.mean()
    assert res == pytest.approx(expected, abs=1e-12)
    assert expected[0.1] < expected[0.0]  # the attack did break some examples


def test_robust_accuracy_on_a_device_mesh_matches_one_device():
    """Sharding the attack batches over 4 (fake CPU) devices gives the same numbers."""
    import subprocess
    import sys
    code = r"""
import jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np, jax.numpy as jnp
from jax.sharding import Mesh
from jaxrob.attacks import robust_accuracy
rng = np.random.default_rng(0)
w = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)
apply_fn = lambda p, x: jnp.tanh(x.reshape(len(x), -1) @ p) * 5
x = rng.uniform(size=(37, 4, 5)).astype(np.float32)
y = np.asarray(apply_fn(w, x)).argmax(-1).astype(np.int32)
kw = dict(epsilons=[0.0, 0.02, 0.1], key=jax.random.key(0), steps=5, batch_size=12, progress=False)
one = robust_accuracy(apply_fn, w, x, y, **kw)
four = robust_accuracy(apply_fn, w, x, y, mesh=Mesh(jax.devices(), ("data",)), **kw)
assert len(jax.devices()) == 4
assert one[0.0] == 1.0 and one[0.1] < 1.0, one
# same batches and keys; the attack is per-example, so sharding changes nothing
assert one == four, (one, four)
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("name", ["apgd", pytest.param("square", marks=pytest.mark.slow)])
def test_robust_accuracy_runs_apgd_and_square_by_name(name):
    """The named attacks are the public functions: same keys, same verdicts as calling them directly."""
    apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p  # noqa: E731
    r = np.random.default_rng(0)
    w = jnp.asarray(r.normal(size=(16, 3)), jnp.float32)
    x = jnp.asarray(r.uniform(size=(12, 4, 4, 1)), jnp.float32)
    y = jnp.argmax(apply_fn(w, x), -1)
    kwargs = {"steps": 10} if name == "apgd" else {"queries": 50}
    key = jax.random.key(1)
    got = robust_accuracy(apply_fn, w, x, y, epsilons=[0.1], key=key, attack=name, progress=False, **kwargs)
    fn = {"apgd": attacks.apgd, "square": attacks.square}[name]
    k_attack, _ = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1), 0))
    x_adv = fn(apply_fn, w, x, y, key=k_attack, eps=0.1, **kwargs)
    assert got[0.1] == pytest.approx(float(jnp.mean(jnp.argmax(apply_fn(w, x_adv), -1) == y)))
    assert got[0.1] < 1.0
