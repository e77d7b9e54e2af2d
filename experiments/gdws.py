"""GDWS: robust accuracy vs MAC reduction of a PGD-trained CNN approximated post-training.

Trains one network with PGD adversarial training, then, without any further
training, replaces its convolutions (all but the first, and never 1x1 ones, as
in the paper) by generalized depthwise-separable (GDWS) convolutions built by
the paper's two exact constructions (:mod:`jaxrob.prune._gdws`):

* **MEGO** -- minimum weighted error with every approximated layer's MACs at
  most ``budget`` times its original MACs (rows for several budgets), with the
  robustness-derived error weights ``alpha`` and, for comparison, uniform ones;
* **LEGO** -- fewest MACs with every layer's weighted error ``<= beta``
  (several ``beta``), with the robustness-derived weights (the paper's setting).

The weights ``alpha_c`` come from the model's own gradients on PGD examples of
training images (:func:`jaxrob.prune._gdws.gdws_alphas`). Every row reports the
MACs per example (approximated layers and whole model, dense layers included),
the MAC reduction, clean accuracy and accuracy under L-inf PGD on test images.

Run it:

    jaxrob run gdws                    # preset small: cnn_small on the embedded mnist10k (CPU minutes)
    jaxrob run gdws --preset paper     # VGG-16-BN on CIFAR-10 via TFDS, PGD-AT eps 8/255

or without the registry: ``python -c "from experiments import gdws as e; import pathlib;
e.run(e.PRESETS['small'], pathlib.Path('runs/gdws'))"``.

In the small preset ``cnn_small`` has two 3x3 convolutions; the first is skipped
(as in the paper), which leaves ``conv2`` (32 -> 64 channels), 78% of the
model's 4.64 M MACs per example, so the MAC reduction of the whole model is
bounded by ~4.6x. That keeps the paper's rule rather than approximating a
one-input-channel first layer, where GDWS cannot save anything (``C = 1``).

Outputs in ``runs/gdws/<timestamp>/``: ``results.md`` (the table),
``results.json``, ``checkpoints/pgd_at/``, ``log.txt``.

References:
  Dbouk & Shanbhag, "Generalized Depthwise-Separable Convolutions for
  Adversarially Robust and Efficient Neural Networks", NeurIPS 2021,
  arXiv:2110.14871 (code: github.com/hsndbk4/GDWS). Madry et al., "Towards Deep
  Learning Models Resistant to Adversarial Attacks", ICLR 2018, arXiv:1706.06083
  (PGD adversarial training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

from experiments._common import load_splits
from jaxrob import _io, _validate, attacks, data, models, train
from jaxrob.prune._gdws import channel_singular_values, gdws_alphas, gdws_approximate, weighted_error

NAME = "gdws"
DESCRIPTION = "GDWS (MEGO/LEGO) post-training approximation of a PGD-trained CNN: robust accuracy vs MACs"


@dataclasses.dataclass(frozen=True)
class Config:
    """GDWS experiment settings.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``cifar10``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of the network.
      epochs: PGD-AT epochs.
      batch_size: training batch size.
      optimizer: ``adam`` or ``sgd``.
      learning_rate: peak learning rate.
      schedule: ``constant``, ``piecewise`` or ``cosine``.
      momentum: SGD momentum.
      weight_decay: L2 weight decay on kernels.
      train_eps: L-inf radius of PGD-AT.
      train_steps: PGD steps during training.
      train_step_size: PGD step during training; 0 means ``2.5 * train_eps / train_steps``.
      alpha_examples: training examples the error weights are averaged over.
      alpha_eps: PGD radius for the error weights (the paper: the training radius).
      alpha_steps: PGD steps for the error weights.
      mego_budgets: per-layer MAC budgets of MEGO, as fractions of each layer's original MACs.
      lego_budgets: per-layer weighted-error budgets ``beta`` of LEGO (with the robust weights).
      lego_relative: if True, each ``beta`` is a fraction of the layer's total weighted energy
        ``sum_c alpha_c ||W_c||_F^2`` (our choice for the small preset: the noise-gain bound's
        absolute scale follows the model's logit margins, which a 2-epoch MNIST CNN keeps small);
        if False, ``beta`` is absolute, as in the paper.
      uniform_mego: also run MEGO with uniform weights (``alpha_c = 1``).
      eval_eps: L-inf radius of the evaluation.
      eval_steps: PGD steps of the evaluation (step ``eval_step_size``, random start).
      eval_step_size: evaluation PGD step; 0 means ``2.5 * eval_eps / eval_steps``.
      eval_examples: test examples evaluated (0 = the whole test split).
      train_examples: training examples used (0 = the whole split).
      seed: seed of initialisation, data order and attacks.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "cnn_small"
    epochs: int = 2
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_eps: float = 0.1
    train_steps: int = 5
    train_step_size: float = 0.0
    alpha_examples: int = 256
    alpha_eps: float = 0.1
    alpha_steps: int = 10
    mego_budgets: tuple[float, ...] = (0.5, 0.3, 0.2, 0.1)
    lego_budgets: tuple[float, ...] = (0.01, 0.03, 0.1, 0.2)
    lego_relative: bool = True
    uniform_mego: bool = True
    eval_eps: float = 0.1
    eval_steps: int = 20
    eval_step_size: float = 0.0
    eval_examples: int = 500
    train_examples: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raises ``ValueError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        _validate.choice("optimizer", self.optimizer, ("adam", "sgd"))
        _validate.choice("schedule", self.schedule, ("constant", "piecewise", "cosine"))
        for name in ("epochs", "batch_size", "train_steps", "alpha_examples", "alpha_steps", "eval_steps"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        for name in ("eval_examples", "train_examples", "seed"):
            _validate.number(name, getattr(self, name), min=0, integer=True)
        _validate.number("learning_rate", self.learning_rate, min=0, min_inclusive=False)
        _validate.number("momentum", self.momentum, min=0, max=1, max_inclusive=False)
        for name in ("weight_decay", "train_step_size", "eval_step_size"):
            _validate.number(name, getattr(self, name), min=0)
        for name in ("train_eps", "alpha_eps", "eval_eps"):
            _validate.number(name, getattr(self, name), min=0, max=1)
        if not self.mego_budgets and not self.lego_budgets:
            raise ValueError("name at least one budget in mego_budgets or lego_budgets")
        for b in self.mego_budgets:
            _validate.number("mego_budgets", b, min=0, min_inclusive=False)
        for b in self.lego_budgets:
            _validate.number("lego_budgets", b, min=0)
        for name in ("uniform_mego", "lego_relative"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


PRESETS = {
    # CPU minutes: cnn_small, 2 epochs of PGD-5 AT at eps 0.1 on the embedded 8k/2k split; alphas from
    # PGD-10 on 256 training digits; PGD-20 evaluation on 500 test digits.
    "small": Config(),
    # The paper's CIFAR-10 setting for a VGG-16 (robust-overfitting-style PGD-AT: SGD 0.1, momentum 0.9,
    # wd 5e-4, x0.1 at 50%/75%, eps 8/255, PGD-10 of 2/255; evaluation as in the authors' README: PGD-100
    # with step 1/255 at eps 8/255 on the whole test set). The authors' README example applies LEGO with
    # beta = 0.005 to a PreAct ResNet-18; the beta grid brackets it. The number of training images for
    # the alphas (1,000) and the epochs (200) are our choices. Use model="preact_resnet18" for ResNet-18.
    "paper": Config(dataset="cifar10", model="vgg16_bn", epochs=200, batch_size=128, optimizer="sgd",
                    learning_rate=0.1, schedule="piecewise", momentum=0.9, weight_decay=5e-4, train_eps=8 / 255,
                    train_steps=10, train_step_size=2 / 255, alpha_examples=1000, alpha_eps=8 / 255,
                    alpha_steps=10, mego_budgets=(0.5, 0.3, 0.2, 0.1), lego_budgets=(0.001, 0.002, 0.005, 0.01, 0.02),
                    lego_relative=False,
                    eval_eps=8 / 255, eval_steps=100, eval_step_size=1 / 255, eval_examples=0),
}

# The paper's result tables (CIFAR-10 VGG-16 / ResNet-18 with GDWS: clean and PGD accuracy, FPS on a
# Jetson Xavier) could not be retrieved from the material available when this experiment was written,
# so no paper numbers are printed beside ours and none are invented.
PAPER: dict[str, dict[str, float]] = {}


def _context(ctx):
    """``jaxrob run`` passes a RunContext; a bare path works too."""
    if isinstance(ctx, (str, Path)):
        run_dir = Path(ctx)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = logging.getLogger(f"jaxrob.run.{run_dir}")
        if not log.handlers:
            log.addHandler(logging.StreamHandler())
            log.setLevel(logging.INFO)
        return SimpleNamespace(run_dir=run_dir, resume=False, progress=False, log=log)
    return ctx


def _markdown(config: Config, rows: list[dict], n_eval: int, base: dict, seconds: dict) -> str:
    step = config.eval_step_size or 2.5 * config.eval_eps / config.eval_steps
    lines = [
        f"# gdws: {config.model} on {config.dataset}, PGD-AT then GDWS (no retraining)",
        "",
        f"Accuracy (%) on {n_eval} test examples, clean and under L-inf PGD-{config.eval_steps} at "
        f"eps={config.eval_eps:g} (step {step:.4g}, random start). MACs per example. `layer MACs`: the "
        "approximated convolutions together; `model MACs`: everything (dense layers and skipped convolutions "
        "included); reduction = original / GDWS. `weighted error`: sum over approximated layers of "
        "sum_c alpha_c ||W_c - W_c_hat||_F^2 with the robust alphas (the quantity LEGO bounds per layer), "
        "relative to sum_c alpha_c ||W_c||_F^2 (the error of dropping every filter)."
        + (" LEGO's beta: a fraction of that total per layer." if config.lego_relative else
           " LEGO's beta: absolute, as in the paper."),
        "",
        "| construction | budget | alpha | G | layer MACs | model MACs | MAC reduction | rel. weighted error "
        "| clean | PGD |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| original conv | - | - | {base['g_full']} | {base['layer_macs']:,} | {base['model_macs']:,} | 1.00x | 0 "
        f"| {100 * base['clean']:.2f} | {100 * base['pgd']:.2f} |",
    ]
    for r in rows:
        budget = (f"MACs <= {r['budget']:g} x" if r["method"] == "mego" else
                  f"beta = {r['budget']:g}" + (" x total" if config.lego_relative else ""))
        lines.append(
            f"| {r['method'].upper()} | {budget} | {r['alpha']} | {r['g']} | {r['layer_macs']:,} | {r['model_macs']:,} "
            f"| {r['reduction']:.2f}x | {r['relative_error']:.4f} | {100 * r['clean']:.2f} | {100 * r['pgd']:.2f} |")
    tstep = config.train_step_size or 2.5 * config.train_eps / config.train_steps
    lines += [
        "",
        f"Layers approximated: {', '.join(base['layers'])} (the first convolution and 1x1 convolutions are "
        "skipped, as in the paper). `G`: depthwise filters in all (the original row: the full-rank G at which "
        "GDWS reproduces the convolution exactly, sum_c min(M, K^2)).",
        f"Training: PGD-AT, {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} lr "
        f"{config.learning_rate:g} ({config.schedule}), eps={config.train_eps:g}, {config.train_steps} steps of "
        f"{tstep:.4g} ({seconds['train']:.0f} s). Robust alphas: PGD-{config.alpha_steps} at eps="
        f"{config.alpha_eps:g} on {config.alpha_examples} training examples ({seconds['alphas']:.0f} s). "
        f"GDWS constructions and evaluation: {seconds['gdws']:.0f} s.",
        "",
        "Paper: Dbouk & Shanbhag (NeurIPS 2021) report GDWS on PGD-trained CIFAR-10/SVHN/ImageNet networks "
        "with robust accuracy close to the original at much higher FPS; their tables could not be retrieved "
        "when this experiment was written, so no paper numbers are printed here and none are invented.",
        "",
    ]
    return "\n".join(lines)


def run(config: Config, ctx) -> dict:
    """Trains the PGD-AT model, builds the GDWS models, evaluates them and writes ``results.md``."""
    config.validate()
    ctx = _context(ctx)
    log = ctx.log
    train_ds, test_ds = load_splits(config)
    x_test, y_test = data.as_arrays(test_ds, limit=config.eval_examples or None)
    x_alpha, y_alpha = data.as_arrays(train_ds, limit=config.alpha_examples)
    key = jax.random.key(config.seed)
    k_init, k_train, k_alpha, k_eval = jax.random.split(key, 4)
    seconds = {}

    net = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                        key=k_init)
    log.info(f"PGD-AT of {config.model} ({net.num_params():,} parameters) on {config.dataset}")
    t0 = time.perf_counter()
    optimizer = {"name": config.optimizer, "learning_rate": config.learning_rate, "schedule": config.schedule,
                 "momentum": config.momentum, "weight_decay": config.weight_decay}
    state, history = train.fit(
        net, train_ds, loss=train.pgd_at(config.train_eps, steps=config.train_steps,
                                         step_size=config.train_step_size or None),
        optimizer=optimizer, epochs=config.epochs, batch_size=config.batch_size, key=k_train, seed=config.seed,
        checkpoint_dir=ctx.run_dir / "checkpoints" / "pgd_at", resume=ctx.resume, progress=ctx.progress,
        config={"experiment": NAME})
    seconds["train"] = time.perf_counter() - t0
    variables = state.variables()
    net = dataclasses.replace(net, variables=variables)

    log.info(f"error weights from PGD-{config.alpha_steps} on {len(y_alpha)} training examples")
    t0 = time.perf_counter()
    alphas = gdws_alphas(net, x_alpha, y_alpha, key=k_alpha, eps=config.alpha_eps, steps=config.alpha_steps)
    alphas = {n: np.asarray(a) for n, a in alphas.items()}
    seconds["alphas"] = time.perf_counter() - t0
    if not alphas:
        raise ValueError(f"{config.model} has no convolution GDWS can approximate (after skipping the first)")
    sigmas = {n: channel_singular_values(_leaf(variables, n)) for n in alphas}
    energy = {n: weighted_error(sigmas[n], (0,) * len(alphas[n]), alphas[n]) for n in alphas}

    eval_step = config.eval_step_size or None

    def evaluate(apply_fn, v, i):
        accs = attacks.robust_accuracy(apply_fn, v, x_test, y_test, epsilons=(0.0, config.eval_eps),
                                       key=jax.random.fold_in(k_eval, i), steps=config.eval_steps,
                                       step_size=eval_step, batch_size=250, progress=ctx.progress)
        return float(accs[0.0]), float(accs[config.eval_eps])

    t0 = time.perf_counter()
    full = gdws_approximate(net, method="mego", budget=math.inf)
    layer_names = list(alphas)
    clean, rob = evaluate(net.apply_fn, variables, 0)
    base = {"clean": clean, "pgd": rob, "layers": layer_names,
            "layer_macs": sum(full.macs.layers[n].original for n in layer_names),
            "model_macs": full.macs.original, "g_full": sum(sum(full.ranks[n]) for n in layer_names)}
    log.info(f"original: clean {100 * clean:.2f}%, PGD {100 * rob:.2f}%, {base['model_macs']:,} MACs")

    plan = [("mego", b, "robust") for b in config.mego_budgets]
    if config.uniform_mego:
        plan += [("mego", b, "uniform") for b in config.mego_budgets]
    plan += [("lego", b, "robust") for b in config.lego_budgets]
    rows = []
    for i, (method, budget, kind) in enumerate(plan, start=1):
        b = {n: budget * energy[n] for n in alphas} if method == "lego" and config.lego_relative else budget
        g = gdws_approximate(net, method=method, budget=b, alphas=alphas if kind == "robust" else None)
        clean, rob = evaluate(g.apply_fn, g.variables, i)
        err = sum(weighted_error(sigmas[n], g.ranks[n], alphas[n]) for n in g.ranks)
        row = {"method": method, "budget": float(budget), "alpha": kind, "g": sum(sum(r) for r in g.ranks.values()),
               "ranks": {n: list(r) for n, r in g.ranks.items()},
               "layer_macs": sum(g.macs.layers[n].gdws for n in g.ranks), "model_macs": g.macs.gdws,
               "reduction": g.macs.reduction, "weighted_error": float(err),
               "relative_error": float(err / sum(energy[n] for n in g.ranks)), "clean": clean, "pgd": rob}
        rows.append(row)
        log.info(f"{method} budget {budget:g} ({kind} alpha): G={row['g']}, {row['reduction']:.2f}x fewer MACs, "
                 f"clean {100 * clean:.2f}%, PGD {100 * rob:.2f}%")
    seconds["gdws"] = time.perf_counter() - t0

    _io.write_text(ctx.run_dir / "results.md", _markdown(config, rows, len(y_test), base, seconds))
    results = {"eval_examples": int(len(y_test)), "original": base, "rows": rows,
               "alphas": {n: a.tolist() for n, a in alphas.items()}, "seconds": seconds,
               "history": history, "paper": PAPER}
    if isinstance(ctx, SimpleNamespace):  # not run through `jaxrob run`, which writes results.json itself
        _io.write_json(ctx.run_dir / "results.json", {"experiment": NAME, "results": results})
    return results


def _leaf(variables, name: str):
    node = variables
    for part in name.split("/"):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node
