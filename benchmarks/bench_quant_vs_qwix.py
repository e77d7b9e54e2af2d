"""jaxrob's int8/int4 per-channel weight fake quantization against qwix's, on the same weights.

qwix (Google's JAX quantization library) quantizes a weight symmetrically per
output channel with, for ``b`` bits (``qwix/_src/core/numerics.py`` and
``qarray.py`` of qwix 0.1.8):

    scale = absmax / (2^(b-1) - 1 + 0.5)     # "+0.5 so the qmax bucket is fully used"
    code  = clip(round_half_even(w / scale), -2^(b-1), 2^(b-1) - 1)   # int8/int4 cast saturates
    w_q   = code * scale

jaxrob's default is the narrow symmetric range (``scale = absmax / (2^(b-1) - 1)``,
codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``, an exactly symmetric grid); the same
quantizer as qwix's is ``fake_quant(w, bits=b, scale=absmax / (2^(b-1) - 0.5),
narrow_range=False, axis=-1)``, which this script uses. (qwix's largest-magnitude
weight lands on the tie ``+-(qmax + 0.5)``: positive ones round to ``qmax + 1`` and
are clipped back to ``qmax``, negative ones round to ``-(qmax + 1)``, the extra
two's-complement code.) The gradients differ slightly: qwix's QAT passes the
gradient of every weight (abs-max calibration clips nothing), jaxrob's
``fake_quant`` zeroes it outside the representable range ``[-(qmax+1) s, qmax s]``,
i.e. for a positive abs-max weight, whose value ``(qmax + 0.5) s`` is clipped.

It checks and measures, on jaxrob's ``mlp`` (784-256-256-10) and ``cnn_small``
(freshly initialised; the same weights for both libraries):

1. the fake-quantized kernels, int8 and int4: jaxrob vs ``qwix.dequantize(qwix.quantize(w,
   qtype, channelwise_axes=[out axis]))``, number of differing elements (both jitted);
   and, to show the convention difference, jaxrob's default convention vs qwix;
2. the logits of the QAT models on 200 test digits: ``jaxrob.quant.quantized_model``
   vs the float model on qwix's dequantized kernels (must be identical), and vs
   qwix's QT provider (``qwix.quantize_model(module, QtProvider([QtRule(module_path=".*",
   weight_qtype=...)]), x)``, which intercepts every dense/conv op). qwix's QT model
   can differ slightly from qwix's own quantize/dequantize of the same kernels
   (measured: cnn_small int8); jaxrob's in-model quantization equals its
   standalone one (and qwix's) exactly;
3. the time of one QAT train step (forward + backward + SGD update, batch 128,
   cross-entropy) with each library, and of the float step, interleaved
   (median of ``--repeats``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_quant_vs_qwix.py            # --repeats 30
    .venv/bin/pip install --no-deps qwix                           # if it is missing

Writes ``benchmarks/results/quant_vs_qwix-<device>.json`` and ``.md`` (or
``--out``) and prints the tables; exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import models  # noqa: E402
from jaxrob.models._base import from_nnx  # noqa: E402
from jaxrob.quant._tree import quantize_params, quantized_model  # noqa: E402
from jaxrob.quant._uniform import fake_quant  # noqa: E402

QTYPES = {8: jnp.int8, 4: jnp.int4}
MODELS = {"mlp": dict(hidden_sizes=(256, 256)), "cnn_small": {}}


def qwix_convention(w: jax.Array, *, bits: int) -> jax.Array:
    """jaxrob's fake_quant with qwix's scale and code range (per output channel, the last axis)."""
    am = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
    return fake_quant(w, bits=bits, scale=am / (2 ** (bits - 1) - 0.5), narrow_range=False, axis=-1)


def jaxrob_default(w: jax.Array, *, bits: int) -> jax.Array:
    return fake_quant(w, bits=bits, axis=-1)


def qwix_fake_quant(qwix, w: jax.Array, *, bits: int) -> jax.Array:
    return qwix.dequantize(qwix.quantize(w, QTYPES[bits], channelwise_axes=[w.ndim - 1]))


def train_step(apply_fn, lr: float = 0.05):
    """One SGD step on the mean cross-entropy; ``(params, x, y) -> (params, loss)``."""
    def loss(params, x, y):
        logits = apply_fn({"params": params, "batch_stats": {}}, x)
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

    @jax.jit
    def step(params, x, y):
        val, g = jax.value_and_grad(loss)(params, x, y)
        return jax.tree.map(lambda p, d: p - lr * d, params, g), val
    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/quant_vs_qwix-<device>.json)")
    args = p.parse_args(argv)
    try:
        import qwix
    except ImportError as e:
        print(f"qwix is not installed ({e}); `.venv/bin/pip install --no-deps qwix`", file=sys.stderr)
        return 1

    res: dict[str, Any] = {"benchmark": "quant_vs_qwix", "environment": C.environment(), "qwix": qwix.__version__,
                           "batch": args.batch, "repeats": args.repeats}
    x_test, _, src = C.mnist10k("test")
    # not 256 examples: qwix identifies weights by shape as a fallback, and (256, 256) activations of the
    # mlp would look like its 256x256 kernel (qwix flax_util.find_param, "approach 2")
    x_eval = x_test[:200]
    rng = np.random.default_rng(0)
    xb = jnp.asarray(x_test[:args.batch])
    yb = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
    res["data"] = src
    checks: dict[str, bool] = {}
    weight_rows, logit_rows, time_rows = [], [], []
    for name, opts in MODELS.items():
        key = jax.random.key(0)
        m = models.create(name, key=key, **opts)
        for bits in (8, 4):
            # 1. the kernels
            for path, w in [("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp), w)
                            for kp, w in jax.tree_util.tree_leaves_with_path(m.params)
                            if str(getattr(kp[-1], "key", "")) == "kernel"]:
                ours = jax.jit(functools.partial(qwix_convention, bits=bits))(w)
                theirs = jax.jit(functools.partial(qwix_fake_quant, qwix, bits=bits))(w)
                default = jax.jit(functools.partial(jaxrob_default, bits=bits))(w)
                step = np.max(np.abs(np.asarray(w)), axis=tuple(range(w.ndim - 1))) / (2 ** (bits - 1) - 0.5)
                row = {"model": name, "bits": bits, "kernel": path, "shape": list(w.shape), "size": int(w.size),
                       "mismatches": int(jnp.sum(ours != theirs)),
                       "max_abs_diff": float(jnp.max(jnp.abs(ours - theirs))),
                       "default_convention_fraction_differing": float(jnp.mean(default != theirs)),
                       "default_convention_max_diff_in_qwix_steps": float(np.max(np.abs(np.asarray(default - theirs))
                                                                                 / step))}
                weight_rows.append(row)
                checks[f"{name} int{bits} {path} identical"] = row["mismatches"] == 0
            # 2. QAT model logits
            module = models.create_module(name, key=key, **opts)
            prov = qwix.QtProvider([qwix.QtRule(module_path=".*", weight_qtype=QTYPES[bits])])
            qwix_model = from_nnx(qwix.quantize_model(module, prov, xb), name=f"{name}-qwix", input_shape=m.input_shape,
                                  num_classes=m.num_classes)
            jax.tree.map(np.testing.assert_array_equal, qwix_model.variables, m.variables)   # same weights
            jaxrob_model = quantized_model(m, functools.partial(qwix_convention, bits=bits))
            lq = np.asarray(jax.jit(qwix_model.apply_fn)(m.variables, x_eval))
            lj = np.asarray(jax.jit(jaxrob_model.apply_fn)(m.variables, x_eval))
            lf = np.asarray(jax.jit(m.apply_fn)(m.variables, x_eval))
            # the float model on qwix's own quantize -> dequantize of the kernels (PTQ with qwix's numbers)
            qwix_ptq = jax.jit(lambda v: quantize_params(v, functools.partial(qwix_fake_quant, qwix, bits=bits)))(
                m.variables)
            lp = np.asarray(jax.jit(m.apply_fn)(qwix_ptq, x_eval))
            lrow = {"model": name, "bits": bits,
                    "max_abs_diff_jaxrob_qat_vs_qwix_dequantized_weights": float(np.max(np.abs(lj - lp))),
                    "max_abs_diff_qwix_qat_vs_qwix_dequantized_weights": float(np.max(np.abs(lq - lp))),
                    "max_abs_diff_jaxrob_qat_vs_qwix_qat": float(np.max(np.abs(lq - lj))),
                    "max_abs_logit": float(np.max(np.abs(lq))),
                    "max_abs_diff_quant_vs_float": float(np.max(np.abs(lq - lf))),
                    "prediction_agreement_jaxrob_vs_qwix_qat": float(np.mean(lq.argmax(1) == lj.argmax(1)))}
            logit_rows.append(lrow)
            checks[f"{name} int{bits} jaxrob QAT logits == float model on qwix-dequantized weights"] = (
                lrow["max_abs_diff_jaxrob_qat_vs_qwix_dequantized_weights"] == 0.0)
            # 3. timing
            steps = {"jaxrob": train_step(jaxrob_model.apply_fn), "qwix": train_step(qwix_model.apply_fn),
                     "float": train_step(m.apply_fn)}
            params = m.params
            t0 = time.perf_counter()
            for s in steps.values():
                jax.block_until_ready(s(params, xb, yb))
            compile_s = time.perf_counter() - t0
            fns = [functools.partial(lambda s: jax.block_until_ready(s(params, xb, yb)), s) for s in steps.values()]
            times = C.median_times(fns, repeats=args.repeats, warmup=2)
            t = {k: v[0] for k, v in zip(steps, times)}
            trow = {"model": name, "bits": bits, "ms_jaxrob": 1e3 * t["jaxrob"], "ms_qwix": 1e3 * t["qwix"],
                    "ms_float": 1e3 * t["float"], "ratio_jaxrob_over_qwix": t["jaxrob"] / t["qwix"],
                    "seconds_compile_all_three": compile_s, "load_average": C.load_average(),
                    "all_ms": {k: [1e3 * s for s in v[1]] for k, v in zip(steps, times)}}
            time_rows.append(trow)
            print(f"{name} int{bits}: logits jaxrob-qwix {lrow['max_abs_diff_jaxrob_qat_vs_qwix_qat']:.3g}; "
                  f"step jaxrob "
                  f"{trow['ms_jaxrob']:.2f} ms, qwix {trow['ms_qwix']:.2f} ms, float {trow['ms_float']:.2f} ms",
                  flush=True)
    res.update(weights=weight_rows, logits=logit_rows, timing=time_rows, checks=checks)
    t_w = C.markdown_table(
        ["model", "bits", "kernel", "shape", "elements differing (jaxrob vs qwix)", "max abs diff",
         "jaxrob default convention: fraction differing", "... max diff (qwix steps)"],
        [[r["model"], r["bits"], r["kernel"], "x".join(map(str, r["shape"])), r["mismatches"], r["max_abs_diff"],
          r["default_convention_fraction_differing"], r["default_convention_max_diff_in_qwix_steps"]]
         for r in weight_rows])
    t_l = C.markdown_table(
        ["model", "bits", "jaxrob QAT vs qwix-dequantized weights", "qwix QAT vs qwix-dequantized weights",
         "jaxrob QAT vs qwix QAT", "effect of quantization (quantized vs float)", "largest logit",
         "prediction agreement"],
        [[r["model"], r["bits"], r["max_abs_diff_jaxrob_qat_vs_qwix_dequantized_weights"],
          r["max_abs_diff_qwix_qat_vs_qwix_dequantized_weights"], r["max_abs_diff_jaxrob_qat_vs_qwix_qat"],
          r["max_abs_diff_quant_vs_float"], r["max_abs_logit"], r["prediction_agreement_jaxrob_vs_qwix_qat"]]
         for r in logit_rows])
    t_t = C.markdown_table(
        ["model", "bits", "QAT step jaxrob (ms)", "QAT step qwix (ms)", "float step (ms)", "time jaxrob/qwix"],
        [[r["model"], r["bits"], r["ms_jaxrob"], r["ms_qwix"], r["ms_float"], r["ratio_jaxrob_over_qwix"]]
         for r in time_rows])
    env = res["environment"]
    head = (f"jaxrob vs qwix {res['qwix']} weight fake quantization; device {env['device_kind']}, "
            f"{env['cores']} cores, "
            f"jax {env['jax']}, batch {args.batch}, median of {args.repeats}; load average at start "
            f"{env['load_average_at_start']}")
    md = (f"{head}\n\n### Fake-quantized kernels\n\n{t_w}\n\n### QAT model logits (max absolute differences)\n\n"
          f"{t_l}\n\n### One QAT train step\n\n{t_t}\n")
    print("\n" + md)
    res["table_markdown"] = md
    failed = [c for c, ok in checks.items() if not ok]
    res["failed_checks"] = failed
    out = args.out or str(C.RESULTS_DIR / f"quant_vs_qwix-{C.device_slug()}.json")
    path = C.write_json(res, out)
    md_path = path.with_suffix(".md")
    md_path.write_text(md)
    print(f"wrote {path} and {md_path}")
    if failed:
        print("FAILED CHECKS:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
