"""``fit``: the host-side epoch loop around the jitted train step.

The loop is plain Python over host batches (``jaxrob.data.batches``); all
numerical work happens in the one compiled step.  Everything that determines
step ``s`` -- the parameters and optimizer state after step ``s - 1``, batch
``s`` of the seeded data stream and the key ``fold_in(state.rng, s)`` -- is
either in the :class:`TrainState` or a pure function of ``s``, so a run resumed
from the checkpoint of step ``s`` ends with exactly the parameters of an
uninterrupted run -- provided the step itself is deterministic.  It is on CPU
(tested bit for bit).  On GPUs XLA uses non-deterministic reductions by default,
and PGD's sign step amplifies their last-bit differences, so even two
uninterrupted runs differ; set ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``
to make runs, and resumes, bitwise reproducible (checked on an H100 with a
ResNet-20 under PGD-AT).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from jaxrob import _validate
from jaxrob import data as _data
from jaxrob.train._checkpoint import CheckpointError, Checkpoints
from jaxrob.train._losses import Loss, cross_entropy
from jaxrob.train._optim import make_optimizer
from jaxrob.train._state import TrainState, unpack_model
from jaxrob.train._step import _check_mesh, make_train_step, replicate, shard_batch

History = list[dict[str, Any]]


def _optimizer(optimizer: Any, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """``(transformation, fingerprint entry)`` from a config mapping or an optax transformation."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, "custom optax transformation (describe it in `config` to fingerprint it)"
    if isinstance(optimizer, Mapping):
        cfg = dict(optimizer)
        cfg.setdefault("total_steps", total_steps)
        try:
            return make_optimizer(**cfg), cfg
        except TypeError as e:
            raise TypeError(f"optimizer config {cfg} does not match make_optimizer's arguments: {e}") from e
    raise TypeError("optimizer must be a mapping of make_optimizer arguments (e.g. {'name': 'sgd', "
                    f"'learning_rate': 0.1}}) or an optax.GradientTransformation, got {type(optimizer).__name__}")


_STEP_CACHE: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_STEP_CACHE_SIZE = 8


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    hash(value)
    return value


def _cached_step(fns, tx, opt_config, loss, mesh):
    """The jitted step for this (model functions, loss, optimizer config, mesh), built once per process.

    Repeated ``fit`` calls with the same model and settings (a resumed run, a
    sweep over seeds) then reuse one compilation. Optimizers passed as optax
    objects are keyed by identity, losses by their function object.
    """
    try:
        opt_key = _hashable(opt_config) if isinstance(opt_config, Mapping) else ("tx", id(tx))
        key = (fns.apply_fn, fns.train_apply, loss.fn, loss.name, loss.hparams, opt_key, mesh)
        hash(key)
    except TypeError:  # unhashable config values: no caching
        return make_train_step(fns.apply_fn, fns.train_apply, tx, loss, mesh=mesh)
    if key in _STEP_CACHE:
        _STEP_CACHE.move_to_end(key)
        return _STEP_CACHE[key][1]
    step = make_train_step(fns.apply_fn, fns.train_apply, tx, loss, mesh=mesh)
    _STEP_CACHE[key] = (tx, step)  # keep tx alive so that an id() key is never reused while cached
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return step


def _summarise(sums: Mapping[str, float], count: int) -> dict[str, float]:
    return {k: v / count for k, v in sums.items()} if count else {}


def _accumulate(sums: dict[str, float], metrics: list[dict[str, Any]]) -> None:
    """Adds host copies of ``metrics`` to ``sums`` in order (so sums resume exactly)."""
    for m in jax.device_get(metrics):
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)


def fit(model: Any, train_data: _data.Dataset, *, optimizer: Mapping[str, Any] | optax.GradientTransformation,
        epochs: int, batch_size: int, key: jax.Array, loss: Loss | None = None, seed: int = 0,
        checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
        max_to_keep: int = 3, resume: bool = False,
        eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
        callback: Callable[[TrainState, dict[str, jax.Array]], None] | None = None,
        progress: bool = True, log_every: int = 10, mesh: Mesh | None = None,
        config: Mapping[str, Any] | None = None) -> tuple[TrainState, History]:
    """Trains ``model`` on ``train_data`` for ``epochs`` epochs.

    Each step takes batch ``s`` of ``jaxrob.data.batches(train_data,
    batch_size=batch_size, seed=seed, epochs=epochs, drop_remainder=True)``
    and the key ``jax.random.fold_in(state.rng, s)`` (``state.rng`` is ``key``),
    and runs one :func:`make_train_step` step. A tqdm bar shows the running
    loss and accuracy (refreshed every ``log_every`` steps).

    Checkpoints (if ``checkpoint_dir``): every ``checkpoint_every`` steps (or at
    the end of every epoch if ``None``) and after the last step, keeping the
    ``max_to_keep`` newest. Each holds the full :class:`TrainState` (whose step is
    the data position), the history so far, and a fingerprint of the run (loss,
    optimizer, epochs, batch size, seed, key, data set, model name and
    ``config``). ``resume=True`` continues from the newest checkpoint, which must
    have the same fingerprint; ``resume=False`` refuses a directory that already
    holds checkpoints, so nothing is ever overwritten. A resumed run ends with
    the parameters of an uninterrupted one, bit for bit where the step is
    deterministic (CPU; on GPU with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``).

    Data parallelism: with ``mesh`` (see :func:`make_mesh`) each batch is sharded
    over the ``"data"`` axis and the state replicated; ``batch_size`` must be
    divisible by the number of devices. In a multi-process run every process
    calls ``fit`` with the same arguments and feeds its own slice of each batch.

    Args:
      model: a :class:`~jaxrob.models.Model`, or ``(apply_fn, params)`` for a
        foreign model (pure ``apply_fn(params, x) -> logits``, no batch stats).
      train_data: a :class:`jaxrob.data.Dataset`.
      optimizer: keyword arguments of :func:`make_optimizer` (``total_steps``
        defaults to ``epochs * steps_per_epoch``), or an optax transformation.
      epochs: number of passes over the data, ``>= 1``.
      batch_size: global batch size, ``>= 1``; the last partial batch of every
        epoch is dropped, so one shape is compiled.
      key: typed PRNG key; the run's base key (dropout, attack starts).
      loss: a :class:`Loss`; default :func:`cross_entropy`.
      seed: data-order seed, ``>= 0``.
      checkpoint_dir: where to write checkpoints; ``None`` disables them.
      checkpoint_every: steps between checkpoints, ``>= 1``; ``None``: per epoch.
      max_to_keep: number of checkpoints kept, ``>= 1``.
      resume: continue from the newest checkpoint in ``checkpoint_dir``.
      eval_fn: called as ``eval_fn(state)`` at the end of every epoch; its
        ``{name: float}`` result is added to that epoch's history entry.
      callback: called as ``callback(state, metrics)`` after every step (do not
        keep ``state``: its buffers are donated to the next step).
      progress: show the progress bar (on process 0 only).
      log_every: steps between progress-bar refreshes, ``>= 1``.
      mesh: data-parallel mesh, or ``None`` for the default device.
      config: extra JSON-serialisable description of the run, added to the
        checkpoint fingerprint.

    Returns:
      ``(state, history)``: the final :class:`TrainState` and one dict per epoch
      with ``epoch``, ``step`` and the epoch means of the step metrics (``loss``,
      ``accuracy``, ``grad_norm``, loss-specific ones) plus ``eval_fn``'s values.

    Raises:
      CheckpointError: ``resume=False`` but ``checkpoint_dir`` holds
        checkpoints; or the checkpoint to resume from is unreadable or belongs
        to a different run.

    Example:
      >>> import jax
      >>> from jaxrob import data, models, train
      >>> ds = data.load("mnist10k", split="train")
      >>> net = models.create("mlp", hidden_sizes=(32,), key=jax.random.key(0))
      >>> state, history = train.fit(net, ds, optimizer={"name": "adam", "learning_rate": 1e-3},
      ...                            epochs=1, batch_size=200, key=jax.random.key(1), progress=False)
      >>> history[0]["accuracy"] > 0.5
      True
    """
    fns, params, batch_stats = unpack_model(model)
    if not isinstance(train_data, _data.Dataset):
        raise TypeError(f"train_data must be a jaxrob.data.Dataset (jaxrob.data.load / from_arrays), "
                        f"got {type(train_data).__name__}")
    loss = cross_entropy() if loss is None else loss
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a jaxrob.train.Loss, got {type(loss).__name__}")
    epochs = _validate.number("epochs", epochs, min=1, integer=True)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    seed = _validate.number("seed", seed, min=0, integer=True)
    key = _validate.prng_key("key", key)
    log_every = _validate.number("log_every", log_every, min=1, integer=True)
    if checkpoint_every is not None:
        checkpoint_every = _validate.number("checkpoint_every", checkpoint_every, min=1, integer=True)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from; got checkpoint_dir=None")
    for name, fn in (("eval_fn", eval_fn), ("callback", callback)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    n = len(train_data)
    if batch_size > n:
        raise ValueError(f"batch_size must be <= the {n} examples of train_data, got {batch_size}")
    if mesh is None and jax.process_count() > 1:
        raise ValueError(f"this is a {jax.process_count()}-process run: pass mesh=make_mesh() so that the "
                         "processes train one data-parallel model instead of separate copies")
    if mesh is not None:
        _check_mesh(mesh)
        shards = mesh.shape["data"]
        if batch_size % shards or batch_size % jax.process_count():
            raise ValueError(f"batch_size must be divisible by the {shards} devices of the mesh's 'data' axis "
                             f"and the {jax.process_count()} processes; got {batch_size}")
    steps_per_epoch = _data.steps_per_epoch(n, batch_size, True)
    total_steps = epochs * steps_per_epoch
    tx, opt_config = _optimizer(optimizer, total_steps)

    state = TrainState.create(params, tx, key=key, batch_stats=batch_stats)
    if mesh is not None:
        state = replicate(state, mesh)
    fingerprint = {
        "loss": loss.config, "optimizer": opt_config, "epochs": epochs, "batch_size": batch_size, "seed": seed,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "data": {"name": train_data.name, "split": train_data.split, "size": n},
        "model": getattr(model, "name", "foreign apply_fn"), "config": dict(config or {}),
    }

    history: History = []
    sums: dict[str, float] = {}
    counted = 0
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpoints(checkpoint_dir, max_to_keep=max_to_keep, fingerprint=fingerprint)
    bar = None
    try:
        if ckpt is not None:
            existing = ckpt.steps()
            if existing and not resume:
                raise CheckpointError(f"{ckpt.directory} already holds checkpoints (steps {existing}); pass "
                                      "resume=True to continue that run, or use another checkpoint_dir")
            if existing:
                state, extra = ckpt.restore(state)
                history = list(extra.get("history", []))
                sums = dict(extra.get("epoch_sums", {}))
                counted = int(extra.get("epoch_count", 0))
        start = int(jax.device_get(state.step))
        if start > total_steps:
            raise CheckpointError(f"the checkpoint is at step {start}, past the {total_steps} steps of this run")

        step_fn = _cached_step(fns, tx, opt_config, loss, mesh)
        rep = NamedSharding(mesh, P()) if mesh is not None else None
        pid, nproc = jax.process_index(), jax.process_count()
        local = batch_size // nproc
        stream = _data.batches(train_data, batch_size=batch_size, seed=seed, epochs=epochs, shuffle=True,
                               drop_remainder=True, start_step=start)
        bar = tqdm(total=total_steps, initial=start, disable=not progress or pid != 0, unit="step",
                   desc=f"{loss.name} epoch {start // steps_per_epoch + 1}/{epochs}", dynamic_ncols=True)
        pending: list[dict[str, Any]] = []  # device metrics of this epoch not yet added to `sums`

        def save() -> None:
            _accumulate(sums, pending)
            pending.clear()
            ckpt.save(state, extra={"history": history, "epoch_sums": sums, "epoch_count": counted})

        for s, (x, y) in enumerate(stream, start=start):
            if mesh is not None:
                xb, yb = shard_batch((x[pid * local:(pid + 1) * local], y[pid * local:(pid + 1) * local]), mesh)
                k = jax.device_put(jax.random.fold_in(state.rng, s), rep)
            else:
                xb, yb, k = x, y, jax.random.fold_in(state.rng, s)
            state, metrics = step_fn(state, xb, yb, k)
            pending.append(metrics)
            counted += 1
            done = s + 1
            if callback is not None:
                callback(state, metrics)
            bar.update(1)
            if done % log_every == 0 or done == total_steps:
                m = jax.device_get(metrics)
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", acc=f"{float(m['accuracy']):.3f}", refresh=False)
            if done % steps_per_epoch == 0:
                _accumulate(sums, pending)
                pending.clear()
                entry = {"epoch": done // steps_per_epoch, "step": done, **_summarise(sums, counted)}
                if eval_fn is not None:
                    entry.update({k_: float(v) for k_, v in dict(eval_fn(state)).items()})
                history.append(entry)
                sums, counted = {}, 0
                bar.set_description(f"{loss.name} epoch {min(done // steps_per_epoch + 1, epochs)}/{epochs}")
            if ckpt is not None:
                periodic = (done % checkpoint_every == 0) if checkpoint_every else (done % steps_per_epoch == 0)
                if periodic or done == total_steps:
                    save()
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    return state, history
