"""D.U.B. crossbar-attuned pruning vs unstructured magnitude pruning: accuracy, sparsity and ADC energy.

Reproduces the comparison of Ibrayev et al.: at similar sparsity, unstructured
magnitude pruning barely lowers the ADC cost of a crossbar accelerator (a
crossbar's ADCs must still resolve its densest column), while D.U.B. sparsity
-- every column of a crossbar keeping the same power-of-two number of weights
-- lowers the ADC resolution of whole crossbars and hence their ADC energy.

Pipeline (all phases through :func:`jaxrob.train.fit`):

1. **dense**: train the network (the pretrained starting point).
2. **D.U.B.** (:func:`jaxrob.prune._dub.dub_fit`): from the dense network,
   ``dub_epochs`` with the balance regularizer (strength ``dub_strength``) and
   L2 weight decay, :func:`~jaxrob.prune._dub.dub_masks`, then
   ``finetune_epochs`` with the masks fixed.
3. From the dense network, the same ``dub_epochs`` with weight decay but
   without the regularizer; then, fine-tuned like D.U.B.:

   * **D.U. (no balance regularizer)**: the same power-of-two balanced
     pruning (an ablation of the "B" regularizer);
   * **unstructured magnitude**: per-layer magnitude pruning to D.U.B.'s
     per-layer sparsity (the paper's layer-by-layer unstructured baseline, at
     matched sparsity).

Every row reports test accuracy after pruning and after fine-tuning, sparsity,
crossbars in use, the mean ADC resolution and the ADC-energy improvement over
the dense mapping (:class:`~jaxrob.prune._dub.CrossbarReport`: exponential and
linear energy-vs-resolution models, one conversion per real column of a used
crossbar per read).

Run it:

    jaxrob run dub                  # preset small: mlp on the embedded mnist10k, 64x64 crossbars (CPU ~1-2 min)
    jaxrob run dub --preset paper   # VGG-11 (BN) on CIFAR-10 via TFDS, conv layers on 64x64 crossbars

or, without the registry, ``python -c "from experiments import dub; import pathlib;
dub.run(dub.PRESETS['small'], pathlib.Path('runs/dub'))"``.

Outputs: ``results.md`` (the table), ``results.json``, ``log.txt`` (when run by
``jaxrob run``).

References:
  Ibrayev, Garg, Chakraborty, Roy, "Pruning for Improved ADC Efficiency in
  Crossbar-based Analog In-memory Accelerators", arXiv 2403.13082 (2024);
  authors' code github.com/TimurIbrayev/DUB_Sparsity_for_XBars (training
  settings of the paper preset read from its scripts and logs).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np

from experiments._common import load_splits
from jaxrob import _io, _validate, data, models, train
from jaxrob.prune._dub import balance_penalty, crossbar_report, dub_fit, dub_masks
from jaxrob.prune._magnitude import topk_mask
from jaxrob.prune._masks import apply_masks, masked_model, named_leaves, path_name, sparsity

NAME = "dub"
DESCRIPTION = "D.U.B. crossbar-attuned pruning vs unstructured magnitude pruning: accuracy, sparsity, ADC energy"


@dataclasses.dataclass(frozen=True)
class Config:
    """D.U.B. experiment settings.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``cifar10``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of the network.
      crossbar: crossbar size ``n`` (``n x n``; a power of two).
      layers: kernels mapped onto crossbars and pruned: ``conv`` (convolutions
        only, as in the paper), ``hidden`` (every kernel but the classifier) or
        ``all``.
      batch_size: batch size of every phase.
      momentum: SGD momentum of the pretraining and regularised phases.
      schedule: learning-rate schedule of every phase (``constant``, ``piecewise``, ``cosine``).
      boundaries: piecewise-schedule boundaries (fractions of a phase; x0.1 each).
      pretrain_epochs, pretrain_lr, pretrain_weight_decay: the dense network's training.
      dub_epochs, dub_lr, dub_weight_decay: the continued training, with and
        without the regularizer (L2 weight decay in both).
      dub_strength: weight of the balance regularizer.
      gate: the authors' gated regularizer gradient (only denser-than-mean
        columns are pushed sparser).
      prune_sparsity: per-layer magnitude quantile that defines "insignificant"
        weights for the D.U.B. level choice; 0 means use ``prune_tol``.
      prune_tol: absolute magnitude at or below which a weight is insignificant
        (when ``prune_sparsity`` is 0; 1e-3 in the authors' code).
      finetune_epochs, finetune_lr, finetune_momentum: fine-tuning with fixed masks.
      train_examples: training examples used (0 = the whole split).
      eval_examples: test examples evaluated (0 = the whole split).
      seed: seed of initialisation and data order.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "mlp"
    crossbar: int = 64
    layers: str = "hidden"
    batch_size: int = 128
    momentum: float = 0.9
    schedule: str = "cosine"
    boundaries: tuple[float, ...] = (0.5, 0.75)
    pretrain_epochs: int = 5
    pretrain_lr: float = 0.05
    pretrain_weight_decay: float = 5e-4
    dub_epochs: int = 4
    dub_lr: float = 0.02
    dub_weight_decay: float = 1e-3
    dub_strength: float = 0.05
    gate: bool = True
    prune_sparsity: float = 0.9
    prune_tol: float = 1e-3
    finetune_epochs: int = 4
    finetune_lr: float = 0.02
    finetune_momentum: float = 0.9
    train_examples: int = 0
    eval_examples: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raises ``ValueError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        _validate.choice("layers", self.layers, ("conv", "hidden", "all"))
        _validate.choice("schedule", self.schedule, ("constant", "piecewise", "cosine"))
        c = _validate.number("crossbar", self.crossbar, min=1, integer=True)
        if c & (c - 1):
            raise ValueError(f"crossbar must be a power of two (32, 64, 128, 256 in the paper), got {c}")
        for name in ("batch_size", "pretrain_epochs", "dub_epochs"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        for name in ("finetune_epochs", "train_examples", "eval_examples", "seed"):
            _validate.number(name, getattr(self, name), min=0, integer=True)
        for name in ("pretrain_lr", "dub_lr", "finetune_lr"):
            _validate.number(name, getattr(self, name), min=0, min_inclusive=False)
        for name in ("pretrain_weight_decay", "dub_weight_decay", "dub_strength", "prune_tol"):
            _validate.number(name, getattr(self, name), min=0)
        for name in ("momentum", "finetune_momentum"):
            _validate.number(name, getattr(self, name), min=0, max=1, max_inclusive=False)
        _validate.number("prune_sparsity", self.prune_sparsity, min=0, max=1, max_inclusive=False)
        if not isinstance(self.gate, bool):
            raise TypeError(f"gate must be a bool, got {self.gate!r}")


PRESETS = {
    # CPU minutes: the 784-256-256-10 MLP on the embedded 8k/2k MNIST split; both hidden kernels on 64x64
    # crossbars (52 + 16 crossbars), 90% of each layer's weights counted insignificant for the level choice.
    # The strength was picked among 1e-3 / 1e-2 / 5e-2 on this preset (our penalty sums over 68 crossbars of
    # an MLP; the authors' 1e-3 is for VGG-11's ~2,250 tiles and 160 epochs): 1e-2 already balances the
    # columns' relaxed L0 (penalty 459 -> 0.4 in 4 epochs), 5e-2 reaches higher sparsity at the same accuracy.
    "small": Config(),
    # The authors' CIFAR-10 VGG-11 setting (their scripts: clean training 200 epochs SGD 0.1, momentum 0.9,
    # wd 5e-4, x0.1 at epochs 50/100/150; regularised training 160 epochs from the clean model, SGD 0.01
    # (their logged runs), momentum 0.9, wd = l2reg 1e-3, lambda 1e-3, x0.1 at 50/100/150; pruning of the
    # convolution layers at tol 1e-3 on 64x64 tiles; fine-tuning 200 epochs SGD 0.01, no momentum or decay).
    # Our VGG-11 has batch norm (vgg11_bn); the authors' has none.
    "paper": Config(dataset="cifar10", model="vgg11_bn", crossbar=64, layers="conv", batch_size=128, momentum=0.9,
                    schedule="piecewise", boundaries=(0.25, 0.5, 0.75), pretrain_epochs=200, pretrain_lr=0.1,
                    pretrain_weight_decay=5e-4, dub_epochs=160, dub_lr=0.01, dub_weight_decay=1e-3,
                    dub_strength=1e-3, gate=True, prune_sparsity=0.0, prune_tol=1e-3, finetune_epochs=200,
                    finetune_lr=0.01, finetune_momentum=0.0),
}

# The paper's abstract (the full text was not retrievable when this was written): VGG11 on CIFAR-10 and
# ResNet18 on ImageNet, convolution layers, "up to 7.13x and 1.27x improvement, respectively, in ADC energy
# with less than 1% drop in accuracy".
PAPER = {"vgg11_cifar10": {"adc_improvement": 7.13, "max_accuracy_drop": 0.01},
         "resnet18_imagenet": {"adc_improvement": 1.27, "max_accuracy_drop": 0.01}}


def _where(config: Config, num_classes: int):
    """The kernels mapped onto crossbars."""
    def where(name, leaf):
        if name.rsplit("/", 1)[-1] != "kernel" or np.ndim(leaf) < 2:
            return False
        if config.layers == "conv":
            return np.ndim(leaf) >= 3
        if config.layers == "hidden":
            return np.shape(leaf)[-1] != num_classes
        return True
    return where


def _optimizer(config: Config, lr: float, weight_decay: float, momentum: float) -> dict:
    opt = {"name": "sgd", "learning_rate": lr, "momentum": momentum, "weight_decay": weight_decay,
           "schedule": config.schedule}
    if config.schedule == "piecewise":
        opt["boundaries"] = tuple(config.boundaries)
    return opt


def _magnitude_masks(params: Any, per_layer: dict[str, float], where) -> Any:
    """Per-layer unstructured magnitude masks at the given sparsities (all-True elsewhere)."""
    def mask(path, p):
        name = path_name(path)
        if name in per_layer and where(name, p):
            return topk_mask(jax.numpy.abs(p), sparsity=per_layer[name])
        return jax.numpy.ones(np.shape(p), bool)
    return jax.tree_util.tree_map_with_path(mask, params)


class _Ctx:
    """The part of :class:`jaxrob.cli.RunContext` ``run`` uses, for a plain output directory."""

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        self.resume = False
        self.progress = False
        self.log = logging.getLogger(f"jaxrob.run.dub.{self.run_dir}")
        if not self.log.handlers:
            self.log.addHandler(logging.StreamHandler())
            self.log.setLevel(logging.INFO)
            self.log.propagate = False


def _markdown(config: Config, rows: dict, dense_acc: float, n_eval: int, n_crossbars: int, seconds: float,
              layer_tables: dict, penalties: dict) -> str:
    c = config.crossbar
    sel = ("convolution kernels" if config.layers == "conv" else
           "kernels except the classifier" if config.layers == "hidden" else "kernels")
    how = (f"weights above the {100 * config.prune_sparsity:g}th percentile of |w| of their layer"
           if config.prune_sparsity else f"weights with |w| > {config.prune_tol:g}")
    lines = [
        f"# dub: D.U.B. crossbar-attuned pruning of {config.model} on {config.dataset}, {c}x{c} crossbars",
        "",
        f"Test accuracy on {n_eval} examples; dense accuracy {100 * dense_acc:.2f}%. The {sel} are mapped onto "
        f"{n_crossbars} crossbars of {c}x{c} (inputs on rows, outputs on columns; conv HWIO kernels as "
        "(Cin*KH*KW, Cout)). ADC energy improvement = dense ADC energy / pruned ADC energy, one conversion per "
        f"real column of every crossbar still in use; a crossbar needs ceil(log2 n) + {2} bits for a densest "
        f"column of n non-zeros ({int(np.log2(c)) + 2} bits dense), none when empty; energy per conversion "
        "2^bits (exp.) or bits (lin.).",
        "",
        "| method | sparsity | acc. pruned | acc. fine-tuned | crossbars used | mean ADC bits | "
        "ADC energy improvement (exp.) | (lin.) | balanced crossbars | power-of-2 columns |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        rep = r["report"]
        lines.append(
            f"| {name} | {100 * rep['sparsity']:.2f}% | {100 * r['acc_pruned']:.2f} | {100 * r['acc_finetuned']:.2f} "
            f"| {rep['crossbars_used']}/{rep['crossbars']} | {rep['mean_adc_bits']:.2f} | "
            f"{rep['adc_improvement']:.2f}x | {rep['adc_improvement_linear']:.2f}x | "
            f"{100 * rep['balanced_fraction']:.0f}% | {100 * rep['power_of_two_fraction']:.0f}% |")
    lines += [
        "",
        f"Paper (Ibrayev et al., abstract; VGG11 / CIFAR-10 and ResNet18 / ImageNet, conv layers): up to "
        f"{PAPER['vgg11_cifar10']['adc_improvement']}x and {PAPER['resnet18_imagenet']['adc_improvement']}x "
        "ADC-energy improvement with < 1% accuracy drop. The paper's table and its exact ADC energy model could "
        "not be retrieved, so its numbers are not set beside ours row by row; the exponential column is the "
        "comparable one.",
        "",
        f"Settings: dense {config.pretrain_epochs} epochs (SGD {config.pretrain_lr:g}, wd "
        f"{config.pretrain_weight_decay:g}); then {config.dub_epochs} epochs with weight decay "
        f"{config.dub_weight_decay:g} (lr {config.dub_lr:g}), with the balance regularizer (strength "
        f"{config.dub_strength:g}, {'gated' if config.gate else 'ungated'}) for D.U.B. and without it for the "
        f"other two rows; D.U.B. levels from the densest column's count of {how}; fine-tuning "
        f"{config.finetune_epochs} epochs (SGD {config.finetune_lr:g}, momentum {config.finetune_momentum:g}) "
        "with fixed masks. Unstructured magnitude is pruned per layer to D.U.B.'s per-layer sparsity. "
        f"Balance penalty (sum over crossbars of the variance of the columns' relaxed L0) after the continued "
        f"training: {penalties['dub']:.1f} with the regularizer, {penalties['no_regularizer']:.1f} without. "
        f"Wall time {seconds:.0f} s.",
        "",
        "Per-layer crossbar figures of D.U.B. (after fine-tuning, masks fixed):",
        "",
        layer_tables["D.U.B."],
        "",
    ]
    return "\n".join(lines)


def run(config: Config, ctx: Any) -> dict:
    """Trains, prunes three ways, fine-tunes, measures; writes ``results.md`` and ``results.json``.

    Args:
      config: a :class:`Config`.
      ctx: a :class:`jaxrob.cli.RunContext`, or a directory for the outputs.

    Returns:
      The results (also written to ``results.json``).
    """
    t_start = time.perf_counter()
    config.validate()
    if isinstance(ctx, (str, pathlib.Path)):
        ctx = _Ctx(pathlib.Path(ctx))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    log = ctx.log
    train_ds, test_ds = load_splits(config)
    x_test, y_test = data.as_arrays(test_ds, limit=config.eval_examples or None)
    crossbar = (config.crossbar, config.crossbar)
    where = _where(config, train_ds.num_classes)
    key = jax.random.key(config.seed)
    k_init, k_pre, k_reg, k_noreg, k_ft = jax.random.split(key, 5)
    common = {"batch_size": config.batch_size, "progress": ctx.progress}

    net = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape, key=k_init)
    selected = [n for n, _ in named_leaves(net.params, where=where)]
    if not selected:
        raise ValueError(f"layers={config.layers!r} selects no kernel of {config.model}")
    log.info(f"dub: {config.model} ({net.num_params():,} parameters); crossbar-mapped kernels: {selected}")

    def accuracy(model_fn, variables) -> float:
        return train.evaluate(model_fn, variables, x_test, y_test)

    # 1. dense
    log.info(f"dense training, {config.pretrain_epochs} epochs")
    state, _ = train.fit(net, train_ds, optimizer=_optimizer(config, config.pretrain_lr, config.pretrain_weight_decay,
                                                             config.momentum),
                         epochs=config.pretrain_epochs, key=k_pre, seed=config.seed, **common)
    dense = dataclasses.replace(net, variables=state.variables())
    dense_acc = accuracy(dense.apply_fn, dense.variables)
    log.info(f"  dense accuracy {100 * dense_acc:.2f}%")

    cont_opt = _optimizer(config, config.dub_lr, config.dub_weight_decay, config.momentum)
    ft_opt = _optimizer(config, config.finetune_lr, 0.0, config.finetune_momentum)
    prune_kw = ({"sparsity": config.prune_sparsity} if config.prune_sparsity else {"tol": config.prune_tol})
    rows: dict[str, dict] = {}
    layer_tables: dict[str, str] = {}
    penalties: dict[str, list[float]] = {}

    def measure(name, masks, pruned_vars, final_vars):
        # both variable sets hold the masked weights, so the dense apply_fn evaluates them (one compile)
        acc_pruned = accuracy(dense.apply_fn, pruned_vars)
        acc_ft = accuracy(dense.apply_fn, final_vars)
        rep = crossbar_report(final_vars["params"], crossbar=crossbar, where=where)
        rows[name] = {"acc_pruned": acc_pruned, "acc_finetuned": acc_ft, "report": rep.as_dict(),
                      "per_layer_sparsity": sparsity(masks, where=where).per_layer}
        layer_tables[name] = rep.table()
        log.info(f"{name}: sparsity {100 * rep.sparsity:.2f}%, accuracy {100 * acc_pruned:.2f}% -> "
                 f"{100 * acc_ft:.2f}%, crossbars {rep.crossbars_used}/{rep.crossbars}, ADC energy "
                 f"{rep.adc_improvement():.2f}x (exp.) {rep.adc_improvement('linear'):.2f}x (lin.)")

    # 2. D.U.B.: regularised training, power-of-two balanced pruning, fine-tuning with the masks fixed
    log.info(f"D.U.B.: {config.dub_epochs} epochs with the balance regularizer (strength {config.dub_strength:g}), "
             f"pruning, {config.finetune_epochs} epochs of fine-tuning")
    res = dub_fit(dense, train_ds, crossbar=crossbar, strength=config.dub_strength, epochs=config.dub_epochs,
                  finetune_epochs=config.finetune_epochs, batch_size=config.batch_size, key=k_reg,
                  optimizer=cont_opt, finetune_optimizer=ft_opt, gate=config.gate, where=where,
                  seed=config.seed + 1, progress=ctx.progress, **prune_kw)

    def penalty(params) -> float:
        return float(balance_penalty(params, crossbar=crossbar, where=where, gate=config.gate))

    penalties["dub_epoch_means"] = [h["balance_penalty"] for h in res.history["regularized"]]
    penalties["dub"] = penalty(res.regularized["params"])
    log.info(f"  balance penalty {penalties['dub']:.1f}, accuracy before pruning "
             f"{100 * accuracy(dense.apply_fn, res.regularized):.2f}%")
    measure("D.U.B.", res.masks, res.pruned, res.model.variables)
    per_layer = sparsity(res.masks, where=where).per_layer

    # 3. the same continued training without the regularizer, then the two baselines' masks
    log.info(f"continued training without the regularizer: {config.dub_epochs} epochs")
    # strength 0 is plain cross-entropy (the penalty is only measured, once, at the end)
    st, _ = train.fit(dense, train_ds, optimizer=cont_opt, epochs=config.dub_epochs, key=k_noreg,
                      seed=config.seed + 1, **common)
    noreg = dataclasses.replace(dense, variables=st.variables())
    penalties["no_regularizer"] = penalty(noreg.params)
    log.info(f"  balance penalty {penalties['no_regularizer']:.1f}, accuracy "
             f"{100 * accuracy(noreg.apply_fn, noreg.variables):.2f}%")
    baselines = {"D.U. (no balance regularizer)": dub_masks(noreg.params, crossbar=crossbar, where=where, **prune_kw),
                 "unstructured magnitude": _magnitude_masks(noreg.params, per_layer, where)}

    # 4. fine-tune the baselines with their masks fixed, measure
    for i, (name, m) in enumerate(baselines.items()):
        pruned = masked_model(noreg, m)
        variables = pruned.variables
        if config.finetune_epochs:
            st, _ = train.fit(pruned, train_ds, optimizer=ft_opt, epochs=config.finetune_epochs,
                              key=jax.random.fold_in(k_ft, i), seed=config.seed + 2, **common)
            variables = {**st.variables(), "params": apply_masks(st.params, m)}
        measure(name, m, pruned.variables, variables)

    seconds = time.perf_counter() - t_start
    n_crossbars = next(iter(rows.values()))["report"]["crossbars"]
    _io.write_text(ctx.run_dir / "results.md",
                   _markdown(config, rows, dense_acc, len(y_test), n_crossbars, seconds, layer_tables, penalties))
    results = {
        "eval_examples": int(len(y_test)),
        "dense_accuracy": dense_acc,
        "rows": rows,
        "balance_penalty": penalties,
        "seconds": seconds,
        "paper": PAPER,
        "config": dataclasses.asdict(config),
    }
    _io.write_json(ctx.run_dir / "results.json", results)
    return results
