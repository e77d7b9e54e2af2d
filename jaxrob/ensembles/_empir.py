"""EMPIR: ensembles of mixed-precision networks with a majority vote.

An EMPIR ensemble (Sen, Ravindran & Raghunathan, ICLR 2020) combines a few
independently trained copies of one architecture at different numerical
precisions -- e.g. on MNIST two members with 2-bit weights and 4-bit activations
and one full-precision member -- and classifies by vote:

* every member votes for its arg-max class;
* a class with a majority of the votes (2 of 3) wins;
* otherwise the full-precision member decides.

This matches the authors' code (sancharisen/EMPIR, ``ensembleThreeModel``: the
class with the most votes if its count is at least 2, else the prediction of
the third, full-precision, model).

Pieces:

* :func:`empir_vote`: the vote on the members' ``(M, B, C)`` logits;
* :func:`empir` -> :class:`EMPIR`: the voting ensemble as an ``apply_fn``
  returning one-hot votes (for :func:`jaxrob.attacks.accuracy`; it has no
  useful gradient);
* :func:`empir_attack_probs` / :func:`empir_surrogate` -> :class:`EMPIRSurrogate`:
  what the authors' attacks differentiate (the mean softmax of the members
  that agree with the vote, used as logits);
* :func:`mixed_precision_model`: a registry model with DoReFa-quantized weights
  and activations (and inputs), trainable by :func:`jaxrob.train.fit` (QAT with
  the straight-through estimator).

An adaptive attack needs none of the above: PGD or APGD on
``jaxrob.ensembles.average(members, over="probs")`` (cross-entropy of the
members' mean softmax, differentiated through the straight-through estimators)
ignores the vote's piecewise-constant selection.  A public adaptive evaluation
of the authors' CIFAR-10 EMPIR model with this attack (PGD, eps 0.031, 100
steps) reported 1.41% robust accuracy against the paper's 26.78% average
adversarial accuracy; ``experiments/empir.py`` reports both kinds of attack.

References:
  Sen, Ravindran & Raghunathan, "EMPIR: Ensembles of Mixed Precision Deep
  Networks for Increased Robustness against Adversarial Attacks", ICLR 2020,
  arXiv:2004.10162 (code: github.com/sancharisen/EMPIR).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrob import _validate
from jaxrob.ensembles._core import Members, as_members

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

#: Precisions at or above this many bits are full precision (no quantizer), as in the authors' code.
FULL_PRECISION = 32


def _check_logits(logits: Any) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] < 1 or logits.shape[-1] < 2:
        raise ValueError("logits must be (M, B, C) member logits (M >= 1 members, C >= 2 classes), "
                         f"got shape {logits.shape}")
    return logits


def _resolve(num_members: int, fallback: Any, min_votes: Any) -> tuple[int, int]:
    if isinstance(fallback, bool) or not isinstance(fallback, numbers.Integral):
        raise TypeError(f"fallback must be an int member index, got {fallback!r}")
    if not -num_members <= fallback < num_members:
        raise ValueError(f"fallback={fallback} is not a member index for {num_members} members "
                         f"(allowed: {-num_members}..{num_members - 1})")
    if min_votes is None:
        min_votes = num_members // 2 + 1
    min_votes = _validate.number("min_votes", min_votes, min=1, max=num_members, integer=True)
    return int(fallback) % num_members, int(min_votes)


def empir_vote(logits: jax.typing.ArrayLike, *, fallback: int = -1, min_votes: int | None = None) -> jax.Array:
    """EMPIR's prediction: the class with at least ``min_votes`` member votes, else member ``fallback``'s.

    Args:
      logits: ``(M, B, C)`` logits (or probabilities) of the ``M`` members.
      fallback: index of the member that decides when no class has ``min_votes``
        votes -- the full-precision member (the last one in the paper's order).
      min_votes: votes a class needs to win; default a strict majority,
        ``M // 2 + 1`` (2 of 3, as in the paper).  With ``min_votes <= M / 2``
        two classes may both qualify; the lower class index wins then.

    Returns:
      ``(B,)`` int32 predicted classes.

    Raises:
      ValueError: ``logits`` not 3-D, ``fallback`` out of range or ``min_votes`` not in ``1..M``.
      TypeError: ``fallback`` not an int.

    References:
      Sen, Ravindran & Raghunathan, ICLR 2020, arXiv:2004.10162 (``ensembleThreeModel.fprop``
      in sancharisen/EMPIR: max vote if its count is >= 2, else the full-precision model).

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[[1., 0, 0], [0, 1, 0]],    # member 0 votes 0, 1
      ...                [[1., 0, 0], [0, 0, 1]],    # member 1 votes 0, 2
      ...                [[0., 1, 0], [1, 0, 0]]])   # member 2 (FP) votes 1, 0
      >>> empir_vote(z).tolist()                  # 2 votes for class 0; no majority -> FP's 0
      [0, 0]
    """
    logits = _check_logits(logits)
    m, _, c = logits.shape
    fallback, min_votes = _resolve(m, fallback, min_votes)
    preds = jnp.argmax(logits, axis=-1)  # (M, B)
    counts = jnp.sum(jax.nn.one_hot(preds, c, dtype=jnp.int32), axis=0)  # (B, C)
    top = jnp.argmax(counts, axis=-1)
    won = jnp.max(counts, axis=-1) >= min_votes
    return jnp.where(won, top, preds[fallback]).astype(jnp.int32)


def empir_attack_probs(logits: jax.typing.ArrayLike, *, fallback: int = -1,
                       min_votes: int | None = None) -> jax.Array:
    """The mean softmax of the members whose prediction equals the EMPIR vote.

    This is the tensor the authors' attacks differentiate (``combinedAvgCorrectProb``
    in sancharisen/EMPIR).  The vote and the member selection are piecewise
    constant, so gradients flow only through the selected members' softmaxes.

    Args:
      logits: ``(M, B, C)`` member logits.
      fallback, min_votes: as for :func:`empir_vote`.

    Returns:
      ``(B, C)`` probabilities (each row sums to 1).
    """
    logits = _check_logits(logits)
    vote = jax.lax.stop_gradient(empir_vote(logits, fallback=fallback, min_votes=min_votes))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    agree = (jnp.argmax(logits, axis=-1) == vote[None]).astype(jnp.float32)  # (M, B): >= 1 member per example
    return jnp.einsum("mb,mbc->bc", agree, probs) / jnp.sum(agree, axis=0)[:, None]


@dataclasses.dataclass(frozen=True)
class EMPIR:
    """An EMPIR ensemble ``apply_fn(params, x) -> (B, C)`` one-hot votes; see :func:`empir`."""

    members: Members
    fallback: int = -1
    min_votes: int | None = None

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        logits = self.members(params, x)
        vote = empir_vote(jax.lax.stop_gradient(logits), fallback=self.fallback, min_votes=self.min_votes)
        return jax.nn.one_hot(vote, logits.shape[-1], dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class EMPIRSurrogate:
    """``apply_fn(params, x) -> (B, C)``: :func:`empir_attack_probs` used as logits; see :func:`empir_surrogate`."""

    members: Members
    fallback: int = -1
    min_votes: int | None = None

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        return empir_attack_probs(self.members(params, x), fallback=self.fallback, min_votes=self.min_votes)


def _checked(members: Members | ApplyFn, fallback: Any, min_votes: Any) -> Members:
    members = as_members(members)
    if isinstance(fallback, bool) or not isinstance(fallback, numbers.Integral):
        raise TypeError(f"fallback must be an int member index, got {fallback!r}")
    if min_votes is not None:
        _validate.number("min_votes", min_votes, min=1, integer=True)
    return members


def empir(members: Members | ApplyFn, *, fallback: int = -1, min_votes: int | None = None) -> EMPIR:
    """An EMPIR voting ensemble as one ``apply_fn``.

    ``f(params, x)`` returns the one-hot encoding of :func:`empir_vote` on the
    members' logits, so ``argmax`` of it is EMPIR's prediction and
    :func:`jaxrob.attacks.accuracy` evaluates it.  Its gradient is zero (a vote):
    attack it through :func:`empir_surrogate` (the authors' attacks) or through
    ``average(members, over="probs")`` (an adaptive attack), then evaluate here.

    Args:
      members: a :class:`Members` (e.g. ``Members(qnet.apply_fn, qnet.apply_fn, fp.apply_fn)``
        with one member per group when precisions differ, or one ``apply_fn`` for stacked params).
      fallback: member that decides without a majority (the full-precision one; default the last).
      min_votes: votes needed to win; default ``M // 2 + 1``.

    Returns:
      A hashable :class:`EMPIR` ``apply_fn``.

    References:
      Sen, Ravindran & Raghunathan, ICLR 2020, arXiv:2004.10162.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob.ensembles import stack
      >>> f = empir(lambda p, x: x @ p)
      >>> w = stack([jnp.eye(2), jnp.eye(2), jnp.eye(2)[::-1]])
      >>> f(w, jnp.array([[2.0, 1.0]])).tolist()   # two members say 0, the last says 1
      [[1.0, 0.0]]
    """
    return EMPIR(_checked(members, fallback, min_votes), int(fallback), min_votes)


def empir_surrogate(members: Members | ApplyFn, *, fallback: int = -1,
                    min_votes: int | None = None) -> EMPIRSurrogate:
    """The function the EMPIR authors attack, as an ``apply_fn`` for :func:`jaxrob.attacks.pgd`/``fgsm``.

    ``f(params, x)`` is :func:`empir_attack_probs`: the mean softmax of the
    members agreeing with the vote.  The authors' code feeds these
    probabilities to a softmax cross-entropy as if they were logits (CleverHans
    ``model_loss`` only strips a softmax it can see in the graph), so
    ``pgd(f, ...)`` with the default ``loss="ce"`` reproduces their objective,
    ``CE(softmax(p_agree), y)``; the labels are the ensemble's own predictions on
    the clean input (CleverHans' default, to avoid label leaking).

    Args:
      members, fallback, min_votes: as for :func:`empir`.

    Returns:
      A hashable :class:`EMPIRSurrogate` ``apply_fn``.

    References:
      Sen, Ravindran & Raghunathan, ICLR 2020, arXiv:2004.10162 (``get_combinedAvgCorrectProbs`` and
      the ``ensembleThree`` branches of ``cleverhans/attacks.py`` in sancharisen/EMPIR).
    """
    return EMPIRSurrogate(_checked(members, fallback, min_votes), int(fallback), min_votes)


# --------------------------------------------------------------------------- members


@dataclasses.dataclass(frozen=True)
class DorefaActivation:
    """``x -> dorefa_activations(x, bits=bits)``: a hashable activation for ``models.create(activation=...)``.

    Replaces the ReLU: ``quantize_k(clip(x, 0, 1))`` (``clip(relu(x), 0, 1) = clip(x, 0, 1)``).
    """

    bits: int

    def __call__(self, x: jax.Array) -> jax.Array:
        from jaxrob.quant._dorefa import dorefa_activations
        return dorefa_activations(x, bits=self.bits)


@dataclasses.dataclass(frozen=True)
class DorefaWeights:
    """``w -> dorefa_weights(w, bits=bits)``, hashable (one compile per precision)."""

    bits: int

    def __call__(self, w: jax.Array) -> jax.Array:
        from jaxrob.quant._dorefa import dorefa_weights
        return dorefa_weights(w, bits=self.bits)


@dataclasses.dataclass(frozen=True)
class _InputQuantized:
    """``fn(variables, x, ...) = inner(variables, quantize_input(x, bits), ...)`` (BPDA gradient)."""

    inner: Callable[..., Any]
    bits: int

    def __call__(self, variables, x, **kwargs):
        from jaxrob.quant._input import quantize_input
        return self.inner(variables, quantize_input(x, bits=self.bits), **kwargs)


#: Top-level names of the classifier layer in the registry's models (kept in float by default).
CLASSIFIER_LAYERS = ("head", "fc", "fc2")


def hidden_kernels(path: str, leaf: Any) -> bool:
    """``where`` predicate: every ``kernel`` except the classifier's (``head``, ``fc`` or ``fc2``).

    The authors' low-precision networks quantize every convolution but keep the
    final ``Linear`` layer in full precision; this selects the same weights in
    the registry's models.
    """
    del leaf
    parts = path.split("/")
    return parts[-1] == "kernel" and parts[0] not in CLASSIFIER_LAYERS


def _bits(name: str, value: Any) -> int:
    value = _validate.number(name, value, min=1, integer=True)
    if 16 < value < FULL_PRECISION:
        raise ValueError(f"{name} must be 1..16 (quantized) or >= {FULL_PRECISION} (full precision), got {value}")
    return int(value)


def mixed_precision_model(name: str, *, weight_bits: int, activation_bits: int, key: jax.Array,
                          quantize_inputs: bool = True, where: Callable[[tuple, jax.Array], bool] | None = None,
                          **kwargs: Any):
    """A registry model with DoReFa ``weight_bits`` weights and ``activation_bits`` activations.

    Bits ``>= 32`` mean full precision (no quantizer), as in the paper.  The
    activation quantizer replaces every ReLU through ``models.create(activation=...)``;
    the weight quantizer is applied to the kernels inside ``apply_fn`` and
    ``train_apply`` by :func:`jaxrob.quant._tree.quantized_model`, so
    :func:`jaxrob.train.fit` trains the float weights through the STE (QAT).
    With ``quantize_inputs`` (default, as in the authors' low-precision layers,
    which quantize every layer's input including the image) the image is reduced
    to ``activation_bits`` bits before the first layer (identity gradient, BPDA).

    Args:
      name: registry model name (``mlp``, ``cnn_small``, ...).
      weight_bits: 1..16, or >= 32 for float weights.
      activation_bits: 1..16, or >= 32 for ReLU activations.
      key: initialisation key.
      quantize_inputs: also quantize the input image (only when ``activation_bits < 32``).
      where: which weight leaves are quantized (see ``quantized_model``); default
        :func:`hidden_kernels` (every kernel but the classifier's, as in the paper).
      **kwargs: passed to :func:`jaxrob.models.create`.

    Returns:
      A :class:`jaxrob.models.Model` (same ``variables`` layout as the float model).

    References:
      Zhou et al., "DoReFa-Net", arXiv:1606.06160; Sen et al., ICLR 2020, arXiv:2004.10162.
    """
    from jaxrob import models
    weight_bits = _bits("weight_bits", weight_bits)
    activation_bits = _bits("activation_bits", activation_bits)
    if not isinstance(quantize_inputs, bool):
        raise TypeError(f"quantize_inputs must be a bool, got {quantize_inputs!r}")
    act = DorefaActivation(activation_bits) if activation_bits < FULL_PRECISION else None
    model = models.create(name, key=key, activation=act, **kwargs)
    if weight_bits < FULL_PRECISION:
        from jaxrob.quant._tree import quantized_model
        model = quantized_model(model, DorefaWeights(weight_bits), where=hidden_kernels if where is None else where)
    if quantize_inputs and activation_bits < FULL_PRECISION:
        model = dataclasses.replace(model, apply_fn=_InputQuantized(model.apply_fn, activation_bits),
                                    train_apply=_InputQuantized(model.train_apply, activation_bits))
    return dataclasses.replace(model, name=f"{model.name}_w{weight_bits}a{activation_bits}")
