"""The tiny preset's judge: exact rules that answer the three judge prompts (MM-Vet's grading, LLaVA-Bench's
review, MathVista's answer extraction) as the paper's GPT judges are asked to, for the shapes world.

It is NOT GPT-4 or GPT-3.5. The shapes world's answers are single words, short phrases and numbers
(cumo/data/synthetic_benchmarks/), where "is the reference answer in the prediction" is a question rules
answer exactly, so the tiny DAG can score every benchmark offline. Numbers judged by it measure agreement with
the world's ground truth and are not comparable with the paper's, whose judges read free text; metrics.json
names the judge (`cumo-rules`), and the report's table says so under each column it judged.

It reads the prompts that cumo/eval/benchmarks/{mmvet,llava_wild,mathvista}.py build, as they build them, and
raises `UnreadablePrompt` (a ValueError: HTTP 400 through cumo.eval.judge_server) naming the prompt it cannot
read. It never guesses a score. Words are compared after SQuAD v1.1's normalisation (evaluate-v1.1.py
`normalize_answer`: lower case, punctuation and the articles a/an/the dropped), numbers kept whole ("0.33").

- MM-Vet: the ground truth's elements (`<AND>`: all needed, `<OR>`: any one suffices, as the grading prompt
  defines them) are each present in the prediction or not (as a run of whole words); an `<AND>` answer with
  some elements present scores their share, one decimal, as the prompt's own examples give 0.5 for one of two.
  A prediction that hedges ("red or blue") is credited where GPT-4 might not be: the world never asks for it.
- LLaVA-Bench: Assistant 1 (the reference) scores 10; Assistant 2 (the model) 1 + 9 x the token F1 (SQuAD's
  `f1_score`) of its answer against the reference, both without the words the question already says,
  rounded half up to a whole score. A bare "orange" for "The triangle at the top is orange." is full
  agreement; a bare "1" for "The number of objects left after removing the red objects is 1." is partial, as
  a reviewer rating detail would rate it lower than the reference.
- MathVista: the query's hint says what to extract. An option: "(B)" in the response, else the choice whose
  text the response names last, else the response if it is one option letter. A number: the last number in
  the response (digits, else a number word up to ten). A list: the last "[...]". Otherwise the response itself,
  which MathVista's normalisation then reads as it would GPT's echo of it.
"""

import math
import re
from collections import Counter

from cumo.eval.benchmarks import llava_wild, mathvista, mmvet

MODEL = "cumo-rules"  # the judge's name in metrics.json and the judge cache
PRICES_PER_1K = (0.0, 0.0)  # it runs here: no cost

TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+")  # a number whole, or a run of letters/digits
ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


class UnreadablePrompt(ValueError):
    """A prompt that is not one of the three judge prompts, or not in the form their builders give it."""


def tokens(text: str) -> list[str]:
    """SQuAD's normalize_answer as a token list: lower case, no punctuation, no articles."""
    return [token for token in TOKEN.findall(text.lower()) if token not in ARTICLES]


def contains(haystack: list[str], needle: list[str]) -> bool:
    """`needle` occurs in `haystack` as a run of whole tokens."""
    size = len(needle)
    return size > 0 and any(haystack[i : i + size] == needle for i in range(len(haystack) - size + 1))


def token_f1(prediction: list[str], reference: list[str]) -> float:
    """SQuAD v1.1 evaluate-v1.1.py `f1_score` on normalised tokens."""
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def reply(messages: list[dict]) -> str:
    """The judge's answer to one of the three judge prompts (the `reply` of cumo.eval.judge_server)."""
    system = "\n".join(m["content"] for m in messages if m.get("role") == "system")
    users = [m["content"] for m in messages if m.get("role") == "user"]
    prompt = users[-1] if users else ""
    if prompt.startswith(mmvet.PROMPT + "\n"):
        return grade_mmvet(prompt)
    if system == llava_wild.SYSTEM:
        return review_llava_wild(prompt)
    if system == mathvista.SYSTEM:
        return extract_mathvista(prompt)
    raise UnreadablePrompt(
        f"the rule judge ({MODEL}) reads MM-Vet's grading, LLaVA-Bench's review and MathVista's extraction "
        f"prompts only; this one (system {system[:60]!r}, user {prompt[:80]!r}) is none of them. Use a model "
        "judge (--judge-model, --judge-base-url) for other prompts"
    )


# ------------------------------------------------------------------------------------------------- MM-Vet


def grade_mmvet(prompt: str) -> str:
    """The correctness score, one decimal, for the last table row "question | ground truth | prediction | "."""
    row = prompt[len(mmvet.PROMPT) + 1 :].removesuffix(mmvet.ASK_FOR_DIGIT)
    # The question and ground truth come first and hold no " | " in the world; the prediction may.
    fields = row.removesuffix(" | ").split(" | ", 2)
    if not row.endswith(" | ") or len(fields) != 3:
        raise UnreadablePrompt(
            f"MM-Vet grading prompt: its last row {row[:120]!r} is not 'question | ground truth | prediction | '"
        )
    _, truth, prediction = fields
    return f"{ground_truth_score(truth, prediction):.1f}"


def ground_truth_score(truth: str, prediction: str) -> float:
    """Best alternative (<OR>) of the share of its elements (<AND>) present in the prediction."""
    said = tokens(prediction)
    shares = []
    for alternative in truth.split("<OR>"):
        elements = [tokens(element) for element in alternative.split("<AND>")]
        elements = [element for element in elements if element]
        if not elements:
            raise UnreadablePrompt(f"MM-Vet grading prompt: the ground truth {truth!r} has an empty element")
        shares.append(round(sum(contains(said, element) for element in elements) / len(elements), 1))
    return max(shares)


# ------------------------------------------------------------------------------------------- LLaVA-Bench

_A, _B = f"{llava_wild.ROLE} 1", f"{llava_wild.ROLE} 2"
REVIEW = re.compile(
    rf"\[Context\]\n(?P<caption>.*?)\n\n\[Question\]\n(?P<question>.*?)\n\n"
    rf"\[{_A}\]\n(?P<reference>.*?)\n\n\[End of {_A}\]\n\n"
    rf"\[{_B}\]\n(?P<answer>.*)\n\n\[End of {_B}\]\n\n"
    rf"\[System\]\n{re.escape(llava_wild.RULE)}\n\n",
    re.DOTALL,
)


def review_llava_wild(prompt: str) -> str:
    """ "10 s2" and a line saying how s2 was found, as eval_gpt_review_bench.py's reviewer is asked to answer."""
    match = REVIEW.fullmatch(prompt)
    if match is None:
        raise UnreadablePrompt(
            f"LLaVA-Bench review prompt {prompt[:120]!r}: not the context/question/two assistants/rule layout "
            "of cumo.eval.benchmarks.llava_wild.review_messages"
        )
    asked = set(tokens(match["question"]))
    reference = [t for t in tokens(match["reference"]) if t not in asked] or tokens(match["reference"])
    answer = [t for t in tokens(match["answer"]) if t not in asked]
    agreement = token_f1(answer, reference) if answer else 0.0
    score = math.floor(1 + 9 * agreement + 0.5)  # half up, as a reader rounds (Python rounds 4.5 to 4)
    return (
        f"10 {score}\n"
        f"Assistant 1 is the reference answer, taken as fully right. Assistant 2's answer agrees with it to a "
        f"token F1 of {agreement:.2f} over the words the question does not already say ({MODEL}, the tiny "
        "preset's rule judge; not GPT-4)."
    )


# --------------------------------------------------------------------------------------------- MathVista

EXTRACTION_HEAD = mathvista.DEMO_PROMPT.strip() + "\n\n"
EXTRACTION_TAIL = "\n\nExtracted answer: "
# MathVista's hints (evaluation/build_query.py) -> the kind of answer asked for.
HINT_KINDS = {
    "provide the correct option letter": "option",
    "requiring an integer answer": "number",
    "requiring a floating-point number": "number",
    "requiring a Python list": "list",
}
OPTION = re.compile(r"^\(([A-Z])\) (.*)$", re.MULTILINE)  # "(B) blue" in the query's Choices
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_mathvista(prompt: str) -> str:
    """The answer in the model's response, in the form the query's hint asks for."""
    if not (prompt.startswith(EXTRACTION_HEAD) and prompt.endswith(EXTRACTION_TAIL)):
        raise UnreadablePrompt(
            f"MathVista extraction prompt {prompt[:120]!r}: not MathVista's demo, query, response and "
            "'Extracted answer: ' as cumo.eval.benchmarks.mathvista.extraction_messages builds it"
        )
    # The query's lines are single-spaced (hint, question, choices); the first blank line ends it.
    query, _, response = prompt[len(EXTRACTION_HEAD) : -len(EXTRACTION_TAIL)].partition("\n\n")
    hint = query.split("\n")[0]
    kinds = [kind for phrase, kind in HINT_KINDS.items() if phrase in hint]
    if not hint.startswith("Hint: ") or len(kinds) != 1:
        raise UnreadablePrompt(
            f"MathVista extraction prompt: the query's first line {hint!r} is not one of MathVista's hints "
            f"(one of: {', '.join(HINT_KINDS)})"
        )
    if kinds[0] == "option":
        return extract_option(response, dict(OPTION.findall(query)))
    if kinds[0] == "number":
        return extract_number(response)
    lists = re.findall(r"\[[^\[\]]*\]", response)
    return lists[-1] if lists else response.strip()


def extract_option(response: str, options: dict[str, str]) -> str:
    """The option letter the response gives: "(B)", else the option whose text it names last (the longest of
    those ending there), else the response as it is when it is only a letter."""
    if not options:
        raise UnreadablePrompt(
            "MathVista extraction prompt: a multiple-choice hint with no '(A) ...' choices"
        )
    named = [letter for letter in re.findall(r"\(([A-Z])\)", response) if letter in options]
    if named:
        return named[-1]
    said = tokens(response)
    last_end = {}  # letter -> (where its text last ends in the response, its length)
    for letter, text in options.items():
        needle = tokens(text)
        ends = [
            i + len(needle) for i in range(len(said) - len(needle) + 1) if said[i : i + len(needle)] == needle
        ]
        if needle and ends:
            last_end[letter] = (ends[-1], len(needle))
    if last_end:
        return max(last_end, key=last_end.get)
    return response.strip()


def extract_number(response: str) -> str:
    """The last number the response states: digits ("1,000" read whole), else a number word up to ten."""
    numbers = NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", response))
    if numbers:
        return numbers[-1]
    spelled = [str(NUMBER_WORDS.index(t)) for t in tokens(response) if t in NUMBER_WORDS]
    return spelled[-1] if spelled else response.strip()
