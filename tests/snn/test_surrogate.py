"""Spike functions: exact Heaviside forward, analytic surrogate derivatives backward.

Every reference derivative below is written out independently of
``jaxrob.snn._surrogate`` (in float64 numpy) from the formulas of the papers:

* piecewise linear (Bellec et al. 2018):  ``gamma * max(0, 1 - |x|)``
* fast sigmoid (SuperSpike, Zenke & Ganguli 2018):  ``1 / (1 + k|x|)^2``
* arctan (Fang et al. 2021):  ``(alpha/2) / (1 + (pi/2 * alpha * x)^2)``
* sigmoid (Zenke & Vogels 2021):  ``k s (1 - s)``, ``s = 1 / (1 + exp(-k x))``
* triangle (Esser et al. 2016):  ``max(0, w - |x|) / w^2``
* boxcar (Wu et al. 2018):  ``1[|x| < w/2] / w``

Hyperparameters are chosen so that every kink is exactly representable in
float32 (the reference and the library then agree on which side of a kink a
grid point lies).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.snn import (Arctan, Boxcar, Custom, FastSigmoid, PiecewiseLinear, Sigmoid, Surrogate, Triangle,
                        heaviside, surrogate)


def _pl(x, gamma):
    return gamma * np.maximum(0.0, 1.0 - np.abs(x))


def _fast_sigmoid(x, slope):
    return 1.0 / (1.0 + slope * np.abs(x)) ** 2


def _arctan(x, alpha):
    return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * x) ** 2)


def _sigmoid(x, slope):
    s = 1.0 / (1.0 + np.exp(-slope * x))
    return slope * s * (1.0 - s)


def _triangle(x, width):
    return np.maximum(0.0, width - np.abs(x)) / width ** 2


def _boxcar(x, width):
    return np.where(np.abs(x) < width / 2.0, 1.0 / width, 0.0)


# (surrogate, reference derivative, kinks, area over the real line)
CASES = [
    (PiecewiseLinear(0.3), lambda x: _pl(x, 0.3), (-1.0, 0.0, 1.0), 0.3),
    (PiecewiseLinear(1.0), lambda x: _pl(x, 1.0), (-1.0, 0.0, 1.0), 1.0),
    (FastSigmoid(25.0), lambda x: _fast_sigmoid(x, 25.0), (0.0,), 2.0 / 25.0),
    (FastSigmoid(2.0), lambda x: _fast_sigmoid(x, 2.0), (0.0,), 1.0),
    (Arctan(2.0), lambda x: _arctan(x, 2.0), (), 1.0),
    (Arctan(0.5), lambda x: _arctan(x, 0.5), (), 1.0),
    (Sigmoid(5.0), lambda x: _sigmoid(x, 5.0), (), 1.0),
    (Sigmoid(0.75), lambda x: _sigmoid(x, 0.75), (), 1.0),
    (Triangle(1.0), lambda x: _triangle(x, 1.0), (-1.0, 0.0, 1.0), 1.0),
    (Triangle(0.5), lambda x: _triangle(x, 0.5), (-0.5, 0.0, 0.5), 1.0),
    (Boxcar(1.0), lambda x: _boxcar(x, 1.0), (-0.5, 0.5), 1.0),
    (Boxcar(0.25), lambda x: _boxcar(x, 0.25), (-0.125, 0.125), 1.0),
]
IDS = [f"{type(c[0]).__name__}-{list(vars(c[0]).values())[0]}" for c in CASES]
ALL_CLASSES = [PiecewiseLinear, FastSigmoid, Arctan, Sigmoid, Triangle, Boxcar]
# The ones documented as having unit area (derivatives of a CDF, or normalised by construction).
UNIT_AREA = [Arctan(2.0), Arctan(0.5), Sigmoid(5.0), Sigmoid(0.75), Triangle(1.0), Triangle(0.5),
             Boxcar(1.0), Boxcar(0.25)]


def _grid(kinks) -> np.ndarray:
    """A float32 grid on [-3, 3] plus every kink and its float32 neighbours.

    (At 0 the neighbours are +-the smallest *normal* float32: XLA flushes subnormals to zero,
    so a subnormal potential compares equal to 0.)
    """
    base = np.linspace(-3.0, 3.0, 241).astype(np.float32)
    extra = []
    for k in kinks:
        k = np.float32(k)
        if k == 0:
            tiny = np.finfo(np.float32).tiny
            extra += [k, -tiny, tiny]
            continue
        extra += [k, np.nextafter(k, np.float32(-np.inf)), np.nextafter(k, np.float32(np.inf))]
    extra += [np.float32(0.0), np.float32(-0.0), np.float32(1e-30), np.float32(-1e-30), np.float32(40.0),
              np.float32(-40.0)]
    return np.concatenate([base, np.asarray(extra, np.float32)])


def _sum_grad(spike):
    return jax.grad(lambda x: spike(x).sum())


# ----------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("spike", [c[0] for c in CASES] + [Custom(lambda x: jnp.ones_like(x))], ids=IDS + ["custom"])
def test_forward_is_exact_heaviside(spike):
    x = _grid((-1.0, -0.5, 0.0, 0.5, 1.0))
    out = np.asarray(jax.jit(spike)(jnp.asarray(x)))
    np.testing.assert_array_equal(out, (x > 0).astype(np.float32))
    assert out.dtype == np.float32
    # x = 0 (and -0) does not fire: the neuron must *exceed* its threshold
    special = np.asarray([0.0, -0.0, np.finfo(np.float32).tiny, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(np.asarray(spike(jnp.asarray(special))), [0.0, 0.0, 1.0, 1.0, 0.0])


def test_heaviside_keeps_dtype_and_has_no_gradient():
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        x = jnp.asarray([-1.0, 0.0, 2.0], dtype)
        h = heaviside(x)
        assert h.dtype == dtype
        np.testing.assert_array_equal(np.asarray(h, np.float32), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda x: heaviside(x).sum())(jnp.asarray([-1.0, 0.0, 0.3])), 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_keeps_dtype(dtype):
    x = jnp.asarray([-0.5, 0.0, 0.25, 2.0], dtype)
    spike = PiecewiseLinear(1.0)
    out, g = jax.jit(lambda x: (spike(x), _sum_grad(spike)(x)))(x)
    assert out.dtype == dtype and g.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(g, np.float32), [0.5, 1.0, 0.75, 0.0], rtol=1e-2)


# ----------------------------------------------------------------------------------------- derivatives


@functools.partial(jax.jit, static_argnums=0)
def _derivatives(spike, x, t):
    """Everything at once (one compile per surrogate): forward, grad, jvp, vjp and ``.derivative``."""
    grad = jax.grad(lambda z: spike(z).sum())(x)
    out, tan = jax.jvp(spike, (x,), (t,))
    _, vjp = jax.vjp(spike, x)
    (ct,) = vjp(t)
    kink_grads = jax.vmap(jax.grad(spike))(x)          # scalar jax.grad at every grid point
    return out, grad, tan, ct, kink_grads, spike.derivative(x)


@pytest.mark.parametrize("spike, ref, kinks, area", CASES, ids=IDS)
def test_grad_jvp_vjp_equal_analytic_derivative(spike, ref, kinks, area):
    x = _grid(kinks)
    want = ref(x.astype(np.float64))
    t = np.linspace(-2.0, 2.0, x.size).astype(np.float32)    # a non-trivial tangent / cotangent
    out, grad, tan, ct, scalar_grads, deriv = map(np.asarray, _derivatives(spike, jnp.asarray(x), jnp.asarray(t)))
    # float32 evaluation of the formula: relative 1e-6, absolute 1e-6 of the peak value
    tol = dict(rtol=2e-6, atol=1e-6 * float(np.max(want)))
    np.testing.assert_array_equal(out, (x > 0).astype(np.float32))
    np.testing.assert_allclose(grad, want, **tol)
    np.testing.assert_allclose(tan, t * want, **tol)
    np.testing.assert_allclose(ct, t * want, **tol)
    np.testing.assert_allclose(scalar_grads, want, **tol)
    np.testing.assert_allclose(deriv, want, **tol)
    # at the kinks exactly the reference value (kinks are exactly representable)
    for k in kinks:
        i = int(np.flatnonzero(x == np.float32(k))[0])
        assert grad[i] == pytest.approx(ref(np.float64(k)), rel=2e-6, abs=1e-7)


def test_sigmoid_derivative_is_accurate_in_both_tails():
    """g is even, so g(x) and g(-x) must agree to float32 precision (1-s loses all digits for s ~ 1)."""
    spike = Sigmoid(5.0)
    x = np.linspace(0.5, 3.0, 26).astype(np.float32)
    pos = np.asarray(spike.derivative(jnp.asarray(x)))
    neg = np.asarray(spike.derivative(jnp.asarray(-x)))
    np.testing.assert_allclose(neg, _sigmoid(-x.astype(np.float64), 5.0), rtol=1e-5)
    np.testing.assert_allclose(pos, _sigmoid(x.astype(np.float64), 5.0), rtol=1e-5)


@pytest.mark.parametrize("spike, ref, kinks, area", CASES, ids=IDS)
def test_surrogate_area(spike, ref, kinks, area):
    """Trapezoid rule on a fine grid (the kinks included) of the library's derivative."""
    half = 2000.0 if isinstance(spike, (FastSigmoid, Arctan)) else 60.0   # heavy tails need a wide window
    x = np.unique(np.concatenate([np.linspace(-half, half, 400_001), np.asarray(kinks),
                                  np.linspace(-4.0, 4.0, 400_001)]))
    g = np.asarray(jax.jit(spike.derivative)(jnp.asarray(x, jnp.float32)), np.float64)
    integral = np.trapezoid(g, x)
    # the tails beyond the window, in closed form: fast sigmoid 2/(k(1 + k h)), arctan 1 - (2/pi) atan(pi/2 a h)
    if isinstance(spike, FastSigmoid):
        integral += 2.0 / (spike.slope * (1.0 + spike.slope * half))
    elif isinstance(spike, Arctan):
        integral += 1.0 - 2.0 / math.pi * math.atan(math.pi / 2.0 * spike.alpha * half)
    assert integral == pytest.approx(area, rel=2e-3), (spike, integral)


@pytest.mark.parametrize("spike", UNIT_AREA, ids=lambda s: repr(s))
def test_documented_unit_area(spike):
    x = np.linspace(-60.0, 60.0, 600_001)
    g = np.asarray(jax.jit(spike.derivative)(jnp.asarray(x, jnp.float32)), np.float64)
    integral = np.trapezoid(g, x)
    tol = 0.02 if isinstance(spike, Arctan) else 2e-3    # arctan's 1/x^2 tail beyond +-60
    assert abs(integral - 1.0) < tol, integral


@pytest.mark.parametrize("spike, primitive", [
    (Arctan(2.0), lambda x: np.arctan(math.pi / 2.0 * 2.0 * x) / math.pi + 0.5),
    (Arctan(0.7), lambda x: np.arctan(math.pi / 2.0 * 0.7 * x) / math.pi + 0.5),
    (Sigmoid(5.0), lambda x: 1.0 / (1.0 + np.exp(-5.0 * x))),
    (Sigmoid(1.5), lambda x: 1.0 / (1.0 + np.exp(-1.5 * x))),
], ids=["arctan2", "arctan0.7", "sigmoid5", "sigmoid1.5"])
def test_smooth_surrogates_are_derivatives_of_their_primitives(spike, primitive):
    """The gradient equals the central finite difference (float64) of the smooth step it replaces."""
    x = np.linspace(-2.5, 2.5, 101)
    h = 1e-5
    fd = (primitive(x + h) - primitive(x - h)) / (2 * h)
    g = np.asarray(jax.jit(_sum_grad(spike))(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)
    # and the primitive is a smoothed step: it tends to H(x) away from 0
    assert primitive(-50.0) < 0.02 and primitive(50.0) > 0.98 and primitive(0.0) == pytest.approx(0.5)


def test_second_derivative_is_derivative_of_surrogate():
    """Differentiating twice differentiates g: for the sigmoid, g' = k^2 s (1 - s)(1 - 2 s)."""
    k = 3.0
    x = jnp.linspace(-2.0, 2.0, 41)
    g2 = jax.jit(jax.vmap(jax.grad(jax.grad(Sigmoid(k)))))(x)
    s = 1.0 / (1.0 + np.exp(-k * np.asarray(x, np.float64)))
    np.testing.assert_allclose(np.asarray(g2), k * k * s * (1 - s) * (1 - 2 * s), rtol=1e-4, atol=1e-5)


def test_gradient_flows_through_the_argument_chain():
    """spike(u / vth - 1): d/du = g(u / vth - 1) / vth, d/dvth = -g(.) u / vth^2 (chain rule untouched)."""
    spike = PiecewiseLinear(0.3)
    u, vth = 0.8, 0.5
    x = u / vth - 1.0
    du, dv = jax.jit(jax.grad(lambda u, v: spike(u / v - 1.0), argnums=(0, 1)))(jnp.float32(u), jnp.float32(vth))
    np.testing.assert_allclose(float(du), _pl(x, 0.3) / vth, rtol=1e-6)
    np.testing.assert_allclose(float(dv), -_pl(x, 0.3) * u / vth ** 2, rtol=1e-6)


# ----------------------------------------------------------------------------------------- Custom


def test_custom_surrogate():
    spike = Custom(lambda x: jnp.exp(-x ** 2))
    ste = Custom(lambda x: 1.0)          # a constant g (the straight-through estimator)
    same = Custom(lambda x: 0.3 * jnp.maximum(0.0, 1.0 - jnp.abs(x)))
    x = _grid((0.0,))

    @jax.jit
    def run(x):
        return (spike(x), _sum_grad(spike)(x), _sum_grad(ste)(jnp.zeros((3, 2))), _sum_grad(same)(x),
                _sum_grad(PiecewiseLinear(0.3))(x))

    out, g, g_ste, g_same, g_pl = map(np.asarray, run(jnp.asarray(x)))
    np.testing.assert_array_equal(out, (x > 0).astype(np.float32))
    np.testing.assert_allclose(g, np.exp(-x.astype(np.float64) ** 2), rtol=2e-6, atol=1e-7)
    # the constant broadcasts to the input's shape
    assert g_ste.shape == (3, 2)
    np.testing.assert_array_equal(g_ste, 1.0)
    # a Custom surrogate reproduces a built-in one exactly
    np.testing.assert_array_equal(g_same, g_pl)
    with pytest.raises(TypeError, match="callable"):
        Custom(0.3)


# ----------------------------------------------------------------------------------------- hashing, jit, vmap


def test_surrogates_are_hashable_values():
    for cls in ALL_CLASSES:
        a, b = cls(0.5), cls(0.5)
        assert a == b and hash(a) == hash(b) and a is not b
        assert cls(0.5) != cls(0.25)
        assert isinstance(a, Surrogate)
    assert PiecewiseLinear(1.0) != Triangle(1.0)   # same field value, different function
    assert PiecewiseLinear(1) == PiecewiseLinear(1.0)
    fn = lambda x: x  # noqa: E731
    assert Custom(fn) == Custom(fn) and hash(Custom(fn)) == hash(Custom(fn))
    assert {Arctan(2.0): 1}[Arctan(2.0)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        Arctan(2.0).alpha = 3.0


def test_static_argument_compiles_once_per_hyperparameters():
    traces = []

    def f(x, spike):
        traces.append(spike)
        return jax.grad(lambda z: spike(z).sum())(x)

    jf = jax.jit(f, static_argnums=1)
    x = jnp.linspace(-1.0, 1.0, 8)
    g1 = jf(x, PiecewiseLinear(0.3))
    g2 = jf(x * 0.5, PiecewiseLinear(0.3))   # equal hyperparameters, new instance, new values: no retrace
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(g2), _pl(np.asarray(x * 0.5, np.float64), 0.3), rtol=1e-6)
    jf(x, PiecewiseLinear(0.5))               # new hyperparameter: one more trace
    jf(x, Triangle(0.3))
    assert len(traces) == 3
    np.testing.assert_allclose(np.asarray(g1), _pl(np.asarray(x, np.float64), 0.3), rtol=1e-6)


@pytest.mark.parametrize("spike", [PiecewiseLinear(0.3), Sigmoid(5.0), Boxcar(1.0), Custom(lambda x: jnp.exp(-x ** 2))],
                         ids=["piecewise_linear", "sigmoid", "boxcar", "custom"])
def test_jit_and_vmap_agree(spike):
    x = jnp.asarray(_grid((-1.0, 0.0, 1.0)).reshape(-1, 2))   # (M, 2)
    eager_out, eager_grad = spike(x), _sum_grad(spike)(x)

    @jax.jit
    def batched(x):
        per = jax.grad(lambda r: spike(r).sum())            # the per-example function, batched with vmap
        _, tan = jax.vmap(lambda r: jax.jvp(spike, (r,), (jnp.ones_like(r),)))(x)
        return spike(x), _sum_grad(spike)(x), jax.vmap(spike)(x), jax.vmap(per)(x), tan

    jit_out, jit_grad, v_out, v_grad, v_tan = batched(x)
    per_row = jax.jit(jax.grad(lambda r: spike(r).sum()))
    loop = np.stack([np.asarray(per_row(x[i])) for i in range(x.shape[0])])
    for out in (jit_out, v_out):
        np.testing.assert_array_equal(np.asarray(out), np.asarray(eager_out))
    for g in (jit_grad, v_grad, v_tan):
        np.testing.assert_allclose(np.asarray(g), np.asarray(eager_grad), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(v_grad), loop, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------- registry


def test_surrogate_by_name():
    assert surrogate("piecewise_linear") == PiecewiseLinear(0.3)
    assert surrogate("fast_sigmoid", slope=10.0) == FastSigmoid(10.0)
    assert surrogate("arctan", alpha=3.0) == Arctan(3.0)
    assert surrogate("sigmoid") == Sigmoid()
    assert surrogate("triangle", width=0.5) == Triangle(0.5)
    assert surrogate("boxcar", width=2.0) == Boxcar(2.0)
    inst = Arctan(1.0)
    assert surrogate(inst) is inst
    with pytest.raises(ValueError, match="hyperparameters"):
        surrogate(inst, alpha=2.0)
    with pytest.raises(ValueError, match="piecewise_linear"):
        surrogate("relu")
    with pytest.raises(TypeError):
        surrogate("arctan", beta=1.0)       # not a hyperparameter of Arctan


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [0.0, -1.0, -1e-9, float("nan"), float("inf")])
def test_bad_hyperparameter_values(cls, bad):
    with pytest.raises(ValueError, match=cls.__name__):
        cls(bad)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", ["0.3", None, True, [0.3], 1 + 2j])
def test_bad_hyperparameter_types(cls, bad):
    with pytest.raises(TypeError, match=cls.__name__):
        cls(bad)


@pytest.mark.parametrize("x", [jnp.array([1, 0, -1]), jnp.array([True, False]), 1, np.arange(3)],
                         ids=["int32", "bool", "python-int", "numpy-int"])
def test_integer_input_raises(x):
    with pytest.raises(TypeError, match="floating"):
        PiecewiseLinear()(x)
