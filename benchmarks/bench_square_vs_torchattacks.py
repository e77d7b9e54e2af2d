"""jaxrob Square Attack against torchattacks' Square on the same weights and the same inputs.

1. trains jaxrob's ``cnn_small`` briefly on the embedded MNIST-10k (Adam 1e-3,
   batch 128, 125 steps: the training of ``bench_pgd_vs_torchattacks.py``) and
   copies the weights into its PyTorch twin (``benchmarks/torch_models.py``);
2. checks that both frameworks predict the same on the clean test inputs;
3. for each norm (default L-inf at ``--eps-linf`` 0.1 and L2 at ``--eps-l2`` 1.5)
   runs the Square Attack with the margin loss, ``p_init`` 0.8 and ``--queries``
   queries (default 1000) on the first ``--n`` test digits (default 500) in
   batches of ``--batch``: ``jaxrob.attacks._square.square`` and torchattacks'
   ``Square(n_queries=..., p_init=0.8, loss="margin", n_restarts=1, seed=0)``.
   An example is robust if it is classified correctly clean and attacked. The
   random draws differ (and torchattacks draws one window per batch where
   jaxrob draws one per example), so the two accuracies agree statistically:
   the check is a difference of at most ``--tolerance`` points (default 5:
   at n=500 the standard error of the difference of two independent
   accuracies near 0.85 is 2.3 points, and near 0.5 it is 3.2). Each
   framework's adversarial examples are also classified by the other
   framework's model;
4. times the whole attack of the ``n`` examples in each framework (jaxrob after
   a compile-only warm-up on one batch, reported separately; torchattacks with
   ``torch.set_num_threads`` = cores). torchattacks drops fooled examples from
   its batch and stops when all are fooled; jaxrob queries the whole batch at
   every step (fooled examples are masked) and skips a step only once the
   whole batch is fooled.

Run from the repository root::

    .venv/bin/python benchmarks/bench_square_vs_torchattacks.py            # n=500, 1000 queries
    .venv/bin/python benchmarks/bench_square_vs_torchattacks.py --norms linf --queries 5000

Writes ``benchmarks/results/<device>-square_vs_torchattacks.json`` (or
``--out``) and prints a markdown table; exits with status 1 if a check fails.
Without torch/torchattacks only the jaxrob side runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from bench_pgd_vs_torchattacks import cnn_small_setup, compare_logits, jax_logits, torch_logits  # noqa: E402

from jaxrob.attacks._square import square  # noqa: E402

TRAIN_STEPS = 125
P_INIT = 0.8


def jaxrob_square(model, variables, x, y, *, norm, eps, queries, batch, key) -> np.ndarray:
    out = []
    for j, i in enumerate(range(0, len(x), batch)):
        out.append(np.asarray(square(model.apply_fn, variables, x[i:i + batch], y[i:i + batch],
                                     key=jax.random.fold_in(key, j), eps=eps, queries=queries,
                                     norm=norm, p_init=P_INIT, loss="margin")))
    return np.concatenate(out)


def torchattacks_square(torch, torchattacks, net, x, y, *, norm, eps, queries, batch, device) -> np.ndarray:
    from torch_models import nhwc_to_nchw
    atk = torchattacks.Square(net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=queries,
                              n_restarts=1, p_init=P_INIT, loss="margin", resc_schedule=True, seed=0)
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(nhwc_to_nchw(x[i:i + batch])).to(device)
        yb = torch.from_numpy(y[i:i + batch].astype(np.int64)).to(device)
        out.append(atk(xb, yb).detach().cpu().numpy().transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(out))


def _dist(d: np.ndarray, norm: str) -> float:
    d = d.reshape(len(d), -1).astype(np.float64)
    return float(np.max(np.abs(d)) if norm == "linf" else np.max(np.sqrt((d ** 2).sum(1))))


def run_norm(norm, eps, args, model, variables, x_test, y_test, lj, torch, torchattacks, net, lt,
             device) -> dict[str, Any]:
    att: dict[str, Any] = {"attack": "Square", "norm": norm, "eps": eps, "queries": args.queries,
                           "p_init": P_INIT, "loss": "margin", "restarts": 1, "n": args.n, "batch": args.batch}
    t0 = time.perf_counter()
    jaxrob_square(model, variables, x_test[:args.batch], y_test[:args.batch], norm=norm, eps=eps,
                  queries=args.queries, batch=args.batch, key=jax.random.key(99))
    att["seconds_jaxrob_first_batch_incl_compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xa_j = jaxrob_square(model, variables, x_test, y_test, norm=norm, eps=eps, queries=args.queries,
                         batch=args.batch, key=jax.random.key(4))
    att["seconds_jaxrob"] = time.perf_counter() - t0
    att["load_average_after_jaxrob"] = C.load_average()
    att["max_dist_jaxrob"] = _dist(xa_j - x_test, norm)
    clean_ok_j = lj.argmax(1) == y_test
    adv_j_on_j = jax_logits(model.apply_fn, variables, xa_j).argmax(1)
    att["robust_accuracy_jaxrob"] = float(np.mean(clean_ok_j & (adv_j_on_j == y_test)))
    print(f"   jaxrob Square {norm}: robust acc {att['robust_accuracy_jaxrob']:.4f} in "
          f"{att['seconds_jaxrob']:.1f}s", flush=True)
    checks = {}
    if torch is not None:
        t0 = time.perf_counter()
        xa_t = torchattacks_square(torch, torchattacks, net, x_test, y_test, norm=norm, eps=eps,
                                   queries=args.queries, batch=args.batch, device=device)
        att["seconds_torchattacks"] = time.perf_counter() - t0
        att["load_average_after_torchattacks"] = C.load_average()
        att["max_dist_torchattacks"] = _dist(xa_t - x_test, norm)
        clean_ok_t = lt.argmax(1) == y_test
        adv_t_on_t = torch_logits(torch, net, xa_t, device).argmax(1)
        att["robust_accuracy_torchattacks"] = float(np.mean(clean_ok_t & (adv_t_on_t == y_test)))
        att["abs_diff_points"] = 100 * abs(att["robust_accuracy_jaxrob"] - att["robust_accuracy_torchattacks"])
        att["time_ratio_jaxrob_over_torchattacks"] = att["seconds_jaxrob"] / att["seconds_torchattacks"]
        att["cross_agreement_on_torchattacks_adv"] = float(np.mean(
            jax_logits(model.apply_fn, variables, xa_t).argmax(1) == adv_t_on_t))
        att["cross_agreement_on_jaxrob_adv"] = float(np.mean(torch_logits(torch, net, xa_j, device).argmax(1)
                                                             == adv_j_on_j))
        print(f"   torchattacks Square {norm}: robust acc {att['robust_accuracy_torchattacks']:.4f} in "
              f"{att['seconds_torchattacks']:.1f}s", flush=True)
        checks[f"{norm}: robust_acc_diff<={args.tolerance:g}pt"] = att["abs_diff_points"] <= args.tolerance
    checks[f"{norm}: within eps"] = (att["max_dist_jaxrob"] <= eps * (1 + 1e-5)
                                     and att.get("max_dist_torchattacks", 0.0) <= eps * (1 + 1e-5))
    checks[f"{norm}: meaningful: robust acc in (0.02, 0.98)"] = 0.02 < att["robust_accuracy_jaxrob"] < 0.98
    att["checks"] = checks
    return att


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="test examples attacked")
    p.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    p.add_argument("--eps-linf", type=float, default=0.1)
    p.add_argument("--eps-l2", type=float, default=1.5)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--tolerance", type=float, default=5.0, help="allowed robust-accuracy gap, points")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/<device>-square_vs_torchattacks.json)")
    p.add_argument("--jax-only", action="store_true", help="skip the torch side even if torch is installed")
    args = p.parse_args(argv)

    setup = cnn_small_setup("square_vs_torchattacks", args.n, jax_only=args.jax_only, train_steps=TRAIN_STEPS)
    torch, torchattacks, res = setup["torch"], setup["torchattacks"], setup["res"]
    model, variables, lj = setup["model"], setup["variables"], setup["lj"]
    x_test, y_test = setup["x_test"], setup["y_test"]

    net = lt = device = None
    checks: dict[str, bool] = {}
    if torch is not None:
        from torch_models import torch_twin
        device = torch.device("cuda" if jax.devices()[0].platform == "gpu" else "cpu")
        net = torch_twin("cnn_small", variables).to(device)
        lt = torch_logits(torch, net, x_test, device)
        res["clean_accuracy_torch"] = float(np.mean(lt.argmax(1) == y_test))
        res["clean_agreement"] = compare_logits(lj, lt)
        checks["clean_agreement>=0.999"] = res["clean_agreement"]["agreement"] >= 0.999

    res["square"] = {}
    eps_of = {"linf": args.eps_linf, "l2": args.eps_l2}
    for norm in args.norms:
        att = run_norm(norm, eps_of[norm], args, model, variables, x_test, y_test, lj, torch, torchattacks,
                       net, lt, device)
        checks.update(att.pop("checks"))
        res["square"][norm] = att
    res["checks"] = checks

    rows = []
    for norm, att in res["square"].items():
        rows.append(["cnn_small", args.n, norm, f"{att['eps']:g}", args.queries,
                     f"{res['clean_accuracy_jaxrob']:.4f}",
                     f"{res['clean_agreement']['agreement']:.4f}" if "clean_agreement" in res else "-",
                     f"{att['robust_accuracy_jaxrob']:.4f}",
                     f"{att.get('robust_accuracy_torchattacks', float('nan')):.4f}",
                     f"{att['seconds_jaxrob']:.1f}", f"{att.get('seconds_torchattacks', float('nan')):.1f}",
                     f"{att.get('time_ratio_jaxrob_over_torchattacks', float('nan')):.2f}"])
    table = C.markdown_table(
        ["model", "n", "norm", "eps", "queries", "clean acc", "pred. agreement", "Square acc jaxrob",
         "Square acc torchattacks", "jaxrob s", "torchattacks s", "time jaxrob/torchattacks"], rows)
    env = res["environment"]
    print(f"\nSquare Attack (margin loss, p_init {P_INIT}); device {env['device_kind']}, {env['cores']} cores, "
          f"jax {env['jax']}, torch {env.get('torch', '-')}, torchattacks {env.get('torchattacks', '-')}\n")
    print(table)
    res["table_markdown"] = table
    failed = [c for c, ok in checks.items() if not ok]
    res["failed_checks"] = failed
    path = C.write_json(res, args.out or C.default_out("square_vs_torchattacks"))
    print(f"\nwrote {path}")
    if failed:
        print("FAILED CHECKS:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
