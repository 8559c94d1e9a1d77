"""MMBench EN and CN (dev): the reader on the TSVs as model_vqa_mmbench.py reads them, VLMEvalKit's answer
matching and circular evaluation on hand-worked cases, end-to-end scores worked out from the TSV's answers,
and the submission sheet of convert_mmbench_for_submission.py."""

import base64
import csv
import json
import sys

import pandas as pd
import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.mmbench import accuracy_report, circular_outcome, match, prompt
from tests.predictions import answered

FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}
NAMES = {"en": "mmbench", "cn": "mmbench_cn"}
SUFFIX = {
    "en": "\nAnswer with the option's letter from the given choices directly.",
    "cn": "\n请直接回答选项字母。",
}
LANGS = ("en", "cn")


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "mmbench"


def table_of(folder, lang) -> list[dict]:
    """The TSV's rows as plain strings (empty cell: "")."""
    with (folder / FILES[lang]).open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def options(row) -> list[str]:
    return [row[letter] for letter in "ABCD" if row[letter]]


# ---------------------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("lang", LANGS)
def test_reader(folder, lang):
    benchmark, rows = get(NAMES[lang]), table_of(folder, lang)
    asked = benchmark.questions(folder)
    assert len(asked) == len(rows) > 40  # every rotation is a row, asked once
    assert [q.question_id for q in asked] == [int(row["index"]) for row in rows]
    assert len({q.question_id for q in asked}) == len(asked)
    for question, row in zip(asked, rows, strict=True):
        lines = [f"{letter}. {option}" for letter, option in zip("ABCD", options(row), strict=False)]
        head = [row["hint"], row["question"]] if row["hint"] else [row["question"]]
        assert question.text == "\n".join(head + lines) + SUFFIX[lang]
        assert question.image == base64.b64decode(row["image"])
    assert any(row["hint"] for row in rows)  # the position questions carry one
    assert asked[0].load_image().size == (64, 64)
    assert benchmark.folder == "mmbench" and benchmark.split == "dev" and benchmark.max_new_tokens == 1024


def test_prompt_as_model_vqa_mmbench_builds_it():
    assert prompt("Which is red?", "Look closely.", ["apple", "sky", "grass"], "en") == (
        "Look closely.\nWhich is red?\nA. apple\nB. sky\nC. grass\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert (
        prompt("哪个是红色的？", None, ["apple", "sky"], "cn")
        == "哪个是红色的？\nA. apple\nB. sky\n请直接回答选项字母。"
    )


def test_absent_hints_and_options_as_llava_reads_them(folder, tmp_path):
    """pandas reads an empty cell as NaN; "none"/"nan" are absent too; the options stop at the first absent one."""
    image = table_of(folder, "en")[0]["image"]
    header = "index question hint A B C D answer category image source l2-category comment split".split()
    rows = [
        [0, "Q0?", "", "a", "b", "", "d", "A", "ocr", image, "s", "l2", "", "dev"],
        [1, "Q1?", "none", "a", "b", "c", "nan", "B", "ocr", image, "s", "l2", "", "dev"],
        [2, "Q2?", "Hint.", "a", "b", "c", "d", "C", "ocr", image, "s", "l2", "", "dev"],
    ]
    (tmp_path / FILES["en"]).write_text(
        "\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n", encoding="utf-8"
    )
    texts = [q.text for q in get("mmbench").questions(tmp_path)]
    assert texts == [
        "Q0?\nA. a\nB. b" + SUFFIX["en"],
        "Q1?\nA. a\nB. b\nC. c" + SUFFIX["en"],
        "Hint.\nQ2?\nA. a\nB. b\nC. c\nD. d" + SUFFIX["en"],
    ]


# -------------------------------------------------------------------------------------------------- matching

CHOICES = {"A": "red", "B": "blue", "C": "green circle"}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("The answer is A.", "A"),
        ("**B**", "B"),
        ("A red circle", "A"),  # "A" as an article still names A (VLMEvalKit, verbose off)
        ("A or B", None),  # two letters: no letter, and no option text either
        ("b", None),  # letters are upper-case only, and "b" is no option's text
        ("D", None),  # not an option here
        ("Blue.", "B"),  # by text, case-insensitive
        ("It is green circle", "C"),
        ("red or blue", None),  # two options' texts
        ("Z", "Z"),  # "none of these": never right
        ("Cannot determine the answer", "Z"),
        ("C。", None),  # the full-width stop is not blanked out
        ("答案是C", None),  # nor is a letter glued to Chinese text
    ],
)
def test_match_as_can_infer(answer, letter):
    assert match(answer, dict(CHOICES)) == letter


@pytest.mark.parametrize(
    ("rotations", "outcome"),
    [
        ([("A", "A"), ("C", "C"), ("B", "B")], "hit"),
        ([("A", "A"), ("C", "B"), ("B", "B")], "miss"),
        ([("A", "A"), ("C", None), ("B", "B")], "unmatched"),  # the judge's to decide; a miss without one
        ([("A", None), ("C", "A"), ("B", "B")], "miss"),  # a wrong letter decides, whatever the rest
        ([("A", "Z"), ("C", "C")], "miss"),
    ],
)
def test_circular_outcome(rotations, outcome):
    assert circular_outcome(rotations) == outcome


def test_accuracy_report():
    report = accuracy_report(["hit", "miss", "unmatched", "hit"], ["ocr", "ocr", "color", "color"], ["P"] * 4)
    assert report == {"overall": 50.0, "l2_category": {"P": 50.0}, "category": {"color": 50.0, "ocr": 50.0}}


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("lang", LANGS)
def test_oracle_scores_100(folder, lang):
    benchmark, rows = get(NAMES[lang]), table_of(folder, lang)
    result = benchmark.score(folder, answered(benchmark.questions(folder), [row["answer"] for row in rows]))
    assert result.headline == 100.0 and result.n == sum(int(row["index"]) < 1_000_000 for row in rows) == 40
    assert result.metrics["hit"] == 40 and result.metrics["rows"] == len(rows)
    json.dumps(result.metrics)  # metrics.json takes them as they are


@pytest.mark.parametrize("lang", LANGS)
def test_wrong_answers_score_as_worked_out(folder, lang):
    """Question i (its rotations k = 0, 1, ...) by i % 5: 1 -> rotation 1 answered with another letter (miss);
    2 -> rotation 0 answered "I am not sure" (matches nothing); 3 -> every rotation answered with the option's
    text (hit); 4 -> "The answer is X." (hit); 0 -> the bare letter (hit)."""
    benchmark, rows = get(NAMES[lang]), table_of(folder, lang)
    replies = []
    for row in rows:
        question, rotation = int(row["index"]) % 1_000_000, int(row["index"]) // 1_000_000
        letters = "ABCD"[: len(options(row))]
        if question % 5 == 1 and rotation == 1:
            replies.append(letters[(letters.index(row["answer"]) + 1) % len(letters)])
        elif question % 5 == 2 and rotation == 0:
            replies.append("I am not sure")
        elif question % 5 == 3:
            replies.append(row[row["answer"]])
        elif question % 5 == 4:
            replies.append(f"The answer is {row['answer']}.")
        else:
            replies.append(row["answer"])
    result = benchmark.score(folder, answered(benchmark.questions(folder), replies))
    main = [row for row in rows if int(row["index"]) < 1_000_000]
    failed = {int(row["index"]) for row in main if int(row["index"]) % 5 in (1, 2)}
    assert result.metrics["miss"] == sum(i % 5 == 1 for i in failed)
    assert result.metrics["unmatched"] == sum(i % 5 == 2 for i in failed)
    assert result.headline == pytest.approx(100 * (len(main) - len(failed)) / len(main))
    for category in {row["category"] for row in main}:
        in_category = [int(row["index"]) for row in main if row["category"] == category]
        hits = [i for i in in_category if i not in failed]
        assert result.metrics["category"][category] == pytest.approx(100 * len(hits) / len(in_category))


def test_an_unanswered_rotation_is_an_error(folder):
    benchmark, rows = get("mmbench"), table_of(folder, "en")
    asked = benchmark.questions(folder)
    with pytest.raises(ValueError, match="1 question"):
        benchmark.score(folder, answered(asked[:-1], [row["answer"] for row in rows[:-1]]))


# ------------------------------------------------------------------------------------------------ submission


def test_submission_is_refused_unless_every_row_is_answered_once(folder, tmp_path):
    benchmark, rows = get("mmbench"), table_of(folder, "en")
    asked = benchmark.questions(folder)
    replies = [row["answer"] for row in rows]
    with pytest.raises(ValueError, match="unanswered"):
        benchmark.submission(folder, answered(asked[1:], replies[1:]), tmp_path)
    with pytest.raises(ValueError, match="answered more than once"):
        benchmark.submission(folder, answered(asked + asked[:1], replies + replies[:1]), tmp_path)
    assert list(tmp_path.iterdir()) == []


SHEET_COLUMNS = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]


@pytest.mark.parametrize("lang", LANGS)
def test_submission_sheet(folder, tmp_path, lang):
    pytest.importorskip("openpyxl")  # pandas writes .xlsx with it, as convert_mmbench_for_submission.py does
    benchmark, rows = get(NAMES[lang]), table_of(folder, lang)
    replies = [f"reply {row['index']}" for row in rows]
    (path,) = benchmark.submission(folder, answered(benchmark.questions(folder), replies), tmp_path)
    assert path == tmp_path / FILES[lang].replace(".tsv", ".xlsx")
    sheet = pd.read_excel(path, engine="openpyxl", keep_default_na=False)
    assert list(sheet.columns) == SHEET_COLUMNS
    assert list(sheet["index"]) == [int(row["index"]) for row in rows]
    assert list(sheet["prediction"]) == replies
    assert list(sheet["question"]) == [row["question"] for row in rows]


def test_submission_sheet_without_openpyxl(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl raises ImportError
    benchmark, rows = get("mmbench"), table_of(folder, "en")
    replies = [f"reply {row['index']}" for row in rows]
    (path,) = benchmark.submission(folder, answered(benchmark.questions(folder), replies), tmp_path)
    assert path == tmp_path / "mmbench_dev_20230712.tsv"
    with path.open(encoding="utf-8", newline="") as file:
        sheet = list(csv.DictReader(file, delimiter="\t"))
    assert list(sheet[0]) == SHEET_COLUMNS
    for written, row, reply in zip(sheet, rows, replies, strict=True):
        assert written == {
            **{column: row[column] for column in SHEET_COLUMNS if column != "prediction"},
            "prediction": reply,
        }
