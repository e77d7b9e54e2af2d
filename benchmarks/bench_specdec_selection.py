"""Cost per token of multi-draft selection at a real vocabulary size (V = 49,152, SmolLM2's).

For a batch of positions, each with its own target ``p``, draft distribution ``q`` and
``K`` drafts drawn from ``q``, it times one jitted ``jax.vmap`` of each selection scheme
of :mod:`jaxrob.specdec` over the batch (median of repeated calls after a compile and
warm-up call) and reports the time per position (= per generated token of the
selection step), and the mean exact acceptance probability of each scheme on the same
positions (:func:`acceptance_probability`, closed forms, no sampling; for SpecInfer
without replacement, which has no closed form at this size, a Monte Carlo estimate
marked "MC").

Schemes: single-draft speculative sampling, SpecInfer (with and without replacement),
SpecTr K-SEQ, and the importance-sampling scheme with a truncated LP (``s = 5``) and
with a truncated alphabet (``alphabet = 40``, ``s = 5``) -- the paper's fast
configuration. The exact LP schemes (``lp_optimal``, ``canonical_is``) enumerate
``V**K`` draft tuples and cannot run at this vocabulary; they are timed at a small
vocabulary (``--small-vocab``, default 8) for reference, and the optimal acceptance at
V = 49,152 comes from the closed form (:func:`optimal_acceptance`).

The positions are synthetic but LLM-like: target logits ``3 * Gumbel``, draft logits
the target's plus unit Gaussian noise, at draft temperature 1.5 (a hotter, noisy draft
model).

Run from the repository root::

    .venv/bin/python benchmarks/bench_specdec_selection.py            # K = 2 and 4, batch 64
    .venv/bin/python benchmarks/bench_specdec_selection.py --quick    # fewer repeats

Writes ``benchmarks/results/<device>-specdec_selection.json`` (or ``--out``) atomically
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob.specdec import _acceptance as A  # noqa: E402
from jaxrob.specdec import _schemes as S  # noqa: E402

LARGE = [
    ("single_draft", S.single_draft, {}),
    ("specinfer", S.specinfer, {}),
    ("specinfer_no_replacement", S.specinfer, {"replacement": False}),
    ("spectr", S.spectr, {}),
    ("truncated_lp_s5", S.truncated_is, {"s": 5}),
    ("truncated_alphabet40_s5", S.truncated_is, {"s": 5, "alphabet": 40}),
]
SMALL = [
    ("lp_optimal", S.lp_optimal, {}),
    ("canonical_is", S.canonical_is, {}),
]


def positions(vocab: int, batch: int, k: int, seed: int, replacement: bool) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.gumbel(size=(batch, vocab))
    draft = (logits + rng.normal(size=(batch, vocab))) / 1.5
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1)
    q = jax.nn.softmax(jnp.asarray(draft, jnp.float32), -1)
    qs = jnp.repeat(q[:, None], k, axis=1)
    keys = jax.random.split(jax.random.key(seed), batch)
    drafts = jax.vmap(lambda kk, qq: S.sample_drafts(kk, qq, replacement=replacement))(keys, qs)
    return p, qs, drafts


def bench_one(fn, options, p, qs, drafts, repeats: int) -> dict[str, Any]:
    batch = p.shape[0]
    run = jax.jit(jax.vmap(lambda kk, pp, qq, dd: fn(kk, pp, qq, dd, **options)))
    keys = jax.random.split(jax.random.key(1), batch)
    t0 = time.perf_counter()
    jax.block_until_ready(run(keys, p, qs, drafts))
    first = time.perf_counter() - t0
    (median, times), = C.median_times([lambda: jax.block_until_ready(run(keys, p, qs, drafts))], repeats=repeats)
    tokens, accepted = run(keys, p, qs, drafts)
    return {"first_call_seconds": first, "median_seconds_per_batch": median, "seconds": times,
            "microseconds_per_token": 1e6 * median / batch,
            "accepted_fraction_this_draw": float(jnp.mean(accepted >= 0))}


def acceptance(fn, options, p, qs) -> tuple[float, str]:
    """Mean exact acceptance over the positions; for SpecInfer without replacement (no closed
    form; exact enumeration needs V**K tuples) a Monte Carlo estimate over 256 draft draws per position."""
    if options.get("replacement", True):
        f = jax.jit(jax.vmap(lambda pp, qq: A.acceptance_probability(fn, pp, qq, **options)))
        return float(jnp.mean(f(p, qs))), "exact"
    draws = 256

    def one(key, pp, qq):
        k1, k2 = jax.random.split(key)
        return fn(k2, pp, qq, S.sample_drafts(k1, qq, replacement=False), **options)[1] >= 0

    f = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, None)), in_axes=(0, 0, 0)))
    keys = jax.random.split(jax.random.key(7), p.shape[0] * draws).reshape(p.shape[0], draws)
    return float(jnp.mean(f(keys, p, qs))), f"Monte Carlo, {draws} draws per position"


def bench(vocab: int, ks: list[int], batch: int, repeats: int, small_vocab: int) -> dict[str, Any]:
    rows = []
    for k in ks:
        for replacement in (True, False):
            p, qs, drafts = positions(vocab, batch, k, seed=k, replacement=replacement)
            for name, fn, options in LARGE:
                if options.get("replacement", True) != replacement:
                    continue
                row = {"scheme": name, "vocab": vocab, "k": k, "batch": batch, "options": options}
                row.update(bench_one(fn, options, p, qs, drafts, repeats))
                row["mean_acceptance_probability"], row["acceptance_method"] = acceptance(fn, options, p, qs)
                rows.append(row)
                print(f"V={vocab} K={k} {name}: {row['microseconds_per_token']:.1f} us/token, "
                      f"acceptance {row['mean_acceptance_probability']:.4f}", flush=True)
            if replacement:
                opt = jax.vmap(lambda pp, qq: A.optimal_acceptance(pp, qq, identical=True))(p, qs)
                rows.append({"scheme": "optimum (closed form)", "vocab": vocab, "k": k, "batch": batch,
                             "mean_acceptance_probability": float(jnp.mean(opt)), "acceptance_method": "exact"})
        p, qs, drafts = positions(small_vocab, batch, k, seed=100 + k, replacement=True)
        if small_vocab ** k <= S.LP_TUPLE_LIMIT:
            for name, fn, options in SMALL + LARGE[:1] + LARGE[3:5]:
                row = {"scheme": name, "vocab": small_vocab, "k": k, "batch": batch, "options": options}
                row.update(bench_one(fn, options, p, qs, drafts, repeats))
                row["mean_acceptance_probability"], row["acceptance_method"] = acceptance(fn, options, p, qs)
                rows.append(row)
                print(f"V={small_vocab} K={k} {name}: {row['microseconds_per_token']:.1f} us/token, "
                      f"acceptance {row['mean_acceptance_probability']:.4f}", flush=True)
    return {"vocab": vocab, "small_vocab": small_vocab, "ks": ks, "batch": batch, "repeats": repeats,
            "positions": "target logits 3*Gumbel; draft = softmax((logits + N(0,1)) / 1.5)", "rows": rows}


def table(res: dict[str, Any]) -> str:
    header = ["V", "K", "scheme", "us / token", "first call s", "mean P(accept)"]
    rows = []
    for r in res["rows"]:
        us = r.get("microseconds_per_token")
        rows.append([r["vocab"], r["k"], r["scheme"], "-" if us is None else f"{us:.1f}",
                     "-" if us is None else f"{r['first_call_seconds']:.1f}",
                     f"{r['mean_acceptance_probability']:.4f}" + ("" if r["acceptance_method"] == "exact" else " (MC)")])
    return C.markdown_table(header, rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--small-vocab", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    env = C.environment()
    res = bench(args.vocab, args.k, args.batch, 3 if args.quick else 7, args.small_vocab)
    res["environment"] = env
    res["load_average_at_end"] = C.load_average()
    path = C.write_json(res, args.out or C.default_out("specdec_selection"))
    print(table(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
