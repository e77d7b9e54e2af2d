"""TREND: transferability of adversarial examples across quantized models, and ensemble attacks.

Trains ``K = 5`` models of one architecture -- two full-precision ones (different
initialisations and data orders), an input-quantized one (bit-depth reduction of
the image to ``input_bits``; attacked through it with BPDA), a weight-quantized
one (DoReFa ``weight_bits`` on every kernel but the classifier's) and an
activation-quantized one (DoReFa ``activation_bits`` in place of every ReLU) --
then, for a sweep of L-inf radii, crafts PGD examples on every model (source)
and counts how many *transfer* to every model (target): source right on ``x``
and wrong on ``x'``, target right on ``x`` and wrong on ``x'`` (TREND's count;
the rate divides by the examples eligible for the target, i.e. the source's
successes on points the target gets right).  Each (source, target) count curve
is fitted with ``N(eps) = a (1 - exp(b eps))`` and TREND's transferability
metric ``N_st(eps*) / N_ss(eps*)`` is read off the fits at ``metric_eps``.

Finally an ensemble of the four distinct kinds of model (FP32, input-, weight-
and activation-quantized) is attacked with TREND's three ensemble attacks
(gradient sum, sign average, sign agreement; :func:`jaxrob.attacks._transfer.ensemble_pgd`),
reporting the ensemble's accuracy (vote: a class with at least 3 of 4 votes,
else the FP32 member; and mean probabilities) and every member's.

Run it:

    jaxrob run transferability                  # preset small: mlp on the embedded mnist10k (CPU minutes)
    jaxrob run transferability --preset paper   # ResNet-20 on CIFAR-10 via TFDS (not run here)

Outputs in ``runs/transferability/<timestamp>/``: ``results.md``, ``results.json``, ``log.txt``.

References:
  Ravikumar, Kodge, Garg & Roy, "TREND: Transferability based Robust ENsemble
  Design", IEEE Transactions on Artificial Intelligence 2022, arXiv:2008.01524
  (code: github.com/purdue-nrl/TREND).  Zhou et al., "DoReFa-Net",
  arXiv:1606.06160.  Athalye et al., ICML 2018, arXiv:1802.00420 (BPDA).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments._common import load_splits
from jaxrob import _io, _validate, data, ensembles, models, train
from jaxrob.attacks._transfer import RULES, ensemble_pgd, fit_transfer_curve, transfer_matrix, transfer_metric
from jaxrob.ensembles._empir import FULL_PRECISION, _InputQuantized, empir_vote, mixed_precision_model

NAME = "transferability"
DESCRIPTION = "TREND: adversarial transferability across input/weight/activation-quantized models, ensemble attacks"


@dataclasses.dataclass(frozen=True)
class Config:
    """Transferability experiment settings.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``cifar10``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of every model.
      input_bits, weight_bits, activation_bits: precisions of the three quantized models.
      epochs, batch_size, learning_rate: Adam training of every model (cosine schedule).
      epsilons: the L-inf radii of the transfer sweep.
      attack_steps: PGD steps per source (step ``2.5 eps / steps``, random start).
      metric_eps: radius at which the fitted metric is read.
      ensemble_eps, ensemble_steps: radius and steps of the ensemble attacks.
      eval_examples: test examples (0 = all).
      train_examples: training examples used (0 = all).
      seed: seed of initialisations, data order and attacks.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "mlp"
    input_bits: int = 2
    weight_bits: int = 2
    activation_bits: int = 2
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    epsilons: tuple[float, ...] = (0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
    attack_steps: int = 10
    metric_eps: float = 0.1
    ensemble_eps: float = 0.1
    ensemble_steps: int = 20
    eval_examples: int = 500
    train_examples: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raises ``ValueError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        for name in ("input_bits", "weight_bits", "activation_bits"):
            _validate.number(name, getattr(self, name), min=1, max=16, integer=True)
        for name in ("epochs", "batch_size", "attack_steps", "ensemble_steps"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        for name in ("eval_examples", "train_examples", "seed"):
            _validate.number(name, getattr(self, name), min=0, integer=True)
        _validate.number("learning_rate", self.learning_rate, min=0, min_inclusive=False)
        eps = tuple(self.epsilons)
        if len(eps) < 2 or len(set(eps)) != len(eps):
            raise ValueError(f"epsilons must hold at least 2 distinct radii, got {eps}")
        for e in eps + (self.metric_eps, self.ensemble_eps):
            _validate.number("eps", e, min=0, max=1, min_inclusive=False)


PRESETS = {
    # CPU minutes: five 784-256-256-10 MLPs (3 epochs each) on the embedded 8k/2k MNIST split, PGD-10
    # transfer sweep over 7 radii on 500 test digits, ensemble attacks at eps 0.1.
    "small": Config(),
    # TREND's CIFAR-10 setting: ResNets, eps* = 8/255 for the metric (fit_calc_TM.py), the radius sweep of
    # trans.py (num_steps > 0: 9 radii in (0, 0.1)); input quantization Q4, 4-bit weights/activations.
    "paper": Config(dataset="cifar10", model="resnet20", input_bits=4, weight_bits=4, activation_bits=4,
                    epochs=100, batch_size=128, epsilons=(0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09),
                    attack_steps=10, metric_eps=8 / 255, ensemble_eps=8 / 255, ensemble_steps=20,
                    eval_examples=0),
}

# TREND reports its transfer matrices as figures; no numbers are transcribed here.
PAPER: dict = {}


def _models(config, train_ds, k_init):
    common = dict(num_classes=train_ds.num_classes, input_shape=train_ds.input_shape)
    fp = lambda k: models.create(config.model, key=k, **common)  # noqa: E731
    net_fp = fp(jax.random.fold_in(k_init, 0))
    net_fp2 = dataclasses.replace(net_fp, variables=fp(jax.random.fold_in(k_init, 1)).variables)
    base_iq = fp(jax.random.fold_in(k_init, 2))
    net_iq = dataclasses.replace(base_iq, apply_fn=_InputQuantized(base_iq.apply_fn, config.input_bits),
                                 train_apply=_InputQuantized(base_iq.train_apply, config.input_bits))
    net_w = mixed_precision_model(config.model, weight_bits=config.weight_bits, activation_bits=FULL_PRECISION,
                                  key=jax.random.fold_in(k_init, 3), **common)
    net_a = mixed_precision_model(config.model, weight_bits=FULL_PRECISION, activation_bits=config.activation_bits,
                                  quantize_inputs=False, key=jax.random.fold_in(k_init, 4), **common)
    return {"FP32": net_fp, "FP32 (seed 2)": net_fp2, f"input {config.input_bits}-bit": net_iq,
            f"weights {config.weight_bits}-bit": net_w, f"activations {config.activation_bits}-bit": net_a}


def _matrix_md(names, m, fmt):
    lines = ["| source \\ target | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(fmt(v) for v in m[i]) + " |")
    return lines


def _markdown(config, names, rates, counts, eligible, tm, fit, ens, accs, times, n_eval) -> str:
    eps = list(config.epsilons)
    j = int(np.argmin(np.abs(np.asarray(eps) - config.metric_eps)))
    lines = [
        f"# transferability: {config.model} on {config.dataset}, FP32 vs input/weight/activation quantization",
        "",
        f"{n_eval} test examples; PGD-{config.attack_steps} (L-inf, random start, step 2.5 eps/steps) on each "
        "source, attacking through input quantization with BPDA and through the DoReFa quantizers with the STE. "
        "Clean accuracy: " + ", ".join(f"{n} {100 * a:.2f}%" for n, a in zip(names, accs)) + ".",
        "",
        f"## Transfer rate at eps={eps[j]:g} (transferred / eligible, %)",
        "",
        *_matrix_md(names, 100 * rates[:, :, j], lambda v: f"{v:.1f}"),
        "",
        f"Eligible counts at eps={eps[j]:g} (source right on x and wrong on x', target right on x): "
        + "; ".join(f"{names[i]}: " + ", ".join(str(int(v)) for v in eligible[i, :, j]) for i in range(len(names))),
        "",
        f"## TREND metric N_st(eps*) / N_ss(eps*) from the fits N(eps) = a (1 - exp(b eps)), eps* = "
        f"{config.metric_eps:g}",
        "",
        *_matrix_md(names, tm, lambda v: f"{v:.3f}"),
        "",
        "Fitted (a, b) per source -> target: "
        + "; ".join(f"{names[i]} -> {names[t]}: ({fit.a[i, t]:.1f}, {fit.b[i, t]:.1f})"
                    for i in range(len(names)) for t in range(len(names))),
        "",
        "Transferred counts per eps (" + ", ".join(f"{e:g}" for e in eps) + "), source -> target: "
        + "; ".join(f"{names[i]} -> {names[t]}: " + "/".join(str(int(v)) for v in counts[i, t])
                    for i in range(len(names)) for t in range(len(names))),
        "",
        f"## Ensemble attacks at eps={config.ensemble_eps:g} ({config.ensemble_steps} steps), accuracy (%)",
        "",
        "Ensemble of " + ", ".join(ens["members"]) + "; vote = a class with >= 3 of 4 votes, else the FP32 "
        "member; mean-probs = arg-max of the members' mean softmax.",
        "",
        "| attack | vote | mean-probs | " + " | ".join(ens["members"]) + " |",
        "|---|---:|---:|" + "---:|" * len(ens["members"]),
    ]
    for name, r in ens["rows"].items():
        lines.append(f"| {name} | {100 * r['vote']:.2f} | {100 * r['mean_probs']:.2f} | "
                     + " | ".join(f"{100 * v:.2f}" for v in r["members"]) + " |")
    lines += [
        "",
        "grad_sum: sign of the summed gradients (TREND's D-AG); sign_average: per-coordinate majority of the "
        "members' gradient signs (A-GD, as the authors' code steps); sign_agreement: step only where every "
        "member's sign agrees (U-GD). Train time per model: "
        + ", ".join(f"{n} {times.get(n, 0):.0f} s" for n in names) + ".",
        "",
        "Paper: TREND reports its transfer matrices as figures (CIFAR-10/100, ImageNet); no numbers are "
        "printed beside ours.",
        "",
    ]
    return "\n".join(lines)


def run(config: Config, ctx) -> dict:
    """Trains the models, measures transfer over eps, fits, attacks the ensemble; writes ``results.md``."""
    log = ctx.log
    train_ds, test_ds = load_splits(config)
    x, y = data.as_arrays(test_ds, limit=config.eval_examples or None)
    x, y = jnp.asarray(x), jnp.asarray(y)
    key = jax.random.key(config.seed)
    k_init, k_train, k_attack, k_ens = jax.random.split(key, 4)
    optimizer = {"name": "adam", "learning_rate": config.learning_rate, "schedule": "cosine"}
    nets = _models(config, train_ds, k_init)
    names = list(nets)
    trained, times, histories = {}, {}, {}
    for i, (name, net) in enumerate(nets.items()):
        log.info(f"training {name}")
        t0 = time.perf_counter()
        state, hist = train.fit(net, train_ds, optimizer=optimizer, epochs=config.epochs,
                                batch_size=config.batch_size, key=jax.random.fold_in(k_train, i),
                                seed=config.seed + i, progress=ctx.progress)
        times[name] = time.perf_counter() - t0
        histories[name] = hist
        trained[name] = (net.apply_fn, state.variables())
    pairs = [trained[n] for n in names]
    accs = [float(jnp.mean(jnp.argmax(f(p, x), -1) == y)) for f, p in pairs]
    log.info("clean accuracy: " + ", ".join(f"{n} {100 * a:.2f}%" for n, a in zip(names, accs)))

    t0 = time.perf_counter()
    per_eps = []
    for j, eps in enumerate(config.epsilons):
        c = transfer_matrix(pairs, x, y, key=jax.random.fold_in(k_attack, j), eps=float(eps),
                            steps=config.attack_steps, batch_size=250)
        per_eps.append(c)
        log.info(f"eps {eps:g}: transfer rate FP32 -> others "
                 + ", ".join(f"{100 * float(v):.1f}%" for v in c.rate[0]))
    counts = np.stack([np.asarray(c.transferred) for c in per_eps], axis=-1)  # (K, K, E)
    eligible = np.stack([np.asarray(c.eligible) for c in per_eps], axis=-1)
    rates = np.stack([np.asarray(c.rate) for c in per_eps], axis=-1)
    fit = fit_transfer_curve(np.asarray(config.epsilons), counts)
    tm = np.asarray(transfer_metric(fit, config.metric_eps))
    fit = jax.tree.map(np.asarray, fit)
    times["transfer sweep"] = time.perf_counter() - t0

    # The ensemble: one member of each kind (the second FP32 model left out).
    t0 = time.perf_counter()
    ens_names = [n for n in names if n != "FP32 (seed 2)"]
    members = ensembles.Members(*(trained[n][0] for n in ens_names))
    params = tuple(ensembles.stack([trained[n][1]]) for n in ens_names)
    averaged = ensembles.average(members, over="probs")
    rows = {}
    for r, rule in enumerate(("clean",) + RULES):
        if rule == "clean":
            xa = x
        else:
            xa = jnp.concatenate([ensemble_pgd(members, params, x[i:i + 250], y[i:i + 250],
                                               key=jax.random.fold_in(jax.random.fold_in(k_ens, r), i),
                                               eps=config.ensemble_eps, steps=config.ensemble_steps, rule=rule)
                                  for i in range(0, len(y), 250)])
        z = members(params, xa)
        rows[rule] = {"vote": float(jnp.mean(empir_vote(z, fallback=0) == y)),
                      "mean_probs": float(jnp.mean(jnp.argmax(averaged(params, xa), -1) == y)),
                      "members": [float(v) for v in jnp.mean(jnp.argmax(z, -1) == y[None], axis=1)]}
        log.info(f"ensemble {rule}: vote {100 * rows[rule]['vote']:.2f}%, mean-probs "
                 f"{100 * rows[rule]['mean_probs']:.2f}%")
    times["ensemble attacks"] = time.perf_counter() - t0
    ens = {"members": ens_names, "rows": rows}

    _io.write_text(ctx.run_dir / "results.md",
                   _markdown(config, names, rates, counts, eligible, tm, fit, ens, accs, times, len(y)))
    return {
        "models": names,
        "clean_accuracy": dict(zip(names, accs)),
        "epsilons": list(config.epsilons),
        "transferred": counts.tolist(),
        "eligible": eligible.tolist(),
        "rate": rates.tolist(),
        "fit": {"a": fit.a.tolist(), "b": fit.b.tolist(), "sse": fit.sse.tolist()},
        "metric": tm.tolist(),
        "ensemble": ens,
        "seconds": times,
        "history": histories,
        "paper": PAPER,
    }
