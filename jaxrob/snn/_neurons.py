"""Spiking neurons as pure ``(init, step)`` pairs, and their simulation over time.

The one LIF update used everywhere in jaxrob (DCT-SNN's discrete LIF, Garg et al.
ICCV 2021, eq. 3; the same as snnTorch's ``Leaky``)::

    U_t = lam * U_{t-1} + I_t - V_th * o_{t-1}          (soft reset, the default)
    o_t = H(U_t / V_th - 1)

with ``I_t = W . o_in(t)`` the synaptic current.  The variants are options:
``reset="hard"`` zeroes the potential after a spike, ``U_t = lam (1 - o_{t-1}) U_{t-1} + I_t``
(snnTorch's ``reset_mechanism="zero"``); ``reset="none"`` never resets; ``leak=1``
is the integrate-and-fire (IF) neuron.  As in both reference codes, the reset is
applied on the step *after* the spike and carries no gradient (``detach_reset``).

``leak`` and ``threshold`` are per-layer scalars (or arrays broadcastable to the
layer).  They are *arguments* of :meth:`LIF.step`, not constants, so a model can
learn them (DIET-SNN style) or set them by ANN-to-SNN conversion without
recompiling; the dataclass fields are only their initial values.

The adaptive-threshold neuron :class:`ALIF` follows Bellec et al. (2018): a
threshold ``A_t = V_th + beta * b_t`` with ``b_t = rho * b_{t-1} + (1 - rho) * o_{t-1}``.

References:
  Garg, Chowdhury, Roy, "DCT-SNN: Using DCT to distribute spatial information over
  time for low-latency spiking neural networks", ICCV 2021, arXiv:2010.01795.
  Eshraghian et al., "Training spiking neural networks using lessons from deep
  learning", Proc. IEEE 2023, arXiv:2109.12894 (snnTorch).
  Bellec, Salaj, Subramoney, Legenstein, Maass, "Long short-term memory and
  learning-to-learn in networks of spiking neurons", NeurIPS 2018, arXiv:1803.09574.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrob import _validate
from jaxrob.snn._surrogate import PiecewiseLinear, Surrogate

RESETS = ("soft", "hard", "none")


class LIFState(NamedTuple):
    """State of a layer of LIF neurons: potential ``v`` = U_{t-1} and last spikes ``s`` = o_{t-1}."""

    v: jax.Array
    s: jax.Array


class ALIFState(NamedTuple):
    """State of adaptive LIF neurons: ``v``, ``s`` as in :class:`LIFState` plus adaptation ``b``."""

    v: jax.Array
    s: jax.Array
    b: jax.Array


def _check_common(name, leak, threshold, reset, surrogate):
    _validate.number(f"{name}.leak", leak, min=0.0, max=1.0)
    _validate.number(f"{name}.threshold", threshold, min=0.0, min_inclusive=False)
    _validate.choice(f"{name}.reset", reset, RESETS)
    if not isinstance(surrogate, Surrogate):
        raise TypeError(f"{name}.surrogate must be a jaxrob.snn Surrogate (e.g. PiecewiseLinear(0.3)), "
                        f"got {surrogate!r}")


@dataclasses.dataclass(frozen=True)
class LIF:
    """Leaky integrate-and-fire neurons (IF with ``leak=1``).

    Attributes:
      leak: initial membrane leak ``lam`` in [0, 1] (DCT-SNN: 0.9901; 1.0 = IF).
      threshold: initial firing threshold ``V_th`` > 0.
      reset: ``"soft"`` (subtract ``V_th``), ``"hard"`` (to zero) or ``"none"``.
      surrogate: the spike function and its surrogate gradient.
      detach_reset: stop the gradient through the reset term (both reference codes do).
      learn_leak / learn_threshold: read by the spiking layers, which then store the
        value as a trainable parameter instead of a constant.

    Example:
      >>> import jax.numpy as jnp
      >>> lif = LIF(leak=0.5, threshold=1.0)
      >>> state = lif.init((1,))
      >>> for i in [0.6, 0.6, 0.6, 0.0]:
      ...     state, o = lif.step(state, jnp.array([i]))
      ...     print(round(float(state.v[0]), 3), int(o[0]))
      0.6 0
      0.9 0
      1.05 1
      -0.475 0
    """

    leak: float = 0.99
    threshold: float = 1.0
    reset: str = "soft"
    surrogate: Surrogate = PiecewiseLinear(0.3)
    detach_reset: bool = True
    learn_leak: bool = False
    learn_threshold: bool = False

    def __post_init__(self):
        _check_common("LIF", self.leak, self.threshold, self.reset, self.surrogate)

    def init(self, shape: tuple[int, ...], dtype: Any = jnp.float32) -> LIFState:
        """Resting state: zero potential, no previous spike."""
        z = jnp.zeros(shape, dtype)
        return LIFState(z, z)

    def step(self, state: LIFState, current: jax.Array, *, leak: jax.Array | float | None = None,
             threshold: jax.Array | float | None = None) -> tuple[LIFState, jax.Array]:
        """One timestep: integrate ``current`` (same shape as the state), fire, return ``(state, spikes)``.

        ``leak``/``threshold`` override the dataclass values (learned or converted values).
        """
        lam = self.leak if leak is None else leak
        vth = self.threshold if threshold is None else threshold
        prev = jax.lax.stop_gradient(state.s) if self.detach_reset else state.s
        if self.reset == "soft":
            v = lam * state.v + current - vth * prev
        elif self.reset == "hard":
            v = lam * (1.0 - prev) * state.v + current
        else:
            v = lam * state.v + current
        s = self.surrogate(v / vth - 1.0)
        return LIFState(v, s), s


def IF(**kwargs) -> LIF:
    """Integrate-and-fire neurons: :class:`LIF` with ``leak=1``."""
    if "leak" in kwargs:
        raise ValueError("IF neurons have no leak (leak=1); use LIF(leak=...) for a leaky neuron")
    return LIF(leak=1.0, **kwargs)


@dataclasses.dataclass(frozen=True)
class ALIF:
    """Adaptive-threshold LIF (Bellec et al. 2018, LSNN).

    ``A_t = V_th + beta * b_t``, ``b_t = rho * b_{t-1} + (1 - rho) * o_{t-1}``;
    ``U_t = lam U_{t-1} + I_t - A_{t-1} o_{t-1}`` (soft reset by the threshold the
    spike crossed; ``"hard"`` and ``"none"`` as in :class:`LIF`), ``o_t = H(U_t / A_t - 1)``.

    Attributes:
      leak, threshold, reset, surrogate, detach_reset, learn_leak, learn_threshold:
        as in :class:`LIF` (``threshold`` is the baseline ``V_th`` = b_0).
      adapt: ``beta`` >= 0, the threshold increase per unit of adaptation (Bellec: 1.8).
      adapt_decay: ``rho`` in [0, 1], the adaptation's decay per step (exp(-dt/tau_a)).
    """

    leak: float = 0.99
    threshold: float = 1.0
    reset: str = "soft"
    surrogate: Surrogate = PiecewiseLinear(0.3)
    detach_reset: bool = True
    learn_leak: bool = False
    learn_threshold: bool = False
    adapt: float = 1.8
    adapt_decay: float = 0.95

    def __post_init__(self):
        _check_common("ALIF", self.leak, self.threshold, self.reset, self.surrogate)
        _validate.number("ALIF.adapt", self.adapt, min=0.0)
        _validate.number("ALIF.adapt_decay", self.adapt_decay, min=0.0, max=1.0)

    def init(self, shape: tuple[int, ...], dtype: Any = jnp.float32) -> ALIFState:
        z = jnp.zeros(shape, dtype)
        return ALIFState(z, z, z)

    def step(self, state: ALIFState, current: jax.Array, *, leak=None, threshold=None
             ) -> tuple[ALIFState, jax.Array]:
        lam = self.leak if leak is None else leak
        vth = self.threshold if threshold is None else threshold
        prev = jax.lax.stop_gradient(state.s) if self.detach_reset else state.s
        a_prev = vth + self.adapt * state.b
        b = self.adapt_decay * state.b + (1.0 - self.adapt_decay) * prev
        a = vth + self.adapt * b
        if self.reset == "soft":
            v = lam * state.v + current - a_prev * prev
        elif self.reset == "hard":
            v = lam * (1.0 - prev) * state.v + current
        else:
            v = lam * state.v + current
        s = self.surrogate(v / a - 1.0)
        return ALIFState(v, s, b), s


Neuron = LIF | ALIF


def simulate(neuron: Neuron, currents: jax.Array, *, state: Any = None, leak=None, threshold=None,
             unroll: int = 1) -> tuple[Any, jax.Array, jax.Array]:
    """Runs a layer of neurons over time with ``lax.scan``.

    Args:
      neuron: a :class:`LIF` or :class:`ALIF`.
      currents: ``(T, *shape)`` input currents, time first.
      state: initial state (default: ``neuron.init(shape)``).
      leak, threshold: optional per-layer values overriding the neuron's.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``(final_state, spikes, potentials)`` with ``spikes`` and ``potentials`` of shape
      ``(T, *shape)``.

    Example:
      >>> import jax.numpy as jnp
      >>> _, spikes, _ = simulate(IF(), jnp.full((5, 1), 0.4))
      >>> spikes[:, 0].tolist()
      [0.0, 0.0, 1.0, 0.0, 0.0]
    """
    currents = jnp.asarray(currents)
    if currents.ndim < 1 or currents.shape[0] < 1:
        raise ValueError(f"currents must have a leading time axis of length >= 1, got shape {currents.shape}")
    if not isinstance(neuron, (LIF, ALIF)):
        raise TypeError(f"neuron must be a jaxrob.snn LIF or ALIF, got {neuron!r}")
    if not jnp.issubdtype(currents.dtype, jnp.floating):
        raise TypeError(f"currents must be a floating array, got dtype {currents.dtype}")
    if state is None:
        state = neuron.init(currents.shape[1:], currents.dtype)

    def body(st, i):
        st, s = neuron.step(st, i, leak=leak, threshold=threshold)
        return st, (s, st.v)

    final, (spikes, potentials) = jax.lax.scan(body, state, currents, unroll=unroll)
    return final, spikes, potentials
