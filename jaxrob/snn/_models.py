"""Spiking networks as pure functions over time, and their ANN twins.

A spiking network here is a stack of *synapses* (convolution, dense), *pools*
and *spike layers* (a layer of :class:`~jaxrob.snn.LIF` neurons), closed by a
non-spiking *readout*.  One forward pass simulates ``T`` timesteps; at each step

    the encoder emits the input current  ->  synapse  ->  [pool]  ->  spike layer  ->  ...  ->  readout

and the logits are the readout's accumulated membrane potential divided by ``T``
(``(1/T) sum_t (W o_L(t) + b)``, the readout of Rathi et al. and DCT-SNN).
Because every architecture is feed-forward, the default forward pass runs layer
by layer: each synapse or pool on all ``T`` steps at once (time folded into the
batch), each spike layer's neurons in ``lax.scan`` over time.  ``stepwise=True``
(:func:`create`) runs the whole network inside one ``lax.scan`` instead: the same
spikes, slower (convolutions inside a loop body), but with memory independent of
``T`` in evaluation.
Training is backpropagation through time: :func:`jaxrob.train.fit` and every
attack work unchanged, because :func:`create` returns the usual
:class:`~jaxrob.models.Model` contract (``apply_fn(variables, x)``) -- the
surrogate gradient of the spike function makes it differentiable.

A spike layer emits ``V_th * o_t`` (the binary spike times its layer's
threshold).  That is the same as folding ``V_th`` into the next layer's weights
(so every synaptic operation is still an accumulate), makes the spike rate
approximate ``relu(a)`` of the ANN twin (rate ``~ a / V_th``), and is what lets
ANN-to-SNN conversion copy the weights unchanged and only set thresholds
(:func:`convert`).  With ``V_th = 1`` it is the plain binary spike.

Every architecture has an ANN twin (``spiking=False``): the same module and the
same ``variables``, with each spike layer replaced by a ReLU and a single pass
instead of ``T`` steps.  It is the matching ANN for comparisons and the network
trained first in hybrid training (:func:`convert`, then surrogate-gradient
fine-tuning).

Per-layer leak and threshold live in ``variables``: under ``"params"`` when the
neuron says ``learn_leak``/``learn_threshold`` (DIET-SNN-style learning),
otherwise under ``"batch_stats"`` as constants that conversion sets and training
carries through unchanged.

References:
  Garg, Chowdhury, Roy, "DCT-SNN: Using DCT to distribute spatial information over
  time for low-latency spiking neural networks", ICCV 2021, arXiv:2010.01795.
  Rathi, Srinivasan, Panda, Roy, "Enabling deep spiking neural networks with hybrid
  conversion and spike timing dependent backpropagation", ICLR 2020, arXiv:2005.01807.
  Rathi & Roy, "DIET-SNN: A low-latency spiking neural network with direct input
  encoding and leakage and threshold optimization", IEEE TNNLS 2021, arXiv:2008.03658.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrob import _validate
from jaxrob.models import _layers as L
from jaxrob.models import _registry as R
from jaxrob.models._base import Model, PyTree, nnx_merger
from jaxrob.snn._neurons import ALIF, LIF, simulate

# --------------------------------------------------------------------------- architectures
# An architecture is a tuple of ops: ("conv", name, out_channels), ("dense", name, out),
# ("maxpool",), ("avgpool",), ("flatten",), ("spike", name), ("dropout",), ("readout", name).
# Synapse names match jaxrob.models where a twin exists there (cnn_small: conv1, conv2, fc1, fc2).


def _mlp_arch(hidden_sizes: Sequence[int]):
    ops: list[tuple] = [("flatten",)]
    for i, h in enumerate(hidden_sizes):
        ops += [("dense", f"fc{i + 1}", h), ("spike", f"lif{i + 1}")]
    return tuple(ops + [("readout", f"fc{len(hidden_sizes) + 1}")])


_CNN_SMALL = (("conv", "conv1", 32), ("maxpool",), ("spike", "lif1"),
              ("conv", "conv2", 64), ("maxpool",), ("spike", "lif2"),
              ("flatten",), ("dense", "fc1", 256), ("spike", "lif3"), ("readout", "fc2"))

# VGG9 of Rathi et al. / DCT-SNN (CIFAR-10): 64-64-P-128-128-P-256-256-256-P-1024-1024-10,
# average pools on spikes, dropout before each hidden dense layer's neurons.
_VGG9 = (("conv", "conv1", 64), ("spike", "lif1"), ("dropout",), ("conv", "conv2", 64), ("spike", "lif2"),
         ("avgpool",),
         ("conv", "conv3", 128), ("spike", "lif3"), ("dropout",), ("conv", "conv4", 128), ("spike", "lif4"),
         ("avgpool",),
         ("conv", "conv5", 256), ("spike", "lif5"), ("dropout",), ("conv", "conv6", 256), ("spike", "lif6"),
         ("dropout",), ("conv", "conv7", 256), ("spike", "lif7"), ("avgpool",),
         ("flatten",), ("dense", "fc1", 1024), ("spike", "lif8"), ("dropout",),
         ("dense", "fc2", 1024), ("spike", "lif9"), ("dropout",), ("readout", "fc3"))

ARCHITECTURES = {
    "mlp": (R.MNIST_SHAPE, "784-256-256-10 spiking MLP (kwarg hidden_sizes)"),
    "cnn_small": (R.MNIST_SHAPE, "conv32-maxpool-LIF-conv64-maxpool-LIF-fc256-LIF-fc10 (jaxrob cnn_small's twin)"),
    "vgg9": (R.CIFAR_SHAPE, "VGG9 of DCT-SNN / hybrid SNN training: 7 conv + 2 fc, avg pools, no BN"),
}


class NeuronConst(nnx.BatchStat):
    """A per-layer neuron constant (leak or threshold) that is not trained; lives in ``batch_stats``."""


def _avg_pool(x: jax.Array, size: int = 2) -> jax.Array:
    n, h, w, c = x.shape
    h2, w2 = h // size, w // size
    return jnp.mean(x[:, :h2 * size, :w2 * size, :].reshape(n, h2, size, w2, size, c), axis=(2, 4))


#: Smallest threshold a learned ``V_th`` is projected to (the spike function divides by it).
MIN_THRESHOLD = 1e-3


def _project(x: jax.Array, lo: float, hi: float | None = None) -> jax.Array:
    """``clip(x, lo, hi)`` in the forward pass, identity gradient (straight-through).

    A learned value that an update pushed out of range acts as the nearest valid one and
    still gets gradients that can bring it back (a plain clip would freeze it there).
    """
    # Forward exactly clip(x) (x - x is exactly 0), gradient exactly 1.
    return jax.lax.stop_gradient(jnp.clip(x, lo, hi)) + (x - jax.lax.stop_gradient(x))


class SpikeLayer(nnx.Module):
    """Holds one layer's leak and threshold (as ``nnx.Param`` when learned, else :class:`NeuronConst`).

    :meth:`values` is what the neurons use: learned values are projected into their valid
    range, leak into ``[0, 1]`` (above 1 the membrane potential grows without input) and
    threshold into ``[MIN_THRESHOLD, inf)``, with straight-through gradients.  The stored
    parameter is left as the optimizer made it (rather than clamped after each step) and
    the forward pass projects it, so the model stays a pure function of its parameters and
    works with any optimizer.  Constants are used as they are (validated at construction).
    """

    def __init__(self, neuron: LIF | ALIF):
        self.learn_leak, self.learn_threshold = bool(neuron.learn_leak), bool(neuron.learn_threshold)
        leak_cls = nnx.Param if neuron.learn_leak else NeuronConst
        thr_cls = nnx.Param if neuron.learn_threshold else NeuronConst
        self.leak = leak_cls(jnp.asarray(neuron.leak, jnp.float32))
        self.threshold = thr_cls(jnp.asarray(neuron.threshold, jnp.float32))

    def values(self) -> tuple[jax.Array, jax.Array]:
        """``(leak, threshold)`` as the neurons use them."""
        leak, vth = self.leak[...], self.threshold[...]
        if self.learn_leak:
            leak = _project(leak, 0.0, 1.0)
        if self.learn_threshold:
            vth = _project(vth, MIN_THRESHOLD)
        return leak, vth


class SpikingNet(nnx.Module):
    """A spiking network (or, with ``spiking=False``, its ANN twin) built from an op list.

    Call it like any jaxrob classifier: ``net(x, train=False, key=None)`` with ``x``
    NHWC in [0, 1]; additionally ``timesteps=`` overrides ``T`` and ``record=True``
    returns ``(logits, stats)`` (see :func:`spike_stats`).
    """

    def __init__(self, ops, *, input_shape, num_classes, mean, std, neuron, encoder, timesteps: int,
                 spiking: bool = True, dropout: float = 0.0, stepwise: bool = False, rngs):
        self.ops = tuple(ops)
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.neuron, self.encoder = neuron, encoder
        self.timesteps = int(timesteps)
        self.spiking = bool(spiking)
        self.dropout_rate = float(dropout)
        self.stepwise = bool(stepwise)
        # The network is sized from the encoder's current, not the image: DCT's "tile" layout with
        # overlapping blocks (stride < block) feeds the first synapse a larger image.
        shape = tuple(encoder.output_shape((1,) + self.input_shape))[1:]
        if shape != self.input_shape and not self.spiking:
            raise ValueError(f"the ANN twin takes the image itself, but this encoder ({encoder!r}) turns "
                             f"{self.input_shape} images into {shape} currents, so the spiking network's "
                             f"layers do not fit the image; use DCT(layout='fold') or stride=block for "
                             f"a network with an ANN twin")
        shapes = {}
        for op in self.ops:
            kind = op[0]
            if kind == "conv":
                setattr(self, op[1], nnx.Conv(shape[-1], op[2], (3, 3), padding="SAME", kernel_init=L.relu_init,
                                              bias_init=L.zeros_init, rngs=rngs))
                shapes[op[1]] = shape
                shape = shape[:-1] + (op[2],)
            elif kind in ("dense", "readout"):
                out = op[2] if kind == "dense" else self.num_classes
                init = L.relu_init if kind == "dense" else L.head_init
                setattr(self, op[1], L.linear(shape[-1], out, kernel_init=init, dtype=None, rngs=rngs))
                shapes[op[1]] = shape
                shape = (out,)
            elif kind in ("maxpool", "avgpool"):
                if shape[0] < 2 or shape[1] < 2:
                    raise ValueError(f"input_shape {input_shape} is too small for this architecture's 2x2 pools")
                shape = (shape[0] // 2, shape[1] // 2, shape[2])
            elif kind == "flatten":
                shape = (math.prod(shape),)
            elif kind == "spike":
                setattr(self, op[1], SpikeLayer(neuron))
                shapes[op[1]] = shape
        self._shapes = shapes  # per-example input shape of every named layer (a static attribute)

    # ------------------------------------------------------------------ call
    def __call__(self, x, *, train: bool = False, key: jax.Array | None = None,
                 timesteps: int | None = None, record: bool = False):
        x = jnp.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"spiking model expects a batch of NHWC images of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"inputs must be float images in [0, 1], got dtype {x.dtype}")
        x = x.astype(jnp.float32)
        mean, std = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)
        xn = (x - mean) / std
        if key is None:
            key = jax.random.key(0)  # eval-mode encoders (Poisson) are deterministic by default
        k_enc, k_drop = jax.random.split(key)
        if not self.spiking:
            return self._ann(xn, train=train, key=k_drop, record=record)
        T = self.timesteps if timesteps is None else int(timesteps)
        return self._snn(x, xn, T, train=train, k_enc=k_enc, k_drop=k_drop, record=record)

    def _dropout(self, h, idx, train, key, time_axis: bool = False):
        """Inverted dropout with the mask of op ``idx``; ``time_axis``: ``h`` is ``(T, N, ...)`` and the
        mask (drawn for ``(N, ...)``, as in the step-wise scan) is the same at every step."""
        if not train or self.dropout_rate == 0.0:
            return h
        shape = h.shape[1:] if time_axis else h.shape
        keep = jax.random.bernoulli(jax.random.fold_in(key, idx), 1.0 - self.dropout_rate, shape)
        return jnp.where(keep, h / (1.0 - self.dropout_rate), 0.0)

    def _ann(self, xn, *, train, key, record):
        h, pre = xn, {}
        for idx, op in enumerate(self.ops):
            kind = op[0]
            if kind in ("conv", "dense", "readout"):
                h = getattr(self, op[1])(h)
            elif kind == "maxpool":
                h = L.max_pool(h)
            elif kind == "avgpool":
                h = _avg_pool(h)
            elif kind == "flatten":
                h = h.reshape(h.shape[0], -1)
            elif kind == "dropout":
                h = self._dropout(h, idx, train, key)
            elif kind == "spike":
                pre[op[1]] = h
                h = jax.nn.relu(h)
        return (h, {"preactivations": pre}) if record else h

    def _snn(self, x, xn, T, *, train, k_enc, k_drop, record):
        if self.stepwise:
            return self._snn_stepwise(x, xn, T, train=train, k_enc=k_enc, k_drop=k_drop, record=record)
        return self._snn_layerwise(x, xn, T, train=train, k_enc=k_enc, k_drop=k_drop, record=record)

    def _snn_layerwise(self, x, xn, T, *, train, k_enc, k_drop, record):
        """One layer at a time over all ``T`` steps (the default; see :func:`create`'s ``stepwise``).

        Every architecture here is feed-forward, so layer k at step t needs only layer k-1
        at step t (and layer k's own state).  Synapses and pools see all ``T`` steps at once
        (time folded into the batch: ``(T * N, ...)``) and only the neurons run in
        ``lax.scan`` (:func:`~jaxrob.snn.simulate`).  Same spikes as :meth:`_snn_stepwise`;
        logits and gradients equal up to float summation order.
        """
        n = x.shape[0]
        enc = self.encoder
        h = enc.encode(xn if enc.normalized else x, T, key=k_enc)             # (T, N, ...)

        def fold(f, a):                                                        # f over (T * N, ...)
            out = f(a.reshape((T * n,) + a.shape[2:]))
            return out.reshape((T, n) + out.shape[1:])

        rec = {"spikes": {}, "potential": {}, "nonzero": {}} if record else None
        acc = None
        for idx, op in enumerate(self.ops):
            kind = op[0]
            if kind in ("conv", "dense", "readout"):
                if record:
                    rec["nonzero"][op[1]] = (h != 0).astype(jnp.float32).sum(0)
                h = fold(getattr(self, op[1]), h)
                if kind == "readout":
                    acc = h.sum(0)
            elif kind == "maxpool":
                h = fold(L.max_pool, h)
            elif kind == "avgpool":
                h = fold(_avg_pool, h)
            elif kind == "flatten":
                h = h.reshape(T, n, -1)
            elif kind == "dropout":   # one mask per forward pass (shape (N, ...)), held over all timesteps
                h = self._dropout(h, idx, train, k_drop, time_axis=True)
            elif kind == "spike":
                leak, vth = getattr(self, op[1]).values()
                _, o, v = simulate(self.neuron, h, leak=leak, threshold=vth)
                if record:
                    rec["spikes"][op[1]] = o.sum(0)
                    rec["potential"][op[1]] = v.sum(0)
                h = o * vth
        logits = acc / T
        if not record:
            return logits
        return logits, self._stats(rec, T, n)

    def _snn_stepwise(self, x, xn, T, *, train, k_enc, k_drop, record):
        """The whole network inside one ``lax.scan`` over time (``stepwise=True``): O(1) memory in ``T``
        without gradients, but convolutions inside a loop body (slow on XLA:CPU, jax-ml/jax#12868)."""
        n = x.shape[0]
        enc = self.encoder
        enc_state = enc.init(xn if enc.normalized else x, key=k_enc)
        spike_names = [op[1] for op in self.ops if op[0] == "spike"]
        syn_names = [op[1] for op in self.ops if op[0] in ("conv", "dense", "readout")]
        states = {s: self.neuron.init((n,) + self._shapes[s]) for s in spike_names}
        acc = jnp.zeros((n, self.num_classes), jnp.float32)
        rec0 = None
        if record:
            rec0 = {"spikes": {s: jnp.zeros((n,) + self._shapes[s]) for s in spike_names},
                    "potential": {s: jnp.zeros((n,) + self._shapes[s]) for s in spike_names},
                    "nonzero": {s: jnp.zeros((n,) + self._shapes[s]) for s in syn_names}}

        def body(carry, t):
            enc_state, states, acc, rec = carry
            enc_state, h = enc.step(enc_state, t)
            new_states = {}
            if record:
                rec = jax.tree.map(lambda a: a, rec)
            for idx, op in enumerate(self.ops):
                kind = op[0]
                if kind in ("conv", "dense", "readout"):
                    if record:
                        rec["nonzero"][op[1]] = rec["nonzero"][op[1]] + (h != 0)
                    z = getattr(self, op[1])(h)
                    if kind == "readout":
                        acc = acc + z
                    h = z
                elif kind == "maxpool":
                    h = L.max_pool(h)
                elif kind == "avgpool":
                    h = _avg_pool(h)
                elif kind == "flatten":
                    h = h.reshape(n, -1)
                elif kind == "dropout":
                    h = self._dropout(h, idx, train, k_drop)
                elif kind == "spike":
                    leak, vth = getattr(self, op[1]).values()
                    st, o = self.neuron.step(states[op[1]], h, leak=leak, threshold=vth)
                    new_states[op[1]] = st
                    if record:
                        rec["spikes"][op[1]] = rec["spikes"][op[1]] + o
                        rec["potential"][op[1]] = rec["potential"][op[1]] + st.v
                    h = o * vth
            return (enc_state, new_states, acc, rec), None

        (_, _, acc, rec), _ = jax.lax.scan(body, (enc_state, states, acc, rec0), jnp.arange(T, dtype=jnp.int32))
        logits = acc / T
        if not record:
            return logits
        return logits, self._stats(rec, T, n)

    # ------------------------------------------------------------------ statistics
    def _fanout(self, name):
        """Per-input-element fan-out of synapse ``name``: the outputs each input element feeds."""
        layer = getattr(self, name)
        shape = (1,) + self._shapes[name]
        if isinstance(layer, nnx.Conv):
            ones = jnp.ones(layer.kernel.shape[:2] + (1, 1), jnp.float32)
            conv1 = lambda z: jax.lax.conv_general_dilated(  # noqa: E731
                z, ones, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            single = jax.grad(lambda z: conv1(z).sum())(jnp.zeros(shape[:-1] + (1,), jnp.float32))
            return jnp.broadcast_to(single * layer.kernel.shape[-1], shape)[0]
        return jnp.full(shape[1:], float(layer.kernel.shape[-1]), jnp.float32)

    def _macs(self, name):
        layer = getattr(self, name)
        shape = self._shapes[name]
        if isinstance(layer, nnx.Conv):
            kh, kw, cin, cout = layer.kernel.shape
            return shape[0] * shape[1] * kh * kw * cin * cout
        return int(math.prod(layer.kernel.shape))

    def _stats(self, rec, T, n):
        out = {"timesteps": jnp.asarray(T, jnp.int32), "spikes": {}, "rate": {}, "potential": {}, "synops": {}}
        for op in self.ops:
            if op[0] == "spike":
                count = rec["spikes"][op[1]].reshape(n, -1).sum(-1)
                out["spikes"][op[1]] = count
                out["rate"][op[1]] = count / (math.prod(self._shapes[op[1]]) * T)
                out["potential"][op[1]] = rec["potential"][op[1]] / T
            elif op[0] in ("conv", "dense", "readout"):
                nz = rec["nonzero"][op[1]]
                out["synops"][op[1]] = (nz * self._fanout(op[1])).reshape(n, -1).sum(-1)
        return out

    def layer_info(self) -> dict[str, dict[str, Any]]:
        """Static per-layer facts: kind, neurons (spike layers), MACs per step and input kind (synapses)."""
        first_syn = next(op[1] for op in self.ops if op[0] in ("conv", "dense", "readout"))
        from jaxrob.snn._encoders import Direct

        # Only direct encoding feeds the first layer analog values; the others emit spikes (0/1 or +-1).
        analog_first = isinstance(self.encoder, Direct)
        info = {}
        for op in self.ops:
            if op[0] == "spike":
                info[op[1]] = {"kind": "spike", "neurons": math.prod(self._shapes[op[1]]),
                               "shape": self._shapes[op[1]]}
            elif op[0] in ("conv", "dense", "readout"):
                info[op[1]] = {"kind": op[0], "macs": self._macs(op[1]), "input_shape": self._shapes[op[1]],
                               "analog_input": op[1] == first_syn and analog_first}
        return info


# --------------------------------------------------------------------------- the Model wrapper


@dataclasses.dataclass(frozen=True)
class SpikingModel(Model):
    """A :class:`~jaxrob.models.Model` for a spiking network (or its ANN twin).

    Its ``apply_fn(variables, x, *, key=None)`` takes an optional typed key for the
    encoder's randomness (Poisson spike trains): without one a fixed key is used, so
    evaluation is deterministic; with one, each key draws a new encoding, which is what
    ``jaxrob.attacks.pgd(..., randomized=True, eot_samples=k)`` passes.  Besides the
    :class:`~jaxrob.models.Model` fields it has:

    Attributes:
      simulate: ``simulate(variables, x, *, key=None, timesteps=None) -> (logits, stats)``:
        the same forward pass, also returning spike statistics (:func:`spike_stats`);
        in ANN mode ``stats = {"preactivations": {layer: array}}``.
      timesteps: ``T`` used by ``apply_fn`` (0 for the ANN twin).
      spiking: False for the ANN twin.
      arch: architecture name; ``neuron``, ``encoder``: as built.
      stepwise: True if the forward pass is one ``lax.scan`` over time of the whole
        network, False (default) if it runs layer by layer (see :func:`create`).
      layer_info: static per-layer facts ``{name: {"kind", "neurons" | "macs", ...}}``:
        spike layers' neuron counts; synapses' MACs per timestep (dense), input
        shape and whether their input is analog (the first layer under a non-spiking
        encoder) -- what :func:`jaxrob.snn.energy` needs besides the statistics.
    """

    simulate: Callable[..., Any] | None = None
    timesteps: int = 0
    spiking: bool = True
    arch: str = ""
    layer_info: dict = dataclasses.field(default_factory=dict)
    neuron: Any = None
    encoder: Any = None
    stepwise: bool = False
    _merge: Callable[[PyTree], nnx.Module] | None = None

    def with_timesteps(self, timesteps: int) -> "SpikingModel":
        """The same network with ``apply_fn`` running ``timesteps`` steps (temporal pruning, DCT truncation)."""
        timesteps = _validate.number("timesteps", timesteps, min=1, integer=True)
        if not self.spiking:
            raise ValueError("the ANN twin has no timesteps; call with_timesteps on the spiking model")
        return _wrap(self._merge, self.variables, name=self.name, input_shape=self.input_shape,
                     num_classes=self.num_classes, timesteps=timesteps, spiking=True, arch=self.arch,
                     neuron=self.neuron, encoder=self.encoder, stepwise=self.stepwise)

    def with_stepwise(self, stepwise: bool = True) -> "SpikingModel":
        """The same network (same ``variables``) with the other time loop: ``stepwise=True`` runs the
        whole network in one ``lax.scan`` over time (O(1) memory in ``T`` for evaluation), False layer
        by layer (faster, memory O(T)).  Both give the same logits, statistics and gradients up to
        float rounding; see :func:`create`."""
        if not isinstance(stepwise, (bool, np.bool_)):
            raise TypeError(f"stepwise must be True or False, got {stepwise!r}")
        return _rebuild(self, spiking=self.spiking, stepwise=bool(stepwise))


def _wrap(merge, variables, *, name, input_shape, num_classes, timesteps, spiking, arch, neuron, encoder,
          stepwise):
    T = timesteps if spiking else None

    def apply_fn(variables, x, *, key=None):
        # key=None: a fixed key, so a stochastic encoder (Poisson) is deterministic; a key draws a
        # fresh encoding (``randomized=True`` attacks and EOT call it so).
        return merge(variables)(x, train=False, key=key, timesteps=T)

    def train_apply(variables, x, *, key=None):
        logits = merge(variables)(x, train=True, key=key, timesteps=T)
        return logits, variables.get("batch_stats", {})

    def simulate(variables, x, *, key=None, timesteps=None):
        if timesteps is not None:
            timesteps = _validate.number("timesteps", timesteps, min=1, integer=True)
        return merge(variables)(x, train=False, key=key, record=True,
                                timesteps=(T if timesteps is None else timesteps) if spiking else None)

    return SpikingModel(apply_fn=apply_fn, train_apply=train_apply, variables=variables, name=name,
                        layer_info=merge(variables).layer_info(),
                        input_shape=tuple(input_shape), num_classes=int(num_classes), simulate=simulate,
                        timesteps=int(timesteps) if spiking else 0, spiking=spiking, arch=arch,
                        neuron=neuron, encoder=encoder, stepwise=bool(stepwise), _merge=merge)


def available() -> list[str]:
    """Architectures accepted by :func:`create`."""
    return sorted(ARCHITECTURES)


def create(name: str, *, key: jax.Array, timesteps: int = 25, encoder: Any = None,
           neuron: LIF | ALIF | None = None, spiking: bool = True, num_classes: int = 10,
           input_shape: Sequence[int] | None = None, mean=None, std=None, dropout: float = 0.0,
           hidden_sizes: Sequence[int] = (256, 256), widths: dict[str, int] | None = None,
           stepwise: bool = False) -> SpikingModel:
    """Builds a spiking network (or its ANN twin) as a :class:`SpikingModel`.

    Args:
      name: ``"mlp"``, ``"cnn_small"`` or ``"vgg9"`` (see ``ARCHITECTURES``).
      key: typed PRNG key for parameter initialisation.
      timesteps: ``T`` >= 1, the number of simulation steps of ``apply_fn``.
      encoder: input encoder (``jaxrob.snn.Direct()`` by default; ``PoissonRate``,
        ``Latency``, ``DCT``).
      neuron: the spiking neuron of every hidden layer (default ``LIF()``: leak 0.99,
        threshold 1, soft reset, piecewise-linear surrogate with gamma 0.3).
      spiking: False builds the ANN twin (ReLU instead of spikes, same variables).
      num_classes, input_shape, mean, std: as in :func:`jaxrob.models.create`.
      dropout: dropout rate of the architecture's dropout ops (vgg9); in the SNN the
        mask is drawn once per forward pass and held over all timesteps.
      hidden_sizes: hidden widths of ``mlp``.
      widths: ``{synapse_name: out_features}`` overriding the output width of hidden
        convolutions / dense layers (e.g. ``{"conv1": 12}``): the compressed
        architectures of spatial pruning (:func:`jaxrob.snn.pca_widths`).
      stepwise: how the ``T`` steps are run (the same numbers either way, up to float
        summation order: spike counts equal, logits and gradients to float tolerance).
        False (default), *layer-wise*: one layer at a time over all ``T`` steps, the
        synapses and pools on ``(T * N, ...)`` inputs (time folded into the batch) and
        only the neurons in ``lax.scan`` -- valid because every architecture is
        feed-forward; several times faster (about 3-4x for a ``cnn_small`` training step
        on a 2-core CPU, where XLA runs convolutions inside loop bodies slowly,
        jax-ml/jax#12868; larger kernels on accelerators), but every layer's
        ``(T, N, ...)`` activations are live at once, so memory grows with ``T`` also in
        evaluation.  True, *step-wise*: the whole network in one ``lax.scan`` over time;
        without gradients its memory does not depend on ``T`` (long evaluations, large
        ``T`` or batches); under BPTT both keep O(T) residuals.
        :meth:`SpikingModel.with_stepwise` switches an existing model.
      The network is sized from ``encoder.output_shape`` (DCT's ``"tile"`` layout with
      ``stride < block`` feeds the first layer a larger image); such a model has no ANN
      twin (``spiking=False`` raises ``ValueError``).

    Returns:
      A :class:`SpikingModel`; ``apply_fn(variables, x)`` are the logits after ``T`` steps.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrob import snn
      >>> net = snn.create("cnn_small", key=jax.random.key(0), timesteps=8)
      >>> net.apply_fn(net.variables, jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)
    """
    from jaxrob.snn._encoders import Direct, Encoder

    if not isinstance(name, str) or name not in ARCHITECTURES:
        close = difflib.get_close_matches(str(name), available(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown spiking architecture {name!r}{hint}; known: {', '.join(available())}")
    key = _validate.prng_key("key", key)
    timesteps = _validate.number("timesteps", timesteps, min=1, integer=True)
    num_classes = _validate.number("num_classes", num_classes, min=2, integer=True)
    dropout = float(_validate.number("dropout", dropout, min=0.0, max=1.0, max_inclusive=False))
    neuron = LIF() if neuron is None else neuron
    if not isinstance(neuron, (LIF, ALIF)):
        raise TypeError(f"neuron must be a jaxrob.snn LIF or ALIF, got {neuron!r}")
    encoder = Direct() if encoder is None else encoder
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be a jaxrob.snn encoder (Direct, PoissonRate, Latency, DCT), got {encoder!r}")
    default_shape, _ = ARCHITECTURES[name]
    input_shape = default_shape if input_shape is None else R._input_shape(input_shape)
    mean, std = R._normalisation(mean, std, input_shape[-1])
    if name == "mlp":
        if not isinstance(hidden_sizes, (tuple, list)) or not hidden_sizes:
            raise ValueError(f"hidden_sizes must be a non-empty tuple of positive ints, got {hidden_sizes!r}")
        ops = _mlp_arch(tuple(R._positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes)))
    else:
        ops = {"cnn_small": _CNN_SMALL, "vgg9": _VGG9}[name]
    if widths:
        if not isinstance(widths, dict):
            raise TypeError(f"widths must be a dict {{layer_name: width}}, got {widths!r}")
        hidden = {op[1] for op in ops if op[0] in ("conv", "dense")}
        unknown = sorted(set(widths) - hidden)
        if unknown:
            raise ValueError(f"widths names unknown hidden layers {unknown}; this architecture's hidden "
                             f"synapses are {sorted(hidden)}")
        ops = tuple((op[0], op[1], R._positive_int(f"widths[{op[1]!r}]", widths[op[1]]))
                    if op[0] in ("conv", "dense") and op[1] in widths else op for op in ops)
    if not isinstance(stepwise, (bool, np.bool_)):
        raise TypeError(f"stepwise must be True or False, got {stepwise!r}")
    if name == "cnn_small":
        L.check_shape_at_least("snn cnn_small", input_shape, 4, "two 2x2 max pools")
    if name == "vgg9":
        L.check_shape_at_least("snn vgg9", input_shape, 8, "three 2x2 average pools")
    module = SpikingNet(ops, input_shape=input_shape, num_classes=num_classes, mean=mean, std=std,
                        neuron=neuron, encoder=encoder, timesteps=timesteps, spiking=spiking, dropout=dropout,
                        stepwise=bool(stepwise), rngs=L.ParamKeys(key))
    merge, variables = nnx_merger(module, name=f"snn_{name}")
    return _wrap(merge, variables, name=f"snn_{name}" if spiking else f"ann_{name}", input_shape=input_shape,
                 num_classes=num_classes, timesteps=timesteps, spiking=spiking, arch=name, neuron=neuron,
                 encoder=encoder, stepwise=stepwise)


def twin(model: SpikingModel, *, spiking: bool | None = None) -> SpikingModel:
    """The other mode of the same network over the same ``variables``: SNN <-> ANN twin.

    ``spiking`` forces a mode (default: the opposite of ``model.spiking``).  The
    timesteps, neuron and encoder of ``model`` are kept for the spiking side.
    """
    if not isinstance(model, SpikingModel):
        raise TypeError(f"twin needs a SpikingModel from jaxrob.snn.create, got {type(model).__name__}")
    spiking = (not model.spiking) if spiking is None else bool(spiking)
    return _rebuild(model, spiking=spiking, stepwise=model.stepwise)


def _rebuild(model: SpikingModel, *, spiking: bool, stepwise: bool) -> SpikingModel:
    """``model``'s network over the same ``variables`` with other static settings."""
    base = model._merge(model.variables)
    T = model.timesteps or base.timesteps
    module = SpikingNet(base.ops, input_shape=base.input_shape, num_classes=base.num_classes, mean=base.mean,
                        std=base.std, neuron=base.neuron, encoder=base.encoder, timesteps=T, spiking=spiking,
                        dropout=base.dropout_rate, stepwise=stepwise, rngs=L.ParamKeys(jax.random.key(0)))
    merge, _ = nnx_merger(module, name=model.name)
    return _wrap(merge, model.variables, name=f"snn_{model.arch}" if spiking else f"ann_{model.arch}",
                 input_shape=model.input_shape, num_classes=model.num_classes, timesteps=T, spiking=spiking,
                 arch=model.arch, neuron=base.neuron, encoder=base.encoder, stepwise=stepwise)
