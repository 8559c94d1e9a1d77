"""MME: a reply read as yes / no / other, and the score of a subtask, as MME's eval_tool/calculation.py
(BradyFU/Awesome-Multimodal-Large-Language-Models, Evaluation branch; run by LLaVA's and CuMo's mme.sh)
computes them.

A subtask's score is accuracy x 100 plus accuracy+ x 100, where accuracy+ is the share of images whose two
questions are both answered right (so at most 200 per subtask). Perception sums the ten perception subtasks
(at most 2000), cognition the four cognition subtasks (at most 800).
"""

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(reply: str) -> str:
    """ "yes" / "no" / "other": the lower-cased reply itself if it is yes or no, else whichever of "yes" and
    "no" appears in its first four characters ("yes" first): "Not really" -> no, "The answer is yes" ->
    other."""
    reply = reply.lower()
    if reply in ("yes", "no"):
        return reply
    prefix = reply[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def subtask_score(images: list[list[tuple[str, str]]]) -> dict[str, float | int]:
    """Score of one subtask from its images, each a list of its two (reply, ground truth "Yes"/"No") pairs."""
    if not images:
        raise ValueError("a subtask needs at least one image")
    for pairs in images:
        if len(pairs) != 2:  # calculation.py asserts two questions per image and a yes/no ground truth
            raise ValueError(f"an MME image has two questions, got {len(pairs)}: {pairs}")
        if any(truth.lower() not in ("yes", "no") for _, truth in pairs):
            raise ValueError(f"MME's ground truth is Yes or No, got {[truth for _, truth in pairs]}")
    parsed = [[(parse_yes_no(reply), truth.lower()) for reply, truth in pairs] for pairs in images]
    accuracy = sum(said == truth for pairs in parsed for said, truth in pairs) / (2 * len(images))
    accuracy_plus = sum(all(said == truth for said, truth in pairs) for pairs in parsed) / len(images)
    other = sum(said == "other" for pairs in parsed for said, _ in pairs)
    return {
        "score": 100 * accuracy + 100 * accuracy_plus,
        "accuracy": 100 * accuracy,
        "accuracy_plus": 100 * accuracy_plus,
        "other": other,
        "images": len(images),
    }
