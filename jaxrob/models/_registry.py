"""The model registry: ``create(name, ...)`` builds any model of the zoo by name."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrob import _validate
from jaxrob.models import _layers as L
from jaxrob.models._base import Model, from_nnx
from jaxrob.models._mobilenet import MobileNetV2
from jaxrob.models._resnet import CifarResNet, PreActResNet
from jaxrob.models._simple import MLP, SmallCNN
from jaxrob.models._vgg import VGG

MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)


# --------------------------------------------------------------------------- checks


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _input_shape(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"input_shape must be a 3-tuple (H, W, C) of positive ints for one NHWC "
                         f"example, e.g. (28, 28, 1) or (32, 32, 3); got {value!r}")
    return tuple(_positive_int(f"input_shape[{i}]", v) for i, v in enumerate(value))


def _dropout_rate(value: Any) -> float:
    return float(_validate.number("dropout", value, min=0.0, max=1.0, max_inclusive=False))


def _channel_constants(name: str, value: Any, channels: int, *, positive: bool) -> tuple[float, ...]:
    """A scalar (broadcast) or one finite value per channel."""
    try:
        values = None if isinstance(value, str) else np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or len(values) not in (1, channels):
        raise ValueError(f"{name} must be a number or a sequence of {channels} numbers (one per "
                         f"input channel), got {value!r}")
    if not np.all(np.isfinite(values)) or (positive and np.any(values <= 0)):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {value!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (channels,)))


def _normalisation(mean: Any, std: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if mean is None or std is None:
        if channels not in L.DEFAULT_NORMALISATION:
            raise ValueError(f"no default normalisation for {channels}-channel inputs (defaults exist "
                             "for 1 channel: MNIST, and 3 channels: CIFAR-10); pass mean= and std= "
                             f"(a number or {channels} numbers each)")
        default_mean, default_std = L.DEFAULT_NORMALISATION[channels]
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    return (_channel_constants("mean", mean, channels, positive=False),
            _channel_constants("std", std, channels, positive=True))


def _compute_dtype(value: Any):
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, got {value!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, got {dtype}")
    return dtype


# --------------------------------------------------------------------------- builders
# Each builder takes the validated common arguments as ``common`` plus its own
# keyword-only options (validated here); its signature is the list of options
# that ``create`` accepts for that name.


def _mlp(common, *, hidden_sizes: Sequence[int] = (256, 256)):
    if not isinstance(hidden_sizes, (tuple, list)):
        raise TypeError(f"hidden_sizes must be a tuple of positive ints, got {hidden_sizes!r}")
    sizes = tuple(_positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes))
    return MLP(**common, hidden_sizes=sizes)


def _cnn_small(common):
    return SmallCNN(**common)


def _cifar_resnet(depth: int):
    def build(common):
        return CifarResNet(**common, depth=depth)
    return build


def _preact_resnet18(common):
    return PreActResNet(**common, stem_width=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2),
                        strides=(1, 2, 2, 2))


def _wide_resnet(common, *, depth: int = 28, width: int = 10, dropout: float = 0.0):
    depth = _positive_int("depth", depth)
    width = _positive_int("width", width)
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")
    n = (depth - 4) // 6
    return PreActResNet(**common, stem_width=16, widths=(16 * width, 32 * width, 64 * width),
                        blocks=(n, n, n), strides=(1, 2, 2), dropout=_dropout_rate(dropout))


def _wrn(depth: int, width: int):
    def build(common, *, dropout: float = 0.0):
        return _wide_resnet(common, depth=depth, width=width, dropout=dropout)
    return build


def _vgg(depth: int):
    def build(common):
        return VGG(**common, depth=depth)
    return build


def _mobilenet_v2(common, *, width_mult: float = 1.0, dropout: float = 0.0):
    width_mult = float(_validate.number("width_mult", width_mult, min=0.0, min_inclusive=False))
    return MobileNetV2(**common, width_mult=width_mult, dropout=_dropout_rate(dropout))


@dataclasses.dataclass(frozen=True)
class _Entry:
    build: Callable[..., L.Classifier]
    input_shape: tuple[int, int, int]
    summary: str


MODELS: dict[str, _Entry] = {
    "mlp": _Entry(_mlp, MNIST_SHAPE, "ReLU MLP, hidden_sizes=(256, 256)"),
    "cnn_small": _Entry(_cnn_small, MNIST_SHAPE, "2x(conv3x3-ReLU-maxpool) + Dense(256), no BN"),
    "resnet20": _Entry(_cifar_resnet(20), CIFAR_SHAPE, "CIFAR ResNet-20, option-A shortcuts (He et al. 2016)"),
    "resnet32": _Entry(_cifar_resnet(32), CIFAR_SHAPE, "CIFAR ResNet-32, option-A shortcuts"),
    "resnet56": _Entry(_cifar_resnet(56), CIFAR_SHAPE, "CIFAR ResNet-56, option-A shortcuts"),
    "preact_resnet18": _Entry(_preact_resnet18, CIFAR_SHAPE, "pre-activation ResNet-18 (He et al. ECCV 2016)"),
    "wide_resnet": _Entry(_wide_resnet, CIFAR_SHAPE, "WRN-depth-width, kwargs depth=28, width=10, dropout=0"),
    "wrn28_10": _Entry(_wrn(28, 10), CIFAR_SHAPE, "WRN-28-10 (Zagoruyko & Komodakis 2016)"),
    "wrn34_10": _Entry(_wrn(34, 10), CIFAR_SHAPE, "WRN-34-10, the usual adversarial-training backbone"),
    "vgg11_bn": _Entry(_vgg(11), CIFAR_SHAPE, "VGG-11 with BN, single linear classifier"),
    "vgg16_bn": _Entry(_vgg(16), CIFAR_SHAPE, "VGG-16 with BN, single linear classifier"),
    "mobilenet_v2": _Entry(_mobilenet_v2, CIFAR_SHAPE, "MobileNetV2, CIFAR strides, kwarg width_mult=1.0"),
}


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(MODELS)


def _options(entry: _Entry) -> list[str]:
    params = list(inspect.signature(entry.build).parameters.values())[1:]
    return [p.name for p in params]


def create_module(name: str, *, num_classes: int = 10, input_shape: Sequence[int] | None = None,
                  key: jax.Array, mean: float | Sequence[float] | None = None,
                  std: float | Sequence[float] | None = None, dtype: Any = None,
                  activation: Callable[[jax.Array], jax.Array] | None = None, **kwargs: Any) -> nnx.Module:
    """Builds the Flax NNX module of a registered model (see :func:`create` for the arguments).

    Use this to work with the NNX module directly, or to build it abstractly without
    allocating parameters: ``nnx.eval_shape(lambda: create_module("wrn28_10", key=key))``.

    Returns:
      An ``nnx.Module`` whose ``__call__(x, *, train=False, key=None)`` returns logits.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {name!r} of type {type(name).__name__}")
    if name not in MODELS:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint}; known models: {', '.join(available())}")
    entry = MODELS[name]
    num_classes = _validate.number("num_classes", num_classes, min=2, integer=True)
    input_shape = entry.input_shape if input_shape is None else _input_shape(input_shape)
    key = _validate.prng_key("key", key)
    mean, std = _normalisation(mean, std, input_shape[-1])
    if activation is not None and not callable(activation):
        raise TypeError("activation must be a callable array -> array replacing the model's ReLU (e.g. "
                        "jax.nn.relu, or an activation quantizer such as lambda x: dorefa_activations(x, "
                        f"bits=4)), or None for the default; got {activation!r} of type {type(activation).__name__}")
    options = _options(entry)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise TypeError(f"model {name!r} got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"its options are: {accepted} (plus num_classes, input_shape, key, mean, std, dtype, activation)")
    common = dict(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std,
                  dtype=_compute_dtype(dtype), activation=activation, rngs=L.ParamKeys(key))
    return entry.build(common, **kwargs)


def create(name: str, *, num_classes: int = 10, input_shape: Sequence[int] | None = None,
           key: jax.Array, mean: float | Sequence[float] | None = None,
           std: float | Sequence[float] | None = None, dtype: Any = None,
           activation: Callable[[jax.Array], jax.Array] | None = None, **kwargs: Any) -> Model:
    """Builds a registered model as a pure :class:`~jaxrob.models.Model`.

    Inputs are NHWC float images in [0, 1]; the model normalises them itself with
    ``(x - mean) / std`` per channel.

    Args:
      name: one of :func:`available` — ``mlp``, ``cnn_small``, ``resnet20``,
        ``resnet32``, ``resnet56``, ``preact_resnet18``, ``wide_resnet``,
        ``wrn28_10``, ``wrn34_10``, ``vgg11_bn``, ``vgg16_bn``, ``mobilenet_v2``.
      num_classes: number of logits, >= 2.
      input_shape: per-example ``(H, W, C)``; defaults to ``(28, 28, 1)`` for ``mlp``
        and ``cnn_small`` and ``(32, 32, 3)`` for the others.
      key: typed PRNG key (``jax.random.key``) for parameter initialisation.
      mean: per-channel mean (a number or ``C`` numbers); defaults to the MNIST
        mean 0.1307 for one channel and the CIFAR-10 mean (0.4914, 0.4822, 0.4465)
        for three; other channel counts must pass ``mean`` and ``std``.
      std: per-channel standard deviation; defaults to 0.3081 (MNIST) and
        (0.2470, 0.2435, 0.2616) (CIFAR-10).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and logits
        are float32 (float64 for ``dtype=jnp.float64`` under ``jax.enable_x64``).
      activation: a callable ``array -> array`` (elementwise, shape-preserving) used
        everywhere the architecture applies its ReLU (ReLU6 for ``mobilenet_v2``):
        hidden layers, residual blocks, stems and pre-activations.  ``None`` (the
        default) keeps ReLU/ReLU6 exactly.  This is how activation quantizers (DoReFa,
        PACT-style clipping) become module options, e.g.
        ``activation=lambda x: dorefa_activations(x, bits=4)``.  It is a static
        attribute of the module (part of the NNX graph definition, not of
        ``variables``), so the parameter pytree and ``nnx.split`` are unchanged; give
        the same function object to build structurally identical models.
      **kwargs: model options — ``mlp``: ``hidden_sizes=(256, 256)``;
        ``wide_resnet``: ``depth=28, width=10, dropout=0.0``; ``wrn28_10``,
        ``wrn34_10``: ``dropout=0.0``; ``mobilenet_v2``: ``width_mult=1.0, dropout=0.0``.

    Returns:
      A :class:`~jaxrob.models.Model` with ``apply_fn(variables, x)`` (eval mode),
      ``train_apply(variables, x, *, key)`` and ``variables = {"params", "batch_stats"}``.
      ``x`` may be a batch ``(N, H, W, C)`` or one example ``(H, W, C)``.

    Raises:
      ValueError: unknown ``name`` (the message lists the known ones) or an invalid value.
      TypeError: an argument of the wrong type (e.g. a non-callable ``activation``) or an
        option the model does not take.

    References:
      Each architecture's class cites its paper: He et al., CVPR 2016 (arXiv:1512.03385);
      He et al., ECCV 2016 (arXiv:1603.05027); Zagoruyko & Komodakis, BMVC 2016
      (arXiv:1605.07146); Simonyan & Zisserman, ICLR 2015 (arXiv:1409.1556); Sandler et al.,
      CVPR 2018 (arXiv:1801.04381).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob import models
      >>> model = models.create("cnn_small", key=jax.random.key(0))
      >>> model.apply_fn(model.variables, jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)
      >>> model.num_params()
      824458
    """
    module = create_module(name, num_classes=num_classes, input_shape=input_shape, key=key, mean=mean,
                           std=std, dtype=dtype, activation=activation, **kwargs)
    return from_nnx(module, name=name, input_shape=module.input_shape, num_classes=module.num_classes)


def create_abstract(name: str, *, num_classes: int = 10, input_shape: Sequence[int] | None = None,
                    key: jax.Array | None = None, mean: float | Sequence[float] | None = None,
                    std: float | Sequence[float] | None = None, dtype: Any = None,
                    activation: Callable[[jax.Array], jax.Array] | None = None, **kwargs: Any) -> Model:
    """Like :func:`create`, but ``variables`` holds ``jax.ShapeDtypeStruct`` leaves: nothing is allocated.

    The model is built under ``nnx.eval_shape``, so this is cheap even for
    WRN-34-10.  Use it to count parameters, to get the jaxpr of ``apply_fn``
    (``jax.make_jaxpr(model.apply_fn)(model.variables, x)``) or shapes
    (``jax.eval_shape(model.apply_fn, model.variables, x)``), or as the target of
    a sharded ``jax.jit`` initialisation or a checkpoint restore.

    Args:
      name, num_classes, input_shape, mean, std, dtype, activation, **kwargs: as for :func:`create`.
      key: optional; only the structure matters, so it defaults to ``jax.random.key(0)``.

    Returns:
      A :class:`~jaxrob.models.Model` whose ``variables`` are abstract.

    Example:
      >>> from jaxrob import models
      >>> models.create_abstract("wrn34_10").num_params()
      46160474
    """
    key = jax.random.key(0) if key is None else key
    module = nnx.eval_shape(lambda: create_module(
        name, num_classes=num_classes, input_shape=input_shape, key=key, mean=mean, std=std,
        dtype=dtype, activation=activation, **kwargs))
    return from_nnx(module, name=name, input_shape=module.input_shape, num_classes=module.num_classes)
