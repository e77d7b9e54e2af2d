"""Spatio-temporal pruning and post-training weight quantization of spiking networks.

The method of Chowdhury, Garg & Roy (IJCNN 2021), in three independent steps:

1. **Spatial pruning** (:func:`pca_widths`, :func:`compress`).  Run the trained
   SNN on data and record, for every spike layer, the *average accumulated
   membrane potential* ``(1/T) sum_t U_t`` of each neuron (``stats["potential"]``
   of ``model.simulate``).  A PCA of that layer's potentials gives the number of
   principal components needed to explain a fraction ``variance`` of their
   variance; that number becomes the layer's new width (channels of a
   convolution, units of a dense layer).  The new, narrower architecture is built
   with ``create(..., widths=...)``.
2. **Temporal pruning** (:func:`temporal_prune`).  Train while gradually
   reducing the number of timesteps ``T``: a schedule of stages
   ``((T_1, epochs_1), (T_2, epochs_2), ...)`` with ``T_1 > T_2 > ...``, each stage
   initialised with the variables of the previous one.
3. **Post-training weight quantization** (:func:`quantize_weights`): uniform
   quantization of every synaptic kernel through :func:`jaxrob.quant.quantize_params`.

What the PCA sees (a data matrix per spike layer).  A convolution's ``C`` output
channels are the *features* and every (example, spatial position) pair is a
*sample*: the potentials ``(N, H, W, C)`` are read as an ``(N*H*W, C)`` matrix,
as in the PCA-based CNN design of Garg, Panda & Roy (2019) on which the
spatial-pruning step builds.  A dense layer's ``(N, C)`` potentials are used as
they are (one sample per example), so a dense layer of ``C`` units needs more
than ``C`` examples.  The data are mean-centred (ordinary PCA); the covariance
is accumulated batch by batch in one jitted pass (the batch's mean and centred
scatter matrix on the device, Chan et al.'s pairwise update in float64 on the
host), so any number of examples fits in memory.  A spike layer's width is that
of the synapse feeding it (the closest convolution/dense layer before it in the
network's op order -- pools and flattening do not change channels), so the
result is keyed by synapse names, the names ``create(widths=...)`` takes.

What is taken from where:

* **From the paper (abstract, read):** PCA of the layer-wise average accumulated
  membrane potential determines the significant dimensions; this gives
  10-14x model-size compression on VGG/CIFAR; temporal pruning reduces ``T``
  gradually *during training*; networks are trained with surrogate-gradient
  BPTT; weights are quantized *post-training*.
* **From a secondary description of the paper (not checked against its text):**
  hybrid training (ANN, conversion with a 99.9th-percentile threshold, SNN
  fine-tuning with Adam), Poisson rate input, leak 0.9901, average pooling,
  no bias, VGG9 at 100 timesteps (90.10% on CIFAR-10; pruned 89.04%), and the
  network staying accurate down to about 5-bit weights.
* **Derived / chosen here (the paper's body could not be retrieved):**
  (a) the variance threshold: default 0.999 (99.9%), the threshold of Garg,
  Panda & Roy's PCA method, which this paper's spatial pruning applies to SNN
  potentials -- pass ``variance=`` to change it; (b) the (examples x
  positions, channels) data matrix and mean-centring, as in that method;
  (c) the compressed network is **trained from scratch** (Garg et al.'s
  method designs an architecture, it does not select channels; PCA gives a
  count, not a subset), so :func:`compress` returns freshly initialised
  variables and no sub-weights; (d) the temporal schedule (which ``T``s and
  how many epochs each) is the caller's; (e) quantization is symmetric uniform,
  one scale per layer (or per output channel), on kernels only.

Thresholds and leaks stay in full precision under quantization: unless the neuron
learns them they live in ``variables["batch_stats"]`` (see
:mod:`jaxrob.snn._models`), and even when learned they are leaves named
``threshold``/``leak``, never ``kernel``, which is all that
:func:`jaxrob.quant.quantize_params` touches by default; biases are also kept.

References:
  Chowdhury, Garg, Roy, "Spatio-Temporal Pruning and Quantization for Low-latency
  Spiking Neural Networks", IJCNN 2021, arXiv:2104.12528.
  Garg, Panda, Roy, "A Low Effort Approach to Structured CNN Design Using PCA",
  IEEE Access 2020, arXiv:1812.06224.
  Chan, Golub, LeVeque, "Updating formulae and a pairwise algorithm for computing
  sample variances", COMPSTAT 1982 (the pairwise covariance update).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob import data as _data
from jaxrob.models._base import PyTree, count_params
from jaxrob.snn._models import SpikingModel, create

# --------------------------------------------------------------------------- PCA of potentials


def spike_layer_synapses(model: SpikingModel) -> dict[str, str]:
    """``{spike_layer: synapse}``: the convolution/dense layer whose output each spike layer integrates.

    Read from ``model.layer_info`` (insertion order = the network's op order): a
    spike layer belongs to the last synapse before it.
    """
    _check_model(model)
    out, last = {}, None
    for name, info in model.layer_info.items():
        if info["kind"] == "spike":
            if last is None:
                raise ValueError(f"spike layer {name!r} has no synapse before it")
            out[name] = last
        else:
            last = name
    return out


def _check_model(model: Any) -> None:
    if not isinstance(model, SpikingModel):
        raise TypeError(f"model must be a jaxrob.snn SpikingModel (jaxrob.snn.create), got {type(model).__name__}")


def _check_variance(variance: Any) -> float:
    return float(_validate.number("variance", variance, min=0.0, max=1.0, min_inclusive=False))


def _check_images(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of NHWC images (N, H, W, C), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must hold float images in [0, 1], got dtype {x.dtype}")
    return x


def _batch_moments(potential: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(count, mean (C,), centred scatter (C, C))`` of the rows of ``potential`` (N, ..., C), rows weighted 0/1.

    ``weight`` (N,) masks the padding of the last batch; every row of an example
    (its spatial positions) gets the example's weight.
    """
    c = potential.shape[-1]
    rows = potential.reshape(-1, c).astype(jnp.float32)
    w = jnp.repeat(weight.astype(jnp.float32), rows.shape[0] // potential.shape[0])
    n = jnp.sum(w)
    mean = jnp.sum(rows * w[:, None], axis=0) / jnp.maximum(n, 1.0)
    centred = (rows - mean) * jnp.sqrt(w)[:, None]
    return n, mean, jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs


def _merge_moments(a, b):
    """Chan et al.'s pairwise update of ``(count, mean, scatter)`` in float64."""
    if a is None:
        return b
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    if nb == 0:
        return a
    d = mb - ma
    return n, ma + d * (nb / n), sa + sb + np.outer(d, d) * (na * nb / n)


def potential_covariances(model: SpikingModel, variables: PyTree, x: Any, *, batch_size: int = 256,
                          key: jax.Array | None = None, timesteps: int | None = None
                          ) -> dict[str, tuple[int, np.ndarray]]:
    """Covariance of each spike layer's average accumulated membrane potential over ``x``.

    Args:
      model: a spiking :class:`~jaxrob.snn.SpikingModel`.
      variables: its (trained) variables.
      x: images ``(N, H, W, C)`` in [0, 1].
      batch_size: examples per forward pass (the last batch is padded and masked:
        one compile for the whole pass).
      key: typed PRNG key for stochastic encoders (batch ``b`` uses
        ``fold_in(key, b)``); None: ``jax.random.key(0)``.
      timesteps: simulate this many steps instead of ``model.timesteps``.

    Returns:
      ``{synapse_name: (samples, covariance (C, C) float64)}`` where ``samples`` is
      the number of rows of the layer's data matrix (examples times spatial positions).
    """
    _check_model(model)
    if not model.spiking:
        raise ValueError("spatial pruning reads membrane potentials: pass the spiking model, not the ANN twin")
    x = _check_images(x)
    batch_size = _validate.number("batch_size", batch_size, min=1, integer=True)
    key = jax.random.key(0) if key is None else _validate.prng_key("key", key)
    if timesteps is not None:
        timesteps = _validate.number("timesteps", timesteps, min=1, integer=True)
    owners = spike_layer_synapses(model)
    batch_size = min(batch_size, len(x))

    @jax.jit
    def moments(variables, xb, weight, k):
        _, stats = model.simulate(variables, xb, key=k, timesteps=timesteps)
        return {s: _batch_moments(stats["potential"][s], weight) for s in owners}

    acc: dict[str, Any] = {s: None for s in owners}
    for b, start in enumerate(range(0, len(x), batch_size)):
        xb = x[start:start + batch_size]
        weight = np.ones(batch_size, np.float32)
        if len(xb) < batch_size:
            weight[len(xb):] = 0.0
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - len(xb), axis=0)])
        out = jax.device_get(moments(variables, jnp.asarray(xb), jnp.asarray(weight), jax.random.fold_in(key, b)))
        for s, (n, m, sc) in out.items():
            acc[s] = _merge_moments(acc[s], (float(n), np.asarray(m, np.float64), np.asarray(sc, np.float64)))
    result = {}
    for s, (n, _, scatter) in acc.items():
        result[owners[s]] = (int(round(n)), scatter / max(n - 1.0, 1.0))
    return result


def explained_variance_ratio(covariance: Any) -> np.ndarray:
    """Fraction of the total variance along each principal component, largest first.

    Args:
      covariance: ``(C, C)`` symmetric covariance matrix.

    Returns:
      ``(C,)`` float64, non-negative, summing to 1 (all zeros for a zero matrix).
    """
    cov = np.asarray(covariance, np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"covariance must be a non-empty square matrix, got shape {cov.shape}")
    eig = np.clip(np.linalg.eigvalsh((cov + cov.T) / 2.0)[::-1], 0.0, None)
    total = eig.sum()
    return eig / total if total > 0 else np.zeros_like(eig)


def width_for_variance(ratio: Any, variance: float) -> int:
    """The fewest leading components whose explained-variance ratios sum to ``variance`` or more.

    ``variance=1.0`` keeps every component (the full width); a layer without any
    variance (constant potentials) keeps one channel, the smallest layer there is.
    """
    variance = _check_variance(variance)
    ratio = np.asarray(ratio, np.float64)
    if ratio.ndim != 1 or ratio.size == 0:
        raise ValueError(f"ratio must be a non-empty 1-D array, got shape {ratio.shape}")
    if variance == 1.0:
        return int(ratio.size)
    if ratio.sum() <= 0:
        return 1
    cum = np.cumsum(ratio) / ratio.sum()
    # a relative tolerance so that e.g. r equal components reach the threshold at exactly r
    return int(min(np.searchsorted(cum, variance - 1e-12, side="left") + 1, ratio.size))


def pca_width(potential: Any, *, variance: float = 0.999) -> int:
    """PCA width of one layer from its potentials ``(N, ..., C)`` (channels last), in memory.

    The rows of the ``(N * prod(...), C)`` matrix are the samples; see the module
    docstring.  :func:`pca_widths` does the same for every layer of a model, in batches.

    Example:
      >>> import numpy as np
      >>> z = np.random.default_rng(0).normal(size=(500, 3)) @ np.random.default_rng(1).normal(size=(3, 16))
      >>> pca_width(z, variance=0.9999)
      3
    """
    variance = _check_variance(variance)
    p = np.asarray(potential, np.float64)
    if p.ndim < 2:
        raise ValueError(f"potential must be (N, ..., C) with a channel axis last, got shape {p.shape}")
    rows = p.reshape(-1, p.shape[-1])
    if rows.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {rows.shape[0]}")
    return width_for_variance(explained_variance_ratio(np.cov(rows, rowvar=False).reshape(p.shape[-1], -1)),
                              variance)


def pca_widths(model: SpikingModel, variables: PyTree, x: Any, *, variance: float = 0.999,
               batch_size: int = 256, key: jax.Array | None = None, timesteps: int | None = None,
               min_width: int = 1) -> dict[str, int]:
    """Spatial pruning: each hidden synapse's width from a PCA of its spike layer's potentials.

    Args:
      model: the trained spiking model.
      variables: its variables.
      x: images ``(N, H, W, C)`` in [0, 1] (training or held-out data); a dense
        layer of ``C`` units needs ``N > C``.
      variance: fraction of the variance to keep, in (0, 1]; 1.0 keeps every
        channel.  Default 0.999 (Garg et al.'s threshold; see the module docstring).
      batch_size: examples per forward pass.
      key: PRNG key for stochastic encoders.
      timesteps: simulate with this ``T`` (default ``model.timesteps``).
      min_width: lower bound on every width, ``>= 1``.

    Returns:
      ``{synapse_name: width}`` for every convolution/dense layer that feeds a spike
      layer (the argument ``create(..., widths=...)`` takes), each ``<=`` the current width.

    Raises:
      ValueError: a dense layer would be analysed with no more samples than
        features (its PCA would be rank-limited by the data, not the network).

    Example:
      >>> import jax
      >>> from jaxrob import snn
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=4, hidden_sizes=(16, 16))
      >>> w = pca_widths(net, net.variables, jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)))
      >>> sorted(w), all(1 <= v <= 16 for v in w.values())
      (['fc1', 'fc2'], True)
    """
    variance = _check_variance(variance)
    min_width = _validate.number("min_width", min_width, min=1, integer=True)
    x = _check_images(x)
    covs = potential_covariances(model, variables, x, batch_size=batch_size, key=key, timesteps=timesteps)
    return widths_from_covariances(covs, variance=variance, min_width=min_width)


def widths_from_covariances(covariances: Mapping[str, tuple[int, Any]], *, variance: float = 0.999,
                            min_width: int = 1) -> dict[str, int]:
    """:func:`pca_widths` from precomputed :func:`potential_covariances` (to try several thresholds).

    Raises:
      ValueError: a layer's covariance was estimated from no more samples than features.
    """
    variance = _check_variance(variance)
    min_width = _validate.number("min_width", min_width, min=1, integer=True)
    out = {}
    for syn, (samples, cov) in covariances.items():
        c = int(np.shape(cov)[0])
        if samples <= c:
            raise ValueError(f"the PCA of layer {syn!r} ({c} features) needs more than {c} samples "
                             f"(examples x spatial positions), got {samples}; pass more images")
        out[syn] = max(min(width_for_variance(explained_variance_ratio(cov), variance), c), min(min_width, c))
    return out


# --------------------------------------------------------------------------- the compressed network


def layer_widths(model: SpikingModel) -> dict[str, int]:
    """Current output width of every hidden convolution/dense layer (``{name: width}``)."""
    _check_model(model)
    out = {}
    for name, info in model.layer_info.items():
        if info["kind"] in ("conv", "dense"):
            out[name] = int(model.variables["params"][name]["kernel"].shape[-1])
    return out


def compression_report(model: SpikingModel, compressed: SpikingModel) -> dict[str, Any]:
    """Parameters and MACs (per timestep) before and after, and their ratios.

    Returns:
      ``{"params_before", "params_after", "compression" (params ratio), "macs_before",
      "macs_after", "mac_reduction", "widths_before", "widths_after"}``.
    """
    _check_model(model)
    _check_model(compressed)
    macs = lambda m: int(sum(i["macs"] for i in m.layer_info.values() if i["kind"] != "spike"))  # noqa: E731
    pb, pa = count_params(model.variables["params"]), count_params(compressed.variables["params"])
    mb, ma = macs(model), macs(compressed)
    return {"params_before": pb, "params_after": pa, "compression": pb / pa,
            "macs_before": mb, "macs_after": ma, "mac_reduction": mb / ma,
            "widths_before": layer_widths(model), "widths_after": layer_widths(compressed)}


def compress(model: SpikingModel, widths: Mapping[str, int], *, key: jax.Array) -> tuple[SpikingModel, dict]:
    """The spatially pruned network: the same architecture with the given widths, freshly initialised.

    The paper's spatial pruning designs a narrower architecture that is then
    trained (hybrid ANN -> SNN training) from scratch; PCA yields a number of
    channels, not a choice of channels, so no weights are carried over.

    Args:
      model: the unpruned spiking model (or its ANN twin); its architecture,
        encoder, neuron, timesteps, normalisation and dropout are kept.
      widths: ``{synapse_name: width}`` (from :func:`pca_widths`); layers not named
        keep their width.  A width may not exceed the current one.
      key: PRNG key of the new initialisation.

    Returns:
      ``(compressed_model, report)`` with ``report`` from :func:`compression_report`.

    Example:
      >>> import jax
      >>> from jaxrob import snn
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=4)
      >>> small, rep = compress(net, {"fc1": 32, "fc2": 16}, key=jax.random.key(1))
      >>> small.variables["params"]["fc2"]["kernel"].shape, round(rep["compression"], 1)
      ((32, 16), 10.4)
    """
    _check_model(model)
    key = _validate.prng_key("key", key)
    if not isinstance(widths, Mapping):
        raise TypeError(f"widths must be a mapping {{synapse_name: width}}, got {type(widths).__name__}")
    current = layer_widths(model)
    unknown = sorted(set(widths) - set(current))
    if unknown:
        raise ValueError(f"widths names {unknown}, which are not hidden convolution/dense layers of this "
                         f"{model.arch}; its hidden synapses are {sorted(current)}")
    full = dict(current)
    for name, w in widths.items():
        w = _validate.number(f"widths[{name!r}]", w, min=1, integer=True)
        if w > current[name]:
            raise ValueError(f"widths[{name!r}] = {w} exceeds the layer's current width {current[name]}; "
                             "spatial pruning only narrows layers")
        full[name] = w
    net = model._merge(model.variables)
    kwargs = dict(key=key, timesteps=model.timesteps or net.timesteps, encoder=net.encoder, neuron=net.neuron,
                  spiking=model.spiking, num_classes=model.num_classes, input_shape=model.input_shape,
                  mean=net.mean, std=net.std, dropout=net.dropout_rate, widths=full,
                  stepwise=getattr(model, "stepwise", False))
    if model.arch == "mlp":
        kwargs["hidden_sizes"] = tuple(op[2] for op in net.ops if op[0] == "dense")
    compressed = create(model.arch, **kwargs)
    return compressed, compression_report(model, compressed)


# --------------------------------------------------------------------------- temporal pruning


def _check_schedule(schedule: Any, start: int) -> tuple[tuple[int, int], ...]:
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or not schedule:
        raise ValueError("schedule must be a non-empty sequence of (timesteps, epochs) pairs with decreasing "
                         f"timesteps, e.g. ((20, 2), (10, 2), (5, 2)); got {schedule!r}")
    out = []
    for i, stage in enumerate(schedule):
        if not isinstance(stage, Sequence) or len(stage) != 2:
            raise ValueError(f"schedule[{i}] must be a (timesteps, epochs) pair, got {stage!r}")
        t = _validate.number(f"schedule[{i}] timesteps", stage[0], min=1, integer=True)
        e = _validate.number(f"schedule[{i}] epochs", stage[1], min=1, integer=True)
        out.append((t, e))
    ts = [t for t, _ in out]
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"schedule timesteps must strictly decrease from stage to stage, got {ts}")
    if ts[0] > start:
        raise ValueError(f"the first stage's timesteps ({ts[0]}) exceed the model's {start}: temporal pruning "
                         "only reduces T")
    return tuple(out)


def _check_structure(model: SpikingModel, variables: PyTree) -> None:
    shapes = lambda tree: [np.shape(a) for a in jax.tree.leaves(tree)]  # noqa: E731
    if (jax.tree.structure(model.variables) != jax.tree.structure(variables)
            or shapes(model.variables) != shapes(variables)):
        raise ValueError("variables do not match the model's variables (structure or shapes differ); pass "
                         "variables of this very architecture (e.g. after compress(), train the compressed model)")


def temporal_prune(model: SpikingModel, variables: PyTree, train_data: _data.Dataset, *,
                   schedule: Sequence[tuple[int, int]], optimizer: Mapping[str, Any] | Any, batch_size: int,
                   key: jax.Array, eval_data: tuple[Any, Any] | None = None, loss: Any = None, seed: int = 0,
                   progress: bool = False, checkpoint_dir: Any = None, resume: bool = False,
                   eval_batch_size: int = 500, callback: Callable[[dict], None] | None = None
                   ) -> tuple[PyTree, list[dict[str, Any]]]:
    """Temporal pruning: train through stages of decreasing ``T``, each starting from the previous one.

    Stage ``i`` trains ``model.with_timesteps(T_i)`` (BPTT over ``T_i`` steps) for
    ``epochs_i`` epochs with :func:`jaxrob.train.fit`, from the variables the
    previous stage ended with (the first stage: ``variables``).  Weights, leaks
    and thresholds carry over unchanged in structure; only the simulation length
    shrinks.

    Args:
      model: the spiking model (its architecture; ``model.timesteps`` is the ``T`` it was trained at).
      variables: trained variables of ``model`` (same structure and shapes).
      train_data: a :class:`jaxrob.data.Dataset`.
      schedule: ``((T_1, epochs_1), (T_2, epochs_2), ...)`` with strictly decreasing
        ``T_i <= model.timesteps``.
      optimizer: :func:`jaxrob.train.make_optimizer` keyword arguments or an optax
        transformation (a fresh optimizer state at every stage).
      batch_size: training batch size.
      key: PRNG key; stage ``i`` uses ``fold_in(key, i)``.
      eval_data: optional ``(x, y)`` arrays; each stage's clean accuracy on them is logged.
      loss: a :class:`jaxrob.train.Loss` (default cross-entropy).
      seed: data-order seed (stage ``i`` uses ``seed + i``).
      progress: show ``fit``'s progress bars.
      checkpoint_dir: if given, stage ``i`` checkpoints to ``checkpoint_dir/stage{i}_T{T_i}``.
      resume: resume each stage from its checkpoints.
      eval_batch_size: examples per evaluation pass.
      callback: called with each stage's log entry when it ends.

    Returns:
      ``(variables, log)``: the variables after the last stage and one entry per
      stage ``{"stage", "timesteps", "epochs", "loss", "train_accuracy", "accuracy"
      (None without eval_data), "seconds"}`` -- loss and train accuracy are the
      means over the stage's last epoch.

    Example:
      >>> import jax
      >>> from jaxrob import data, snn
      >>> ds = data.load("mnist10k", split="train")
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=6, hidden_sizes=(32,))
      >>> v, log = temporal_prune(net, net.variables, ds, schedule=((4, 1), (2, 1)),
      ...                         optimizer={"name": "adam", "learning_rate": 1e-3}, batch_size=500,
      ...                         key=jax.random.key(1))
      >>> [e["timesteps"] for e in log]
      [4, 2]
    """
    from jaxrob import train  # late import: train imports models, which snn builds on

    _check_model(model)
    if not model.spiking:
        raise ValueError("temporal pruning needs the spiking model, not its ANN twin")
    stages = _check_schedule(schedule, model.timesteps)
    _check_structure(model, variables)
    key = _validate.prng_key("key", key)
    seed = _validate.number("seed", seed, min=0, integer=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if eval_data is not None:
        if not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2:
            raise TypeError("eval_data must be an (x, y) pair of arrays or None")
        x_eval, y_eval = np.asarray(eval_data[0]), np.asarray(eval_data[1])
        if x_eval.ndim != 4 or len(x_eval) != len(y_eval) or len(y_eval) == 0:
            raise ValueError(f"eval_data must be images (N, H, W, C) and labels (N,), got {x_eval.shape} and "
                             f"{y_eval.shape}")
    log: list[dict[str, Any]] = []
    for i, (T, epochs) in enumerate(stages):
        stage_model = dataclasses.replace(model.with_timesteps(T), variables=variables)
        ckpt = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir) / f"stage{i}_T{T}"
        t0 = time.perf_counter()
        state, hist = train.fit(stage_model, train_data, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                                key=jax.random.fold_in(key, i), loss=loss, seed=seed + i, progress=progress,
                                checkpoint_dir=ckpt, resume=resume,
                                config={"temporal_prune_stage": i, "timesteps": T})
        variables = state.variables()
        entry = {"stage": i, "timesteps": T, "epochs": epochs, "loss": float(hist[-1]["loss"]),
                 "train_accuracy": float(hist[-1]["accuracy"]), "accuracy": None}
        if eval_data is not None:
            entry["accuracy"] = train.evaluate(stage_model.apply_fn, variables, x_eval, y_eval,
                                               batch_size=eval_batch_size)
        entry["seconds"] = time.perf_counter() - t0
        log.append(entry)
        if callback is not None:
            callback(entry)
    return variables, log


# --------------------------------------------------------------------------- quantization


def quantize_weights(variables: PyTree, *, bits: int, per_channel: bool = False) -> PyTree:
    """Post-training uniform weight quantization of an SNN: every ``kernel`` leaf, symmetric.

    Each convolution/dense kernel gets one scale (``per_channel=False``: the
    layer's abs-max over ``2^(bits-1) - 1`` codes, so at most ``2^bits - 1``
    distinct values per layer) or one per output channel, through
    :func:`jaxrob.quant.quantize_params` with :func:`jaxrob.quant.fake_quant`.
    Biases, leaks and thresholds (``batch_stats``, or ``params`` leaves named
    ``leak``/``threshold``) are returned unchanged, in full precision.

    Args:
      variables: a spiking model's variables (``{"params", "batch_stats"}``).
      bits: bits per weight, 2..16 (1 bit would leave only {0} in a symmetric
        narrow-range code; use :func:`jaxrob.quant.binary` for binary weights).
      per_channel: one scale per output channel instead of per layer.

    Returns:
      Variables of the same structure with quantized (dequantized-float) kernels.

    Example:
      >>> import jax, numpy as np
      >>> from jaxrob import snn
      >>> net = snn.create("mlp", key=jax.random.key(0), timesteps=4)
      >>> q = quantize_weights(net.variables, bits=3)
      >>> len(np.unique(q["params"]["fc1"]["kernel"])) <= 2 ** 3
      True
    """
    bits = _validate.number("bits", bits, min=2, max=16, integer=True)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {per_channel!r}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a spiking model's variables, a dict with a 'params' entry")
    return {**variables, "params": _quantize_kernels(variables["params"], bits, per_channel)}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_kernels(params: PyTree, bits: int, per_channel: bool) -> PyTree:
    """One compiled pass over all kernels (eagerly, every leaf shape would compile its own ops)."""
    from jaxrob.quant import fake_quant, quantize_params

    fn = functools.partial(fake_quant, bits=bits, axis=-1 if per_channel else None)
    return quantize_params(params, fn)

