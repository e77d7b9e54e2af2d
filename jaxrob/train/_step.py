"""The jitted train step, data-parallel placement helpers, and evaluation.

Data parallelism uses ``jax.sharding`` only: a 1-D :class:`~jax.sharding.Mesh`
over the devices with axis ``"data"``; batches are sharded along their leading
axis (``NamedSharding(mesh, P("data"))``) and the train state is replicated
(``NamedSharding(mesh, P())``).  XLA inserts the gradient all-reduce (and, for
batch norm, computes statistics over the *global* batch), so the step is the
same program on one CPU, a GPU, a TPU slice or several hosts, and its result
does not depend on the number of devices up to floating-point summation order.

Multi-host: call ``jax.distributed.initialize()`` at the start of every process
(before any other JAX call), build the mesh with :func:`make_mesh` (all global
devices), and let each process feed its own slice of every global batch through
:func:`shard_batch` (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrob.train._losses import Loss
from jaxrob.train._state import ApplyFn, ModelFns, TrainApplyFn, TrainState, model_fns

PyTree = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, Metrics]]
DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all global devices).

    Args:
      devices: devices to use, default ``jax.devices()``.

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(len(devices),)``.

    Example:
      >>> from jaxrob.train import make_mesh
      >>> mesh = make_mesh()
      >>> mesh.axis_names
      ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be a non-empty list of JAX devices, got []")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def _check_mesh(mesh: Mesh) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see make_mesh), got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {DATA_AXIS!r}, got axes {mesh.axis_names}")
    return mesh


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (``P()``).

    In a multi-process run every process must pass the same values.
    """
    return jax.device_put(tree, NamedSharding(_check_mesh(mesh), P()))


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Shards a host batch along its leading axis over the ``"data"`` axis of ``mesh``.

    Args:
      batch: pytree of host arrays (numpy or jax), each ``(B_local, ...)``; in a
        single-process run ``B_local`` is the global batch, in a multi-process run
        each process passes its own contiguous slice ``B_local = B / num_processes``.
      mesh: the data mesh.

    Returns:
      The same pytree of global ``jax.Array`` with leading size
      ``B_local * num_processes``, sharded as ``P("data")``.

    Example:
      >>> import numpy as np
      >>> from jaxrob.train import make_mesh, shard_batch
      >>> x = shard_batch(np.zeros((8, 3), np.float32), make_mesh())
      >>> x.shape
      (8, 3)
    """
    sharding = NamedSharding(_check_mesh(mesh), P(DATA_AXIS))
    n = mesh.shape[DATA_AXIS]

    def put(a):
        a = np.asarray(a)
        global_shape = (a.shape[0] * jax.process_count(),) + a.shape[1:]
        if global_shape[0] % n:
            raise ValueError(f"the global batch size {global_shape[0]} must be divisible by the {n} devices of "
                             f"the mesh's {DATA_AXIS!r} axis")
        return jax.make_array_from_process_local_data(sharding, a, global_shape)

    return jax.tree.map(put, batch)


def make_train_step(apply_fn: ApplyFn, train_apply: TrainApplyFn | None, optimizer: optax.GradientTransformation,
                    loss: Loss, *, mesh: Mesh | None = None, donate: bool = True) -> StepFn:
    """One optimisation step as a single jitted, pure function.

    ``step(state, x, y, key) -> (state, metrics)`` evaluates ``loss`` and its
    gradient with respect to ``state.params``, applies the optax update, stores
    the new batch statistics and increments ``state.step`` -- all inside one
    ``jax.jit``. It compiles once per input shape. With ``donate=True`` the input
    state's buffers are donated: do not use ``state`` after passing it in.

    Metrics (float32 scalars): those of the loss (always ``loss`` and
    ``accuracy``; which inputs the accuracy is measured on is documented per
    loss: clean for :func:`cross_entropy` and :func:`trades`, adversarial for
    :func:`pgd_at`) plus ``grad_norm``, the global L2 norm of the gradient.

    Args:
      apply_fn: eval-mode model, ``apply_fn(variables, x) -> logits``; for a
        foreign model ``apply_fn(params, x)``.
      train_apply: ``train_apply(variables, x, *, key) -> (logits, batch_stats)``
        of a jaxrob :class:`~jaxrob.models.Model`, or ``None`` for a foreign
        model (then ``apply_fn`` is used for training and ``state.batch_stats``
        stays ``{}``).
      optimizer: an optax transformation, e.g. from :func:`make_optimizer`.
      loss: a :class:`Loss` (:func:`cross_entropy`, :func:`pgd_at`, :func:`trades`).
      mesh: if given, the step is compiled for data parallelism over ``mesh``:
        ``x``/``y`` sharded ``P("data")`` (see :func:`shard_batch`), the state
        and ``key`` replicated (see :func:`replicate`).
      donate: donate the input state's buffers to the output.

    Returns:
      ``step(state, x, y, key)``: the jitted step behind cheap eager checks of
      the argument shapes and dtypes (``step.jitted`` is the bare jitted
      function); ``x`` is ``(B, ...)``, ``y`` int ``(B,)``, ``key`` a typed PRNG
      key.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob.train import TrainState, cross_entropy, make_optimizer, make_train_step
      >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"]
      >>> opt = make_optimizer("sgd", learning_rate=0.1)
      >>> state = TrainState.create({"w": jnp.zeros((4, 3))}, opt, key=jax.random.key(0))
      >>> step = make_train_step(apply_fn, None, opt, cross_entropy())
      >>> state, metrics = step(state, jnp.ones((2, 4)), jnp.array([0, 1]), jax.random.key(1))
      >>> int(state.step), round(float(metrics["loss"]), 4)
      (1, 1.0986)
    """
    fns: ModelFns = model_fns(apply_fn, train_apply)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (see make_optimizer), "
                        f"got {type(optimizer).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a jaxrob.train.Loss (cross_entropy(), pgd_at(...), trades(...)), "
                        f"got {type(loss).__name__}")

    def step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[TrainState, Metrics]:
        def objective(params):
            return loss(fns, params, state.batch_stats, x, y, key=key)

        (_, (batch_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics["grad_norm"] = optax.tree.norm(grads).astype(jnp.float32)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state, rng=state.rng)
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        jitted = jax.jit(step, donate_argnums=donate_argnums)
    else:
        _check_mesh(mesh)
        rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
        jitted = jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=(rep, rep),
                         donate_argnums=donate_argnums)

    def checked_step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[TrainState, Metrics]:
        _check_step_args(state, x, y, key)
        return jitted(state, x, y, key)

    checked_step.jitted = jitted  # the raw jitted function, e.g. for ``.lower(...)``
    checked_step.lower = jitted.lower
    return checked_step


def _check_step_args(state: Any, x: Any, y: Any, key: Any) -> None:
    """Cheap eager checks (shapes and dtypes only: no device-to-host transfer)."""
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState (TrainState.create), got {type(state).__name__}")
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(x_shape) < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x_shape}")
    y_dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if not np.issubdtype(y_dtype, np.integer):
        raise TypeError(f"y must hold integer class indices, got dtype {y_dtype}")
    if y_shape != x_shape[:1]:
        raise ValueError(f"y must have shape ({x_shape[0]},) to match the batch of x {x_shape}, got {y_shape}")
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()):
        raise TypeError(f"key must be a single typed PRNG key (jax.random.key), got {type(key).__name__}"
                        + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else ""))


def evaluate(apply_fn: ApplyFn, variables: PyTree, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
             batch_size: int = 500) -> float:
    """Clean top-1 accuracy over a dataset held on the host.

    A convenience spelling of :func:`jaxrob.attacks.accuracy` (batched, the last
    batch padded, one compile) with the train state's variables.

    Args:
      apply_fn: eval-mode model ``apply_fn(variables, x) -> logits (B, K)``.
      variables: its first argument (``state.variables()`` for a jaxrob model,
        ``state.params`` for a foreign one).
      x: inputs ``(N, ...)`` in ``[0, 1]``.
      y: integer labels ``(N,)``.
      batch_size: examples per forward pass, ``>= 1``.

    Returns:
      Accuracy in ``[0, 1]`` as a Python float.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrob.train import evaluate
      >>> evaluate(lambda p, x: x @ p, jnp.eye(2), jnp.eye(2), jnp.array([0, 0]))
      0.5
    """
    from jaxrob.attacks import accuracy  # late import: attacks is a sibling package

    return accuracy(apply_fn, variables, x, y, batch_size=batch_size)
