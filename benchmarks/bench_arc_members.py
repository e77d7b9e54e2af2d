"""ARC cost per iteration against the number of members M, vmapped vs Python loops over members.

One ARC iteration sweeps the M members; each member step takes one forward and
``C - 1`` backward passes of that member (its closest linearised boundary) and
one forward pass of the whole ensemble (the acceptance test), so an iteration
does about ``M (C + M)`` member passes: the work itself grows faster than
linearly in M. What the implementation controls is how well those passes use
the hardware. Three forms of the same algorithm, checked to return the same
``x_adv``:

* ``arc``: :func:`jaxrob.attacks.arc`: one jit; iterations and the member sweep
  are ``lax.fori_loop`` s; a member is sliced from the stacked params with a
  dynamic index; the acceptance test evaluates all members with one ``vmap``.
* ``loop_jit``: one jit, but the members are a Python list: the sweep and the
  acceptance sum are Python loops unrolled at trace time (what a port without
  ``vmap`` compiles to); iterations are a ``lax.fori_loop``.
* ``loop_host``: the structure of the authors' PyTorch code: Python loops over
  iterations, members and the acceptance sum on the host, each member's
  boundary search, step and prediction a separately jitted call.

For M in {2, 4, 8} (alpha uniform; members of one architecture with independent
random initialisations, which is all the timing needs) it reports seconds per
ARC iteration (median over repeats, after a compile-and-warm-up call), per
member step, and relative to M = 2.

Run from the repository root::

    .venv/bin/python benchmarks/bench_arc_members.py            # mlp, batch 128, K = 5
    .venv/bin/python benchmarks/bench_arc_members.py --quick    # fewer repeats

Writes ``benchmarks/results/arc_members-<device>-<model>.json`` (or ``--out``)
and prints a markdown table.
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
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import ensembles, models  # noqa: E402
from jaxrob.attacks._arc import _Config, _bcast, _closest_boundary, _local_candidate, arc  # noqa: E402
from jaxrob.attacks._pgd import _projector  # noqa: E402

SETTINGS = {"mlp": {"shape": (28, 28, 1), "eps": 0.1}, "cnn_small": {"shape": (28, 28, 1), "eps": 0.1},
            "resnet20": {"shape": (32, 32, 3), "eps": 8 / 255}}


def _accuracy_loop(apply_fn, plist, alpha, xa, y):
    return sum(alpha[i] * (jnp.argmax(apply_fn(p, xa), -1) == y).astype(jnp.float32) for i, p in enumerate(plist))


@functools.lru_cache(maxsize=None)
def _loop_jit_fn(apply_fn, order: tuple[int, ...], steps: int, eps: float, norm: str):
    cfg = _Config(steps=steps, norm=norm, top_g=None, clip=(0.0, 1.0))

    @jax.jit
    def run(plist, x, y, alpha):
        eta, rho = jnp.float32(eps), jnp.float32(0.05 * eps)
        project = _projector(x, jnp.float32(eps), norm, cfg.clip)

        def iteration(_, carry):
            x_min, acc_min = carry
            d_loc, acc_loc = jnp.zeros_like(x), acc_min
            for pos, i in enumerate(order):
                zeta, w = _closest_boundary(apply_fn, plist[i], x_min + d_loc, cfg)
                cand = _local_candidate(zeta, w, d_loc, pos > 0, eta, rho, norm)
                acc = _accuracy_loop(apply_fn, plist, alpha, project(x_min + cand), y)
                d_loc = jnp.where(_bcast(acc <= acc_loc, x.ndim), cand, d_loc)
                acc_loc = jnp.minimum(acc, acc_loc)
            x_new = project(x_min + d_loc)
            acc = _accuracy_loop(apply_fn, plist, alpha, x_new, y)
            return jnp.where(_bcast(acc <= acc_min, x.ndim), x_new, x_min), jnp.minimum(acc, acc_min)

        return lax.fori_loop(0, steps, iteration, (x, _accuracy_loop(apply_fn, plist, alpha, x, y)))[0]

    return run


def loop_jit(apply_fn, plist, x, y, alpha, *, eps, steps, norm="linf"):
    """ARC with the members as a Python list, unrolled at trace time, in one jit (compiled once per M)."""
    order = tuple(int(i) for i in np.flip(np.argsort(np.asarray(alpha), kind="stable")))
    return _loop_jit_fn(apply_fn, order, steps, float(eps), norm)(list(plist), x, y, alpha)


def make_loop_host(apply_fn, *, eps, norm="linf"):
    """ARC as the authors' PyTorch code is structured: host loops, one jitted call per member and step."""
    cfg = _Config(steps=1, norm=norm, top_g=None, clip=(0.0, 1.0))
    geometry = jax.jit(lambda p, pt: _closest_boundary(apply_fn, p, pt, cfg))
    candidate = jax.jit(lambda zeta, w, d, adaptive: _local_candidate(zeta, w, d, adaptive, jnp.float32(eps),
                                                                      jnp.float32(0.05 * eps), norm))
    correct = jax.jit(lambda p, xa, y: (jnp.argmax(apply_fn(p, xa), -1) == y).astype(jnp.float32))
    project = jax.jit(lambda x, xa: _projector(x, jnp.float32(eps), norm, cfg.clip)(xa))
    accept = jax.jit(lambda ok, new, old: jnp.where(_bcast(ok, new.ndim), new, old))

    def run(plist, x, y, alpha, steps):
        alpha_h = np.asarray(alpha)
        order = np.flip(np.argsort(alpha_h, kind="stable"))

        def acc(xa):
            return sum(float(alpha_h[i]) * correct(p, xa, y) for i, p in enumerate(plist))

        x_min, acc_min = x, acc(x)
        for _ in range(steps):
            d_loc, acc_loc = jnp.zeros_like(x), acc_min
            for pos, i in enumerate(order):
                zeta, w = geometry(plist[i], x_min + d_loc)
                cand = candidate(zeta, w, d_loc, pos > 0)
                a = acc(project(x, x_min + cand))
                d_loc, acc_loc = accept(a <= acc_loc, cand, d_loc), jnp.minimum(a, acc_loc)
            x_new = project(x, x_min + d_loc)
            a = acc(x_new)
            x_min, acc_min = accept(a <= acc_min, x_new, x_min), jnp.minimum(a, acc_min)
        return x_min

    return run


def bench(model_name: str, members: list[int], batch: int, steps: int, repeats: int) -> dict[str, Any]:
    s = SETTINGS[model_name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, *s["shape"])).astype(np.float32))
    base = models.create(model_name, input_shape=s["shape"], key=jax.random.key(0))
    logits = base.apply_fn(base.variables, x)
    y = jnp.argmax(logits, -1).astype(jnp.int32)  # member 0 is right everywhere: something to attack
    c = logits.shape[-1]
    host = make_loop_host(base.apply_fn, eps=s["eps"])
    out = []
    for m in members:
        plist = [base.variables] + [models.create(model_name, input_shape=s["shape"], key=jax.random.key(i)).variables
                                    for i in range(1, m)]
        stacked = ensembles.stack(plist)
        alpha = jnp.full((m,), 1.0 / m, jnp.float32)
        fns = {
            "arc": lambda: arc(ensembles.Members(base.apply_fn, unroll=False), stacked, x, y, alpha=alpha,
                               eps=s["eps"], steps=steps).block_until_ready(),
            "loop_jit": lambda: loop_jit(base.apply_fn, plist, x, y, alpha, eps=s["eps"],
                                         steps=steps).block_until_ready(),
            "loop_host": lambda: host(plist, x, y, alpha, steps).block_until_ready(),
        }
        first, results = {}, {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = np.asarray(fn())
            first[name] = time.perf_counter() - t0
        agree = {name: float(np.max(np.abs(r - results["arc"]))) for name, r in results.items()}
        timed = C.median_times(list(fns.values()), repeats=repeats, warmup=0)
        row = {"members": m, "first_call_seconds": first, "max_abs_diff_to_arc": agree,
               "member_passes_per_iteration": m * (c + m)}
        for name, (median, times) in zip(fns, timed):
            row[name] = {"seconds_per_iteration": median / steps, "seconds": times}
        out.append(row)
        print(f"M={m}: " + ", ".join(f"{n} {row[n]['seconds_per_iteration'] * 1e3:.1f} ms/it" for n in fns)
              + f"; max |diff| to arc {max(agree.values()):.1e}", flush=True)
    return {"model": model_name, "batch": batch, "steps": steps, "repeats": repeats, "eps": s["eps"],
            "norm": "linf", "rows": out}


def table(res: dict[str, Any]) -> str:
    base = {n: res["rows"][0][n]["seconds_per_iteration"] for n in ("arc", "loop_jit", "loop_host")}
    rows = []
    for r in res["rows"]:
        m = r["members"]
        cells = [m, r["member_passes_per_iteration"]]
        for n in ("arc", "loop_jit", "loop_host"):
            t = r[n]["seconds_per_iteration"]
            cells += [f"{1e3 * t:.1f}", f"{1e3 * t / m:.1f}", f"{t / base[n]:.2f}x"]
        cells += [f"{r['loop_host']['seconds_per_iteration'] / r['arc']['seconds_per_iteration']:.2f}"]
        rows.append(cells)
    header = ["M", "~member passes / it", "arc ms/it", "arc ms/member", "arc vs M=2",
              "loop_jit ms/it", "loop_jit ms/member", "loop_jit vs M=2",
              "loop_host ms/it", "loop_host ms/member", "loop_host vs M=2", "loop_host / arc"]
    return C.markdown_table(header, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=sorted(SETTINGS))
    p.add_argument("--members", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="ARC iterations per timed call")
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 5")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    env = C.environment()
    res = bench(args.model, args.members, args.batch, args.steps, 3 if args.quick else 5)
    res["environment"] = env
    res["load_average_at_end"] = C.load_average()
    path = C.write_json(res, args.out or C.RESULTS_DIR / f"arc_members-{C.device_slug()}-{args.model}.json")
    print(table(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
