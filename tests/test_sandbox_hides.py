"""Inside what a kernel may read, what it must not: an installed wheel keeps the solution
notebooks in labkit/notebooks/, inside the venv the kernel reads; the sandbox covers it."""
from __future__ import annotations

import sys

import pytest

from grading.run import sandbox


@pytest.mark.skipif(not sandbox.namespaces_work(), reason="needs user namespaces")
def test_a_hidden_folder_inside_a_kept_one_is_empty_for_the_kernel(monkeypatch, tmp_path):
    box = sandbox.Sandbox(tmp_path / "box", "teaching").create()
    secret = box.root / "solutions"
    secret.mkdir()
    (secret / "03_train_dpo.ipynb").write_text("the solution")
    (box.root / "visible.txt").write_text("fine")
    monkeypatch.setattr(sandbox, "hidden", lambda: [secret])
    code = ("import os, sys\nprint(open(sys.argv[1]).read(), os.listdir(sys.argv[2]))")
    rc, out, err, _ = box.run_untrusted([sys.executable, "-c", code, str(box.root / "visible.txt"),
                                         str(secret)], "", box.work, timeout=60)
    assert rc == 0, err
    assert out.strip() == "fine []"


def test_only_a_packaged_notebooks_folder_is_hidden():
    from labkit.release import NOTEBOOKS_DIR

    # from a checkout the notebooks are outside labkit/ (and never kept): nothing to hide
    expected = [] if NOTEBOOKS_DIR.parent.name != "labkit" else [NOTEBOOKS_DIR.resolve()]
    from grading.run.reference_cache import FOLDER
    from grading.run.sandbox_reads import hidden

    assert [p for p in hidden() if p.name != FOLDER] == expected  # and the reference runs
