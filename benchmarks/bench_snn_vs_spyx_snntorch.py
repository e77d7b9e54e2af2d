"""Forward+backward (BPTT) time of the same spiking networks in jaxrob, spyx and snnTorch.

Two networks, the same neuron in all three libraries -- LIF with leak (beta) 0.9,
threshold 1, reset by subtraction, SuperSpike / fast-sigmoid surrogate with slope
25 (jaxrob ``LIF(0.9, 1.0, surrogate=FastSigmoid(25))``, spyx
``nn.LIF(beta=0.9, threshold=1.0, activation=axn.superspike(25))``, snnTorch
``Leaky(beta=0.9, threshold=1.0, spike_grad=surrogate.fast_sigmoid(25))``):

``linear``
    784 inputs -> dense (no bias) -> 4,096 LIF neurons, batch 16, 500 timesteps;
    input spikes Bernoulli(0.1) drawn once in advance; loss = spikes summed over
    time and neurons, averaged over the batch; gradient w.r.t. the weights.
``cnn_small``
    conv32-maxpool-LIF-conv64-maxpool-LIF-fc256-LIF-fc10 on 28x28x1 inputs, batch
    32, 25 timesteps, static (directly encoded) input each step, logits = the
    readout's accumulated potential / T; loss = mean cross-entropy against fixed
    random labels; gradient w.r.t. all weights and biases.

What is timed is one call of the jitted ``jax.value_and_grad`` (jaxrob, spyx --
spyx's own benchmark harness does the same: ``nnx.split`` then
``jax.jit(jax.value_and_grad(loss))``) or, for snnTorch, one eager forward loop
over time plus ``torch.autograd.grad``; median of the repeats after warm-up,
the libraries run in turn so a varying load hits all alike.

Variants (each library as its users would write it):

* ``jaxrob``: ``linear`` -- the input currents of all timesteps in one matmul,
  then ``jaxrob.snn.simulate`` (the API takes currents ``(T, ...)``);
  ``cnn_small`` -- ``jaxrob.snn.create("cnn_small", neuron=..., encoder=Direct())``,
  its ``apply_fn`` (layer-wise by default: each conv/dense applied once to all T
  steps, only the neurons in ``lax.scan``).
* ``jaxrob-stepwise``: ``linear`` -- dense + ``LIF.step`` inside one ``lax.scan``,
  one matmul per step -- the structure of spyx and snnTorch, so
  ``jaxrob-stepwise / spyx`` compares the neuron implementations alone;
  ``cnn_small`` -- the API model with ``stepwise=True`` (the whole network in one
  ``lax.scan`` over time, as before layer-wise became the default).
* ``jaxrob-layerwise`` (``cnn_small``): the layer-wise network hand-written with
  ``jaxrob.snn.simulate`` (what the API's default does); same spikes and gradients,
  checked.  See :func:`jaxrob_cnn_layerwise` for why it is faster.
* ``jaxrob-manual`` (``cnn_small``, ``--with-manual``): the API's network
  hand-written with ``LIF.step`` in one scan; its per-step spike counts are the
  reference of every check.
* ``spyx``: ``spyx.nn.Sequential`` of ``nnx`` layers and spyx neurons run by
  ``spyx.nn.run`` (one ``lax.scan``); pooling ``nnx.max_pool``.
* ``snntorch``: ``torch.nn`` layers and ``snntorch.Leaky`` in a Python loop over
  time (the snnTorch tutorials' way), eager.

Exactness: weights are rounded to multiples of a power of two with at most 8
significant bits, inputs are 0/1, so every matmul/convolution is exact in float32
(and in TF32/bf16) whatever the summation order; the three libraries then
integrate the same currents, and the benchmark asserts their spike counts agree.
Semantics differ in one documented way: spyx's LIF emits ``H(V_{t-1} - V_th)``
(the spike of the *previous* potential), so a spyx layer k's spikes at step t are
jaxrob's / snnTorch's at step ``t - k``; the check compares spyx's counts with
jaxrob's over the first ``T - k`` steps.  (spyx also does not detach the reset
from the gradient; jaxrob and snnTorch do.  This changes the gradient values, not
the work.)

Run from the repository root::

    .venv/bin/python benchmarks/bench_snn_vs_spyx_snntorch.py            # both cases
    .venv/bin/python benchmarks/bench_snn_vs_spyx_snntorch.py --quick    # 3 repeats
    .venv/bin/python benchmarks/bench_snn_vs_spyx_snntorch.py --device gpu   # fail unless JAX sees a GPU

On a GPU machine JAX uses the GPU and snnTorch runs on CUDA when the installed
torch has it (``--torch-device cpu`` forces the CPU; a CPU-only torch next to a
GPU JAX is skipped unless forced).  Writes
``benchmarks/results/<device>-snn_vs_spyx_snntorch.json`` (or ``--out``), prints a
markdown table, exits 1 if a sanity check fails.  spyx / snnTorch sides are
skipped (with a message) when the package does not import.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LEAK, THRESHOLD, SLOPE = 0.9, 1.0, 25.0
NAME = "snn_vs_spyx_snntorch"
CASES = ("linear", "cnn_small")


# ============================================================================ inputs and weights


def exact_grid(w: np.ndarray, bits: int = 8) -> np.ndarray:
    """Rounds ``w`` to multiples of ``2**-s`` with ``|w| 2**s < 2**bits``: exact in fp32/TF32/bf16 products and sums."""
    w = np.asarray(w, np.float32)
    m = float(np.max(np.abs(w)))
    if m == 0.0:
        return w
    s = math.floor(math.log2((2 ** bits - 1) / m))
    return (np.round(w * 2.0 ** s) / 2.0 ** s).astype(np.float32)


def linear_data(T: int, batch: int, n_in: int, n_out: int, p_in: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(T, batch, n_in)) < p_in).astype(np.float32)
    # mean input current ~0.12 per step (steady potential ~1.2 V_th), spread across neurons
    w = rng.normal(0.0015, 0.02, (n_in, n_out)).astype(np.float32)
    return {"x": x, "w": exact_grid(w)}


def cnn_data(batch: int) -> dict[str, np.ndarray]:
    """Binarised MNIST-10k test digits (0/1, NHWC) and fixed random labels."""
    import _common as C
    x, _, source = C.mnist10k("test")
    x = (x[:batch] > 0.5).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, batch).astype(np.int32)
    return {"x": x, "y": y, "source": f"first {batch} of {source}, binarised at 0.5"}


def cnn_params(seed: int = 0) -> dict[str, Any]:
    """cnn_small SNN parameters ``{conv1: {kernel HWIO, bias}, conv2, fc1: {kernel (in,out), bias}, fc2}``.

    ``jaxrob.snn.create("cnn_small")``'s initialisation (He-normal kernels, zero
    biases), rounded to the exact grid (:func:`exact_grid`).
    """
    p = _jaxrob_snn_create(seed, timesteps=1).variables["params"]
    return {k: {kk: exact_grid(np.asarray(vv)) for kk, vv in v.items()} for k, v in p.items()}


# ============================================================================ jaxrob


def _neuron():
    from jaxrob import snn
    return snn.LIF(leak=LEAK, threshold=THRESHOLD, reset="soft", surrogate=snn.FastSigmoid(SLOPE))


def _jaxrob_snn_create(seed: int, timesteps: int):
    """``jaxrob.snn.create("cnn_small")`` with the benchmark's neuron, no input normalisation, Direct encoding."""
    import jax
    from jaxrob import snn
    return snn.create("cnn_small", key=jax.random.key(seed), timesteps=timesteps, neuron=_neuron(),
                      encoder=snn.Direct(), mean=0.0, std=1.0)


def jaxrob_linear(T: int, unroll: int = 1) -> Callable:
    """``loss(w, x)``: currents for all steps in one matmul, then ``simulate``."""
    import jax.numpy as jnp
    from jaxrob.snn import simulate
    neuron = _neuron()

    def loss(w, x):
        currents = jnp.einsum("tbi,io->tbo", x, w)
        _, spikes, _ = simulate(neuron, currents, unroll=unroll)
        return spikes.sum() / x.shape[1], spikes.sum(axis=(1, 2))

    return loss


def jaxrob_linear_stepwise(T: int, unroll: int = 1) -> Callable:
    """``loss(w, x)``: dense + ``LIF.step`` inside one ``lax.scan`` (spyx's and snnTorch's structure)."""
    import jax
    neuron = _neuron()

    def loss(w, x):
        def body(st, xt):
            st, o = neuron.step(st, xt @ w)
            return st, o.sum()
        _, counts = jax.lax.scan(body, neuron.init((x.shape[1], w.shape[1])), x, unroll=unroll)
        return counts.sum() / x.shape[1], counts

    return loss


def _maxpool(h):
    n, hh, ww, c = h.shape
    return h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def jaxrob_cnn_manual(T: int) -> Callable:
    """``loss(params, x, y)`` for the cnn_small SNN written with ``LIF.step`` in one ``lax.scan``.

    Mirrors ``jaxrob.snn.create("cnn_small")`` (Direct encoding of the image every
    step, conv -> 2x2 max pool -> LIF, readout = accumulated fc2 output / T).
    Returns ``(loss, (logits, per-step spike counts (T, 3)))``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    neuron = _neuron()

    def conv(h, p):
        return jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    def loss(params, x, y):
        n = x.shape[0]
        states = (neuron.init((n, 14, 14, 32)), neuron.init((n, 7, 7, 64)), neuron.init((n, 256)))

        def body(carry, _):
            (s1, s2, s3), acc = carry
            s1, o1 = neuron.step(s1, _maxpool(conv(x, params["conv1"])))
            s2, o2 = neuron.step(s2, _maxpool(conv(o1 * THRESHOLD, params["conv2"])))
            s3, o3 = neuron.step(s3, (o2 * THRESHOLD).reshape(n, -1) @ params["fc1"]["kernel"] + params["fc1"]["bias"])
            acc = acc + (o3 * THRESHOLD) @ params["fc2"]["kernel"] + params["fc2"]["bias"]
            return ((s1, s2, s3), acc), jnp.stack([o1.sum(), o2.sum(), o3.sum()])

        (_, acc), counts = jax.lax.scan(body, (states, jnp.zeros((n, 10))), None, length=T)
        logits = acc / T
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, counts)

    return loss


def jaxrob_cnn_layerwise(T: int) -> Callable:
    """``loss(params, x, y)`` for the same cnn_small SNN run layer by layer with ``jaxrob.snn.simulate``.

    Each synapse (conv, dense) is applied once to all ``T`` timesteps (time folded
    into the batch axis), and only the neurons run in ``lax.scan`` (``simulate``).
    For a feed-forward network this is the same computation as the step-by-step
    scan (layer k at step t needs only layer k-1 at step t), with the same spikes
    and gradients; it keeps convolutions out of loop bodies, which XLA:CPU runs far
    slower than the same convolutions outside a loop (jax-ml/jax#12868), and gives
    accelerators T times larger convolutions.  Returns ``(loss, (logits, counts (T, 3)))``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jaxrob.snn import simulate
    neuron = _neuron()

    def conv(h, p):
        return jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    def per_step(f, h):   # apply f to (T, N, ...) with time folded into the batch
        out = f(h.reshape((-1,) + h.shape[2:]))
        return out.reshape(h.shape[:2] + out.shape[1:])

    def loss(params, x, y):
        n = x.shape[0]
        h = jnp.broadcast_to(x, (T,) + x.shape)                      # Direct encoding: the image every step
        _, o1, _ = simulate(neuron, per_step(lambda z: _maxpool(conv(z, params["conv1"])), h))
        _, o2, _ = simulate(neuron, per_step(lambda z: _maxpool(conv(z, params["conv2"])), o1 * THRESHOLD))
        _, o3, _ = simulate(neuron, (o2 * THRESHOLD).reshape(T, n, -1) @ params["fc1"]["kernel"]
                            + params["fc1"]["bias"])
        logits = ((o3 * THRESHOLD) @ params["fc2"]["kernel"] + params["fc2"]["bias"]).sum(0) / T
        counts = jnp.stack([o.reshape(T, -1).sum(1) for o in (o1, o2, o3)], axis=1)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, counts)

    return loss


def jaxrob_cnn_api(T: int, params_np: dict) -> tuple[Callable, Any, Any]:
    """``(loss(params, x, y), params, model)`` through ``jaxrob.snn.create`` (public API only)."""
    import jax.numpy as jnp
    import optax
    model = _jaxrob_snn_create(0, timesteps=T)
    params = {k: {kk: jnp.asarray(params_np[k][kk]) for kk in v} for k, v in model.variables["params"].items()}
    stats = model.variables.get("batch_stats", {})

    def loss(params, x, y):
        logits = model.apply_fn({"params": params, "batch_stats": stats}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    return loss, params, model


# ============================================================================ spyx


def spyx_linear(n_in: int, n_out: int, w: np.ndarray):
    """``(loss(params, x), params)`` for ``Sequential(Linear, LIF)`` run by ``spyx.nn.run``."""
    import jax.numpy as jnp
    import spyx
    from flax import nnx
    model = spyx.nn.Sequential(
        nnx.Linear(n_in, n_out, use_bias=False, kernel_init=lambda *a, **k: jnp.asarray(w), rngs=nnx.Rngs(0)),
        spyx.nn.LIF((n_out,), beta=LEAK, threshold=THRESHOLD, activation=spyx.axn.superspike(SLOPE),
                    rngs=nnx.Rngs(0)),
    )
    return _spyx_split(model, lambda out, x: (out.sum() / x.shape[1], out.sum(axis=(1, 2))))


def spyx_cnn(params_np: dict):
    """``(loss(params, x, y), params)`` for cnn_small built from ``nnx`` layers and spyx LIFs."""
    import jax.numpy as jnp
    import optax
    import spyx
    from flax import nnx

    def init(a):
        return lambda *_, **__: jnp.asarray(a)

    def conv(name, cin, cout):
        p = params_np[name]
        return nnx.Conv(cin, cout, (3, 3), padding="SAME", kernel_init=init(p["kernel"]),
                        bias_init=init(p["bias"]), rngs=nnx.Rngs(0))

    def dense(name, cin, cout):
        p = params_np[name]
        return nnx.Linear(cin, cout, kernel_init=init(p["kernel"]), bias_init=init(p["bias"]), rngs=nnx.Rngs(0))

    def lif(shape):
        return spyx.nn.LIF(shape, beta=LEAK, threshold=THRESHOLD, activation=spyx.axn.superspike(SLOPE),
                           rngs=nnx.Rngs(0))

    pool = functools.partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2))
    model = spyx.nn.Sequential(
        conv("conv1", 1, 32), pool, lif((14, 14, 32)),
        conv("conv2", 32, 64), pool, lif((7, 7, 64)),
        spyx.nn.Flatten(), dense("fc1", 3136, 256), lif((256,)),
        dense("fc2", 256, 10),
    )

    def head(out, x, y):   # out: (T, B, 10) readout currents
        logits = out.mean(axis=0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    return _spyx_split(model, head)


def _spyx_split(model, head: Callable):
    """Splits off the trainable weights (not spyx's ``beta`` Params, constants in the other libraries)."""
    import spyx
    from flax import nnx
    weights = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("beta")))
    graphdef, params, rest = nnx.split(model, weights, ...)

    def loss(params, x, *extra):
        m = nnx.merge(graphdef, params, rest)
        out, _ = spyx.nn.run(m, x)
        return head(out, x, *extra)

    def layer_counts(params, x):
        """Spike counts of every spyx LIF layer over all steps (a second forward that records them)."""
        import jax
        import jax.numpy as jnp
        m = nnx.merge(graphdef, params, rest)
        state = m.initial_state(x.shape[1])

        def step(carry, xt):
            h, new = xt, []
            counts = []
            for layer, s in zip(m.layers, carry):
                if s is not None:
                    h, s = layer(h, s)
                    if isinstance(layer, spyx.nn.LIF):
                        counts.append(h.sum())
                else:
                    h = layer(h)
                new.append(s)
            return new, jnp.stack(counts)

        _, counts = jax.lax.scan(step, state, x)
        return counts

    return loss, params, layer_counts


# ============================================================================ snnTorch


def snntorch_linear(torch, device, n_in: int, n_out: int, w: np.ndarray):
    import snntorch
    from snntorch import surrogate
    fc = torch.nn.Linear(n_in, n_out, bias=False).to(device)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
    lif = snntorch.Leaky(beta=LEAK, threshold=THRESHOLD, reset_mechanism="subtract",
                         spike_grad=surrogate.fast_sigmoid(slope=SLOPE)).to(device)

    def loss(x):
        mem = lif.reset_mem()
        spk_rec = []
        for t in range(x.shape[0]):
            spk, mem = lif(fc(x[t]), mem)
            spk_rec.append(spk)
        spk = torch.stack(spk_rec)
        return spk.sum() / x.shape[1], spk.detach().sum(dim=(1, 2))

    return loss, [fc.weight]


class _SnnTorchCNN:
    """cnn_small SNN with ``torch.nn`` layers and three ``snntorch.Leaky`` (built lazily: torch is optional)."""

    @staticmethod
    def build(torch, params_np: dict, T: int, device):
        import snntorch
        import torch.nn.functional as F
        from snntorch import surrogate
        from torch_models import state_dict_from_jaxrob

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
                self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
                self.fc1 = torch.nn.Linear(7 * 7 * 64, 256)
                self.fc2 = torch.nn.Linear(256, 10)
                mk = lambda: snntorch.Leaky(beta=LEAK, threshold=THRESHOLD, reset_mechanism="subtract",  # noqa: E731
                                            spike_grad=surrogate.fast_sigmoid(slope=SLOPE))
                self.lif1, self.lif2, self.lif3 = mk(), mk(), mk()

            def forward(self, x):          # x: (B, 1, 28, 28)
                mem1, mem2, mem3 = self.lif1.reset_mem(), self.lif2.reset_mem(), self.lif3.reset_mem()
                acc = 0.0
                counts = []
                for _ in range(T):
                    spk1, mem1 = self.lif1(F.max_pool2d(self.conv1(x), 2), mem1)
                    spk2, mem2 = self.lif2(F.max_pool2d(self.conv2(spk1 * THRESHOLD), 2), mem2)
                    spk3, mem3 = self.lif3(self.fc1(torch.flatten(spk2 * THRESHOLD, 1)), mem3)
                    acc = acc + self.fc2(spk3 * THRESHOLD)
                    counts.append(torch.stack([spk1.detach().sum(), spk2.detach().sum(), spk3.detach().sum()]))
                return acc / T, torch.stack(counts)

        net = Net()
        sd = state_dict_from_jaxrob({"params": params_np}, flattened_from={"fc1": (7, 7, 64)})
        net.load_state_dict(sd, strict=False)   # the Leaky buffers keep their constructor values
        return net.to(device)


def snntorch_cnn(torch, device, params_np: dict, T: int):
    net = _SnnTorchCNN.build(torch, params_np, T, device)
    weights = [p for n, p in net.named_parameters() if n.split(".")[0] in ("conv1", "conv2", "fc1", "fc2")]

    def loss(x, y):
        logits, counts = net(x)
        return torch.nn.functional.cross_entropy(logits, y), (logits.detach(), counts)

    return loss, weights


# ============================================================================ driver


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1.0)


def run_linear(args, torch, torch_device, have_spyx) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    T, B, n_in, n_out = args.linear_timesteps, args.linear_batch, 784, args.linear_neurons
    d = linear_data(T, B, n_in, n_out)
    xj, wj = jnp.asarray(d["x"]), jnp.asarray(d["w"])
    res: dict[str, Any] = {"case": "linear", "timesteps": T, "batch": B, "inputs": n_in, "neurons": n_out,
                           "input_rate": float(d["x"].mean()), "loss": "sum of spikes / batch",
                           "grad_wrt": "dense weights (784 x neurons)"}
    fns, names, counts = [], [], {}

    def jax_variant(name, loss_fn, params, *inputs):
        vg = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        t0 = time.perf_counter()
        (val, aux), g = vg(params, *inputs)
        jax.block_until_ready(g)
        res.setdefault("compile_and_first_call_s", {})[name] = time.perf_counter() - t0
        counts[name] = np.asarray(aux)
        res.setdefault("loss_value", {})[name] = float(val)
        res.setdefault("grad_abs_sum", {})[name] = float(sum(jnp.abs(a).sum() for a in jax.tree.leaves(g)))

        def fn():
            jax.block_until_ready(vg(params, *inputs))
        fns.append(fn)
        names.append(name)

    jax_variant("jaxrob", jaxrob_linear(T, unroll=args.unroll), wj, xj)
    if not args.no_stepwise:
        jax_variant("jaxrob-stepwise", jaxrob_linear_stepwise(T, unroll=args.unroll), wj, xj)
    if have_spyx:
        loss, params, layer_counts = spyx_linear(n_in, n_out, d["w"])
        jax_variant("spyx", loss, params, xj)
    if torch is not None:
        xt = torch.from_numpy(d["x"]).to(torch_device)
        tl, tw = snntorch_linear(torch, torch_device, n_in, n_out, d["w"])
        t0 = time.perf_counter()
        val, aux = tl(xt)
        torch.autograd.grad(val, tw)
        res.setdefault("compile_and_first_call_s", {})["snntorch"] = time.perf_counter() - t0
        counts["snntorch"] = aux.cpu().numpy()
        res.setdefault("loss_value", {})["snntorch"] = float(val.detach())

        def fn_t():
            v, _ = tl(xt)
            torch.autograd.grad(v, tw)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
        fns.append(fn_t)
        names.append("snntorch")

    # sanity: the same spikes (spyx one step late)
    ref = counts["jaxrob"]
    total = float(ref.sum())
    res["spikes_total"] = {k: float(v.sum()) for k, v in counts.items()}
    res["spike_rate_jaxrob"] = total / (T * B * n_out)
    checks = {"firing rate in (0.01, 0.5)": 0.01 < res["spike_rate_jaxrob"] < 0.5}
    for k, v in counts.items():
        if k == "spyx":
            expect = float(ref[:-1].sum())
            res["spikes_total"]["jaxrob_first_T-1_steps"] = expect
            checks["spyx spikes == jaxrob's one step later (rel 1e-3)"] = _rel(float(v.sum()), expect) <= 1e-3
            res["spyx_exact_match"] = bool(np.array_equal(v[1:], ref[:-1]))
        elif k != "jaxrob":
            checks[f"{k} per-step spike counts == jaxrob (rel 1e-3)"] = _rel(float(v.sum()), total) <= 1e-3 and \
                float(np.abs(v - ref).sum()) <= 1e-3 * total
            res[f"{k}_exact_match"] = bool(np.array_equal(v, ref))
    res["checks"] = checks
    _time(res, names, fns, args)
    return res


def run_cnn(args, torch, torch_device, have_spyx) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax
    T, B = args.cnn_timesteps, args.cnn_batch
    d = cnn_data(B)
    params_np = cnn_params()
    xj, yj = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    pj = jax.tree.map(jnp.asarray, params_np)
    res: dict[str, Any] = {"case": "cnn_small", "timesteps": T, "batch": B, "data": d["source"],
                           "loss": "mean cross-entropy of (accumulated readout / T), fixed random labels",
                           "grad_wrt": "conv1, conv2, fc1, fc2 kernels and biases"}
    fns, names, logits, counts = [], [], {}, {}

    def jax_variant(name, loss_fn, params, *inputs):
        vg = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        t0 = time.perf_counter()
        (val, aux), g = vg(params, *inputs)
        jax.block_until_ready(g)
        res.setdefault("compile_and_first_call_s", {})[name] = time.perf_counter() - t0
        res.setdefault("loss_value", {})[name] = float(val)
        fns.append(lambda: jax.block_until_ready(vg(params, *inputs)))
        names.append(name)
        return aux

    # jaxrob.snn.create("cnn_small") -- the public model API
    api_loss, api_params, model = jaxrob_cnn_api(T, params_np)
    res["jaxrob_impl"] = "jaxrob.snn.create('cnn_small', neuron=LIF(0.9, 1.0, FastSigmoid(25)), encoder=Direct())"
    logits["jaxrob"] = np.asarray(jax_variant("jaxrob", api_loss, api_params, xj, yj))
    stats = jax.jit(model.simulate)({"params": api_params, "batch_stats": model.variables.get("batch_stats", {})},
                                    xj)[1]
    res["api_spike_counts"] = [float(np.asarray(stats["spikes"][k]).sum()) for k in ("lif1", "lif2", "lif3")]
    # the same network hand-written with LIF.step in one scan: per-step spike counts for the checks
    manual = jaxrob_cnn_manual(T)
    lm, cm = jax.jit(manual)(pj, xj, yj)[1]
    logits["jaxrob-manual"], counts["jaxrob"] = np.asarray(lm), np.asarray(cm)
    if args.with_manual:
        jax_variant("jaxrob-manual", manual, pj, xj, yj)
    if not args.no_stepwise:
        step_model = model.with_stepwise(True)
        stats_b = model.variables.get("batch_stats", {})

        def step_loss(params, x, y):
            lg = step_model.apply_fn({"params": params, "batch_stats": stats_b}, x)
            return optax.softmax_cross_entropy_with_integer_labels(lg, y).mean(), lg
        logits["jaxrob-stepwise"] = np.asarray(jax_variant("jaxrob-stepwise", step_loss, api_params, xj, yj))
    if not args.no_layerwise:
        ll, cl = jax_variant("jaxrob-layerwise", jaxrob_cnn_layerwise(T), pj, xj, yj)
        logits["jaxrob-layerwise"], counts["jaxrob-layerwise"] = np.asarray(ll), np.asarray(cl)
    if have_spyx:
        sl, sp, layer_counts = spyx_cnn(params_np)
        xs = jnp.broadcast_to(xj, (T, *xj.shape))  # spyx.nn.run scans a time-major input
        logits["spyx"] = np.asarray(jax_variant("spyx", sl, sp, xs, yj))
        counts["spyx"] = np.asarray(jax.jit(layer_counts)(sp, xs))
    if torch is not None:
        from torch_models import nhwc_to_nchw
        xt = torch.from_numpy(nhwc_to_nchw(d["x"])).to(torch_device)
        yt = torch.from_numpy(d["y"].astype(np.int64)).to(torch_device)
        tl, tw = snntorch_cnn(torch, torch_device, params_np, T)
        t0 = time.perf_counter()
        val, (lt, ct) = tl(xt, yt)
        torch.autograd.grad(val, tw)
        res.setdefault("compile_and_first_call_s", {})["snntorch"] = time.perf_counter() - t0
        res.setdefault("loss_value", {})["snntorch"] = float(val.detach())
        logits["snntorch"], counts["snntorch"] = lt.cpu().numpy(), ct.cpu().numpy()

        def fn_t():
            v, _ = tl(xt, yt)
            torch.autograd.grad(v, tw)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
        fns.append(fn_t)
        names.append("snntorch")

    ref = counts["jaxrob"]                      # (T, 3) per-step counts of the three LIF layers
    res["spikes_per_layer"] = {k: [float(c) for c in v.sum(0)] for k, v in counts.items()}
    res["spike_rate_per_layer_jaxrob"] = [float(c) / (T * B * n) for c, n in zip(ref.sum(0), (6272, 3136, 256))]
    checks = {"every layer fires (rate in (0.005, 0.6))": all(0.005 < r < 0.6 for r in res["spike_rate_per_layer_jaxrob"])}
    checks["API logits == hand-written twin (1e-5)"] = bool(
        np.allclose(logits["jaxrob"], logits["jaxrob-manual"], rtol=1e-5, atol=1e-5))
    # exact on CPU; on a GPU, XLA may contract leak * v + I into an FMA differently per program,
    # which can flip a spike that sits within an ulp of the threshold, so the checks allow 1e-3
    checks["API spike counts == hand-written twin (rel 1e-3)"] = all(
        _rel(a, float(b)) <= 1e-3 for a, b in zip(res["api_spike_counts"], ref.sum(0)))
    res["api_exact_match"] = res["api_spike_counts"] == [float(c) for c in ref.sum(0)]
    if "jaxrob-stepwise" in logits:
        checks["API stepwise logits == layer-wise (1e-5)"] = bool(
            np.allclose(logits["jaxrob-stepwise"], logits["jaxrob"], rtol=1e-5, atol=1e-5))
    if "jaxrob-layerwise" in counts:
        diff = float(np.abs(counts["jaxrob-layerwise"] - ref).sum())
        checks["layerwise per-step spike counts == step-wise (rel 1e-3)"] = diff <= 1e-3 * float(ref.sum())
        res["jaxrob-layerwise_exact_match"] = bool(np.array_equal(counts["jaxrob-layerwise"], ref))
    if "snntorch" in counts:
        diff = np.abs(counts["snntorch"] - ref).sum()
        checks["snntorch per-step spike counts == jaxrob (rel 1e-3)"] = float(diff) <= 1e-3 * float(ref.sum())
        checks["snntorch logits == jaxrob (1e-4)"] = bool(np.allclose(logits["snntorch"], logits["jaxrob-manual"],
                                                                       rtol=1e-4, atol=1e-4))
        res["snntorch_exact_match"] = bool(np.array_equal(counts["snntorch"], ref))
    if "spyx" in counts:
        # spyx layer k (1-based) lags k steps: compare with jaxrob's counts over the first T - k steps
        expect = [float(ref[:T - k, k - 1].sum()) for k in (1, 2, 3)]
        got = [float(c) for c in counts["spyx"].sum(0)]
        res["spyx_vs_jaxrob_lagged"] = {"spyx": got, "jaxrob_first_T-k_steps": expect}
        checks["spyx layer-k spikes == jaxrob's k steps later (rel 1e-3)"] = all(
            _rel(a, b) <= 1e-3 for a, b in zip(got, expect))
        res["spyx_exact_match"] = bool(all(
            np.array_equal(counts["spyx"][k:, k - 1], ref[:T - k, k - 1]) for k in (1, 2, 3)))
    res["checks"] = checks
    _time(res, names, fns, args)
    return res


def _time(res: dict, names: list[str], fns: list[Callable], args) -> None:
    import _common as C
    repeats = 3 if args.quick else args.repeats
    timed = C.median_times(fns, repeats=repeats, warmup=1)
    res["repeats"] = repeats
    res["seconds"] = {n: t for n, (_, t) in zip(names, timed)}
    res["median_s"] = {n: m for n, (m, _) in zip(names, timed)}
    j = "jaxrob"
    res["ratio_time"] = {f"{j}/{n}": res["median_s"][j] / res["median_s"][n] for n in res["median_s"] if n != j}
    res["load_average_after"] = C.load_average()
    print(f"   {res['case']}: " + ", ".join(f"{n} {m * 1e3:,.0f} ms" for n, m in res["median_s"].items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--quick", action="store_true", help="3 timing repeats")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="JAX platform: auto (the default backend), cpu, or gpu (fail without one)")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when JAX is on a GPU and torch has CUDA, else CPU (skipped if JAX is on a GPU "
                        "and torch has no CUDA)")
    p.add_argument("--with-manual", action="store_true",
                   help="also time cnn_small hand-written with LIF.step in one scan (the API's structure)")
    p.add_argument("--no-layerwise", action="store_true", help="skip the jaxrob-layerwise cnn_small variant")
    p.add_argument("--no-stepwise", action="store_true", help="skip the jaxrob-stepwise variants")
    p.add_argument("--skip", nargs="*", default=[], choices=("spyx", "snntorch"))
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: the cores available; on a CPU shared with other "
                        "processes 1 can be much faster, as torch's OpenMP threads then wait on each other)")
    p.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the jaxrob linear variants")
    p.add_argument("--linear-timesteps", type=int, default=500)
    p.add_argument("--linear-batch", type=int, default=16)
    p.add_argument("--linear-neurons", type=int, default=4096)
    p.add_argument("--cnn-timesteps", type=int, default=25)
    p.add_argument("--cnn-batch", type=int, default=32)
    p.add_argument("--out", default=None, help=f"JSON path (default benchmarks/results/<device>-{NAME}.json)")
    args = p.parse_args(argv)

    import jax
    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    platform = jax.devices()[0].platform
    if args.device == "gpu" and platform != "gpu":
        raise SystemExit(f"--device gpu but JAX's default backend is {platform!r}")
    import _common as C

    have_spyx = "spyx" not in args.skip
    if have_spyx:
        try:
            importlib.import_module("spyx")
        except ImportError as e:
            print(f"[spyx side skipped: {e}]", file=sys.stderr)
            have_spyx = False
    torch = torch_device = None
    if "snntorch" not in args.skip:
        try:
            importlib.import_module("snntorch")
            import torch
        except ImportError as e:
            print(f"[snnTorch side skipped: {e}]", file=sys.stderr)
            torch = None
    if torch is not None:
        want = args.torch_device
        if want == "auto":
            want = "cuda" if platform == "gpu" else "cpu"
            if want == "cuda" and not torch.cuda.is_available():
                print("[snnTorch side skipped: JAX runs on a GPU and torch has no CUDA; --torch-device cpu forces it]",
                      file=sys.stderr)
                torch = None
        elif want == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--torch-device cuda but torch.cuda.is_available() is False")
        if torch is not None:
            torch_device = torch.device(want)
            torch.set_num_threads(args.torch_threads or C.cores())

    env = C.environment(torch)
    env.pop("torchattacks", None)
    for mod in ("spyx", "snntorch", "optax"):
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    if torch_device is not None:
        env["torch_device"] = str(torch_device)
    results: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "environment": env,
                               "neuron": {"leak": LEAK, "threshold": THRESHOLD, "reset": "subtract",
                                          "surrogate": f"fast sigmoid / SuperSpike, slope {SLOPE:g}"},
                               "cases": {}}
    print(f"== {NAME}: JAX on {env['device_kind']} ({env['cores']} cores), snnTorch on "
          f"{torch_device or '-'}, load {env['load_average_at_start']}", flush=True)
    for case in args.cases:
        print(f"-- {case} ...", flush=True)
        run = run_linear if case == "linear" else run_cnn
        results["cases"][case] = run(args, torch, torch_device, have_spyx)

    rows = []
    for case, r in results["cases"].items():
        shape = f"T={r['timesteps']}, B={r['batch']}"
        med = r["median_s"]
        j = "jaxrob"
        for n, m in med.items():
            ratio = "1" if n == j else f"{m and med[j] / m:.2f}"
            rows.append([case, shape, n, f"{m * 1e3:,.1f}", ratio])
    table = C.markdown_table(["case", "shape", "library", "fwd+bwd ms (median)", "time jaxrob / this"], rows)
    print(f"\nforward+backward through time, {env['device_kind']}, {env['cores']} cores; jax {env['jax']}, "
          f"spyx {env.get('spyx', '-')}, snnTorch {env.get('snntorch', '-')} (torch {env.get('torch', '-')} "
          f"on {env.get('torch_device', '-')}); load at start {env['load_average_at_start']}\n")
    print(table)
    results["table_markdown"] = table
    failed = [f"{c}: {k}" for c, r in results["cases"].items() for k, ok in r["checks"].items() if not ok]
    results["failed_checks"] = failed
    path = C.write_json(results, args.out or C.default_out(NAME))
    print(f"\nwrote {path}")
    if failed:
        print("FAILED CHECKS:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
