"""D.U.B. crossbar-attuned pruning: Discrete, Unstructured, Balanced column sparsity.

In an analog in-memory accelerator a layer's weight matrix is cut into
crossbars of ``rows x cols`` cells; every crossbar column computes one partial
dot product of up to ``rows`` terms, and an ADC per column digitises it. The ADC
needs enough bits to resolve the largest value a column can produce, which
grows with the number of non-zero weights in that column, and one ADC design
serves all the columns of a crossbar. Pruning only saves ADC energy when *every*
column of a crossbar falls to the next power of two of non-zeros (each halving
saves one bit). Ibrayev et al. therefore ask for sparsity that is

* **D**iscrete: a column keeps ``rows / 2**k`` weights (density ``2**-k``);
* **U**nstructured: which weights a column keeps is free (the largest ``|w|``);
* **B**alanced: all the columns of one crossbar reach the same level, so no
  column holds its crossbar's ADC at a higher resolution.

They reach it in three steps, all here:

1. **Regularised training** (:func:`dub_loss`): the task loss plus ``strength``
   times :func:`balance_penalty`, the sum over crossbars of the variance of the
   relaxed L0 norms (:func:`relaxed_l0`) of the crossbar's columns, plus
   ordinary L2 weight decay (through the optimizer) that drives unimportant
   weights towards zero.
2. **Power-of-two balanced pruning** (:func:`dub_masks`): per crossbar, the
   least sparse column's count of significant weights is rounded to a power of
   two, and every column of the crossbar keeps exactly that many of its largest
   ``|w|``.
3. **Fine-tuning with the masks fixed** (:func:`dub_fit` does 1-3 through
   :func:`jaxrob.train.fit` and :func:`jaxrob.prune.masked_model`).

:func:`crossbar_report` measures the result as a function of the masks: per
column non-zeros and sparsity, per crossbar balance, crossbars still in use, the
ADC resolution each crossbar needs and the ADC energy relative to the dense
mapping.

**Mapping onto crossbars** (:func:`crossbar_matrix`). Inputs go to crossbar rows
and outputs to crossbar columns. A dense kernel ``(in, out)`` is used as is; a
convolution kernel ``(KH, KW, Cin, Cout)`` (HWIO, Flax) becomes the
``(Cin * KH * KW, Cout)`` matrix whose row ``cin * KH * KW + kh * KW + kw`` holds
``w[kh, kw, cin, :]`` -- the row order of the authors' code, which flattens
PyTorch's ``(Cout, Cin, KH, KW)`` weight to ``(Cout, Cin*KH*KW)`` and maps output
channels to columns; any ``N``-d convolution kernel ``(*spatial, Cin, Cout)`` is
mapped the same way. The matrix is cut into a grid of ``ceil(in / rows) x
ceil(out / cols)`` crossbars, the last row and column of crossbars padded with
zeros (padding rows hold no weights and padding columns are not part of any
balance or energy figure).

References:
  Ibrayev, Garg, Chakraborty, Roy, "Pruning for Improved ADC Efficiency in
  Crossbar-based Analog In-memory Accelerators", arXiv 2403.13082 (2024).
  Details not in the abstract were read from the authors' public code,
  github.com/TimurIbrayev/DUB_Sparsity_for_XBars (``c1_Hoyer_and_variance_*``);
  where it and this module differ, the docstrings say so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.prune._masks import Where, apply_masks, masked_model, named_leaves, path_name

PyTree = Any

__all__ = [
    "CrossbarReport", "DubResult", "LayerCrossbars", "as_crossbar", "balance_penalty", "crossbar_matrix",
    "crossbar_report", "crossbar_tiles", "dub_fit", "dub_loss", "dub_masks", "from_crossbar_matrix",
    "power_of_two_level", "relaxed_l0",
]


# --------------------------------------------------------------------------------------------------------------
# crossbar geometry
# --------------------------------------------------------------------------------------------------------------

def as_crossbar(crossbar: Any) -> tuple[int, int]:
    """Validates a crossbar size and returns it as ``(rows, cols)``.

    Args:
      crossbar: an int ``n`` (an ``n x n`` crossbar, as the paper's 32 ... 256
        tile sizes) or a pair ``(rows, cols)``. ``rows`` must be a power of two
        (the D.U.B. levels are ``rows / 2**k`` non-zeros per column); ``cols``
        any positive integer.

    Returns:
      ``(rows, cols)`` as Python ints.

    Raises:
      TypeError: not an int or a pair of ints.
      ValueError: a size below 1, or ``rows`` not a power of two.
    """
    if isinstance(crossbar, (int, np.integer)) and not isinstance(crossbar, bool):
        pair = (int(crossbar), int(crossbar))
    elif isinstance(crossbar, (tuple, list)) and len(crossbar) == 2:
        pair = tuple(crossbar)
    else:
        raise TypeError(f"crossbar must be an int n (n x n) or a pair (rows, cols) of ints, got {crossbar!r}")
    rows = _validate.number("crossbar rows", pair[0], min=1, integer=True)
    cols = _validate.number("crossbar cols", pair[1], min=1, integer=True)
    if rows & (rows - 1):
        raise ValueError(f"crossbar rows must be a power of two (1, 2, 4, ..., 64, 128, ...): the D.U.B. levels keep "
                         f"rows / 2**k weights per column; got rows={rows}")
    return rows, cols


def crossbar_matrix(w: jax.typing.ArrayLike) -> jax.Array:
    """The 2-D ``(inputs, outputs)`` matrix a kernel is programmed as (rows = inputs, columns = outputs).

    Args:
      w: a dense kernel ``(in, out)`` or a convolution kernel ``(*spatial, Cin,
        Cout)`` (HWIO for 2-D).

    Returns:
      ``(in, out)`` for a dense kernel; ``(Cin * prod(spatial), Cout)`` for a
      convolution, row ``cin * prod(spatial) + flat_spatial_index`` (input
      channel major, as PyTorch's ``weight.flatten(1)`` in the authors' code).

    Raises:
      ValueError: ``w`` has fewer than 2 dimensions.

    Example:
      >>> import jax.numpy as jnp
      >>> crossbar_matrix(jnp.zeros((3, 3, 16, 32))).shape
      (144, 32)
    """
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"a crossbar-mapped kernel needs >= 2 dimensions ((in, out) or (*spatial, Cin, Cout)), "
                         f"got shape {w.shape}")
    if w.ndim == 2:
        return w
    return jnp.moveaxis(w, -2, 0).reshape(-1, w.shape[-1])


def from_crossbar_matrix(m: jax.typing.ArrayLike, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`crossbar_matrix`: the ``(in, out)`` matrix back in the kernel's ``shape``."""
    m = jnp.asarray(m)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return m.reshape(shape)
    lead = (shape[-2],) + shape[:-2] + (shape[-1],)
    return jnp.moveaxis(m.reshape(lead), 0, -2)


def _grid(shape: tuple[int, ...], crossbar: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(n_in, n_out, crossbar grid rows, crossbar grid cols)`` of a kernel shape."""
    n_out = int(shape[-1])
    n_in = int(np.prod(shape[:-1]))
    rows, cols = crossbar
    return n_in, n_out, -(-n_in // rows), -(-n_out // cols)


def crossbar_tiles(w: jax.typing.ArrayLike, *, crossbar: Any) -> jax.Array:
    """A kernel cut into crossbars: ``(grid_rows, grid_cols, rows, cols)``, zero padded.

    Tile ``[i, j]`` holds matrix rows ``i*rows ... i*rows + rows - 1`` and columns
    ``j*cols ... j*cols + cols - 1`` of :func:`crossbar_matrix` ``(w)``.

    Args:
      w: a kernel (see :func:`crossbar_matrix`).
      crossbar: ``n`` or ``(rows, cols)`` (see :func:`as_crossbar`).

    Returns:
      The tiles, ``(ceil(in / rows), ceil(out / cols), rows, cols)``.

    Example:
      >>> import jax.numpy as jnp
      >>> crossbar_tiles(jnp.ones((100, 40)), crossbar=(64, 32)).shape
      (2, 2, 64, 32)
    """
    rows, cols = as_crossbar(crossbar)
    return _tiles(crossbar_matrix(w), rows, cols)


def _tiles(m: jax.Array, rows: int, cols: int) -> jax.Array:
    n_in, n_out = m.shape
    gr, gc = -(-n_in // rows), -(-n_out // cols)
    m = jnp.pad(m, ((0, gr * rows - n_in), (0, gc * cols - n_out)))
    return m.reshape(gr, rows, gc, cols).transpose(0, 2, 1, 3)


def _untile(t: jax.Array, n_in: int, n_out: int) -> jax.Array:
    gr, gc, rows, cols = t.shape
    return t.transpose(0, 2, 1, 3).reshape(gr * rows, gc * cols)[:n_in, :n_out]


def _valid(n_in: int, n_out: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows holding weights per grid row ``(gr,)`` and a real-column mask ``(gc, cols)``."""
    gr, gc = -(-n_in // rows), -(-n_out // cols)
    real_rows = np.minimum(rows, n_in - rows * np.arange(gr))
    real_cols = (np.arange(gc)[:, None] * cols + np.arange(cols)[None, :]) < n_out
    return real_rows, real_cols


# --------------------------------------------------------------------------------------------------------------
# the relaxation and the balance regularizer
# --------------------------------------------------------------------------------------------------------------

@jax.custom_vjp
def _positive_gradient_gate(h: jax.Array) -> jax.Array:
    """Identity forward; backward passes only the positive part of the incoming gradient."""
    return h


def _gate_fwd(h):
    return h, None


def _gate_bwd(_, g):
    return (jnp.maximum(g, 0.0),)


_positive_gradient_gate.defvjp(_gate_fwd, _gate_bwd)


def relaxed_l0(w: jax.typing.ArrayLike, *, crossbar: Any, eps: float = 1e-6) -> jax.Array:
    """The paper's differentiable L0 surrogate of every crossbar column: the Hoyer measure.

    For the weights ``v`` of one crossbar column (the ``rows`` cells of one
    output in one crossbar), ``H(v) = (sum |v|)**2 / (sum v**2 + eps)``. By
    Cauchy-Schwarz ``H(v) <= ||v||_0`` with equality when the non-zeros have
    equal magnitudes; it is scale invariant, so it measures how many weights
    the column effectively uses, not how large they are. (The authors' code
    computes exactly this ratio, with ``eps = 1e-6``, per tile column.)

    Args:
      w: a kernel (see :func:`crossbar_matrix`).
      crossbar: ``n`` or ``(rows, cols)``.
      eps: added to the denominator, ``> 0``; an all-zero column gets ``0``.

    Returns:
      ``(grid_rows, grid_cols, cols)`` float array; entries of padding columns
      are ``0``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.zeros((4, 2)).at[:2, 0].set(3.0).at[:, 1].set(-1.0)   # 2 and 4 equal non-zeros
      >>> relaxed_l0(w, crossbar=(4, 2)).round(3).tolist()
      [[[2.0, 4.0]]]
    """
    rows, cols = as_crossbar(crossbar)
    eps = float(_validate.number("eps", eps, min=0.0, min_inclusive=False))
    return _hoyer(_tiles(crossbar_matrix(w), rows, cols), eps)


def _hoyer(tiles: jax.Array, eps: float) -> jax.Array:
    l1 = jnp.sum(jnp.abs(tiles), axis=-2)
    l2sq = jnp.sum(jnp.square(tiles), axis=-2)
    return jnp.square(l1) / (l2sq + eps)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _layer_penalty(w: jax.Array, rows: int, cols: int, eps: float, gate: bool) -> jax.Array:
    m = crossbar_matrix(w)
    n_in, n_out = m.shape
    h = _hoyer(_tiles(m, rows, cols), eps)                  # (gr, gc, cols)
    if gate:
        h = _positive_gradient_gate(h)
    _, real_cols = _valid(n_in, n_out, rows, cols)
    valid = jnp.asarray(real_cols, h.dtype)[None]             # (1, gc, cols)
    n = jnp.sum(valid, axis=-1)                               # (1, gc)
    mean = jnp.sum(h * valid, axis=-1) / n
    ss = jnp.sum(jnp.square(h - mean[..., None]) * valid, axis=-1)
    var = jnp.where(n > 1, ss / jnp.maximum(n - 1, 1), 0.0)   # unbiased, as torch.var in the authors' code
    return jnp.sum(jnp.broadcast_to(var, h.shape[:2]))


def _kernels(params: PyTree, where: Where | None) -> list[tuple[str, Any]]:
    leaves = named_leaves(params, where=where)
    for name, x in leaves:
        if jnp.ndim(x) < 2:
            raise ValueError(f"leaf {name!r} selected for crossbar mapping has shape {jnp.shape(x)}; only kernels "
                             "with >= 2 dimensions map onto crossbars (pass a `where` that selects them)")
    return leaves


def balance_penalty(params: PyTree, *, crossbar: Any, where: Where | None = None, gate: bool = True,
                    eps: float = 1e-6) -> jax.Array:
    """The D.U.B. regularizer: summed variance of the columns' relaxed L0 norms within each crossbar.

    ``sum over selected kernels, over their crossbars X of var_{c in X} H(column c)``
    with :func:`relaxed_l0` ``H`` and the unbiased variance (divisor ``n - 1``,
    as ``torch.var`` in the authors' code) over the crossbar's real (non
    padding) columns; a crossbar with a single real column contributes 0. It is
    zero exactly when the columns of every crossbar have equal relaxed L0 norm.

    ``gate=True`` (the authors' released "gated" variant, used for all their
    logged results) lets only the positive part of ``dPenalty/dH`` through:
    gradient descent then lowers the relaxed L0 of the columns that are denser
    than their crossbar's mean and never densifies the sparser ones, so the
    crossbar balances towards its sparse columns. ``gate=False`` is the plain
    gradient of the penalty.

    Args:
      params: a pytree of parameters (e.g. ``model.params``).
      crossbar: ``n`` or ``(rows, cols)`` (see :func:`as_crossbar`).
      where: ``(name, leaf) -> bool`` selecting the kernels mapped onto
        crossbars; default every leaf named ``kernel``. (The paper regularises
        and prunes convolution layers only; pass a ``where`` for that.)
      gate: pass only positive gradients to the relaxed L0 norms.
      eps: see :func:`relaxed_l0`.

    Returns:
      A scalar of the kernels' dtype (float32 ``0.0`` if nothing is selected);
      differentiable and usable under ``jit``.

    Example:
      >>> import jax.numpy as jnp
      >>> balanced = {"l": {"kernel": jnp.ones((8, 4))}}
      >>> float(balance_penalty(balanced, crossbar=(8, 4)))
      0.0
      >>> skewed = {"l": {"kernel": jnp.ones((8, 4)).at[:4, 0].set(0.0)}}
      >>> float(balance_penalty(skewed, crossbar=(8, 4))) > 0
      True
    """
    rows, cols = as_crossbar(crossbar)
    eps = float(_validate.number("eps", eps, min=0.0, min_inclusive=False))
    if not isinstance(gate, bool):
        raise TypeError(f"gate must be a bool, got {gate!r}")
    terms = [_layer_penalty(jnp.asarray(w), rows, cols, eps, gate) for _, w in _kernels(params, where)]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((), jnp.float32)


def dub_loss(base: Any = None, *, strength: float, crossbar: Any, gate: bool = True, where: Where | None = None,
             eps: float = 1e-6) -> Any:
    """A training loss with the D.U.B. balance regularizer added: ``base + strength * balance_penalty``.

    Wraps any :class:`jaxrob.train.Loss` (:func:`~jaxrob.train.cross_entropy`,
    :func:`~jaxrob.train.pgd_at`, :func:`~jaxrob.train.trades`, ...) so that
    :func:`jaxrob.train.fit` trains with it. The penalty is evaluated on the
    parameters being differentiated. Use it with L2 weight decay in the
    optimizer (the authors use SGD with ``weight_decay`` 1e-3 to 5e-3 together
    with ``strength`` 1e-3 to 5e-3): the decay makes unimportant weights small,
    the penalty makes each crossbar's columns equally sparse.

    Metrics: the base loss's, with ``loss`` the regularised total, plus
    ``task_loss`` (the base loss) and ``balance_penalty``.

    Args:
      base: the wrapped :class:`~jaxrob.train.Loss`; default
        :func:`~jaxrob.train.cross_entropy` ``()``.
      strength: the regularizer's weight (lambda), ``>= 0``; ``0`` reproduces
        ``base`` exactly.
      crossbar, gate, where, eps: see :func:`balance_penalty`.

    Returns:
      A :class:`jaxrob.train.Loss` named ``"dub+<base name>"``.

    Example:
      >>> from jaxrob import train
      >>> loss = dub_loss(train.cross_entropy(), strength=1e-3, crossbar=64)
      >>> loss.name, loss.config["crossbar"]
      ('dub+cross_entropy', [64, 64])
    """
    from jaxrob import train  # late: train imports nothing from prune

    base = train.cross_entropy() if base is None else base
    if not isinstance(base, train.Loss):
        raise TypeError(f"base must be a jaxrob.train.Loss (cross_entropy(), pgd_at(...), ...), got "
                        f"{type(base).__name__}")
    strength = float(_validate.number("strength", strength, min=0.0))
    rows, cols = as_crossbar(crossbar)
    eps = float(_validate.number("eps", eps, min=0.0, min_inclusive=False))
    if not isinstance(gate, bool):
        raise TypeError(f"gate must be a bool, got {gate!r}")
    if where is not None and not callable(where):
        raise TypeError(f"where must be None or a callable (name, leaf) -> bool, got {type(where).__name__}")

    def fn(model, params, batch_stats, x, y, key):
        task, (stats, metrics) = base.fn(model, params, batch_stats, x, y, key)
        penalty = balance_penalty(params, crossbar=(rows, cols), where=where, gate=gate, eps=eps)
        total = task + strength * penalty
        return total, (stats, {**metrics, "loss": total, "task_loss": task, "balance_penalty": penalty})

    hp = base.hparams + (("dub_strength", strength), ("crossbar", [rows, cols]), ("gate", gate), ("eps", eps))
    return train.Loss(f"dub+{base.name}", hp, fn)


# --------------------------------------------------------------------------------------------------------------
# power-of-two balanced pruning
# --------------------------------------------------------------------------------------------------------------

def power_of_two_level(n: jax.typing.ArrayLike) -> jax.Array:
    """The D.U.B. level for a least-sparse column with ``n`` significant weights: a power of two, or 0.

    ``n = 0`` gives ``0`` (the crossbar is pruned away). Otherwise, with ``q``
    the largest power of two ``<= n``, the level is ``q`` if ``n <= 1.5 q`` and
    ``2 q`` otherwise: the nearer power of two, ties going to the sparser one.
    This is the authors' rule stated in sparsity terms: a crossbar whose least
    sparse column has sparsity ``s`` in ``[1 - 2**-k, 1 - 2**-(k+1))`` is
    "forced" up to ``1 - 2**-(k+1)`` if ``s`` is at least the interval's
    midpoint and "loosened" down to ``1 - 2**-k`` otherwise.

    Args:
      n: non-negative integer counts, any shape.

    Returns:
      int32 array of the same shape.

    Example:
      >>> import jax.numpy as jnp
      >>> power_of_two_level(jnp.array([0, 1, 2, 3, 5, 6, 7, 48, 49, 64])).tolist()
      [0, 1, 2, 2, 4, 4, 8, 32, 64, 64]
    """
    return _level(jnp.asarray(n, jnp.int32))


@jax.jit
def _level(n: jax.Array) -> jax.Array:
    safe = jnp.maximum(n, 1)
    q = jnp.left_shift(jnp.int32(1), jnp.floor(jnp.log2(safe.astype(jnp.float32))).astype(jnp.int32))
    q = jnp.where(q > safe, q // 2, q)           # guard float rounding of log2 near powers of two
    q = jnp.where(2 * q <= safe, 2 * q, q)
    level = jnp.where(2 * safe <= 3 * q, q, 2 * q)
    return jnp.where(n == 0, 0, level)


@functools.partial(jax.jit, static_argnames=("rows", "cols"))
def _layer_mask(m: jax.Array, threshold: jax.Array, *, rows: int, cols: int) -> tuple[jax.Array, jax.Array]:
    """Mask of one ``(in, out)`` matrix and the kept count per crossbar ``(gr, gc)``."""
    n_in, n_out = m.shape
    real_rows, real_cols = _valid(n_in, n_out, rows, cols)
    a = jnp.abs(_tiles(m, rows, cols))                                    # (gr, gc, rows, cols)
    significant = jnp.sum(a > threshold, axis=-2)                         # (gr, gc, cols)
    significant = jnp.where(jnp.asarray(real_cols)[None], significant, 0)
    least_sparse = jnp.max(significant, axis=-1)                          # (gr, gc)
    keep = jnp.minimum(power_of_two_level(least_sparse), jnp.asarray(real_rows)[:, None])
    order = jnp.argsort(-a, axis=-2, stable=True)                         # padding rows (zeros) sort last
    rank = jnp.argsort(order, axis=-2)
    mask = rank < keep[:, :, None, None]
    return _untile(mask, n_in, n_out), keep


def _thresholds(leaves, tol, target):
    """Per-layer ``|w|`` thresholds: ``tol``, or the ``target[name]`` quantile of the layer's ``|w|``."""
    out = []
    for name, w in leaves:
        if target is None:
            out.append(float(tol))
            continue
        s = target.get(name) if isinstance(target, Mapping) else target
        if s is None:
            raise ValueError(f"sparsity has no entry for layer {name!r}; layers: {[n for n, _ in leaves]}")
        s = float(_validate.number(f"sparsity[{name!r}]", s, min=0.0, max=1.0))
        a = np.abs(np.asarray(jax.device_get(w), np.float64)).ravel()
        # the magnitude below which a fraction s of the layer's weights lies (significant = |w| > t)
        k = int(round(s * a.size))
        out.append(-1.0 if k == 0 else float(np.partition(a, k - 1)[k - 1]))
    return out


def dub_masks(params: PyTree, *, crossbar: Any, tol: float = 1e-3, sparsity: float | Mapping[str, float] | None = None,
              where: Where | None = None) -> PyTree:
    """Power-of-two, balanced, unstructured masks: the D.U.B. pruning step.

    For every selected kernel, mapped onto crossbars (:func:`crossbar_tiles`):

    1. a weight is *significant* if ``|w| > t``, with ``t = tol`` (the authors'
       default, applied after regularised training with weight decay) or, if
       ``sparsity`` is given, the per-layer magnitude quantile at that fraction
       (the authors' fixed-prune-ratio variant);
    2. per crossbar, ``n*`` = the largest number of significant weights in any
       of its columns (its least sparse column); the crossbar's level is
       ``p = power_of_two_level(n*)`` (a power of two, or 0 if every column is
       insignificant);
    3. every column of the crossbar keeps exactly its ``p`` largest ``|w|``
       (ties by row order) -- unstructured within the column, balanced across
       the crossbar. A crossbar of the last grid row holds only ``r < rows``
       weight rows; it keeps ``min(p, r)`` per column (``min(p, r)`` still needs
       no more ADC bits than ``p``).

    So every real column of a full crossbar ends with ``rows / 2**k`` non-zero
    cells for one ``k`` shared by the crossbar, or none at all; its density is a
    power of two, ``2**-k``.

    Args:
      params: a pytree of parameters.
      crossbar: ``n`` or ``(rows, cols)`` (see :func:`as_crossbar`).
      tol: the magnitude at or below which a weight counts as prunable, ``>= 0``
        (1e-3 in the authors' code); ignored when ``sparsity`` is given.
      sparsity: ``None``, a fraction in ``[0, 1]`` for every layer, or
        ``{layer name: fraction}`` for each selected layer (names as in
        :func:`jaxrob.prune.sparsity`). The resulting sparsity is near it, not
        equal: step 2 rounds each crossbar to a power of two.
      where: ``(name, leaf) -> bool``; default every ``kernel`` leaf.

    Returns:
      Masks in the :mod:`jaxrob.prune` convention: the structure of ``params``,
      bool leaves, all-``True`` for leaves ``where`` does not select.

    Raises:
      ValueError: bad ``crossbar``, ``tol`` or ``sparsity``; a selected leaf with
        fewer than 2 dimensions.

    Example:
      >>> import jax
      >>> w = jax.random.normal(jax.random.key(0), (64, 8))
      >>> m = dub_masks({"d": {"kernel": w}}, crossbar=(32, 8), sparsity=0.6)["d"]["kernel"]
      >>> sorted(set(m.reshape(2, 32, 8).sum(axis=1).ravel().tolist())) in ([8], [16], [8, 16])
      True
    """
    rows, cols = as_crossbar(crossbar)
    tol = float(_validate.number("tol", tol, min=0.0))
    if sparsity is not None and not isinstance(sparsity, Mapping):
        _validate.number("sparsity", sparsity, min=0.0, max=1.0)
    leaves = _kernels(params, where)
    thresholds = dict(zip([n for n, _ in leaves], _thresholds(leaves, tol, sparsity)))
    if isinstance(sparsity, Mapping):
        unknown = set(sparsity) - set(thresholds)
        if unknown:
            raise ValueError(f"sparsity names layers that are not selected: {sorted(unknown)}; selected: "
                             f"{sorted(thresholds)}")

    def mask_of(path, p):
        name = path_name(path)
        if name not in thresholds:
            return jnp.ones(jnp.shape(p), bool)
        m = crossbar_matrix(jnp.asarray(p))
        mask, _ = _layer_mask(m, jnp.asarray(thresholds[name], m.dtype), rows=rows, cols=cols)
        return from_crossbar_matrix(mask, jnp.shape(p))

    return jax.tree_util.tree_map_with_path(mask_of, params)


# --------------------------------------------------------------------------------------------------------------
# the report: per column, per crossbar, ADC cost
# --------------------------------------------------------------------------------------------------------------

class LayerCrossbars(NamedTuple):
    """Crossbar statistics of one kernel (numpy arrays; ``gr x gc`` crossbars of ``rows x cols``).

    Attributes:
      name: slash-joined path name.
      shape: the kernel's shape.
      matrix_shape: ``(in, out)`` of :func:`crossbar_matrix`.
      real_rows: ``(gr,)`` weight rows held by each grid row of crossbars.
      real_cols: ``(gc, cols)`` bool, the columns that hold an output (not padding).
      column_nonzeros: ``(gr, gc, cols)`` non-zero cells per crossbar column (0 on padding columns).
      adc_bits: ``(gr, gc)`` ADC resolution each crossbar needs (0: crossbar unused).
      dense_adc_bits: ``(gr, gc)`` the same for the unpruned kernel.
    """

    name: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    real_rows: np.ndarray
    real_cols: np.ndarray
    column_nonzeros: np.ndarray
    adc_bits: np.ndarray
    dense_adc_bits: np.ndarray

    @property
    def column_sparsity(self) -> np.ndarray:
        """``(gr, gc, cols)`` fraction of a column's weight rows that are zero (NaN on padding columns)."""
        s = 1.0 - self.column_nonzeros / self.real_rows[:, None, None]
        return np.where(self.real_cols[None], s, np.nan)

    @property
    def crossbar_nonzeros(self) -> np.ndarray:
        """``(gr, gc)`` non-zeros of the crossbar's densest column (what its ADCs must resolve)."""
        return self.column_nonzeros.max(axis=-1)

    @property
    def imbalance(self) -> np.ndarray:
        """``(gr, gc)`` max minus min non-zeros over the crossbar's real columns (0: perfectly balanced)."""
        big = np.where(self.real_cols[None], self.column_nonzeros, np.iinfo(np.int64).max)
        return self.crossbar_nonzeros - big.min(axis=-1)

    @property
    def crossbars(self) -> int:
        """Crossbars the layer occupies when dense."""
        return int(self.adc_bits.size)

    @property
    def crossbars_used(self) -> int:
        """Crossbars holding at least one non-zero weight."""
        return int(np.count_nonzero(self.adc_bits))

    def conversions(self, bits: np.ndarray) -> np.ndarray:
        """``(gr, gc)`` ADC conversions per crossbar read: its real columns, if the crossbar is used."""
        return np.where(bits > 0, self.real_cols.sum(axis=-1)[None, :], 0)


def _adc_bits(nonzeros: np.ndarray, offset: int) -> np.ndarray:
    """``ceil(log2 n) + offset`` bits for a largest column count ``n``; 0 bits (no ADC) for ``n = 0``."""
    n = np.maximum(nonzeros, 1)
    bits = np.ceil(np.log2(n)).astype(np.int64) + offset
    return np.where(nonzeros > 0, bits, 0)


@dataclasses.dataclass(frozen=True)
class CrossbarReport:
    """Crossbar mapping, column sparsity, balance and ADC cost of a set of kernels.

    **ADC model.** A crossbar whose densest column has ``n`` non-zero cells needs
    ``ceil(log2 n) + (adc_bits - log2 rows)`` bits -- the full resolution
    ``adc_bits`` for a full dense column, one bit less per halving of ``n`` --
    and no ADC at all when ``n = 0`` (the crossbar is not programmed). One ADC
    conversion is counted per real column of a used crossbar per crossbar read.
    The energy of a conversion at ``b`` bits is taken as ``2**b`` (the usual
    exponential growth of ADC energy with resolution; the ``exponential`` rows)
    or ``b`` (linear, a SAR ADC's cycle count; the ``linear`` rows); both are
    reported relative to the same kernels unpruned, so the units cancel. The
    paper's own energy model was not retrievable (only its abstract and the
    authors' code were); its ``up to 7.13x`` (CIFAR-10) and ``1.27x`` (ImageNet)
    are ADC-energy improvements of this kind. Every crossbar read counts once
    (the authors' tile histograms do the same); for a convolution, multiply by
    the number of output positions for a per-inference figure.

    Attributes:
      crossbar: ``(rows, cols)``.
      adc_bits: the full ADC resolution (a dense column of ``rows`` cells).
      layers: one :class:`LayerCrossbars` per kernel.
    """

    crossbar: tuple[int, int]
    adc_bits: int
    layers: tuple[LayerCrossbars, ...]

    def _sum(self, f) -> float:
        return float(sum(f(layer) for layer in self.layers))

    @property
    def crossbars(self) -> int:
        """Crossbars the dense kernels occupy."""
        return int(self._sum(lambda l: l.crossbars))

    @property
    def crossbars_used(self) -> int:
        """Crossbars with at least one non-zero weight."""
        return int(self._sum(lambda l: l.crossbars_used))

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over all kernels."""
        size = self._sum(lambda l: np.prod(l.matrix_shape))
        nz = self._sum(lambda l: l.column_nonzeros.sum())
        return 1.0 - nz / size if size else 0.0

    def adc_energy(self, scaling: str = "exponential") -> float:
        """ADC energy per read of every crossbar once, relative to the unpruned kernels (1.0 = no saving).

        Args:
          scaling: ``"exponential"`` (energy ``2**bits`` per conversion) or
            ``"linear"`` (``bits``).
        """
        _validate.choice("scaling", scaling, ("exponential", "linear"))
        cost = (lambda b: np.where(b > 0, np.exp2(b), 0.0)) if scaling == "exponential" else (lambda b: b)
        e = self._sum(lambda l: (cost(l.adc_bits) * l.conversions(l.adc_bits)).sum())
        e0 = self._sum(lambda l: (cost(l.dense_adc_bits) * l.conversions(l.dense_adc_bits)).sum())
        return e / e0 if e0 else 1.0

    def adc_improvement(self, scaling: str = "exponential") -> float:
        """``1 / adc_energy(scaling)``: the paper's "x improvement in ADC energy"."""
        e = self.adc_energy(scaling)
        return float("inf") if e == 0 else 1.0 / e

    @property
    def mean_adc_bits(self) -> float:
        """Mean ADC resolution over the conversions of the used crossbars."""
        n = self._sum(lambda l: l.conversions(l.adc_bits).sum())
        b = self._sum(lambda l: (l.adc_bits * l.conversions(l.adc_bits)).sum())
        return b / n if n else 0.0

    @property
    def balanced_fraction(self) -> float:
        """Fraction of used crossbars whose real columns all have the same number of non-zeros."""
        used = self._sum(lambda l: np.count_nonzero(l.adc_bits))
        bal = self._sum(lambda l: np.count_nonzero((l.imbalance == 0) & (l.adc_bits > 0)))
        return bal / used if used else 1.0

    @property
    def power_of_two_fraction(self) -> float:
        """Fraction of real columns whose non-zero count is 0 or a power of two."""
        tot = self._sum(lambda l: l.real_cols.sum() * len(l.real_rows))
        ok = self._sum(lambda l: ((_is_pow2_or_zero(l.column_nonzeros)) & l.real_cols[None]).sum())
        return ok / tot if tot else 1.0

    def level_histogram(self) -> dict[int, int]:
        """``{non-zeros of the densest column: number of crossbars}`` over all layers."""
        out: dict[int, int] = {}
        for layer in self.layers:
            for v, c in zip(*np.unique(layer.crossbar_nonzeros, return_counts=True)):
                out[int(v)] = out.get(int(v), 0) + int(c)
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (totals and per-layer figures)."""
        return {
            "crossbar": list(self.crossbar), "adc_bits": self.adc_bits, "sparsity": self.sparsity,
            "crossbars": self.crossbars, "crossbars_used": self.crossbars_used,
            "adc_energy": self.adc_energy("exponential"), "adc_energy_linear": self.adc_energy("linear"),
            "adc_improvement": self.adc_improvement("exponential"),
            "adc_improvement_linear": self.adc_improvement("linear"), "mean_adc_bits": self.mean_adc_bits,
            "balanced_fraction": self.balanced_fraction, "power_of_two_fraction": self.power_of_two_fraction,
            "level_histogram": {str(k): v for k, v in self.level_histogram().items()},
            "layers": {l.name: {"shape": list(l.shape), "matrix": list(l.matrix_shape),
                                "grid": list(l.adc_bits.shape), "crossbars_used": l.crossbars_used,
                                "sparsity": 1.0 - float(l.column_nonzeros.sum()) / float(np.prod(l.matrix_shape)),
                                "adc_bits": l.adc_bits.tolist(),
                                "max_imbalance": int(l.imbalance.max()) if l.imbalance.size else 0}
                       for l in self.layers},
        }

    def table(self) -> str:
        """A Markdown table, one row per layer and a total row."""
        rows = ["| layer | matrix | crossbars used | sparsity | balanced crossbars | mean ADC bits | "
                "ADC energy (exp.) |", "|---|---|---:|---:|---:|---:|---:|"]
        for l in self.layers:
            sub = CrossbarReport(self.crossbar, self.adc_bits, (l,))
            rows.append(f"| {l.name} | {l.matrix_shape[0]}x{l.matrix_shape[1]} | {l.crossbars_used}/{l.crossbars} | "
                        f"{100 * sub.sparsity:.2f}% | {100 * sub.balanced_fraction:.0f}% | "
                        f"{sub.mean_adc_bits:.2f} | {sub.adc_energy():.3f} |")
        rows.append(f"| **total** | | {self.crossbars_used}/{self.crossbars} | {100 * self.sparsity:.2f}% | "
                    f"{100 * self.balanced_fraction:.0f}% | {self.mean_adc_bits:.2f} | {self.adc_energy():.3f} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _is_pow2_or_zero(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, np.int64)
    return (n & (n - 1)) == 0


def crossbar_report(tree: PyTree, *, crossbar: Any, where: Where | None = None,
                    adc_bits: int | None = None) -> CrossbarReport:
    """Per-column sparsity, per-crossbar balance and ADC cost of masks (or of sparse weights).

    Runs eagerly (numpy); not for use under ``jit``.

    Args:
      tree: masks (bool leaves; ``False`` = pruned) or parameters (exact zeros
        are pruned), e.g. the output of :func:`dub_masks` or of any other pruner.
      crossbar: ``n`` or ``(rows, cols)``.
      where: ``(name, leaf) -> bool``; default every ``kernel`` leaf.
      adc_bits: the ADC resolution of a full dense column, ``>= 1``; default
        ``log2(rows) + 2``, the authors' code's default. The relative energies
        with ``scaling="exponential"`` do not depend on it.

    Returns:
      A :class:`CrossbarReport`; ``str(report)`` is a Markdown table.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.ones((64, 4)).at[32:].set(0.0)        # every column half empty
      >>> rep = crossbar_report({"d": {"kernel": w}}, crossbar=(64, 4))
      >>> rep.crossbars_used, rep.mean_adc_bits, rep.adc_improvement()
      (1, 7.0, 2.0)
    """
    rows, cols = as_crossbar(crossbar)
    offset_default = int(math.log2(rows)) + 2
    if adc_bits is None:
        adc_bits = offset_default
    adc_bits = _validate.number("adc_bits", adc_bits, min=1, integer=True)
    offset = adc_bits - int(math.log2(rows))
    layers = []
    for name, x in _kernels(tree, where):
        a = np.asarray(jax.device_get(x))
        nz = np.asarray(crossbar_matrix(jnp.asarray(a != 0)))
        n_in, n_out = nz.shape
        real_rows, real_cols = _valid(n_in, n_out, rows, cols)
        counts = np.asarray(_tiles(jnp.asarray(nz, jnp.int32), rows, cols)).sum(axis=-2)  # (gr, gc, cols)
        bits = _adc_bits(counts.max(axis=-1), offset)
        dense_bits = _adc_bits(np.broadcast_to(real_rows[:, None], bits.shape), offset)
        layers.append(LayerCrossbars(name=name, shape=tuple(a.shape), matrix_shape=(n_in, n_out),
                                     real_rows=real_rows, real_cols=real_cols, column_nonzeros=counts,
                                     adc_bits=bits, dense_adc_bits=dense_bits))
    return CrossbarReport(crossbar=(rows, cols), adc_bits=int(adc_bits), layers=tuple(layers))


# --------------------------------------------------------------------------------------------------------------
# the training procedure
# --------------------------------------------------------------------------------------------------------------

class DubResult(NamedTuple):
    """What :func:`dub_fit` returns.

    Attributes:
      model: the fine-tuned model, a :func:`jaxrob.prune.masked_model` whose
        stored variables are already pruned.
      masks: the D.U.B. masks (bool, structure of ``model.params``).
      regularized: variables after the regularised training, before pruning.
      pruned: variables right after pruning, before fine-tuning.
      history: ``{"regularized": [...], "finetune": [...]}``, the two
        :func:`jaxrob.train.fit` histories.
    """

    model: Any
    masks: PyTree
    regularized: PyTree
    pruned: PyTree
    history: dict[str, list]


def dub_fit(model: Any, train_data: Any, *, crossbar: Any, strength: float, epochs: int, finetune_epochs: int,
            batch_size: int, key: jax.Array, optimizer: Mapping[str, Any] | Any,
            finetune_optimizer: Mapping[str, Any] | Any | None = None, loss: Any = None, tol: float = 1e-3,
            sparsity: float | Mapping[str, float] | None = None, gate: bool = True, where: Where | None = None,
            seed: int = 0, progress: bool = True, checkpoint_dir: Any = None, resume: bool = False,
            mesh: Any = None, eval_fn: Callable | None = None,
            config: Mapping[str, Any] | None = None) -> DubResult:
    """The D.U.B. procedure: regularised training, power-of-two balanced pruning, fine-tuning with fixed masks.

    1. ``fit(model, loss=dub_loss(loss, strength=..., crossbar=...), optimizer,
       epochs)`` (start from a pretrained model, as the authors do; put the L2
       weight decay in ``optimizer``);
    2. ``masks = dub_masks(params, crossbar=..., tol=... | sparsity=...)``;
    3. ``fit(masked_model(model, masks), loss=loss, optimizer=finetune_optimizer,
       epochs=finetune_epochs)`` (the authors fine-tune with plain SGD, lr
       0.01, no momentum or weight decay).

    Args:
      model: a :class:`jaxrob.models.Model` (or ``(apply_fn, params)``).
      train_data: a :class:`jaxrob.data.Dataset`.
      crossbar: ``n`` or ``(rows, cols)``.
      strength: the balance regularizer's weight, ``>= 0``.
      epochs: regularised training epochs, ``>= 1``.
      finetune_epochs: fine-tuning epochs, ``>= 0`` (0 skips step 3).
      batch_size: batch size of both phases.
      key: typed PRNG key (split into one key per phase).
      optimizer: :func:`jaxrob.train.fit`'s ``optimizer`` for step 1.
      finetune_optimizer: the same for step 3; default ``optimizer``.
      loss: the task :class:`~jaxrob.train.Loss`; default cross-entropy
        (``pgd_at(...)`` gives robust D.U.B. training).
      tol, sparsity: see :func:`dub_masks`.
      gate, where: see :func:`balance_penalty`.
      seed: data-order seed (the fine-tuning uses ``seed + 1``).
      progress: progress bars.
      checkpoint_dir: if given, the phases checkpoint to ``<dir>/regularized``
        and ``<dir>/finetune``.
      resume: resume both phases from their checkpoints.
      mesh: data-parallel mesh (see :func:`jaxrob.train.fit`).
      eval_fn: passed to both :func:`~jaxrob.train.fit` calls.
      config: extra run description for the checkpoint fingerprints.

    Returns:
      A :class:`DubResult`.
    """
    import pathlib

    from jaxrob import train

    key = _validate.prng_key("key", key)
    epochs = _validate.number("epochs", epochs, min=1, integer=True)
    finetune_epochs = _validate.number("finetune_epochs", finetune_epochs, min=0, integer=True)
    task = train.cross_entropy() if loss is None else loss
    reg_loss = dub_loss(task, strength=strength, crossbar=crossbar, gate=gate, where=where)
    as_crossbar(crossbar)
    k_reg, k_ft = jax.random.split(key)
    ckpt = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
    extra = dict(config or {})

    state, hist_reg = train.fit(model, train_data, loss=reg_loss, optimizer=optimizer, epochs=epochs,
                                batch_size=batch_size, key=k_reg, seed=seed, progress=progress, mesh=mesh,
                                eval_fn=eval_fn, checkpoint_dir=None if ckpt is None else ckpt / "regularized",
                                resume=resume, config={**extra, "phase": "dub_regularized"})
    foreign = isinstance(model, tuple)
    if foreign:
        apply_fn, _ = model
        trained = (apply_fn, state.params)
        params = state.params
        regularized = state.params
    else:
        trained = dataclasses.replace(model, variables=state.variables())
        params = trained.params
        regularized = state.variables()
    masks = dub_masks(params, crossbar=crossbar, tol=tol, sparsity=sparsity, where=where)
    pruned_model = masked_model(trained, masks)
    pruned = pruned_model[1] if foreign else pruned_model.variables
    history = {"regularized": hist_reg, "finetune": []}
    final = pruned_model
    if finetune_epochs:
        state, hist_ft = train.fit(pruned_model, train_data, loss=task, optimizer=finetune_optimizer or optimizer,
                                   epochs=finetune_epochs, batch_size=batch_size, key=k_ft, seed=seed + 1,
                                   progress=progress, mesh=mesh, eval_fn=eval_fn,
                                   checkpoint_dir=None if ckpt is None else ckpt / "finetune", resume=resume,
                                   config={**extra, "phase": "dub_finetune"})
        history["finetune"] = hist_ft
        if foreign:
            final = (pruned_model[0], apply_masks(state.params, masks))
        else:
            variables = state.variables()
            variables = {**variables, "params": apply_masks(variables["params"], masks)}
            final = dataclasses.replace(pruned_model, variables=variables)
    return DubResult(model=final, masks=masks, regularized=regularized, pruned=pruned, history=history)

