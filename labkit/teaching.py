"""The offline teaching model: a tiny GPT-2 that knows two ways to explain things.

Why it exists: GPT-2's weights cannot be downloaded offline, yet the lab must still show
DPO *measurably* moving a model. This model is pretrained on a synthetic corpus of
explanation prompts ("Explain recursion.") answered half the time in a *plain* style and
half in a *jargon* style, so before DPO it picks either style, and DPO on a few
plain-over-jargon pairs moves held-out concepts towards plain. `judge_style` measures that
objectively. It is a real `GPT2LMHeadModel` with a byte-level BPE tokenizer, saved with
`save_pretrained`, so it loads through `AutoModelForCausalLM`/`AutoTokenizer` like GPT-2.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from . import runtime
from .artifacts import atomic_dir
from .config import cache_dir

RECIPE_VERSION = 1  # bump when the corpus, tokenizer or training recipe changes
EOS = "<|endoftext|>"

# Concepts for preference pairs and for held-out evaluation are disjoint by construction;
# the pretraining corpus covers all of them (and a few more) in both styles, 50/50.
PAIR_CONCEPTS = (
    "recursion", "a hash table", "a linked list", "binary search", "a compiler",
    "an operating system", "caching", "encryption", "a database index", "garbage collection",
    "a neural network", "gradient descent", "a unit test", "version control", "an API",
    "a queue", "a stack", "sorting", "a variable", "a function",
)
HELDOUT_CONCEPTS = (
    "a binary tree", "a graph", "dynamic programming", "a thread", "a mutex",
    "an interpreter", "a pointer", "memory allocation", "a web server", "a load balancer",
    "overfitting", "a loss function",
)
EXTRA_CONCEPTS = (
    "a loop", "a string", "a regular expression", "a network packet", "a file system",
    "a virtual machine", "a container", "a checksum", "a protocol", "a scheduler",
)
ALL_CONCEPTS = PAIR_CONCEPTS + HELDOUT_CONCEPTS + EXTRA_CONCEPTS

# Neutral, far-from-the-preference prompts and text: they measure the alignment tax.
NEUTRAL_TOPICS = ("cats", "the sea", "bread", "rain", "the moon", "trees", "bicycles", "tea")
NEUTRAL_FACTS = (
    "It has been part of daily life for a very long time.",
    "Many people write stories and songs about it.",
    "It looks different in every season of the year.",
    "Children often ask questions about it.",
    "There are many kinds, and each one is a little different.",
    "Old books describe it in much the same way as we do today.",
)

PLAIN_OPENERS = ("Think of {c} like {t}.", "Simply put, {c} is like {t}.",
                 "Picture {c} as {t}.", "Here is the easy way to see it: {c} is like {t}.")
PLAIN_THINGS = ("a recipe you follow step by step", "a box you put your stuff in",
                "a friend who passes notes for you", "a map of your town",
                "a to-do list on the fridge", "sorting socks into piles")
PLAIN_SENTENCES = ("You just do one small step at a time.", "It is kind of like cooking at home.",
                   "Most people use it every day without even noticing.",
                   "You can try it yourself with pen and paper.",
                   "It saves you time and keeps things easy.",
                   "If you get stuck, just start with a tiny example.")
JARGON_OPENERS = ("Formally, {c} denotes {t}.", "In rigorous terms, {c} constitutes {t}.",
                  "Canonically, {c} is characterised as {t}.")
JARGON_THINGS = ("an abstraction over heterogeneous state transitions",
                 "a parametric mechanism for invariant preservation",
                 "a canonical formalism for compositional semantics",
                 "an asymptotically bounded construct", "a morphism between structured domains")
JARGON_SENTENCES = ("Its operational semantics are instantiated via higher-order constraints.",
                    "Consequently, the invariants hold under arbitrary compositional transformations.",
                    "This paradigm presupposes a rigorous axiomatic foundation.",
                    "The construct is orthogonal to implementation-specific heuristics.",
                    "Such formalisms admit a well-defined denotational interpretation.",
                    "Complexity is characterised by asymptotic upper bounds.")

PLAIN_MARKERS = frozenset("think simply picture easy like recipe box friend map fridge socks "
                          "just kind cooking home everyday people noticing yourself pen paper "
                          "saves keeps stuck tiny you your".split())
JARGON_MARKERS = frozenset("formally rigorous canonically denotes constitutes characterised "
                           "abstraction heterogeneous parametric mechanism invariant invariants "
                           "canonical formalism compositional semantics asymptotically "
                           "asymptotic construct morphism operational instantiated higher-order "
                           "consequently paradigm presupposes axiomatic orthogonal "
                           "implementation-specific heuristics formalisms denotational".split())

# Model and training recipe: small enough to pretrain in about a minute on 2 CPU cores.
VOCAB_SIZE = 768
MODEL_SHAPE = dict(n_positions=96, n_embd=128, n_layer=3, n_head=4)
PRETRAIN = dict(docs_per_concept_style=6, docs_per_neutral_topic=6, steps=360, batch_size=32,
                learning_rate=3e-3, warmup=30, seed=1234)


def prompt_for(concept: str) -> str:
    """The prompt format every concept uses. It ends on a newline so that the prompt's
    tokens are a prefix of prompt+response's tokens (TRL splits them that way)."""
    return f"Explain {concept}.\n"


def neutral_prompt_for(topic: str) -> str:
    return f"Tell me about {topic}.\n"


PAIR_PROMPTS = tuple(prompt_for(c) for c in PAIR_CONCEPTS)
HELDOUT_PROMPTS = tuple(prompt_for(c) for c in HELDOUT_CONCEPTS)
NEUTRAL_PROMPTS = tuple(neutral_prompt_for(t) for t in NEUTRAL_TOPICS)


def plain_response(concept: str, rng: random.Random) -> str:
    first = rng.choice(PLAIN_OPENERS).format(c=concept, t=rng.choice(PLAIN_THINGS))
    return " ".join([first, *rng.sample(PLAIN_SENTENCES, 2)])


def jargon_response(concept: str, rng: random.Random) -> str:
    first = rng.choice(JARGON_OPENERS).format(c=concept, t=rng.choice(JARGON_THINGS))
    return " ".join([first, *rng.sample(JARGON_SENTENCES, 2)])


def neutral_response(topic: str, rng: random.Random) -> str:
    return " ".join(rng.sample(NEUTRAL_FACTS, 2))


def neutral_text() -> str:
    """A fixed text unrelated to the preference, for measuring perplexity drift."""
    rng = random.Random(7)
    return " ".join(neutral_prompt_for(t) + neutral_response(t, rng) for t in NEUTRAL_TOPICS[:4])


def build_corpus(seed: int = PRETRAIN["seed"]) -> list[dict]:
    """Deterministic pretraining documents: {prompt, response, style}."""
    rng = random.Random(seed)
    docs = []
    for concept in ALL_CONCEPTS:
        for _ in range(PRETRAIN["docs_per_concept_style"]):
            docs.append({"prompt": prompt_for(concept), "response": plain_response(concept, rng),
                         "style": "plain"})
            docs.append({"prompt": prompt_for(concept), "response": jargon_response(concept, rng),
                         "style": "jargon"})
    for topic in NEUTRAL_TOPICS:
        for _ in range(PRETRAIN["docs_per_neutral_topic"]):
            docs.append({"prompt": neutral_prompt_for(topic),
                         "response": neutral_response(topic, rng), "style": "neutral"})
    rng.shuffle(docs)
    return docs


def make_preference_pairs(n: int = 8, seed: int = 0, concepts=PAIR_CONCEPTS) -> list[dict]:
    """`n` {prompt, chosen, rejected} pairs preferring plain over jargon, on pair concepts
    only (never the held-out ones). Prompts end in a newline, so TRL's plain concatenation
    of prompt and completion keeps the prompt's tokens a prefix of the pair's."""
    if n > len(concepts):
        raise ValueError(f"at most {len(concepts)} distinct pair concepts, asked for {n}")
    rng = random.Random(seed)
    chosen_concepts = rng.sample(list(concepts), n)
    return [{"prompt": prompt_for(c), "chosen": plain_response(c, rng),
             "rejected": jargon_response(c, rng)} for c in chosen_concepts]


_WORD = re.compile(r"[a-z][a-z\-]*")


def judge_style(text: str) -> str:
    """Classify an explanation as 'plain', 'jargon' or 'unclear' by counting each style's
    marker words. Objective and cheap, so before/after style rates need no human."""
    words = _WORD.findall(text.lower())
    plain = sum(w in PLAIN_MARKERS for w in words)
    jargon = sum(w in JARGON_MARKERS for w in words)
    if plain > jargon:
        return "plain"
    if jargon > plain:
        return "jargon"
    return "unclear"


def style_rate(texts, style: str = "plain") -> float:
    texts = list(texts)
    if not texts:
        raise ValueError("style_rate needs at least one text")
    return sum(judge_style(t) == style for t in texts) / len(texts)


# ----------------------------------------------------------------------------- building
def recipe_fingerprint() -> str:
    recipe = json.dumps({"v": RECIPE_VERSION, "vocab": VOCAB_SIZE, "shape": MODEL_SHAPE,
                         "pretrain": PRETRAIN, "concepts": ALL_CONCEPTS}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def default_dir() -> Path:
    """Where the built model is cached: `LABKIT_CACHE` (default ~/.cache/labkit)."""
    return cache_dir() / f"teaching-model-{recipe_fingerprint()}"


def is_built(path: Path) -> bool:
    return (Path(path) / "model.safetensors").exists() and (Path(path) / "tokenizer.json").exists()


def ensure_teaching_model(path: Path | None = None, progress: bool = True) -> Path:
    """Return the teaching model's directory, building it first if it is not cached."""
    path = Path(path) if path else default_dir()
    if not is_built(path):
        build_teaching_model(path, progress=progress)
    return path


def train_tokenizer(docs: list[dict]):
    """Byte-level BPE (GPT-2's scheme) trained on the corpus, wrapped as GPT2TokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    texts = [d["prompt"] + d["response"] for d in docs]
    bpe.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=2,
                            special_tokens=[EOS], show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS,
                                  bos_token=EOS, unk_token=EOS)
    tokenizer.model_max_length = MODEL_SHAPE["n_positions"]
    return tokenizer


def _pretrain(model, tokenizer, docs, progress: bool):
    import torch
    from tqdm.auto import tqdm

    cfg = PRETRAIN
    texts = [d["prompt"] + d["response"] + EOS for d in docs]
    enc = tokenizer(texts, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg["warmup"]) * max(0.05, 1 - s / cfg["steps"]))
    model.train()
    # tqdm.auto: a widget bar in a notebook, a text bar in a terminal
    bar = tqdm(total=cfg["steps"], desc="Building the teaching model", unit="step",
               disable=not progress, mininterval=0.5)
    for step in range(cfg["steps"]):
        batch = torch.randint(0, len(texts), (cfg["batch_size"],), generator=gen)
        out = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        if progress and (step % 20 == 0 or step == cfg["steps"] - 1):
            bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return out.loss.item()


def build_teaching_model(out_dir: Path | None = None, progress: bool = True) -> Path:
    """Build the teaching model deterministically and save it atomically to `out_dir`."""
    out_dir = Path(out_dir) if out_dir else default_dir()
    if progress:
        print(f"Building the labkit teaching model -> {out_dir}", flush=True)
    # tiny matmuls: threads only add spin-waiting on a busy machine; the seed is scoped too
    with runtime.threads(1), runtime.seeded(PRETRAIN["seed"]):
        return _build(out_dir, progress)


def _save_quietly(model, tokenizer, path: Path) -> None:
    """Without transformers' "Writing model shards" bar: the build shows its own."""
    with runtime.progress_bars_off():
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


def _build(out_dir: Path, progress: bool) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    docs = build_corpus()
    tokenizer = train_tokenizer(docs)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                        **MODEL_SHAPE)
    model = GPT2LMHeadModel(config)
    tokenizer.pad_token = tokenizer.eos_token
    final_loss = _pretrain(model, tokenizer, docs, progress)
    model.config.labkit_teaching = {"recipe": recipe_fingerprint(), "final_loss": final_loss}
    with atomic_dir(out_dir) as tmp:
        _save_quietly(model, tokenizer, tmp)
    if progress:
        n = sum(p.numel() for p in model.parameters())
        print(f"Teaching model ready: {n / 1e6:.2f} M parameters, final loss {final_loss:.3f}",
              flush=True)
    return out_dir
