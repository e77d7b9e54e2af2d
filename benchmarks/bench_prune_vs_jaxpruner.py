"""jaxrob's magnitude and N:M pruning masks against JaxPruner's on the same weights.

For each parameter tree (the freshly initialised parameters of jaxrob's
``resnet20``, ``cnn_small`` and, with ``--large``, ``preact_resnet18``) and
each pruning rule:

* ``magnitude/layer``: 80 % of every ``kernel`` leaf, per layer
  (``jaxrob.prune._magnitude.magnitude_masks(scope="layer")`` vs
  ``jaxpruner.MagnitudePruning`` with the ``uniform`` distribution);
* ``magnitude/global``: 80 % of all kernels with one threshold
  (``scope="global"`` vs ``jaxpruner.GlobalMagnitudePruning(use_normalization=False)``);
* ``magnitude/global-normalized``: the same, each layer's ``|w|`` divided by its
  L2 norm first (``normalize=True`` vs JaxPruner's default ``use_normalization=True``);
* ``nm/2:4`` and ``nm/1:4``: N:M groups along the input axis ``-2`` of every
  kernel whose input size is a multiple of 4 (``nm_masks`` vs
  ``MagnitudePruning(sparsity_type=NByM(n, 4, axis=-2))``; the first conv layer,
  with 1 or 3 input channels, is left dense in both),

it checks that the masks are identical entry for entry and times the mask
computation of both (each a single ``jax.jit`` of params -> masks, timed after
a warm-up, median of ``--repeats``; the two alternate so that machine load hits
both alike).

Tie conventions: both keep ``round(n (1 - s))`` weights per layer (round half to
even) and, in unstructured/global magnitude pruning, keep the lower flat index
among equal magnitudes, so masks agree even with ties. In N:M groups JaxPruner
keeps the *higher* index among equal magnitudes and jaxrob the lower one; a
second run on weights rounded to multiples of 1/8 (many ties) reports how many
entries then differ (expected: only in N:M, only inside tied groups). JaxPruner
also forces at least one kept weight per layer (``s = 1`` keeps one), jaxrob does
not; irrelevant at 80 %.

JaxPruner is not on PyPI here: ``fetch`` github:google-research/jaxpruner, then
``git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/jaxpruner_src`` and
``.venv/bin/pip install --no-deps /tmp/jaxpruner_src`` (plus ``ml-collections``,
which its ``__init__`` imports, also ``--no-deps``). It ran unpatched on jax
0.10.2 (it calls the deprecated ``jax.tree_map`` alias, which still exists).

Run from the repository root::

    .venv/bin/python benchmarks/bench_prune_vs_jaxpruner.py            # resnet20 + cnn_small
    .venv/bin/python benchmarks/bench_prune_vs_jaxpruner.py --large    # + preact_resnet18 (11 M weights)

Writes ``benchmarks/results/prune_vs_jaxpruner-<device>.json`` (or ``--out``) and
prints a markdown table; exits with status 1 if a magnitude mask differs at all, or an
N:M mask keeps different magnitudes in some group (not just a different one of equal
magnitudes), on the initial or on the tied weights.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import models  # noqa: E402
from jaxrob.prune._magnitude import magnitude_masks  # noqa: E402
from jaxrob.prune._masks import path_name  # noqa: E402
from jaxrob.prune._nm import nm_masks  # noqa: E402

SPARSITY = 0.8
RULES = ("magnitude/layer", "magnitude/global", "magnitude/global-normalized", "nm/2:4", "nm/1:4")


def _is_kernel_name(name: str) -> bool:
    return name.rsplit("/", 1)[-1] == "kernel"


def nm_where(m: int) -> Callable[[str, Any], bool]:
    """Kernels whose input axis (-2) is a multiple of ``m``."""
    return lambda name, x: _is_kernel_name(name) and np.ndim(x) >= 2 and np.shape(x)[-2] % m == 0


def jaxrob_fn(rule: str) -> Callable:
    """params -> masks (bool, all-True for leaves not pruned)."""
    if rule == "magnitude/layer":
        return lambda p: magnitude_masks(p, sparsity=SPARSITY, scope="layer")
    if rule == "magnitude/global":
        return lambda p: magnitude_masks(p, sparsity=SPARSITY, scope="global")
    if rule == "magnitude/global-normalized":
        return lambda p: magnitude_masks(p, sparsity=SPARSITY, scope="global", normalize=True)
    n, m = map(int, rule.split("/")[1].split(":"))
    return lambda p: nm_masks(p, n=n, m=m, where=nm_where(m))


def jaxpruner_fn(jaxpruner, rule: str) -> Callable:
    """params -> masks (uint8, ``None`` for leaves not pruned), through JaxPruner's public updaters."""
    from jaxpruner import sparsity_distributions as sd
    from jaxpruner import sparsity_types as st

    kernel_filter = lambda key, param: key[-1] == "kernel"  # noqa: E731
    if rule == "magnitude/layer":
        pruner = jaxpruner.MagnitudePruning(sparsity_distribution_fn=functools.partial(
            sd.uniform, sparsity=SPARSITY, filter_fn=kernel_filter))
    elif rule.startswith("magnitude/global"):
        pruner = jaxpruner.GlobalMagnitudePruning(sparsity=SPARSITY, filter_fn=kernel_filter,
                                                  use_normalization=rule.endswith("normalized"))
    else:
        n, m = map(int, rule.split("/")[1].split(":"))
        nm_filter = lambda key, param: key[-1] == "kernel" and param.shape[-2] % m == 0  # noqa: E731
        pruner = jaxpruner.MagnitudePruning(
            sparsity_type=st.NByM(n, m, axis=-2),
            sparsity_distribution_fn=functools.partial(sd.uniform, sparsity=1 - n / m, filter_fn=nm_filter))
    return lambda p: pruner.instant_sparsify(p)[1]


def compare(ours: Any, theirs: Any) -> dict[str, int]:
    """Entry-wise comparison; a ``None`` JaxPruner mask means "not pruned" (all kept)."""
    flat_o = jax.tree_util.tree_flatten_with_path(ours)[0]
    theirs_flat = dict(jax.tree_util.tree_flatten_with_path(theirs, is_leaf=lambda x: x is None)[0])
    differ = pruned_o = pruned_t = total = 0
    for path, mo in flat_o:
        mo = np.asarray(mo, bool)
        mt = theirs_flat.get(path)
        mt = np.ones_like(mo) if mt is None else np.asarray(mt).astype(bool)
        differ += int(np.sum(mo != mt))
        pruned_o += int(np.sum(~mo))
        pruned_t += int(np.sum(~mt))
        total += mo.size
    return {"entries": total, "differ": differ, "pruned_jaxrob": pruned_o, "pruned_jaxpruner": pruned_t}


def nm_same_up_to_ties(params: Any, ours: Any, theirs: Any, m: int) -> bool:
    """True if, in every N:M group, both masks keep the same multiset of magnitudes.

    Then the masks differ only in *which* of several equal-magnitude weights
    is kept (the tie rule), never in the magnitudes kept.
    """
    theirs_flat = dict(jax.tree_util.tree_flatten_with_path(theirs, is_leaf=lambda x: x is None)[0])
    for (path, w), mo in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(ours)):
        mt = theirs_flat.get(path)
        if mt is None:
            continue
        a = np.moveaxis(np.abs(np.asarray(w)), -2, -1)
        groups = a.reshape(-1, m)
        ko = np.moveaxis(np.asarray(mo, bool), -2, -1).reshape(-1, m)
        kt = np.moveaxis(np.asarray(mt).astype(bool), -2, -1).reshape(-1, m)
        if not np.array_equal(np.sort(np.where(ko, groups, -1), axis=1), np.sort(np.where(kt, groups, -1), axis=1)):
            return False
    return True


def param_tree(name: str) -> Any:
    return models.create(name, key=jax.random.key(0)).params


def tied(params: Any) -> Any:
    """Weights rounded to multiples of 1/8 after scaling each leaf to unit max: many exact ties."""
    return jax.tree.map(lambda w: jnp.round(8 * w / (jnp.max(jnp.abs(w)) + 1e-12)) / 8, params)


def run(model_names: list[str], repeats: int) -> dict[str, Any]:
    """Compares and times every rule on every model's initial parameters."""
    import jaxpruner

    rows = []
    for mname in model_names:
        params = param_tree(mname)
        n_weights = sum(np.size(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
                        if _is_kernel_name(path_name(p)))
        for rule in RULES:
            ours, theirs = jax.jit(jaxrob_fn(rule)), jax.jit(jaxpruner_fn(jaxpruner, rule))
            mo, mt = ours(params), theirs(params)
            agree = compare(mo, mt)
            # a float32 init of millions of weights holds a few exactly equal magnitudes in one N:M group
            agree["explained_by_tie_rule"] = (nm_same_up_to_ties(params, mo, mt, int(rule.split(":")[1]))
                                              if rule.startswith("nm/") else agree["differ"] == 0)
            tp = tied(params)
            mo_t, mt_t = ours(tp), theirs(tp)
            tie = compare(mo_t, mt_t)
            if rule.startswith("nm/"):
                tie["explained_by_tie_rule"] = nm_same_up_to_ties(tp, mo_t, mt_t, int(rule.split(":")[1]))
            else:
                tie["explained_by_tie_rule"] = tie["differ"] == 0
            (t_o, all_o), (t_t, all_t) = C.median_times(
                [lambda: jax.block_until_ready(ours(params)), lambda: jax.block_until_ready(theirs(params))],
                repeats=repeats, warmup=2)
            rows.append({"model": mname, "kernel_weights": int(n_weights), "rule": rule, **agree,
                         "differences_only_in_tie_choice": agree["explained_by_tie_rule"],
                         "differ_with_ties": tie["differ"],
                         "tie_differences_only_in_tie_choice": tie["explained_by_tie_rule"],
                         "jaxrob_ms": 1e3 * t_o, "jaxpruner_ms": 1e3 * t_t, "speedup": t_t / t_o,
                         "jaxrob_all_s": all_o, "jaxpruner_all_s": all_t})
            print(f"{mname:16s} {rule:28s} differ={agree['differ']:>6d} (tie choice only: "
                  f"{agree['explained_by_tie_rule']}), tied weights: differ={tie['differ']:>7d} (tie choice only: "
                  f"{tie['explained_by_tie_rule']})  jaxrob {1e3 * t_o:8.2f} ms  jaxpruner {1e3 * t_t:8.2f} ms  "
                  f"x{t_t / t_o:.2f}", flush=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", action="store_true", help="also preact_resnet18 (11 M kernel weights)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        import jaxpruner
    except ImportError as e:
        print(f"jaxpruner is not importable ({e}); see the module docstring for how to install it", file=sys.stderr)
        return 2
    names = ["resnet20", "cnn_small"] + (["preact_resnet18"] if args.large else [])
    result = {"benchmark": "prune_vs_jaxpruner", "sparsity": SPARSITY, "repeats": args.repeats,
              "environment": C.environment(), "jaxpruner_source": "github:google-research/jaxpruner HEAD "
              "(git archive of the fetched mirror), installed --no-deps, unpatched",
              "jaxpruner_file": jaxpruner.__file__, **run(names, args.repeats)}
    result["environment"]["load_average_at_end"] = C.load_average()
    out = args.out or C.RESULTS_DIR / f"prune_vs_jaxpruner-{C.device_slug()}.json"
    C.write_json(result, out)
    table = C.markdown_table(
        ["model", "rule", "kernel weights", "entries differing", "differing with ties", "jaxrob ms",
         "JaxPruner ms", "JaxPruner / jaxrob"],
        [[r["model"], r["rule"], r["kernel_weights"], r["differ"], r["differ_with_ties"], r["jaxrob_ms"],
          r["jaxpruner_ms"], f"{r['speedup']:.2f}x"] for r in result["rows"]])
    print(table)
    print(f"wrote {out}")
    bad = any(not (r["differences_only_in_tie_choice"] and r["tie_differences_only_in_tie_choice"])
              for r in result["rows"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
