"""jaxrob APGD against torchattacks APGD on the same weights and the same inputs.

1. trains jaxrob's ``cnn_small`` briefly on the embedded MNIST-10k (Adam 1e-3,
   batch 128, 125 steps: the training of ``bench_pgd_vs_torchattacks.py``) and
   copies the weights into its PyTorch twin (``benchmarks/torch_models.py``);
2. checks that both frameworks predict the same on the clean test inputs;
3. runs APGD-CE (L-inf, ``--steps`` iterations, default 100, 1 restart, rho
   0.75; AutoAttack's first stage) at ``--eps`` (default 0.1) on the first
   ``--n`` test digits (default 500) in batches of ``--batch`` in both:
   ``jaxrob.attacks._apgd.apgd(..., loss="ce")`` and torchattacks'
   ``APGD(norm="Linf", loss="ce", n_restarts=1, eot_iter=1, rho=0.75, seed=0)``;
   an example is robust if it is classified correctly clean and attacked. The
   random starts differ, so the two accuracies agree statistically (the check
   is a difference of at most 1 point); each framework's adversarial examples
   are also classified by the other framework's model;
4. times the whole attack of the ``n`` examples in each framework (jaxrob after
   a compile-only warm-up on one batch, which is reported separately;
   torchattacks with ``torch.set_num_threads`` = cores). torchattacks attacks
   only the examples classified correctly, jaxrob every example of a batch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_apgd_vs_torchattacks.py           # n=500, 100 steps
    .venv/bin/python benchmarks/bench_apgd_vs_torchattacks.py --n 1000 --eps 0.3

Writes ``benchmarks/results/<device>-apgd_vs_torchattacks.json`` (or ``--out``)
and prints a markdown table; exits with status 1 if a check fails. Without
torch/torchattacks only the jaxrob side runs.
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

from jaxrob.attacks._apgd import apgd  # noqa: E402

TRAIN_STEPS = 125


def jaxrob_apgd(model, variables, x, y, *, eps, steps, batch, key) -> np.ndarray:
    out = []
    for j, i in enumerate(range(0, len(x), batch)):
        out.append(np.asarray(apgd(model.apply_fn, variables, x[i:i + batch], y[i:i + batch],
                                   key=jax.random.fold_in(key, j), eps=eps, steps=steps, norm="linf",
                                   loss="ce", restarts=1, rho=0.75)))
    return np.concatenate(out)


def torchattacks_apgd(torch, torchattacks, net, x, y, *, eps, steps, batch, device) -> np.ndarray:
    from torch_models import nhwc_to_nchw
    atk = torchattacks.APGD(net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce",
                            eot_iter=1, rho=0.75)
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(nhwc_to_nchw(x[i:i + batch])).to(device)
        yb = torch.from_numpy(y[i:i + batch].astype(np.int64)).to(device)
        out.append(atk(xb, yb).detach().cpu().numpy().transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="test examples attacked")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/<device>-apgd_vs_torchattacks.json)")
    p.add_argument("--jax-only", action="store_true", help="skip the torch side even if torch is installed")
    args = p.parse_args(argv)

    setup = cnn_small_setup("apgd_vs_torchattacks", args.n, jax_only=args.jax_only, train_steps=TRAIN_STEPS)
    torch, torchattacks, res = setup["torch"], setup["torchattacks"], setup["res"]
    model, variables, lj = setup["model"], setup["variables"], setup["lj"]
    x_test, y_test = setup["x_test"], setup["y_test"]

    att: dict[str, Any] = {"attack": "APGD-CE", "norm": "linf", "eps": args.eps, "steps": args.steps,
                           "restarts": 1, "rho": 0.75, "n": args.n, "batch": args.batch}
    # Compile once on the first batch (not timed as attack time; reported).
    t0 = time.perf_counter()
    jaxrob_apgd(model, variables, x_test[:args.batch], y_test[:args.batch], eps=args.eps, steps=args.steps,
                batch=args.batch, key=jax.random.key(99))
    att["seconds_jaxrob_first_batch_incl_compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xa_j = jaxrob_apgd(model, variables, x_test, y_test, eps=args.eps, steps=args.steps, batch=args.batch,
                       key=jax.random.key(4))
    att["seconds_jaxrob"] = time.perf_counter() - t0
    att["load_average_after_jaxrob"] = C.load_average()
    att["max_linf_jaxrob"] = float(np.max(np.abs(xa_j - x_test)))
    clean_ok_j = lj.argmax(1) == y_test
    adv_j_on_j = jax_logits(model.apply_fn, variables, xa_j).argmax(1)
    att["robust_accuracy_jaxrob"] = float(np.mean(clean_ok_j & (adv_j_on_j == y_test)))
    print(f"   jaxrob APGD-CE: robust acc {att['robust_accuracy_jaxrob']:.4f} in {att['seconds_jaxrob']:.1f}s",
          flush=True)

    checks = {}
    if torch is not None:
        from torch_models import torch_twin
        device = torch.device("cuda" if jax.devices()[0].platform == "gpu" else "cpu")
        net = torch_twin("cnn_small", variables).to(device)
        lt = torch_logits(torch, net, x_test, device)
        res["clean_accuracy_torch"] = float(np.mean(lt.argmax(1) == y_test))
        res["clean_agreement"] = compare_logits(lj, lt)
        t0 = time.perf_counter()
        xa_t = torchattacks_apgd(torch, torchattacks, net, x_test, y_test, eps=args.eps, steps=args.steps,
                                 batch=args.batch, device=device)
        att["seconds_torchattacks"] = time.perf_counter() - t0
        att["load_average_after_torchattacks"] = C.load_average()
        att["max_linf_torchattacks"] = float(np.max(np.abs(xa_t - x_test)))
        clean_ok_t = lt.argmax(1) == y_test
        adv_t_on_t = torch_logits(torch, net, xa_t, device).argmax(1)
        att["robust_accuracy_torchattacks"] = float(np.mean(clean_ok_t & (adv_t_on_t == y_test)))
        att["abs_diff_points"] = 100 * abs(att["robust_accuracy_jaxrob"] - att["robust_accuracy_torchattacks"])
        att["time_ratio_jaxrob_over_torchattacks"] = att["seconds_jaxrob"] / att["seconds_torchattacks"]
        att["cross_agreement_on_torchattacks_adv"] = float(np.mean(
            jax_logits(model.apply_fn, variables, xa_t).argmax(1) == adv_t_on_t))
        att["cross_agreement_on_jaxrob_adv"] = float(np.mean(torch_logits(torch, net, xa_j, device).argmax(1)
                                                             == adv_j_on_j))
        print(f"   torchattacks APGD: robust acc {att['robust_accuracy_torchattacks']:.4f} in "
              f"{att['seconds_torchattacks']:.1f}s", flush=True)
        checks["clean_agreement>=0.999"] = res["clean_agreement"]["agreement"] >= 0.999
        checks["robust_acc_diff<=1pt"] = att["abs_diff_points"] <= 1.0
    res["apgd"] = att
    checks["linf within eps"] = (att["max_linf_jaxrob"] <= args.eps + 1e-6
                                 and att.get("max_linf_torchattacks", 0.0) <= args.eps + 1e-6)
    checks["meaningful: robust acc in (0.02, 0.98)"] = 0.02 < att["robust_accuracy_jaxrob"] < 0.98
    res["checks"] = checks

    table = C.markdown_table(
        ["model", "n", "eps", "steps", "clean acc", "pred. agreement", "APGD-CE acc jaxrob",
         "APGD-CE acc torchattacks", "jaxrob s", "torchattacks s", "time jaxrob/torchattacks"],
        [["cnn_small", args.n, f"{args.eps:g}", args.steps, f"{res['clean_accuracy_jaxrob']:.4f}",
          f"{res['clean_agreement']['agreement']:.4f}" if "clean_agreement" in res else "-",
          f"{att['robust_accuracy_jaxrob']:.4f}", f"{att.get('robust_accuracy_torchattacks', float('nan')):.4f}",
          f"{att['seconds_jaxrob']:.1f}", f"{att.get('seconds_torchattacks', float('nan')):.1f}",
          f"{att.get('time_ratio_jaxrob_over_torchattacks', float('nan')):.2f}"]])
    env = res["environment"]
    print(f"\nAPGD-CE L-inf; device {env['device_kind']}, {env['cores']} cores, jax {env['jax']}, "
          f"torch {env.get('torch', '-')}, torchattacks {env.get('torchattacks', '-')}\n")
    print(table)
    res["table_markdown"] = table
    failed = [c for c, ok in checks.items() if not ok]
    res["failed_checks"] = failed
    path = C.write_json(res, args.out or C.default_out("apgd_vs_torchattacks"))
    print(f"\nwrote {path}")
    if failed:
        print("FAILED CHECKS:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
