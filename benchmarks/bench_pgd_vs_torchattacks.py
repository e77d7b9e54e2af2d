"""jaxrob PGD against torchattacks PGD on the same weights and the same inputs.

For each model (``cnn_small`` on MNIST, ``resnet20`` on CIFAR-shaped inputs) it

1. trains the jaxrob model briefly (plain Adam, cross-entropy) so that accuracies
   mean something, and copies the weights into the PyTorch twin
   (``benchmarks/torch_models.py``);
2. checks both frameworks predict the same on clean inputs (agreement >= 99.9 %,
   the largest logit difference is reported);
3. runs PGD-20 L-inf with a uniform random start in both (``eps`` 0.1 on MNIST,
   2/255 on CIFAR shapes -- at 8/255 the briefly trained, undefended resnet20
   keeps about 1% accuracy, which would make the comparison vacuous; step
   ``2.5 * eps / 20`` in both) on the same inputs and asserts that the robust
   accuracies differ by at most 1 point; adversarial examples are also
   cross-evaluated (each framework's on the other's model);
4. times PGD-20 at batch 128 (``eps`` 0.1 on MNIST, 8/255 on CIFAR shapes):
   jaxrob's ``pgd`` (jitted, after warm-up, ``block_until_ready``) and
   torchattacks' ``PGD`` with ``torch.set_num_threads`` set to the cores
   available, run in turn, median of the repeats.

The resnet20 data: no CIFAR-10 is available offline, so it is trained and
attacked on the embedded MNIST-10k digits put in CIFAR shape (2-pixel border,
grey replicated to RGB); predictions are also compared on uniform-random
32x32x3 inputs.

Run from the repository root::

    .venv/bin/python benchmarks/bench_pgd_vs_torchattacks.py            # full
    .venv/bin/python benchmarks/bench_pgd_vs_torchattacks.py --quick    # fewer examples/repeats

Writes ``benchmarks/results/<device>-pgd_vs_torchattacks.json`` (or ``--out``)
and prints a markdown table. Exits with status 1 if a check fails. Without
torch/torchattacks (or with JAX on a GPU that torch cannot use) only the jaxrob
side runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from jaxrob import attacks, models  # noqa: E402

PGD_STEPS = 20
THROUGHPUT_BATCH = 128
EVAL_BATCH = 250

SETTINGS = {
    # eps of the accuracy comparison and of the timing, training steps (batch 128, Adam 1e-3),
    # examples compared (full, quick).
    "cnn_small": {"eps": 0.1, "eps_speed": 0.1, "train_steps": 125, "n": 2000, "n_quick": 1000,
                  "shape": (28, 28, 1)},
    # At 8/255 the briefly trained, undefended resnet20 keeps ~1% accuracy, which would make the
    # comparison vacuous; 2/255 leaves a non-trivial robust accuracy. Timing uses 8/255 (the
    # cost of PGD does not depend on eps).
    "resnet20": {"eps": 2 / 255, "eps_speed": 8 / 255, "train_steps": 150, "n": 1000, "n_quick": 1000,
                 "shape": (32, 32, 3)},
}


def train_briefly(model: models.Model, x: np.ndarray, y: np.ndarray, *, steps: int, key: jax.Array,
                  batch_size: int = 128, lr: float = 1e-3) -> tuple[Any, float]:
    """Adam on mean cross-entropy with train-mode forward passes; returns ``(variables, seconds)``."""
    opt = optax.adam(lr)

    @jax.jit
    def step(params, stats, opt_state, xb, yb, k):
        def loss_fn(p):
            logits, new_stats = model.train_apply({"params": p, "batch_stats": stats}, xb, key=k)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new_stats
        (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    params, stats = model.variables["params"], model.variables["batch_stats"]
    opt_state = opt.init(params)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(steps * batch_size // len(x) + 1)])
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        params, stats, opt_state, loss = step(params, stats, opt_state, x[idx], y[idx],
                                              jax.random.fold_in(key, i))
        if (i + 1) % 50 == 0:
            print(f"   step {i + 1}/{steps}: loss {float(loss):.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    jax.block_until_ready(params)
    return {"params": params, "batch_stats": stats}, time.perf_counter() - t0


def jax_logits(apply_fn, variables, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    f = jax.jit(apply_fn)
    return np.concatenate([np.asarray(f(variables, x[i:i + batch])) for i in range(0, len(x), batch)])


def torch_logits(torch, net, x: np.ndarray, device, batch: int = EVAL_BATCH) -> np.ndarray:
    from torch_models import nhwc_to_nchw
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net(torch.from_numpy(nhwc_to_nchw(x[i:i + batch])).to(device)).cpu().numpy())
    return np.concatenate(out)


def compare_logits(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {
        "n": int(len(a)),
        "agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "max_abs_logit_diff": float(np.max(np.abs(a - b))),
        "max_abs_logit": float(np.max(np.abs(a))),
    }


def jaxrob_pgd_batches(model, variables, x, y, *, eps, key) -> np.ndarray:
    out = []
    for j, i in enumerate(range(0, len(x), EVAL_BATCH)):
        out.append(np.asarray(attacks.pgd(model.apply_fn, variables, x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH],
                                          key=jax.random.fold_in(key, j), eps=eps, steps=PGD_STEPS,
                                          step_size=2.5 * eps / PGD_STEPS, norm="linf", init="uniform")))
    return np.concatenate(out)


def torchattacks_pgd_batches(torch, torchattacks, net, x, y, *, eps, device) -> np.ndarray:
    from torch_models import nhwc_to_nchw
    atk = torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / PGD_STEPS, steps=PGD_STEPS, random_start=True)
    out = []
    for i in range(0, len(x), EVAL_BATCH):
        xb = torch.from_numpy(nhwc_to_nchw(x[i:i + EVAL_BATCH])).to(device)
        yb = torch.from_numpy(y[i:i + EVAL_BATCH].astype(np.int64)).to(device)
        out.append(atk(xb, yb).detach().cpu().numpy().transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(out))


def throughput(model, variables, shape, *, eps, repeats, torch=None, torchattacks=None, net=None,
               device=None) -> dict[str, Any]:
    """PGD-20 images/s at batch 128 for jaxrob (and torchattacks if given)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(THROUGHPUT_BATCH, *shape)).astype(np.float32)
    y = rng.integers(0, 10, THROUGHPUT_BATCH).astype(np.int32)
    xj, yj = jax.device_put(x), jax.device_put(y)
    key = jax.random.key(3)
    counter = iter(range(10**9))

    def run_jax():
        attacks.pgd(model.apply_fn, variables, xj, yj, key=jax.random.fold_in(key, next(counter)), eps=eps,
                    steps=PGD_STEPS, step_size=2.5 * eps / PGD_STEPS).block_until_ready()

    fns = [run_jax]
    if torch is not None:
        from torch_models import nhwc_to_nchw
        atk = torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / PGD_STEPS, steps=PGD_STEPS, random_start=True)
        xt = torch.from_numpy(nhwc_to_nchw(x)).to(device)
        yt = torch.from_numpy(y.astype(np.int64)).to(device)

        def run_torch():
            atk(xt, yt)
            if device.type == "cuda":
                torch.cuda.synchronize()

        fns.append(run_torch)
    timed = C.median_times(fns, repeats=repeats, warmup=2)
    (t_jax, times_jax) = timed[0]
    res = {"batch": THROUGHPUT_BATCH, "steps": PGD_STEPS, "eps": eps, "repeats": repeats,
           "jaxrob_seconds": times_jax, "jaxrob_images_per_s": THROUGHPUT_BATCH / t_jax}
    if torch is not None:
        t_torch, times_torch = timed[1]
        res.update({"torchattacks_seconds": times_torch, "torchattacks_images_per_s": THROUGHPUT_BATCH / t_torch,
                    "ratio_jaxrob_over_torchattacks": t_torch / t_jax})
    res["load_average_after"] = C.load_average()
    return res


def run_model(name: str, args, torch, torchattacks) -> dict[str, Any]:
    s = SETTINGS[name]
    eps, shape = s["eps"], s["shape"]
    n = s["n_quick"] if args.quick else s["n"]
    x_train, y_train, source = C.mnist10k("train")
    x_test, y_test, test_source = C.mnist10k("test")
    if name == "resnet20":
        x_train, x_test = C.mnist_as_cifar(x_train), C.mnist_as_cifar(x_test)
        source += " in CIFAR shape (zero border to 32x32, grey to RGB)"
        test_source += " in CIFAR shape"
    x_test, y_test = x_test[:n], y_test[:n]
    print(f"\n== {name}: training {s['train_steps']} steps on {source} ...", flush=True)
    model = models.create(name, num_classes=10, key=jax.random.key(0))
    variables, train_s = train_briefly(model, x_train, y_train, steps=s["train_steps"], key=jax.random.key(1))
    lj = jax_logits(model.apply_fn, variables, x_test)
    res: dict[str, Any] = {
        "model": name, "params": models.count_params(variables["params"]), "train_data": source,
        "eval_data": f"first {n} of {test_source}",
        "train": {"steps": s["train_steps"], "batch": 128, "optimizer": "adam(1e-3)", "seconds": train_s},
        "clean_accuracy_jaxrob": float(np.mean(lj.argmax(1) == y_test)),
    }
    print(f"   trained in {train_s:.1f}s; clean accuracy (jaxrob) {res['clean_accuracy_jaxrob']:.4f}", flush=True)

    net = device = None
    if torch is not None:
        from torch_models import torch_twin
        device = torch.device("cuda" if jax.devices()[0].platform == "gpu" else "cpu")
        net = torch_twin(name, variables).to(device)
        lt = torch_logits(torch, net, x_test, device)
        res["clean_accuracy_torch"] = float(np.mean(lt.argmax(1) == y_test))
        res["clean_agreement"] = compare_logits(lj, lt)
        if name == "resnet20":
            xr = np.random.default_rng(2).uniform(size=(n, *shape)).astype(np.float32)
            res["random_input_agreement"] = compare_logits(jax_logits(model.apply_fn, variables, xr),
                                                           torch_logits(torch, net, xr, device))
        print(f"   clean agreement {res['clean_agreement']}", flush=True)

    # PGD-20 robust accuracy on the same inputs.
    t0 = time.perf_counter()
    xa_j = jaxrob_pgd_batches(model, variables, x_test, y_test, eps=eps, key=jax.random.key(4))
    pgd = {"eps": eps, "steps": PGD_STEPS, "step_size": 2.5 * eps / PGD_STEPS, "init": "uniform", "n": n,
           "seconds_jaxrob": time.perf_counter() - t0}
    pgd["max_linf_jaxrob"] = float(np.max(np.abs(xa_j - x_test)))
    # Robust = correct on the clean input and on the adversarial one (as jaxrob.attacks.robust_accuracy counts).
    clean_ok_j = lj.argmax(1) == y_test
    adv_j_on_j = jax_logits(model.apply_fn, variables, xa_j).argmax(1)
    pgd["robust_accuracy_jaxrob"] = float(np.mean(clean_ok_j & (adv_j_on_j == y_test)))
    if torch is not None:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        xa_t = torchattacks_pgd_batches(torch, torchattacks, net, x_test, y_test, eps=eps, device=device)
        pgd["seconds_torchattacks"] = time.perf_counter() - t0
        pgd["max_linf_torchattacks"] = float(np.max(np.abs(xa_t - x_test)))
        clean_ok_t = lt.argmax(1) == y_test
        adv_t_on_t = torch_logits(torch, net, xa_t, device).argmax(1)
        pgd["robust_accuracy_torchattacks"] = float(np.mean(clean_ok_t & (adv_t_on_t == y_test)))
        pgd["abs_diff_points"] = 100 * abs(pgd["robust_accuracy_jaxrob"] - pgd["robust_accuracy_torchattacks"])
        # Adversarial inputs sit near decision boundaries: a strict test that the two models are one.
        adv_t_on_j = jax_logits(model.apply_fn, variables, xa_t).argmax(1)
        adv_j_on_t = torch_logits(torch, net, xa_j, device).argmax(1)
        pgd["cross_agreement_on_torchattacks_adv"] = float(np.mean(adv_t_on_j == adv_t_on_t))
        pgd["cross_agreement_on_jaxrob_adv"] = float(np.mean(adv_j_on_t == adv_j_on_j))
    res["pgd"] = pgd
    print(f"   PGD-20: {pgd}", flush=True)

    res["throughput"] = throughput(model, variables, shape, eps=s["eps_speed"], repeats=2 if args.quick else 5,
                                   torch=torch, torchattacks=torchattacks, net=net, device=device)
    print(f"   throughput: {res['throughput']}", flush=True)

    checks = {}
    if torch is not None:
        checks["clean_agreement>=0.999"] = res["clean_agreement"]["agreement"] >= 0.999
        if "random_input_agreement" in res:
            checks["random_input_agreement>=0.999"] = res["random_input_agreement"]["agreement"] >= 0.999
        checks["robust_acc_diff<=1pt"] = pgd["abs_diff_points"] <= 1.0
    acc = res["clean_accuracy_jaxrob"]
    checks["meaningful: clean acc >= 0.5 and robust acc in (0.02, 0.98)"] = (
        acc >= 0.5 and 0.02 < pgd["robust_accuracy_jaxrob"] < 0.98)
    checks["linf within eps"] = pgd["max_linf_jaxrob"] <= eps + 1e-6 and pgd.get("max_linf_torchattacks", 0) <= eps + 1e-6
    res["checks"] = checks
    return res


def _eps_str(eps: float) -> str:
    """``8/255`` for multiples of 1/255, else the number."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and eps < 1 and round(k) > 0 else f"{eps:.4g}"


def cnn_small_setup(benchmark: str, n: int, *, jax_only: bool, train_steps: int) -> dict[str, Any]:
    """The common start of the attack peer benchmarks on ``cnn_small``.

    Imports torch/torchattacks (unless ``jax_only``, or JAX is on a GPU torch
    cannot use), trains ``cnn_small`` for ``train_steps`` Adam steps on the
    mnist10k train split (:func:`train_briefly`) and takes the first ``n`` test
    digits. Returns a dict with ``torch``, ``torchattacks``, ``res`` (the
    results record so far), ``model``, ``variables``, ``x_test``, ``y_test`` and
    ``lj`` (jaxrob's clean logits).
    """
    torch, torchattacks = (None, None) if jax_only else C.import_torch()
    if torch is not None:
        if jax.devices()[0].platform == "gpu" and not torch.cuda.is_available():
            print("[torch side skipped: JAX runs on a GPU that torch cannot use]", file=sys.stderr)
            torch = torchattacks = None
        else:
            torch.set_num_threads(C.cores())
    res: dict[str, Any] = {"benchmark": benchmark, "environment": C.environment(torch)}
    x_train, y_train, source = C.mnist10k("train")
    x_test, y_test, test_source = C.mnist10k("test")
    x_test, y_test = x_test[:n], y_test[:n]
    print(f"== cnn_small: training {train_steps} steps on {source} ...", flush=True)
    model = models.create("cnn_small", num_classes=10, key=jax.random.key(0))
    variables, train_s = train_briefly(model, x_train, y_train, steps=train_steps, key=jax.random.key(1))
    lj = jax_logits(model.apply_fn, variables, x_test)
    res.update({"model": "cnn_small", "params": models.count_params(variables["params"]), "train_data": source,
                "eval_data": f"first {n} of {test_source}",
                "train": {"steps": train_steps, "batch": 128, "optimizer": "adam(1e-3)", "seconds": train_s},
                "clean_accuracy_jaxrob": float(np.mean(lj.argmax(1) == y_test))})
    print(f"   trained in {train_s:.1f}s; clean accuracy {res['clean_accuracy_jaxrob']:.4f}", flush=True)
    return {"torch": torch, "torchattacks": torchattacks, "res": res, "model": model, "variables": variables,
            "x_test": x_test, "y_test": y_test, "lj": lj}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer examples and timing repeats")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>-pgd_vs_torchattacks.json)")
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--jax-only", action="store_true", help="skip the torch side even if torch is installed")
    args = p.parse_args(argv)

    torch, torchattacks = (None, None) if args.jax_only else C.import_torch()
    if torch is not None:
        if jax.devices()[0].platform == "gpu" and not torch.cuda.is_available():
            print("[torch side skipped: JAX runs on a GPU that torch cannot use]", file=sys.stderr)
            torch = torchattacks = None
        elif jax.devices()[0].platform not in ("cpu", "gpu"):
            print(f"[torch side skipped: JAX platform {jax.devices()[0].platform}]", file=sys.stderr)
            torch = torchattacks = None
        else:
            torch.set_num_threads(C.cores())
    results = {"benchmark": "pgd_vs_torchattacks", "quick": args.quick, "environment": C.environment(torch),
               "models": {}}
    for name in args.models:
        results["models"][name] = run_model(name, args, torch, torchattacks)

    rows = []
    for name, r in results["models"].items():
        pg, tp = r["pgd"], r["throughput"]
        rows.append([
            name, f"{pg['n']}", _eps_str(pg["eps"]),
            f"{r['clean_accuracy_jaxrob']:.4f}",
            f"{r['clean_agreement']['agreement']:.4f}" if "clean_agreement" in r else "-",
            f"{r['clean_agreement']['max_abs_logit_diff']:.2e}" if "clean_agreement" in r else "-",
            f"{pg['robust_accuracy_jaxrob']:.4f}", f"{pg.get('robust_accuracy_torchattacks', float('nan')):.4f}",
            f"{tp['jaxrob_images_per_s']:,.0f}", f"{tp.get('torchattacks_images_per_s', float('nan')):,.0f}",
            f"{tp.get('ratio_jaxrob_over_torchattacks', float('nan')):.2f}",
        ])
    table = C.markdown_table(
        ["model", "n", "eps (acc.)", "clean acc", "pred. agreement", "max |Δlogit|", "PGD-20 acc jaxrob",
         "PGD-20 acc torchattacks", "jaxrob img/s", "torchattacks img/s", "speed jaxrob/torchattacks"], rows)
    env = results["environment"]
    print(f"\nPGD-20 L-inf, batch {THROUGHPUT_BATCH} for speed; device {env['device_kind']}, {env['cores']} cores, "
          f"jax {env['jax']}, torch {env.get('torch', '-')}, torchattacks {env.get('torchattacks', '-')}\n")
    print(table)
    results["table_markdown"] = table
    failed = [f"{m}: {c}" for m, r in results["models"].items() for c, ok in r["checks"].items() if not ok]
    results["failed_checks"] = failed
    path = C.write_json(results, args.out or C.default_out("pgd_vs_torchattacks"))
    print(f"\nwrote {path}")
    if failed:
        print("FAILED CHECKS:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
