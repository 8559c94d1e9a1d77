"""SEED-Bench's score: the answer is right only when it is exactly the option letter, and accuracy is reported
per evaluation dimension (question type) and over all questions.

Source: LLaVA scripts/convert_seed_for_submission.py `eval_single` (`row['text'] == question_data['answer']`,
nothing stripped or lower-cased: LLaVA's generation already strips the answer, and "A." or "a" is wrong).
Overall accuracy pools the questions, it is not the mean of the dimensions.
"""


def is_right(answer: str, letter: str) -> bool:
    return answer == letter


def accuracy_report(results: list[tuple[str, bool]]) -> dict:
    """Percent right overall and per dimension, from (dimension, right) per question; dimensions in first-seen
    order (the caller passes them in SEED's question_type_id order)."""
    by_dimension: dict[str, list[bool]] = {}
    for dimension, right in results:
        by_dimension.setdefault(dimension, []).append(right)

    def percent(rights: list[bool]) -> float:
        return 100.0 * sum(rights) / len(rights)

    return {
        "overall": percent([right for _, right in results]),
        "dimension": {name: percent(rights) for name, rights in by_dimension.items()},
        "dimension_n": {name: len(rights) for name, rights in by_dimension.items()},
    }
