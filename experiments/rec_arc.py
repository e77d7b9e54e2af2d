"""ARC vs adaptive PGD on a randomized ensemble of two PGD-AT models (Dbouk & Shanbhag, ICML 2022).

A randomized ensemble classifier (REC) answers each query with member ``i``
drawn with probability ``alpha_i`` (here ``alpha = (0.9, 0.1)``, as in the
paper). Its robust accuracy is computed exactly, as the expectation over the
draw (:func:`jaxrob.ensembles.rec_robust_accuracy`), under four attacks:

* adaptive PGD on the expected loss ``sum_i alpha_i CE(f_i)`` and on the CE of
  the expected softmax (:func:`jaxrob.ensembles.rec_pgd`), as the paper's
  "APGD" baseline (K = 20, step eps / 4);
* Auto-PGD (Croce & Hein) on the CE of the expected softmax
  (``average(members, over="probs", weighted=True)``), 100 steps;
* ARC (:func:`jaxrob.attacks.arc`, K = 20, eta = eps).

Beside them: the first member alone under PGD (the single AT model). The claim
it checks: adaptive PGD overstates the REC's robustness; ARC's robust accuracy
is lower, by more than the spread over seeds (each seed trains both members
anew and re-runs every attack). Every row is reported as mean +- sample std
over ``seeds``.

Run it:

    jaxrob run rec_arc                          # preset small: mlp on the embedded mnist10k, 3 seeds
    jaxrob run rec_arc --preset paper --set data_dir=~/tensorflow_datasets   # CIFAR-10 ResNet-20

Outputs in ``runs/rec_arc/<timestamp>/``: ``results.md`` (table with the
paper's numbers beside ours), ``results.json``, ``config.json``, ``log.txt``
and ``checkpoints/seed<k>/member<i>/``.

The paper's REC is built with boosted adversarial training (BAT, Pinot et al.
2020); here both members are trained with PGD-AT from different seeds, so the
REC and its numbers are not the paper's, only the kind of comparison.

References:
  Dbouk & Shanbhag, "Adversarial Vulnerability of Randomized Ensembles", ICML
  2022, arXiv:2206.06737. Madry et al., "Towards Deep Learning Models Resistant
  to Adversarial Attacks", ICLR 2018, arXiv:1706.06083. Croce & Hein, "Reliable
  evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks", ICML 2020, arXiv:2003.01690.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments._common import load_splits
from jaxrob import _io, _validate, data, ensembles, models, train
from jaxrob.attacks import apgd, arc, pgd

NAME = "rec_arc"
DESCRIPTION = "REC of two PGD-AT models (alpha 0.9/0.1): ARC vs adaptive PGD / APGD, exact expected accuracy"

# Table 1 of the paper (CIFAR-10, ResNet-20, BAT REC with alpha = 0.9): robust accuracy (%).
PAPER = {
    "linf": {"single": 45.66, "rec_pgd": 61.10, "rec_arc": 40.71},
    "l2": {"single": 62.43, "rec_pgd": 69.21, "rec_arc": 55.44},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the REC-vs-ARC experiment.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``cifar10``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of both members.
      epochs: PGD-AT epochs per member.
      batch_size: training batch size.
      optimizer: ``adam`` or ``sgd`` (momentum 0.9, weight decay ``weight_decay``).
      learning_rate: peak learning rate (``schedule`` decay).
      schedule: ``cosine`` or ``piecewise`` (x0.1 at 50% and 75%).
      weight_decay: weight decay (kernels only).
      norm: threat model, ``linf`` or ``l2`` (training and evaluation).
      eps: radius of training and evaluation.
      train_steps: PGD steps of adversarial training.
      train_step_size: PGD-AT step (None: ``2.5 * eps / train_steps``).
      alpha: the REC's sampling probabilities (member 1, member 2).
      pgd_steps: steps of the single-model PGD and of the adaptive PGD.
      pgd_step_size: their step (None: ``eps / 4``, the paper's 2/255 at 8/255).
      pgd_objectives: adaptive-PGD objectives (rows), from ``expected_loss``, ``expected_softmax``.
      apgd_steps: Auto-PGD steps on the expected softmax (0: no APGD row).
      arc_steps: ARC iterations K.
      arc_step_size: ARC's local step eta (None: ``eps``).
      arc_top_g: None (full ARC) or ``g`` for ARC-lite.
      eval_examples: test examples evaluated (0 = the whole split).
      eval_batch: examples per attack call.
      train_examples: training examples used (0 = all; a prefix otherwise, for smoke tests).
      seeds: one full run (two members trained, every attack) per seed.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "mlp"
    epochs: int = 6
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    weight_decay: float = 0.0
    norm: str = "linf"
    eps: float = 0.2
    train_steps: int = 7
    train_step_size: float | None = None
    alpha: tuple[float, ...] = (0.9, 0.1)
    pgd_steps: int = 20
    pgd_step_size: float | None = None
    pgd_objectives: tuple[str, ...] = ("expected_loss", "expected_softmax")
    apgd_steps: int = 100
    arc_steps: int = 20
    arc_step_size: float | None = None
    arc_top_g: int | None = None
    eval_examples: int = 500
    eval_batch: int = 250
    train_examples: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)

    def validate(self) -> None:
        """Raises ``ValueError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        _validate.choice("optimizer", self.optimizer, ("adam", "sgd"))
        _validate.choice("schedule", self.schedule, ("cosine", "piecewise"))
        _validate.choice("norm", self.norm, ("linf", "l2"))
        for name in ("epochs", "batch_size", "train_steps", "pgd_steps", "arc_steps", "eval_batch"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        for name in ("apgd_steps", "eval_examples", "train_examples"):
            _validate.number(name, getattr(self, name), min=0, integer=True)
        _validate.number("learning_rate", self.learning_rate, min=0, min_inclusive=False)
        _validate.number("weight_decay", self.weight_decay, min=0)
        _validate.number("eps", self.eps, min=0, min_inclusive=False)
        for name in ("train_step_size", "pgd_step_size", "arc_step_size"):
            if getattr(self, name) is not None:
                _validate.number(name, getattr(self, name), min=0, min_inclusive=False)
        if self.arc_top_g is not None:
            _validate.number("arc_top_g", self.arc_top_g, min=1, integer=True)
        if len(self.alpha) != 2:
            raise ValueError(f"alpha must hold the probabilities of the 2 members, got {self.alpha}")
        ensembles.check_alpha(self.alpha, 2)
        for o in self.pgd_objectives:
            _validate.choice("pgd_objectives", o, ensembles.OBJECTIVES)
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for s in self.seeds:
            _validate.number("seeds", s, min=0, integer=True)


PRESETS = {
    # CPU minutes per seed: 784-256-256-10 MLPs, PGD-7 AT at eps 0.2 (6 epochs, Adam), every attack on
    # the first 500 test digits of the embedded split. Measured: 135-287 s per seed (training both members
    # 74-146 s) on the shared 2-core machine at load average 7-13.
    "small": Config(),
    # The paper's CIFAR-10 ResNet-20 L-inf setting: eps 8/255, PGD-AT (10 steps of 2/255; SGD 0.1,
    # momentum 0.9, wd 5e-4, 100 epochs, lr x0.1 at 50%/75%), alpha = (0.9, 0.1), adaptive PGD with
    # K = 20 and step 2/255, ARC with K = 20 and eta = eps, the whole test set.
    "paper": Config(dataset="cifar10", model="resnet20", epochs=100, batch_size=128, optimizer="sgd",
                    learning_rate=0.1, schedule="piecewise", weight_decay=5e-4, eps=8 / 255, train_steps=10,
                    train_step_size=2 / 255, pgd_step_size=2 / 255, eval_examples=0, eval_batch=500),
}


def _optimizer(config: Config) -> dict:
    opt = {"name": config.optimizer, "learning_rate": config.learning_rate, "schedule": config.schedule}
    if config.schedule == "piecewise":
        opt["boundaries"] = (0.5, 0.75)
    if config.weight_decay:
        opt["weight_decay"] = config.weight_decay
    return opt


def _rows(config: Config) -> list[tuple[str, str]]:
    """``(key, label)`` of the table rows, in order."""
    k, s = config.pgd_steps, config.eps
    rows = [("single_clean", "single AT model (member 1), clean"),
            ("single", f"single AT model (member 1), PGD-{k}"),
            ("rec_clean", "REC, clean")]
    for o in config.pgd_objectives:
        rows.append((f"rec_pgd_{o}", f"REC, adaptive PGD-{k} ({o.replace('_', ' ')})"))
    if config.apgd_steps:
        rows.append(("rec_apgd", f"REC, APGD-{config.apgd_steps} (CE of the expected softmax)"))
    eta = config.arc_step_size or s
    lite = "" if config.arc_top_g is None else f", lite g={config.arc_top_g}"
    rows.append(("rec_arc", f"REC, ARC-{config.arc_steps} (eta = {eta / s:g} eps{lite})"))
    return rows


def _train_member(config, base, loss, train_ds, seed, i, ctx, mesh):
    """PGD-AT of member ``i`` for ``seed``: its own initialisation, data order and attack keys.

    Every member shares ``base``'s functions (only the initial variables differ), so the
    train step and the attacks compile once per run, not once per member.
    """
    init = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                         key=jax.random.fold_in(jax.random.key(seed), 2 * i))
    net = dataclasses.replace(base, variables=init.variables)
    state, history = train.fit(
        net, train_ds, loss=loss, optimizer=_optimizer(config), epochs=config.epochs,
        batch_size=config.batch_size, seed=1000 * seed + i, key=jax.random.fold_in(jax.random.key(seed), 2 * i + 1),
        checkpoint_dir=ctx.run_dir / "checkpoints" / f"seed{seed}" / f"member{i + 1}", resume=ctx.resume,
        progress=ctx.progress, mesh=mesh, config={"experiment": NAME, "member": i + 1, "seed": seed})
    return {"params": state.params, "batch_stats": state.batch_stats}, history


def _evaluate(config: Config, apply_fn, params, x, y, key, ctx) -> dict[str, float]:
    """Every row's accuracy for one trained pair (stacked ``params``)."""
    members = ensembles.Members(apply_fn)
    alpha = jnp.asarray(config.alpha, jnp.float32)
    eps, norm = config.eps, config.norm
    pgd_step = config.pgd_step_size or eps / 4
    bs = min(config.eval_batch, len(y))
    first = jax.tree.map(lambda a: a[:1], params)
    one = jnp.ones((1,), jnp.float32)
    kw = dict(key=key, batch_size=bs, progress=ctx.progress)
    out = {}
    out["single_clean"] = ensembles.rec_accuracy(members, first, x, y, alpha=one, batch_size=bs)
    single = jax.tree.map(lambda a: a[0], params)
    out["single"] = ensembles.rec_robust_accuracy(
        members, first, x, y, alpha=one,
        attack=lambda xb, yb, k: pgd(apply_fn, single, xb, yb, key=k, eps=eps, steps=config.pgd_steps,
                                     step_size=pgd_step, norm=norm), **kw)
    out["rec_clean"] = ensembles.rec_accuracy(members, params, x, y, alpha=alpha, batch_size=bs)
    for o in config.pgd_objectives:
        out[f"rec_pgd_{o}"] = ensembles.rec_robust_accuracy(
            members, params, x, y, alpha=alpha,
            attack=lambda xb, yb, k, o=o: ensembles.rec_pgd(members, params, xb, yb, alpha=alpha, key=k, eps=eps,
                                                            steps=config.pgd_steps, step_size=pgd_step, norm=norm,
                                                            objective=o), **kw)
    if config.apgd_steps:
        avg = ensembles.average(members, over="probs", weighted=True)
        out["rec_apgd"] = ensembles.rec_robust_accuracy(
            members, params, x, y, alpha=alpha,
            attack=lambda xb, yb, k: apgd(avg, (params, alpha), xb, yb, key=k, eps=eps, steps=config.apgd_steps,
                                          norm=norm), **kw)
    out["rec_arc"] = ensembles.rec_robust_accuracy(
        members, params, x, y, alpha=alpha,
        attack=lambda xb, yb, k: arc(members, params, xb, yb, alpha=alpha, eps=eps, norm=norm,
                                     steps=config.arc_steps, step_size=config.arc_step_size,
                                     top_g=config.arc_top_g), **kw)
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _markdown(config: Config, rows, per_seed: dict[str, list[float]], n_eval: int, seconds: list[float]) -> str:
    paper = PAPER[config.norm]
    paper_of = {"single": paper["single"], "rec_arc": paper["rec_arc"],
                **{f"rec_pgd_{o}": paper["rec_pgd"] for o in config.pgd_objectives}}
    seeds = ", ".join(map(str, config.seeds))
    lines = [
        f"# rec_arc: REC of two PGD-AT {config.model} models on {config.dataset}",
        "",
        f"Robust accuracy (%) at {config.norm} eps = {config.eps:g} on {n_eval} test examples; the REC's "
        f"accuracy is its exact expectation over the member draw (alpha = {tuple(config.alpha)}). "
        f"Mean +- sample std over seeds {seeds} (each seed trains both members and runs every attack); "
        "per-seed values in brackets. The paper's column: CIFAR-10 ResNet-20, BAT REC with alpha = 0.9, "
        f"{config.norm} (Dbouk & Shanbhag 2022, Table 1).",
        "",
        "| row | ours | per seed | paper |",
        "|---|---:|---|---:|",
    ]
    for key, label in rows:
        m, s = _stats(per_seed[key])
        vals = ", ".join(f"{100 * v:.2f}" for v in per_seed[key])
        ref = f"{paper_of[key]:.2f}" if key in paper_of else ""
        lines.append(f"| {label} | {100 * m:.2f} +- {100 * s:.2f} | {vals} | {ref} |")
    pgd_keys = [k for k, _ in rows if k.startswith("rec_pgd") or k == "rec_apgd"]
    if pgd_keys:
        best = min(pgd_keys, key=lambda k: np.mean(per_seed[k]))
        gap = [p - a for p, a in zip(per_seed[best], per_seed["rec_arc"])]
        gm, gs = _stats(gap)
        spread = max(_stats(per_seed[best])[1], _stats(per_seed["rec_arc"])[1])
        verdict = "larger" if gm > spread else "NOT larger"
        lines += ["", f"Gap between the strongest PGD-type attack on the REC ({best}) and ARC: "
                  f"{100 * gm:.2f} +- {100 * gs:.2f} points (per seed: "
                  + ", ".join(f"{100 * g:.2f}" for g in gap)
                  + f"); {verdict} than the run-to-run spread (largest std of the two rows, "
                  f"{100 * spread:.2f} points)."]
    lines += ["", f"Members: {config.model}, PGD-{config.train_steps} AT at eps {config.eps:g}, {config.epochs} "
              f"epochs, batch {config.batch_size}, {config.optimizer} lr {config.learning_rate:g} ({config.schedule}). "
              f"Adaptive PGD step {(config.pgd_step_size or config.eps / 4):g}, uniform random start. "
              f"Wall time per seed: " + ", ".join(f"{t:.0f} s" for t in seconds) + ".", ""]
    return "\n".join(lines)


def run(config: Config, ctx) -> dict:
    """Trains the members for every seed, attacks the REC, and writes ``results.md`` into ``ctx.run_dir``."""
    log = ctx.log
    train_ds, test_ds = load_splits(config)
    x, y = data.as_arrays(test_ds, limit=config.eval_examples or None)
    x, y = jnp.asarray(x), jnp.asarray(y)
    log.info(f"data: {config.dataset} train {len(train_ds)}, evaluating on {len(y)} test examples")
    mesh = train.make_mesh() if jax.device_count() > 1 and config.batch_size % jax.device_count() == 0 else None
    rows = _rows(config)
    per_seed: dict[str, list[float]] = {k: [] for k, _ in rows}
    seconds, histories = [], {}
    base = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                         key=jax.random.key(0))
    loss = train.pgd_at(config.eps, steps=config.train_steps, step_size=config.train_step_size, norm=config.norm)
    log.info(f"members: {config.model} ({base.num_params():,} parameters), PGD-{config.train_steps} AT at "
             f"{config.norm} eps {config.eps:g}")
    for seed in tqdm(config.seeds, desc="seeds", disable=not ctx.progress):
        t0 = time.perf_counter()
        trained = [_train_member(config, base, loss, train_ds, seed, i, ctx, mesh) for i in range(2)]
        params = ensembles.stack([v for v, _ in trained])
        histories[str(seed)] = [h for _, h in trained]
        log.info(f"seed {seed}: members trained in {time.perf_counter() - t0:.0f} s; attacking")
        acc = _evaluate(config, base.apply_fn, params, x, y, jax.random.key(10_000 + seed), ctx)
        for k in per_seed:
            per_seed[k].append(acc[k])
        seconds.append(time.perf_counter() - t0)
        log.info(f"seed {seed} ({seconds[-1]:.0f} s): "
                 + ", ".join(f"{k} {100 * v:.2f}" for k, v in acc.items()))
    _io.write_text(ctx.run_dir / "results.md", _markdown(config, rows, per_seed, len(y), seconds))
    summary = {k: dict(zip(("mean", "std"), _stats(v))) for k, v in per_seed.items()}
    return {
        "eval_examples": int(len(y)),
        "rows": {k: label for k, label in rows},
        "accuracy_per_seed": {k: dict(zip(map(str, config.seeds), v)) for k, v in per_seed.items()},
        "accuracy": summary,
        "paper": PAPER[config.norm],
        "seconds_per_seed": seconds,
        "history": histories,
    }
