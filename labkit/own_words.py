"""How the model sees a student's own pairs, before training on them.

DPO re-weights what a model can already say; it cannot teach it new words from 8 pairs.
GPT-2 knows English, but the offline teaching model knows only its small corpus (two styles
of explaining, a few hundred words): pairs written freely are *alien* to it — around
9 nats per token where its own kind of text costs ~0.2 — and training on them moves nothing
it generates (measured on the three sets in tests/data/freeform/). This module
shows that per pair, and per word, so a student can steer: reuse the model's words, keep
each row within its context, make chosen read plain and rejected read as jargon.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from .dpo import completion_batch, sequence_logps

FAMILIAR = 2.0      # nats per token: the template pairs cost ~0.2, free English ~9
_WORD = re.compile(r"[A-Za-z][A-Za-z\-']*")


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Every word of the teaching model's training corpus (lower case)."""
    from . import teaching

    return frozenset(w.lower() for doc in teaching.build_corpus()
                     for w in _WORD.findall(doc["prompt"] + " " + doc["response"]))


def unknown_words(*texts: str, vocab: frozenset[str] | None = None) -> list[str]:
    """The words of `texts` that the teaching model's corpus never uses (sorted)."""
    vocab = known_words() if vocab is None else vocab
    return sorted({w for t in texts for w in _WORD.findall(t) if w.lower() not in vocab})


@dataclass
class PairReview:
    rows: list[dict]
    n_positions: int | None
    teaching: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        limit = f"/{self.n_positions}" if self.n_positions else ""
        head = f"{'row':>3} {'chosen nats/tok':>15} {'rejected nats/tok':>17} " \
               f"{'tokens' + limit:>11} {'styles (judge)':>17}  unknown words"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['row']:>3} {r['chosen_nats_per_token']:>15.2f} "
                         f"{r['rejected_nats_per_token']:>17.2f} "
                         f"{str(r['tokens']) + limit:>11} "
                         f"{r['chosen_style'] + '/' + r['rejected_style']:>17}  "
                         f"{', '.join(r['unknown'][:6])}")
        lines.append("")
        lines += (["OK: the model reads these pairs like its own text; training can move it."]
                  if self.ok else ["To fix before training:"] + [f"- {p}" for p in self.problems])
        return "\n".join(lines)


@torch.no_grad()
def review_pairs(model, tokenizer, pairs, is_teaching: bool = True,
                 judge="default") -> PairReview:
    """Per pair: nats per answer token under the model (how familiar the text is), total
    tokens against the model's context, the judge's reading, and (teaching model) the
    words it has never seen. Problems come with what to do. `judge`: a themes.Judge,
    None for a theme without one, or "default" for the default theme's."""
    if judge == "default":
        from .themes import load_theme

        judge = load_theme("plain").judge
    label = judge if judge is not None and judge.label_function else (lambda text: "-")

    pairs = list(pairs)
    prompts = [p["prompt"] for p in pairs]
    n_positions = getattr(model.config, "n_positions", None)
    rows, per_side = [], {}
    fits = [max(len(tokenizer(p["prompt"] + p[s])["input_ids"]) for s in ("chosen", "rejected"))
            for p in pairs]
    for side in ("chosen", "rejected"):
        texts = [p[side] for p in pairs]
        keep = [i for i, n in enumerate(fits) if n_positions is None or n < n_positions]
        values = torch.full((len(pairs),), float("nan"))
        if keep:
            lp = sequence_logps(model, tokenizer, [prompts[i] for i in keep],
                                [texts[i] for i in keep])
            batch = completion_batch(tokenizer, [prompts[i] for i in keep],
                                     [texts[i] for i in keep])
            n = (batch["attention_mask"].sum(1) - batch["prompt_lengths"]).clamp(min=1)
            values[keep] = -lp / n
        per_side[side] = values
    vocab = known_words() if is_teaching else frozenset()
    for i, pair in enumerate(pairs):
        unknown = unknown_words(pair["chosen"], pair["rejected"], vocab=vocab) \
            if is_teaching else []
        rows.append({"row": i, "chosen_nats_per_token": float(per_side["chosen"][i]),
                     "rejected_nats_per_token": float(per_side["rejected"][i]),
                     "tokens": fits[i], "unknown": unknown,
                     "chosen_style": label(pair["chosen"]),
                     "rejected_style": label(pair["rejected"])})
    return PairReview(rows, n_positions, is_teaching,
                      _problems(rows, n_positions, is_teaching, judge))


def _problems(rows, n_positions, is_teaching, judge=None) -> list[str]:
    problems = []
    long = [r["row"] for r in rows if n_positions and r["tokens"] >= n_positions]
    if long:
        problems.append(f"rows {long} are {n_positions}+ tokens with the prompt: longer than the "
                        "model's context, so training cannot use them. Shorten the answers.")
    alien = [r["row"] for r in rows if r["row"] not in long and
             max(r["chosen_nats_per_token"], r["rejected_nats_per_token"]) > FAMILIAR]
    if alien and is_teaching:   # GPT-2 reads ordinary English at ~3-5 nats/token: no alarm
        problems.append(f"rows {alien} cost over {FAMILIAR:g} nats per token: text the teaching "
                        "model has never seen (its own text costs ~0.2). DPO only re-weights "
                        "what a model already says, so these pairs will not change how it "
                        "writes. Reuse its words (the unknown words are listed; see "
                        "`show_text`), pick from its own answers (`candidates`), or run the "
                        "lab on GPT-2, which knows English.")
    if is_teaching and judge is not None and judge.label_function:  # a style judge
        want = (judge.preferred, judge.rejected)
        styled = [r["row"] for r in rows if r["chosen_style"] != want[0] or
                  (want[1] and r["rejected_style"] != want[1])]
        if styled:
            problems.append(f"rows {styled}: the judge does not read chosen as {want[0]} and "
                            f"rejected as {want[1] or 'something else'}, so the style rate "
                            "cannot count what they teach."
                            + (" Use plain words (like, just, easy, think, you) in chosen and "
                               "jargon (formally, denotes, invariant, paradigm) in rejected."
                               if want == ("plain", "jargon") else ""))
    return problems


@torch.no_grad()
def show_text(model, tokenizer, prompt: str, text: str, is_teaching: bool = True) -> str:
    """The answer as the model reads it: each token between '|', and under it the words
    that cost the most nats (unseen words marked '?')."""
    batch = completion_batch(tokenizer, [prompt], [text])
    ids, start = batch["input_ids"][0], int(batch["prompt_lengths"][0])
    device = next(model.parameters()).device
    logits = model(input_ids=ids[None].to(device),
                   attention_mask=torch.ones_like(ids)[None].to(device)).logits[0].float().cpu()
    logps = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None]).squeeze(-1)
    pieces = [tokenizer.decode([int(t)]) for t in ids[start:]]
    costs = [-float(v) for v in logps[start - 1:]]
    vocab = known_words() if is_teaching else None
    worst = sorted(zip(costs, pieces), reverse=True)[:5]
    marked = [w + ("?" if vocab is not None and w.lower() not in vocab else "")
              for w in _WORD.findall(text)]
    return ("tokens: |" + "|".join(pieces) + "|\n"
            f"{len(pieces)} tokens, {sum(costs):.1f} nats in all, {sum(costs) / len(pieces):.2f} "
            "per token\ncostliest tokens: " + ", ".join(f"{p!r} {c:.1f}" for c, p in worst) +
            "\nwords: " + " ".join(marked))


def candidates(model, tokenizer, prompt: str, n: int = 6, seed: int = 0,
               max_new_tokens: int = 48) -> list[str]:
    """`n` of the model's own sampled answers to `prompt` (seeded), for a student to pick
    chosen and rejected from: how real preference data is collected (labellers compare the
    model's outputs), and text the model can be moved on, whatever model it is."""
    from .config import GenerationSpec
    from .generation import generate

    spec = GenerationSpec(max_new_tokens=max_new_tokens, do_sample=True, num_samples=n,
                          seed=seed)
    return [text.strip() for text in generate(model, tokenizer, [prompt], spec)[0]]
