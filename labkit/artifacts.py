"""Atomic, versioned save/load under the step records (labkit.steps), and weight hashes.

Each write goes to a temporary file (or folder) in the same directory and is then renamed
over the target, so an interrupted step never leaves a half-written artifact and re-running
a step replaces its artifact whole. Every JSON artifact records schema version, library
versions and time; the saved policy is identified by the sha256 of its weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .config import LabConfig

SCHEMA_VERSION = 1
# The artifact names, here and nowhere else; their fields are the records in labkit.steps.
STEP1_BASELINE = "step1_baseline.json"
STEP2_PAIRS = "step2_preferences.jsonl"
STEP2_META = "step2_meta.json"
STEP3_POLICY = "step3_policy"
STEP3_TRAINING = "step3_training.json"
STEP4_REPORT = "step4_report.json"


class ArtifactError(RuntimeError):
    """An artifact is missing, unreadable or of the wrong kind/version."""


def run_dir(path: str | Path | None = None, create: bool = True) -> Path:
    """The run directory: `path`, else `LABKIT_RUN_DIR`, else runs/default."""
    directory = Path(path) if path else LabConfig.from_env().run_dir
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    return directory


def library_versions() -> dict:
    """Installed versions, read from package metadata: importing trl just to ask costs
    seconds in every notebook."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "trl")}


def atomic_write_text(path: Path, text: str | bytes) -> None:
    """Write `text` (str as UTF-8, or bytes) to a temp file beside `path`, then rename it
    over `path`: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, payload: dict, kind: str) -> dict:
    """Write `payload` plus a header (schema_version, kind, versions, time) atomically."""
    record = {"schema_version": SCHEMA_VERSION, "kind": kind, "created_unix": time.time(),
              "versions": library_versions(), **payload}
    atomic_write_text(Path(path), json.dumps(record, indent=2, ensure_ascii=False,
                                             default=_jsonable) + "\n")
    return record


def load_json(path: Path, kind: str | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist yet: run the step that writes it first")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run its step") from exc
    if not isinstance(record, dict):
        raise ArtifactError(f"{path} should hold a JSON object; re-run its step")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema_version {record.get('schema_version')!r}, "
                            f"expected {SCHEMA_VERSION}; re-run its step")
    if kind is not None and record.get("kind") != kind:
        raise ArtifactError(f"{path} holds a {record.get('kind')!r} artifact, expected {kind!r}")
    return record


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a JSON artifact")


def finite(value) -> bool:
    """A real, finite number (not a bool, not NaN or infinity): what a metric must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def file_sha256(path: Path, digest=None) -> str:
    """sha256 of a file's bytes, read in blocks (weights and wheels can be large)."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(directory: Path) -> str:
    """sha256 over the weight files of a `save_pretrained` folder (names and bytes)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise ArtifactError(f"no weight files (*.safetensors) in {directory}")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        file_sha256(file, digest)
    return digest.hexdigest()


@contextmanager
def atomic_dir(directory: Path):
    """Yield a temp folder beside `directory` to fill; when the block succeeds it replaces
    `directory` whole, when it fails `directory` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    old = directory.with_name(f".{directory.name}.old")
    try:
        yield tmp
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_policy(model, tokenizer, directory: Path) -> str:
    """`save_pretrained` into a temp folder, then swap it in; returns the weights' sha256."""
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        digest = weights_sha256(tmp)
    return digest
