"""MMMU's prompt, answer parsing and scoring (validation), as MMMU's own evaluation code does them.

Sources: MMMU-Benchmark/MMMU eval/eval_utils.py (parsing and scoring; CuMo copies it as
cumo/eval/mmmu_utils/eval_utils.py), eval/data_utils.py (subjects and their domains), eval/main_eval_only.py
(accuracy per subject, per domain and overall, weighted by questions); the prompt is CuMo's
cumo/eval/model_vqa_mmmu.py `construct_prompt`.

- Multiple choice: the answer is parsed to a letter: a bracketed letter "(B)", else a bare letter " B ", else
  (answers of more than 5 words only) an option's text; of several candidates the last one in the answer
  wins; with none, a random letter. MMMU seeds Python's random module with 42 when eval_utils is imported
  and draws in dataset order, so `parse_choice` takes a `random.Random(42)` that the caller walks through the
  questions in that order. Right when the letter equals the ground truth.
- Open: the answer is cut to the tails after "is", "so", "therefore", ... (and "=" in the last line), numbers
  are pulled out of those, numbers become floats rounded to 2 decimals and text is lower-cased. Right when a
  number equals a ground-truth number, or a ground-truth string occurs inside a parsed string.

The quirks are MMMU's and kept: the sentence split after lower-casing splits on line breaks only, a one-letter
ground truth must stand next to a space ("a" -> " a" / "a "), and `float` decides what a number is ("nan",
"1e3" and "1,000" are numbers).
"""

import random
import re

# data_utils.py's DOMAIN_CAT2SUB_CAT: the 30 subjects, by domain.
DOMAINS = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": [
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": [
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ],
}
# data_utils.py's CAT_SHORT2LONG values, the order model_vqa_mmmu.py loads and concatenates the subjects in, is
# the alphabetical one.
SUBJECTS = sorted(subject for subjects in DOMAINS.values() for subject in subjects)
SEED = 42  # eval_utils.py: random.seed(42) at import
MULTIPLE_CHOICE = "multiple-choice"
CHOICE_INSTRUCTION = (
    "Answer with the option's letter from the given choices directly"  # no final period: CuMo's
)
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
IMAGE_TAG = "<image 1>"


def prompt(question: str, question_type: str, options: list[str]) -> str:
    """The user turn of model_vqa_mmmu.py: options as "(A) text" lines, its instruction, and <image 1> taken out
    (the image goes in front as the placeholder instead)."""
    if question_type == MULTIPLE_CHOICE:
        listing = "".join(
            f"({letter}) {option}\n" for letter, option in zip(letters(options), options, strict=True)
        )
        text = question + "\n" + listing + "\n" + CHOICE_INSTRUCTION
    else:
        text = question + "\n" + SHORT_INSTRUCTION
    return text.replace(IMAGE_TAG, "").strip()


def letters(options: list[str]) -> list[str]:
    return [chr(ord("A") + k) for k in range(len(options))]


# ------------------------------------------------------------------------------------------ multiple choice


def parse_choice(response: str, options: list[str], rng: random.Random) -> tuple[str, bool]:
    """The letter `response` picks among `options` (eval_utils.py `parse_multi_choice_response`), and whether
    it was drawn at random because the response named none."""
    all_choices = letters(options)
    index2ans = dict(zip(all_choices, options, strict=True))
    for char in [",", ".", "!", "?", ";", ":", "'"]:  # one after the other, as MMMU strips them
        response = response.strip(char)
    response = " " + response + " "  # so that " A " matches a letter standing alone at either end

    candidates = [choice for choice in all_choices if f"({choice})" in response]
    bracketed = bool(candidates)
    if not candidates:
        candidates = [choice for choice in all_choices if f" {choice} " in response]
    by_text = False
    if not candidates and len(response.split()) > 5:
        candidates = [choice for choice, text in index2ans.items() if text.lower() in response.lower()]
        by_text = bool(candidates)

    if not candidates:
        return rng.choice(all_choices), True
    if len(candidates) == 1:
        return candidates[0], False
    if by_text:
        positions = [response.lower().rfind(index2ans[choice].lower()) for choice in candidates]
    elif bracketed:
        positions = [response.rfind(f"({choice})") for choice in candidates]
    else:
        positions = [response.rfind(f" {choice} ") for choice in candidates]
    return candidates[
        positions.index(max(positions))
    ], False  # the last one named; np.argmax keeps the first tie


# ------------------------------------------------------------------------------------------------------ open


def is_number(string: str) -> bool:
    try:
        float(string.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(string: str) -> list[float | str]:
    """eval_utils.py `normalize_str`: a number as a float rounded to 2 decimals; text lower-cased, a single
    character padded with a space on either side (two forms) so it does not match inside a word."""
    string = string.strip()
    if is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    return [" " + string, string + " "] if len(string) == 1 else [string]


NUMBER_PATTERNS = (
    r"-?\b\d{1,3}(?:,\d{3})+\b",  # with thousands commas
    r"-?\d+(?:\.\d+)?[eE][+-]?\d+",  # scientific
    r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])",  # plain
)


def extract_numbers(string: str) -> list[str]:
    return [number for pattern in NUMBER_PATTERNS for number in re.findall(pattern, string)]


KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
TRIVIAL = [":", ",", ".", "!", "?", ";", "'"]


def key_subresponses(response: str) -> list[str]:
    """The shortest tail after an indicator word in each line (`get_key_subresponses`), or the whole answer."""
    response = response.strip().strip(".").lower()
    lines = re.split(r"\.\s(?=[A-Z])|\n", response)  # lower-cased already: in effect a split on line breaks
    keys = []
    for k, line in enumerate(lines):
        indicators = KEY_INDICATORS + (["="] if k == len(lines) - 1 else [])
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[float | str]:
    """The normalised candidates an open answer gives (`parse_open_response`), duplicates removed."""
    keys = key_subresponses(response)
    candidates = keys + [number for key in keys for number in extract_numbers(key)]
    return list({form: None for candidate in candidates for form in normalize(candidate)})


def open_correct(ground_truth: str | list[str], parsed: list[float | str]) -> bool:
    """`eval_open`: a parsed number equal to a ground-truth number, or a ground-truth text inside a parsed text."""
    truths = [ground_truth] if isinstance(ground_truth, str) else ground_truth
    forms = [form for truth in truths for form in normalize(truth)]
    for candidate in parsed:
        if isinstance(candidate, str):
            if any(isinstance(form, str) and form in candidate for form in forms):
                return True
        elif candidate in forms:
            return True
    return False


def choice_correct(ground_truth: str | list[str], letter: str) -> bool:
    """`eval_multi_choice`: the letter equals the ground truth (or one of them)."""
    return letter in ground_truth if isinstance(ground_truth, list) else letter == ground_truth


# -------------------------------------------------------------------------------------------------- accuracy


def accuracy_report(correct_by_subject: dict[str, list[bool]]) -> dict:
    """Percent right per subject, per domain and overall, each over its questions (main_eval_only.py)."""

    def summary(results: list[bool]) -> dict:
        return {"accuracy": 100.0 * sum(results) / len(results) if results else 0.0, "n": len(results)}

    def pooled(subjects) -> list[bool]:
        return [result for subject in subjects for result in correct_by_subject.get(subject, [])]

    return {
        "overall": summary(pooled(SUBJECTS)),
        "domain": {domain: summary(pooled(subjects)) for domain, subjects in DOMAINS.items()},
        "subject": {
            subject: summary(correct_by_subject[subject])
            for subject in SUBJECTS
            if subject in correct_by_subject
        },
    }
