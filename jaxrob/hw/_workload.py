"""The workload a hardware cost model reads: a model's matrix products and convolutions as GEMMs.

A :class:`Workload` is a pytree of ``(L,)`` float32 arrays, one entry per layer, so cost
functions are plain ``jnp`` functions of it: jittable, ``vmap``-able over design points
and differentiable with respect to the continuous fields (per-layer bit-widths and
densities).  Every layer is ``groups`` independent GEMMs ``(M x K) @ (K x N)`` repeated
``count`` times:

* dense / matmul: ``M`` = rows of the activation (batch x tokens), ``K`` = reduction
  length, ``N`` = output features;
* convolution (im2col view, SCALE-Sim's): ``M`` = batch x output pixels, ``K`` =
  ``kh * kw * cin / groups``, ``N`` = ``cout / groups``, ``groups`` = the feature
  group count (a depthwise convolution is ``C`` GEMMs with ``K = kh * kw``, ``N = 1``).

MACs of a layer = ``count * groups * M * K * N``.  The static side (names, kinds and the
convolution geometry used for SCALE-Sim topology files) is kept in :class:`LayerInfo`
tuples beside the arrays, not inside the pytree.

Where workloads come from:

* :func:`extract` reads them from any ``apply_fn(params, x)``: it traces the function to a
  jaxpr and turns every ``conv_general_dilated`` and ``dot_general`` into a layer
  (``"conv"``, ``"dense"`` when one operand is a weight, ``"matmul"`` when both depend on the
  input), entering nested calls and multiplying ``count`` by ``scan`` lengths;
* :func:`resnet50`, :func:`mobilenet_v2` and :func:`bert_base_layer` are the standard
  accelerator benchmarks from their shapes alone (ImageNet sizes, no weights);
* :func:`to_scalesim_topology` writes a workload as a SCALE-Sim topology CSV whose layers
  SCALE-Sim maps to the same ``M x K x N`` GEMMs, for side-by-side checks.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.typing import ArrayLike

from jaxrob import _validate


class LayerInfo(NamedTuple):
    """Static description of one layer (not traced).

    Attributes:
      name: a readable name (``"conv3"``, ``"dense1"``, or the primitive and index).
      kind: ``"conv"``, ``"dense"`` or ``"matmul"`` (activation x activation, e.g. attention).
      ifmap_hw: ``(H, W)`` input spatial size for convolutions (padded as SCALE-Sim expects
        it, see :mod:`jaxrob.hw._workload`), else ``None``.
      filter_hw: ``(kh, kw)`` for convolutions, else ``None``.
      channels: input channels per group for convolutions, else ``None``.
      stride: the convolution stride (square strides), else ``None``.
      ofmap_hw: ``(Ho, Wo)`` output spatial size for 2-D convolutions, else ``None``.
      act_dtype: dtype name of the activation operand (for ``"matmul"``, the left one), or
        ``None`` when unknown (architecture-only workloads).
      weight_dtype: dtype name of the weight operand (for ``"matmul"``, the right
        activation), or ``None``.
      param: where the weight came from: the ``params`` leaf path (``"conv1/kernel"``),
        ``"<const>"`` for an array closed over by ``apply_fn``, or ``None`` (matmul layers,
        weights computed from ``params`` by other operations, architecture-only workloads).
    """

    name: str
    kind: str
    ifmap_hw: tuple[int, int] | None = None
    filter_hw: tuple[int, int] | None = None
    channels: int | None = None
    stride: int | None = None
    ofmap_hw: tuple[int, int] | None = None
    act_dtype: str | None = None
    weight_dtype: str | None = None
    param: str | None = None


class Workload(NamedTuple):
    """Per-layer GEMM dimensions and the differentiable per-layer knobs, all ``(L,)`` float32.

    Attributes:
      m, k, n: GEMM dimensions (see the module docstring).
      groups: independent GEMMs of that shape per layer (feature groups, attention heads).
      count: how many times the layer runs per forward pass (e.g. inside a ``scan``).
      weight_bits, act_bits: operand precisions (default 8).
      weight_density, act_density: fraction of non-zero weights / input activations (default 1).
    """

    m: jax.Array
    k: jax.Array
    n: jax.Array
    groups: jax.Array
    count: jax.Array
    weight_bits: jax.Array
    act_bits: jax.Array
    weight_density: jax.Array
    act_density: jax.Array

    @property
    def macs(self) -> jax.Array:
        """``(L,)`` multiply-accumulates per layer (dense count, before any sparsity)."""
        return self.count * self.groups * self.m * self.k * self.n


def make_workload(m, k, n, *, groups=1, count=1, weight_bits=8, act_bits=8, weight_density=1.0,
                  act_density=1.0) -> Workload:
    """A :class:`Workload` from per-layer sequences (scalars broadcast to every layer)."""
    m = jnp.atleast_1d(jnp.asarray(m, jnp.float32))
    shape = m.shape

    def col(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.float32), shape)

    return Workload(m, col(k), col(n), col(groups), col(count), col(weight_bits), col(act_bits),
                    col(weight_density), col(act_density))


# ----------------------------------------------------------------------------------------------
# Workload extraction from a traced apply_fn
# ----------------------------------------------------------------------------------------------

# Operations that only move, cast or broadcast their first operand: a weight passed through them
# is still "that params leaf" (its density is the leaf's density).
_LAYOUT = frozenset({"convert_element_type", "copy", "copy_p", "reshape", "transpose", "squeeze",
                     "expand_dims", "broadcast_in_dim", "slice", "dynamic_slice", "reduce_precision"})


class _Leaf(NamedTuple):
    """Where a weight operand came from: a path and (when concrete) the array itself."""

    path: str
    value: Any


class _Found(NamedTuple):
    kind: str
    m: int
    k: int
    n: int
    groups: int
    count: int
    act_dtype: str
    weight_dtype: str
    leaf: _Leaf | None
    geometry: dict


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _sub_jaxpr(eqn):
    """``(jaxpr, consts)`` of a call-like equation whose inner inputs are its inputs, else None."""
    for value in eqn.params.values():
        if isinstance(value, jcore.ClosedJaxpr):
            inner = (value.jaxpr, value.consts)
        elif isinstance(value, jcore.Jaxpr):
            inner = (value, ())
        else:
            continue
        if len(inner[0].invars) == len(eqn.invars):
            return inner
    return None


def _dot_layer(eqn, dep, leaves, count) -> _Found | None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    k = _prod(lhs.shape[i] for i in lc)
    groups = _prod(lhs.shape[i] for i in lb)
    lfree = _prod(d for i, d in enumerate(lhs.shape) if i not in lc and i not in lb)
    rfree = _prod(d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb)
    ldep, rdep = dep[:2]
    if ldep and rdep:
        return _Found("matmul", lfree, k, rfree, groups, count, str(lhs.dtype), str(rhs.dtype), None, {})
    if ldep:
        return _Found("dense", lfree, k, rfree, groups, count, str(lhs.dtype), str(rhs.dtype), leaves[1], {})
    if rdep:  # weight on the left (W @ x): M is still the activation's free size
        return _Found("dense", rfree, k, lfree, groups, count, str(rhs.dtype), str(lhs.dtype), leaves[0], {})
    return None  # a product of weights alone: foldable before deployment, not a layer


def _conv_layer(eqn, dep, leaves, count) -> _Found | None:
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    ldep, rdep = dep[:2]
    if not (ldep or rdep):
        return None
    groups = int(p["feature_group_count"]) * int(p["batch_group_count"])
    cin_per_group = int(rhs.shape[dn.rhs_spec[1]])
    cout = int(rhs.shape[dn.rhs_spec[0]])
    window = [int(rhs.shape[i]) for i in dn.rhs_spec[2:]]
    out_spatial = [int(out.shape[i]) for i in dn.out_spec[2:]]
    m = int(out.shape[dn.out_spec[0]]) * _prod(out_spatial)
    k = _prod(window) * cin_per_group
    n = cout // groups
    geometry: dict = {}
    if len(window) == 2:
        strides = tuple(int(s) for s in p["window_strides"])
        dil = tuple(int(d) for d in (p["rhs_dilation"] or (1, 1)))
        # The smallest (padded) input that yields this output: SCALE-Sim computes
        # ceil((H - kh + s) / s) output rows, which equals Ho exactly for this H.
        ifmap = tuple((o - 1) * s + (w - 1) * d + 1 for o, s, w, d in zip(out_spatial, strides, window, dil))
        geometry = dict(ifmap_hw=ifmap, filter_hw=tuple(window), channels=cin_per_group,
                        stride=strides[0] if strides[0] == strides[1] else None, ofmap_hw=tuple(out_spatial))
    if ldep and rdep:
        weight = None
    else:
        weight = leaves[1] if ldep else leaves[0]
    act, wgt = (lhs, rhs) if (ldep or not rdep) else (rhs, lhs)
    return _Found("conv", m, k, n, groups, count, str(act.dtype), str(wgt.dtype), weight, geometry)


def _walk(jaxpr, consts, dep_in, leaf_in, count: int, found: list) -> tuple[list, list]:
    """Walks ``jaxpr``; ``dep``: does a value depend on the input ``x``; ``leaf``: which weight it is.

    Appends a :class:`_Found` to ``found`` per dot/conv; returns the outputs' ``(dep, leaf)``.
    """
    dep: dict = {}
    leaf: dict = {}

    def d(v):
        return False if isinstance(v, jcore.Literal) else dep.get(v, False)

    def lf(v):
        return None if isinstance(v, jcore.Literal) else leaf.get(v)

    for v, c in zip(jaxpr.constvars, consts):
        leaf[v] = _Leaf("<const>", c)
    for v, a, t in zip(jaxpr.invars, dep_in, leaf_in):
        dep[v] = a
        if t is not None:
            leaf[v] = t
    for eqn in jaxpr.eqns:
        ind = [d(v) for v in eqn.invars]
        inl = [lf(v) for v in eqn.invars]
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        out_leaf = [None] * n_out
        if name in ("dot_general", "conv_general_dilated"):
            layer = (_dot_layer if name == "dot_general" else _conv_layer)(eqn, ind, inl, count)
            if layer is not None:
                found.append(layer)
            out_dep = [any(ind)] * n_out
        elif name == "scan":
            out_dep = _walk_scan(eqn, ind, inl, count, found)
        elif name == "while":
            out_dep = _walk_while(eqn, ind, inl, count, found)
        elif name == "cond":
            out_dep = _walk_cond(eqn, ind, inl, count, found)
        else:
            sub = _sub_jaxpr(eqn)
            if sub is not None:  # jit/pjit, closed_call, custom_jvp/vjp, checkpoint/remat, ...
                out_dep, out_leaf = _walk(sub[0], sub[1], ind, inl, count, found)
            else:
                out_dep = [any(ind)] * n_out
                if name in _LAYOUT and inl and inl[0] is not None:
                    out_leaf = [inl[0]] * n_out
        for v, a, t in zip(eqn.outvars, out_dep, out_leaf):
            dep[v] = a
            if t is not None:
                leaf[v] = t
    return [d(v) for v in jaxpr.outvars], [lf(v) for v in jaxpr.outvars]


def _fixpoint(body, consts, pre_dep, pre_leaf, carry_dep, post_dep, post_leaf, count, found, n_carry):
    """Walks a loop body until the set of input-dependent carries stops growing (a carry that
    starts as a constant, like an RNN state initialised to zeros, becomes input-dependent after
    one step).  Records the layers of the final pass only."""
    carry_dep = list(carry_dep)
    for _ in range(n_carry + 1):
        trial: list = []
        out_dep, _ = _walk(body, consts, pre_dep + carry_dep + post_dep,
                           pre_leaf + [None] * n_carry + post_leaf, count, trial)
        grown = [a or b for a, b in zip(carry_dep, out_dep[:n_carry])]
        if grown == carry_dep:
            break
        carry_dep = grown
    found.extend(trial)
    return carry_dep, out_dep


def _walk_scan(eqn, ind, inl, count, found):
    p = eqn.params
    nc, ncar, length = int(p["num_consts"]), int(p["num_carry"]), int(p["length"])
    body = p["jaxpr"]
    carry_dep, out_dep = _fixpoint(body.jaxpr, body.consts, ind[:nc], inl[:nc], ind[nc:nc + ncar],
                                   ind[nc + ncar:], inl[nc + ncar:], count * length, found, ncar)
    return carry_dep + out_dep[ncar:]


def _walk_while(eqn, ind, inl, count, found):
    p = eqn.params
    cn, bn = int(p["cond_nconsts"]), int(p["body_nconsts"])
    body, cond = p["body_jaxpr"], p["cond_jaxpr"]
    ncar = len(ind) - cn - bn
    carry_dep, _ = _fixpoint(body.jaxpr, body.consts, ind[cn:cn + bn], inl[cn:cn + bn], ind[cn + bn:],
                             [], [], count, found, ncar)
    _walk(cond.jaxpr, cond.consts, ind[:cn] + carry_dep, inl[:cn] + [None] * ncar, count, found)
    return carry_dep


def _walk_cond(eqn, ind, inl, count, found):
    best: list = []
    out_dep = [False] * len(eqn.outvars)
    for branch in eqn.params["branches"]:
        trial: list = []
        dep, _ = _walk(branch.jaxpr, branch.consts, ind[1:], inl[1:], count, trial)
        out_dep = [a or b for a, b in zip(out_dep, dep)]
        if not best or _total_macs(trial) > _total_macs(best):
            best = trial
    found.extend(best)
    return [a or ind[0] for a in out_dep]


def _total_macs(found) -> int:
    return sum(f.count * f.groups * f.m * f.k * f.n for f in found)


def _density(leaf: _Leaf | None, cache: dict) -> float:
    if leaf is None or leaf.value is None or isinstance(leaf.value, jax.ShapeDtypeStruct):
        return 1.0
    if isinstance(leaf.value, jax.core.Tracer) or not hasattr(leaf.value, "shape"):
        return 1.0
    key = id(leaf.value)
    if key not in cache:
        a = np.asarray(leaf.value)
        cache[key] = float(np.count_nonzero(a)) / a.size if a.size else 1.0
    return cache[key]


def _per_layer(name: str, value: Any, n_layers: int, *, min: float) -> np.ndarray:
    if isinstance(value, (list, tuple, np.ndarray, jax.Array)) and np.ndim(value) == 1:
        arr = np.asarray(value, np.float64)
        if arr.shape != (n_layers,):
            raise ValueError(f"{name} must be a number or a sequence of one value per layer ({n_layers} "
                             f"layers found), got {arr.shape[0]} values")
    else:
        arr = np.full((n_layers,), _validate.number(name, value, min=min), np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < min):
        raise ValueError(f"{name} must be finite and >= {min} for every layer, got {arr.tolist()}")
    return arr


def extract(apply_fn: Callable[..., Any], params: Any, x: Any, *, names: Sequence[str] | None = None,
            weight_bits: ArrayLike | Sequence[float] = 8, act_bits: ArrayLike | Sequence[float] = 8,
            ) -> tuple[Workload, tuple[LayerInfo, ...]]:
    """The convolutions and matrix products of ``apply_fn(params, x)``, read from its jaxpr.

    Traces ``jax.make_jaxpr(apply_fn)(params, x)`` (abstractly: nothing is computed) and
    walks the equations, entering ``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``,
    ``custom_vjp_call``, ``checkpoint``/``remat`` and any other call-like primitive whose
    inner jaxpr takes the equation's inputs.  Every ``conv_general_dilated`` and
    ``dot_general`` becomes one layer, in program order:

    * **conv**: ``groups`` = ``feature_group_count * batch_group_count`` (one of them is 1),
      ``M`` = output batch x output pixels, ``K`` = kernel taps x input channels per group,
      ``N`` = output channels / ``groups`` (any ``dimension_numbers``, strides, padding and
      dilations: the sizes are read from the operand and output shapes).  For 2-D
      convolutions :class:`LayerInfo` holds the geometry SCALE-Sim needs; its ``ifmap_hw``
      is the smallest padded input that produces the output, ``(Ho - 1) * s + (kh - 1) * d + 1``
      (trailing rows a strided window never reaches are dropped, see
      :func:`to_scalesim_topology`).  With ``lhs_dilation`` (transposed convolutions) it is
      counted on the dilated input, inserted zeros included, as XLA computes it.
    * **dense** (one operand depends on ``x``, the other does not): ``M`` = the activation's
      free (non-contracting, non-batch) size, ``K`` = the contracted size, ``N`` = the
      weight's free size, ``groups`` = the product of the batch dimensions.
    * **matmul** (both operands depend on ``x``, e.g. attention ``QK^T`` and ``AV``):
      ``M``/``N`` = the left/right free sizes as traced, ``groups`` = the batch dimensions
      (batch x heads).  Note that ``jnp.einsum`` may swap its two operands (then ``M`` and
      ``N`` swap; MACs do not change); ``a @ b`` keeps them in order.

    "Depends on ``x``" is tracked through every equation (a value computed from ``params`` and
    constants only is a weight).  A product of two weights (e.g. a low-rank factor product)
    is not a layer: it does not depend on the input and a deployment folds it beforehand.

    Control flow: a layer inside ``lax.scan`` has its ``count`` multiplied by the scan length
    (nested scans multiply); a carry that starts input-independent (an RNN state initialised
    to zeros) is found to depend on ``x`` by iterating the body to a fixed point.  For
    ``lax.cond``/``switch`` the branch with the most MACs is kept (a worst-case cost).  The
    trip count of a ``lax.while_loop`` is not known at trace time: its layers get ``count``
    1 per enclosing scan iteration -- multiply ``count`` yourself if you know it
    (``fori_loop`` with static bounds lowers to ``scan`` and is counted exactly).

    Precision and density: ``weight_bits`` and ``act_bits`` are taken from the arguments (8
    by default; the operands' dtypes are recorded in :class:`LayerInfo` but not turned into
    bit-widths, since a float32 simulation usually stands for a lower-precision deployment).
    ``weight_density`` is the fraction of non-zero entries of the weight's ``params`` leaf
    (or closed-over constant) when it is concrete and reaches the layer through layout-only
    operations (reshape, transpose, cast, slice, broadcast); for a stacked leaf sliced in a
    scan it is the density of the whole leaf.  Otherwise (abstract params, weights computed
    by other operations, matmul layers) it is 1, as is ``act_density``: replace the fields
    with ``workload._replace(...)`` when measured values are available.

    Args:
      apply_fn: ``apply_fn(params, x)``, any JAX-traceable function.
      params: its first argument (a pytree of arrays or :class:`jax.ShapeDtypeStruct`).
      x: the input, an array or a :class:`jax.ShapeDtypeStruct` (or a pytree of them), with
        the batch size the workload is for.
      names: optional names for the layers, one per layer found, in program order (default
        ``"conv0"``, ``"dense1"``, ``"matmul2"``, ... indexed over all layers).
      weight_bits, act_bits: a number >= 1 for every layer, or a sequence with one per layer.

    Returns:
      ``(workload, infos)``: a :class:`Workload` of ``L`` layers and ``L`` :class:`LayerInfo`.

    Raises:
      TypeError: ``apply_fn`` is not callable or ``x`` is not an array / ShapeDtypeStruct.
      ValueError: no convolution or matrix product depends on ``x``, ``names`` has the wrong
        length, or a bit-width is < 1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.hw._workload import extract
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((784, 256)), "w2": jnp.ones((256, 10))}
      >>> wl, infos = extract(f, p, jax.ShapeDtypeStruct((32, 784), jnp.float32))
      >>> [int(v) for v in wl.macs]
      [6422528, 81920]
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {type(apply_fn).__name__}")
    x_leaves = jax.tree.leaves(x)
    if not x_leaves:
        raise TypeError("x must be an array or a jax.ShapeDtypeStruct (or a pytree of them), got an empty "
                        f"{type(x).__name__}")
    for leaf in x_leaves:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"x must be an array or a jax.ShapeDtypeStruct (or a pytree of them); got a leaf "
                            f"of type {type(leaf).__name__}: pass jnp.zeros(shape) or "
                            f"jax.ShapeDtypeStruct(shape, dtype)")
    paths, p_leaves = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        paths.append(jax.tree_util.keystr(path, simple=True, separator="/"))
        p_leaves.append(leaf)
    closed = jax.make_jaxpr(apply_fn)(params, x)
    n_in = len(p_leaves) + len(x_leaves)
    if len(closed.jaxpr.invars) != n_in:
        raise ValueError(f"could not match apply_fn's {len(closed.jaxpr.invars)} traced inputs to the "
                         f"{len(p_leaves)} leaves of params and {len(x_leaves)} of x")
    dep = [False] * len(p_leaves) + [True] * len(x_leaves)
    leaves = [_Leaf(p, v) for p, v in zip(paths, p_leaves)] + [None] * len(x_leaves)
    found: list[_Found] = []
    _walk(closed.jaxpr, closed.consts, dep, leaves, 1, found)
    if not found:
        raise ValueError("apply_fn has no convolution (conv_general_dilated) or matrix product (dot_general) "
                         "that depends on x; nothing to cost")
    n_layers = len(found)
    if names is None:
        names = [f"{f.kind}{i}" for i, f in enumerate(found)]
    else:
        if isinstance(names, str) or not all(isinstance(s, str) for s in names):
            raise TypeError(f"names must be a sequence of strings, got {names!r}")
        names = list(names)
        if len(names) != n_layers:
            raise ValueError(f"names must have one entry per layer: {n_layers} layers found "
                             f"({', '.join(f.kind for f in found)}), got {len(names)} names")
    wbits = _per_layer("weight_bits", weight_bits, n_layers, min=1.0)
    abits = _per_layer("act_bits", act_bits, n_layers, min=1.0)
    cache: dict = {}
    workload = make_workload(
        [f.m for f in found], [f.k for f in found], [f.n for f in found],
        groups=[f.groups for f in found], count=[f.count for f in found], weight_bits=wbits,
        act_bits=abits, weight_density=[_density(f.leaf, cache) for f in found])
    infos = tuple(
        LayerInfo(name, f.kind, act_dtype=f.act_dtype, weight_dtype=f.weight_dtype,
                  param=f.leaf.path if f.leaf is not None else None, **f.geometry)
        for name, f in zip(names, found))
    return workload, infos


# ----------------------------------------------------------------------------------------------
# Architecture-only workloads (shapes only, no weights)
# ----------------------------------------------------------------------------------------------


class _Builder:
    """Accumulates layers of an architecture given by its shapes."""

    def __init__(self, batch: int):
        self.batch = batch
        self.rows: list[tuple[int, int, int, int, int]] = []  # m, k, n, groups, count
        self.infos: list[LayerInfo] = []

    def conv(self, name: str, hw: int, cin: int, cout: int, kernel: int, stride: int = 1,
             pad: int = 0, groups: int = 1) -> int:
        """A square conv on a ``hw x hw`` input; returns the output size."""
        out = (hw + 2 * pad - kernel) // stride + 1
        if out < 1:
            raise ValueError(f"layer {name}: a {kernel}x{kernel} stride-{stride} convolution of a {hw}x{hw} "
                             f"input has no output; use a larger image")
        ifmap = (out - 1) * stride + kernel
        self.rows.append((self.batch * out * out, kernel * kernel * cin // groups, cout // groups, groups, 1))
        self.infos.append(LayerInfo(name, "conv", (ifmap, ifmap), (kernel, kernel), cin // groups, stride,
                                    (out, out)))
        return out

    def gemm(self, name: str, kind: str, m: int, k: int, n: int, groups: int = 1) -> None:
        self.rows.append((m, k, n, groups, 1))
        self.infos.append(LayerInfo(name, kind))

    def build(self, count: int = 1) -> tuple[Workload, tuple[LayerInfo, ...]]:
        m, k, n, g, _ = (list(c) for c in zip(*self.rows))
        return make_workload(m, k, n, groups=g, count=count), tuple(self.infos)


def _check_shape_args(batch: Any, image: Any | None = None) -> tuple[int, int | None]:
    batch = _validate.number("batch", batch, min=1, integer=True)
    if image is not None:
        image = _validate.number("image", image, min=32, integer=True)
    return batch, image


def resnet50(batch: int = 1, image: int = 224) -> tuple[Workload, tuple[LayerInfo, ...]]:
    """ImageNet ResNet-50 (v1.5, torchvision's): 53 convolutions and the 2048 -> 1000 classifier.

    Stem 7x7/2 conv (pad 3) to 64 channels and a 3x3/2 max pool, then four stages of
    ``(3, 4, 6, 3)`` bottleneck blocks ``1x1 -> 3x3 -> 1x1`` of widths 64, 128, 256, 512 with
    expansion 4; the first block of stages 2-4 has stride 2 in its 3x3 convolution (the
    "v1.5" placement of torchvision and MLPerf; the original paper strides the first 1x1,
    giving about 3.9 G instead of 4.1 G MACs at 224) and every first block a 1x1 projection
    shortcut (``downsample``).  Pooling, batch norm, additions and activations are not
    counted.  At 224 x 224 this is 4.09 G MACs per image, torchvision's figure.

    Args:
      batch: images per forward pass (``M`` scales with it).
      image: input height = width, >= 32.

    Returns:
      ``(workload, infos)`` with 54 layers, named like torchvision's modules
      (``conv1``, ``layer1.0.conv1``, ..., ``layer1.0.downsample``, ``fc``).

    References:
      Deep Residual Learning for Image Recognition, He, Zhang, Ren & Sun, CVPR 2016,
      arXiv:1512.03385 (layer table: Table 1).
    """
    batch, image = _check_shape_args(batch, image)
    b = _Builder(batch)
    hw = b.conv("conv1", image, 3, 64, 7, 2, 3)
    hw = (hw + 2 - 3) // 2 + 1  # 3x3/2 max pool, pad 1
    cin = 64
    for s, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
        for i in range(blocks):
            st = stride if i == 0 else 1
            pre = f"layer{s}.{i}."
            b.conv(pre + "conv1", hw, cin, width, 1)
            out = b.conv(pre + "conv2", hw, width, width, 3, st, 1)
            b.conv(pre + "conv3", out, width, 4 * width, 1)
            if i == 0:
                b.conv(pre + "downsample", hw, cin, 4 * width, 1, st)
            hw, cin = out, 4 * width
    b.gemm("fc", "dense", batch, 2048, 1000)
    return b.build()


def _make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of ``divisor``, never below 90% of ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def mobilenet_v2(batch: int = 1, image: int = 224, width: float = 1.0) -> tuple[Workload, tuple[LayerInfo, ...]]:
    """ImageNet MobileNetV2: 52 convolutions (17 depthwise) and the 1280 -> 1000 classifier.

    A 3x3/2 stem conv to 32 channels, the paper's 17 inverted-residual blocks
    ``(t, c, n, s)`` = (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1),
    (6,160,3,2), (6,320,1,1) -- each a 1x1 expansion to ``t * cin`` channels (absent when
    ``t = 1``), a 3x3 depthwise conv (``groups`` = channels, ``K`` = 9, ``N`` = 1) with the
    block's stride and a 1x1 projection -- then a 1x1 conv to 1280 channels, global pooling
    and the classifier.  Channels are ``width * c`` rounded to a multiple of 8 (not below
    90%) and the last conv keeps 1280 channels for ``width < 1``, as in the paper and
    torchvision.  At 224 x 224 and ``width = 1`` this is 300.8 M MACs (the paper: 300 M).

    Args:
      batch: images per forward pass.
      image: input height = width, >= 32.
      width: the width multiplier (> 0).

    Returns:
      ``(workload, infos)`` with 53 layers named ``conv_stem``, ``block{i}.expand``,
      ``block{i}.dw``, ``block{i}.project``, ``conv_last``, ``fc``.

    References:
      MobileNetV2: Inverted Residuals and Linear Bottlenecks, Sandler, Howard, Zhu,
      Zhmoginov & Chen, CVPR 2018, arXiv:1801.04381 (Table 2).
    """
    batch, image = _check_shape_args(batch, image)
    width = _validate.number("width", width, min=0.0, min_inclusive=False)
    b = _Builder(batch)
    cin = _make_divisible(32 * width)
    hw = b.conv("conv_stem", image, 3, cin, 3, 2, 1)
    index = 0
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        cout = _make_divisible(c * width)
        for i in range(n):
            hidden = int(round(cin * t))
            pre = f"block{index}."
            if t != 1:
                b.conv(pre + "expand", hw, cin, hidden, 1)
            hw = b.conv(pre + "dw", hw, hidden, hidden, 3, s if i == 0 else 1, 1, groups=hidden)
            b.conv(pre + "project", hw, hidden, cout, 1)
            cin = cout
            index += 1
    last = _make_divisible(1280 * max(1.0, width))
    b.conv("conv_last", hw, cin, last, 1)
    b.gemm("fc", "dense", batch, last, 1000)
    return b.build()


def bert_base_layer(seq_len: int = 128, batch: int = 1, *, num_layers: int = 1,
                    ) -> tuple[Workload, tuple[LayerInfo, ...]]:
    """One BERT-base encoder layer (hidden 768, 12 heads of 64, FFN 3072) as GEMMs.

    Layers: the ``q``, ``k``, ``v`` and ``o`` projections (dense, ``M`` = batch x seq_len,
    768 x 768), the per-head score product ``qk`` (``Q K^T``: matmul, ``groups`` = batch x 12,
    ``M`` = ``N`` = seq_len, ``K`` = 64) and value product ``av`` (``M`` = seq_len,
    ``K`` = seq_len, ``N`` = 64), and the feed-forward ``ffn1`` (768 -> 3072) and ``ffn2``
    (3072 -> 768).  Softmax, layer norms, biases and GELU are not counted.  Per layer and
    sequence: ``12 L d^2 + 2 L^2 d`` MACs with ``d = 768``, e.g. 931,135,488 at ``L = 128``.

    Args:
      seq_len: tokens per sequence.
      batch: sequences per forward pass.
      num_layers: identical encoder layers (the ``count`` field; BERT-base has 12).

    Returns:
      ``(workload, infos)`` with 8 layers.

    References:
      BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding,
      Devlin, Chang, Lee & Toutanova, NAACL 2019, arXiv:1810.04805.
    """
    batch, _ = _check_shape_args(batch)
    seq_len = _validate.number("seq_len", seq_len, min=1, integer=True)
    num_layers = _validate.number("num_layers", num_layers, min=1, integer=True)
    d, heads, ffn = 768, 12, 3072
    rows = batch * seq_len
    b = _Builder(batch)
    for name in ("q", "k", "v", "o"):
        b.gemm(name, "dense", rows, d, d)
    b.gemm("qk", "matmul", seq_len, d // heads, seq_len, groups=batch * heads)
    b.gemm("av", "matmul", seq_len, seq_len, d // heads, groups=batch * heads)
    b.gemm("ffn1", "dense", rows, d, ffn)
    b.gemm("ffn2", "dense", rows, ffn, d)
    return b.build(count=num_layers)


# ----------------------------------------------------------------------------------------------
# SCALE-Sim topology files
# ----------------------------------------------------------------------------------------------

SCALESIM_HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                   "Num Filter, Strides,")


def _scalesim_dims(h: int, w: int, fh: int, fw: int, ch: int, nf: int, s: int) -> tuple[int, int, int]:
    """SCALE-Sim's ``(S_r, T, S_c)`` for the output-stationary view of a topology row
    (``topology_utils.topo_calc_hyperparams``: ``ofmap = ceil((ifmap - filter + stride) / stride)``)."""
    oh = -(-(h - fh + s) // s)
    ow = -(-(w - fw + s) // s)
    return oh * ow, fh * fw * ch, nf


def _csv_name(name: str) -> str:
    # SCALE-Sim splits rows on commas and expands every layer whose name contains "DP"
    # into per-channel layers; keep both out of names that do not ask for it.
    return name.replace(",", "_").replace("DP", "D_P").strip() or "layer"


def to_scalesim_topology(workload: Workload, infos: Sequence[LayerInfo], *, expand: bool = False) -> str:
    """The layers as a SCALE-Sim topology CSV, one GEMM per row, such that SCALE-Sim's
    ``S_r x S_c x T`` (output-stationary) equals our ``M x N x K``.

    Row forms (SCALE-Sim's convolution CSV, read by ``topology_utils.load_arrays_conv`` in
    scale-sim-v2 and -v3; each row ends with a comma, which SCALE-Sim strips):

    * a 2-D convolution whose geometry SCALE-Sim can express -- square stride, no dilation,
      batch 1 -- is written as it is, with the IFMAP size of :class:`LayerInfo`:
      SCALE-Sim has no padding and computes ``ceil((H - kh + s) / s)`` output rows, so we
      write the padded input cut to the rows a window reaches, ``(Ho - 1) * s + kh``, for
      which that formula gives exactly our ``Ho`` (e.g. ResNet-50's 7x7/2 stem at 224 is
      written as a 229 x 229 input, giving 112 x 112 outputs; SCALE-Sim's own
      ``Resnet50.csv`` writes 224 and gets 110).  The rule used is the check itself: the
      convolution form is written only if SCALE-Sim's formulas reproduce ``M``, ``K`` and
      ``N``;
    * everything else (dense and matmul layers, batched or dilated convolutions, 1-D/3-D
      convolutions) is written in the form SCALE-Sim itself converts GEMM (``M, N, K``)
      topologies to (``topology_utils.load_arrays_gemm``): IFMAP ``M x K``, filter
      ``1 x K``, 1 channel, ``N`` filters, stride 1, i.e. ``S_r = M``, ``T = K``,
      ``S_c = N``.

    A row is one of the layer's ``groups x count`` identical GEMMs.  With ``expand=False``
    (default) there is one row per layer, in workload order: multiply SCALE-Sim's per-layer
    cycles by ``workload.groups * workload.count`` to compare totals.  With ``expand=True``
    each layer's row is repeated ``count`` times and its groups are written out: a
    depthwise-style convolution (one input channel per group, convolution form) as a single
    row whose name ends in ``_DP`` with ``Channels`` = groups, which SCALE-Sim expands into
    one single-channel layer per group itself; other grouped layers as ``groups`` rows
    ``name_g{j}``.  Bit-widths and densities are not written (SCALE-Sim's optional N:M
    sparsity column is left to its default, dense).

    Args:
      workload: integer-valued, concrete dimensions (``m``, ``k``, ``n``, ``groups``,
        ``count``); the relaxed, non-integer design points of a search cannot be written.
      infos: the :class:`LayerInfo` tuple returned with the workload.
      expand: write every GEMM as its own row (see above).

    Returns:
      The CSV text: the header line and one line per row, each ending in ``",\\n"``.

    References:
      SCALE-Sim: Systolic CNN Accelerator Simulator, Samajdar, Zhu, Whatmough, Mattina &
      Krishna, arXiv:1811.02883; topology format and parser read from
      github.com/scalesim-project/scale-sim-v3 (``scalesim/topology_utils.py``).
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a jaxrob.hw Workload, got {type(workload).__name__}")
    infos = tuple(infos)
    if not all(isinstance(i, LayerInfo) for i in infos):
        raise TypeError("infos must be a sequence of LayerInfo (the second value returned with the workload)")
    fields = {}
    for f in ("m", "k", "n", "groups", "count"):
        value = getattr(workload, f)
        if not _validate.is_concrete(value):
            raise ValueError("to_scalesim_topology needs concrete workload dimensions; call it outside jit")
        arr = np.atleast_1d(np.asarray(value, np.float64))
        if arr.shape != (len(infos),):
            raise ValueError(f"workload.{f} has {arr.shape[0] if arr.ndim else 1} layers but infos has "
                             f"{len(infos)}; pass the infos returned with this workload")
        low = 0 if f == "count" else 1
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < low):
            raise ValueError(f"workload.{f} must hold integers >= {low} for a topology file, got "
                             f"{arr.tolist()}")
        fields[f] = arr.astype(np.int64)
    lines = [SCALESIM_HEADER]
    for i, info in enumerate(infos):
        m, k, n, g, c = (int(fields[f][i]) for f in ("m", "k", "n", "groups", "count"))
        name = _csv_name(info.name)
        conv_row = None
        if (info.kind == "conv" and info.ifmap_hw and info.filter_hw and info.channels and info.stride):
            (h, w), (fh, fw) = info.ifmap_hw, info.filter_hw
            if fh <= h and fw <= w and _scalesim_dims(h, w, fh, fw, info.channels, n, info.stride) == (m, k, n):
                conv_row = (h, w, fh, fw, info.channels, n, info.stride)
        row = conv_row if conv_row is not None else (m, k, 1, k, 1, n, 1)
        if not expand:
            rows = [(name, row)]
        elif g == 1:
            rows = [(name, row)]
        elif conv_row is not None and info.channels == 1:
            rows = [(name + "_DP", row[:4] + (g,) + row[5:])]
        else:
            rows = [(f"{name}_g{j}", row) for j in range(g)]
        for _ in range(c if expand else 1):
            lines.extend(f"{nm}, " + ", ".join(str(v) for v in r) + "," for nm, r in rows)
    return "\n".join(lines) + "\n"
