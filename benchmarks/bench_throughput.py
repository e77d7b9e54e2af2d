"""jaxrob throughput: train steps (plain and PGD adversarial training) and PGD-20.

For ``cnn_small`` (MNIST shapes, 28x28x1) and ``resnet20`` (CIFAR shapes,
32x32x3) at batch 128 (``--batch``) it times, after compilation and warm-up,
with ``block_until_ready``:

* ``train_ce``: one :func:`jaxrob.train.make_train_step` step with
  :func:`jaxrob.train.cross_entropy` (SGD, momentum 0.9);
* ``train_pgd_at``: the same step with :func:`jaxrob.train.pgd_at` (L-inf PGD-10
  inner attack, eps 0.3 on MNIST shapes and 8/255 on CIFAR shapes);
* ``pgd20``: :func:`jaxrob.attacks.pgd`, 20 L-inf steps, uniform random start
  (eps 0.1 on MNIST shapes, 8/255 on CIFAR shapes);

and reports images/s (median over the repeats) and the first call's time
(compilation included). Inputs are uniform-random images with random labels:
throughput does not depend on their values.

Run from the repository root::

    .venv/bin/python benchmarks/bench_throughput.py            # full
    .venv/bin/python benchmarks/bench_throughput.py --quick    # fewer repeats

Writes ``benchmarks/results/<device>-throughput.json`` (or ``--out``) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import attacks, models, train  # noqa: E402

SETTINGS = {
    "cnn_small": {"shape": (28, 28, 1), "eps_attack": 0.1, "eps_train": 0.3},
    "resnet20": {"shape": (32, 32, 3), "eps_attack": 8 / 255, "eps_train": 8 / 255},
}
ATTACK_STEPS, AT_STEPS = 20, 10


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    (median, times), = C.median_times([fn], repeats=repeats, warmup=1)
    return {"first_call_seconds": first, "median_seconds": median, "seconds": times}


def train_step_bench(model: models.Model, loss: train.Loss, x, y, repeats: int) -> dict[str, Any]:
    opt = train.make_optimizer("sgd", learning_rate=0.01, momentum=0.9)
    step = train.make_train_step(model.apply_fn, model.train_apply, opt, loss)
    state = train.TrainState.create(model.variables["params"], opt, key=jax.random.key(0),
                                    batch_stats=model.variables["batch_stats"])
    key = jax.random.key(1)
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], metrics = step(holder["state"], x, y, jax.random.fold_in(key, holder["i"]))
        holder["i"] += 1
        jax.block_until_ready(metrics)

    return _timed(run, repeats)


def attack_bench(model: models.Model, x, y, eps: float, repeats: int) -> dict[str, Any]:
    key = jax.random.key(2)
    counter = iter(range(10**9))

    def run():
        attacks.pgd(model.apply_fn, model.variables, x, y, key=jax.random.fold_in(key, next(counter)), eps=eps,
                    steps=ATTACK_STEPS, step_size=2.5 * eps / ATTACK_STEPS).block_until_ready()

    return _timed(run, repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer timing repeats")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>-throughput.json)")
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    repeats = 3 if args.quick else 10

    results: dict[str, Any] = {"benchmark": "throughput", "quick": args.quick, "batch": args.batch,
                               "environment": C.environment(), "models": {}}
    rows = []
    for name in args.models:
        s = SETTINGS[name]
        model = models.create(name, num_classes=10, key=jax.random.key(0))
        rng = np.random.default_rng(0)
        x = jax.device_put(rng.uniform(size=(args.batch, *s["shape"])).astype(np.float32))
        y = jax.device_put(rng.integers(0, 10, args.batch).astype(np.int32))
        benches = {
            "train_ce": lambda: train_step_bench(model, train.cross_entropy(), x, y, repeats),
            "train_pgd_at": lambda: train_step_bench(
                model, train.pgd_at(s["eps_train"], steps=AT_STEPS), x, y, max(2, repeats // 2)),
            "pgd20": lambda: attack_bench(model, x, y, s["eps_attack"], max(2, repeats // 2)),
        }
        res = {"params": model.num_params(), "input_shape": list(s["shape"]),
               "eps_attack": s["eps_attack"], "eps_train": s["eps_train"], "pgd_at_steps": AT_STEPS}
        for what, fn in benches.items():
            print(f"{name} {what} ...", flush=True)
            r = fn()
            r["images_per_s"] = args.batch / r["median_seconds"]
            res[what] = r
            print(f"   {r['images_per_s']:,.1f} images/s (first call {r['first_call_seconds']:.2f}s)", flush=True)
        res["load_average_after"] = C.load_average()
        results["models"][name] = res
        rows.append([name, f"{res['params']:,}", f"{res['train_ce']['images_per_s']:,.1f}",
                     f"{res['train_pgd_at']['images_per_s']:,.1f}", f"{res['pgd20']['images_per_s']:,.1f}",
                     f"{res['train_ce']['first_call_seconds']:.1f}"])
    table = C.markdown_table(["model", "params", "train step (CE) img/s", f"PGD-{AT_STEPS} AT step img/s",
                              f"PGD-{ATTACK_STEPS} attack img/s", "CE step first call (s)"], rows)
    env = results["environment"]
    print(f"\njaxrob throughput, batch {args.batch}; device {env['device_kind']}, {env['cores']} cores, "
          f"jax {env['jax']}\n")
    print(table)
    results["table_markdown"] = table
    path = C.write_json(results, args.out or C.default_out("throughput"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
