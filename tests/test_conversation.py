"""Prompt snapshots of both templates, written out from CuMo's cumo/conversation.py, and the LLaVA-entry reader.

Expected strings follow CuMo's `Conversation.get_prompt` for `conv_mistral_instruct_system`
(SeparatorStyle.LLAMA_2, sep="", sep2="</s>": `"<s>" + wrap_inst(wrap_sys(system) + q1)`, then
`" " + answer + " " + sep2` per answer and `sep + wrap_inst(q)` per later question) and LLaVA's
`preprocess_plain` (BOS, image, caption, sep "\\n"). DESIGN section 4 writes `{answer}</s>`; we keep CuMo's
code, which puts a space before `</s>` (`" " + message + " " + self.sep2`), since that is what the released
models were trained on.
"""

import pytest

from cumo.data.conversation import (
    chat_template,
    expand_image_placeholders,
    render,
    render_segments,
    turns_from_llava,
)
from cumo.data.synthetic import build_tokenizer

SYSTEM_BLOCK = (
    "<<SYS>>\nA chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.\n<</SYS>>\n\n"
)


MISTRAL_CASES = [
    # One turn with an image; the placeholder moves to the front of the question (preprocess_multimodal).
    (
        [("What color is the circle?\n<image>", "Red.")],
        True,
        "<s>[INST] " + SYSTEM_BLOCK + "<image>\nWhat color is the circle? [/INST] Red. </s>",
    ),
    # Two turns; the second question gets no system block and no <s> (sep="").
    (
        [("<image>\nWhat color is the circle?", "Red."), ("How many shapes are there?", "Two.")],
        True,
        "<s>[INST] "
        + SYSTEM_BLOCK
        + "<image>\nWhat color is the circle? [/INST] Red. </s>[INST] How many shapes are there? [/INST] Two. </s>",
    ),
    # Text only: the question is used as written, the system block is still there.
    (
        [("  Is a square a shape?", "Yes.")],
        False,
        "<s>[INST] " + SYSTEM_BLOCK + "  Is a square a shape? [/INST] Yes. </s>",
    ),
    # Evaluation: the last answer left open ends the prompt right after [/INST].
    (
        [("<image>\nWhat shape is it?", None)],
        True,
        "<s>[INST] " + SYSTEM_BLOCK + "<image>\nWhat shape is it? [/INST]",
    ),
    (
        [("<image>\nWhat shape is it?", "A circle."), ("What color?", None)],
        True,
        "<s>[INST] "
        + SYSTEM_BLOCK
        + "<image>\nWhat shape is it? [/INST] A circle. </s>[INST] What color? [/INST]",
    ),
]


@pytest.mark.parametrize("turns, has_image, expected", MISTRAL_CASES)
def test_mistral_instruct_system_snapshots(turns, has_image, expected):
    assert render("mistral_instruct_system", turns, has_image) == expected


PLAIN_CASES = [
    # LLaVA's preprocess_plain drops the question: BOS, image, caption, "\n".
    (
        [("<image>\nDescribe the image briefly.", "A red circle on the left.")],
        True,
        "<s><image>A red circle on the left.\n",
    ),
    ([("<image>\nDescribe the image briefly.", None)], True, "<s><image>"),
]


@pytest.mark.parametrize("turns, has_image, expected", PLAIN_CASES)
def test_plain_snapshots(turns, has_image, expected):
    assert render("plain", turns, has_image) == expected


@pytest.mark.parametrize(
    "template, turns, has_image, expected",
    [("mistral_instruct_system", *case) for case in MISTRAL_CASES]
    + [("plain", *case) for case in PLAIN_CASES],
)
def test_the_exported_chat_template_asks_as_render_does(template, turns, has_image, expected):
    """What a user of the exported tokenizer gets from apply_chat_template is the prompt the model was trained on."""
    tokenizer = build_tokenizer()
    tokenizer.chat_template = chat_template(template)
    messages = []
    for question, answer in turns:
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_segments_mark_exactly_the_answers_and_their_end_of_sequence_as_targets():
    segments = render_segments("mistral_instruct_system", [("<image>\nq1", "a1"), ("q2", "a2")], True)
    assert [text for text, is_target in segments if is_target] == [" a1 </s>", " a2 </s>"]
    assert segments[2] == ("[INST] q2 [/INST]", False)
    assert render_segments("plain", [("<image>\nq", "caption")], True) == [
        ("<s><image>", False),
        ("caption\n", True),
    ]


def test_turns_from_a_llava_entry():
    conversations = [
        {"from": "human", "value": "<image>\nq1"},
        {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"},
        {"from": "gpt", "value": "a2"},
    ]
    assert turns_from_llava(conversations) == [("<image>\nq1", "a1"), ("q2", "a2")]


@pytest.mark.parametrize(
    "conversations",
    [
        [],
        [{"from": "human", "value": "q"}],  # no answer
        [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}],  # starts with the assistant
        [{"from": "human", "value": "q"}, {"from": "user", "value": "a"}],  # unknown role
        [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}],
    ],
)
def test_malformed_conversations_say_what_is_wrong(conversations):
    with pytest.raises(ValueError, match="conversations"):
        turns_from_llava(conversations)


@pytest.mark.parametrize(
    "turns, has_image, match",
    [
        ([("q", "a")], True, "exactly one <image> in its first question"),
        ([("<image>\nq", "a")], False, "only when there is an image"),
        ([("<image>\nq", "a"), ("<image>\nq2", "a2")], True, "only once"),
        ([("<image>\nq", "see <image>")], True, "not appear in an answer"),
    ],
)
def test_misplaced_image_placeholders_are_rejected(turns, has_image, match):
    with pytest.raises(ValueError, match=match):
        render_segments("mistral_instruct_system", turns, has_image)


def test_plain_takes_one_turn_and_only_the_last_answer_may_be_open():
    with pytest.raises(ValueError, match="one \\(image, caption\\) turn"):
        render("plain", [("<image>\nq", "a"), ("q2", "a2")], True)
    with pytest.raises(ValueError, match="only the last turn"):
        render("mistral_instruct_system", [("q", None), ("q2", "a2")], False)


def test_each_placeholder_expands_to_the_image_tokens():
    assert expand_image_placeholders("<s><image>\nq", "<image>", 3) == "<s><image><image><image>\nq"
