"""RVSM and RGSM: pruning by relaxed variable splitting, as optax transformations.

The relaxed variable splitting method trains the weights ``w`` of a network on

    L(w) + lambda * ||u||_0 + (beta / 2) * ||w - u||^2

alternating an exact minimisation over the auxiliary sparse copy ``u`` with a
gradient step over ``w``:

* ``u = argmin_u lambda ||u||_0 + beta/2 ||w - u||^2 = hard_threshold(w, sqrt(2 lambda / beta))``
  (an entry is kept iff ``|w| > sqrt(2 lambda / beta)``);
* ``w <- w - lr * (grad L(w) + beta * (w - u))``.

The network is evaluated and deployed with ``u``. **RVSM** (Dinh & Xin,
arXiv:1901.09731) thresholds single weights (unstructured sparsity). **RGSM**
(Yang, Lyu, Zhang, Qi & Xin, 2019) works on groups of weights -- the channels
of a convolution -- with ``L(w) + lambda2 * sum_g ||w_g||_2`` as the loss and
the group ``L0`` penalty ``lambda1 * #{g : u_g != 0}`` on ``u``, whose exact
minimiser zeroes a whole group iff its norm is at most ``sqrt(2 lambda1 / beta1)``
(:func:`group_hard_threshold`). Dinh, Wang, Bertozzi, Osher & Xin apply both to
adversarially trained (PGD-AT) ResNets and to Feynman-Kac principled noisy
ResNet ensembles (EnResNet).

Here each method is an ``optax.GradientTransformation`` chained *before* the
optimizer: its ``update`` receives the loss gradient and the current ``params``,
computes ``u`` from ``params`` and returns ``grad + beta * (w - u)`` (RGSM also
adds the gradient of ``lambda2 * sum_g sqrt(||w_g||^2 + 1e-8)``), so any loss
(e.g. :func:`jaxrob.train.pgd_at`) runs unchanged through
:func:`jaxrob.train.fit`::

    tx = optax.chain(rgsm(), make_optimizer("sgd", learning_rate=0.1, ...))
    state, _ = fit(model, data, optimizer=tx, loss=pgd_at(8 / 255), ...)
    sparse = rgsm_weights(state.params)       # the pruned network to evaluate

Details decided here (the paper leaves them to its code, BaoWangMath/rvsm-rgsm-admm):

* **Which weights.** As in the reference code, only convolution kernels
  (4-D, named ``kernel``) are split, for both methods; dense layers, biases
  and batch-norm parameters are trained normally. ``where`` selects others.
* **Groups.** The reference groups a PyTorch ``(out, in, kh, kw)`` kernel by
  its *input* channel (norm over dims 0, 2, 3). Flax kernels are
  ``(kh, kw, in, out)`` (dense: ``(in, out)``), so the default group is the
  slice ``w[..., i, :]`` (axis -2); ``groups="output"`` groups by output
  channel (axis -1, filter pruning) instead. A zero input channel of layer
  ``l + 1`` makes output channel ``i`` of layer ``l`` dead.
* **Smoothing.** The group-lasso term uses ``sqrt(||w_g||^2 + 1e-8)`` (the
  reference's smoothing) so its gradient is finite at zero; the thresholds
  compare the exact norm (``|w| > gamma`` keeps an entry, ``||w_g|| > gamma``
  a group; the reference adds the same ``1e-8`` inside the group norm there,
  which can only matter for norms within ``1e-8 / (2 gamma)`` of ``gamma``).
* **The splitting step and momentum.** The reference applies
  ``w -= lr * beta * (w - u)`` to the weights directly and then takes the
  SGD-momentum step on the loss gradient, so its splitting term bypasses the
  momentum buffer. Chained before the optimizer, our term goes through it:
  for plain SGD the update is exactly ``w - lr * (grad + beta * (w - u))``
  (the paper's algorithm); with momentum ``m`` the splitting pull is, in
  steady state, ``1 / (1 - m)`` times stronger than in the reference code.
* **u at evaluation.** ``u`` is recomputed from the current weights at every
  step (the reference recomputes it after every optimizer step) and at the
  end the network is evaluated with ``hard_threshold`` of the *final* weights
  -- :func:`rvsm_weights` / :func:`rgsm_weights` of ``state.params``, exactly
  what the reference does. ``state.u`` holds ``u`` of the weights the last
  update saw (one step behind).

References:
  Dinh, Wang, Bertozzi, Osher & Xin, "Sparsity Meets Robustness: Channel
  Pruning for the Feynman-Kac Formalism Principled Robust Deep Neural Nets",
  arXiv:2003.00631 (2020); code BaoWangMath/rvsm-rgsm-admm (``main.py``,
  ``prune_utils.py``, ``loss_func.py``), whose defaults are used here.
  Dinh & Xin, "Convergence of a Relaxed Variable Splitting Method for Learning
  Sparse Neural Networks via l1, l0, and Transformed-l1 Penalties",
  arXiv:1901.09731 (RVSM). Yang, Lyu, Zhang, Qi & Xin, "Channel Pruning for
  Deep Neural Networks via a Relaxed Group-wise Splitting Method", Proc. 2nd
  Int. Conf. on AI for Industries, 2019 (RGSM).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrob import _validate
from jaxrob.prune._masks import apply_masks, named_leaves, path_name, sparsity

PyTree = Any
Where = Callable[[str, Any], bool]

#: Smoothing inside the group norm of RGSM's group-lasso term (the reference's value).
GROUP_NORM_EPS = 1e-8
#: RVSM defaults of the reference code (``--beta``, ``--lamb``).
RVSM_DEFAULTS = {"beta": 1e-2, "lamb": 1e-6}
#: RGSM defaults of the reference code (``--beta1``, ``--lamb1``, ``--lamb2``).
RGSM_DEFAULTS = {"beta": 1.0, "lamb1": 1e-2, "lamb2": 1e-5}
_GROUP_AXES = {"input": -2, "output": -1}


# ------------------------------------------------------------------------------------------ selection

def conv_kernels(path: str, leaf: Any) -> bool:
    """The default selection: leaves named ``kernel`` with 4 dimensions (2-D convolution kernels).

    Args:
      path: ``"/"``-joined keys of the leaf, e.g. ``"conv2/kernel"``.
      leaf: the array (only its ``ndim`` is used).

    Returns:
      ``True`` for ``(kh, kw, in, out)`` convolution kernels.
    """
    return path.split("/")[-1] == "kernel" and np.ndim(leaf) == 4


def _check_where(where: Where | None) -> Where:
    if where is None:
        return conv_kernels
    if not callable(where):
        raise TypeError(f"where must be None or a callable where(path: str, leaf) -> bool, got {where!r}")
    return where


def _selected(params: PyTree, where: Where) -> PyTree:
    """Pytree of Python bools: which leaves are split (decided on paths and shapes, so static)."""
    def pick(path, leaf):
        chosen = where(path_name(path), leaf)
        if not isinstance(chosen, (bool, np.bool_)):
            raise TypeError(f"where(path, leaf) must return a Python bool, got {chosen!r} for {path_name(path)!r}")
        return bool(chosen)
    return jax.tree_util.tree_map_with_path(pick, params)


# ---------------------------------------------------------------------------------------- thresholds

def hard_threshold(w: jax.typing.ArrayLike, threshold: jax.typing.ArrayLike) -> jax.Array:
    """Elementwise hard thresholding: ``w`` where ``|w| > threshold``, else 0.

    It is the exact minimiser of ``lambda * ||u||_0 + beta / 2 * ||w - u||^2``
    for ``threshold = sqrt(2 * lambda / beta)`` (RVSM's ``u`` update).

    Args:
      w: array of any shape.
      threshold: scalar ``>= 0`` (broadcastable to ``w``).

    Returns:
      Array of ``w``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> hard_threshold(jnp.array([-0.3, 0.05, 0.1, 2.0]), 0.1).tolist()
      [-0.30000001192092896, 0.0, 0.0, 2.0]
    """
    w = jnp.asarray(w)
    return jnp.where(jnp.abs(w) > threshold, w, jnp.zeros_like(w))


def group_norms(w: jax.typing.ArrayLike, *, axis: int = -2, eps: float = 0.0) -> jax.Array:
    """``sqrt(sum of squares + eps)`` of each slice of ``w`` along ``axis``.

    Args:
      w: array with ``ndim >= 1``; e.g. a ``(kh, kw, in, out)`` kernel.
      axis: the group axis: group ``i`` is ``w.take(i, axis)``. ``-2`` is the
        input channel of a Flax conv/dense kernel, ``-1`` the output channel.
      eps: added under the square root (``0`` for the exact norm).

    Returns:
      ``(w.shape[axis],)`` float array.
    """
    w = jnp.asarray(w)
    axis = axis % w.ndim
    others = tuple(a for a in range(w.ndim) if a != axis)
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=others) + eps)


def _group_keep(w: jax.Array, threshold, axis: int) -> jax.Array:
    keep = group_norms(w, axis=axis) > threshold
    shape = [1] * w.ndim
    shape[axis % w.ndim] = w.shape[axis]
    return keep.reshape(shape)


def group_hard_threshold(w: jax.typing.ArrayLike, threshold: jax.typing.ArrayLike, *,
                         axis: int = -2) -> jax.Array:
    """Group hard thresholding: zeroes every group whose L2 norm is ``<= threshold``.

    The exact minimiser of ``lambda1 * #{g : u_g != 0} + beta / 2 * ||w - u||^2``
    for ``threshold = sqrt(2 * lambda1 / beta)`` (RGSM's ``u`` update): a group
    kept costs ``lambda1``, a group zeroed ``beta / 2 * ||w_g||^2``.

    Args:
      w: array with ``ndim >= 1``.
      threshold: scalar ``>= 0``.
      axis: the group axis (see :func:`group_norms`).

    Returns:
      Array of ``w``'s shape and dtype; each group is either untouched or all zero.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.1, 3.0], [0.1, 4.0]])       # (in=2, out=2): input groups are rows
      >>> group_hard_threshold(w, 1.0, axis=-2).tolist()  # row norms 3.0 and 4.0: both kept
      [[0.10000000149011612, 3.0], [0.10000000149011612, 4.0]]
      >>> group_hard_threshold(w, 1.0, axis=-1).tolist()  # column norms 0.14 and 5.0
      [[0.0, 3.0], [0.0, 4.0]]
    """
    w = jnp.asarray(w)
    if w.ndim < 1:
        raise ValueError(f"group_hard_threshold needs an array with at least one axis, got shape {w.shape}")
    return jnp.where(_group_keep(w, threshold, axis), w, jnp.zeros_like(w))


# ---------------------------------------------------------------------------------------- hyperparams

def _rvsm_args(beta, lamb) -> tuple[float, float, float]:
    beta = float(_validate.number("beta", beta, min=0.0, min_inclusive=False))
    lamb = float(_validate.number("lamb", lamb, min=0.0))
    return beta, lamb, math.sqrt(2.0 * lamb / beta)


def _rgsm_args(beta, lamb1, lamb2, groups) -> tuple[float, float, float, float, int]:
    beta = float(_validate.number("beta", beta, min=0.0, min_inclusive=False))
    lamb1 = float(_validate.number("lamb1", lamb1, min=0.0))
    lamb2 = float(_validate.number("lamb2", lamb2, min=0.0))
    _validate.choice("groups", groups, tuple(_GROUP_AXES))
    return beta, lamb1, lamb2, math.sqrt(2.0 * lamb1 / beta), _GROUP_AXES[groups]


def _check_group_leaf(path: str, leaf) -> None:
    if np.ndim(leaf) < 2:
        raise ValueError(f"RGSM groups the channels of a kernel, but the selected leaf {path!r} has shape "
                         f"{np.shape(leaf)}; select only kernels with ndim >= 2 (where=...)")


# ---------------------------------------------------------------------------------------------- masks

def _mask_tree(params: PyTree, where: Where, keep_fn: Callable[[str, jax.Array], jax.Array]) -> PyTree:
    """Bool masks (prune-core convention): ``keep_fn`` on the selected leaves, all-True elsewhere."""
    def go(path, leaf):
        p = path_name(path)
        if where(p, leaf):
            return jnp.broadcast_to(keep_fn(p, jnp.asarray(leaf)), jnp.shape(leaf))
        return jnp.ones(jnp.shape(leaf), bool)
    return jax.tree_util.tree_map_with_path(go, params)


def _rvsm_keep(gamma: float):
    return lambda _, w: jnp.abs(w) > gamma


def _rgsm_keep(gamma: float, axis: int):
    def keep(path, w):
        _check_group_leaf(path, w)
        return _group_keep(w, gamma, axis)
    return keep


def rvsm_masks(params: PyTree, *, beta: float = RVSM_DEFAULTS["beta"], lamb: float = RVSM_DEFAULTS["lamb"],
               where: Where | None = None) -> PyTree:
    """RVSM's pruning masks: ``|w| > sqrt(2 lamb / beta)`` on the selected leaves, all-True elsewhere.

    Bool masks in the convention of :mod:`jaxrob.prune._masks` (one bool
    array per parameter), so ``apply_masks(params, rvsm_masks(params))`` is
    :func:`rvsm_weights` and ``masked_model`` fine-tunes the pruned network.

    Args:
      params: pytree of weights.
      beta: splitting weight, ``> 0``.
      lamb: L0 weight, ``>= 0``.
      where: ``where(name, leaf) -> bool`` selecting the split leaves
        (default :func:`conv_kernels`).

    Returns:
      A pytree of bool arrays shaped like ``params``.

    Raises:
      ValueError: ``beta <= 0`` or ``lamb < 0``.
    """
    _, _, gamma = _rvsm_args(beta, lamb)
    return _mask_tree(params, _check_where(where), _rvsm_keep(gamma))


def rgsm_masks(params: PyTree, *, beta: float = RGSM_DEFAULTS["beta"], lamb1: float = RGSM_DEFAULTS["lamb1"],
               groups: str = "input", where: Where | None = None) -> PyTree:
    """RGSM's channel masks: a group is kept iff its L2 norm is ``> sqrt(2 lamb1 / beta)``.

    Args:
      params: pytree of weights.
      beta: splitting weight (the paper's ``beta1``), ``> 0``.
      lamb1: group-L0 weight, ``>= 0``.
      groups: ``"input"`` (the reference's channel groups, kernel axis -2) or
        ``"output"`` (filters, axis -1).
      where: selection of the split leaves (default :func:`conv_kernels`).

    Returns:
      A pytree of bool arrays shaped like ``params``; on a selected kernel
      every group's entries are all True or all False.

    Raises:
      ValueError: bad hyperparameters, or a selected leaf with ``ndim < 2``.
    """
    _, _, _, gamma, axis = _rgsm_args(beta, lamb1, 0.0, groups)
    return _mask_tree(params, _check_where(where), _rgsm_keep(gamma, axis))


def rvsm_weights(params: PyTree, *, beta: float = RVSM_DEFAULTS["beta"], lamb: float = RVSM_DEFAULTS["lamb"],
                 where: Where | None = None) -> PyTree:
    """RVSM's sparse weights ``u``: the selected leaves hard-thresholded at ``sqrt(2 lamb / beta)``.

    Evaluate and deploy the network with ``rvsm_weights(state.params, ...)``
    (the same ``beta``, ``lamb`` and ``where`` as the :func:`rvsm` transform);
    it equals ``apply_masks(params, rvsm_masks(params, ...))``.

    Args:
      params: pytree of weights.
      beta: splitting weight, ``> 0``.
      lamb: L0 weight, ``>= 0``.
      where: ``where(name, leaf) -> bool`` selecting the split leaves
        (default :func:`conv_kernels`).

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: ``beta <= 0`` or ``lamb < 0``.
    """
    return apply_masks(params, rvsm_masks(params, beta=beta, lamb=lamb, where=where))


def rgsm_weights(params: PyTree, *, beta: float = RGSM_DEFAULTS["beta"], lamb1: float = RGSM_DEFAULTS["lamb1"],
                 groups: str = "input", where: Where | None = None) -> PyTree:
    """RGSM's channel-sparse weights ``u``: whole groups with norm ``<= sqrt(2 lamb1 / beta)`` zeroed.

    Equals ``apply_masks(params, rgsm_masks(params, ...))``; evaluate and
    deploy with ``rgsm_weights(state.params, ...)`` (same hyperparameters as
    the :func:`rgsm` transform).

    Args:
      params: pytree of weights.
      beta: splitting weight (the paper's ``beta1``), ``> 0``.
      lamb1: group-L0 weight, ``>= 0``.
      groups: ``"input"`` or ``"output"`` (see :func:`rgsm_masks`).
      where: selection of the split leaves (default :func:`conv_kernels`).

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: bad hyperparameters, or a selected leaf with ``ndim < 2``.
    """
    return apply_masks(params, rgsm_masks(params, beta=beta, lamb1=lamb1, groups=groups, where=where))


# ---------------------------------------------------------------------------------------- transforms

class SplitState(NamedTuple):
    """State of :func:`rvsm` / :func:`rgsm`.

    Attributes:
      u: the split variable: ``params`` with the selected leaves thresholded,
        computed from the params of the last update (at ``init``: of the
        initial params). Leaves not selected are copies of the params. For
        the deployed network use :func:`rvsm_weights` / :func:`rgsm_weights`
        of the final params (``u`` of the weights after the last step).
    """

    u: PyTree


def _split_transform(keep_fn, extra_grad_fn, beta: float, where: Where) -> optax.GradientTransformation:
    def split(params):
        return apply_masks(params, _mask_tree(params, where, keep_fn))

    def init(params):
        return SplitState(u=split(params))

    def update(updates, state, params=None):
        del state
        if params is None:
            raise ValueError("the RVSM/RGSM transform needs the current params: call tx.update(grads, state, params)")
        u = split(params)
        sel = _selected(params, where)

        def add(path, chosen, g, w, u_):
            if not chosen:
                return g
            g = g + (beta * (w - u_)).astype(g.dtype)
            return g if extra_grad_fn is None else g + extra_grad_fn(path_name(path), w).astype(g.dtype)

        return jax.tree_util.tree_map_with_path(add, sel, updates, params, u), SplitState(u=u)

    return optax.GradientTransformation(init, update)


def rvsm(*, beta: float = RVSM_DEFAULTS["beta"], lamb: float = RVSM_DEFAULTS["lamb"],
         where: Where | None = None) -> optax.GradientTransformation:
    """RVSM (unstructured pruning by relaxed variable splitting) as a gradient transformation.

    ``update(grads, state, params)`` computes ``u = hard_threshold(w,
    sqrt(2 lamb / beta))`` for every selected leaf ``w`` of ``params`` and
    returns ``grads + beta * (w - u)`` there (other leaves pass through). Chain
    it *before* the optimizer: with plain SGD the step is exactly
    ``w - lr * (grad + beta * (w - u))``. Deploy with :func:`rvsm_weights` of
    the final params. Pure and jit-able; ``params`` is required.

    Args:
      beta: splitting weight, ``> 0`` (reference default ``1e-2``).
      lamb: L0 weight ``lambda``, ``>= 0`` (reference default ``1e-6``); the
        threshold is ``sqrt(2 lamb / beta)`` (``0.01`` at the defaults).
      where: ``where(name, leaf) -> bool`` selecting the split leaves; default
        :func:`conv_kernels` (the reference splits the 4-D conv weights only).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`SplitState`.

    Raises:
      ValueError: ``beta <= 0`` or ``lamb < 0``.
      TypeError: ``where`` is not callable.

    References:
      Dinh, Wang, Bertozzi, Osher & Xin, arXiv:2003.00631 (2020); Dinh & Xin,
      arXiv:1901.09731.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(rvsm(beta=1.0, lamb=0.02, where=lambda name, w: True), optax.sgd(0.1))
      >>> params = {"w": jnp.array([0.1, 1.0])}   # threshold sqrt(2 * 0.02 / 1) = 0.2
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> updates["w"].tolist()                    # -lr * beta * (w - u): only the small weight moves
      [-0.010000000707805157, -0.0]
    """
    beta, _, gamma = _rvsm_args(beta, lamb)
    return _split_transform(_rvsm_keep(gamma), None, beta, _check_where(where))


def rgsm(*, beta: float = RGSM_DEFAULTS["beta"], lamb1: float = RGSM_DEFAULTS["lamb1"],
         lamb2: float = RGSM_DEFAULTS["lamb2"], groups: str = "input",
         where: Where | None = None) -> optax.GradientTransformation:
    """RGSM (channel pruning by relaxed group-wise splitting) as a gradient transformation.

    For every selected kernel ``w`` with channel groups ``w_g`` (see
    ``groups``), ``update(grads, state, params)`` computes ``u =
    group_hard_threshold(w, sqrt(2 lamb1 / beta))`` and returns

        grads + lamb2 * w_g / sqrt(||w_g||^2 + 1e-8) + beta * (w - u)

    i.e. the gradient of the group-lasso term ``lamb2 * sum_g sqrt(||w_g||^2 +
    1e-8)`` (which the reference adds to the loss) plus the splitting pull.
    Chain it before the optimizer; deploy with :func:`rgsm_weights` of the
    final params (same ``beta``, ``lamb1``, ``groups``, ``where``).

    Args:
      beta: splitting weight (the paper's ``beta1``), ``> 0``; reference default 1.
      lamb1: group-L0 weight, ``>= 0``; reference default ``1e-2`` (threshold
        ``sqrt(0.02) = 0.141`` on the group norm at the defaults).
      lamb2: group-lasso weight, ``>= 0``; reference default ``1e-5``.
      groups: ``"input"`` (default; the reference's grouping, kernel axis -2)
        or ``"output"`` (axis -1).
      where: selection of the split leaves (default :func:`conv_kernels`); every
        selected leaf must have ``ndim >= 2``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`SplitState`.

    Raises:
      ValueError: negative weights, ``beta <= 0``, an unknown ``groups``, or
        (at ``init``) a selected leaf with ``ndim < 2``.

    References:
      Dinh, Wang, Bertozzi, Osher & Xin, arXiv:2003.00631 (2020); Yang, Lyu,
      Zhang, Qi & Xin, "Channel Pruning for Deep Neural Networks via a Relaxed
      Group-wise Splitting Method", AI for Industries 2019.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(rgsm(beta=1.0, lamb1=0.5, lamb2=0.0, where=lambda name, w: True), optax.sgd(1.0))
      >>> params = {"k": jnp.array([[0.3, 0.4], [3.0, 4.0]])}   # input-channel norms 0.5 and 5; threshold 1
      >>> updates, _ = tx.update({"k": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> (params["k"] + updates["k"]).tolist()                  # lr * beta = 1: the weak channel lands on 0
      [[0.0, 0.0], [3.0, 4.0]]
    """
    beta, _, lamb2, gamma, axis = _rgsm_args(beta, lamb1, lamb2, groups)

    def lasso_grad(path, w):
        if lamb2 == 0.0:
            return jnp.zeros_like(w)
        norms = group_norms(w, axis=axis, eps=GROUP_NORM_EPS)
        shape = [1] * w.ndim
        shape[axis % w.ndim] = w.shape[axis]
        return lamb2 * w / norms.reshape(shape)

    return _split_transform(_rgsm_keep(gamma, axis), lasso_grad, beta, _check_where(where))


# -------------------------------------------------------------------------------------------- report

def channel_sparsity(params: PyTree, *, where: Where | None = None) -> dict[str, dict[str, float]]:
    """Per-layer and total sparsity of the selected kernels: weights, input and output channels.

    The weight counts come from :func:`jaxrob.prune._masks.sparsity` (exact
    zeros); a channel counts as pruned when all its weights are exactly zero.

    Args:
      params: pytree of (pruned) weights, e.g. ``rgsm_weights(state.params)``.
      where: selection of the kernels to report (default :func:`conv_kernels`);
        every selected leaf must have ``ndim >= 2``.

    Returns:
      ``{name: {...}, "total": {...}}`` where each layer's entry holds its
      ``shape`` and each entry ``weights``
      (count), ``zero_fraction`` (unstructured sparsity: fraction of exactly-zero
      weights), ``input_channels`` / ``output_channels`` (sizes of the kernel's
      axes -2 / -1) and ``zero_input_channels`` / ``zero_output_channels``
      (fraction of those channels whose weights are all exactly zero). The
      total pools weights and channels over the layers. Host-side (numpy).

    Raises:
      ValueError: ``where`` selects no leaf, or one with ``ndim < 2``.

    Example:
      >>> import numpy as np
      >>> k = np.ones((3, 3, 4, 2)); k[:, :, :3, :] = 0                # 3 of 4 input channels zero
      >>> r = channel_sparsity({"conv": {"kernel": k}})
      >>> r["conv/kernel"]["zero_input_channels"], r["total"]["zero_fraction"]
      (0.75, 0.75)
    """
    where = _check_where(where)
    report = sparsity(params, where=where)
    if not report.layers:
        raise ValueError("channel_sparsity: where selected no leaf of params")
    out: dict[str, dict[str, float]] = {}
    tot = {"in": 0, "in_zero": 0, "out": 0, "out_zero": 0}
    for (name, leaf), layer in zip(named_leaves(params, where=where), report.layers):
        _check_group_leaf(name, leaf)
        nz = np.asarray(jax.device_get(leaf)) != 0
        in_zero = int(np.sum(~nz.any(axis=tuple(a for a in range(nz.ndim) if a != nz.ndim - 2))))
        out_zero = int(np.sum(~nz.any(axis=tuple(range(nz.ndim - 1)))))
        n_in, n_out = nz.shape[-2], nz.shape[-1]
        out[name] = {"shape": tuple(nz.shape), "weights": layer.size, "zero_fraction": layer.sparsity,
                     "input_channels": n_in, "zero_input_channels": in_zero / n_in,
                     "output_channels": n_out, "zero_output_channels": out_zero / n_out}
        for k, v in (("in", n_in), ("in_zero", in_zero), ("out", n_out), ("out_zero", out_zero)):
            tot[k] += v
    out["total"] = {"weights": report.size, "zero_fraction": report.total,
                    "input_channels": tot["in"], "zero_input_channels": tot["in_zero"] / tot["in"],
                    "output_channels": tot["out"], "zero_output_channels": tot["out_zero"] / tot["out"]}
    return out
