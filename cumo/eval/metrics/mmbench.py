"""MMBench's prompt, its answer matching and its circular evaluation, for the English and the Chinese sets.

Prompt (LLaVA llava/eval/model_vqa_mmbench.py; CuMo's cumo/eval/model_vqa_mmbench.py is the same): the hint,
when the row has one, and the question on separate lines; each option on its own line as "A. text"; then the
letter instruction in the set's language (`--single-pred-prompt --lang cn` in scripts/cumo/eval/mmbench_cn.sh).

Matching (open-compass/VLMEvalKit vlmeval/utils/matching_util.py, `can_infer`): an answer names an option when
exactly one option letter stands alone in it once `.()[],:;!*#{}` are blanked out, or else when exactly one
option's text occurs in it (both lower-cased). A refusal, or a lone "Z" with no letter, is the letter Z, which
is never right. Anything else matches nothing.

Circular evaluation (vlmeval/evaluate/multiple_choice.py, `prefetch_sub_data` and `eval_data_groups`): the dev
TSV holds each question once per rotation of its options, at index + k * 1e6, and a question counts only when
the answer to every rotation matches that rotation's correct letter. One matched wrong letter fails it. When
the others are right but an answer matches nothing, VLMEvalKit asks a GPT judge; its `exact_matching` policy,
which is ours, counts the question as failed, and we count how many questions that happened to.
"""

LETTER_INSTRUCTION = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
OPTION_LETTERS = "ABCD"  # the TSV's option columns, as model_vqa_mmbench.py's all_options
ROTATION_STRIDE = 1_000_000  # index of the k-th rotation = index of the question + k * ROTATION_STRIDE
NONE_OF_THESE = "Z"  # VLMEvalKit's letter for "no option fits": never an answer
# can_infer_option's reject_to_answer: API refusals that VLMEvalKit reads as Z.
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
BLANKED = str.maketrans({char: " " for char in ".()[],:;!*#{}"})


def prompt(question: str, hint: str | None, options: list[str], lang: str) -> str:
    """The user turn as model_vqa_mmbench.py builds it, without the image placeholder."""
    text = question if hint is None else hint + "\n" + question
    text += "".join(f"\n{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=False))
    return text + "\n" + LETTER_INSTRUCTION[lang]


def match_letter(answer: str, letters: list[str]) -> str | None:
    """The option letter `answer` names by itself (can_infer_option), Z for a refusal, None if none or several."""
    if any(refusal in answer for refusal in REFUSALS):
        return NONE_OF_THESE
    tokens = answer.translate(BLANKED).split()
    named = [letter for letter in letters if letter in tokens]
    if len(named) == 1:
        return named[0]
    if not named and NONE_OF_THESE in tokens:
        return NONE_OF_THESE
    return None


def match_text(answer: str, choices: dict[str, str]) -> str | None:
    """The one option whose text occurs in `answer`, case-insensitively (can_infer_text); None if none or several."""
    named = [letter for letter, text in choices.items() if text.lower() in answer.lower()]
    return named[0] if len(named) == 1 else None


def match(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter `answer` gives (`can_infer`): by letter first, then by the option's text."""
    return match_letter(answer, list(choices)) or match_text(answer, choices)


def circular_outcome(rotations: list[tuple[str, str | None]]) -> str:
    """One question from its rotations' (correct letter, matched letter or None): "hit" when every rotation is
    matched to its correct letter, "miss" when any is matched to another, "unmatched" when the rest are right
    but some answer matched no option (a miss under exact matching: VLMEvalKit's judge would decide it)."""
    if any(matched is not None and matched != correct for correct, matched in rotations):
        return "miss"
    if any(matched is None for _, matched in rotations):
        return "unmatched"
    return "hit"


def accuracy_report(outcomes: list[str], categories: list[str], l2_categories: list[str]) -> dict:
    """Percent of questions hit overall, per l2-category and per category (VLMEvalKit's `report_acc`)."""

    def percent(selected: list[str]) -> float:
        return 100.0 * sum(outcome == "hit" for outcome in selected) / len(selected)

    def per(groups: list[str]) -> dict[str, float]:
        return {
            name: percent([o for o, g in zip(outcomes, groups, strict=True) if g == name])
            for name in sorted(set(groups))
        }

    return {"overall": percent(outcomes), "l2_category": per(l2_categories), "category": per(categories)}
