"""ScienceQA answer parsing, as LLaVA's llava/eval/eval_science_qa.py reads a model's reply.

In order: the reply is exactly a letter; it starts with a letter, a period and a space ("B. red"); it says
"The answer is X" exactly once, followed by any character (upstream's pattern `The answer is ([A-Z]).` has an
unescaped period, so "The answer is B" at the very end does not match, while "The answer is B," does).
Anything else is FAILED. A letter beyond the problem's choices counts as no answer (`get_pred_idx` -> -1).
"""

import re

OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def parse_letter(reply: str) -> str:
    """The option letter a reply gives, or "FAILED"."""
    if reply in OPTIONS:
        return reply
    if len(reply) >= 3 and reply[0] in OPTIONS and reply[1:3] == ". ":
        return reply[0]
    found = ANSWER_IS.findall(reply)
    return found[0] if len(found) == 1 else FAILED


def choice_index(letter: str, choice_count: int) -> int:
    """The chosen option's index, or -1 for FAILED or a letter past the problem's choices."""
    return OPTIONS.index(letter) if letter in OPTIONS[:choice_count] else -1
