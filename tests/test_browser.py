"""The lab in a real browser: JupyterLab in headless Chromium, driven by Playwright.

nbclient (tests/test_notebooks.py, `labkit run`) proves the cells run; only a browser proves
what a student sees: the kernel dialog, the plots as images, and the before/after explorer
as a live widget (nbclient never renders widgets, so an "Error displaying widget" would go
unnoticed). Each solution notebook runs in order on one fresh run directory with the
teaching model; a screenshot per notebook goes to build/screenshots/.

Needs Debian's `chromium` (apt; .ci/run installs it) and Playwright for Python (the test
extra). `playwright install` downloads browsers from a CDN, so the system Chromium is used.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_baseline.ipynb", "02_preferences.ipynb", "03_train_dpo.ipynb",
             "04_before_after.ipynb")
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM_ENV = "LABKIT_CHROMIUM"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
# waits, not assertions about speed: a busy 2-core machine can be slow
SERVER_START_S, NOTEBOOK_S = 180, 900
# JupyterLab user settings for the test: every cell in the DOM (no virtual scrolling, so
# the checks see every output), and no news/update requests to the internet.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
}

pytestmark = pytest.mark.slow


def find_chromium() -> str | None:
    """$LABKIT_CHROMIUM, else Debian's /usr/bin/chromium, else chromium on PATH."""
    for candidate in (os.environ.get(CHROMIUM_ENV), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(f"no Chromium found (${CHROMIUM_ENV}, /usr/bin/chromium, PATH): install "
                    "Debian's `chromium` (apt-get install chromium), as .ci/run does")
    return path


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install -e '.[test]'")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A JupyterLab server on localhost with a random token, serving a copy of the notebooks
    (JupyterLab autosaves: the repository's notebooks must stay without outputs)."""

    def __init__(self, root: Path, run_dir: Path):
        self.root, self.run_dir = root, run_dir
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / "jupyterlab.log"
        settings = root.parent / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items()
               if k not in ("CI", "LABKIT_STATIC_WIDGETS", "JUPYTER_CONFIG_DIR")}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
                       os.pathsep),
                   LABKIT_RUN_DIR=str(run_dir), LABKIT_MODEL="teaching", HF_HUB_OFFLINE="1",
                   OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false",
                   JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(root.parent / "lab-workspaces"),
                   JUPYTER_RUNTIME_DIR=str(root.parent / "jupyter-runtime"))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", "--port-retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{self.tail()}")

    def shutdown_kernels(self) -> None:
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        try:
            self.shutdown_kernels()
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def lab(tmp_path, request, chromium, sync_playwright):
    """JupyterLab on a fresh run directory; the teaching model is built first (by the
    session fixture), so notebook 1 loads it instead of building it. Requested only once
    Chromium and Playwright are found, so a skip costs no model build."""
    request.getfixturevalue("teaching_dir")
    root, run_dir = tmp_path / "lab", tmp_path / "run"
    (root / "notebooks").mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, root / "notebooks" / name)
    server = Lab(root, run_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


# ----------------------------------------------------------------------------- in the page
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
ALL_CELLS_DONE = """() => {
  const panel = document.querySelector('%s');
  if (!panel) return false;
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
  // Run All marks every cell [*] at once; an error stops it, leaving later cells [ ]
  return status && status.dataset.status === 'idle' && prompts.length > 0
    && !prompts.some(p => p.textContent.includes('*'))
    && prompts.some(p => /\\[\\d+\\]/.test(p.textContent));
}""" % ACTIVE


# the status bar reads "No Kernel | Initializing" until a kernel is attached, then
# "Python 3 (ipykernel) | Idle"; the toolbar's indicator alone says idle even without one
KERNEL_READY = """() => {
  const bar = document.querySelector('#jp-main-statusbar');
  const status = document.querySelector('%s .jp-Notebook-ExecutionIndicator');
  return !!bar && !!status && status.dataset.status === 'idle'
    && /\\| Idle/.test(bar.innerText) && !bar.innerText.includes('No Kernel');
}""" % ACTIVE


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open a notebook (layout reset, so the previous one does not come back) and get its
    kernel started, answering JupyterLab's kernel-selection dialog if it asks."""
    page.goto(f"{lab.url}/lab/tree/notebooks/{name}?reset&token={lab.token}")
    page.locator(f"{ACTIVE} .jp-CodeCell").first.wait_for(timeout=120_000)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "kernel" in dialog.first.inner_text().lower():
            dialog.first.locator(".jp-mod-accept").click()  # "Select": the notebook's kernel
        if page.evaluate(KERNEL_READY):
            return
        page.wait_for_timeout(500)
    pytest.fail(f"{name}: the kernel did not start (JupyterLab log:\n{lab.tail()})")


def run_all_cells(page, name: str) -> None:
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    page.wait_for_timeout(1000)  # let the queued cells get their [*] prompts
    page.wait_for_function(ALL_CELLS_DONE, timeout=NOTEBOOK_S * 1000, polling=1000)


def save_and_read(page, lab: Lab, name: str) -> nbformat.NotebookNode:
    """Save from the browser and read the notebook back: the outputs exactly as the
    frontend holds them (output types, execution counts)."""
    path = lab.root / "notebooks" / name
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")  # JupyterLab's save shortcut, bound on the whole page
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        if path.stat().st_mtime_ns == before or page.locator(".jp-mod-dirty").count():
            continue
        try:
            return nbformat.read(path, as_version=4)
        except (ValueError, nbformat.reader.NotJSONError):
            continue  # caught mid-write
    pytest.fail(f"{name}: JupyterLab did not save the notebook within 60 s")


def error_outputs(nb) -> list[str]:
    return [f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def expected_plots(nb) -> int:
    """Plots the notebook displays: one per `display(plot_...)` call (teaching model)."""
    return sum(cell.source.count("display(plot_") for cell in nb.cells
               if cell.cell_type == "code")


def rendered_images(page) -> int:
    """<img> outputs that actually decoded (naturalWidth > 0)."""
    return page.evaluate("""() => [...document.querySelectorAll(
        '%s .jp-OutputArea-output img')].filter(i => i.complete && i.naturalWidth > 0).length
    """ % ACTIVE)


def check_explorer(page) -> str:
    """The before/after widget: both panes filled; picking another prompt updates them
    through the kernel. Returns the second prompt's text, shown after the pick."""
    cell = page.locator(f"{ACTIVE} .jp-CodeCell", has_text="explorer(prompts")
    assert cell.count() == 1, "notebook 4 has no single explorer(...) cell"
    output = cell.locator(".jp-OutputArea")
    output.locator(".widget-dropdown select").wait_for(timeout=60_000)
    text = output.inner_text()
    assert "Error displaying widget" not in text, text[:500]
    panes = output.locator(".widget-hbox .widget-html")
    assert panes.count() == 2, f"expected two panes, found {panes.count()}: {text[:500]}"
    before, after = panes.nth(0).inner_text(), panes.nth(1).inner_text()
    assert before.strip().startswith("before") and len(before.strip()) > len("before"), before
    assert after.strip().startswith("after") and len(after.strip()) > len("after"), after
    select = output.locator(".widget-dropdown select")
    label = select.locator("option").nth(1).text_content() or ""
    prompt_text = label.replace("\xa0", " ").split(". ", 1)[-1].strip()  # ipywidgets: nbsp
    assert prompt_text, f"the dropdown's second option has no label: {label!r}"
    assert prompt_text not in output.locator(".widget-html").first.inner_text()
    select.select_option(index=1)
    page.wait_for_function(
        """([sel, want]) => [...document.querySelectorAll(sel)].some(
             e => e.textContent.includes(want))""",
        arg=[f"{ACTIVE} .jp-OutputArea .widget-html", prompt_text], timeout=30_000)
    return prompt_text


def test_the_four_solution_notebooks_run_in_a_real_browser(chromium, sync_playwright, lab,
                                                            figure):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            for name in NOTEBOOKS:
                start = time.monotonic()
                open_notebook(page, lab, name)
                run_all_cells(page, name)
                nb = save_and_read(page, lab, name)
                shot = SCREENSHOTS / f"{Path(name).stem}.png"
                _focus(page, name)
                page.screenshot(path=str(shot))
                assert not error_outputs(nb), f"{name}: {error_outputs(nb)} (see {shot})"
                unrun = [i for i, c in enumerate(nb.cells)
                         if c.cell_type == "code" and c.execution_count is None]
                assert not unrun, f"{name}: cells {unrun} did not run (see {shot})"
                assert "Error displaying widget" not in page.locator(ACTIVE).inner_text()
                assert rendered_images(page) >= expected_plots(nb), (
                    f"{name}: {rendered_images(page)} plot images rendered, expected "
                    f"{expected_plots(nb)} (see {shot})")
                last = page.locator(f"{ACTIVE} .jp-CodeCell").last.locator(".jp-OutputArea")
                verdict = last.inner_text().lower()
                assert "passed" in verdict and "failed" not in verdict, (
                    f"{name}: the step check did not pass: {last.inner_text()[:400]}")
                if name.startswith("03"):  # TRL's bar (transformers' notebook callback)
                    train = page.locator(f"{ACTIVE} .jp-CodeCell", has_text="trainer.train()")
                    assert train.locator(".jp-OutputArea progress").count() >= 1, (
                        f"no training progress bar: {train.last.inner_text()[:400]}")
                if name.startswith("04"):
                    check_explorer(page)
                    _focus(page, name)
                    page.screenshot(path=str(shot))  # the widget after picking prompt 2
                figure(f"browser: {name}", f"{time.monotonic() - start:.1f} s, "
                       f"{rendered_images(page)} plots, screenshot {shot.relative_to(ROOT)}")
                lab.shutdown_kernels()
        finally:
            browser.close()


def _focus(page, name: str) -> None:
    """Scroll what the screenshot should show into view: the explorer (4), the training
    progress bar and what follows (3), the step check (1, 2)."""
    if name.startswith("04"):
        target = page.locator(f"{ACTIVE} .jp-CodeCell", has_text="explorer(prompts")
    elif name.startswith("03"):
        target = page.locator(f"{ACTIVE} .jp-CodeCell", has_text="trainer.train()").locator(
            ".jp-OutputArea progress")
        if target.count():
            target.first.evaluate("""e => { e.scrollIntoView({block: 'start'});
                const panel = e.closest('.jp-WindowedPanel-outer');  // under the toolbar
                if (panel) panel.scrollTop -= 60; }""")
            page.wait_for_timeout(300)
            return
        target = page.locator(f"{ACTIVE} .jp-CodeCell", has_text="plot_training(")
    else:
        target = page.locator(f"{ACTIVE} .jp-CodeCell").last
    target.first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
