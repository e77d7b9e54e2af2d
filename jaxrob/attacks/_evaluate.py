"""Batched clean and robust accuracy, compiled once per batch shape."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrob import _validate

from . import _apgd, _checks, _pgd, _square

PyTree = Any


def _fgsm_keyed(apply_fn, params, x, y, *, key, eps, **kwargs):
    del key  # FGSM is deterministic
    return _pgd.fgsm(apply_fn, params, x, y, eps=eps, **kwargs)


_ATTACKS: dict[str, Callable[..., jax.Array]] = {"pgd": _pgd.pgd, "fgsm": _fgsm_keyed, "apgd": _apgd.apgd,
                                                  "square": _square.square}


def _correct(apply_fn, params, x, y, key, transform, randomized):
    logits = _pgd.forward(apply_fn, params, x, key, transform=transform, randomized=randomized)
    return jnp.argmax(logits, axis=-1) == y


def _clean_batch(params, x, y, key, apply_fn, transform, randomized):
    return _correct(apply_fn, params, x, y, key, transform, randomized)


def _robust_batch(params, x, y, key, eps, robust, apply_fn, attack, kwargs_items):
    """``robust & (prediction on attack(x) == y)`` for one batch."""
    kwargs = dict(kwargs_items)
    k_attack, k_pred = jax.random.split(key)
    x_adv = attack(apply_fn, params, x, y, key=k_attack, eps=eps, **kwargs)
    return robust & _correct(apply_fn, params, x_adv, y, k_pred, kwargs.get("transform"),
                             kwargs.get("randomized", False))


_clean_jit = jax.jit(_clean_batch, static_argnums=(4, 5, 6))
_robust_jit = jax.jit(_robust_batch, static_argnums=(6, 7, 8))


def _compiled(fn, jitted, static):
    """``jitted`` with its static arguments bound (shared compile cache) when they hash,
    else a fresh ``jax.jit`` of a closure (one compile per call of the public function)."""
    if _checks.hashable(*static):
        return lambda *args: jitted(*args, *static)
    return jax.jit(lambda *args: fn(*args, *static))


def _pad(a: Any, size: int) -> Any:
    """Pads the leading axis to ``size`` by repeating the last row (a valid input)."""
    n = a.shape[0]
    if n == size:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    return xp.concatenate([a, xp.repeat(a[-1:], size - n, axis=0)], axis=0)


def _sharder(mesh: jax.sharding.Mesh | None) -> Callable[[Any], Any]:
    """``put(a)``: shards ``a``'s leading axis over ``mesh``'s ``"data"`` axis (identity without a mesh)."""
    if mesh is None:
        return lambda a: a
    if not isinstance(mesh, jax.sharding.Mesh) or "data" not in mesh.axis_names:
        raise TypeError(f"mesh must be a jax.sharding.Mesh with a 'data' axis (see jaxrob.train.make_mesh), "
                        f"got {mesh!r}")
    if jax.process_count() > 1:
        raise ValueError("robust_accuracy(mesh=...) supports single-process meshes only")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return lambda a: jax.device_put(a, sharding)


def _batches(n: int, batch_size: int):
    bs = min(batch_size, n)
    return bs, math.ceil(n / bs)


def _check_data(apply_fn, params, x, y, *, batch_size, clip, randomized):
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x) -> logits, got {apply_fn!r}")
    _checks.inputs(x, clip)
    n = x.shape[0]
    if n == 0:
        raise ValueError("x must hold at least one example, got an empty batch")
    if not hasattr(y, "dtype"):
        raise TypeError(f"y must be an integer array of shape ({n},), got {type(y).__name__}")
    _validate.labels("y", y, batch=n)
    batch_size = _checks.positive_int("batch_size", batch_size)
    bs, _ = _batches(n, batch_size)
    c = _checks.num_classes(apply_fn, params, jax.ShapeDtypeStruct((bs,) + tuple(x.shape[1:]), x.dtype),
                            randomized=randomized)
    _validate.labels("y", y, batch=n, num_classes=c)
    return batch_size


def accuracy(apply_fn: Callable[..., jax.Array], params: PyTree, x: jax.typing.ArrayLike,
             y: jax.typing.ArrayLike, *, batch_size: int = 256, key: jax.Array | None = None,
             transform: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
             randomized: bool = False, clip: tuple[float, float] | None = (0.0, 1.0),
             progress: bool = False) -> float:
    """Top-1 accuracy of ``argmax apply_fn(params, x)``, in batches (one compile).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``.
      params: pytree of model variables.
      x: ``(N, ...)`` float inputs inside ``clip`` (numpy or jax).
      y: ``(N,)`` integer labels.
      batch_size: examples per forward pass; the last batch is padded.
      key: typed PRNG key, required with ``transform`` or ``randomized``.
      transform: optional random input transformation ``transform(key, x)``.
      randomized: if True, the model is called as ``apply_fn(params, x, key=key)``.
      clip: the valid input range ``x`` is checked against (None: no check).
      progress: show a tqdm progress bar.

    Returns:
      The fraction of correctly classified examples, in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> apply_fn = lambda p, x: x @ p
      >>> accuracy(apply_fn, jnp.eye(2), jnp.array([[0.9, 0.1], [0.2, 0.8]]), jnp.array([0, 0]))
      0.5
    """
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable transform(key, x) -> x, got {transform!r}")
    if transform is not None or randomized:
        if key is None:
            raise ValueError("key is required with a random transform or randomized=True")
        key = _checks.typed_key("key", key)
    else:
        key = jax.random.key(0) if key is None else _checks.typed_key("key", key)
    batch_size = _check_data(apply_fn, params, x, y, batch_size=batch_size,
                             clip=_checks.clip_range(clip), randomized=randomized)
    n = x.shape[0]
    bs, nb = _batches(n, batch_size)
    clean = _compiled(_clean_batch, _clean_jit, (apply_fn, transform, randomized))
    correct = 0
    for i in tqdm(range(nb), desc="accuracy", disable=not progress, leave=False):
        sl = slice(i * bs, (i + 1) * bs)
        valid = min(bs, n - i * bs)
        c = clean(params, _pad(x[sl], bs), _pad(y[sl], bs), jax.random.fold_in(key, i))
        correct += int(jnp.sum(c[:valid]))
    return correct / n


def robust_accuracy(apply_fn: Callable[..., jax.Array], params: PyTree, x: jax.typing.ArrayLike,
                    y: jax.typing.ArrayLike, *, epsilons: Iterable[float], key: jax.Array,
                    attack: str | Callable[..., jax.Array] = "pgd", batch_size: int = 256,
                    progress: bool = True, mesh: jax.sharding.Mesh | None = None,
                    **attack_kwargs: Any) -> dict[float, float]:
    """Accuracy under attack for several radii, compiled once for all of them.

    The clean predictions come first, then the attack at every ``eps`` in
    increasing order. An example counts as robust at ``eps``
    only if it is classified correctly at ``x`` and on the adversarial examples
    found at every radius ``<= eps`` (the smaller balls lie inside the larger
    one), so the result is non-increasing in ``eps`` and ``eps=0`` gives clean
    accuracy. ``eps`` is a traced argument, so all radii share one compiled
    attack per batch shape; the last batch is padded to the same shape.
    Predictions go through the same pipeline as the attack (its ``transform``
    and ``randomized`` options, with fresh keys). At each radius only the
    examples still robust are attacked (gathered into full batches), which is
    what makes evaluating many radii cheap; the result is the same as
    attacking everything, since a broken example stays broken.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (B, C)``.
      params: pytree of model variables.
      x: ``(N, ...)`` float inputs (numpy or jax), inside the attack's ``clip``.
      y: ``(N,)`` integer labels.
      epsilons: radii ``>= 0``.
      key: typed PRNG key; batch ``i`` and radius ``j`` use fold-ins of it.
      attack: ``"pgd"``, ``"fgsm"``, ``"apgd"``, ``"square"`` or a callable
        ``attack(apply_fn, params, x, y, *, key, eps, **attack_kwargs) -> x_adv``.
      batch_size: examples per attack call.
      progress: show a tqdm progress bar with the running accuracy at the
        largest radius.
      mesh: optional ``jax.sharding.Mesh`` with a ``"data"`` axis (e.g.
        ``jaxrob.train.make_mesh()``): every attack batch is sharded over it and
        ``params`` replicated, so all devices (or, with
        ``jax_num_cpu_devices``, all CPU cores) attack their share in parallel.
        The batch size is rounded up to a multiple of the axis size. Single
        process only.
      **attack_kwargs: static options for the attack (e.g. ``steps=10,
        norm="l2", restarts=2``); they must be hashable to share the compile
        cache across calls. ``step_size`` if given is the same for every eps
        (by default PGD uses ``2.5 * eps / steps``).

    Returns:
      ``{eps: accuracy}`` with accuracies in [0, 1], keys as floats.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn = lambda p, x: x @ p
      >>> x, y = jnp.array([[0.8, 0.2], [0.1, 0.7]]), jnp.array([0, 1])
      >>> robust_accuracy(apply_fn, jnp.eye(2), x, y, epsilons=[0.0, 0.2, 0.4],
      ...                 key=jax.random.key(0), steps=5, progress=False)
      {0.0: 1.0, 0.2: 1.0, 0.4: 0.0}
    """
    if isinstance(attack, str):
        _validate.choice("attack", attack, tuple(_ATTACKS))
        attack_fn = _ATTACKS[attack]
    elif callable(attack):
        attack_fn = attack
    else:
        raise TypeError(f"attack must be one of {tuple(_ATTACKS)} or a callable, got {attack!r}")
    for name in ("eps", "key"):
        if name in attack_kwargs:
            raise TypeError(f"robust_accuracy sets the attack's {name!r} itself; "
                            f"pass epsilons=[...] and key= instead of {name}=")
    if isinstance(epsilons, numbers.Real):
        epsilons = [epsilons]
    epsilons = list(epsilons)
    if not epsilons:
        raise ValueError("epsilons must hold at least one radius, got an empty sequence")
    for e in epsilons:
        _validate.number("epsilons[i]", e, min=0.0)
    key = _checks.typed_key("key", key)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    if "clip" in attack_kwargs:
        attack_kwargs["clip"] = _checks.clip_range(attack_kwargs["clip"])
    clip = attack_kwargs.get("clip", (0.0, 1.0))
    transform = attack_kwargs.get("transform")
    randomized = attack_kwargs.get("randomized", False)
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    batch_size = _check_data(apply_fn, params, x, y, batch_size=batch_size, clip=clip,
                             randomized=randomized)

    radii = sorted({float(e) for e in epsilons})
    n = x.shape[0]
    bs, nb = _batches(n, batch_size)
    put = _sharder(mesh)
    if mesh is not None:
        shards = mesh.shape["data"]
        bs = -(-bs // shards) * shards
        nb = math.ceil(n / bs)
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    clean = _compiled(_clean_batch, _clean_jit, (apply_fn, transform, randomized))
    robust_fn = _compiled(_robust_batch, _robust_jit,
                          (apply_fn, attack_fn, tuple(sorted(attack_kwargs.items()))))
    robust = np.zeros(n, dtype=bool)
    for i in range(nb):
        sl = slice(i * bs, (i + 1) * bs)
        valid = min(bs, n - i * bs)
        c = clean(params, put(_pad(x[sl], bs)), put(_pad(y[sl], bs)),
                  jax.random.fold_in(jax.random.fold_in(key, 0), i))
        robust[sl] = np.asarray(c)[:valid]
    counts = {}
    all_true = put(np.ones((bs,), dtype=bool))
    bar = tqdm(total=nb * len(radii), desc=f"robust accuracy ({getattr(attack, '__name__', attack)})",
               disable=not progress)
    for j, eps in enumerate(radii):
        if eps > 0.0:
            # Only examples still robust at the smaller radii can count at this one, so only
            # they are attacked (as AutoAttack does): gathered, in batches of the one compiled shape.
            idx = np.flatnonzero(robust)
            k_eps = jax.random.fold_in(key, j + 1)
            for b in range(math.ceil(idx.size / bs)):
                ib = idx[b * bs:(b + 1) * bs]
                ibp = _pad(ib, bs)
                ok = robust_fn(params, put(x[ibp]), put(y[ibp]), jax.random.fold_in(k_eps, b), jnp.float32(eps),
                               all_true)
                robust[ib] = np.asarray(ok)[:ib.size]
                bar.update(1)
            bar.update(nb - math.ceil(idx.size / bs))
        else:
            bar.update(nb)
        counts[eps] = int(robust.sum())
        bar.set_postfix({f"acc@{eps:g}": f"{counts[eps] / n:.3f}"})
    bar.close()
    return {float(e): counts[float(e)] / n for e in epsilons}
