"""jaxrob's LIF equals snnTorch's ``Leaky`` spike for spike (skipped without snnTorch).

snnTorch (``pip install --no-deps snntorch``; it needs only torch and numpy) is the
reference implementation of the discrete LIF that ``jaxrob.snn.LIF`` follows:

* ``LIF(leak, threshold, reset="soft")``  ==  ``Leaky(beta=leak, threshold=threshold, reset_mechanism="subtract")``
* ``LIF(leak, threshold, reset="hard")``  ==  ``Leaky(..., reset_mechanism="zero")``
* ``LIF(..., reset="none")``              ==  ``Leaky(..., reset_mechanism="none")``

Both fire on ``U_t > V_th``, apply the reset one step after the spike
(snnTorch's default ``reset_delay=True``) and detach it from the gradient.

Surrogate gradients: snnTorch applies its surrogate to ``U - V_th``, jaxrob to
``x = U / V_th - 1``, so ``dS/dU`` is ``g(U - V_th)`` in snnTorch and
``g((U - V_th) / V_th) / V_th`` in jaxrob.  They coincide at ``V_th = 1``; for
other thresholds the test uses :class:`jaxrob.snn.Custom` with
``g'(x) = V_th * g(V_th * x)``, which makes jaxrob's ``dS/dU`` equal to snnTorch's.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

snntorch = pytest.importorskip("snntorch")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from snntorch import surrogate as snn_surrogate  # noqa: E402

from jaxrob.snn import LIF, Arctan, Custom, FastSigmoid, simulate  # noqa: E402

T = 50
SHAPE = (8, 48)  # 384 neurons (a batch of 8 layers of 48)
RESETS = {"soft": "subtract", "hard": "zero", "none": "none"}
PAIRS = [(0.9, 1.0), (0.5, 0.7), (0.99, 1.3), (1.0, 0.25), (0.0, 2.0)]


def _currents(leak: float, threshold: float, seed: int) -> np.ndarray:
    """Random currents on the scale of the threshold: a mix of silent, sparse and busy neurons."""
    rng = np.random.default_rng(seed)
    mean = threshold * (1.0 - leak) * rng.uniform(0.0, 2.0, SHAPE) + 0.15 * threshold
    return (mean + rng.normal(0.0, 0.5 * threshold, (T, *SHAPE))).astype(np.float32)


def _snntorch_run(currents: np.ndarray, leak: float, threshold: float, reset: str, spike_grad=None,
                  requires_grad: bool = False):
    """Steps snnTorch's Leaky through time; returns ``(spikes, potentials, input tensor)``."""
    kwargs = {} if spike_grad is None else {"spike_grad": spike_grad}
    lif = snntorch.Leaky(beta=leak, threshold=threshold, reset_mechanism=RESETS[reset], **kwargs)
    cur = torch.tensor(currents, requires_grad=requires_grad)
    mem = lif.reset_mem()
    spikes, mems = [], []
    for t in range(currents.shape[0]):
        spk, mem = lif(cur[t], mem)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems), cur


@functools.partial(jax.jit, static_argnums=3)
def _simulate(currents, leak, threshold, reset):
    """``simulate`` with leak and threshold as arrays (as the spiking models pass them): one compile per reset."""
    _, spikes, potentials = simulate(LIF(reset=reset), currents, leak=leak, threshold=threshold)
    return spikes, potentials


@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("leak, threshold", PAIRS)
def test_spike_trains_and_potentials_equal_snntorch(leak, threshold, reset):
    currents = _currents(leak, threshold, seed=int(1000 * leak + 100 * threshold))
    spikes, potentials = _simulate(currents, jnp.float32(leak), jnp.float32(threshold), reset)
    with torch.no_grad():
        s_ref, u_ref, _ = _snntorch_run(currents, leak, threshold, reset)
    spikes, s_ref = np.asarray(spikes), s_ref.numpy()
    # the comparison is not vacuous: neurons fire, and not all the time
    rate = spikes.mean()
    assert 0.02 < rate < 0.8, rate
    if reset == "soft" or (reset == "hard" and leak > 0):   # (with leak 0 a hard reset changes nothing)
        _, u_free = _simulate(currents, jnp.float32(leak), jnp.float32(threshold), "none")
        assert not np.allclose(np.asarray(potentials), np.asarray(u_free))   # the reset does act
    np.testing.assert_array_equal(spikes, s_ref)
    np.testing.assert_allclose(np.asarray(potentials), u_ref.numpy(), rtol=1e-5, atol=1e-5 * threshold)


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_constants_in_the_neuron_equal_snntorch(reset):
    """The same with leak and threshold as the LIF dataclass's Python constants (no jit)."""
    leak, threshold = 0.5, 0.7
    currents = _currents(leak, threshold, seed=3)
    _, spikes, potentials = simulate(LIF(leak=leak, threshold=threshold, reset=reset), currents)
    with torch.no_grad():
        s_ref, u_ref, _ = _snntorch_run(currents, leak, threshold, reset)
    assert 0.02 < float(np.mean(s_ref.numpy())) < 0.8
    np.testing.assert_array_equal(np.asarray(spikes), s_ref.numpy())
    np.testing.assert_allclose(np.asarray(potentials), u_ref.numpy(), rtol=1e-5, atol=1e-5 * threshold)


def _loss_weights() -> np.ndarray:
    return np.random.default_rng(7).uniform(0.5, 1.5, (T, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("kind", ["fast_sigmoid", "arctan"])
@pytest.mark.parametrize("leak, threshold", [(0.9, 1.0), (0.8, 0.6)])
def test_bptt_input_gradients_equal_snntorch(leak, threshold, reset, kind):
    """d(sum_t,n w_tn o_tn)/dI through time: same surrogate, same detached reset, same numbers."""
    currents = _currents(leak, threshold, seed=11)
    w = _loss_weights()
    if kind == "fast_sigmoid":
        slope = 25.0
        ref_grad = snn_surrogate.fast_sigmoid(slope=slope)
        ours = FastSigmoid(slope) if threshold == 1.0 else Custom(
            lambda x: threshold / (1.0 + slope * jnp.abs(threshold * x)) ** 2)
    else:
        alpha = 2.0
        ref_grad = snn_surrogate.atan(alpha=alpha)
        ours = Arctan(alpha) if threshold == 1.0 else Custom(
            lambda x: threshold * (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * threshold * x) ** 2))
    lif = LIF(leak=leak, threshold=threshold, reset=reset, surrogate=ours)

    def loss(c):
        _, spikes, _ = simulate(lif, c)
        return jnp.sum(w * spikes)

    val, g = jax.jit(jax.value_and_grad(loss))(currents)
    s_ref, _, cur = _snntorch_run(currents, leak, threshold, reset, spike_grad=ref_grad, requires_grad=True)
    ref_loss = (torch.from_numpy(w) * s_ref).sum()
    ref_loss.backward()
    g_ref = cur.grad.numpy()
    assert float(val) == pytest.approx(float(ref_loss.detach()), rel=1e-6)
    g = np.asarray(g)
    # gradients flow back through time (not only the instantaneous surrogate), and are non-trivial
    assert np.abs(g).max() > 0.1 and np.count_nonzero(g) > 0.5 * g.size
    np.testing.assert_allclose(g, g_ref, rtol=2e-5, atol=1e-6)


def test_threshold_scaling_differs_without_the_correction():
    """Guards the note above: at V_th != 1 plain FastSigmoid's dS/dU is NOT snnTorch's (factor 1/V_th inside and out)."""
    leak, threshold = 0.8, 0.6
    currents = _currents(leak, threshold, seed=11)
    w = _loss_weights()

    def loss(c):
        _, spikes, _ = simulate(LIF(leak=leak, threshold=threshold, reset="soft", surrogate=FastSigmoid(25.0)), c)
        return jnp.sum(w * spikes)

    g = np.asarray(jax.jit(jax.grad(loss))(currents))
    s_ref, _, cur = _snntorch_run(currents, leak, threshold, "soft", spike_grad=snn_surrogate.fast_sigmoid(25.0),
                                  requires_grad=True)
    (torch.from_numpy(w) * s_ref).sum().backward()
    assert not np.allclose(g, cur.grad.numpy(), rtol=1e-3)
