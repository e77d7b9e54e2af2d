"""Orbax checkpoints of a :class:`TrainState`, with fingerprints and clear failures.

Layout: ``<directory>/<step>/`` holds two orbax items, ``state`` (every array of
the :class:`TrainState` as a flat dict keyed by its pytree path, e.g.
``params/dense/kernel``, ``opt_state/1/0/trace/dense/kernel``, ``rng``) and
``meta`` (JSON: the step, the run's config fingerprint and caller extras such as
the training history).

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>/`` and
renames it to ``<step>/`` only once every file is written and flushed, so a
crash during a save leaves at worst a temporary directory, which is ignored
when listing steps (and removed the next time a :class:`Checkpoints` is opened);
the previous checkpoint is never touched.  A step that already exists is never
overwritten, and a checkpoint that cannot be read, or that was written by a
different configuration or model, raises :class:`CheckpointError` rather than
being skipped or replaced.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as _pp

from jaxrob import _validate
from jaxrob.train._state import TrainState

PyTree = Any
_FORMAT = "jaxrob.train.TrainState/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match the run restoring it."""


def _jsonify(obj: Any) -> Any:
    """Round-trips ``obj`` through JSON so that comparisons see what was stored."""
    def default(x):
        if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "tolist"):
            return np.asarray(x).tolist()
        raise TypeError(f"value of type {type(x).__name__} is not JSON-serialisable: {x!r}")
    return json.loads(json.dumps(obj, default=default, sort_keys=True))


def _flatten(state: TrainState) -> dict[str, Any]:
    """``TrainState`` -> ``{path: array}``; the key is stored as its raw uint32 data."""
    tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "rng": jax.random.key_data(state.rng)}
    flat: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if name in flat:
            raise ValueError(f"two leaves of the train state share the checkpoint name {name!r}")
        flat[name] = leaf
    return flat


def _unflatten(target: TrainState, flat: Mapping[str, Any]) -> TrainState:
    tree = {"step": target.step, "params": target.params, "batch_stats": target.batch_stats,
            "opt_state": target.opt_state, "rng": jax.random.key_data(target.rng)}
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [flat[jax.tree_util.keystr(p, simple=True, separator="/")] for p, _ in paths]
    t = jax.tree.unflatten(treedef, leaves)
    rng = jax.random.wrap_key_data(t["rng"], impl=jax.random.key_impl(target.rng))
    return TrainState(step=t["step"], params=t["params"], batch_stats=t["batch_stats"],
                      opt_state=t["opt_state"], rng=rng)


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding to restore ``leaf`` into (host arrays go to the first local device)."""
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    leaf = np.asarray(leaf)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def _diff(stored: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(expected)):
        name = f"{prefix}{k}"
        if k not in stored:
            out.append(f"{name}: missing from the checkpoint (run has {expected[k]!r})")
        elif k not in expected:
            out.append(f"{name}: only in the checkpoint ({stored[k]!r})")
        elif isinstance(stored[k], dict) and isinstance(expected[k], dict):
            out.extend(_diff(stored[k], expected[k], prefix=f"{name}."))
        elif stored[k] != expected[k]:
            out.append(f"{name}: checkpoint has {stored[k]!r}, run has {expected[k]!r}")
    return out


class Checkpoints:
    """Periodic, atomic checkpoints of a :class:`TrainState` in one directory.

    A thin layer over ``orbax.checkpoint.CheckpointManager`` (synchronous saves,
    the ``max_to_keep`` newest steps kept) that adds a configuration fingerprint
    and turns every way a restore can go wrong into a :class:`CheckpointError`.

    Args:
      directory: where step directories live; created if missing.
      max_to_keep: number of newest checkpoints kept (``None``: all).
      fingerprint: JSON-serialisable description of the run (loss, optimizer,
        data order, model, ...). It is written with every save, and a restore
        refuses a checkpoint whose stored fingerprint differs. ``None`` disables
        the check.

    Example:
      >>> import jax, jax.numpy as jnp, tempfile
      >>> from jaxrob.train import Checkpoints, TrainState, make_optimizer
      >>> opt = make_optimizer("sgd", learning_rate=0.1)
      >>> state = TrainState.create({"w": jnp.ones(3)}, opt, key=jax.random.key(0))
      >>> with Checkpoints(tempfile.mkdtemp(), fingerprint={"lr": 0.1}) as ckpt:
      ...     ckpt.save(state)
      ...     restored, extra = ckpt.restore(state)
      0
      >>> int(restored.step)
      0
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 fingerprint: Mapping[str, Any] | None = None):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}")
        if max_to_keep is not None:
            max_to_keep = _validate.number("max_to_keep", max_to_keep, min=1, integer=True)
        if fingerprint is not None and not isinstance(fingerprint, Mapping):
            raise TypeError(f"fingerprint must be a mapping or None, got {type(fingerprint).__name__}")
        self.fingerprint = None if fingerprint is None else _jsonify(dict(fingerprint))
        self.directory = os.fspath(os.path.abspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} exists and is not a directory")
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for args_cls in (ocp.args.StandardSave, ocp.args.StandardRestore):
            registry.add("state", args_cls, ocp.StandardCheckpointHandler)
        for args_cls in (ocp.args.JsonSave, ocp.args.JsonRestore):
            registry.add("meta", args_cls, ocp.JsonCheckpointHandler)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_pp.LatestN(max_to_keep) if max_to_keep is not None else _pp.PreserveAll(),
            enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

    # -- listing -----------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps with a complete (committed) checkpoint, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` if there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    # -- save / restore ----------------------------------------------------------------------------------
    def save(self, state: TrainState, *, extra: Mapping[str, Any] | None = None) -> int:
        """Writes ``state`` (and JSON ``extra``) as the checkpoint of step ``state.step``.

        Args:
          state: the train state; its step names the checkpoint.
          extra: JSON-serialisable caller data returned by :meth:`restore`.

        Returns:
          The step written.

        Raises:
          CheckpointError: if a checkpoint for this step already exists (it is
            never overwritten).
        """
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        step = int(jax.device_get(state.step))
        if step in self.steps():
            raise CheckpointError(f"a checkpoint for step {step} already exists in {self.directory}; "
                                  "refusing to overwrite it")
        meta = {"format": _FORMAT, "step": step, "fingerprint": self.fingerprint,
                "extra": _jsonify(dict(extra or {}))}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_flatten(state)),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        return step

    def restore(self, target: TrainState, *, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Reads a checkpoint into the structure, shapes and shardings of ``target``.

        Args:
          target: a :class:`TrainState` of the run (e.g. the freshly initialised
            one); only its structure, shapes, dtypes and shardings are used.
          step: which step; default the latest.

        Returns:
          ``(state, extra)``.

        Raises:
          CheckpointError: no checkpoint; the fingerprint differs; the stored
            arrays do not match ``target`` (names, shapes or dtypes); or the files
            cannot be read (truncated, corrupted).
        """
        if not isinstance(target, TrainState):
            raise TypeError(f"target must be a TrainState, got {type(target).__name__}")
        steps = self.steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"no complete checkpoint for step {step} in {self.directory}; "
                                  f"available steps: {steps}")
        where = f"checkpoint of step {step} in {self.directory}"
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - any read failure means an unusable checkpoint
            raise CheckpointError(f"the {where} cannot be read ({type(e).__name__}: {e}); it was left "
                                  "untouched: delete it, or restore an earlier step") from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"the {where} is not a jaxrob TrainState checkpoint "
                                  f"(format {meta.get('format') if isinstance(meta, dict) else meta!r})")
        if self.fingerprint is not None and meta.get("fingerprint") != self.fingerprint:
            stored = meta.get("fingerprint") or {}
            lines = _diff(stored, self.fingerprint) or ["(stored fingerprint is empty)"]
            raise CheckpointError(f"the {where} was written by a different run configuration:\n  "
                                  + "\n  ".join(lines)
                                  + "\nuse a new checkpoint directory, or the configuration that wrote it")
        expected = _flatten(target)
        try:
            stored_md = self._manager.item_metadata(step)["state"]
            stored_md = getattr(stored_md, "tree", stored_md)
            stored = {k: (tuple(v.shape), np.dtype(v.dtype).name) for k, v in stored_md.items()}
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"the metadata of the {where} cannot be read ({type(e).__name__}: {e}); it "
                                  "was left untouched: delete it, or restore an earlier step") from e
        wanted = {k: (tuple(np.shape(v)), np.dtype(v.dtype).name) for k, v in expected.items()}
        if stored != wanted:
            rank = {"params": 0, "batch_stats": 1, "step": 2, "rng": 3, "opt_state": 4}
            lines = sorted(_diff(stored, wanted), key=lambda line: (rank.get(line.split("/")[0].split(":")[0], 5),
                                                                    line))
            more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
            raise CheckpointError(f"the {where} does not match the model/optimizer being restored "
                                  "(array name: (shape, dtype)):\n  " + "\n  ".join(lines[:10]) + more)
        abstract = {k: _abstract(v) for k, v in expected.items()}
        try:
            flat = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"the {where} cannot be read ({type(e).__name__}: {e}); it was left "
                                  "untouched: delete it, or restore an earlier step") from e
        state = _unflatten(target, flat)
        if int(jax.device_get(state.step)) != step:
            raise CheckpointError(f"the {where} holds a state of step {int(state.step)}; it is inconsistent")
        return state, dict(meta.get("extra") or {})

    def close(self) -> None:
        """Waits for pending work and releases the orbax manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
