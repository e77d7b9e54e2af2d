"""EnResNet: jointly trained ensembles of ResNets with Gaussian noise on every residual block.

Wang, Yuan, Shi & Osher read a ResNet as a transport equation and add diffusion
to it: every residual block's output ``out`` gets Gaussian noise
``out + a * std(out) * xi``, ``xi ~ N(0, I)`` (a stochastic ResNet, an
Euler-Maruyama step of an SDE), and ``M`` such networks are averaged -- a
Monte-Carlo estimate of the Feynman-Kac formula. The noise stays on at test
time, so an EnResNet is a **randomized** classifier: it is evaluated, and
attacked, with expectation over transformation (EOT).

The pieces:

* :func:`inject_noise` -- ``x + a * std(x) * N(0, I)``, the one noise kernel.
* :class:`NoisyPreActResNet` -- the Flax NNX pre-activation ResNet of
  :mod:`jaxrob.models` with :func:`inject_noise` on every block output
  (through the ``block_output`` hook of
  :class:`~jaxrob.models._resnet.PreActResNet`; no layer is duplicated).
* :func:`noisy_resnet` -- one noisy network as a :class:`~jaxrob.models.Model`
  whose ``apply_fn(variables, x, *, key)`` is randomized.
* :func:`randomized_average` / :func:`randomized_train_apply` -- ``M`` stacked
  randomized members under one ``jax.vmap``, each with its own key, averaged.
* :func:`enresnet` -- the ensemble of ``M`` noisy ResNets as one
  :class:`~jaxrob.models.Model` over stacked variables, ready for
  :func:`jaxrob.train.fit` with ``pgd_at(..., randomized=True)`` (joint
  training: one loss on the averaged logits, gradients to every member).

References:
  Wang, Yuan, Shi & Osher, "ResNets Ensemble via the Feynman-Kac Formalism to
  Improve Natural and Robust Accuracies", NeurIPS 2019, arXiv:1811.10745; code
  github.com/BaoWangMath/EnResNet.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrob import _validate
from jaxrob.ensembles._core import Averaged, Members, _OVER, num_members, stack
from jaxrob.models import _layers as L
from jaxrob.models import _registry
from jaxrob.models._base import Model
from jaxrob.models._resnet import PreActResNet

PyTree = Any

#: ``inject_noise``'s choices for the axes of ``std(out)``.
NOISE_STD = ("example", "batch")
# Noise keys are ``fold_in(fold_in(key, _NOISE_STREAM), block_index)``: a stream of their
# own, so that the dropout keys ``fold_in(key, block_index)`` of the base network are unchanged.
_NOISE_STREAM = 0x6E6F6973


def _check_scale(noise_scale: Any) -> float:
    return float(_validate.number("noise_scale", noise_scale, min=0.0))


def inject_noise(x: jax.Array, scale: float, *, key: jax.Array, std_over: str = "example") -> jax.Array:
    """EnResNet's noise: ``x + scale * std(x) * xi`` with ``xi ~ N(0, I)`` of the shape of ``x``.

    ``std`` is the unbiased (``ddof=1``, as ``torch.std``) standard deviation of
    the entries of ``x``, and the gradient flows through it, as in the authors'
    code. ``std_over="batch"`` takes it over the whole ``(B, ...)`` tensor --
    exactly what the reference code does (``torch.std(out)``, one scalar per
    batch); ``"example"`` takes it per example over the non-batch axes, so that
    an example's prediction does not depend on the other examples of its batch
    (or on the padding of a batched evaluation). For batches of a few dozen
    examples the two scales are close.

    Args:
      x: ``(B, ...)`` activations, ``B >= 1``.
      scale: the noise coefficient ``a >= 0`` (0.1 in the paper); ``0`` returns ``x``.
      key: typed PRNG key.
      std_over: ``"example"`` or ``"batch"``.

    Returns:
      An array of the shape and dtype of ``x``.

    References:
      Wang et al., NeurIPS 2019, arXiv:1811.10745 (noise after each residual
      block; ``out + noise_coef * torch.std(out) * torch.randn_like(out)`` in
      ``resnet_cifar.py`` of BaoWangMath/EnResNet).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.arange(12.0).reshape(2, 6)
      >>> y = inject_noise(x, 0.1, key=jax.random.key(0))
      >>> y.shape, bool(jnp.all(inject_noise(x, 0.0, key=jax.random.key(0)) == x))
      ((2, 6), True)
    """
    _validate.choice("std_over", std_over, NOISE_STD)
    if not isinstance(scale, jax.core.Tracer):
        scale = _check_scale(scale)
        if scale == 0.0:
            return x
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(1, x.ndim)) if std_over == "example" else tuple(range(x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    if n < 2:
        raise ValueError(f"std(out) needs at least 2 entries per {std_over}, got activations of shape {x.shape}")
    std = jnp.std(xf, axis=axes, keepdims=True, ddof=1)
    # Drawn flat and reshaped: XLA:CPU compiles a rank-1 threefry several times faster.
    xi = jax.random.normal(key, (x.size,), xf.dtype).reshape(x.shape)
    return (xf + scale * std * xi).astype(x.dtype)


class NoisyPreActResNet(PreActResNet):
    """A pre-activation ResNet whose every residual block output gets :func:`inject_noise`.

    Same constructor, parameters and layers as
    :class:`~jaxrob.models._resnet.PreActResNet` (so ``noise_scale=0`` is that
    network exactly), plus:

    Args (besides PreActResNet's):
      noise_scale: the coefficient ``a >= 0`` of ``a * std(out) * N(0, I)``.
      noise_std: ``"example"`` or ``"batch"`` (see :func:`inject_noise`).

    The noise is drawn in train and eval mode alike (the model is randomized),
    from ``fold_in(fold_in(key, stream), block_index)`` of the ``key`` passed to
    ``__call__``, which is required whenever ``noise_scale > 0``.

    References:
      Wang et al., NeurIPS 2019, arXiv:1811.10745 (``PreActBasicBlock`` with
      ``noise_coef`` in BaoWangMath/EnResNet: noise after ``out += residual``).
    """

    def __init__(self, *, noise_scale: float = 0.1, noise_std: str = "example", **kwargs):
        super().__init__(**kwargs)
        self.noise_scale = _check_scale(noise_scale)
        self.noise_std = _validate.choice("noise_std", noise_std, NOISE_STD)

    def block_output(self, x, index, *, train, key):
        if self.noise_scale == 0.0:
            return x
        if key is None:
            raise ValueError(f"{type(self).__name__} injects noise (noise_scale={self.noise_scale}) in train and "
                             "eval mode, so it needs a PRNG key: call apply_fn(variables, x, key=...)")
        k = jax.random.fold_in(jax.random.fold_in(key, _NOISE_STREAM), index)
        return inject_noise(x, self.noise_scale, key=k, std_over=self.noise_std)


# --------------------------------------------------------------------------- pure functions


def _randomized_model(module: nnx.Module, *, name: str) -> Model:
    """``Model`` whose ``apply_fn(variables, x, *, key)`` passes ``key`` to the module in eval mode.

    Same variables layout and train mode as :func:`jaxrob.models.from_nnx`, whose
    ``apply_fn`` takes no key.
    """
    graphdef, params, batch_stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{name} has state other than nnx.Param and nnx.BatchStat; it cannot be made pure")
    params_tpl = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    stats_tpl = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch_stats)

    def merge(variables):
        p = jax.tree.map(lambda a: a, params_tpl)
        nnx.replace_by_pure_dict(p, variables["params"])
        s = jax.tree.map(lambda a: a, stats_tpl)
        nnx.replace_by_pure_dict(s, variables.get("batch_stats", {}))
        return nnx.merge(graphdef, p, s)

    def apply_fn(variables: PyTree, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        return merge(variables)(x, train=False, key=key)

    def train_apply(variables: PyTree, x: jax.Array, *, key: jax.Array | None = None) -> tuple[jax.Array, PyTree]:
        m = merge(variables)
        logits = m(x, train=True, key=key)
        return logits, nnx.to_pure_dict(nnx.split(m, nnx.BatchStat, ...)[1])

    variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
    return Model(apply_fn=apply_fn, train_apply=train_apply, variables=variables, name=name,
                 input_shape=tuple(module.input_shape), num_classes=int(module.num_classes))


def _architecture(depth: Any, width: Any) -> tuple[int, int]:
    depth = _validate.number("depth", depth, min=8, integer=True)
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    width = _validate.number("width", width, min=1, integer=True)
    return (depth - 2) // 6, width


def noisy_resnet(*, key: jax.Array, depth: int = 20, width: int = 16, noise_scale: float = 0.1,
                 noise_std: str = "example", num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3),
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 dtype: Any = None) -> Model:
    """One noisy pre-activation ResNet-``depth`` (EnResNet's member) as a randomized :class:`~jaxrob.models.Model`.

    The architecture of the authors' ``PreAct_ResNet_Cifar``: a 3x3 stem conv of
    ``width`` channels, three stages of ``n = (depth - 2) / 6`` pre-activation
    basic blocks of ``width, 2 width, 4 width`` channels (strides 1, 2, 2; 1x1
    convolution shortcuts where the shape changes), BN-ReLU, global average
    pooling and a linear classifier; :func:`inject_noise` after every block.
    With ``width=16`` it has 272,282 parameters (ResNet-20, 10 classes).

    Args:
      key: typed PRNG key for the initialisation.
      depth: ``6n + 2`` (20 for ResNet-20).
      width: channels of the stem and the first stage, ``>= 1``.
      noise_scale: ``a >= 0``; ``0`` gives the plain pre-activation ResNet.
      noise_std: ``"example"`` or ``"batch"`` (the reference code's); see :func:`inject_noise`.
      num_classes, input_shape, mean, std, dtype: as for :func:`jaxrob.models.create`
        (``(H, W, C)`` inputs in [0, 1], normalised inside the model).

    Returns:
      A :class:`~jaxrob.models.Model` whose ``apply_fn(variables, x, *, key)``
      (eval mode) and ``train_apply(variables, x, *, key) -> (logits,
      batch_stats)`` both draw the noise from ``key``; use it with
      ``randomized=True`` in :mod:`jaxrob.attacks`. ``key`` may be omitted only
      when ``noise_scale=0`` (a deterministic model usable as ``apply_fn(variables, x)``).

    References:
      Wang et al., NeurIPS 2019, arXiv:1811.10745. He et al., "Identity Mappings
      in Deep Residual Networks", ECCV 2016, arXiv:1603.05027.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> net = noisy_resnet(depth=8, width=4, input_shape=(8, 8, 1), key=jax.random.key(0))
      >>> x = jnp.zeros((2, 8, 8, 1))
      >>> net.apply_fn(net.variables, x, key=jax.random.key(1)).shape
      (2, 10)
    """
    key = _validate.prng_key("key", key)
    n, width = _architecture(depth, width)
    noise_scale = _check_scale(noise_scale)
    _validate.choice("noise_std", noise_std, NOISE_STD)
    num_classes = _validate.number("num_classes", num_classes, min=2, integer=True)
    input_shape = _registry._input_shape(input_shape)
    mean, std = _registry._normalisation(mean, std, input_shape[-1])
    module = NoisyPreActResNet(
        noise_scale=noise_scale, noise_std=noise_std, input_shape=input_shape, num_classes=num_classes,
        mean=mean, std=std, dtype=_registry._compute_dtype(dtype), stem_width=width,
        widths=(width, 2 * width, 4 * width), blocks=(n, n, n), strides=(1, 2, 2), rngs=L.ParamKeys(key))
    return _randomized_model(module, name=f"noisy_preact_resnet{depth}")


# --------------------------------------------------------------------------- ensembles


@dataclasses.dataclass(frozen=True)
class _Keyed:
    """``f((params, key), x) = apply_fn(params, x, key=key)``: a randomized member as a ``Members`` function."""

    apply_fn: Callable[..., jax.Array]

    def __call__(self, params_and_key: tuple[PyTree, jax.Array], x: jax.Array) -> jax.Array:
        params, key = params_and_key
        return self.apply_fn(params, x, key=key)


def _resolve_unroll(unroll: bool | None) -> bool:
    if unroll is None:
        # XLA:CPU lowers a convolution whose kernel is batched by vmap to a grouped convolution that
        # was measured ~6x slower (forward + backward, 2 members of a small ResNet) than the members'
        # convolutions one after the other; accelerators handle the vmapped form well.
        return jax.default_backend() == "cpu"
    if not isinstance(unroll, bool):
        raise TypeError(f"unroll must be a bool or None (automatic: unrolled on CPU only), got {unroll!r}")
    return unroll


@dataclasses.dataclass(frozen=True)
class RandomizedAveraged:
    """A randomized ensemble ``f(params, x, *, key) -> (B, C)``; see :func:`randomized_average`."""

    averaged: Averaged

    def member_logits(self, params: PyTree, x: jax.Array, *, key: jax.Array) -> jax.Array:
        """``(M, B, C)`` logits of the members, member ``i`` drawing from ``split(key, M)[i]``."""
        keys = jax.random.split(key, num_members(params))
        return self.averaged.members((params, keys), x)

    def __call__(self, params: PyTree, x: jax.Array, *, key: jax.Array) -> jax.Array:
        return self.averaged((params, jax.random.split(key, num_members(params))), x)


def randomized_average(apply_fn: Callable[..., jax.Array], *, over: str = "logits",
                       unroll: bool | None = None) -> RandomizedAveraged:
    """An ensemble of randomized members as one randomized ``apply_fn(params, x, *, key)``.

    ``params`` are stacked member variables (:func:`jaxrob.ensembles.stack`);
    the ``M`` members run under one ``jax.vmap`` (:class:`jaxrob.ensembles.Members`),
    member ``i`` with its own key ``jax.random.split(key, M)[i]``, and their
    logits (or probabilities) are averaged as in :func:`jaxrob.ensembles.average`.

    Args:
      apply_fn: a randomized member ``apply_fn(params, x, *, key) -> (B, C)``.
      over: ``"logits"`` (EnResNet's choice: the reference code averages the
        members' outputs before the softmax) or ``"probs"``.
      unroll: evaluate the members by an unrolled loop over the member axis
        instead of ``jax.vmap`` (same values up to float rounding); ``None``
        unrolls on the CPU backend only, where XLA runs a vmapped convolution
        (batched kernels become a grouped convolution) several times slower.

    Returns:
      A hashable randomized ``apply_fn``, for the attacks and
      :func:`jaxrob.attacks.accuracy` with ``randomized=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.ensembles import stack
      >>> noisy = lambda p, x, *, key: x @ p + jax.random.normal(key, (x.shape[0], 2))
      >>> f = randomized_average(noisy)
      >>> f(stack([jnp.eye(2)] * 3), jnp.ones((4, 2)), key=jax.random.key(0)).shape
      (4, 2)
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x, *, key), got {apply_fn!r}")
    _validate.choice("over", over, _OVER)
    keyed = _Keyed(apply_fn)
    if unroll is not None and not isinstance(unroll, bool):
        raise TypeError(f"unroll must be a bool or None (automatic: unrolled on CPU only), got {unroll!r}")
    return RandomizedAveraged(Averaged(Members(keyed, unroll=unroll), over))


@dataclasses.dataclass(frozen=True)
class RandomizedTrainApply:
    """The ensemble's ``train_apply``; see :func:`randomized_train_apply`."""

    train_apply: Callable[..., tuple[jax.Array, PyTree]]
    unroll: bool = False

    def __call__(self, variables: PyTree, x: jax.Array, *, key: jax.Array) -> tuple[jax.Array, PyTree]:
        m = num_members(variables["params"])
        keys = jax.random.split(key, m)
        if self.unroll:
            outs = [self.train_apply(jax.tree.map(lambda a, i=i: a[i], variables), x, key=keys[i])
                    for i in range(m)]
            logits = jnp.stack([o[0] for o in outs])
            stats = jax.tree.map(lambda *a: jnp.stack(a), *[o[1] for o in outs])
        else:
            logits, stats = jax.vmap(lambda v, k: self.train_apply(v, x, key=k))(variables, keys)
        return jnp.mean(logits.astype(jnp.float32), axis=0), stats


def randomized_train_apply(train_apply: Callable[..., tuple[jax.Array, PyTree]], *,
                           unroll: bool | None = None) -> RandomizedTrainApply:
    """Joint training of stacked members: ``(mean of the members' train-mode logits, stacked batch_stats)``.

    Called as ``f(variables, x, *, key)`` with stacked ``variables = {"params",
    "batch_stats"}``; member ``i`` runs ``train_apply(variables_i, x,
    key=split(key, M)[i])`` under one ``jax.vmap`` (its own batch statistics and
    noise). A loss on the averaged logits sends gradients to every member --
    EnResNet's joint training.

    Args:
      train_apply: a member's ``train_apply(variables, x, *, key) -> (logits, batch_stats)``.
      unroll: as for :func:`randomized_average`.

    Returns:
      A hashable ``train_apply`` for :func:`jaxrob.train.make_train_step` / :func:`jaxrob.train.fit`.
    """
    if not callable(train_apply):
        raise TypeError(f"train_apply must be callable as train_apply(variables, x, *, key), got {train_apply!r}")
    return RandomizedTrainApply(train_apply, _resolve_unroll(unroll))


def enresnet(num_members: int = 2, *, key: jax.Array, depth: int = 20, width: int = 16,
             noise_scale: float = 0.1, noise_std: str = "example", num_classes: int = 10,
             input_shape: Sequence[int] = (32, 32, 3), mean: float | Sequence[float] | None = None,
             std: float | Sequence[float] | None = None, dtype: Any = None, unroll: bool | None = None) -> Model:
    """En\\ :sub:`M`\\ ResNet-``depth``: ``M`` noisy pre-activation ResNets, jointly trained, logits averaged.

    The members are :func:`noisy_resnet` networks initialised from
    ``fold_in(key, i)``; their variables are stacked (leading axis ``M``) and run
    under one ``jax.vmap`` (or, on CPU, an unrolled loop: see ``unroll``). Both
    functions of the returned model are randomized and draw independent noise
    for every member:

    * ``apply_fn(variables, x, *, key)`` -- eval mode, mean of the members'
      logits (as in the reference ``Ensemble_PreAct_ResNet_Cifar``);
    * ``train_apply(variables, x, *, key)`` -- train mode, mean logits and the
      stacked new batch statistics.

    Train it with ``jaxrob.train.fit(model, data, loss=pgd_at(0.031, steps=10,
    step_size=0.007, randomized=True), ...)``: PGD runs through the randomized
    ensemble and the cross-entropy of the averaged logits trains all members
    jointly. Evaluate it with ``randomized=True`` (and ``eot_samples > 1`` for
    the attacks), e.g. :func:`jaxrob.attacks.robust_accuracy`.

    Args:
      num_members: ``M >= 1`` (the paper uses 1, 2 and 5).
      key: typed PRNG key for the initialisation.
      depth, width, noise_scale, noise_std, num_classes, input_shape, mean, std, dtype:
        as for :func:`noisy_resnet` (``noise_scale=0.1`` is the paper's).
      unroll: members by ``jax.vmap`` (False) or an unrolled loop (True); ``None``
        unrolls on CPU only (see :func:`randomized_average`).

    Returns:
      A :class:`~jaxrob.models.Model` named ``en{M}_preact_resnet{depth}`` with
      ``M`` times the parameters of one member.

    References:
      Wang, Yuan, Shi & Osher, "ResNets Ensemble via the Feynman-Kac Formalism to
      Improve Natural and Robust Accuracies", NeurIPS 2019, arXiv:1811.10745.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> net = enresnet(2, depth=8, width=4, input_shape=(8, 8, 1), key=jax.random.key(0))
      >>> net.num_params() == 2 * noisy_resnet(depth=8, width=4, input_shape=(8, 8, 1),
      ...                                      key=jax.random.key(0)).num_params()
      True
      >>> net.apply_fn(net.variables, jnp.zeros((3, 8, 8, 1)), key=jax.random.key(1)).shape
      (3, 10)
    """
    key = _validate.prng_key("key", key)
    m = _validate.number("num_members", num_members, min=1, integer=True)
    unroll = _resolve_unroll(unroll)
    members = [noisy_resnet(key=jax.random.fold_in(key, i), depth=depth, width=width, noise_scale=noise_scale,
                            noise_std=noise_std, num_classes=num_classes, input_shape=input_shape, mean=mean,
                            std=std, dtype=dtype) for i in range(m)]
    first = members[0]
    return Model(apply_fn=randomized_average(first.apply_fn, unroll=unroll),
                 train_apply=randomized_train_apply(first.train_apply, unroll=unroll),
                 variables=stack([net.variables for net in members]), name=f"en{m}_preact_resnet{depth}",
                 input_shape=first.input_shape, num_classes=first.num_classes)
