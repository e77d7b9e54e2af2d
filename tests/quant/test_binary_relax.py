"""BinaryRelax: projections (brute force), relaxation value and gradient, eta schedule, fit integration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.models import Model
from jaxrob.quant._binary_relax import (STEP_KEY, binary_relax, binary_relax_finalize, binary_relax_model,
                                        binary_relax_params, eta_schedule, project_binary, project_ternary,
                                        schedule_step)


def _brute_projection(w, patterns):
    """argmin over patterns b and free scale a >= 0 of ||w - a b||^2 (a = <w, b> / ||b||^2)."""
    best, err = None, np.inf
    for b in patterns:
        b = np.asarray(b, float)
        nb = b @ b
        a = max(w @ b / nb, 0.0) if nb else 0.0
        e = np.sum((w - a * b) ** 2)
        if e < err - 1e-12:
            best, err = a * b, e
    return best, err


@pytest.mark.parametrize("seed", range(2))
def test_projections_are_exact_minimisers(seed):
    w = np.asarray(jax.random.normal(jax.random.key(seed), (6,)))
    q, err = _brute_projection(w, itertools.product([-1, 1], repeat=6))
    assert np.allclose(project_binary(w), q, atol=1e-6)
    q, err = _brute_projection(w, itertools.product([-1, 0, 1], repeat=6))
    assert np.sum((np.asarray(project_ternary(w)) - w) ** 2) == pytest.approx(err, rel=1e-5, abs=1e-7)
    # TWN is an approximation: never better than the exact projection
    assert np.sum((np.asarray(project_ternary(w, exact=False)) - w) ** 2) >= err - 1e-6


def test_projections_idempotent_and_levels():
    w = jax.random.normal(jax.random.key(9), (50, 4))
    for proj in (project_binary, project_ternary, lambda w: project_ternary(w, exact=False)):
        q = proj(w)
        assert np.allclose(proj(q), q, atol=1e-6)
    assert len(np.unique(np.asarray(project_binary(w)))) == 2
    assert len(np.unique(np.asarray(project_ternary(w)))) <= 3


def test_relaxed_value_gradient_and_limits():
    w = jnp.array([0.3, -1.2, 0.9, -0.1])
    q = project_binary(w)
    for eta in (0.0, 0.5, 4.0):
        assert np.allclose(binary_relax(w, eta=eta), (eta * q + w) / (1 + eta), atol=1e-6)
    assert np.array_equal(np.asarray(binary_relax(w, eta=jnp.inf)), np.asarray(q))
    # gradient at the relaxed point is passed to w unchanged (no Jacobian of the relaxation)
    g = jax.grad(lambda w: jnp.sum(binary_relax(w, eta=2.0) ** 2))(w)
    assert np.allclose(g, 2 * binary_relax(w, eta=2.0), atol=1e-6)
    assert np.allclose(jax.jit(lambda w, e: binary_relax(w, eta=e))(w, 2.0), binary_relax(w, eta=2.0))
    ws = jnp.stack([w, -w, 2 * w])
    assert np.allclose(jax.vmap(lambda w: binary_relax(w, eta=3.0))(ws),
                       jnp.stack([binary_relax(v, eta=3.0) for v in ws]), atol=1e-6)


def test_any_quantizer_and_params_selection():
    params = {"dense": {"kernel": jnp.array([[0.3, -1.2], [0.9, -0.1]]), "bias": jnp.array([0.5, 0.7])}}
    out = binary_relax_params(params, eta=jnp.inf, quantizer=project_ternary)
    assert np.allclose(out["dense"]["kernel"], project_ternary(params["dense"]["kernel"]))
    assert np.array_equal(np.asarray(out["dense"]["bias"]), np.asarray(params["dense"]["bias"]))


def test_eta_schedule_follows_the_authors_script():
    # eta multiplied by rate at the start of every epoch, phase II (exact) after relax_epochs
    etas = [float(eta_schedule(s, steps_per_epoch=3, relax_epochs=3)) for s in range(12)]
    assert etas[:3] == pytest.approx([1.05] * 3) and etas[3:6] == pytest.approx([1.05 ** 2] * 3)
    assert etas[6:9] == pytest.approx([1.05 ** 3] * 3) and all(np.isinf(etas[9:]))


def test_errors():
    w = jnp.ones(3)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        binary_relax(w, eta=-1.0)
    with pytest.raises(TypeError, match="quantizer must be a callable"):
        binary_relax(w, eta=1.0, quantizer="binary")
    with pytest.raises(ValueError, match="rate must be >= 1"):
        eta_schedule(0, steps_per_epoch=1, relax_epochs=1, rate=0.5)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        eta_schedule(0, steps_per_epoch=0, relax_epochs=1)


def _toy_model():
    def apply_fn(v, x):
        return x.reshape(len(x), -1) @ v["params"]["dense"]["kernel"]

    def train_apply(v, x, *, key=None):
        return apply_fn(v, x), v["batch_stats"]

    w = jax.random.normal(jax.random.key(4), (8, 3))
    return Model(apply_fn, train_apply, {"params": {"dense": {"kernel": w}}, "batch_stats": {}}, "toy", (8,), 3)


def test_fit_runs_the_schedule_in_one_compile_and_ends_binary():
    from jaxrob import data, train
    base = _toy_model()
    images = np.asarray(jax.random.randint(jax.random.key(1), (64, 2, 4, 1), 0, 256), np.uint8)
    y = np.asarray(images.reshape(64, 8).argmax(1) % 3, np.int32)
    ds = data.from_arrays(images, y, num_classes=3)
    x = images.astype(np.float32) / 255
    wrapped = binary_relax_model(base, steps_per_epoch=4, relax_epochs=2)
    seen = []
    state, hist = train.fit(wrapped, ds, optimizer={"name": "sgd", "learning_rate": 0.1}, epochs=3, batch_size=16,
                            key=jax.random.key(0), progress=False,
                            callback=lambda s, m: seen.append(float(s.batch_stats[STEP_KEY])))
    assert seen == list(range(1, 13)) and schedule_step(state.variables()) == 12
    # eval mode at the end of phase II is exactly the binary projection
    v = state.variables()
    assert np.allclose(wrapped.apply_fn(v, x), x.reshape(64, 8) @ project_binary(v["params"]["dense"]["kernel"]), atol=1e-5)
    final = binary_relax_finalize(base, v)
    assert len(np.unique(np.abs(np.asarray(final.params["dense"]["kernel"])))) == 1
    assert final.variables["batch_stats"] == {}
