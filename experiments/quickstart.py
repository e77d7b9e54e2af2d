"""Quickstart: a normally trained and a PGD-trained CNN on MNIST, and their robustness curves.

Trains ``cnn_small`` twice on the same data -- once with cross-entropy, once with
PGD adversarial training (Madry et al.) -- then evaluates both under PGD-40 at
several L-inf radii.  The point it makes: the normally trained model is accurate
but collapses under small perturbations; the adversarially trained one keeps most
of its accuracy up to the radius it was trained for.

Run it (what ``make demo`` does):

    jaxrob run quickstart                      # preset small: embedded mnist10k
    jaxrob run quickstart --preset paper       # full MNIST via TFDS, Madry et al.'s eps = 0.3 setting

Outputs in ``runs/quickstart/<timestamp>/``: ``results.md`` (accuracy table),
``results.json``, ``robustness.png``, ``checkpoints/{standard,pgd_at}/``, ``log.txt``.

References:
  Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant
  to Adversarial Attacks", ICLR 2018, arXiv 1706.06083.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments._common import load_splits
from jaxrob import _io, _validate, attacks, data, models, train

NAME = "quickstart"
DESCRIPTION = "cnn_small on MNIST, standard vs PGD adversarial training, PGD-40 robustness curves"


@dataclasses.dataclass(frozen=True)
class Config:
    """Quickstart settings.

    Attributes:
      dataset: ``mnist10k`` (embedded) or a TFDS name such as ``mnist``.
      data_dir: TFDS data directory (ignored for ``mnist10k``).
      model: registry name of the network.
      epochs: training epochs for each model.
      batch_size: training batch size.
      optimizer: ``adam`` or ``sgd``.
      learning_rate: peak learning rate (cosine decay over training).
      train_eps: L-inf radius of PGD adversarial training.
      train_steps: PGD steps during training (step size 2.5 * eps / steps).
      eval_epsilons: L-inf radii of the evaluation.
      eval_steps: PGD steps of the evaluation attack (step size 2.5 * eps / steps, random start).
      eval_restarts: PGD restarts of the evaluation attack.
      eval_examples: test examples evaluated (0 = the whole test split).
      train_examples: training examples used (0 = the whole train split; a prefix
        of the split otherwise -- for smoke tests).
      seed: seed of data order, initialisation and attacks.
    """

    dataset: str = "mnist10k"
    data_dir: str | None = None
    model: str = "cnn_small"
    epochs: int = 4
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    train_eps: float = 0.1
    train_steps: int = 7
    eval_epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    eval_steps: int = 40
    eval_restarts: int = 1
    eval_examples: int = 1000
    train_examples: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raises ``ValueError`` for settings that cannot run."""
        _validate.choice("dataset", self.dataset, data.available())
        _validate.choice("model", self.model, models.available())
        _validate.choice("optimizer", self.optimizer, ("adam", "sgd"))
        for name in ("epochs", "batch_size", "train_steps", "eval_steps", "eval_restarts"):
            _validate.number(name, getattr(self, name), min=1, integer=True)
        _validate.number("eval_examples", self.eval_examples, min=0, integer=True)
        _validate.number("train_examples", self.train_examples, min=0, integer=True)
        _validate.number("learning_rate", self.learning_rate, min=0, min_inclusive=False)
        _validate.number("train_eps", self.train_eps, min=0, max=1)
        if not self.eval_epsilons:
            raise ValueError("eval_epsilons must name at least one radius")
        for e in self.eval_epsilons:
            _validate.number("eval_epsilons", e, min=0, max=1)


PRESETS = {
    # CPU minutes: the embedded 8k/2k split, eps 0.1, PGD-7 training (4 epochs, batch 64),
    # PGD-40 evaluation on the first 1,000 test digits.
    "small": Config(),
    # Madry et al.'s MNIST setting: full MNIST, eps 0.3, PGD-40 (step 0.01 ~ 2.5*0.3/40 = 0.019 here),
    # Adam 1e-4, batch 50, ~100k iterations (83 epochs); evaluation with PGD-100 and 5 restarts.
    "paper": Config(dataset="mnist", epochs=83, batch_size=50, learning_rate=1e-4, train_eps=0.3,
                    train_steps=40, eval_steps=100, eval_restarts=5, eval_examples=0),
}


def _markdown(config: Config, rows: dict[str, dict[float, float]], times: dict[str, float], n_eval: int) -> str:
    eps = list(config.eval_epsilons)
    head = "| model | " + " | ".join(f"eps={e:g}" for e in eps) + " | train time |"
    sep = "|---|" + "---:|" * len(eps) + "---:|"
    lines = [
        f"# quickstart: {config.model} on {config.dataset}",
        "",
        f"Accuracy (%) on {n_eval} test examples under L-inf PGD-{config.eval_steps} "
        f"(random start, step 2.5*eps/{config.eval_steps}, {config.eval_restarts} restart(s)); "
        "eps=0 is clean accuracy. An example counts as robust at eps only if no attack at any "
        "radius <= eps fooled it.",
        "",
        head,
        sep,
    ]
    for name, accs in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * accs[e]:.2f}" for e in eps)
                     + f" | {times[name]:.0f} s |")
    lines += ["", f"Training: {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} "
              f"lr {config.learning_rate:g} (cosine); PGD-AT with eps={config.train_eps:g}, "
              f"{config.train_steps} steps.", ""]
    return "\n".join(lines)


def _plot(config: Config, rows: dict[str, dict[float, float]], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, accs in rows.items():
        eps = sorted(accs)
        ax.plot(eps, [100 * accs[e] for e in eps], marker="o", label=name)
    ax.axvline(config.train_eps, color="grey", ls=":", lw=1, label=f"training eps = {config.train_eps:g}")
    ax.set_xlabel("L-inf radius eps")
    ax.set_ylabel(f"accuracy under PGD-{config.eval_steps} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{config.model} on {config.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _io.save_figure(path, fig)
    plt.close(fig)


def run(config: Config, ctx) -> dict:
    """Trains both models, evaluates them and writes the tables and plot into ``ctx.run_dir``."""
    log = ctx.log
    train_ds, test_ds = load_splits(config)
    x_test, y_test = data.as_arrays(test_ds, limit=config.eval_examples or None)
    log.info(f"data: {config.dataset} train {len(train_ds)}, evaluating on {len(y_test)} test examples")

    # Data parallelism over every device (on CPU, `jaxrob run` makes one device per core).
    mesh = train.make_mesh() if jax.device_count() > 1 else None
    if mesh is not None and config.batch_size % jax.device_count():
        mesh = None
    log.info(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}"
             + (" (data-parallel)" if mesh is not None else ""))
    key = jax.random.key(config.seed)
    k_init, k_train, k_eval = jax.random.split(key, 3)
    optimizer = {"name": config.optimizer, "learning_rate": config.learning_rate, "schedule": "cosine"}
    losses = {
        "standard": train.cross_entropy(),
        f"pgd_at (eps={config.train_eps:g})": train.pgd_at(config.train_eps, steps=config.train_steps),
    }
    rows: dict[str, dict[float, float]] = {}
    times: dict[str, float] = {}
    histories = {}
    for i, (name, loss) in enumerate(losses.items()):
        # Both models start from the same initialisation and see the same data order.
        net = models.create(config.model, num_classes=train_ds.num_classes, input_shape=train_ds.input_shape,
                            key=k_init)
        log.info(f"training {name}: {config.model} ({net.num_params():,} parameters)")
        t0 = time.perf_counter()
        state, history = train.fit(
            net, train_ds, loss=loss, optimizer=optimizer, epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, key=k_train, checkpoint_dir=ctx.run_dir / "checkpoints" / loss.name,
            resume=ctx.resume, progress=ctx.progress, mesh=mesh,
            config={"experiment": NAME, "model_name": name})
        times[name] = time.perf_counter() - t0
        histories[name] = history
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        log.info(f"evaluating {name} under PGD-{config.eval_steps} at eps {list(config.eval_epsilons)}")
        accs = attacks.robust_accuracy(net.apply_fn, variables, x_test, y_test, epsilons=config.eval_epsilons,
                                       key=jax.random.fold_in(k_eval, i), steps=config.eval_steps,
                                       restarts=config.eval_restarts, batch_size=500, progress=ctx.progress,
                                       mesh=mesh)
        rows[name] = {float(e): float(a) for e, a in accs.items()}
        log.info(f"  {name}: " + ", ".join(f"eps={e:g}: {100 * a:.2f}%" for e, a in rows[name].items()))

    _io.write_text(ctx.run_dir / "results.md", _markdown(config, rows, times, len(y_test)))
    _plot(config, rows, ctx.run_dir / "robustness.png")
    return {
        "eval_examples": int(len(y_test)),
        "accuracy": {name: {f"{e:g}": a for e, a in accs.items()} for name, accs in rows.items()},
        "train_seconds": times,
        "history": histories,
        "param_count": int(np.sum([x.size for x in jax.tree.leaves(variables["params"])])),
    }
