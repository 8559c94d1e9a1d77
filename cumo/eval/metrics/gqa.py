"""GQA: LLaVA's answer clean-up (scripts/convert_gqa_for_eval.py) and the accuracy breakdown of GQA's own
eval.py (cs.stanford.edu/people/dorarad/gqa/evaluate.html): exact match against the one gold answer, overall,
for binary and open questions (open = structural type "query"), and per structural and semantic type. Only
balanced questions count (eval.py skips the others)."""

from collections import defaultdict


def normalize(reply: str) -> str:
    """convert_gqa_for_eval.py: every trailing period stripped, then lower case ("Yes." -> "yes")."""
    return reply.rstrip(".").lower()


def accuracy_breakdown(answers: list[tuple[str, dict]]) -> dict:
    """Percent accuracies of (normalised reply, GQA question entry) pairs; entries as in
    testdev_balanced_questions.json (`answer`, `isBalanced`, `types`)."""
    groups = defaultdict(list)
    for reply, question in answers:
        if not question["isBalanced"]:
            continue
        right = reply == question["answer"]
        types = question["types"]
        groups["accuracy"].append(right)
        groups["open" if types["structural"] == "query" else "binary"].append(right)
        groups[f"structural/{types['structural']}"].append(right)
        groups[f"semantic/{types['semantic']}"].append(right)
    if not groups:
        raise ValueError("no balanced GQA question to score")
    return {name: 100 * sum(rights) / len(rights) for name, rights in sorted(groups.items())} | {
        "balanced_questions": len(groups["accuracy"])
    }
