"""Spike functions with surrogate gradients.

A spike is the Heaviside step of the normalised membrane potential,
``o = H(x)`` with ``x = U / V_th - 1`` and ``H(x) = 1[x > 0]`` (a neuron fires
when its potential *exceeds* the threshold, as in DCT-SNN's and snnTorch's
code).  Its derivative is zero almost everywhere, so backpropagation through
time replaces it by a *surrogate* ``H'(x) ~= g(x)``: the forward pass is the
exact step, the backward pass multiplies the incoming tangent by ``g(x)``.

Every surrogate here is a frozen (hashable) dataclass; calling it applies the
spike function, :meth:`Surrogate.derivative` is its ``g``.  They are implemented
with one ``jax.custom_jvp`` (so forward- and reverse-mode, ``vmap`` and ``jit``
all work) and are parametrised by the dataclass fields, which are static.

==================  ================================================  ============================
surrogate           g(x)                                              reference
==================  ================================================  ============================
PiecewiseLinear     gamma * max(0, 1 - |x|)                           Bellec et al. 2018
FastSigmoid         1 / (1 + slope * |x|)^2                           Zenke & Ganguli 2018
Arctan              (alpha / 2) / (1 + (pi/2 * alpha * x)^2)          Fang et al. 2021
Sigmoid             slope * s * (1 - s),  s = sigmoid(slope * x)      Zenke & Vogels 2021
Triangle            max(0, width - |x|) / width^2  (unit area)        Esser et al. 2016
Boxcar              1[|x| < width / 2] / width     (unit area)        Wu et al. 2018 (STBP)
Custom              a user-supplied function                          --
==================  ================================================  ============================

References:
  Bellec, Salaj, Subramoney, Legenstein, Maass, "Long short-term memory and
  learning-to-learn in networks of spiking neurons", NeurIPS 2018, arXiv:1803.09574.
  Zenke & Ganguli, "SuperSpike: Supervised learning in multilayer spiking neural
  networks", Neural Computation 2018, arXiv:1705.11146.
  Fang, Yu, Chen, Masquelier, Huang, Tian, "Incorporating learnable membrane time
  constant to enhance learning of spiking neural networks", ICCV 2021, arXiv:2007.05785.
  Zenke & Vogels, "The remarkable robustness of surrogate gradient learning for
  instilling complex function in spiking neural networks", Neural Computation 2021.
  Esser et al., "Convolutional networks for fast, energy-efficient neuromorphic
  computing", PNAS 2016, arXiv:1603.08270.
  Wu, Deng, Li, Zhu, Shi, "Spatio-temporal backpropagation for training
  high-performance spiking neural networks", Frontiers in Neuroscience 2018,
  arXiv:1706.02609.
  Neftci, Mostafa, Zenke, "Surrogate gradient learning in spiking neural networks",
  IEEE Signal Processing Magazine 2019, arXiv:1901.09948 (survey of the family).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrob import _validate


def heaviside(x: jax.Array) -> jax.Array:
    """The exact step ``1[x > 0]`` in ``x``'s (floating) dtype; no gradient."""
    return (x > 0).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _spike(x: jax.Array, surrogate: "Surrogate") -> jax.Array:
    return heaviside(x)


@_spike.defjvp
def _spike_jvp(surrogate, primals, tangents):
    (x,), (dx,) = primals, tangents
    return heaviside(x), dx * surrogate.derivative(x).astype(x.dtype)


class Surrogate:
    """Base class: ``surrogate(x)`` spikes (``H(x)``) with gradient ``derivative(x)``.

    Subclasses are frozen dataclasses that implement :meth:`derivative`.
    """

    def derivative(self, x: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"a spike function takes a floating membrane potential, got dtype {x.dtype}")
        return _spike(x, self)


def _positive(cls_name: str, field: str, value) -> None:
    _validate.number(f"{cls_name}.{field}", value, min=0.0, min_inclusive=False)


@dataclasses.dataclass(frozen=True)
class PiecewiseLinear(Surrogate):
    """``g(x) = gamma * max(0, 1 - |x|)`` (Bellec et al. 2018; DCT-SNN uses gamma = 0.3)."""

    gamma: float = 0.3

    def __post_init__(self):
        _positive("PiecewiseLinear", "gamma", self.gamma)

    def derivative(self, x):
        return self.gamma * jnp.maximum(0.0, 1.0 - jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """SuperSpike's ``g(x) = 1 / (1 + slope * |x|)^2`` (snnTorch's default slope is 25)."""

    slope: float = 25.0

    def __post_init__(self):
        _positive("FastSigmoid", "slope", self.slope)

    def derivative(self, x):
        return 1.0 / (1.0 + self.slope * jnp.abs(x)) ** 2


@dataclasses.dataclass(frozen=True)
class Arctan(Surrogate):
    """``g(x) = (alpha / 2) / (1 + (pi/2 * alpha * x)^2)``: the derivative of ``arctan(pi/2 alpha x)/pi + 1/2``."""

    alpha: float = 2.0

    def __post_init__(self):
        _positive("Arctan", "alpha", self.alpha)

    def derivative(self, x):
        return (self.alpha / 2.0) / (1.0 + (math.pi / 2.0 * self.alpha * x) ** 2)


@dataclasses.dataclass(frozen=True)
class Sigmoid(Surrogate):
    """``g(x) = slope * s(1 - s)`` with ``s = sigmoid(slope * x)``: the derivative of ``sigmoid(slope * x)``."""

    slope: float = 5.0

    def __post_init__(self):
        _positive("Sigmoid", "slope", self.slope)

    def derivative(self, x):
        # s (1 - s) written as sigmoid(z) sigmoid(-z): no cancellation in 1 - s for large z.
        return self.slope * jax.nn.sigmoid(self.slope * x) * jax.nn.sigmoid(-self.slope * x)


@dataclasses.dataclass(frozen=True)
class Triangle(Surrogate):
    """Unit-area triangle of half-width ``width``: ``g(x) = max(0, width - |x|) / width^2``."""

    width: float = 1.0

    def __post_init__(self):
        _positive("Triangle", "width", self.width)

    def derivative(self, x):
        return jnp.maximum(0.0, self.width - jnp.abs(x)) / self.width ** 2


@dataclasses.dataclass(frozen=True)
class Boxcar(Surrogate):
    """Unit-area rectangle of total width ``width``: ``g(x) = 1[|x| < width/2] / width``."""

    width: float = 1.0

    def __post_init__(self):
        _positive("Boxcar", "width", self.width)

    def derivative(self, x):
        return jnp.where(jnp.abs(x) < self.width / 2.0, 1.0 / self.width, 0.0)


@dataclasses.dataclass(frozen=True)
class Custom(Surrogate):
    """A user-supplied surrogate: ``fn(x)`` returns ``g(x)`` elementwise (a jnp-traceable function).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> spike = Custom(lambda x: jnp.exp(-x ** 2))
      >>> [round(float(g), 3) for g in jax.grad(lambda x: spike(x).sum())(jnp.array([0.0, 1.0]))]
      [1.0, 0.368]
    """

    fn: Callable[[jax.Array], jax.Array]

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Custom surrogate needs a callable fn(x) -> g(x), got {self.fn!r}")

    def derivative(self, x):
        return jnp.asarray(self.fn(x))


SURROGATES: dict[str, type[Surrogate]] = {
    "piecewise_linear": PiecewiseLinear, "fast_sigmoid": FastSigmoid, "arctan": Arctan,
    "sigmoid": Sigmoid, "triangle": Triangle, "boxcar": Boxcar,
}


def surrogate(name: str | Surrogate, **hyper) -> Surrogate:
    """A surrogate by name (``"piecewise_linear"``, ``"fast_sigmoid"``, ...) with its hyperparameters.

    A :class:`Surrogate` instance is returned unchanged (``hyper`` must then be empty).
    """
    if isinstance(name, Surrogate):
        if hyper:
            raise ValueError(f"hyperparameters {sorted(hyper)} given with a surrogate instance {name!r}")
        return name
    _validate.choice("surrogate", name, SURROGATES)
    return SURROGATES[name](**hyper)
