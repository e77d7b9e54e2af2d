"""Utilized rank: projecting each layer onto the subspaces where data and weights interact.

A trained weight matrix is usually full rank, yet the layer only ever sees inputs
from a low-dimensional part of its input space and only produces outputs in a
low-dimensional part of its output space.  Garg et al. (2024) project the weight
onto those two data-driven subspaces.  The projected weight computes (nearly) the
same function on the data, has rank at most ``min(k_S, k_T)``, and can be
factorised into two thin matrices.  The fraction of the available rank a layer
uses is its *utilization*; its mean over layers is the *mean layer utilization*
(MLU).

For one layer ``y = x @ M + b`` with kernel matrix ``M`` of shape
``(d_in, d_out)`` (a convolution is the same matmul on im2col patches, ``d_in =
C_in * kh * kw``):

1. **Input subspace S.**  Over a batch of data, gather the layer's inputs as rows
   of ``X`` (``n x d_in``; for a convolution every output pixel's patch is one
   row) and take ``G_S = X^T X``.  Its eigenvectors, largest eigenvalue first, are
   the right singular vectors of ``X``.  ``k_S`` is the smallest number of them
   whose eigenvalues hold an ``energy`` fraction of ``trace(G_S)`` (the squared
   Frobenius norm of ``X``), and ``P_S = U_S U_S^T`` (``d_in x d_in``).
2. **Output subspace T.**  Likewise on the layer's outputs ``Y = X M`` (bias
   excluded): ``G_T = M^T G_S M``, ``k_T`` from ``out_energy``, ``P_T = U_T U_T^T``.
3. **Projection.**  ``M' = P_S M P_T``, reshaped back to the kernel's layout, so the
   same ``apply_fn`` runs on the projected parameters.  ``rank(M') <= r = min(k_S,
   k_T)``, the layer's *utilized rank*.
4. **Utilization** ``r / min(d_in, d_out)``, in ``[0, 1]``.  **MLU** is its
   unweighted mean over the projected layers.
5. **Compression.**  ``M' = A B`` with ``A`` ``d_in x r`` and ``B`` ``r x d_out``
   (truncated SVD of ``M'``, exact since ``rank(M') <= r``): ``r (d_in + d_out)``
   instead of ``d_in d_out`` weights.  A layer is factorised only when that is
   smaller.  A convolution becomes a ``kh x kw`` convolution to ``r`` channels
   followed by a 1x1 convolution.

When every layer keeps all of its data's energy (``energy=1``) the projection does
not change any layer's outputs on the data it was fitted on.  If the data span only
an ``r``-dimensional input subspace, keeping that subspace (any ``energy`` below 1
that the data's non-zero spectrum reaches) compresses the layer to rank ``r`` with
no change in its outputs on those data.

Choices where the paper, as far as we could read it, leaves details open (only its
abstract and a summary were available to us):

* **Uncentred energy.**  ``G_S`` is the second-moment matrix ``X^T X``, not the
  covariance, so that keeping all the energy reproduces ``X`` exactly (a mean
  direction is kept as well).
* **Noise floor.**  Eigenvalues below ``10 * eps(float32) * lambda_max`` (for the
  outputs, ``lambda_max(X^T X) * ||M||_2^2``) are rounding noise of the float32
  Gram matrices and count as zero energy.
* **Output subspace from the unprojected outputs** ``X M`` (not ``X P_S M``).
* **All layers from one pass of the original network.**  Every layer's subspaces
  come from the inputs it receives in the unmodified model, and all layers are then
  projected together.  Errors of earlier layers therefore compound with ``energy <
  1``; the experiment picks the energy from the accuracy of the whole projected
  model.
* **One energy threshold for all layers** (plus an optional separate one for the
  outputs).  The experiment sweeps it and keeps the smallest one whose accuracy
  drop on held-out training data stays within a tolerance.
* **Utilized rank** is ``min(k_S, k_T)``, the bound on ``rank(M')``.
* **Fine-tuning** (:func:`projected_model`) trains the full kernels through the
  projection: the network evaluates ``apply_fn(project(params), x)``, so every
  effective weight stays in its fixed subspaces (rank at most ``r``) throughout
  training, and ``project(final_params)`` factorises exactly as before.  This is
  training the ``k_S x k_T`` core ``U_S^T M U_T`` with the subspaces frozen; a
  factorised ``(A, B)`` fine-tune, which lets the subspaces move, is not built.

**Finding the layers, generically.**  ``apply_fn(params, x)`` is traced to a jaxpr
and re-evaluated equation by equation by a small interpreter that follows where
each leaf of ``params`` goes.  Every ``dot_general`` whose right operand is a
leaf (directly, or through ``convert_element_type``/``copy``, and inside nested
``jit``/``custom_jvp``/``custom_vjp``/``remat`` calls) is a dense layer, and every
``conv_general_dilated`` with a leaf filter is a convolution; the interpreter
records the left operand, i.e. the layer's input.  So any JAX model (Flax NNX or
Linen, Equinox, a plain function) works, with no layer lists and no module hooks.
Not handled: kernels used inside ``scan``/``while``/``cond`` bodies (left out),
grouped and depthwise convolutions (``feature_group_count > 1``, left out), and
kernels used by more than one operation (their inputs are pooled).  A dense layer
must use a 2-D kernel, contracted on one axis (``(in, out)``, or ``(out, in)``
as in PyTorch).

Example:
  >>> import jax
  >>> from jaxrob import models
  >>> from jaxrob.prune._lowrank import fit_subspaces, project, mean_layer_utilization
  >>> net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
  >>> x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  >>> subs = fit_subspaces(net.apply_fn, net.variables, x, energy=0.99)
  >>> sorted(subs)
  ['params/head/kernel', 'params/hidden/0/kernel']
  >>> logits = net.apply_fn(project(net.variables, subs), x)
  >>> 0.0 <= float(mean_layer_utilization(subs)) <= 1.0
  True

References:
  Isha Garg, Christian Koguchi, Eshan Verma, Daniel Ulbricht, "Revealing the
  Utilized Rank of Subspaces of Learning in Neural Networks", 2024 (ICML 2024
  workshop), arXiv:2407.04797.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.typing import ArrayLike

from jaxrob import _validate

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

__all__ = [
    "LayerSpec", "LayerStats", "LayerSubspace", "LowRankFactors", "find_layers", "layer_inputs",
    "input_stats", "subspaces", "fit_subspaces", "project", "utilization", "mean_layer_utilization",
    "factorize", "compression", "projected_model",
]


# ----------------------------------------------------------------------------------------------
# Layer descriptions
# ----------------------------------------------------------------------------------------------

@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A dense or convolutional layer found in ``apply_fn`` (static: no arrays).

    The kernel leaf ``K`` is seen as the matrix ``M = K.transpose(perm).reshape(d_in,
    d_out)`` acting on rows of layer inputs (``y = x @ M``).

    Attributes:
      name: the leaf's path in the ``params`` pytree, keys joined by ``/``
        (``"params/conv1/kernel"`` for a jaxrob model's variables).
      kind: ``"dense"`` or ``"conv"``.
      kernel_shape: shape of the kernel leaf.
      perm: axes of the kernel in the order (input axes..., output axis).
      d_in: input dimension (``C_in * prod(window)`` for a convolution).
      d_out: output dimension (output features / channels).
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    perm: tuple[int, ...]
    d_in: int
    d_out: int

    def to_matrix(self, kernel: jax.Array) -> jax.Array:
        """``(d_in, d_out)`` matrix of a kernel of shape ``kernel_shape``."""
        return jnp.transpose(kernel, self.perm).reshape(self.d_in, self.d_out)

    def from_matrix(self, matrix: jax.Array) -> jax.Array:
        """Inverse of :meth:`to_matrix`."""
        shape = tuple(self.kernel_shape[i] for i in self.perm)
        return jnp.transpose(matrix.reshape(shape), tuple(int(i) for i in np.argsort(self.perm)))


class LayerStats(NamedTuple):
    """Second moments of one layer's inputs and their eigen-decomposition.

    Attributes:
      spec: the layer (static).
      gram: ``X^T X`` summed over the data, ``(d_in, d_in)``.
      eigvals: eigenvalues of ``gram``, largest first, clipped at 0, ``(d_in,)``.
      eigvecs: matching eigenvectors as columns, ``(d_in, d_in)``.
    """

    spec: LayerSpec
    gram: jax.Array
    eigvals: jax.Array
    eigvecs: jax.Array


class LayerSubspace(NamedTuple):
    """One layer's data-driven subspaces and utilization.

    Attributes:
      spec: the layer (static).
      p_in: ``P_S``, orthogonal projector onto the input subspace, ``(d_in, d_in)``.
      p_out: ``P_T``, orthogonal projector onto the output subspace, ``(d_out, d_out)``.
      k_in: ``k_S = dim S`` (int32 scalar).
      k_out: ``k_T = dim T`` (int32 scalar).
      rank: utilized rank ``r = min(k_S, k_T)`` (int32 scalar).
      utilization: ``r / min(d_in, d_out)`` (float32 scalar in [0, 1]).
    """

    spec: LayerSpec
    p_in: jax.Array
    p_out: jax.Array
    k_in: jax.Array
    k_out: jax.Array
    rank: jax.Array
    utilization: jax.Array


class LowRankFactors(NamedTuple):
    """Exact factorisation ``M' = first @ second`` of a projected layer.

    Attributes:
      first: ``(d_in, r)`` matrix, i.e. a dense layer to ``r`` features or, reshaped
        (:attr:`first_kernel`), a convolution with the original window to ``r`` channels.
      second: ``(r, d_out)`` matrix: a dense layer / 1x1 convolution to the outputs.
      first_kernel: ``first`` in the original kernel layout with ``r`` output features.
    """

    first: jax.Array
    second: jax.Array
    first_kernel: jax.Array


# ----------------------------------------------------------------------------------------------
# The jaxpr interpreter that finds layers and records their inputs
# ----------------------------------------------------------------------------------------------

_TRANSPARENT = frozenset({"convert_element_type", "copy", "copy_p"})
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}
_HIGHEST = lax.Precision.HIGHEST


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _sub_jaxpr(eqn):
    key = _CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jcore.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    if isinstance(sub, jcore.Jaxpr):
        return sub, ()
    return None


def _interpret(jaxpr, consts, args, tags, on_op):
    """Evaluates ``jaxpr`` like ``jax.core.eval_jaxpr``, propagating leaf tags; calls
    ``on_op(tag, eqn, lhs)`` for every dot/conv whose right operand carries a tag."""
    env: dict = {}
    tag_env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    def tag(v):
        return None if isinstance(v, jcore.Literal) else tag_env.get(v)

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a, t in zip(jaxpr.invars, args, tags):
        env[v] = a
        if t is not None:
            tag_env[v] = t
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        intags = [tag(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn) if any(t is not None for t in intags) else None
        if sub is not None and len(sub[0].invars) == len(invals):
            outs, out_tags = _interpret(sub[0], sub[1], invals, intags, on_op)
        else:
            if name in ("dot_general", "conv_general_dilated") and intags[1] is not None:
                on_op(intags[1], eqn, invals[0], invals[1])
            bind_params = eqn.primitive.get_bind_params(eqn.params)
            subfuns: tuple = ()
            if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
                subfuns, bind_params = bind_params
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            carry = intags[0] if name in _TRANSPARENT else None
            out_tags = [carry] * len(outs)
        for v, o, t in zip(eqn.outvars, outs, out_tags):
            env[v] = o
            if t is not None:
                tag_env[v] = t
    return [read(v) for v in jaxpr.outvars], [tag(v) for v in jaxpr.outvars]


def _layer(name: str, eqn, lhs: jax.Array, rhs: jax.Array) -> tuple[LayerSpec, jax.Array] | None:
    """``(spec, X)`` for a recognised dense/conv equation (``X``: ``(rows, d_in)``), else None."""
    p = eqn.params
    if eqn.primitive.name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        if rhs.ndim != 2 or lb or rb or len(rc) != 1 or len(lc) != 1:
            return None
        in_axis = int(rc[0])
        perm = (in_axis, 1 - in_axis)
        d_in, d_out = rhs.shape[perm[0]], rhs.shape[perm[1]]
        x = jnp.moveaxis(lhs, int(lc[0]), -1).reshape(-1, d_in)
        return LayerSpec(name, "dense", tuple(rhs.shape), perm, int(d_in), int(d_out)), x
    # conv_general_dilated
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return None
    dn = p["dimension_numbers"]
    out_dim, in_dim, *spatial = dn.rhs_spec
    window = tuple(rhs.shape[i] for i in spatial)
    patches = lax.conv_general_dilated_patches(
        lhs, window, p["window_strides"], p["padding"], lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"], dimension_numbers=dn, precision=_HIGHEST)
    d_in = rhs.shape[in_dim] * math.prod(window)
    x = jnp.moveaxis(patches, dn.out_spec[1], -1).reshape(-1, d_in)
    perm = (in_dim, *spatial, out_dim)
    return LayerSpec(name, "conv", tuple(rhs.shape), tuple(int(i) for i in perm), int(d_in),
                     int(rhs.shape[out_dim])), x


def _check_call(apply_fn: Any, params: PyTree, x: Any) -> jax.Array:
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {type(apply_fn).__name__}")
    if not jax.tree.leaves(params):
        raise ValueError("params has no array leaves: pass the pytree apply_fn takes as its first argument "
                         "(for a jaxrob model, model.variables)")
    if not hasattr(x, "shape") or np.ndim(x) < 1 or np.shape(x)[0] < 1:
        raise ValueError(f"x must be a batch of inputs with a leading batch axis of size >= 1, got "
                         f"{type(x).__name__} of shape {getattr(x, 'shape', None)}")
    return jnp.asarray(x)


def _trace_layers(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                  visit: Callable[[LayerSpec, jax.Array], None]) -> None:
    """Runs ``apply_fn(params, x)`` through the interpreter, calling ``visit(spec, X)`` per layer op."""
    closed = jax.make_jaxpr(apply_fn)(params, x)
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    names = [_leaf_name(path) for path, _ in leaves_with_path]
    args = [leaf for _, leaf in leaves_with_path] + jax.tree.leaves(x)
    tags = names + [None] * (len(args) - len(names))
    if len(closed.jaxpr.invars) != len(args):
        raise ValueError("could not match apply_fn's traced inputs to the leaves of (params, x)")

    def on_op(tag, eqn, lhs, rhs):
        found = _layer(tag, eqn, lhs, rhs)
        if found is not None:
            visit(*found)

    _interpret(closed.jaxpr, closed.consts, args, tags, on_op)


def _no_layers_error() -> ValueError:
    return ValueError("found no dense (dot_general) or convolution (conv_general_dilated) whose weight is "
                      "a leaf of params; pass the pytree apply_fn takes as its first argument")


def find_layers(apply_fn: ApplyFn, params: PyTree, x: ArrayLike) -> dict[str, LayerSpec]:
    """The dense and convolutional layers of ``apply_fn`` whose kernels are leaves of ``params``.

    Traces abstractly (no computation).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, pure.
      params: the pytree ``apply_fn`` takes first (a jaxrob model's ``variables``).
      x: an example batch (only its shape and dtype are used).

    Returns:
      ``{name: LayerSpec}`` in execution order; ``name`` is the kernel's path in ``params``.

    Raises:
      TypeError: ``apply_fn`` is not callable.
      ValueError: ``params`` has no leaves, ``x`` has no batch axis, or no layer was found.
    """
    x = _check_call(apply_fn, params, x)
    specs: dict[str, LayerSpec] = {}

    def trace(p, xb):
        _trace_layers(apply_fn, p, xb, lambda spec, _: specs.setdefault(spec.name, spec))
        return 0

    jax.eval_shape(trace, params, x)
    if not specs:
        raise _no_layers_error()
    return specs


def layer_inputs(apply_fn: ApplyFn, params: PyTree, x: ArrayLike) -> dict[str, jax.Array]:
    """Every dense/conv layer's input rows on the batch ``x``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, pure.
      params: the pytree ``apply_fn`` takes first.
      x: a batch of inputs, ``(n, ...)``.

    Returns:
      ``{name: X}`` with ``X`` of shape ``(rows, d_in)`` in the order of the layer's
      kernel matrix (:meth:`LayerSpec.to_matrix`), so that the layer's output before
      the bias is ``X @ spec.to_matrix(kernel)``.  A dense layer has one row per
      example (and per position for sequence inputs), a convolution one row per
      output pixel (im2col patches). Works eagerly and under ``jax.jit``.

    Raises:
      TypeError, ValueError: as :func:`find_layers`.
    """
    x = _check_call(apply_fn, params, x)
    found: dict[str, list] = {}
    _trace_layers(apply_fn, params, x, lambda spec, xs: found.setdefault(spec.name, []).append(xs))
    if not found:
        raise _no_layers_error()
    return {k: v[0] if len(v) == 1 else jnp.concatenate(v) for k, v in found.items()}


_GRAM_FNS: "collections.OrderedDict[Any, Callable]" = collections.OrderedDict()


def _batch_grams(apply_fn: ApplyFn) -> Callable:
    """The jitted per-batch Gram function of ``apply_fn`` (cached: repeated fits compile once)."""
    if apply_fn in _GRAM_FNS:
        _GRAM_FNS.move_to_end(apply_fn)
        return _GRAM_FNS[apply_fn]

    def grams(params, xb):
        out: dict[str, jax.Array] = {}

        def visit(spec, xs):
            g = jnp.matmul(xs.T, xs, precision=_HIGHEST).astype(jnp.float32)
            out[spec.name] = out[spec.name] + g if spec.name in out else g

        _trace_layers(apply_fn, params, xb, visit)
        return out

    fn = _GRAM_FNS[apply_fn] = jax.jit(grams)
    while len(_GRAM_FNS) > 8:
        _GRAM_FNS.popitem(last=False)
    return fn


def _eig(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    gram = 0.5 * (gram + gram.T)
    vals, vecs = jnp.linalg.eigh(gram)
    return jnp.clip(vals[::-1], 0.0, None), vecs[:, ::-1]


_eig_jit = jax.jit(_eig)


def input_stats(apply_fn: ApplyFn, params: PyTree, x: ArrayLike, *,
                batch_size: int | None = None) -> dict[str, LayerStats]:
    """Second moments ``X^T X`` of every layer's inputs over ``x``, and their eigen-decompositions.

    Runs the model in batches of ``batch_size`` (one compiled function per batch
    shape) and sums the per-batch Gram matrices in float32.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, pure.
      params: the pytree ``apply_fn`` takes first.
      x: the data, ``(n, ...)``.
      batch_size: examples per forward pass, ``>= 1``; ``None``: all at once.

    Returns:
      ``{name: LayerStats}``.

    Raises:
      TypeError, ValueError: as :func:`find_layers`, or a bad ``batch_size``.
    """
    x = _check_call(apply_fn, params, x)
    n = x.shape[0]
    if batch_size is not None:
        batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    specs = find_layers(apply_fn, params, x[:1])
    bs = n if batch_size is None else min(batch_size, n)
    fn = _batch_grams(apply_fn)
    total: dict[str, jax.Array] | None = None
    for start in range(0, n, bs):
        g = fn(params, x[start:start + bs])
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    assert total is not None
    stats = {}
    for name, spec in specs.items():
        vals, vecs = _eig_jit(total[name])
        stats[name] = LayerStats(spec, total[name], vals, vecs)
    return stats


# ----------------------------------------------------------------------------------------------
# Subspaces, projection, utilization
# ----------------------------------------------------------------------------------------------

def _check_energy(name: str, value: Any) -> None:
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        _validate.number(name, value, min=0, max=1, min_inclusive=False)
    elif isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        if _validate.is_concrete(value):
            _validate.number(name, float(value), min=0, max=1, min_inclusive=False)
    else:
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")


def _kept(vals: jax.Array, energy: ArrayLike, floor: jax.Array) -> jax.Array:
    """Smallest k whose k largest eigenvalues hold an ``energy`` fraction of the total.

    Eigenvalues at or below ``floor`` (the float32 noise level of the Gram matrix)
    count as zero, so data with no energy outside an r-dimensional subspace give
    k <= r, and a layer whose outputs vanish on the data gets k = 0. ``energy >= 1``
    keeps every direction (k = d).
    """
    d = vals.shape[0]
    vals = jnp.where(vals > floor, vals, 0.0)
    total = vals.sum()
    frac = jnp.cumsum(vals) / jnp.where(total > 0, total, 1.0)
    k = jnp.minimum(jnp.sum(frac < energy) + 1, d)
    k = jnp.where(total > 0, k, 0)
    return jnp.where(jnp.asarray(energy) >= 1.0, d, k).astype(jnp.int32)


def _noise_floor(scale: jax.Array) -> jax.Array:
    """Eigenvalues below ``10 * eps(float32) * scale`` are rounding noise of a float32 Gram matrix."""
    return 10 * jnp.finfo(jnp.float32).eps * scale


def _projector(vecs: jax.Array, k: jax.Array) -> jax.Array:
    keep = (jnp.arange(vecs.shape[1]) < k).astype(vecs.dtype)
    return jnp.matmul(vecs * keep, vecs.T, precision=_HIGHEST)


def _get_leaf(params: PyTree, name: str) -> jax.Array:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if _leaf_name(path) == name:
            return leaf
    raise ValueError(f"params has no leaf {name!r} (the subspaces were fitted on a different pytree?); "
                     f"its leaves are {[_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]}")


def _check_stats(stats: Any) -> None:
    if not isinstance(stats, Mapping) or not stats or not all(isinstance(s, LayerStats) for s in stats.values()):
        raise TypeError("stats must be a non-empty dict {name: LayerStats} from input_stats")


@functools.partial(jax.jit, static_argnums=0)
def _layer_subspace(spec: LayerSpec, kernel, gram, eigvals, eigvecs, energy, out_energy):
    """``(P_S, P_T, k_S, k_T)`` of one layer (one compilation per layer shape)."""
    m = spec.to_matrix(kernel).astype(jnp.float32)
    lam_max = eigvals[0]
    k_in = _kept(eigvals, energy, _noise_floor(lam_max))
    p_in = _projector(eigvecs, k_in)
    g_out = jnp.matmul(m.T, jnp.matmul(gram, m, precision=_HIGHEST), precision=_HIGHEST)
    out_vals, out_vecs = _eig(g_out)
    # ||X M||^2 <= lam_max(X^T X) * sigma_max(M)^2 bounds the output eigenvalues.
    out_scale = lam_max * jnp.linalg.norm(m, ord=2) ** 2
    k_out = _kept(out_vals, out_energy, _noise_floor(out_scale))
    return p_in, _projector(out_vecs, k_out), k_in, k_out


def subspaces(params: PyTree, stats: Mapping[str, LayerStats], *, energy: ArrayLike = 0.99,
              out_energy: ArrayLike | None = None) -> dict[str, LayerSubspace]:
    """Each layer's input and output subspaces at an energy threshold, and its utilization.

    Pure and jittable (``energy`` may be a traced scalar; the subspace dimensions are
    returned as arrays, the projectors keep their full shapes).

    Args:
      params: the pytree the statistics were collected with (its kernels give the
        output subspaces).
      stats: :func:`input_stats` of the layers.
      energy: fraction of the input second moment ``trace(X^T X)`` kept, in (0, 1];
        ``1`` keeps every direction (``P_S = I``).  Eigenvalues below the float32
        noise level ``10 * eps * lambda_max`` count as zero (so a layer whose
        outputs vanish on the data has ``k_T = 0``).
      out_energy: the same for the outputs ``X M``; ``None``: ``energy``.

    Returns:
      ``{name: LayerSubspace}``.

    Raises:
      TypeError: ``stats`` is not a dict of :class:`LayerStats`, or an energy is not a number.
      ValueError: an energy outside (0, 1], or a kernel missing from ``params`` or of
        the wrong shape.
    """
    _check_stats(stats)
    _check_energy("energy", energy)
    out_energy = energy if out_energy is None else out_energy
    _check_energy("out_energy", out_energy)
    result = {}
    for name, st in stats.items():
        spec = st.spec
        kernel = _get_leaf(params, name)
        if tuple(kernel.shape) != spec.kernel_shape:
            raise ValueError(f"kernel {name!r} has shape {tuple(kernel.shape)} but was fitted with shape "
                             f"{spec.kernel_shape}")
        shape_only = dataclasses.replace(spec, name="")  # layers of equal shapes share one compilation
        p_in, p_out, k_in, k_out = _layer_subspace(shape_only, kernel, st.gram, st.eigvals, st.eigvecs,
                                                   jnp.asarray(energy, jnp.float32),
                                                   jnp.asarray(out_energy, jnp.float32))
        rank = jnp.minimum(k_in, k_out)
        util = rank.astype(jnp.float32) / min(spec.d_in, spec.d_out)
        result[name] = LayerSubspace(spec, p_in, p_out, k_in, k_out, rank, util)
    return result


def fit_subspaces(apply_fn: ApplyFn, params: PyTree, x: ArrayLike, *, energy: ArrayLike = 0.99,
                  out_energy: ArrayLike | None = None, batch_size: int | None = None) -> dict[str, LayerSubspace]:
    """:func:`input_stats` then :func:`subspaces`: the layers' data-driven subspaces fitted on ``x``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, pure.
      params: the pytree ``apply_fn`` takes first (a jaxrob model's ``variables``).
      x: the data the subspaces are fitted on, ``(n, ...)``.
      energy: fraction of each layer's input energy kept, in (0, 1].
      out_energy: fraction of each layer's output energy kept; ``None``: ``energy``.
      batch_size: examples per forward pass; ``None``: all at once.

    Returns:
      ``{name: LayerSubspace}``, keyed by the kernels' paths in ``params``.

    Raises:
      TypeError, ValueError: as :func:`input_stats` and :func:`subspaces`.

    Example:
      >>> import jax
      >>> from jaxrob import models
      >>> net = models.create("cnn_small", key=jax.random.key(0))
      >>> x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
      >>> subs = fit_subspaces(net.apply_fn, net.variables, x, energy=1.0)
      >>> [int(s.rank) for s in subs.values()]  # min(d_in, d_out): conv1 sees 3x3x1 patches
      [9, 64, 256, 10]
    """
    _check_energy("energy", energy)
    if out_energy is not None:
        _check_energy("out_energy", out_energy)
    stats = input_stats(apply_fn, params, x, batch_size=batch_size)
    return subspaces(params, stats, energy=energy, out_energy=out_energy)


def _check_subspaces(subs: Any) -> None:
    if (not isinstance(subs, Mapping) or not subs
            or not all(isinstance(s, LayerSubspace) for s in subs.values())):
        raise TypeError("subspaces must be a non-empty dict {name: LayerSubspace} from fit_subspaces/subspaces")


def project(params: PyTree, subspaces: Mapping[str, LayerSubspace]) -> PyTree:
    """``params`` with every fitted kernel ``M`` replaced by ``P_S M P_T`` (same shapes and dtypes).

    Pure, differentiable and jittable; the same ``apply_fn`` runs on the result.
    Leaves without a subspace (biases, batch norm, unfitted layers) are returned unchanged.

    Args:
      params: the pytree ``apply_fn`` takes first (the one the subspaces were fitted on,
        or one of the same structure, e.g. fine-tuned).
      subspaces: ``{name: LayerSubspace}``.

    Returns:
      The projected pytree.

    Raises:
      TypeError: ``subspaces`` is not a dict of :class:`LayerSubspace`.
      ValueError: a fitted kernel is missing from ``params`` or has another shape.
    """
    _check_subspaces(subspaces)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_leaf_name(p) for p, _ in flat]
    missing = sorted(set(subspaces) - set(names))
    if missing:
        raise ValueError(f"params has no leaves {missing} (fitted on a different pytree?); its leaves are {names}")
    out = []
    for name, (_, leaf) in zip(names, flat):
        sub = subspaces.get(name)
        if sub is None:
            out.append(leaf)
            continue
        spec = sub.spec
        if tuple(leaf.shape) != spec.kernel_shape:
            raise ValueError(f"kernel {name!r} has shape {tuple(leaf.shape)} but the subspace was fitted "
                             f"for shape {spec.kernel_shape}")
        m = spec.to_matrix(leaf)
        m = jnp.matmul(sub.p_in.astype(m.dtype), m, precision=_HIGHEST)
        m = jnp.matmul(m, sub.p_out.astype(m.dtype), precision=_HIGHEST)
        out.append(spec.from_matrix(m).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def utilization(subspaces: Mapping[str, LayerSubspace]) -> dict[str, jax.Array]:
    """Per-layer utilization ``min(k_S, k_T) / min(d_in, d_out)`` (float32 scalars in [0, 1])."""
    _check_subspaces(subspaces)
    return {name: s.utilization for name, s in subspaces.items()}


def mean_layer_utilization(subspaces: Mapping[str, LayerSubspace]) -> jax.Array:
    """Mean layer utilization (MLU): the unweighted mean of the per-layer utilizations."""
    _check_subspaces(subspaces)
    return jnp.mean(jnp.stack([s.utilization for s in subspaces.values()]))


# ----------------------------------------------------------------------------------------------
# Factorisation, parameter counts, fine-tuning
# ----------------------------------------------------------------------------------------------

def factorize(params: PyTree, subspaces: Mapping[str, LayerSubspace]) -> dict[str, LowRankFactors]:
    """The exact rank-``r`` factors of every projected kernel (eager: ``r`` sets the shapes).

    ``P_S M P_T = first @ second`` up to float rounding, with ``first`` ``(d_in, r)``
    and ``second`` ``(r, d_out)`` from the truncated SVD of the projected matrix.

    Args:
      params: the pytree whose kernels are projected and factorised.
      subspaces: ``{name: LayerSubspace}`` with concrete ranks.

    Returns:
      ``{name: LowRankFactors}``.

    Raises:
      TypeError: bad ``subspaces``, or ranks that are tracers (call outside ``jit``).
      ValueError: a kernel missing from ``params`` or of another shape.
    """
    _check_subspaces(subspaces)
    projected = project(params, subspaces)
    out = {}
    for name, sub in subspaces.items():
        if not _validate.is_concrete(sub.rank):
            raise TypeError("factorize needs concrete ranks (the factor shapes depend on them); call it outside jit")
        spec, r = sub.spec, int(sub.rank)
        m = spec.to_matrix(_get_leaf(projected, name)).astype(jnp.float32)
        u, s, vt = jnp.linalg.svd(m, full_matrices=False)
        first, second = u[:, :r] * s[:r], vt[:r]
        shape = tuple(spec.kernel_shape[i] for i in spec.perm[:-1]) + (r,)
        first_kernel = jnp.transpose(first.reshape(shape), tuple(int(i) for i in np.argsort(spec.perm)))
        out[name] = LowRankFactors(first, second, first_kernel)
    return out


def compression(params: PyTree, subspaces: Mapping[str, LayerSubspace]) -> dict[str, Any]:
    """Parameter counts before and after factorising the projected layers (eager).

    A layer of rank ``r`` costs ``r * (d_in + d_out)`` weights when factorised and is
    factorised only if that is fewer than ``d_in * d_out``. Every other leaf of
    ``params`` (biases, batch norm, unfitted layers) counts unchanged.

    Args:
      params: the model's parameters (all leaves are counted, e.g. a jaxrob model's
        ``variables["params"]`` or ``variables``).
      subspaces: ``{name: LayerSubspace}`` with concrete ranks; names are looked up in
        ``params`` first as given, then without a leading ``"params/"``.

    Returns:
      ``{"layers": {name: {d_in, d_out, k_in, k_out, rank, utilization,
      params_before, params_after, factorised}}, "params_before", "params_after",
      "ratio"}`` where ``ratio = params_after / params_before``.

    Raises:
      TypeError: bad ``subspaces`` or traced ranks.
      ValueError: a layer's kernel not found in ``params``.
    """
    _check_subspaces(subspaces)
    names = {_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    total = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
    layers, saved = {}, 0
    for name, sub in subspaces.items():
        if not _validate.is_concrete(sub.rank):
            raise TypeError("compression needs concrete ranks; call it outside jit")
        short = name[len("params/"):] if name.startswith("params/") else name
        if name not in names and short not in names:
            raise ValueError(f"params has no leaf {name!r} (nor {short!r})")
        spec, r = sub.spec, int(sub.rank)
        before = spec.d_in * spec.d_out
        low = r * (spec.d_in + spec.d_out)
        after = min(before, low)
        saved += before - after
        layers[name] = {"kind": spec.kind, "d_in": spec.d_in, "d_out": spec.d_out, "k_in": int(sub.k_in),
                        "k_out": int(sub.k_out), "rank": r, "utilization": float(sub.utilization),
                        "params_before": before, "params_after": after, "factorised": low < before}
    return {"layers": layers, "params_before": total, "params_after": total - saved,
            "ratio": (total - saved) / total if total else 1.0}


def projected_model(model: Any, subspaces: Mapping[str, LayerSubspace]) -> Any:
    """The model with :func:`project` applied to its parameters inside every forward pass.

    Training it with ``jaxrob.train.fit`` fine-tunes within the fitted subspaces:
    every effective kernel is ``P_S M P_T`` at every step, so its gradient is
    projected too and its rank never exceeds ``min(k_S, k_T)``.  After training,
    ``project(state.variables(), subspaces)`` holds the effective (low-rank) weights,
    which :func:`factorize` splits exactly.

    Args:
      model: a :class:`jaxrob.models.Model` (subspaces fitted on ``model.variables``),
        or ``(apply_fn, params)`` for a foreign model.
      subspaces: ``{name: LayerSubspace}``.

    Returns:
      A ``Model`` (or ``(apply_fn, params)``) whose ``apply_fn``/``train_apply``
      project first; the initial parameters are the original ones.

    Raises:
      TypeError: ``model`` is neither form, or bad ``subspaces``.
    """
    _check_subspaces(subspaces)
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        fn = model[0]
        return (lambda p, x: fn(project(p, subspaces), x)), model[1]
    if not all(hasattr(model, a) for a in ("apply_fn", "train_apply", "variables")):
        raise TypeError(f"model must be a jaxrob.models.Model or a tuple (apply_fn, params), "
                        f"got {type(model).__name__}")
    apply_fn, train_apply = model.apply_fn, model.train_apply

    def proj_apply(variables, x):
        return apply_fn(project(variables, subspaces), x)

    def proj_train(variables, x, *, key=None):
        return train_apply(project(variables, subspaces), x, key=key)

    return dataclasses.replace(model, apply_fn=proj_apply, train_apply=proj_train)
