"""How the form of the PGD loop affects its speed: ``lax.fori_loop`` vs unrolled vs a Python loop.

Times 20 L-inf PGD steps on ``resnet20`` (batch 128, CIFAR shapes) written as

* a Python loop calling a jitted input-gradient function 20 times;
* one jitted ``lax.fori_loop`` over the 20 steps (the form jaxrob's attack uses);
* the same ``fori_loop`` with ``unroll=True``;
* ``jaxrob.attacks.pgd`` itself;

and reports the first call (compilation included) and the median of the
following calls. On XLA:CPU the rolled loop was measured several times slower
than the other forms (see ``README.md``); on a GPU they are close.

    .venv/bin/python benchmarks/probe_attack_loop.py [--model resnet20] [--repeats 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import attacks, models  # noqa: E402

STEPS, BATCH = 20, 128


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=["cnn_small", "resnet20"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    shape = (28, 28, 1) if args.model == "cnn_small" else (32, 32, 3)
    eps = 0.1 if args.model == "cnn_small" else 8 / 255
    alpha = 2.5 * eps / STEPS
    model = models.create(args.model, num_classes=10, key=jax.random.key(0))
    v = model.variables
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.uniform(size=(BATCH, *shape)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 10, BATCH).astype(np.int32))

    def loss(xa, v):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply_fn(v, xa), y).sum()

    def step(x0, xa, v):
        xa = xa + alpha * jnp.sign(jax.grad(loss)(xa, v))
        return jnp.clip(jnp.clip(xa, x0 - eps, x0 + eps), 0.0, 1.0)

    jit_step = jax.jit(step)

    def python_loop(x0, v):
        xa = x0
        for _ in range(STEPS):
            xa = jit_step(x0, xa, v)
        return xa

    rolled = jax.jit(lambda x0, v: lax.fori_loop(0, STEPS, lambda i, xa: step(x0, xa, v), x0))
    unrolled = jax.jit(lambda x0, v: lax.fori_loop(0, STEPS, lambda i, xa: step(x0, xa, v), x0, unroll=True))

    def jaxrob_pgd(x0, v):
        return attacks.pgd(model.apply_fn, v, x0, y, key=jax.random.key(0), eps=eps, steps=STEPS, step_size=alpha)

    forms = {"python loop of jitted steps": python_loop, "lax.fori_loop (rolled)": rolled,
             "lax.fori_loop(unroll=True)": unrolled, "jaxrob.attacks.pgd": jaxrob_pgd}
    res = {"benchmark": "probe_attack_loop", "model": args.model, "batch": BATCH, "steps": STEPS,
           "environment": C.environment(), "forms": {}}
    rows = []
    for name, f in forms.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, v))
        first = time.perf_counter() - t0
        (median, times), = C.median_times([lambda: jax.block_until_ready(f(x, v))], repeats=args.repeats, warmup=0)
        res["forms"][name] = {"first_call_seconds": first, "median_seconds": median, "seconds": times}
        rows.append([name, f"{first:.2f}", f"{median:.3f}", f"{BATCH / median:,.1f}"])
        print(f"{name}: first {first:.2f}s, then {median:.3f}s", flush=True)
    table = C.markdown_table(["PGD-20 loop form", "first call (s)", "median (s)", "images/s"], rows)
    print(f"\n{args.model}, batch {BATCH}, device {C.device_kind()}\n\n{table}")
    res["table_markdown"] = table
    path = C.write_json(res, args.out or C.default_out(f"probe_attack_loop-{args.model}"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
