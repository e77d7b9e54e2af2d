"""Shared pieces of the model zoo: the classifier base class, initialisers and small layers.

Every model in :mod:`jaxrob.models` subclasses :class:`Classifier`, which owns the
input handling that the :class:`~jaxrob.models.Model` contract promises: NHWC float
images in [0, 1] (a single ``(H, W, C)`` example is accepted too), per-channel
normalisation *inside* the model, and float32 logits.  Subclasses only implement
``forward(x, *, train, key)`` on a normalised ``(N, H, W, C)`` batch.

Modules hold no RNG state: dropout draws from the ``key`` passed to ``__call__``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Normalisation defaults, by number of input channels.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFAULT_NORMALISATION = {1: (MNIST_MEAN, MNIST_STD), 3: (CIFAR10_MEAN, CIFAR10_STD)}

# --------------------------------------------------------------------------- initialisers
# XLA compiles every distinct random shape separately (about a second each for
# threefry on a small CPU), so drawing each layer's weights with
# ``jax.random.normal(key, shape)`` makes eager model creation take many seconds.
# Instead every draw is assembled from fixed-size chunks of one compiled function,
# so creating any model compiles once per process.  Outside a trace the chunks are
# sliced and scaled on the host; under ``jit``/``eval_shape`` the same arithmetic is
# traced, giving identical values.

_CHUNK = 1 << 16


@jax.jit
def _normal_chunk(key: jax.Array) -> jax.Array:
    return jax.random.normal(key, (_CHUNK,), jnp.float32)


def _standard_normal(key: jax.Array, shape: tuple[int, ...]) -> np.ndarray | jax.Array:
    """Standard-normal samples of ``shape``; a NumPy array when ``key`` is concrete."""
    size = math.prod(shape)
    chunks = [_normal_chunk(jax.random.fold_in(key, i)) for i in range(max(1, -(-size // _CHUNK)))]
    if any(isinstance(c, jax.core.Tracer) for c in chunks):  # under jit/eval_shape
        return jnp.concatenate(chunks)[:size].reshape(shape)
    return np.concatenate([np.asarray(c) for c in chunks])[:size].reshape(shape)


def normal_init(gain: float, mode: str) -> Callable[..., jax.Array]:
    """Zero-mean normal initialiser with variance ``gain / fan`` (``mode``: ``"fan_in"`` or ``"fan_out"``).

    Fans are computed for HWIO convolution kernels and ``(in, out)`` dense kernels:
    ``fan_in = prod(shape[:-1])``, ``fan_out = prod(shape[:-2]) * shape[-1]`` (for a
    depthwise kernel ``(k, k, 1, C)`` this is ``k*k*C``, as in PyTorch).
    """
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        receptive = math.prod(shape[:-2])
        fan = receptive * (shape[-2] if mode == "fan_in" else shape[-1])
        std = math.sqrt(gain / fan)
        z = _standard_normal(key, tuple(shape))
        if isinstance(z, np.ndarray):
            return jnp.asarray((z * np.float32(std)).astype(dtype))
        return (z * std).astype(dtype)
    return init


def constant_init(value: float) -> Callable[..., jax.Array]:
    """Initialiser filling with ``value`` (built on the host: no per-shape compile)."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        del key
        return jnp.asarray(np.full(shape, value, dtype=dtype))
    return init


class ParamKeys:
    """Stream of parameter-initialisation keys ``fold_in(key, 0), fold_in(key, 1), ...``.

    Passed to Flax layers as their ``rngs`` argument; they only call
    ``rngs.params()``.  Unlike ``nnx.Rngs`` it counts in Python rather than in a JAX
    array, which matters when a model is built under ``jax.eval_shape``/``jit``:
    Flax 0.12 updates the ``nnx.Rngs`` counter with an indexed assignment whose
    ``getattr(tracer, "sharding")`` check walks the whole jaxpr built so far, making
    abstract construction quadratic in the number of layers.  It lives only during
    construction and never becomes module state.
    """

    def __init__(self, key: jax.Array):
        self._key = key
        self._count = 0

    def params(self) -> jax.Array:
        key = jax.random.fold_in(self._key, self._count)
        self._count += 1
        return key


#: What model constructors accept as ``rngs``: anything with a ``params()`` key stream.
Rngs = nnx.Rngs | ParamKeys


# He (Kaiming) normal with fan-out, as in torchvision and the reference CIFAR ResNet/WRN
# code (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``): std = sqrt(2 / (k*k*C_out)).
conv_init = normal_init(2.0, "fan_out")
# He normal with fan-in for hidden layers followed by a ReLU (MLP, small CNN).
relu_init = normal_init(2.0, "fan_in")
# LeCun normal (Flax's default kernel init) for the final, linear, classifier layer.
head_init = normal_init(1.0, "fan_in")
zeros_init, ones_init = constant_init(0.0), constant_init(1.0)

# Batch-norm hyperparameters matching PyTorch's defaults (torch momentum 0.1 == decay 0.9).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` over the last (channel) axis whose train mode stores statistics by assignment.

    Same parameters (``scale``, ``bias``), statistics (``mean``, ``var``: biased batch
    variance, exponential moving averages with decay ``momentum``) and eval mode as
    ``nnx.BatchNorm``.  In train mode the new running statistics are written with
    ``variable.set_value(...)`` instead of Flax 0.12's indexed assignment
    ``variable[...] = ...``, whose check ``getattr(tracer, "sharding")`` builds an error
    message by walking the whole jaxpr: that made tracing a train step quadratic in
    the number of batch-norm layers.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask=None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average or mask is not None or self.axis != -1:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        axes = tuple(range(x.ndim - 1))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=axes)
        var = jnp.mean(jnp.square(xf - mean), axis=axes)
        m = self.momentum
        for stat, batch in ((self.mean, mean), (self.var, var)):
            old = stat[...]
            stat.set_value(jax.lax.stop_gradient(m * old + (1 - m) * batch).astype(old.dtype))
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype or x.dtype)


def batch_norm(features: int, *, dtype, rngs: Rngs) -> BatchNorm:
    """Batch norm over the channel axis with PyTorch-equivalent defaults (decay 0.9, eps 1e-5)."""
    return BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale_init=ones_init,
                     bias_init=zeros_init, dtype=dtype, rngs=rngs)


def conv(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False,
         dtype, rngs: Rngs, kernel_init=conv_init) -> nnx.Conv:
    """A square convolution with symmetric ``kernel // 2`` zero padding (PyTorch semantics).

    Explicit symmetric padding (rather than ``"SAME"``) keeps strided convolutions
    aligned with ``x[:, ::2, ::2]`` subsampling, exactly as in the reference models.
    Kernels are stored HWIO: ``(kernel, kernel, cin // groups, cout)``.
    """
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=kernel // 2,
                    feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
                    bias_init=zeros_init, dtype=dtype, rngs=rngs)


def max_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """Non-overlapping ``size x size`` max pooling with floor (``VALID``) semantics.

    Written as a reshape and a max over the window axes rather than
    ``lax.reduce_window``: the forward pass is identical, but the backward pass
    becomes elementwise instead of XLA's ``select_and_scatter``, which on CPU was
    measured 4x slower (128x28x28x32 input: 90 ms vs 22 ms). At ties the gradient
    is split evenly between the tied inputs (a valid subgradient).
    """
    n, h, w, c = x.shape
    h2, w2 = h // size, w // size
    x = x[:, :h2 * size, :w2 * size, :]
    return jnp.max(x.reshape(n, h2, size, w2, size, c), axis=(2, 4))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))


def dropout(x: jax.Array, rate: float, *, train: bool, key: jax.Array | None, where: str) -> jax.Array:
    """Inverted dropout drawing its mask from ``key``; identity in eval mode or when ``rate == 0``."""
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError(f"{where} uses dropout (rate={rate}) in train mode, so train_apply needs "
                         "a PRNG key: call train_apply(variables, x, key=jax.random.key(...))")
    # Drawn flat and reshaped: with JAX's partitionable threefry an N-d draw compiles
    # about 15x slower on CPU than the same number of samples drawn 1-d.
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.size,)).reshape(x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


class Classifier(nnx.Module):
    """Base class: normalises ``[0, 1]`` NHWC input, runs ``forward``, returns float32 logits.

    Attributes:
      input_shape: per-example ``(H, W, C)``.
      num_classes: number of logits.
      mean, std: per-channel normalisation constants (tuples of length ``C``).
      dtype: computation dtype (``None`` = float32); parameters are always float32 and
        logits at least float32.
      activation: the elementwise nonlinearity used everywhere the architecture has
        its ReLU (``default_activation``: ReLU, ReLU6 for MobileNetV2).  A static
        attribute (part of the NNX graph definition, not of the state), so
        ``nnx.split`` and the ``variables`` pytree do not depend on it.
    """

    #: Whether the architecture needs exactly ``input_shape[:2]`` (it flattens
    #: feature maps); global-pooling models accept any spatial size.
    fixed_spatial_size: bool = False
    #: The nonlinearity used when ``activation`` is not given.
    default_activation: Callable[[jax.Array], jax.Array] = staticmethod(jax.nn.relu)

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int,
                 mean: Sequence[float], std: Sequence[float], dtype=None,
                 activation: Callable[[jax.Array], jax.Array] | None = None):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = dtype
        self.activation = check_activation(activation, type(self).default_activation)

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """Logits for images ``x``.

        Args:
          x: ``(N, H, W, C)`` or a single ``(H, W, C)`` image, float in [0, 1].
          train: batch norm uses batch statistics (and updates its running
            averages) and dropout is active when True.
          key: PRNG key for dropout; only needed in train mode by models with dropout.

        Returns:
          float32 logits (float64 if the model computes in float64), ``(N, num_classes)``
          (or ``(num_classes,)`` for a single image).
        """
        x = jnp.asarray(x)
        self._check_input(x)
        single = x.ndim == 3
        if single:
            x = x[None]
        compute = self.dtype or jnp.float32
        out = jnp.promote_types(compute, jnp.float32)  # float32, or float64 for dtype=float64
        x = (x.astype(out) - jnp.asarray(self.mean, out)) / jnp.asarray(self.std, out)
        logits = self.forward(x.astype(compute), train=bool(train), key=key).astype(out)
        return logits[0] if single else logits

    def forward(self, x: jax.Array, *, train: bool, key: jax.Array | None) -> jax.Array:
        """Logits ``(N, num_classes)`` for a normalised batch ``(N, H, W, C)``."""
        raise NotImplementedError

    def _check_input(self, x: jax.Array) -> None:
        name = type(self).__name__
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} expects float images in [0, 1], got x of dtype {x.dtype}; "
                            "convert with x.astype(jnp.float32) / 255")
        if x.ndim not in (3, 4):
            raise ValueError(f"{name} expects x of shape (N, H, W, C) or (H, W, C) with "
                             f"(H, W, C) = {self.input_shape}, got shape {x.shape}")
        h, w, c = self.input_shape
        if x.shape[-1] != c or (self.fixed_spatial_size and x.shape[-3:-1] != (h, w)):
            want = f"(H, W, C) = {self.input_shape}" if self.fixed_spatial_size else f"C = {c} channels"
            raise ValueError(f"{name} was built for {want}, got x of shape {x.shape} "
                             "(inputs are NHWC)")


def check_activation(activation, default: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``default`` when ``activation`` is None, else ``activation`` after checking it is callable."""
    if activation is None:
        return default
    if not callable(activation):
        raise TypeError("activation must be a callable array -> array (e.g. jax.nn.relu or an activation "
                        f"quantizer such as lambda x: dorefa_activations(x, bits=4)), got {activation!r} "
                        f"of type {type(activation).__name__}")
    return activation


def check_shape_at_least(name: str, input_shape: tuple[int, int, int], minimum: int, why: str) -> None:
    """Raises if the spatial size is below what an architecture's pooling needs."""
    if min(input_shape[:2]) < minimum:
        raise ValueError(f"{name} needs input height and width >= {minimum} ({why}); "
                         f"got input_shape={input_shape}")



def linear(cin: int, cout: int, *, dtype, rngs: Rngs, kernel_init=head_init) -> nnx.Linear:
    """A dense layer, kernel ``(cin, cout)``, zero bias."""
    return nnx.Linear(cin, cout, kernel_init=kernel_init, bias_init=zeros_init, dtype=dtype, rngs=rngs)
