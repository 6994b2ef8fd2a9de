"""labkit.viz: plots render headless from a REAL training log, the explorer degrades to
static HTML that still shows every output (escaped), and the word diff marks changes."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from labkit import viz
from tests._runs import preset_run  # noqa: F401 (fixture: the shared real preset run)

TRICKY_BEFORE = "Formally, x < y && <script>alert(1)</script> denotes a morphism."
TRICKY_AFTER = "Think of x < y like a box you put your stuff in."


def rendered(fig: Figure) -> Figure:
    """Render to PNG as a notebook does (through Agg, no display): drawing errors surface
    here, not when the plot is built."""
    assert isinstance(fig, Figure)
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    return fig


def text_of(html_text: str) -> str:
    """What a reader sees: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", html_text)).split())


def test_plot_training_from_a_real_log_history(preset_run):  # noqa: F811
    fig = rendered(viz.plot_training(preset_run.log_history))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "reward margin", "reward accuracy",
                                               "rewards"]
    assert [len(ax.get_lines()) for ax in axes] == [2, 1, 1, 2]  # loss + the ln 2 line
    steps = [e["step"] for e in preset_run.log_history if "loss" in e]
    assert list(axes[0].get_lines()[0].get_xdata()) == steps  # summary entry left out
    assert [line.get_label() for line in axes[3].get_lines()] == ["rewards/chosen",
                                                                  "rewards/rejected"]


def test_plot_training_accepts_the_trainer_state(preset_run):  # noqa: F811
    assert len(rendered(viz.plot_training(preset_run.trainer.state)).axes) == 4


@pytest.mark.parametrize("history", [
    [],
    [{"train_runtime": 1.0, "train_loss": 0.5, "epoch": 1.0, "step": 2}],  # logging_steps=10
    [{"eval_loss": 0.6, "step": 2}],
])
def test_plot_training_without_loss_entries_says_set_logging_steps(history):
    with pytest.raises(ValueError, match="logging_steps=1"):
        viz.plot_training(history)


def test_plot_beta_curves():
    betas = (0.01, 0.1, 0.5, 1.0)
    fig = rendered(viz.plot_beta_curves(betas))
    assert len(fig.axes) == 2
    assert all(len(ax.get_lines()) == len(betas) + 1 for ax in fig.axes)  # + the m = 0 line


def test_beta_curves_match_labkit_dpo():
    """The plotted loss is labkit.dpo's DPO loss for a pair with that log-ratio margin."""
    from labkit.dpo import dpo_gradient_weight, dpo_loss

    margins = torch.tensor([-4.0, -0.5, 0.0, 0.5, 4.0])
    curves = viz.beta_curves([0.1, 1.0], margins)
    for beta, c in curves.items():
        for m, loss, weight in zip(margins, c["loss"], c["weight"]):
            zero = torch.zeros(1)
            expected, chosen, rejected = dpo_loss(m.view(1), zero, zero, zero, beta=beta)
            torch.testing.assert_close(loss, expected)
            torch.testing.assert_close(weight.view(1), dpo_gradient_weight(chosen, rejected))
    assert curves[1.0]["loss"][2].item() == pytest.approx(0.6931, abs=1e-4)  # ln 2 at m = 0


def test_small_before_after_plots():
    before = [TRICKY_BEFORE, "Canonically, a graph constitutes a formalism.", "hello"]
    after = [TRICKY_AFTER, "Simply put, a graph is like a map of your town.", "hello"]
    fig = rendered(viz.plot_style_rates(before, after))
    heights = [[bar.get_height() for bar in c] for c in fig.axes[0].containers]
    assert heights == [pytest.approx([0, 2 / 3, 1 / 3]), pytest.approx([2 / 3, 0, 1 / 3])]
    assert len(rendered(viz.plot_perplexity(3.2, 3.9)).axes) == 1


def test_plot_samples_from_callback_records():
    samples = [{"epoch": 0.0, "step": 0, "outputs": [TRICKY_BEFORE, TRICKY_BEFORE]},
               {"epoch": 1.0, "step": 2, "outputs": [TRICKY_BEFORE, TRICKY_AFTER]},
               {"epoch": 2.0, "step": 4, "outputs": [TRICKY_AFTER, TRICKY_AFTER]}]
    (line,) = rendered(viz.plot_samples(samples)).axes[0].get_lines()
    assert list(line.get_ydata()) == [0.0, 0.5, 1.0]


def test_word_diff_html_marks_removed_and_added_words():
    before_html, after_html = viz.word_diff_html("the cat sat here", "the dog sat here now")
    assert re.search(r"<del[^>]*>cat</del>", before_html)
    assert re.search(r"<ins[^>]*>dog</ins>", after_html)
    assert re.search(r"<ins[^>]*>now</ins>", after_html)
    assert "dog" not in before_html and "cat" not in after_html
    assert text_of(before_html) == "the cat sat here"
    assert text_of(after_html) == "the dog sat here now"


def test_word_diff_html_escapes():
    before_html, after_html = viz.word_diff_html(TRICKY_BEFORE, TRICKY_AFTER)
    assert "<script>" not in before_html and "&lt;script&gt;" in before_html
    assert text_of(before_html) == TRICKY_BEFORE and text_of(after_html) == TRICKY_AFTER


def test_static_explorer_shows_every_prompt_with_both_outputs_escaped():
    prompts = ["Explain <a graph>.\n", "Explain a pointer.\n"]
    before, after = [TRICKY_BEFORE, "same text"], [TRICKY_AFTER, "same text"]
    page = viz.explorer(prompts, before, after, static=True)
    html_text = page._repr_html_()
    assert "<script>" not in html_text and "&lt;a graph&gt;" in html_text
    seen = text_of(html_text)
    for text in [p.strip() for p in prompts] + before + after:
        assert text in seen
    assert html_text.count("<del") >= 1 and html_text.count("<ins") >= 1


def test_explorer_is_static_in_ci_or_when_asked(monkeypatch):
    args = (["p"], ["a"], ["b"])
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("LABKIT_STATIC_WIDGETS", raising=False)
    assert isinstance(viz.explorer(*args), viz.StaticExplorer)  # no IPython kernel here
    monkeypatch.setenv("CI", "true")
    assert not viz.use_widgets()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("LABKIT_STATIC_WIDGETS", "1")
    assert not viz.use_widgets()


def test_explorer_widgets_build_headless():
    import ipywidgets as widgets

    prompts = ["Explain a graph.\n", "Explain a pointer.\n"]
    box = viz.explorer(prompts, [TRICKY_BEFORE, "old"], [TRICKY_AFTER, "new"], static=False)
    assert isinstance(box, widgets.VBox)
    picker, prompt, panes = box.children
    left, right = panes.children
    assert isinstance(picker, widgets.Dropdown) and "&lt;script&gt;" in left.value
    picker.value = 1
    assert "a pointer" in prompt.value and text_of(left.value) == "before old"
    assert text_of(right.value) == "after new"


def test_explorer_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one output before and after per prompt"):
        viz.explorer(["p", "q"], ["a"], ["b", "c"], static=True)


@pytest.mark.slow
def test_in_a_real_kernel_plots_show_as_images_and_the_explorer_picks_widgets(tmp_path):
    """What a student sees: executed by a Jupyter kernel (nbclient), a plot is an image,
    the explorer a widget - or static HTML with LABKIT_STATIC_WIDGETS=1."""
    import nbclient
    import nbformat

    from labkit import __file__ as labkit_init

    root = str(Path(labkit_init).parents[1])
    cells = [f"import os, sys; os.environ.pop('CI', None); sys.path.insert(0, {root!r})\n"
             "from labkit import viz\nviz.plot_beta_curves()",
             "viz.explorer(['p'], ['a b'], ['a c'])",
             "os.environ['LABKIT_STATIC_WIDGETS'] = '1'\nviz.explorer(['p'], ['a b'], ['a c'])"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [set(cell.outputs[-1]["data"]) for cell in notebook.cells]
    assert "image/png" in shown[0]
    assert "application/vnd.jupyter.widget-view+json" in shown[1]
    assert "text/html" in shown[2] and "application/vnd.jupyter.widget-view+json" not in shown[2]
