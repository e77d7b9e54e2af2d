"""Robustness of quantized networks: FP32 vs uniform 8/4/2-bit, ternary, binary, DBQ and BinaryRelax.

A benchmark table of clean and adversarial accuracy of weight-quantized
versions of two FP32 networks, one trained normally and one with PGD
adversarial training (PGD-AT, Madry et al.):

* **PTQ** rows: the FP32 weights quantized after training, no retraining
  (uniform symmetric per-output-channel 8/4/2-bit, ternary, binary, DBQ at its
  Lloyd-Max initialisation);
* **QAT** rows: a short fine-tuning from the FP32 weights with the quantizer in
  the forward pass and the *same loss* as the FP32 model (cross-entropy for the
  normal model, PGD-AT for the adversarially trained one): uniform 8/4/2-bit
  and ternary with the straight-through estimator, DBQ (learned branch scales,
  annealed relaxation) and BinaryRelax (relaxed weights with growing eta, then
  exact binary weights).

Every row is evaluated on the deployed model (quantized weights baked in) under
white-box L-inf attacks at ``eval_eps``: PGD (``pgd_steps`` steps of
``eval_eps / 4``, random start) and APGD-CE (Croce & Hein). Only weights are
quantized (activations stay float), so the attacks' input gradients are the
exact gradients of the quantized network -- no straight-through estimator lies
between the input and the logits, and nothing masks the gradient. Model size
counts every kernel at its bit width, plus 32-bit biases and 32-bit quantizer
scales.

Run it:

    jaxrob run quant_robustness                  # preset small: mlp on the embedded mnist10k (CPU minutes)
    jaxrob run quant_robustness --preset paper   # ResNet-20 on CIFAR-10 via TFDS

Outputs in ``runs/quant_robustness/<timestamp>/``: ``results.md`` (the table),
``results.json``, ``config.json``, ``log.txt``.

References:
  Dbouk, Sanghvi, Mehendale, Shanbhag, "DBQ: A Differentiable Branch Quantizer
  for Lightweight Deep Neural Networks", ECCV 2020, arXiv:2007.09818.
  Yin, Zhang, Lyu, Osher, Qi, Xin, "BinaryRelax: A Relaxation Approach for
  Training Deep Neural Networks with Quantized Weights", arXiv:1801.06313.
  Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711.
  Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018, arXiv:1706.06083.
  Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
  of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from experiments._common import load_splits
from jaxrob import _io, _validate, data, models, train
from jaxrob.attacks import accuracy, robust_accuracy
from jaxrob.quant._binary import binary, ternary
from jaxrob.quant._binary_relax import binary_relax_finalize, binary_relax_model
from jaxrob.quant._dbq import dbq_bits_per_weight, dbq_finalize, dbq_init_params, dbq_model, dbq_params
from jaxrob.quant._tree import is_kernel, leaf_path, quantize_params, quantized_model
from jaxrob.quant._uniform import fake_quant

NAME = "quant_robustness"
DESCRIPTION = "clean / PGD / APGD-CE accuracy and size of uniform, ternary, binary, DBQ and BinaryRelax nets"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the quantization-robustness benchmark.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``cifar10``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of the network.
      epochs: FP32 training epochs (both the normal and the PGD-AT model).
      qat_epochs: fine-tuning epochs of every QAT row except BinaryRelax.
      batch_size: training batch size.
      learning_rate: Adam learning rate of FP32 training (cosine schedule).
      qat_learning_rate: Adam learning rate of the QAT fine-tuning (cosine).
      uniform_bits: bit widths of the uniform rows.
      dbq_branches: ternary branches ``K`` of DBQ (``2K + 1`` levels).
      dbq_t_start: DBQ relaxation temperature at the start of fine-tuning.
      dbq_t_end: DBQ temperature at the end of fine-tuning.
      br_relax_epochs: BinaryRelax phase-I epochs (then one exact-binary epoch).
      br_eta0: BinaryRelax initial eta.
      br_rate: BinaryRelax growth of eta per epoch (1.05 over 80+ epochs in the
        authors' script; larger for short runs, see the presets).
      train_eps: L-inf radius of PGD-AT.
      train_steps: PGD steps of PGD-AT (step ``2.5 eps / steps``).
      eval_eps: L-inf radius of the evaluation attacks.
      pgd_steps: PGD steps (step ``eval_eps / 4``).
      apgd_steps: APGD-CE iterations.
      eval_examples: test examples evaluated (0 = all).
      train_examples: training examples used (0 = all).
      ptq: include the post-training-quantization rows.
      regimes: FP32 training regimes, a subset of ``("normal", "PGD-AT")``.
      seed: seed of initialisation, data order and attacks.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "mlp"
    epochs: int = 4
    qat_epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    qat_learning_rate: float = 3e-4
    uniform_bits: tuple[int, ...] = (8, 4, 2)
    dbq_branches: int = 2
    dbq_t_start: float = 2.0
    dbq_t_end: float = 200.0
    br_relax_epochs: int = 1
    br_eta0: float = 1.0
    br_rate: float = 20.0
    train_eps: float = 0.1
    train_steps: int = 7
    eval_eps: float = 0.1
    pgd_steps: int = 20
    apgd_steps: int = 50
    eval_examples: int = 1000
    train_examples: int = 0
    ptq: bool = True
    regimes: tuple[str, ...] = ("normal", "PGD-AT")
    seed: int = 0

    def validate(self) -> None:
        """Raises ``ValueError``/``TypeError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        for name in ("epochs", "qat_epochs", "batch_size", "dbq_branches", "train_steps", "pgd_steps",
                     "apgd_steps", "br_relax_epochs"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        for name in ("eval_examples", "train_examples", "seed"):
            _validate.number(name, getattr(self, name), min=0, integer=True)
        for name in ("learning_rate", "qat_learning_rate", "dbq_t_start", "dbq_t_end", "br_eta0"):
            _validate.number(name, getattr(self, name), min=0, min_inclusive=False)
        _validate.number("br_rate", self.br_rate, min=1)
        for name in ("train_eps", "eval_eps"):
            _validate.number(name, getattr(self, name), min=0, max=1)
        if not isinstance(self.uniform_bits, tuple) or not self.uniform_bits:
            raise TypeError(f"uniform_bits must be a non-empty tuple of ints, got {self.uniform_bits!r}")
        for b in self.uniform_bits:
            _validate.number("uniform_bits entry", b, min=2, max=16, integer=True)
        if not isinstance(self.regimes, tuple) or not self.regimes:
            raise TypeError(f"regimes must be a non-empty tuple, got {self.regimes!r}")
        for r in self.regimes:
            _validate.choice("regimes entry", r, ("normal", "PGD-AT"))


PRESETS = {
    # CPU minutes: an MLP (784-256-256-10) on the embedded 8k/2k MNIST split; FP32 4 epochs, QAT 2 epochs
    # (BinaryRelax: 1 relaxed epoch at eta = 20, then 1 exact-binary epoch), eps = 0.1, 1,000 test digits.
    "small": Config(),
    # CIFAR-10 ResNet-20: FP32 and PGD-AT (eps 8/255, 10 steps of 2/255) 100 epochs, QAT 30 epochs; BinaryRelax
    # 20 relaxed epochs with eta x1.2 per epoch (eta ~ 38 at the end, as 1.05^75 in the authors' 80-epoch run).
    "paper": Config(dataset="cifar10", model="resnet20", epochs=100, qat_epochs=30, batch_size=128,
                    learning_rate=1e-3, qat_learning_rate=3e-4, br_relax_epochs=29, br_rate=1.13,
                    train_eps=8 / 255, train_steps=10, eval_eps=8 / 255, pgd_steps=20, apgd_steps=100,
                    eval_examples=0),
}

# No paper reports this table (the source notes that such a benchmark is missing), so there is
# no paper column.
PAPER: dict[str, Any] = {}

_COLUMNS = ("clean", "pgd", "apgd")


# ------------------------------------------------------------------------------------------------------------
# Quantizers of the rows: weight transforms (params -> params) with their gradient rules.


def _uniform(bits: int) -> Callable[[jax.Array], jax.Array]:
    return lambda w: fake_quant(w, bits=bits, axis=-1)  # per output channel, abs-max, STE inside the range


def _ternary_ste(w: jax.Array) -> jax.Array:
    return ternary(w)  # TWN: threshold 0.7 mean|w|, identity STE


def _binary_ste(w: jax.Array) -> jax.Array:
    return binary(w)  # mean|w| sign(w), identity STE


def _bake(model: models.Model, fn: Callable[[jax.Array], jax.Array]) -> models.Model:
    params = quantize_params(model.params, lambda w: jax.lax.stop_gradient(fn(w)))
    return dataclasses.replace(model, variables={**model.variables, "params": params})


def _size_bits(model: models.Model, bits_per_weight: float | None, scales_per_kernel: Callable[[jax.Array], int]) -> int:
    """Kernels at ``bits_per_weight`` (None = 32) + their 32-bit scales; every other leaf at 32 bits."""
    total = 0

    def count(path, leaf):
        nonlocal total
        if is_kernel(leaf_path(path), leaf) and bits_per_weight is not None:
            total += int(math.ceil(bits_per_weight * leaf.size)) + 32 * scales_per_kernel(leaf)
        else:
            total += 32 * leaf.size
        return leaf

    jax.tree_util.tree_map_with_path(count, model.params)
    return total


def _distinct_levels(model: models.Model) -> int:
    """Largest number of distinct values in one output channel of one kernel (a sanity check of the rows)."""
    worst = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(model.params)[0]:
        if is_kernel(leaf_path(path), leaf):
            a = np.asarray(leaf).reshape(-1, leaf.shape[-1])
            worst = max(worst, max(len(np.unique(a[:, j])) for j in range(min(a.shape[1], 8))))
    return worst


# ------------------------------------------------------------------------------------------------------------


def _context(ctx: Any) -> Any:
    """Accepts the CLI's RunContext or a bare output folder (then logs to stdout)."""
    if hasattr(ctx, "run_dir"):
        return ctx
    from jaxrob.cli import RunContext
    run_dir = pathlib.Path(ctx)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"jaxrob.{NAME}")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.setLevel(logging.INFO)
        log.propagate = False
    return RunContext(run_dir=run_dir, resume=False, progress=False, log=log)


def _evaluate(config: Config, model: models.Model, x, y, key) -> dict[str, float]:
    eps = config.eval_eps
    k_pgd, k_apgd = jax.random.split(key)
    out = {"clean": accuracy(model.apply_fn, model.variables, x, y, batch_size=500)}
    out["pgd"] = robust_accuracy(model.apply_fn, model.variables, x, y, epsilons=[eps], key=k_pgd, attack="pgd",
                                 batch_size=500, progress=False, steps=config.pgd_steps,
                                 step_size=eps / 4)[float(eps)]
    out["apgd"] = robust_accuracy(model.apply_fn, model.variables, x, y, epsilons=[eps], key=k_apgd,
                                  attack="apgd", batch_size=500, progress=False,
                                  steps=config.apgd_steps)[float(eps)]
    return out


def run(config: Config, ctx: Any) -> dict:
    """Trains the two FP32 models, builds every quantized row, evaluates, writes ``results.md``."""
    config.validate()
    ctx = _context(ctx)
    log = ctx.log
    t_run = time.perf_counter()
    train_ds, test_ds = load_splits(config)
    x_test, y_test = data.as_arrays(test_ds, limit=config.eval_examples or None)
    log.info(f"data: {config.dataset} train {len(train_ds)}, evaluation on {len(y_test)} test examples")
    key = jax.random.key(config.seed)
    k_init, k_train, k_qat, k_eval = jax.random.split(key, 4)
    steps_per_epoch = len(train_ds) // config.batch_size
    base = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                         key=k_init)
    losses = {"normal": train.cross_entropy(),
              "PGD-AT": train.pgd_at(config.train_eps, steps=config.train_steps)}
    losses = {r: losses[r] for r in config.regimes}

    def fit(model, loss, epochs, lr, k, seed):
        state, hist = train.fit(model, train_ds, loss=loss, epochs=epochs, batch_size=config.batch_size, key=k,
                                seed=seed, optimizer={"name": "adam", "learning_rate": lr, "schedule": "cosine"},
                                progress=ctx.progress)
        return state.variables(), hist

    rows: dict[str, dict[str, dict[str, Any]]] = {}
    times: dict[str, float] = {}
    n_eval = 0
    for b, (regime, loss) in enumerate(losses.items()):
        t0 = time.perf_counter()
        log.info(f"[{regime}] FP32 training: {config.model} ({base.num_params():,} parameters), "
                 f"{config.epochs} epochs")
        variables, _ = fit(base, loss, config.epochs, config.learning_rate, jax.random.fold_in(k_train, b),
                           config.seed)
        fp32 = dataclasses.replace(base, variables=variables)
        times[f"{regime} FP32"] = time.perf_counter() - t0
        qat_key = jax.random.fold_in(k_qat, b)
        kfold = lambda i: jax.random.fold_in(qat_key, i)  # noqa: E731
        candidates: list[tuple[str, str, Callable[[], tuple[models.Model, int]]]] = []
        n_kernels_scale = lambda w: w.shape[-1]  # noqa: E731  per-channel scales
        one = lambda w: 1  # noqa: E731
        k = config.dbq_branches

        candidates.append(("FP32", "-", lambda: (fp32, _size_bits(fp32, None, one))))
        if config.ptq:
            for bits in config.uniform_bits:
                candidates.append((f"uniform {bits}-bit", "PTQ", lambda bits=bits: (
                    _bake(fp32, _uniform(bits)), _size_bits(fp32, bits, n_kernels_scale))))
            candidates.append(("ternary (TWN)", "PTQ", lambda: (_bake(fp32, _ternary_ste), _size_bits(fp32, 2, one))))
            candidates.append(("binary", "PTQ", lambda: (_bake(fp32, _binary_ste), _size_bits(fp32, 1, one))))

            def dbq_ptq():
                scales = dbq_init_params(fp32.params, branches=k)
                q = dataclasses.replace(fp32, variables={**fp32.variables,
                                                         "params": dbq_params(fp32.params, scales)})
                return q, _size_bits(fp32, dbq_bits_per_weight(k), lambda w: k)
            candidates.append((f"DBQ K={k}", "PTQ", dbq_ptq))

        def qat_fixed(fn, i):
            def build():
                v, _ = fit(quantized_model(fp32, fn), loss, config.qat_epochs, config.qat_learning_rate, kfold(i),
                           config.seed + 1)
                return _bake(dataclasses.replace(fp32, variables=v), fn)
            return build

        for i, bits in enumerate(config.uniform_bits):
            candidates.append((f"uniform {bits}-bit", "QAT", lambda i=i, bits=bits: (
                qat_fixed(_uniform(bits), 10 + i)(), _size_bits(fp32, bits, n_kernels_scale))))
        candidates.append(("ternary (TWN)", "QAT", lambda: (qat_fixed(_ternary_ste, 20)(), _size_bits(fp32, 2, one))))

        def dbq_qat():
            wrapped = dbq_model(fp32, total_steps=config.qat_epochs * steps_per_epoch, branches=k,
                                t_start=config.dbq_t_start, t_end=config.dbq_t_end)
            v, _ = fit(wrapped, loss, config.qat_epochs, config.qat_learning_rate, kfold(30), config.seed + 1)
            return dbq_finalize(fp32, v), _size_bits(fp32, dbq_bits_per_weight(k), lambda w: k)
        candidates.append((f"DBQ K={k}", "QAT", dbq_qat))

        def br_qat():
            wrapped = binary_relax_model(fp32, steps_per_epoch=steps_per_epoch, relax_epochs=config.br_relax_epochs,
                                         eta0=config.br_eta0, rate=config.br_rate)
            v, _ = fit(wrapped, loss, config.br_relax_epochs + 1, config.qat_learning_rate, kfold(40),
                       config.seed + 1)
            return binary_relax_finalize(fp32, v), _size_bits(fp32, 1, one)
        candidates.append(("BinaryRelax (binary)", "QAT", br_qat))

        rows[regime] = {}
        for j, (name, how, build) in enumerate(candidates):
            t0 = time.perf_counter()
            model, size = build()
            t_build = time.perf_counter() - t0
            res = _evaluate(config, model, x_test, y_test, jax.random.fold_in(k_eval, 100 * b + j))
            n_eval = len(y_test)
            res.update(size_bits=size, build_seconds=t_build, eval_seconds=time.perf_counter() - t0 - t_build,
                       levels=_distinct_levels(model) if name != "FP32" else None)
            rows[regime][f"{name} [{how}]"] = res
            log.info(f"  [{regime}] {name:<22} {how:<3}: clean {100 * res['clean']:.2f}%, "
                     f"PGD {100 * res['pgd']:.2f}%, APGD-CE {100 * res['apgd']:.2f}%, size {size / 8e3:.1f} kB "
                     f"({t_build:.1f} s build, {res['eval_seconds']:.1f} s eval)")
    wall = time.perf_counter() - t_run
    _io.write_text(ctx.run_dir / "results.md", _markdown(config, rows, n_eval, wall))
    return {"eval_examples": n_eval, "rows": rows, "train_seconds": times, "wall_seconds": wall, "paper": PAPER}


def _markdown(config: Config, rows: dict, n_eval: int, wall: float) -> str:
    eps = config.eval_eps
    lines = [
        f"# quant_robustness: weight-quantized {config.model} on {config.dataset}",
        "",
        f"Accuracy (%) on {n_eval} test examples, clean and under white-box L-inf attacks at eps={eps:g} on the "
        f"deployed (weight-quantized) network: PGD-{config.pgd_steps} (step eps/4, random start) and "
        f"APGD-CE-{config.apgd_steps}. Only weights are quantized, so the attack gradients are exact (no STE between "
        "input and logits). Size: kernels at their bit width + 32-bit biases and scales.",
        "",
    ]
    for regime, table in rows.items():
        fp = table.get("FP32 [-]", {})
        lines += [f"## {regime} FP32 model, then quantized", "",
                  "| weights | how | clean | PGD | APGD-CE | size (kbit) | x smaller | max levels/channel |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in table.items():
            label, how = name.rsplit(" [", 1)
            ratio = fp.get("size_bits", r["size_bits"]) / r["size_bits"]
            levels = "-" if r["levels"] is None else str(r["levels"])
            lines.append(f"| {label} | {how.rstrip(']')} | {100 * r['clean']:.2f} | {100 * r['pgd']:.2f} | "
                         f"{100 * r['apgd']:.2f} | {r['size_bits'] / 1e3:.1f} | {ratio:.1f} | {levels} |")
        lines.append("")
    at_step = 2.5 * config.train_eps / config.train_steps
    lines += [
        f"FP32: {config.epochs} epochs, Adam {config.learning_rate:g} (cosine), batch {config.batch_size}; PGD-AT: "
        f"eps={config.train_eps:g}, {config.train_steps} steps of {at_step:.4g}. QAT: {config.qat_epochs} epochs "
        f"from the FP32 weights, Adam {config.qat_learning_rate:g} (cosine), the FP32 model's own loss. Uniform: "
        "symmetric, per output channel, abs-max scale, STE. Ternary: TWN (threshold 0.7 mean|w|, STE). DBQ: "
        f"K={config.dbq_branches} ternary branches ({2 * config.dbq_branches + 1} levels, stored as "
        f"{dbq_bits_per_weight(config.dbq_branches)}-bit indices), scales learned, temperature "
        f"{config.dbq_t_start:g} -> {config.dbq_t_end:g}. BinaryRelax: {config.br_relax_epochs} relaxed epoch(s) "
        f"(eta0={config.br_eta0:g}, x{config.br_rate:g} per epoch), then 1 exact-binary epoch; binary Q = "
        "mean|w| sign(w). PTQ: the FP32 weights quantized without retraining (DBQ at its Lloyd-Max init).",
        "",
        "No paper reports this table, so there is no paper column.",
        "",
        f"Wall time: {wall:.0f} s.",
        "",
    ]
    return "\n".join(lines)
