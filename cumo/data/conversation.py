"""Chat templates: the single source of the prompt text for training and evaluation.

Reproduces the two templates CuMo trains with (cumo/conversation.py, https://github.com/SHI-Labs/CuMo):

- `plain` (pretrain, LLaVA's `preprocess_plain`): `<s>`, the image, the caption, "\\n"; no system text and
  no question. The `<s>` is the BOS that LLaVA's `tokenizer_image_token` puts in front (llava/mm_utils.py:
  each chunk is tokenised with the tokenizer's BOS and the first BOS is kept), written out here because we
  tokenise without adding special tokens.
- `mistral_instruct_system` (pft and sft, `SeparatorStyle.LLAMA_2` with sep="" and sep2="</s>"):
  `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{q1} [/INST] {a1} </s>[INST] {q2} [/INST] {a2} </s>`.
  The space before `</s>` is CuMo's (`" " + message + " " + sep2`); the image placeholder is moved to the
  front of the first question as LLaVA's `preprocess_multimodal` does.

A rendered conversation is a list of segments `(text, is_target)`: the answers are the targets, so the
tokeniser can mask everything else in the labels from the same pieces the prompt is made of.

`chat_template(name)` is the same format as a Jinja chat template, saved with every exported tokenizer, so
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` outside this package asks exactly as
`render` does (tests/test_conversation.py holds the two equal).
"""

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
# The label of every token that is not a target (prompt, image, padding): what torch's cross_entropy ignores by
# default (ignore_index=-100), as LLaVA's llava/constants.py. The dataset masks with it and the model's loss
# skips it, so it lives here, where both read it.
IGNORE_INDEX = -100
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    bos: str
    eos: str
    # Text that CuMo's preprocessing splits a conversation at (preprocess_llama_2: rounds at sep2 "</s>", a
    # round's prompt and answer at "[/INST] "): in a message it makes CuMo miscount, print "tokenization
    # mismatch", and set every label to -100, so the sample trains nothing. Ours skips such a sample, counted.
    separators: tuple[str, ...] = ()


TEMPLATES = {
    "plain": Template("plain", system="", bos="<s>", eos="\n"),
    "mistral_instruct_system": Template(
        "mistral_instruct_system", system=SYSTEM, bos="<s>", eos="</s>", separators=("</s>", "[/INST]")
    ),
}


def separator_in(template: str, turns: list[tuple[str, str | None]]) -> str | None:
    """The first of `template`'s separators found in a message of `turns` (see Template.separators), or None."""
    for question, answer in turns:
        for separator in TEMPLATES[template].separators:
            if separator in question or (answer is not None and separator in answer):
                return separator
    return None


def turns_from_llava(conversations: list[dict]) -> list[tuple[str, str]]:
    """A LLaVA entry's `conversations` ([{"from": "human" | "gpt", "value": ...}, ...]) as (question, answer) turns."""
    roles = [message.get("from") for message in conversations]
    if not roles or len(roles) % 2 or roles != ["human", "gpt"] * (len(roles) // 2):
        raise ValueError(
            f"conversations must alternate human, gpt, human, gpt, ... and end with gpt; got roles {roles}"
        )
    values = [message.get("value") for message in conversations]
    if not all(isinstance(value, str) for value in values):
        raise ValueError("every message of the conversations needs a string `value`")
    return list(zip(values[0::2], values[1::2], strict=True))


def _check_image_placeholders(turns: list[tuple[str, str | None]], has_image: bool) -> None:
    counts = [question.count(IMAGE_PLACEHOLDER) for question, _ in turns]
    if has_image and counts[0] != 1:
        raise ValueError(
            f"a conversation with an image needs exactly one {IMAGE_PLACEHOLDER} in its first question, "
            f"found {counts[0]}: {turns[0][0][:80]!r}"
        )
    if sum(counts) != (1 if has_image else 0):
        raise ValueError(
            f"{IMAGE_PLACEHOLDER} may appear only once, in the first question, and only when there is an "
            f"image (has_image={has_image}); found it {sum(counts)} times"
        )
    # An answer's placeholder would become image tokens inside the labels, with no image to fill them.
    if any(answer is not None and IMAGE_PLACEHOLDER in answer for _, answer in turns):
        raise ValueError(f"{IMAGE_PLACEHOLDER} may not appear in an answer")


def render_segments(
    template: str, turns: list[tuple[str, str | None]], has_image: bool
) -> list[tuple[str, bool]]:
    """(text, is_target) pieces of a conversation; a last answer of None leaves the prompt open for generation."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; known: {sorted(TEMPLATES)}")
    if not turns:
        raise ValueError("a conversation needs at least one (question, answer) turn")
    if any(answer is None for _, answer in turns[:-1]):
        raise ValueError("only the last turn may leave its answer open (None)")
    _check_image_placeholders(turns, has_image)
    spec = TEMPLATES[template]

    if spec.name == "plain":
        # LLaVA's preprocess_plain: the image token followed by the caption; the question is dropped.
        if len(turns) != 1:
            raise ValueError(f"the plain template takes one (image, caption) turn, got {len(turns)}")
        answer = turns[0][1]
        segments = [(spec.bos + (IMAGE_PLACEHOLDER if has_image else ""), False)]
        return segments if answer is None else [*segments, (answer + spec.eos, True)]

    segments = []
    for i, (question, answer) in enumerate(turns):
        if i == 0:
            if has_image:
                question = IMAGE_PLACEHOLDER + "\n" + question.replace(IMAGE_PLACEHOLDER, "").strip()
            question = f"<<SYS>>\n{spec.system}\n<</SYS>>\n\n{question}"
        segments.append(((spec.bos if i == 0 else "") + f"[INST] {question} [/INST]", False))
        if answer is not None:
            segments.append((f" {answer} {spec.eos}", True))
    return segments


def render(template: str, turns: list[tuple[str, str | None]], has_image: bool) -> str:
    """The conversation as one string."""
    return "".join(text for text, _ in render_segments(template, turns, has_image))


def expand_image_placeholders(text: str, image_token: str, num_image_tokens: int) -> str:
    """Each image placeholder as the `num_image_tokens` tokens the model fills with that image's features."""
    return text.replace(image_token, image_token * num_image_tokens)


# Jinja for transformers' apply_chat_template; messages are {"role": "user" | "assistant", "content": str}, the
# image as the "<image>" placeholder in the first user message.
_JINJA = {
    "plain": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- '<s>' + ('<image>' if '<image>' in message['content'] else '') -}}"
        "{%- else -%}{{- message['content'] + '\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
    "mistral_instruct_system": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- set text = message['content'] -%}"
        "{%- if loop.first -%}"
        "{%- if '<image>' in text -%}{%- set text = '<image>\\n' + text.replace('<image>', '') | trim -%}{%- endif -%}"
        "{{- '<s>[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text + ' [/INST]' -}}"
        "{%- else -%}{{- '[INST] ' + text + ' [/INST]' -}}{%- endif -%}"
        "{%- else -%}{{- ' ' + message['content'] + ' </s>' -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
}


def chat_template(template: str) -> str:
    """`template` as a Jinja chat template (the system text written in)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; known: {sorted(TEMPLATES)}")
    system = TEMPLATES[template].system.replace("'", "\\'")
    return "{%- set system = '" + system + "' -%}" + _JINJA[template]
