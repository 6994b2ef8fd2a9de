"""Themes (labkit/themes/<name>.toml): the shipped ones load and fit the models' contexts,
a broken file is refused with table/row/field errors, and the lab passes on each theme."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from labkit import teaching as T
from labkit.config import preset_for
from labkit.themes import ThemeError, available, load_theme, theme_name
from tests.conftest import record_figure, run_lab_cli

SHIPPED = ("plain", "concise")


def test_shipped_themes_are_listed_and_plain_is_the_default(monkeypatch):
    assert set(SHIPPED) <= set(available())
    monkeypatch.delenv("LABKIT_THEME", raising=False)
    assert theme_name() == "plain" and load_theme().name == "plain"
    monkeypatch.setenv("LABKIT_THEME", "concise")
    assert load_theme().name == "concise"


def test_plain_theme_is_todays_lab():
    """The default theme keeps the figures measured before themes existed."""
    theme = load_theme("plain")
    # the 8 held-out pairs of before, then 8 more from the same generator (16: a real interval)
    assert list(theme.heldout_pairs) == [
        *T.make_preference_pairs(8, seed=1, concepts=T.HELDOUT_CONCEPTS),
        *T.make_preference_pairs(8, seed=2, concepts=T.HELDOUT_CONCEPTS)]
    assert theme.held_prompts == [*T.HELDOUT_PROMPTS[:6], T.NEUTRAL_PROMPTS[0]]
    assert theme.prompt_kinds == ["theme"] * 6 + ["far"]
    assert theme.judge.prompts == T.HELDOUT_PROMPTS and theme.judge.preferred == "plain"
    style = theme.judge_for(is_teaching=True)     # the teaching model's marker judge
    assert style.function == "judge_style" and theme.judge_for(False).function == "reading_ease"
    assert style.rate(p["chosen"] for p in theme.example_pairs) == 1.0
    assert style.rate(p["rejected"] for p in theme.example_pairs) == 0.0


def test_concise_theme_is_a_real_second_theme():
    theme = load_theme("concise")
    # a judge on any model's text (the word count); no label judge for the swapped-row check
    assert theme.judge.function == "word_count" and theme.judge_checks() == {}
    assert theme.judge_for(True) == theme.judge_for(False)
    assert len(theme.example_pairs) >= 8 and len(theme.theme_prompts) >= 4
    assert len(theme.far_prompts) >= 1 and len(theme.heldout_pairs) >= 16
    # the preference is the length: every chosen is shorter than its rejected
    for pair in theme.example_pairs + theme.heldout_pairs:
        assert len(pair["chosen"].split()) * 3 < len(pair["rejected"].split())
    trained = {p["prompt"] for p in theme.example_pairs}
    assert not trained & set(theme.evaluation_prompts)


@pytest.mark.parametrize("name", SHIPPED)
def test_theme_pairs_fit_the_teaching_model_and_gpt2(name, teaching_tokenizer, gpt2_tokenizer):
    """Validated with each tokenizer's context (teaching: 96 tokens) and the lab's max_length."""
    for tokenizer, kind in ((teaching_tokenizer, "teaching"), (gpt2_tokenizer, "gpt2")):
        max_length = preset_for(kind == "teaching").max_length
        theme = load_theme(name, tokenizer=tokenizer, max_length=max_length)
        longest = max(len(tokenizer(p["prompt"] + p[k])["input_ids"]) + 1
                      for p in theme.example_pairs + theme.heldout_pairs
                      for k in ("chosen", "rejected"))
        record_figure(f"theme {name}, longest pair ({kind} tokenizer)",
                      f"{longest} tokens (limit {min(max_length, tokenizer.model_max_length)})")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_theme_pairs_fit_smollm2(name, smollm2_dir):
    from transformers import AutoTokenizer

    from labkit.config import PRESETS

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    load_theme(name, tokenizer=tokenizer, max_length=PRESETS["llama-instruct"].max_length)


GOOD = load_theme("concise")


def write_theme(tmp_path, body: str, pairs=GOOD.example_pairs, heldout=GOOD.heldout_pairs):
    def table(name, rows):
        return "\n".join(f"[[{name}]]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                  for k, v in row.items()) for row in rows)
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent(body) + "\n" + table("example_pairs", pairs) + "\n"
                    + table("heldout_pairs", heldout), encoding="utf-8")
    return path


HEADER = """\
    title = "Mine"
    preference = "Short over long."
    [held_prompts]
    theme = ["Explain a pointer.\\n", "Explain a graph.\\n", "Explain a mutex.\\n", "Explain a thread.\\n"]
    far = ["Tell me about tea.\\n"]
    """


def problems_of(path) -> list[str]:
    with pytest.raises(ThemeError) as caught:
        load_theme(path)
    assert str(path) in str(caught.value)
    return [str(p) for p in caught.value.problems]


def test_a_valid_file_by_path_loads(tmp_path):
    theme = load_theme(write_theme(tmp_path, HEADER))
    assert theme.name == "mine" and theme.title == "Mine" and len(theme.held_prompts) == 5


def test_every_problem_names_its_table_row_and_field(tmp_path):
    pairs = [dict(p) for p in GOOD.example_pairs]
    pairs[2].pop("chosen")                                   # row 3: missing field
    pairs[1]["prompt"] = "Explain a graph.\n"                # row 2: a held prompt
    pairs[4]["rejected"] = pairs[4]["chosen"]                # row 5: identical
    pairs[5]["prompt"] = pairs[5]["prompt"].rstrip("\n")     # row 6: no newline
    heldout = [dict(p) for p in GOOD.heldout_pairs][:3]      # too few
    body = HEADER.replace('far = ["Tell me about tea.\\n"]', "far = []").replace(
        'preference = "Short over long."', 'preferense = "typo"')
    found = problems_of(write_theme(tmp_path, body, pairs, heldout))
    expected = [
        "top level, field 'preferense': unknown key (did you mean 'preference'?)",
        "top level, field 'preference': missing",
        "[held_prompts], field 'far': needs a list of at least 1 prompt(s)",
        "[heldout_pairs]: only 3 pair(s); at least 16",
        "[example_pairs], row 3, field 'chosen': missing",
        "[example_pairs], row 5, field 'rejected': is identical to 'chosen'",
        "[example_pairs], row 6, field 'prompt': must end with a newline",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)


def test_example_pairs_must_not_use_held_or_heldout_prompts(tmp_path):
    pairs = [dict(p) for p in GOOD.example_pairs]
    pairs[1]["prompt"] = "Explain a graph.\n"                 # a held prompt
    pairs[3]["prompt"] = GOOD.heldout_pairs[0]["prompt"]      # a held-out evaluation prompt
    found = problems_of(write_theme(tmp_path, HEADER, pairs))
    assert [p.split(":")[0] for p in found] == ["[example_pairs], row 2, field 'prompt'",
                                                "[example_pairs], row 4, field 'prompt'"]
    assert "held or held-out evaluation prompts" in found[0]


def test_the_judge_must_exist_and_read_the_pairs_as_the_theme_says(tmp_path):
    unknown = HEADER + '[judge]\nfunction = "judge_length"\npreferred = "short"\n'
    assert problems_of(write_theme(tmp_path, unknown)) == [
        "[judge], field 'function': 'judge_length' is not a labkit judge; known: judge_style, "
        "reading_ease, word_count, sentence_count"]
    # concise's pairs are plain-and-longer-plain or jargon-and-longer-jargon: judge_style
    # reads chosen and rejected alike, so it never prefers chosen and is refused
    styled = HEADER + '[judge]\nfunction = "judge_style"\npreferred = "plain"\n'
    found = problems_of(write_theme(tmp_path, styled))
    assert found[0].startswith("[judge], field 'function': judge_style prefers chosen on 0/26 "
                               "pairs (0%), below the 90 % a judge needs"), found


def test_syntax_errors_and_unknown_names_say_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('title = "unclosed\n', encoding="utf-8")
    (message,) = problems_of(bad)
    assert message.startswith("top level: not valid TOML") and "line 1" in message
    monkeypatch.setenv("LABKIT_THEME", "consice")
    with pytest.raises(ThemeError, match="did you mean 'concise'.*shipped: .*plain"):
        load_theme()


def test_review_pairs_follows_the_themes_judge(teaching):
    """Notebook 2's review: no style complaint for a theme without a style (label) judge;
    the plain theme's judge flags concise's jargon rows."""
    from labkit.own_words import review_pairs

    model, tokenizer, _ = teaching
    review = review_pairs(model, tokenizer, GOOD.example_pairs, judge=GOOD.judge)  # word count
    assert review.ok, str(review)  # the teaching model's own sentences: familiar, and they fit
    assert {r["chosen_style"] for r in review.rows} == {"-"}
    styled = review_pairs(model, tokenizer, GOOD.example_pairs, judge=load_theme("plain").judge)
    assert any("does not read chosen as plain" in p for p in styled.problems)


# ----------------------------------------------------------------------------- whole lab
def _figures(report: dict) -> str:
    m = report["metrics"]
    style = ("no judge" if m["style_rate_before"] is None else
             f"judge mean {m['style_rate_before']:.2f} -> {m['style_rate_after']:.2f}")
    return (f"all checks pass: {report['passed']}, {m['changed_outputs']}/{m['held_prompts']} "
            f"held outputs changed, held-out accuracy {m['heldout_preference_accuracy']:.2f}, "
            f"{style}")


@pytest.mark.slow
def test_lab_on_the_plain_theme_records_its_theme(lab_run):
    """The shared default run (tests/test_runner.py asserts its checks): theme recorded."""
    assert lab_run.report["theme"] == "plain"
    meta = json.loads((lab_run.run_dir / "step2_meta.json").read_text())
    assert meta["theme"] == "plain"
    record_figure("theme plain (teaching model)", _figures(lab_run.report))


@pytest.mark.slow
def test_lab_passes_all_four_checks_on_the_concise_theme(tmp_path, teaching_dir, monkeypatch):
    monkeypatch.setenv("LABKIT_THEME", "concise")
    proc, _ = run_lab_cli(tmp_path / "run", "teaching")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    failed = [(s["step"], s["key_figure"], s["error"]) for s in report["steps"]
              if not s["passed"] or s["error"]]
    assert not failed, f"{failed}\n{proc.stdout[-3000:]}"
    assert proc.returncode == 0 and report["passed"] and report["theme"] == "concise"
    meta = json.loads((tmp_path / "run" / "step2_meta.json").read_text())
    assert meta["theme"] == "concise" and meta["n_pairs"] == len(GOOD.example_pairs)
    m = report["metrics"]
    outcome = json.loads((tmp_path / "run" / "step4_report.json").read_text())["outcome"]
    assert outcome["judge"] == "word_count"   # the theme's judge, on the teaching model too
    assert m["style_rate_after"] > m["style_rate_before"]   # minus the word count: shorter
    assert m["changed_outputs"] >= 1
    assert m["heldout_preference_accuracy"] > 0.5  # the length preference generalises
    step4 = json.loads((tmp_path / "run" / "step4_report.json").read_text())
    words = {k: sum(len(o.split()) for o, kind in zip(step4[k], GOOD.prompt_kinds)
                    if kind == "theme") / len(GOOD.theme_prompts)
             for k in ("outputs_before", "outputs_after")}
    assert words["outputs_after"] < words["outputs_before"]  # greedy answers got shorter
    record_figure("theme concise (teaching model)", _figures(report) + f", words per theme "
                  f"answer {words['outputs_before']:.1f} -> {words['outputs_after']:.1f}")


def test_runner_checks_the_theme_first_and_leaves_the_environment_alone(tmp_path,
                                                                        monkeypatch):
    """The theme is checked before any notebook runs; kernels name an instructor's file by
    its absolute path (their working folder differs); the runner's own process environment
    is not changed (kernels get theirs as a dict)."""
    from grading.runner import run_lab

    (tmp_path / "mine.toml").write_text(GOOD.path.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    before = dict(os.environ)
    with pytest.raises(FileNotFoundError, match="expected the 4 lab notebooks"):
        run_lab(tmp_path / "run", notebooks_dir=tmp_path, theme="mine.toml")
    assert dict(os.environ) == before
    assert load_theme("mine.toml").reference == str(tmp_path / "mine.toml")
    assert load_theme("concise").reference == "concise"
    monkeypatch.setenv("LABKIT_THEME", "no-such-theme")
    with pytest.raises(ThemeError, match="no such theme"):
        run_lab(tmp_path / "run", notebooks_dir=tmp_path)
