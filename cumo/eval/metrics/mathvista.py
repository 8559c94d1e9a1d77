"""MathVista's scoring rules: rule-based answer extraction, normalisation by answer type, accuracy breakdowns.

Reproduces lupantech/MathVista evaluation/extract_answer.py (`extract_answer` without `--quick_extract`, as
SHI-Labs/CuMo scripts/cumo/eval/mathvista.sh runs CuMo's copy cumo/eval/extract_answer.py) and
evaluation/calculate_score.py (`normalize_extracted_answer`, `get_most_similar`, `safe_equal`,
`get_acc_with_contion`; CuMo's copy reports accuracy in percent with two decimals). A response that the
rules cannot read is left to the judge (cumo/eval/benchmarks/mathvista.py holds its prompt).

One deliberate difference: the Hub dataset stores `precision` as a float (2.0), and upstream's
`round(float(x), precision)` raises on a float precision, so every float answer read from the Hub's rows
would count as wrong; the precision is used here as the integer it is (lupantech's data/testmini.json has 2).
"""

import math
import re
from collections.abc import Sequence

OPTION_IN_PARENTHESES = re.compile(r"\(([a-zA-Z])\)")  # "(B) 8/11" -> "B"
# calculate_score.py's breakdowns: the problem's fields, then its metadata's (skills is a list)
BREAKDOWN_KEYS = (
    "question_type",
    "answer_type",
    "language",
    "source",
    "category",
    "task",
    "context",
    "grade",
)


def rule_extraction(
    response: str, question_type: str, answer_type: str, choices: Sequence[str] | None
) -> str | None:
    """The answer read off `response` by extract_answer.py's rules, or None where only the judge can read it.

    An empty response is the empty answer; a multiple-choice response that is exactly one of the choices is
    that choice; an integer (float) question's response that Python's int() (float()) parses is that number."""
    if response == "":
        return ""
    if question_type == "multi_choice" and response in (choices or ()):
        return response
    if answer_type == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    return None


def is_answer(extraction: str, question_type: str, answer_type: str, choices: Sequence[str] | None) -> bool:
    """Whether a judge's extraction is a value of the kind the question asks for: an option (its letter, or
    a text that holds a choice's or is held by one), a number that the normalisation reads, a list, or any
    text. Not upstream's: `normalize_extracted_answer` maps anything at all to the nearest choice, so a
    judge's "I cannot answer this" would score whenever its nearest choice happens to be right (issue 17)."""
    text = extraction.strip()
    if not text:
        return False
    if question_type == "multi_choice":
        options = [chr(ord("A") + i) for i in range(len(choices))]
        letters = OPTION_IN_PARENTHESES.findall(text)
        if text in options or (letters and letters[0].upper() in options):
            return True
        said = " ".join(text.lower().split())
        named = [" ".join(choice.lower().split()) for choice in choices]
        return any(choice and (choice in said or said in choice) for choice in named)
    if answer_type in ("integer", "float"):
        try:
            return math.isfinite(float(text))
        except ValueError:
            return False
    if answer_type == "list":
        return text.startswith("[") and text.endswith("]")
    return True


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions; what python-Levenshtein's `distance` gives)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def most_similar(prediction: str, choices: Sequence[str]) -> str:
    """The choice nearest to `prediction` in edit distance; the first of equals, as `list.index(min(...))`."""
    distances = [edit_distance(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def normalize_extracted_answer(
    extraction: str,
    choices: Sequence[str] | None,
    question_type: str,
    answer_type: str,
    precision: int | None,
) -> str | None:
    """The extraction in the answer's form: a choice's text, "int", "round(float, precision)" or the list as
    text; None where it cannot be read as the answer's type."""
    if question_type == "multi_choice":
        extraction = extraction.strip()
        letters = OPTION_IN_PARENTHESES.findall(extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        return most_similar(extraction, choices)
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))  # truncates: "3.7" -> "3", as upstream
        except (ValueError, OverflowError):
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(precision)))
        except (ValueError, OverflowError):
            return None
    if answer_type == "list":
        return str(extraction)
    return extraction


def breakdown(problems: list[dict], correct: list[bool]) -> dict[str, dict[str, dict]]:
    """calculate_score.py's fine-grained accuracies: for each key, each value -> accuracy (%), correct, total,
    sorted by accuracy, best first. `problems` carry the keys at top level (metadata merged in); a problem
    counts under each of its `skills`."""
    scores = {}
    for key in (*BREAKDOWN_KEYS, "skills"):
        groups: dict[str, list[bool]] = {}
        for problem, right in zip(problems, correct, strict=True):
            for value in problem[key] if key == "skills" else [problem[key]]:
                groups.setdefault(value, []).append(right)
        rows = {value: accuracy(rights) for value, rights in groups.items()}
        scores[key] = dict(sorted(rows.items(), key=lambda item: item[1]["accuracy"], reverse=True))
    return scores


def accuracy(correct: list[bool]) -> dict:
    """Accuracy in percent with two decimals, as CuMo's calculate_score.py reports it, with its counts."""
    return {
        "accuracy": round(sum(correct) / len(correct) * 100, 2),
        "correct": sum(correct),
        "total": len(correct),
    }
