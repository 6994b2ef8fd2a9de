"""Themes (labkit/themes/<name>.toml): the shipped ones load and fit the models' contexts,
a broken file is refused with table/row/field errors, and the lab passes on each theme."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from labkit import teaching as T
from labkit.config import preset_for
from labkit.themes import ThemeError, available, load_theme, theme_name
from tests.conftest import record_figure, run_lab_cli

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

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
    """Validated with each tokenizer's context (teaching: 96 tokens) and the lab's max_length;
    the real-model pairs against GPT-2's (the teaching model never trains on them)."""
    for tokenizer, kind in ((teaching_tokenizer, "teaching"), (gpt2_tokenizer, "gpt2")):
        teaching = kind == "teaching"
        max_length = preset_for(teaching).max_length
        theme = load_theme(name, tokenizer=tokenizer, max_length=max_length, is_teaching=teaching)
        longest = max(len(tokenizer(p["prompt"] + p[k])["input_ids"]) + 1
                      for p in theme.example_pairs + theme.heldout_pairs
                      + (() if teaching else theme.real_model_pairs)
                      for k in ("chosen", "rejected"))
        record_figure(f"theme {name}, longest pair ({kind} tokenizer)",
                      f"{longest} tokens (limit {min(max_length, tokenizer.model_max_length)})")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_theme_pairs_fit_smollm2(name, smollm2_dir):
    from transformers import AutoTokenizer

    from labkit.config import PRESETS

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    theme = load_theme(name, tokenizer=tokenizer, max_length=PRESETS["llama-instruct"].max_length)
    assert len(theme.real_model_pairs) == (42 if name == "plain" else 0)  # checked there too


GOOD = load_theme("concise")


def write_theme(tmp_path, body: str, pairs=GOOD.example_pairs, heldout=GOOD.heldout_pairs,
                real=()):
    def table(name, rows):
        return "\n".join(f"[[{name}]]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                  for k, v in row.items()) for row in rows)
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent(body) + "\n" + table("example_pairs", pairs) + "\n"
                    + table("heldout_pairs", heldout) + "\n" + table("real_model_pairs", real),
                    encoding="utf-8")
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


# ----------------------------------------------------------------------------- real-model pairs
# an instructor's extra pairs for real models, in concise's form (short chosen, long rejected)
REAL = [
    {"prompt": "Explain a kettle.\n", "chosen": "A kettle boils water.",
     "rejected": "A kettle is a vessel, usually electric, that heats the water inside it until "
                 "it boils, and then it switches itself off so that nothing burns."},
    {"prompt": "Explain a bicycle.\n", "chosen": "A bicycle is two wheels you pedal.",
     "rejected": "A bicycle is a vehicle with two wheels held in a frame, driven by pedals that "
                 "turn a chain, and steered with handlebars by the person riding it."},
    {"prompt": "Explain a library card.\n", "chosen": "It lets you borrow books.",
     "rejected": "A library card is a small card, issued by a library to its members, that you "
                 "show at the desk so that you can borrow books and take them home for a while."},
    {"prompt": "Explain a map.\n", "chosen": "A map is a drawing of a place.",
     "rejected": "A map is a drawing, on paper or on a screen, that shows a place from above, "
                 "with its roads, rivers and towns, so that you can find your way around it."},
]
JUDGED = HEADER + """\
    [judge]
    function = "word_count"
    preferred = "short"
    prompts = ["Explain a kite.\\n"]
    """


def test_an_instructors_theme_may_carry_real_model_pairs(tmp_path):
    theme = load_theme(write_theme(tmp_path, JUDGED, real=REAL))
    assert theme.real_model_pairs == tuple(REAL) and GOOD.real_model_pairs == ()
    (agreement,) = theme.judge_agreements       # the judge reads them too: 10 + 16 + 4 pairs
    assert (agreement.agree, agreement.n) == (30, 30)
    assert "4 real-model pairs" in str(theme) and "word_count prefers chosen on 30/30" in str(theme)
    plain = load_theme("plain")                 # the teaching judge never reads them
    assert [a.n for a in plain.judge_agreements] == [8 + 16 + 42, 8 + 16]


def test_real_model_pairs_are_refused_by_row_and_field(tmp_path):
    rows = [dict(p) for p in REAL] * 2
    rows = [dict(p) for p in rows]
    rows[0]["chosen"] = " "                                  # row 1: empty
    rows[1]["rejected"] = rows[1]["chosen"]                   # row 2: identical
    rows[2]["prompt"] = "Explain a graph.\n"                  # row 3: a held prompt
    rows[3]["prompt"] = "Explain memory allocation.\n"        # row 4: a held-out pair's prompt
    rows[4]["prompt"] = "Explain a kite.\n"                   # row 5: a judged prompt
    rows[5]["prompt"] = "Explain a mutex in Go.\n"            # row 6: a held concept, reworded
    rows[6]["prompt"] = "Explain a kettle."                   # row 7: no newline
    rows[7]["chosn"] = rows[7].pop("chosen")                  # row 8: a misspelt field
    found = problems_of(write_theme(tmp_path, JUDGED, real=rows))
    expected = [
        "[real_model_pairs], row 1, field 'chosen': is empty",
        "[real_model_pairs], row 2, field 'rejected': is identical to 'chosen'",
        "[real_model_pairs], row 3, field 'prompt': is one of the theme's held, held-out or "
        "judged prompts",
        "[real_model_pairs], row 4, field 'prompt': is one of the theme's held",
        "[real_model_pairs], row 5, field 'prompt': is one of the theme's held",
        "[real_model_pairs], row 6, field 'prompt': names 'a mutex', a concept step 4 evaluates",
        "[real_model_pairs], row 7, field 'prompt': must end with a newline",
        "[real_model_pairs], row 8, field 'chosn': unknown field (did you mean 'chosen'?)",
        "[real_model_pairs], row 8, field 'chosen': missing",
    ]
    assert len(found) == len(expected), found
    for start, problem in zip(expected, found):  # in row order
        assert problem.startswith(start), (start, found)
    path = tmp_path / "mine.toml"
    path.write_text('real_model_pairs = "Explain a kettle."\n' + path.read_text(
        encoding="utf-8").split("[[real_model_pairs]]")[0], encoding="utf-8")
    assert problems_of(path) == ["[real_model_pairs]: must be an array of tables: write each "
                                 "pair under its own [[real_model_pairs]] header"]


def test_a_judge_must_agree_with_the_real_model_pairs_too(tmp_path):
    inverted = [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in REAL]
    (problem,) = problems_of(write_theme(tmp_path, JUDGED, real=inverted))
    assert problem.startswith("[judge], field 'function': word_count prefers chosen on 26/30 "
                              "pairs (87%), below the 90 % a judge needs"), problem
    assert problem.endswith("does not prefer chosen on real_model_pairs rows 1, 2, 3, 4. Pick "
                            "a judge that reads the preference, or fix those pairs"), problem


def test_real_model_pairs_must_fit_a_real_model_not_the_teaching_one(tmp_path, gpt2_tokenizer,
                                                                     teaching_tokenizer):
    long = dict(REAL[0], rejected=" ".join(["and then it boils over, so it switches off,"] * 25))
    path = write_theme(tmp_path, JUDGED, real=[long, *REAL[1:]])
    with pytest.raises(ThemeError) as caught:
        load_theme(path, tokenizer=gpt2_tokenizer, max_length=128)
    (problem,) = [str(p) for p in caught.value.problems]
    assert problem.startswith("[real_model_pairs], row 1, field 'rejected': prompt + rejected "
                              "is ") and "max_length is 128" in problem
    # the teaching model never trains on them: its 96-token context does not apply
    theme = load_theme(path, tokenizer=teaching_tokenizer, max_length=128, is_teaching=True)
    assert theme.real_model_pairs[0] == long


def test_real_model_pairs_join_a_students_pairs_on_a_real_model_only():
    theme, own = load_theme("plain"), [dict(p, prompt="Explain a kite.\n") for p in
                                       load_theme("plain").example_pairs]
    assert theme.with_real_model_pairs(own, is_teaching=True) == (own, "")
    pairs, note = theme.with_real_model_pairs(own, is_teaching=False)
    assert pairs == own + list(theme.real_model_pairs) and len(pairs) == 50
    assert note.startswith("Added the theme's 42 real-model pairs (rows 9-50) to your 8: on a "
                           "real model a handful of pairs alone does not change what it "
                           "writes (docs/models.md)")
    assert theme.with_real_model_pairs(pairs, is_teaching=False) == (pairs, note)  # re-run
    assert theme.provided_rows(pairs) == list(range(9, 51))
    held = theme.real_model_pairs[0]["prompt"]   # a student's own held prompt is never trained on
    fewer, note = theme.with_real_model_pairs(own, is_teaching=False, held_prompts=[held])
    assert len(fewer) == 49 and held not in [p["prompt"] for p in fewer]
    assert note.endswith("; 1 left out: on your held prompts.")
    assert load_theme("concise").with_real_model_pairs(own, is_teaching=False) == (own, "")


def notebook2_cells(*texts: str) -> str:
    """The source of notebook 2's code cells holding `texts`, in notebook order."""
    import nbformat

    nb = nbformat.read(str(NOTEBOOKS / "02_preferences.ipynb"), as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and any(t in c.source
                                                                          for t in texts)]
    assert len(cells) == len(texts), cells
    return "\n".join(cells)


def test_notebook_2_trains_a_real_model_on_the_real_model_pairs_too(teaching, gpt2_tokenizer,
                                                                     capsys):
    """Notebook 2's own cells (the solution's pairs, then the cell after the exercise, which
    the student version runs too): nothing added on the teaching model; on GPT-2 the theme's
    42 pairs, with a notice, and all 50 pass the validator with GPT-2's tokenizer."""
    from dataclasses import replace

    from labkit.data import validate_pairs

    cell = notebook2_cells("with_real_model_pairs")
    assert "BEGIN SOLUTION" not in cell
    code = notebook2_cells("### BEGIN SOLUTION\n# new pairs", "with_real_model_pairs")
    theme, (_, _, info) = load_theme("plain"), teaching
    on_teaching = dict(theme=theme, info=info, held_prompts=theme.held_prompts)
    exec(code, on_teaching)
    assert len(on_teaching["pairs"]) == 8 and capsys.readouterr().out == "8 pairs\n"  # no notice
    gpt2_info = replace(info, requested="gpt2", resolved="gpt2", is_teaching=False, kind="gpt2")
    on_gpt2 = dict(theme=theme, info=gpt2_info, held_prompts=theme.held_prompts)
    exec(code, on_gpt2)
    assert on_gpt2["pairs"][:8] == on_teaching["pairs"] and len(on_gpt2["pairs"]) == 50
    assert "Added the theme's 42 real-model pairs" in capsys.readouterr().out
    dataset = validate_pairs(on_gpt2["pairs"], tokenizer=gpt2_tokenizer,
                             heldout_prompts=theme.held_prompts + theme.heldout_prompts,
                             max_length=preset_for(gpt2_info).max_length)
    assert len(dataset) == 50


@pytest.mark.slow
def test_notebook_2s_review_shows_the_real_model_pairs_against_gpt2s_context(gpt2):
    """The review table (each row's tokens against the context) on all 50 pairs, on GPT-2."""
    from labkit.own_words import review_pairs

    model, tokenizer, info = gpt2
    theme = load_theme("plain")
    pairs, _ = theme.with_real_model_pairs(theme.example_pairs, info.is_teaching)
    review = review_pairs(model, tokenizer, pairs, is_teaching=info.is_teaching, judge=theme.judge)
    assert len(review.rows) == 50 and review.ok, str(review)
    assert max(r["tokens"] for r in review.rows) <= 54 and str(review).count("/1024") == 51
    record_figure("notebook 2 review on GPT-2, 8 + 42 pairs", str(review).splitlines()[-1])


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
