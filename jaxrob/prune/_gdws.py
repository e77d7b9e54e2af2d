"""GDWS: generalized depthwise-separable approximation of trained convolutions.

A standard convolution with kernel ``W`` (HWIO, ``K_h x K_w x C x M``) is, in
the paper's notation, a matrix ``W in R^{M x C K^2}`` made of one block
``W_c in R^{M x K^2}`` per input channel ``c`` (``K^2 = K_h K_w``;
:func:`kernel_matrix`). A **GDWS convolution** with ranks ``g = (g_1, ..., g_C)``
applies ``g_c`` depthwise ``K_h x K_w`` filters to input channel ``c`` and then a
pointwise (1x1) convolution over the ``G = sum_c g_c`` intermediate channels.
Its equivalent dense kernel has blocks ``W_c = P_c D_c`` (``P_c``: the ``g_c``
pointwise columns, ``D_c``: the ``g_c`` depthwise filters as rows), so a GDWS
convolution is exactly a convolution whose every channel block has rank
``<= g_c``. Its cost on an ``H_o x W_o`` output is (:func:`gdws_macs`)::

    MACs_GDWS = H_o W_o G (K^2 + M)        vs.        MACs_conv = H_o W_o M C K^2

(``g_c = 1`` for every channel is the usual depthwise-separable convolution).
Stride, padding and dilation are those of the original convolution, applied to
the depthwise stage.

**Approximation.** The weighted error of a GDWS approximation is
``e = sum_c alpha_c ||W_c - P_c D_c||_F^2``. For fixed ranks the optimum is the
truncated SVD of every block (Eckart-Young), leaving
``e(g) = sum_c alpha_c sum_{i > g_c} sigma_{c,i}^2`` (:func:`weighted_error`).
Both of the paper's exact constructions follow from that form: let
``v_{c,i} = alpha_c sigma_{c,i}^2`` (non-increasing in ``i`` in each channel);

* **MEGO** (minimum error under a complexity budget; :func:`mego_ranks`): the
  cost is proportional to ``G``, so the budget is a maximum number of
  depthwise filters; keep the ``G`` largest ``v_{c,i}``.
* **LEGO** (minimum complexity under an error budget ``beta``;
  :func:`lego_ranks`): drop the largest number of smallest ``v_{c,i}`` whose sum
  stays ``<= beta``.

Why the greedy is optimal: ``e(g) = sum(v) - sum(kept)``. Among all sets of
``k`` kept terms the top-``k`` set has the largest sum, and because ``v_{c,i}``
is non-increasing in ``i``, the top-``k`` set takes a *prefix* of every channel's
singular values, i.e. it is realisable by ranks ``g_c``. So MEGO's top-``G`` set
is the minimum-error feasible choice, and for LEGO the smallest feasible ``k``
is reached by the top-``k`` set (feasibility is monotone in ``k``). Ties are
broken towards lower ``i`` inside a channel (a stable sort), which keeps the
prefix property. ``tests/prune/test_gdws.py`` checks both against brute force.

**Error weights** (:func:`gdws_alphas`): the paper weights each channel's error
by its effect on the network's decision on adversarial inputs, a noise-gain
bound in the style of Sakr et al. (ICML 2017)::

    alpha_c = E_x [ sum_{j != yhat} ||d(z_yhat - z_j)/dW_c||_F^2 / (2 M K^2 (z_yhat - z_j)^2) ]

over PGD examples ``x`` (from :func:`jaxrob.attacks.pgd`), ``z`` the logits and
``yhat`` the predicted class; with these weights ``sum_c alpha_c ||dW_c||^2``
bounds the layer's contribution to the probability that the prediction flips,
so one ``beta`` is comparable across layers. Uniform weights (``alpha_c = 1``)
are the other variant.

**Model transform** (:func:`gdws_approximate`, :func:`gdws_transform`): the
convolutions of any ``apply_fn(variables, x)`` are found in its traced jaxpr
(:func:`conv_layers`): every ``conv_general_dilated`` whose kernel is a leaf of
``variables`` (HWIO layout, one feature group). The transformed model keeps the
``apply_fn(variables, x)`` contract: its ``variables`` are the originals with
each approximated kernel leaf replaced by its :class:`GDWSConv` factors, and its
``apply_fn`` re-runs the original computation with each such convolution
replaced by the two-stage GDWS forward (:func:`gdws_conv`). The choice, and
why: a params-only transform (writing the dense equivalent kernel back) would
compute the same function but keep the dense cost, and patching Flax modules
would only work for NNX models; interpreting the jaxpr works for any JAX model
(jaxrob's NNX models or a hand-written function), keeps the factors as the
parameters, and the same trace yields the MAC count (convolutions and dot
products, per example) -- the library's rule that cost comes from the traced
computation. The dense equivalent kernel (:func:`gdws_kernel`) is kept for
exactness checks. Convolutions inside ``scan``/``while``/``cond`` bodies or
custom-derivative functions are left as they are (only ``jit`` bodies are
inlined); depthwise/grouped and 1x1 convolutions are never approximated, and the
first convolution is skipped by default, as in the paper.

References:
  Dbouk & Shanbhag, "Generalized Depthwise-Separable Convolutions for
  Adversarially Robust and Efficient Neural Networks", NeurIPS 2021,
  arXiv:2110.14871 (code: github.com/hsndbk4/GDWS). Sakr, Kim & Shanbhag,
  "Analytical Guarantees on Numerical Precision of Deep Neural Networks", ICML
  2017 (the noise-gain bound behind the error weights).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxrob import _validate
from jaxrob.prune._masks import path_name

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

_PRIMS = jcore.primitives
_CONV = _PRIMS.conv_general_dilated_p
_DOT = _PRIMS.dot_general_p
_CAST = _PRIMS.convert_element_type_p
_INLINED = {_PRIMS.jit_p: "jaxpr", _PRIMS.closed_call_p: "call_jaxpr"}
_TINY = 1e-12


# --------------------------------------------------------------------------- the GDWS convolution


class GDWSConv(NamedTuple):
    """The factors of one GDWS convolution (a pytree; the ranks are static, kept beside it).

    Attributes:
      depthwise: ``(K_h, K_w, 1, G)`` HWIO depthwise filters, one per intermediate
        channel, ordered by input channel (``g_1`` filters of channel 0, then channel 1, ...).
      pointwise: ``(G, M)`` pointwise (1x1) weights.
    """

    depthwise: jax.Array
    pointwise: jax.Array


def _check_ranks(ranks: Any, channels: int, max_rank: int | None = None) -> tuple[int, ...]:
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, (Sequence, np.ndarray, jax.Array)):
        raise TypeError(f"ranks must be a sequence of {channels} non-negative ints (g_c per input channel), "
                        f"got {type(ranks).__name__}")
    r = np.asarray(ranks)
    if r.shape != (channels,) or not (np.issubdtype(r.dtype, np.integer) or np.all(np.mod(r, 1) == 0)):
        raise ValueError(f"ranks must hold {channels} integers (one g_c per input channel), got {ranks!r}")
    if np.any(r < 0) or (max_rank is not None and np.any(r > max_rank)):
        raise ValueError(f"every rank g_c must lie in [0, {max_rank if max_rank is not None else 'inf'}] "
                         f"(min(M, K_h*K_w) is the rank of a channel block), got {r.tolist()}")
    return tuple(int(v) for v in r)


def _channel_index(ranks: Sequence[int]) -> np.ndarray:
    """The input channel of each intermediate channel: ``repeat(arange(C), ranks)``."""
    return np.repeat(np.arange(len(ranks)), np.asarray(ranks, dtype=np.int64)).astype(np.int32)


def gdws_conv(x: jax.typing.ArrayLike, factors: GDWSConv, ranks: Sequence[int], *,
              strides: int | Sequence[int] = 1, padding: str | Sequence[tuple[int, int]] = "SAME",
              dilation: int | Sequence[int] = 1) -> jax.Array:
    """GDWS convolution of NHWC inputs: per-channel depthwise filters, then a pointwise conv.

    Args:
      x: ``(N, H, W, C)`` inputs.
      factors: :class:`GDWSConv` with ``depthwise`` ``(K_h, K_w, 1, G)`` and
        ``pointwise`` ``(G, M)``, ``G = sum(ranks)``.
      ranks: ``(g_1, ..., g_C)``, depthwise filters per input channel.
      strides, padding, dilation: those of the convolution being replaced (as
        :func:`jax.lax.conv_general_dilated`'s ``window_strides``, ``padding``,
        ``rhs_dilation``); they apply to the depthwise stage.

    Returns:
      ``(N, H_o, W_o, M)`` outputs, equal to ``conv(x, gdws_kernel(factors, ranks))``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
      >>> f = gdws_decompose(k, (2, 1))
      >>> gdws_conv(jnp.ones((1, 5, 5, 2)), f, (2, 1)).shape
      (1, 5, 5, 4)
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC, shape (N, H, W, C), got shape {x.shape}")
    ranks = _check_ranks(ranks, x.shape[-1])
    _check_factors(factors, ranks)
    nsp = 2
    strides = (strides,) * nsp if isinstance(strides, numbers.Integral) else tuple(strides)
    dilation = (dilation,) * nsp if isinstance(dilation, numbers.Integral) else tuple(dilation)
    dn = lax.conv_dimension_numbers(x.shape, factors.depthwise.shape, ("NHWC", "HWIO", "NHWC"))
    return _gdws_general(x, factors, _channel_index(ranks), window_strides=strides, padding=padding,
                         lhs_dilation=(1,) * nsp, rhs_dilation=dilation, dimension_numbers=dn,
                         precision=None, preferred_element_type=None)


def _check_factors(factors: Any, ranks: tuple[int, ...]) -> None:
    if not isinstance(factors, GDWSConv):
        raise TypeError(f"factors must be a GDWSConv(depthwise, pointwise), got {type(factors).__name__}")
    g = sum(ranks)
    d, p = factors.depthwise, factors.pointwise
    if d.ndim < 3 or d.shape[-2] != 1 or d.shape[-1] != g or p.ndim != 2 or p.shape[0] != g:
        raise ValueError(f"factors do not match ranks with G = sum(ranks) = {g}: need depthwise "
                         f"(K_h, K_w, 1, {g}) and pointwise ({g}, M), got {d.shape} and {p.shape}")


def _gdws_general(lhs: jax.Array, factors: GDWSConv, channels: np.ndarray, *, window_strides, padding,
                  lhs_dilation, rhs_dilation, dimension_numbers, precision, preferred_element_type,
                  **_unused) -> jax.Array:
    """The GDWS forward for any lhs/out layout (kernel layout HWIO), same conv options as the original."""
    dn = dimension_numbers
    lhs_feat, out_feat = dn.lhs_spec[1], dn.out_spec[1]
    d, p = factors.depthwise, factors.pointwise
    g = int(channels.shape[0])
    nsp = d.ndim - 2
    if g == 0:  # every channel dropped: the convolution contributes nothing
        probe = lax.conv_general_dilated(
            lhs[tuple(slice(0, 1) if a == lhs_feat else slice(None) for a in range(lhs.ndim))],
            jnp.zeros(d.shape[:nsp] + (1, 1), lhs.dtype), window_strides, padding, lhs_dilation, rhs_dilation,
            dn)
        shape = list(probe.shape)
        shape[out_feat] = p.shape[1]
        return jnp.zeros(shape, jnp.result_type(lhs.dtype, p.dtype))
    rep = jnp.take(lhs, jnp.asarray(channels), axis=lhs_feat)  # (.., G, ..): channel c repeated g_c times
    # The kernel layout of the original conv is HWIO, so the depthwise kernel (K.., 1, G) fits it as is.
    mid = lax.conv_general_dilated(rep, d.astype(lhs.dtype), window_strides, padding, lhs_dilation,
                                   rhs_dilation, dn, feature_group_count=g, precision=precision,
                                   preferred_element_type=preferred_element_type)
    out = jnp.tensordot(jnp.moveaxis(mid, out_feat, -1), p.astype(mid.dtype), axes=1, precision=precision)
    return jnp.moveaxis(out, -1, out_feat)


# --------------------------------------------------------------------------- matrices, SVD, factors


def kernel_matrix(kernel: jax.typing.ArrayLike) -> jax.Array:
    """The paper's ``W in R^{M x C K^2}`` of an HWIO kernel: column ``c K^2 + h K_w + w`` is ``kernel[h, w, c, :]``.

    Args:
      kernel: ``(K_h, K_w, C, M)`` convolution kernel (any number of spatial dims before ``C, M``).

    Returns:
      ``(M, C * K_h * K_w)``; the block of columns ``[c K^2, (c+1) K^2)`` is ``W_c``.
    """
    k = jnp.asarray(kernel)
    if k.ndim < 3:
        raise ValueError(f"kernel must be (K_h, K_w, C, M) HWIO (spatial dims, then in, out), got shape {k.shape}")
    nsp = k.ndim - 2
    return jnp.transpose(k, (nsp + 1, nsp) + tuple(range(nsp))).reshape(k.shape[-1], -1)


def _blocks(kernel: Any) -> np.ndarray:
    """``(C, M, K^2)`` float64 channel blocks ``W_c`` of an HWIO kernel."""
    k = np.asarray(kernel, dtype=np.float64)
    nsp = k.ndim - 2
    c, m = k.shape[-2:]
    return np.transpose(k, (nsp, nsp + 1) + tuple(range(nsp))).reshape(c, m, -1)


def _svd(kernel: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(_blocks(kernel), full_matrices=False)
    return u, s, vt  # (C, M, r), (C, r), (C, r, K^2), r = min(M, K^2)


def channel_singular_values(kernel: jax.typing.ArrayLike) -> np.ndarray:
    """Singular values of every channel block ``W_c``, shape ``(C, min(M, K_h K_w))``, non-increasing per row.

    Computed in float64 on the host (the approximation is a one-off, post-training step).
    """
    k = np.asarray(kernel)
    if k.ndim < 3:
        raise ValueError(f"kernel must be (K_h, K_w, C, M) HWIO, got shape {k.shape}")
    return _svd(k)[1]


def gdws_decompose(kernel: jax.typing.ArrayLike, ranks: Sequence[int]) -> GDWSConv:
    """The minimum-error GDWS factors of ``kernel`` for fixed ranks: a truncated SVD per channel block.

    ``W_c ~ sum_{i < g_c} (sigma_{c,i} u_{c,i}) v_{c,i}^T``: the depthwise filters are
    the right singular vectors ``v_{c,i}`` (reshaped ``K_h x K_w``), the pointwise
    columns ``sigma_{c,i} u_{c,i}``. By Eckart-Young this minimises every
    ``||W_c - P_c D_c||_F`` and hence any weighted sum of them.

    Args:
      kernel: ``(K_h, K_w, C, M)`` HWIO kernel.
      ranks: ``(g_1, ..., g_C)`` with ``0 <= g_c <= min(M, K_h K_w)``.

    Returns:
      :class:`GDWSConv` in the kernel's dtype.
    """
    k = np.asarray(kernel)
    if k.ndim < 3:
        raise ValueError(f"kernel must be (K_h, K_w, C, M) HWIO, got shape {k.shape}")
    *spatial, c, m = k.shape
    ranks = _check_ranks(ranks, c, min(m, math.prod(spatial)))
    u, s, vt = _svd(k)
    ch = _channel_index(ranks)
    idx = np.concatenate([np.arange(g) for g in ranks]).astype(np.int64) if ch.size else np.zeros(0, np.int64)
    dw = vt[ch, idx, :]                                   # (G, K^2)
    pw = (u[ch, :, idx] * s[ch, idx][:, None])            # (G, M)
    dtype = k.dtype if np.issubdtype(k.dtype, np.floating) else np.float32
    depthwise = np.moveaxis(dw.reshape(len(ch), *spatial), 0, -1)[..., None, :]
    return GDWSConv(jnp.asarray(depthwise, dtype), jnp.asarray(pw, dtype))


def gdws_kernel(factors: GDWSConv, ranks: Sequence[int]) -> jax.Array:
    """The dense HWIO kernel ``(K_h, K_w, C, M)`` equivalent to a GDWS convolution (``W_c = P_c D_c``)."""
    d, p = factors.depthwise, factors.pointwise
    c = len(ranks)
    ranks = _check_ranks(ranks, c)
    _check_factors(factors, ranks)
    onehot = jax.nn.one_hot(jnp.asarray(_channel_index(ranks)), c, dtype=p.dtype)  # (G, C)
    return jnp.einsum("...g,gc,gm->...cm", d[..., 0, :], onehot, p)


# --------------------------------------------------------------------------- complexity and the constructions


def conv_macs(kernel_shape: Sequence[int], out_spatial: Sequence[int]) -> int:
    """MACs of a standard convolution per example: ``prod(out_spatial) * K_h K_w * C * M`` (``C``: the kernel's I dim)."""
    *k, c, m = kernel_shape
    return int(math.prod(out_spatial) * math.prod(k) * c * m)


def gdws_macs(ranks: Sequence[int] | int, kernel_shape: Sequence[int], out_spatial: Sequence[int]) -> int:
    """MACs of a GDWS convolution per example (the paper's count): ``H_o W_o G (K^2 + M)``.

    ``G K^2`` MACs per output pixel for the depthwise stage, ``G M`` for the pointwise one.

    Args:
      ranks: ``(g_1, ..., g_C)`` or ``G = sum_c g_c`` directly.
      kernel_shape: shape of the original HWIO kernel ``(K_h, K_w, C, M)``.
      out_spatial: output spatial size ``(H_o, W_o)``.
    """
    g = int(ranks) if isinstance(ranks, numbers.Integral) else int(sum(ranks))
    *k, _, m = kernel_shape
    return int(math.prod(out_spatial) * g * (math.prod(k) + m))


def _values(sigma: Any, alpha: Any) -> np.ndarray:
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"sigma must be (C, r) singular values per channel, got shape {s.shape}")
    a = np.ones(s.shape[0]) if alpha is None else np.asarray(alpha, dtype=np.float64)
    if a.shape != (s.shape[0],):
        raise ValueError(f"alpha must have one weight per input channel, shape ({s.shape[0]},), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("alpha must be finite and >= 0")
    return a[:, None] * s ** 2


def _order(v: np.ndarray) -> np.ndarray:
    """Flat indices of ``v`` in decreasing value, ties towards lower channel then lower rank (stable)."""
    return np.argsort(-v.ravel(), kind="stable")


def _ranks_of(keep: np.ndarray, shape: tuple[int, int]) -> tuple[int, ...]:
    counts = np.bincount(keep // shape[1], minlength=shape[0])
    return tuple(int(c) for c in counts)


def weighted_error(sigma: jax.typing.ArrayLike, ranks: Sequence[int], alpha: jax.typing.ArrayLike | None = None) -> float:
    """``sum_c alpha_c sum_{i >= g_c} sigma_{c,i}^2``: the weighted error of the optimal GDWS with these ranks.

    Args:
      sigma: ``(C, r)`` per-channel singular values (:func:`channel_singular_values`).
      ranks: ``(g_1, ..., g_C)``.
      alpha: ``(C,)`` error weights; None for uniform (1).
    """
    v = _values(sigma, alpha)
    ranks = _check_ranks(ranks, v.shape[0], v.shape[1])
    return float(sum(v[c, g:].sum() for c, g in enumerate(ranks)))


def mego_ranks(sigma: jax.typing.ArrayLike, alpha: jax.typing.ArrayLike | None = None, *,
               max_filters: int) -> tuple[int, ...]:
    """MEGO: the minimum-weighted-error ranks with at most ``max_filters`` depthwise filters in all.

    The MAC budget ``gamma`` of a layer is ``max_filters = floor(gamma / (H_o W_o (K^2 + M)))``
    (the cost is linear in ``G``). Keeps the ``max_filters`` largest
    ``alpha_c sigma_{c,i}^2`` (exact; see the module docstring for why).

    Args:
      sigma: ``(C, r)`` per-channel singular values, non-increasing per row.
      alpha: ``(C,)`` error weights, None for uniform.
      max_filters: ``G`` budget, ``>= 0`` (values above ``C r`` keep everything).

    Returns:
      ``(g_1, ..., g_C)`` with ``sum <= max_filters``.
    """
    v = _values(sigma, alpha)
    g = _validate.number("max_filters", max_filters, min=0, integer=True)
    return _ranks_of(_order(v)[:min(g, v.size)], v.shape)


def lego_ranks(sigma: jax.typing.ArrayLike, alpha: jax.typing.ArrayLike | None = None, *,
               max_error: float) -> tuple[int, ...]:
    """LEGO: the fewest depthwise filters (least MACs) whose weighted error is ``<= max_error``.

    Drops the longest run of the smallest ``alpha_c sigma_{c,i}^2`` whose sum stays
    ``<= max_error`` (exact; see the module docstring). ``max_error=0`` keeps every
    term with a non-zero weighted value, so it reproduces the layer exactly when all
    ``alpha_c > 0``.

    Args:
      sigma: ``(C, r)`` per-channel singular values, non-increasing per row.
      alpha: ``(C,)`` error weights, None for uniform.
      max_error: the budget ``beta >= 0`` on ``sum_c alpha_c ||W_c - W_c_hat||_F^2``.

    Returns:
      ``(g_1, ..., g_C)``.
    """
    v = _values(sigma, alpha)
    beta = float(_validate.number("max_error", max_error, min=0))
    order = _order(v)
    tail = np.cumsum(v.ravel()[order][::-1])          # tail[d-1] = sum of the d smallest
    drop = int(np.searchsorted(tail, beta, side="right"))
    return _ranks_of(order[:v.size - drop], v.shape)


# --------------------------------------------------------------------------- tracing the model


class ConvLayer(NamedTuple):
    """One convolution of a traced model.

    Attributes:
      name: slash-joined path of its kernel leaf in ``variables`` (e.g. ``"params/conv2/kernel"``).
      index: position among the model's convolutions in execution order (0 = first).
      kernel_shape: ``(K_h, K_w, C, M)`` for HWIO kernels (the leaf's shape).
      out_spatial: output spatial size ``(H_o, W_o)``.
      macs: MACs per example of the original convolution.
      eligible: True if GDWS applies (HWIO kernel leaf, one feature group, ``K_h K_w > 1``).
    """

    name: str
    index: int
    kernel_shape: tuple[int, ...]
    out_spatial: tuple[int, ...]
    macs: int
    eligible: bool


def _is_hwio(dn) -> bool:
    n = len(dn.rhs_spec)
    return tuple(dn.rhs_spec) == (n - 1, n - 2) + tuple(range(n - 2))


class _Recorder:
    def __init__(self):
        self.convs: list[tuple[int | None, dict, tuple, tuple, tuple]] = []
        self.dot_macs = 0
        self.other_conv_macs = 0


def _interpret(jaxpr, consts, args, origin_of_invars, factors, rec: _Recorder | None):
    """Evaluates ``jaxpr`` with every conv on a factored kernel leaf replaced by the GDWS forward.

    ``origin_of_invars[i]``: the leaf index that invar ``i`` is (or None); ``factors``:
    leaf index -> ``(GDWSConv, channel_index)``.
    """
    env: dict = {}
    origin: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, a in zip(jaxpr.constvars, consts):
        env[v] = a
    for v, a, o in zip(jaxpr.invars, args, origin_of_invars):
        env[v] = a
        if o is not None:
            origin[v] = o
    for eqn in jaxpr.eqns:
        prim = eqn.primitive
        invals = [read(v) for v in eqn.invars]
        ins_origin = [origin.get(v) if not isinstance(v, jcore.Literal) else None for v in eqn.invars]
        if prim in _INLINED and any(o is not None for o in ins_origin):
            inner = eqn.params[_INLINED[prim]]
            inner_jaxpr, inner_consts = (inner.jaxpr, inner.consts) if hasattr(inner, "jaxpr") else (inner, ())
            outs = _interpret(inner_jaxpr, inner_consts, invals, ins_origin, factors, rec)
        elif prim is _CAST and ins_origin[0] is not None:
            outs = [prim.bind(*invals, **eqn.params)]
            origin[eqn.outvars[0]] = ins_origin[0]
        elif prim is _CONV:
            leaf = ins_origin[1]
            dn = eqn.params["dimension_numbers"]
            lhs, rhs = invals
            eligible = (leaf is not None and eqn.params["feature_group_count"] == 1
                        and eqn.params["batch_group_count"] == 1 and _is_hwio(dn)
                        and math.prod(rhs.shape[:-2]) > 1)
            out_aval = eqn.outvars[0].aval
            out_spatial = tuple(out_aval.shape[a] for a in dn.out_spec[2:])
            if rec is not None:
                kshape = tuple(rhs.shape[a] for a in dn.rhs_spec[2:]) + (rhs.shape[dn.rhs_spec[1]],
                                                                        rhs.shape[dn.rhs_spec[0]])
                rec.convs.append((leaf, eligible, kshape, out_spatial,
                                  out_aval.shape[dn.out_spec[0]]))
            if eligible and leaf in factors:
                f, ch = factors[leaf]
                outs = [_gdws_general(lhs, f, ch, **eqn.params).astype(out_aval.dtype)]
            else:
                outs = [prim.bind(*invals, **eqn.params)]
        else:
            if prim is _DOT and rec is not None:
                (lc, _), _ = eqn.params["dimension_numbers"]
                contract = math.prod(invals[0].shape[a] for a in lc)
                rec.dot_macs += math.prod(eqn.outvars[0].aval.shape) * contract
            with eqn.ctx.manager:
                outs = prim.bind(*invals, **prim.get_bind_params(eqn.params))
            if not prim.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _flat_paths(variables: PyTree) -> tuple[list[str], list[Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables, is_leaf=lambda v: isinstance(v, GDWSConv))
    return [path_name(p) for p, _ in leaves], [v for _, v in leaves], treedef


def _abstract(a: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))


def _run(apply_fn: ApplyFn, variables: PyTree, x: Any, factors_by_name: Mapping[str, tuple[GDWSConv, np.ndarray]],
         rec: _Recorder | None = None):
    """Traces ``apply_fn`` on the dense-equivalent variables and interprets it with the GDWS forwards."""
    names, leaves, treedef = _flat_paths(variables)
    dense, factors = [], {}
    for i, (name, leaf) in enumerate(zip(names, leaves)):
        if isinstance(leaf, GDWSConv):
            f, ch = leaf, factors_by_name[name][1]
            c = factors_by_name[name][2]
            onehot = jax.nn.one_hot(jnp.asarray(ch), c, dtype=f.pointwise.dtype)
            # The dense kernel stands in wherever the leaf is used other than as a conv kernel
            # (unused values are removed by XLA).
            dense.append(jnp.einsum("...g,gc,gm->...cm", f.depthwise[..., 0, :], onehot, f.pointwise))
            factors[i] = (f, ch)
        else:
            dense.append(leaf)
    dense_vars = jax.tree_util.tree_unflatten(treedef, dense)
    closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(
        jax.tree.map(_abstract, dense_vars), _abstract(x))
    args = jax.tree.leaves((dense_vars, x))
    origin = list(range(len(dense))) + [None] * (len(args) - len(dense))
    outs = _interpret(closed.jaxpr, closed.consts, args, origin, factors, rec)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs), names


def conv_layers(apply_fn: ApplyFn, variables: PyTree, input_shape: Sequence[int]) -> dict[str, ConvLayer]:
    """The convolutions of ``apply_fn`` whose kernels are leaves of ``variables``, in execution order.

    Traced once on an abstract ``(1, *input_shape)`` input (nothing is computed).

    Args:
      apply_fn: ``apply_fn(variables, x) -> logits``.
      variables: the model's pytree (kernel leaves HWIO).
      input_shape: per-example input shape, e.g. ``(28, 28, 1)``.

    Returns:
      ``{name: ConvLayer}``; a kernel used by several convolutions appears once, with the MACs summed.
    """
    return _trace(apply_fn, variables, tuple(input_shape))[0]


def _trace(apply_fn, variables, input_shape):
    rec = _Recorder()
    jax.eval_shape(lambda v, x: _run(apply_fn, v, x, {}, rec)[0], variables,
                   jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    names = _flat_paths(variables)[0]
    layers: dict[str, ConvLayer] = {}
    for i, (leaf, eligible, kshape, out_spatial, _batch) in enumerate(rec.convs):
        macs = conv_macs(kshape, out_spatial)
        if leaf is None:
            rec.other_conv_macs += macs
            continue
        name = names[leaf]
        if name in layers:
            old = layers[name]
            layers[name] = old._replace(macs=old.macs + macs, eligible=old.eligible and eligible)
        else:
            layers[name] = ConvLayer(name, i, tuple(kshape), tuple(out_spatial), macs, bool(eligible))
    return layers, rec.dot_macs + rec.other_conv_macs


# --------------------------------------------------------------------------- the transformed model


class LayerReport(NamedTuple):
    """One convolution's MACs per example before and after GDWS (``ranks`` None: left as it was)."""

    name: str
    original: int
    gdws: int
    ranks: tuple[int, ...] | None


class MACReport(NamedTuple):
    """MACs per example of a model and of its GDWS version.

    Attributes:
      layers: ``{name: LayerReport}`` for every convolution with a kernel leaf.
      other: MACs of everything else (dense layers' dot products, convolutions on computed kernels).
      original: total MACs of the original model.
      gdws: total MACs of the GDWS model.
    """

    layers: dict[str, LayerReport]
    other: int
    original: int
    gdws: int

    @property
    def reduction(self) -> float:
        """``original / gdws`` for the whole model."""
        return self.original / max(self.gdws, 1)

    def table(self) -> str:
        """A markdown table: per layer and total, original vs GDWS MACs."""
        lines = ["| layer | G | original MACs | GDWS MACs | reduction |", "|---|---:|---:|---:|---:|"]
        for r in self.layers.values():
            g = "-" if r.ranks is None else str(sum(r.ranks))
            lines.append(f"| {r.name} | {g} | {r.original:,} | {r.gdws:,} | {r.original / max(r.gdws, 1):.2f}x |")
        lines.append(f"| other (dense, ...) | - | {self.other:,} | {self.other:,} | 1.00x |")
        lines.append(f"| **total** | | {self.original:,} | {self.gdws:,} | {self.reduction:.2f}x |")
        return "\n".join(lines)


class GDWSModel(NamedTuple):
    """A model with some convolutions replaced by GDWS convolutions.

    Attributes:
      apply_fn: ``apply_fn(variables, x) -> logits``, pure, jit/vmap/grad-able.
      variables: the original variables with each approximated kernel leaf replaced
        by its :class:`GDWSConv` factors.
      ranks: ``{layer name: (g_1, ..., g_C)}`` of the approximated layers.
      macs: :class:`MACReport`, per example.
    """

    apply_fn: ApplyFn
    variables: PyTree
    ranks: dict[str, tuple[int, ...]]
    macs: MACReport


def _resolve_model(model: Any, variables: PyTree | None, input_shape: Sequence[int] | None):
    if hasattr(model, "apply_fn") and hasattr(model, "variables") and hasattr(model, "input_shape"):
        return model.apply_fn, model.variables if variables is None else variables, \
            tuple(model.input_shape if input_shape is None else input_shape)
    if not callable(model):
        raise TypeError(f"model must be a jaxrob.models.Model or an apply_fn(variables, x), got {type(model).__name__}")
    if variables is None or input_shape is None:
        raise ValueError("with a bare apply_fn, pass variables= and input_shape= (per example, e.g. (28, 28, 1))")
    return model, variables, tuple(input_shape)


def gdws_transform(model: Any, ranks: Mapping[str, Sequence[int]], *, variables: PyTree | None = None,
                   input_shape: Sequence[int] | None = None) -> GDWSModel:
    """Replaces the named convolutions by GDWS convolutions with the given ranks (truncated SVD factors).

    Args:
      model: a :class:`jaxrob.models.Model`, or an ``apply_fn(variables, x)``.
      ranks: ``{layer name: (g_1, ..., g_C)}`` (names from :func:`conv_layers`); a full rank
        ``min(M, K^2)`` everywhere reproduces the convolution exactly (up to float rounding).
      variables: the variables (default ``model.variables``).
      input_shape: per-example input shape (default ``model.input_shape``).

    Returns:
      :class:`GDWSModel`.

    Raises:
      ValueError: for an unknown or ineligible layer name, or ranks that do not fit the kernel.
    """
    apply_fn, variables, input_shape = _resolve_model(model, variables, input_shape)
    layers, other = _trace(apply_fn, variables, input_shape)
    if not isinstance(ranks, Mapping):
        raise TypeError(f"ranks must be a dict {{layer name: (g_1, ..., g_C)}}, got {type(ranks).__name__}")
    names, leaves, treedef = _flat_paths(variables)
    by_name = dict(zip(names, leaves))
    info: dict[str, tuple[None, np.ndarray, int]] = {}
    new_leaves = list(leaves)
    clean_ranks: dict[str, tuple[int, ...]] = {}
    for name, r in ranks.items():
        if name not in layers or not layers[name].eligible:
            ok = [n for n, l in layers.items() if l.eligible]
            raise ValueError(f"{name!r} is not a convolution GDWS can approximate; eligible layers: {ok}")
        kshape = layers[name].kernel_shape
        r = _check_ranks(r, kshape[-2], min(kshape[-1], math.prod(kshape[:-2])))
        clean_ranks[name] = r
        new_leaves[names.index(name)] = gdws_decompose(by_name[name], r)
        info[name] = (None, _channel_index(r), kshape[-2])
    new_vars = jax.tree_util.tree_unflatten(treedef, new_leaves)

    def apply(v: PyTree, x: jax.Array) -> jax.Array:
        return _run(apply_fn, v, x, info)[0]

    report = {}
    for name, layer in layers.items():
        r = clean_ranks.get(name)
        gd = layer.macs if r is None else layer.macs // conv_macs(layer.kernel_shape, layer.out_spatial) \
            * gdws_macs(r, layer.kernel_shape, layer.out_spatial)
        report[name] = LayerReport(name, layer.macs, gd, r)
    original = other + sum(r.original for r in report.values())
    total = other + sum(r.gdws for r in report.values())
    return GDWSModel(apply, new_vars, clean_ranks, MACReport(report, other, original, total))


def _targets(layers: Mapping[str, ConvLayer], names: Sequence[str] | None, skip_first: bool) -> list[str]:
    if names is None:
        first = min((l.index for l in layers.values()), default=None)
        return [n for n, l in layers.items() if l.eligible and not (skip_first and l.index == first)]
    bad = [n for n in names if n not in layers or not layers[n].eligible]
    if bad:
        raise ValueError(f"layers {bad} are not convolutions GDWS can approximate; eligible: "
                         f"{[n for n, l in layers.items() if l.eligible]}")
    return list(names)


def gdws_approximate(model: Any, *, method: str, budget: float | Mapping[str, float], alphas: Mapping[str, Any] | None = None,
                     variables: PyTree | None = None, input_shape: Sequence[int] | None = None,
                     layers: Sequence[str] | None = None, skip_first: bool = True) -> GDWSModel:
    """Approximates a trained model's convolutions by optimal GDWS convolutions (MEGO or LEGO per layer).

    Args:
      model: a :class:`jaxrob.models.Model`, or an ``apply_fn(variables, x)``.
      method: ``"mego"``: minimum weighted error with each layer's MACs at most
        ``budget`` times its original MACs (``budget=math.inf``: full rank, exact);
        ``"lego"``: fewest MACs with each layer's weighted error ``<= budget``
        (``budget=0``: exact). Per-layer budgets are this implementation's choice
        for a network (the paper's LEGO is applied layer by layer with one
        ``beta``; one fraction per layer is the natural MEGO counterpart, and a
        network-wide MAC budget would be a knapsack, no longer solved exactly by
        the greedy).
      budget: see ``method``; ``> 0`` for MEGO, ``>= 0`` for LEGO; one number for
        every layer or ``{layer name: budget}`` for each approximated layer.
      alphas: ``{layer name: (C,) weights}`` (:func:`gdws_alphas`); None: uniform.
      variables: the variables (default ``model.variables``).
      input_shape: per-example input shape (default ``model.input_shape``).
      layers: names of the layers to approximate; default every eligible
        convolution except the first (``skip_first``), as in the paper.
      skip_first: leave the first convolution alone (when ``layers`` is None).

    Returns:
      :class:`GDWSModel` with the MAC report.

    Example:
      >>> import jax
      >>> from jaxrob import models
      >>> net = models.create("cnn_small", key=jax.random.key(0))
      >>> g = gdws_approximate(net, method="mego", budget=0.25)
      >>> g.macs.layers["params/conv2/kernel"].gdws <= 0.25 * g.macs.layers["params/conv2/kernel"].original
      True
    """
    _validate.choice("method", method, ("mego", "lego"))
    if not isinstance(skip_first, bool):
        raise TypeError(f"skip_first must be a bool, got {skip_first!r}")

    def check(name, b):
        if method == "mego":
            if not (isinstance(b, numbers.Real) and b == math.inf):
                _validate.number(name, b, min=0, min_inclusive=False)
        else:
            _validate.number(name, b, min=0)
        return b

    apply_fn, variables, input_shape = _resolve_model(model, variables, input_shape)
    all_layers, _ = _trace(apply_fn, variables, input_shape)
    targets = _targets(all_layers, layers, skip_first)
    if isinstance(budget, Mapping):
        missing = [n for n in targets if n not in budget]
        if missing:
            raise ValueError(f"budget has no entry for layers {missing}; give one per approximated layer "
                             f"({targets}) or a single number")
        budgets = {n: check(f"budget[{n!r}]", budget[n]) for n in targets}
    else:
        budgets = {n: check("budget", budget) for n in targets}
    names, leaves, _ = _flat_paths(variables)
    by_name = dict(zip(names, leaves))
    alphas = {} if alphas is None else dict(alphas)
    ranks = {}
    for name in targets:
        layer = all_layers[name]
        sigma = channel_singular_values(by_name[name])
        alpha = alphas.get(name)
        b = budgets[name]
        if method == "mego":
            *k, c, m = layer.kernel_shape
            full = sigma.size
            g = full if b == math.inf else min(full, int(math.floor(b * m * c * math.prod(k)
                                                                 / (math.prod(k) + m) + 1e-9)))
            ranks[name] = mego_ranks(sigma, alpha, max_filters=g)
        else:
            ranks[name] = lego_ranks(sigma, alpha, max_error=b)
    return gdws_transform(apply_fn, ranks, variables=variables, input_shape=input_shape)


# --------------------------------------------------------------------------- error weights


def gdws_alphas(model: Any, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *, key: jax.Array,
                eps: float, steps: int = 10, step_size: float | None = None, norm: str = "linf",
                variables: PyTree | None = None, input_shape: Sequence[int] | None = None,
                layers: Sequence[str] | None = None, skip_first: bool = True,
                batch_size: int = 32) -> dict[str, jax.Array]:
    """Per-channel error weights ``alpha_c`` from the model's gradients on its own PGD examples.

    ``alpha_c = mean_x sum_{j != yhat} ||d(z_yhat - z_j)/dW_c||_F^2 / (2 M K^2 (z_yhat - z_j)^2)``
    with ``yhat = argmax z`` on the adversarial input (the paper's noise-gain
    weights; the ``1/(M K^2)`` spreads a block's squared error evenly over its
    ``M K^2`` entries, as in the authors' ``compute_alphas.py``). The model is
    evaluated in eval mode (the authors' script ran its networks in train mode
    with batch size 1; eval mode is what the approximated model will run in).

    Args:
      model: a :class:`jaxrob.models.Model` or an ``apply_fn(variables, x)``.
      x: ``(N, ...)`` inputs in [0, 1] (the paper uses training examples).
      y: ``(N,)`` labels for the attack.
      key: typed PRNG key for PGD's random start.
      eps: PGD radius; ``0`` uses the clean inputs.
      steps, step_size, norm: PGD settings (:func:`jaxrob.attacks.pgd`).
      variables, input_shape: as in :func:`gdws_approximate`.
      layers, skip_first: which convolutions (as in :func:`gdws_approximate`).
      batch_size: examples per compiled chunk (the last is padded and masked).

    Returns:
      ``{layer name: (C,) float32 alpha}``.
    """
    from jaxrob.attacks import pgd

    apply_fn, variables, input_shape = _resolve_model(model, variables, input_shape)
    key = _validate.prng_key("key", key)
    eps = float(_validate.number("eps", eps, min=0))
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    _validate.labels("y", y, batch=x.shape[0])
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example")
    all_layers, _ = _trace(apply_fn, variables, input_shape)
    targets = _targets(all_layers, layers, skip_first)
    names, leaves, treedef = _flat_paths(variables)
    index = {n: i for i, n in enumerate(names)}
    kernels = {n: leaves[index[n]] for n in targets}
    if not kernels:
        return {}

    def logits(ks, xi):
        new = list(leaves)
        for n, k in ks.items():
            new[index[n]] = k
        return apply_fn(jax.tree_util.tree_unflatten(treedef, new), xi[None])[0]

    def gains(ks, xi):
        jac, z = jax.jacrev(lambda k: (logits(k, xi),) * 2, has_aux=True)(ks)
        yhat = jnp.argmax(z)
        nc = z.shape[0]
        gap = (z[yhat] - z).astype(jnp.float32)
        w = jnp.where(jnp.arange(nc) == yhat, 0.0, 1.0 / (2.0 * jnp.maximum(gap ** 2, _TINY)))
        out = {}
        for n, j in jac.items():
            *k, c, m = kernels[n].shape
            d = (j[yhat] - j).astype(jnp.float32)                      # (nc, K.., C, M)
            sq = jnp.sum(d ** 2, axis=tuple(range(1, len(k) + 1)) + (d.ndim - 1,))  # (nc, C)
            out[n] = (w @ sq) / (m * math.prod(k))
        return out

    @jax.jit
    def chunk(xb, yb, valid, k):
        if eps > 0:
            xb = pgd(apply_fn, variables, xb, yb, key=k, eps=eps, steps=steps, step_size=step_size, norm=norm)
        g = jax.vmap(gains, in_axes=(None, 0))(kernels, xb)
        return jax.tree.map(lambda a: jnp.sum(a * valid[:, None], axis=0), g)

    n = x.shape[0]
    total = {t: jnp.zeros(kernels[t].shape[-2], jnp.float32) for t in targets}
    for b, start in enumerate(range(0, n, batch_size)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        pad = batch_size - xb.shape[0]
        valid = jnp.arange(batch_size) < xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.repeat(xb[-1:], pad, axis=0)])
            yb = jnp.concatenate([yb, jnp.repeat(yb[-1:], pad, axis=0)])
        part = chunk(xb, yb, valid.astype(jnp.float32), jax.random.fold_in(key, b))
        total = jax.tree.map(jnp.add, total, part)
    return {t: v / n for t, v in total.items()}


__all__ = [
    "ConvLayer", "GDWSConv", "GDWSModel", "LayerReport", "MACReport", "channel_singular_values", "conv_layers",
    "conv_macs", "gdws_alphas", "gdws_approximate", "gdws_conv", "gdws_decompose", "gdws_kernel", "gdws_macs",
    "gdws_transform", "kernel_matrix", "lego_ranks", "mego_ranks", "weighted_error",
]
