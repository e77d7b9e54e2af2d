"""LIF / IF / ALIF neurons and ``simulate``: hand-computed traces, gradients, compilation.

Every trace below was computed by hand from the update equations in the docstring
of :mod:`jaxrob.snn._neurons` (soft reset ``U_t = lam U_{t-1} + I_t - V_th o_{t-1}``,
hard reset ``U_t = lam (1 - o_{t-1}) U_{t-1} + I_t``, no reset ``U_t = lam U_{t-1} + I_t``,
``o_t = 1[U_t > V_th]``); the arithmetic is written out next to each number.
"""

from __future__ import annotations

import chex
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.snn import ALIF, IF, LIF, ALIFState, Arctan, LIFState, PiecewiseLinear, create, simulate

CURRENTS = [0.3, 0.3, 0.0, 1.2, 0.0, 0.0]

# LIF(leak=0.9, threshold=0.5), soft reset
SOFT_V = [0.3,                       # 0 + 0.3                        -> 0.3 < 0.5, no spike
          0.57,                      # 0.9*0.3 + 0.3                  -> spike
          0.013,                     # 0.9*0.57 + 0 - 0.5             -> no spike
          1.2117,                    # 0.9*0.013 + 1.2                -> spike
          0.59053,                   # 0.9*1.2117 + 0 - 0.5           -> spike (soft reset keeps the surplus)
          0.031477]                  # 0.9*0.59053 - 0.5              -> no spike
SOFT_S = [0, 1, 0, 1, 1, 0]
# hard reset: the potential after a spike restarts from 0
HARD_V = [0.3,                       # 0.3
          0.57,                      # 0.9*0.3 + 0.3                  -> spike
          0.0,                       # 0.9*(1-1)*0.57 + 0
          1.2,                       # 0.9*(1-0)*0 + 1.2              -> spike
          0.0,                       # 0.9*(1-1)*1.2 + 0
          0.0]
HARD_S = [0, 1, 0, 1, 0, 0]
# no reset: pure leaky integration
NONE_V = [0.3,                       # 0.3
          0.57,                      # 0.27 + 0.3                     -> spike
          0.513,                     # 0.9*0.57                       -> spike (0.513 > 0.5)
          1.6617,                    # 0.9*0.513 + 1.2                -> spike
          1.49553,                   # 0.9*1.6617                     -> spike
          1.345977]                  # 0.9*1.49553                    -> spike
NONE_S = [0, 1, 1, 1, 1, 1]

# IF(threshold=0.5) (leak 1), soft reset; all values exact in float32
IF_CURRENTS = [0.25, 0.25, 0.25, 0.5, 0.0, -0.25]
IF_V = [0.25,                        # 0.25
        0.5,                         # 0.25 + 0.25 = V_th exactly     -> no spike (must exceed)
        0.75,                        # 0.5 + 0.25                     -> spike
        0.75,                        # 0.75 + 0.5 - 0.5               -> spike
        0.25,                        # 0.75 + 0 - 0.5                 -> no spike
        0.0]                         # 0.25 - 0.25                    -> no spike
IF_S = [0, 0, 1, 1, 0, 0]

# ALIF(leak=0.9, threshold=0.5, adapt=beta=0.5, adapt_decay=rho=0.8), soft reset by the crossed threshold:
#   b_t = rho b_{t-1} + (1 - rho) o_{t-1};  A_t = 0.5 + 0.5 b_t
#   U_t = 0.9 U_{t-1} + I_t - A_{t-1} o_{t-1};  o_t = 1[U_t > A_t]
ALIF_CURRENTS = [0.6, 0.0, 0.6, 0.6, 0.0]
ALIF_B = [0.0,                       # 0.8*0 + 0.2*0
          0.2,                       # 0.8*0 + 0.2*1
          0.16,                      # 0.8*0.2 + 0.2*0
          0.328,                     # 0.8*0.16 + 0.2*1
          0.2624]                    # 0.8*0.328 + 0.2*0
ALIF_A = [0.5, 0.6, 0.58, 0.664, 0.6312]   # 0.5 + 0.5*b_t
ALIF_V = [0.6,                       # 0.6                            -> 0.6 > A=0.5, spike
          0.04,                      # 0.9*0.6 + 0 - A_0*1 = 0.54 - 0.5
          0.636,                     # 0.9*0.04 + 0.6                 -> 0.636 > A=0.58, spike
          0.5924,                    # 0.9*0.636 + 0.6 - A_2*1 = 0.5724 + 0.6 - 0.58
                                     #   -> 0.5924 < A=0.664: adaptation suppresses the spike
                                     #      (a plain LIF with V_th = 0.5 would fire here)
          0.53316]                   # 0.9*0.5924                     -> 0.53316 < A=0.6312
ALIF_S = [1, 0, 1, 0, 0]


def _run(neuron, currents, **kw):
    c = jnp.asarray(currents, jnp.float32)[:, None]                 # (T, 1)
    final, spikes, potentials = jax.jit(lambda c: simulate(neuron, c, **kw))(c)
    return final, np.asarray(spikes)[:, 0], np.asarray(potentials)[:, 0]


# ----------------------------------------------------------------------------------------- traces


@pytest.mark.parametrize("reset, want_v, want_s", [("soft", SOFT_V, SOFT_S), ("hard", HARD_V, HARD_S),
                                                   ("none", NONE_V, NONE_S)])
def test_lif_hand_trace(reset, want_v, want_s):
    final, s, v = _run(LIF(leak=0.9, threshold=0.5, reset=reset), CURRENTS)
    np.testing.assert_allclose(v, want_v, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s, want_s)
    assert isinstance(final, LIFState)
    assert float(final.v[0]) == pytest.approx(want_v[-1], abs=1e-6) and float(final.s[0]) == want_s[-1]


def test_if_hand_trace():
    neuron = IF(threshold=0.5)
    assert neuron == LIF(leak=1.0, threshold=0.5)
    _, s, v = _run(neuron, IF_CURRENTS)
    np.testing.assert_array_equal(v, IF_V)                 # exact: every value is a dyadic rational
    np.testing.assert_array_equal(s, IF_S)


def test_alif_hand_trace():
    neuron = ALIF(leak=0.9, threshold=0.5, adapt=0.5, adapt_decay=0.8)
    final, s, v = _run(neuron, ALIF_CURRENTS)
    np.testing.assert_allclose(v, ALIF_V, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s, ALIF_S)
    assert isinstance(final, ALIFState)
    assert float(final.b[0]) == pytest.approx(ALIF_B[-1], abs=1e-6)
    # the adaptation variable step by step (python loop of .step)
    state, step = neuron.init((1,)), jax.jit(neuron.step)
    for t, i in enumerate(ALIF_CURRENTS):
        state, o = step(state, jnp.asarray([i], jnp.float32))
        assert float(state.b[0]) == pytest.approx(ALIF_B[t], abs=1e-6)
        assert 0.5 + 0.5 * float(state.b[0]) == pytest.approx(ALIF_A[t], abs=1e-6)
        assert float(o[0]) == ALIF_S[t]
    # without adaptation, ALIF is LIF: the fourth step then fires
    _, s_lif, v_lif = _run(LIF(leak=0.9, threshold=0.5), ALIF_CURRENTS)
    _, s0, v0 = _run(ALIF(leak=0.9, threshold=0.5, adapt=0.0, adapt_decay=0.8), ALIF_CURRENTS)
    np.testing.assert_array_equal(s0, s_lif)
    np.testing.assert_allclose(v0, v_lif, rtol=1e-6)
    assert s_lif[3] == 1 and s[3] == 0


def test_docstring_example_of_lif():
    lif = LIF(leak=0.5, threshold=1.0)
    state = lif.init((1,))
    got = []
    for i in [0.6, 0.6, 0.6, 0.0]:
        state, o = lif.step(state, jnp.array([i]))
        got.append((round(float(state.v[0]), 3), int(o[0])))
    assert got == [(0.6, 0), (0.9, 0), (1.05, 1), (-0.475, 0)]   # 0.5*1.05 + 0 - 1 = -0.475


# ----------------------------------------------------------------------------------------- overrides


def test_leak_and_threshold_arguments_override_fields():
    """A learned/converted leak and threshold passed to step/simulate replace the dataclass values."""
    wrong = LIF(leak=0.3, threshold=2.0)
    _, s, v = _run(wrong, CURRENTS, leak=0.9, threshold=0.5)
    np.testing.assert_allclose(v, SOFT_V, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s, SOFT_S)
    _, s, v = _run(ALIF(leak=0.1, threshold=3.0, adapt=0.5, adapt_decay=0.8), ALIF_CURRENTS, leak=0.9, threshold=0.5)
    np.testing.assert_allclose(v, ALIF_V, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s, ALIF_S)
    # per-neuron arrays broadcast: three neurons with their own leak and threshold
    c = jnp.tile(jnp.asarray(CURRENTS, jnp.float32)[:, None], (1, 3))
    leak = jnp.asarray([0.9, 1.0, 0.9])
    thr = jnp.asarray([0.5, 0.5, 2.0])
    _, spikes, pots = simulate(wrong, c, leak=leak, threshold=thr)
    np.testing.assert_allclose(np.asarray(pots[:, 0]), SOFT_V, rtol=1e-6, atol=1e-6)
    _, s_if, v_if = _run(LIF(leak=1.0, threshold=0.5), CURRENTS)
    np.testing.assert_allclose(np.asarray(pots[:, 1]), v_if, rtol=1e-6)
    _, s_hi, v_hi = _run(LIF(leak=0.9, threshold=2.0), CURRENTS)
    np.testing.assert_array_equal(np.asarray(spikes[:, 2]), s_hi)
    np.testing.assert_allclose(np.asarray(pots[:, 2]), v_hi, rtol=1e-6)


def test_threshold_and_leak_are_differentiable_arguments():
    """d(sum of potentials)/d(leak) and d(spikes)/d(threshold) are non-zero (DIET-SNN-style learning)."""
    c = jnp.asarray(CURRENTS, jnp.float32)[:, None]

    def loss(leak, thr):
        _, s, v = simulate(LIF(), c, leak=leak, threshold=thr)
        return s.sum() + v.sum()

    g_leak, g_thr = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.float32(0.9), jnp.float32(0.5))
    assert np.isfinite(float(g_leak)) and float(g_leak) > 0      # more leak-free memory, higher potentials
    assert np.isfinite(float(g_thr)) and float(g_thr) != 0.0
    # the leak gradient of the no-reset potentials has the closed form sum_t sum_{k<t} (t-k) lam^(t-k-1) I_k
    lam, cur = 0.9, np.asarray(CURRENTS)
    want = sum((t - k) * lam ** (t - k - 1) * cur[k] for t in range(len(cur)) for k in range(t))
    g = jax.grad(lambda l: simulate(LIF(reset="none"), c, leak=l)[2].sum())(jnp.float32(lam))
    assert float(g) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------- detach_reset


def _grad_v3_wrt_i1(neuron):
    """d U_3 / d I_1 for currents (0.6, 0, 0) with leak 0.9, threshold 0.5 (U_1 = 0.6 fires)."""
    def v3(i1):
        c = jnp.stack([i1, 0.0, 0.0])[:, None]
        return simulate(neuron, c)[2][2, 0]
    return float(jax.jit(jax.grad(v3))(jnp.float32(0.6)))


def test_detach_reset_cuts_the_gradient_through_the_reset():
    """Hand-computed with the piecewise-linear surrogate (gamma 0.3) at x = U/V_th - 1.

    U_1 = 0.6 (x = 0.2, g = 0.3*0.8 = 0.24, dO_1/dI_1 = g / V_th = 0.48); U_2 = 0.9*0.6 - 0.5 = 0.04
    (x = -0.92, g = 0.3*0.08 = 0.024).  Soft reset:
      detached:  dU_3/dI_1 = 0.9 * 0.9 = 0.81 (the leak path only: the reset carries no gradient)
      attached:  dU_2/dI_1 = 0.9 - 0.5*0.48 = 0.66; dO_2/dI_1 = 0.024/0.5*0.66 = 0.03168;
                 dU_3/dI_1 = 0.9*0.66 - 0.5*0.03168 = 0.57816
    Hard reset (U_2 = 0.9 (1 - O_1) U_1):
      detached:  dU_2/dI_1 = 0.9 (1 - 1) = 0 -> dU_3/dI_1 = 0
      attached:  dU_2/dI_1 = 0 - 0.9*0.48*0.6 = -0.2592; U_2 = 0 so O_2 has x = -1, g = 0 ->
                 dU_3/dI_1 = 0.9 (1 - 0) * (-0.2592) - 0 = -0.23328
    """
    kw = dict(leak=0.9, threshold=0.5, surrogate=PiecewiseLinear(0.3))
    assert _grad_v3_wrt_i1(LIF(**kw, detach_reset=True)) == pytest.approx(0.81, rel=1e-6)
    assert _grad_v3_wrt_i1(LIF(**kw, detach_reset=False)) == pytest.approx(0.57816, rel=1e-5)
    assert _grad_v3_wrt_i1(LIF(**kw, reset="none")) == pytest.approx(0.81, rel=1e-6)   # same as detached
    assert _grad_v3_wrt_i1(LIF(**kw, reset="hard", detach_reset=True)) == 0.0
    assert _grad_v3_wrt_i1(LIF(**kw, reset="hard", detach_reset=False)) == pytest.approx(-0.23328, rel=1e-5)
    # forward values do not depend on detach_reset
    for reset in ("soft", "hard"):
        a = _run(LIF(leak=0.9, threshold=0.5, reset=reset, detach_reset=True), CURRENTS)
        b = _run(LIF(leak=0.9, threshold=0.5, reset=reset, detach_reset=False), CURRENTS)
        chex.assert_trees_all_equal(a, b)


def test_alif_detach_reset():
    """ALIF: the reset (and the adaptation it drives) carries a gradient only with detach_reset=False."""
    kw = dict(leak=0.9, threshold=0.5, adapt=0.5, adapt_decay=0.8, surrogate=PiecewiseLinear(0.3))
    assert _grad_v3_wrt_i1(ALIF(**kw, detach_reset=True)) == pytest.approx(0.81, rel=1e-6)
    assert abs(_grad_v3_wrt_i1(ALIF(**kw, detach_reset=False)) - 0.81) > 0.1


# ----------------------------------------------------------------------------------------- simulate vs step


NEURONS = [LIF(leak=0.9, threshold=0.5), LIF(leak=0.8, threshold=0.7, reset="hard"),
           LIF(leak=0.95, threshold=0.4, reset="none", surrogate=Arctan(2.0)), IF(threshold=0.6),
           LIF(leak=0.9, threshold=0.5, detach_reset=False),
           ALIF(leak=0.9, threshold=0.5, adapt=0.6, adapt_decay=0.9),
           ALIF(leak=0.9, threshold=0.5, reset="hard", detach_reset=False)]
NEURON_IDS = ["soft", "hard", "none-arctan", "if", "attached", "alif", "alif-hard"]


def _random_currents(seed, shape=(20, 3, 4)):
    return jnp.asarray(np.random.default_rng(seed).normal(0.25, 0.4, shape), jnp.float32)


def _loop(neuron, c, step=None):
    """The reference: a Python loop of ``neuron.step`` (``step``: a jitted version of it)."""
    step = neuron.step if step is None else step
    state = neuron.init(c.shape[1:])
    spikes, pots = [], []
    for t in range(c.shape[0]):
        state, s = step(state, c[t])
        spikes.append(s)
        pots.append(state.v)
    return state, jnp.stack(spikes), jnp.stack(pots)


@pytest.mark.parametrize("neuron", NEURONS, ids=NEURON_IDS)
def test_simulate_equals_python_loop_of_step(neuron):
    c = _random_currents(1)
    fs, ss, vs = jax.jit(lambda c: simulate(neuron, c))(c)
    fl, sl, vl = _loop(neuron, c, step=jax.jit(neuron.step))
    assert 0.05 < float(ss.mean()) < 0.9                       # neurons fire, and not always
    np.testing.assert_array_equal(np.asarray(ss), np.asarray(sl))
    np.testing.assert_allclose(np.asarray(vs), np.asarray(vl), rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(fs, fl, rtol=1e-6, atol=1e-6)
    # an explicit initial state continues a run: T steps = T1 steps then T - T1 from the state reached
    run = jax.jit(lambda c, st: simulate(neuron, c, state=st))
    st1, s1, v1 = run(c[:7], neuron.init(c.shape[1:]))
    _, s2, v2 = run(c[7:14], st1)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), np.asarray(ss[:14]))
    np.testing.assert_allclose(np.concatenate([v1, v2]), np.asarray(vs[:14]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("neuron", [NEURONS[4], pytest.param(NEURONS[6], marks=pytest.mark.slow)],
                         ids=["lif-attached", "alif-hard-attached"])
def test_bptt_gradient_equals_unrolled_loop(neuron):
    """Backpropagation through the scan equals it through the unrolled loop (reset path attached).

    (Short T: XLA's compile time of the unrolled gradient grows quickly with T.)
    """
    c = _random_currents(5, (4, 2, 3))

    def loss(fn, c):
        _, s, v = fn(c)
        return (s * jnp.arange(1.0, 4.0)).sum() + (v ** 2).sum()

    gs, gl = jax.jit(lambda c: (jax.grad(lambda c: loss(lambda c: simulate(neuron, c, unroll=2), c))(c),
                                jax.grad(lambda c: loss(lambda c: _loop(neuron, c), c))(c)))(c)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gl), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(gs).sum()) > 0


@pytest.mark.parametrize("neuron", [NEURONS[0], NEURONS[5]], ids=["lif", "alif"])
def test_vmap_agrees_with_batched_and_per_example(neuron):
    c = _random_currents(2, (12, 5, 3))                          # (T, batch, neurons)
    _, s_batch, v_batch = jax.jit(lambda c: simulate(neuron, c))(c)
    per_example = jax.jit(jax.vmap(lambda ci: simulate(neuron, ci)[1:], in_axes=1, out_axes=1))
    s_v, v_v = per_example(c)
    np.testing.assert_array_equal(np.asarray(s_v), np.asarray(s_batch))
    np.testing.assert_allclose(np.asarray(v_v), np.asarray(v_batch), rtol=1e-6)
    # vmap over thresholds (one value per run) == a loop over thresholds
    thr = jnp.asarray([0.3, 0.5, 0.9])
    s_thr = jax.jit(jax.vmap(lambda th: simulate(neuron, c, threshold=th)[1]))(thr)
    one = jax.jit(lambda th: simulate(neuron, c, threshold=th)[1])
    for k, th in enumerate([0.3, 0.5, 0.9]):
        np.testing.assert_array_equal(np.asarray(s_thr[k]), np.asarray(one(jnp.float32(th))))


# ----------------------------------------------------------------------------------------- compilation


def test_simulate_compiles_once_for_new_values():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(c, leak, thr):
        return simulate(LIF(), c, leak=leak, threshold=thr)

    c = _random_currents(3)
    outs = [run(c * k, jnp.float32(0.9 - 0.1 * k), jnp.float32(0.5 + 0.1 * k)) for k in range(4)]
    assert not np.array_equal(np.asarray(outs[0][1]), np.asarray(outs[3][1]))
    # the traced threshold gives the same spikes as the constant one
    np.testing.assert_array_equal(np.asarray(outs[2][1]), np.asarray(simulate(LIF(leak=0.7, threshold=0.7), c * 2)[1]))
    chex.clear_trace_counter()


def _count_eqns(jaxpr) -> int:
    """Equations of a jaxpr including all its sub-jaxprs (scan/while bodies, custom_jvp rules, pjit)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                if isinstance(sub, jex.ClosedJaxpr):
                    n += _count_eqns(sub.jaxpr)
                elif isinstance(sub, jex.Jaxpr):
                    n += _count_eqns(sub)
    return n


@pytest.mark.parametrize("neuron", [NEURONS[0], NEURONS[5]], ids=["lif", "alif"])
def test_simulate_program_does_not_grow_with_timesteps(neuron):
    """The scan is not unrolled: the same jaxpr / StableHLO size for T = 10 and T = 1000 (and for grads)."""
    f = lambda c: simulate(neuron, c)[1].sum()  # noqa: E731
    sizes, hlo = [], []
    for T in (10, 1000):
        c = jnp.zeros((T, 4), jnp.float32)
        sizes.append((_count_eqns(jax.make_jaxpr(f)(c).jaxpr), _count_eqns(jax.make_jaxpr(jax.grad(f))(c).jaxpr)))
        hlo.append(len(jax.jit(jax.grad(f)).lower(c).as_text().splitlines()))
    assert sizes[0] == sizes[1]
    assert hlo[0] == hlo[1]
    # ... whereas an unrolled Python loop would grow (sanity check of the measure)
    loop = lambda c: sum(neuron.step(neuron.init((4,)), c[t])[1].sum() for t in range(c.shape[0]))  # noqa: E731
    assert _count_eqns(jax.make_jaxpr(loop)(jnp.zeros((20, 4)))) > _count_eqns(jax.make_jaxpr(loop)(jnp.zeros((10, 4))))


@pytest.mark.parametrize("stepwise", [False, True], ids=["layerwise", "stepwise"])
def test_cnn_small_program_does_not_grow_with_timesteps(stepwise):
    """No unrolled time loop in either mode: apply_fn's jaxpr (and its gradient's) has the same size at any T.

    Layer-wise, T only changes the shapes (the synapses see ``(T * N, ...)``; the encoder and each
    spike layer are one scan); step-wise, the whole network is one scan.
    """
    model = create("cnn_small", key=jax.random.key(0), timesteps=2, stepwise=stepwise)
    x = jnp.zeros((2, 28, 28, 1))
    sizes = []
    for T in (2, 50):
        m = model.with_timesteps(T)
        loss = lambda v: m.apply_fn(v, x).sum()  # noqa: E731
        sizes.append((_count_eqns(jax.make_jaxpr(m.apply_fn)(model.variables, x).jaxpr),
                      _count_eqns(jax.make_jaxpr(jax.grad(loss))(model.variables).jaxpr)))
    assert sizes[0] == sizes[1], sizes
    assert sizes[0][0] > 20          # the measure does see the network
    # where the convolutions are: outside every loop body layer-wise, inside the scan step-wise
    convs = _prims_in_loops(jax.make_jaxpr(model.apply_fn)(model.variables, x).jaxpr)
    assert convs["conv_general_dilated"] == ((0, 2) if not stepwise else (2, 0)), convs


def _prims_in_loops(jaxpr, inside=False, out=None):
    """``{primitive: (count inside scan/while bodies, count outside)}`` over a jaxpr and its sub-jaxprs."""
    out = {} if out is None else out
    for eqn in jaxpr.eqns:
        i, o = out.get(eqn.primitive.name, (0, 0))
        out[eqn.primitive.name] = (i + 1, o) if inside else (i, o + 1)
        loop = inside or eqn.primitive.name in ("scan", "while")
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                if isinstance(sub, jex.ClosedJaxpr):
                    _prims_in_loops(sub.jaxpr, loop, out)
                elif isinstance(sub, jex.Jaxpr):
                    _prims_in_loops(sub, loop, out)
    return out


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(leak=1.1), ValueError, "leak"),
    (dict(leak=-0.1), ValueError, "leak"),
    (dict(leak=float("nan")), ValueError, "leak"),
    (dict(leak="0.9"), TypeError, "leak"),
    (dict(threshold=0.0), ValueError, "threshold"),
    (dict(threshold=-1.0), ValueError, "threshold"),
    (dict(threshold=None), TypeError, "threshold"),
    (dict(reset="zero"), ValueError, "reset"),
    (dict(reset="subtract"), ValueError, "soft"),
    (dict(surrogate="arctan"), TypeError, "Surrogate"),
    (dict(surrogate=lambda x: x), TypeError, "Surrogate"),
])
@pytest.mark.parametrize("cls", [LIF, ALIF])
def test_bad_neuron_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_bad_alif_and_if_arguments():
    with pytest.raises(ValueError, match="adapt"):
        ALIF(adapt=-0.5)
    with pytest.raises(ValueError, match="adapt_decay"):
        ALIF(adapt_decay=1.5)
    with pytest.raises(ValueError, match="leak"):
        IF(leak=0.5)
    # the boundary values are allowed
    assert LIF(leak=0.0).leak == 0.0 and LIF(leak=1.0).leak == 1.0
    assert ALIF(adapt=0.0, adapt_decay=1.0).adapt_decay == 1.0


def test_bad_simulate_arguments():
    with pytest.raises(ValueError, match="time axis"):
        simulate(LIF(), jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="time axis"):
        simulate(LIF(), jnp.float32(1.0))
    with pytest.raises(TypeError, match="LIF or ALIF"):
        simulate("lif", jnp.zeros((4, 3)))
    with pytest.raises(TypeError, match="LIF or ALIF"):
        simulate(PiecewiseLinear(), jnp.zeros((4, 3)))


def test_neurons_are_hashable_static_values():
    assert LIF(leak=0.9) == LIF(leak=0.9) and hash(LIF(leak=0.9)) == hash(LIF(leak=0.9))
    assert LIF(surrogate=Arctan(2.0)) != LIF()
    traces = []

    def f(c, neuron):
        traces.append(1)
        return simulate(neuron, c)[1]

    jf = jax.jit(f, static_argnums=1)
    c = _random_currents(4, (6, 2))
    jf(c, LIF(leak=0.9))
    jf(c + 1, LIF(leak=0.9))
    assert len(traces) == 1
