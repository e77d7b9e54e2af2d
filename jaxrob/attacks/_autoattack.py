"""AutoAttack: a fixed, parameter-free sequence of attacks, each run on the points still robust.

``version="standard"`` runs APGD-CE, APGD-T (targeted DLR, 9 targets) and Square
(5,000 queries); ``version="rand"``, for randomized defenses, runs APGD-CE and
APGD-DLR with 20 EOT samples. Each stage attacks only the examples that every
earlier stage failed to break (gathered into full batches of one compiled
shape), so the whole evaluation costs little more than its first stage on an
undefended model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrob import _validate

from . import _apgd, _checks, _evaluate

PyTree = Any
Attack = Callable[..., jax.Array]

VERSIONS = ("standard", "rand")
_DEFAULTS = {"steps": 100, "restarts": 1, "n_target_classes": 9, "queries": 5000, "eot_samples": 20,
             "rho": 0.75, "p_init": 0.8}


class Stage(NamedTuple):
    """One attack of an AutoAttack run.

    Attributes:
      name: key of the stage in :attr:`AutoAttackResult.accuracy`.
      attack: ``attack(apply_fn, params, x, y, *, key, eps, **kwargs) -> x_adv``.
      kwargs: static keyword arguments as a tuple of ``(name, value)`` pairs
        (hashable, so the compiled batch is cached across calls).
    """

    name: str
    attack: Attack
    kwargs: tuple[tuple[str, Any], ...] = ()


class AutoAttackResult(NamedTuple):
    """What :func:`autoattack` returns.

    Attributes:
      x_adv: ``(N, ...)`` inputs: the adversarial example of the stage that
        broke each example, the clean input for examples never broken (and for
        those misclassified to begin with).
      robust: ``(N,)`` bool, correct on the clean input and after every stage.
      accuracy: ``{"clean": a_0, stage name: robust accuracy after it, ...}``
        in running order; non-increasing.
    """

    x_adv: jax.Array
    robust: jax.Array
    accuracy: dict[str, float]


def autoattack_stages(version: str = "standard", *, norm: str = "linf", num_classes: int = 10,
                      clip: tuple[float, float] | None = (0.0, 1.0), transform=None,
                      randomized: bool = False, **overrides: Any) -> tuple[Stage, ...]:
    """The stages of an AutoAttack version, with optional cheaper settings.

    Args:
      version: ``"standard"`` (APGD-CE, APGD-T, Square) or ``"rand"`` (APGD-CE
        and APGD-DLR with EOT).
      norm: ``"linf"`` or ``"l2"``.
      num_classes: number of classes ``C`` of the model; APGD-T uses
        ``min(n_target_classes, C - 1)`` targets.
      clip: valid input box, passed to every attack.
      transform: random input transformation for ``"rand"`` (see
        :func:`jaxrob.attacks.pgd`).
      randomized: for ``"rand"``: the model takes a ``key`` keyword argument.
      **overrides: ``steps`` (APGD iterations, 100), ``restarts`` (APGD
        restarts, 1), ``n_target_classes`` (9), ``queries`` (Square, 5000),
        ``p_init`` (Square, 0.8), ``eot_samples`` (``"rand"``, 20), ``rho``
        (0.75).

    Returns:
      A tuple of :class:`Stage`.
    """
    _validate.choice("version", version, VERSIONS)
    _validate.choice("norm", norm, _checks.NORMS)
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown AutoAttack override(s) {unknown}; allowed: {sorted(_DEFAULTS)}")
    o = {**_DEFAULTS, **overrides}
    apgd_kw = {"steps": o["steps"], "restarts": o["restarts"], "rho": o["rho"], "norm": norm, "clip": clip}
    _check_randomness(version, transform, randomized)
    if version == "standard":
        if num_classes < 4:
            raise ValueError(f"version='standard' runs APGD-T, whose targeted DLR loss needs at least 4 "
                             f"classes; the model has {num_classes}. Pass stages=[...] without it")
        n_t = overrides.get("n_target_classes", min(o["n_target_classes"], num_classes - 1))
        from . import _square  # noqa: PLC0415  (Square lives in its own module)
        return (
            Stage("apgd-ce", _apgd.apgd, _items(apgd_kw, loss="ce")),
            Stage("apgd-t", _apgd.apgd_targeted, _items(apgd_kw, n_target_classes=n_t)),
            Stage("square", _square.square,
                  _items({"queries": o["queries"], "p_init": o["p_init"], "norm": norm, "clip": clip})),
        )
    eot = {"eot_samples": o["eot_samples"], "transform": transform, "randomized": randomized}
    return (Stage("apgd-ce", _apgd.apgd, _items(apgd_kw, loss="ce", **eot)),
            Stage("apgd-dlr", _apgd.apgd, _items(apgd_kw, loss="dlr", **eot)))


def _check_randomness(version: str, transform, randomized: bool) -> None:
    if version == "standard" and (transform is not None or randomized):
        raise ValueError("version='standard' attacks a deterministic model; for a random transform "
                         "or a randomized model use version='rand'")
    if version == "rand" and transform is None and not randomized:
        raise ValueError("version='rand' is for randomized defenses: pass a random `transform(key, x)` "
                         "or randomized=True (a model called as apply_fn(params, x, key=key))")


def _items(kw: dict[str, Any], **more: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({**kw, **more}.items()))


def _stage_batch(params, x, y, key, eps, apply_fn, attack, kwargs_items, transform, randomized):
    """``(x_adv, still correct)`` for one batch: the attack, then a prediction with a fresh key."""
    k_attack, k_pred = jax.random.split(key)
    x_adv = attack(apply_fn, params, x, y, key=k_attack, eps=eps, **dict(kwargs_items))
    return x_adv, _evaluate._correct(apply_fn, params, x_adv, y, k_pred, transform, randomized)


_stage_jit = jax.jit(_stage_batch, static_argnums=(5, 6, 7, 8, 9))


def autoattack(apply_fn: Callable[..., jax.Array], params: PyTree, x: jax.typing.ArrayLike,
               y: jax.typing.ArrayLike, *, key: jax.Array, eps: float, norm: str = "linf",
               version: str = "standard", batch_size: int = 256, progress: bool = False,
               clip: tuple[float, float] | None = (0.0, 1.0), transform=None, randomized: bool = False,
               stages: Sequence[Stage] | None = None, mesh: jax.sharding.Mesh | None = None,
               **overrides: Any) -> AutoAttackResult:
    """AutoAttack robust accuracy: a fixed ensemble of parameter-free attacks.

    The clean predictions come first; then each stage attacks only the
    examples that are still classified correctly (gathered into batches of
    ``batch_size``, the last one padded, so each stage compiles once), and an
    example broken by a stage is not attacked again. ``"standard"`` is APGD-CE
    (100 steps, 1 restart), APGD-T (targeted DLR, 9 target classes, 100 steps)
    and Square (5,000 queries, ``p_init`` 0.8); the official standard version
    also runs FAB-T between APGD-T and Square, which is not included here (in
    the paper it rarely breaks an example the others missed). ``"rand"`` is
    APGD-CE and APGD-DLR with ``eot_samples=20`` for randomized defenses (a
    random ``transform`` or a ``randomized`` model); there, as everywhere, an
    example counts as broken if the prediction at its adversarial input, under
    a fresh draw of the defense's randomness, is wrong.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (N, C)``.
      params: pytree of model variables.
      x: ``(N, ...)`` float inputs inside ``clip`` (numpy or jax); Square needs
        NHWC images.
      y: ``(N,)`` integer labels.
      key: typed PRNG key; stage ``j`` and batch ``b`` use fold-ins of it.
      eps: radius of the threat model, ``>= 0`` (traced: all radii share the
        compiled stages).
      norm: ``"linf"`` or ``"l2"``.
      version: ``"standard"`` or ``"rand"``; ignored when ``stages`` is given.
      batch_size: examples per attack call.
      progress: show a tqdm progress bar per stage.
      clip: valid input box ``(lo, hi)``, or None.
      transform: random input transformation ``transform(key, x)`` of the
        defense (``"rand"``).
      randomized: if True, the model is called as ``apply_fn(params, x, key=key)``.
      stages: custom stages (:class:`Stage`) instead of a version; their
        ``kwargs`` are passed as they are (``transform``/``randomized`` above
        still decide how predictions are made).
      mesh: optional ``jax.sharding.Mesh`` with a ``"data"`` axis: batches are
        sharded over it, as in :func:`jaxrob.attacks.robust_accuracy`.
      **overrides: cheaper settings for the version's stages: ``steps``,
        ``restarts``, ``n_target_classes``, ``queries``, ``p_init``,
        ``eot_samples``, ``rho`` (see :func:`autoattack_stages`).

    Returns:
      :class:`AutoAttackResult` ``(x_adv, robust, accuracy)``.

    References:
      Croce & Hein, "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690.
      Andriushchenko et al., "Square Attack: a query-efficient black-box
      adversarial attack via random search", ECCV 2020, arXiv:1912.00049.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
      >>> x = jnp.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.5, 0.45, 0.0]]).reshape(2, 2, 2, 1)
      >>> res = autoattack(apply_fn, jnp.eye(4), x, jnp.array([0, 1]), key=jax.random.key(0),
      ...                  eps=0.1, steps=10, queries=20)
      >>> res.accuracy
      {'clean': 1.0, 'apgd-ce': 0.5, 'apgd-t': 0.5, 'square': 0.5}
      >>> res.robust.tolist()
      [True, False]
    """
    key = _checks.typed_key("key", key)
    _checks.scalar("eps", eps, min=0.0)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    if not isinstance(randomized, bool):
        raise TypeError(f"randomized must be a bool, got {randomized!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable transform(key, x) -> x, got {transform!r}")
    clip = _checks.clip_range(clip)
    if stages is None:
        _validate.choice("version", version, VERSIONS)
        _check_randomness(version, transform, randomized)
    batch_size = _evaluate._check_data(apply_fn, params, x, y, batch_size=batch_size, clip=clip,
                                       randomized=randomized)
    n = x.shape[0]
    bs, nb = _evaluate._batches(n, batch_size)
    if stages is None:
        c = _checks.num_classes(apply_fn, params, jax.ShapeDtypeStruct((bs,) + tuple(x.shape[1:]), x.dtype),
                                randomized=randomized)
        stages = autoattack_stages(version, norm=norm, num_classes=c, clip=clip, transform=transform,
                                   randomized=randomized, **overrides)
    else:
        if overrides:
            raise TypeError(f"overrides {sorted(overrides)} apply to a version's stages; with stages=[...] "
                            "put the settings into each Stage's kwargs")
        stages = tuple(stages)
        for s in stages:
            if not isinstance(s, Stage) or not callable(s.attack):
                raise TypeError(f"stages must hold Stage(name, attack, kwargs) with a callable attack, got {s!r}")
        names = [s.name for s in stages]
        if len(set(names)) != len(names) or "clean" in names:
            raise ValueError(f"stage names must be distinct and not 'clean', got {names}")

    put = _evaluate._sharder(mesh)
    if mesh is not None:
        shards = mesh.shape["data"]
        bs = -(-bs // shards) * shards
        nb = math.ceil(n / bs)
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    clean = _evaluate._compiled(_evaluate._clean_batch, _evaluate._clean_jit, (apply_fn, transform, randomized))
    robust = np.zeros(n, dtype=bool)
    for i in range(nb):
        sl = slice(i * bs, (i + 1) * bs)
        c_ok = clean(params, put(_evaluate._pad(x[sl], bs)), put(_evaluate._pad(y[sl], bs)),
                     jax.random.fold_in(jax.random.fold_in(key, 0), i))
        robust[sl] = np.asarray(c_ok)[:min(bs, n - i * bs)]
    accuracy = {"clean": float(robust.mean())}
    x_adv = np.array(x, copy=True)
    eps_arr = jnp.float32(eps)
    for j, stage in enumerate(stages):
        run = _evaluate._compiled(_stage_batch, _stage_jit,
                                  (apply_fn, stage.attack, tuple(stage.kwargs), transform, randomized))
        idx = np.flatnonzero(robust)
        k_stage = jax.random.fold_in(key, j + 1)
        n_batches = math.ceil(idx.size / bs)
        bar = tqdm(total=n_batches, desc=f"autoattack {stage.name}", disable=not progress, leave=False)
        for b in range(n_batches):
            ib = idx[b * bs:(b + 1) * bs]
            ibp = _evaluate._pad(ib, bs)
            xa, ok = run(params, put(x[ibp]), put(y[ibp]), jax.random.fold_in(k_stage, b), eps_arr)
            ok = np.asarray(ok)[:ib.size]
            broken = ib[~ok]
            x_adv[broken] = np.asarray(xa)[:ib.size][~ok]
            robust[broken] = False
            bar.update(1)
            bar.set_postfix({"robust acc": f"{robust.mean():.4f}"})
        bar.close()
        accuracy[stage.name] = float(robust.mean())
    return AutoAttackResult(x_adv=jnp.asarray(x_adv), robust=jnp.asarray(robust), accuracy=accuracy)
