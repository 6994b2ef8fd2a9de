"""Measure pair sets on the teaching model: reference log-prob range (min, max, mean nats per
token, mean answer tokens) for chosen and rejected, one DPO run with the teaching preset
(max_length cut to the model's context), diagnose()'s verdict, the plain-style rate before
and after on the held-out concepts. Results: docs/own-words.md.

    LABKIT_CACHE=... PYTHONPATH=$PWD python tests/data/freeform/measure.py template,casual,terse,wordy,steered
"""
import copy, json, sys, tempfile
import torch
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer
from labkit import teaching
from labkit.config import PRESETS, GenerationSpec
from labkit.data import validate_pairs
from labkit.dpo import sequence_logps, completion_batch
from labkit.generation import generate
from labkit.health import diagnose
from labkit.models import load_model

def measure(name, pairs, beta=None, lr=None):
    p = PRESETS["teaching"]
    model, tok, info = load_model("teaching", quiet=True)
    ref = copy.deepcopy(model).eval()
    prompts = [r["prompt"] for r in pairs]
    out = {"set": name}
    npos = model.config.n_positions
    fits = [i for i, r in enumerate(pairs) if max(len(tok(r["prompt"] + r[s])["input_ids"]) for s in ("chosen", "rejected")) < npos]
    out["rows_over_n_positions"] = len(pairs) - len(fits)
    for side in ("chosen", "rejected"):
        lp = sequence_logps(ref, tok, [prompts[i] for i in fits], [pairs[i][side] for i in fits])
        b = completion_batch(tok, [prompts[i] for i in fits], [pairs[i][side] for i in fits])
        n = (b["attention_mask"].sum(1) - b["prompt_lengths"]).float()
        out[side] = (round(float(lp.min()), 1), round(float(lp.max()), 1), round(float((lp / n).mean()), 2), round(float(n.mean()), 1))
    out["styles"] = [teaching.judge_style(r["chosen"]) + "/" + teaching.judge_style(r["rejected"]) for r in pairs]
    ds = validate_pairs(pairs, tokenizer=tok, max_length=p.max_length)
    torch.manual_seed(42)
    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(d, learning_rate=lr or p.learning_rate, num_train_epochs=p.num_train_epochs, per_device_train_batch_size=p.per_device_train_batch_size,
                         beta=beta or p.beta, max_length=min(p.max_length, npos), logging_steps=1, bf16=False, report_to=[], save_strategy="no",
                         disable_tqdm=True, log_level="error", seed=42, activation_checkpointing=False)
        tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
        tr.remove_callback(PrinterCallback)
        tr.train()
    log = [e for e in tr.state.log_history if "loss" in e]
    d = diagnose(tr.state.log_history, beta=args.beta)
    out["verdict"] = d.verdict; out["advice"] = d.advice
    out["loss"] = (round(log[0]["loss"], 3), float(f"{log[-1]['loss']:.3g}"))
    out["margin_end"] = round(log[-1]["rewards/margins"], 2)
    out["logps_chosen"] = (round(log[0]["logps/chosen"], 1), round(log[-1]["logps/chosen"], 1))
    out["logps_rejected"] = (round(log[0]["logps/rejected"], 1), round(log[-1]["logps/rejected"], 1))
    spec = GenerationSpec(max_new_tokens=40, do_sample=True, num_samples=8, seed=42)
    flat = lambda nested: [t for per in nested for t in per]
    out["style_before"] = round(teaching.style_rate(flat(generate(ref, tok, list(teaching.HELDOUT_PROMPTS), spec))), 2)
    out["style_after"] = round(teaching.style_rate(flat(generate(tr.model.eval(), tok, list(teaching.HELDOUT_PROMPTS), spec))), 2)
    out["sample_after"] = generate(tr.model.eval(), tok, [teaching.HELDOUT_PROMPTS[0]], GenerationSpec(max_new_tokens=40))[0][:120]
    return out

def picked_from_model():
    from labkit.own_words import candidates
    model, tok, _ = load_model("teaching", quiet=True)
    pairs = []
    for prompt in teaching.PAIR_PROMPTS[:8]:
        texts = candidates(model, tok, prompt, n=6, seed=0)
        plain = [t for t in texts if teaching.judge_style(t) == "plain"]
        jargon = [t for t in texts if teaching.judge_style(t) == "jargon"]
        if plain and jargon:
            pairs.append({"prompt": prompt, "chosen": plain[0], "rejected": jargon[0]})
    return pairs


if __name__ == "__main__":
    beta = float(sys.argv[2]) if len(sys.argv) > 2 else None
    for name in sys.argv[1].split(","):
        if name == "template":
            pairs = teaching.make_preference_pairs(8)
        elif name == "picked":   # chosen/rejected picked from the model's own samples
            pairs = picked_from_model()
        else:
            pairs = [json.loads(l) for l in open(f"tests/data/freeform/{name}.jsonl")]
        print(json.dumps(measure(name, pairs, beta=beta)), flush=True)
