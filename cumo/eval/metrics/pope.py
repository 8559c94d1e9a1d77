"""POPE: a reply read as yes or no, and the binary-classification numbers of one split, as LLaVA's
llava/eval/eval_pope.py (and CuMo's cumo/eval/eval_pope.py, which adds the mean over splits) compute them."""


def parse_yes_no(reply: str) -> str:
    """ "no" if the first sentence has the word "No", "no" or "not" (words split on spaces, commas dropped),
    else "yes": upstream's rule, so "NO" and "Nope" read as yes, and "Yes, there is no dog" as no."""
    first_sentence = reply.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def binary_metrics(predictions: list[str], labels: list[str]) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 and the share of "yes" answers, with "yes" the positive class.

    Upstream divides by zero when the model never says yes (precision) or when precision and recall are both
    zero (F1); those are 0.0 here."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"need as many predictions as labels, and some: {len(predictions)} vs {len(labels)}")
    # Upstream's encoding: anything but "no" is 1 (yes), for labels and parsed replies alike.
    pairs = [(p != "no", y != "no") for p, y in zip(predictions, labels, strict=True)]
    true_positive = sum(p and y for p, y in pairs)
    false_positive = sum(p and not y for p, y in pairs)
    true_negative = sum(not p and not y for p, y in pairs)
    false_negative = sum(not p and y for p, y in pairs)
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (true_positive + true_negative) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(p for p, _ in pairs) / len(pairs),
        "tp": true_positive,
        "fp": false_positive,
        "tn": true_negative,
        "fn": false_negative,
    }
