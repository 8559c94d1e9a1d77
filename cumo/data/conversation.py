"""Chat templates: the single source of the prompt text for training and evaluation.

Reproduces the two templates CuMo trains with (cumo/conversation.py, https://github.com/SHI-Labs/CuMo):

- `plain` (pretrain, LLaVA's `preprocess_plain`): the image, then the caption, then "\\n"; no system
  text and no question.
- `mistral_instruct_system` (pft and sft, `SeparatorStyle.LLAMA_2` with sep="" and sep2="</s>"):
  `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{q1} [/INST] {a1} </s>[INST] {q2} [/INST] {a2} </s>`.
  The space before `</s>` is CuMo's (`" " + message + " " + sep2`); the image placeholder is moved to the
  front of the first question as LLaVA's `preprocess_multimodal` does.

A rendered conversation is a list of segments `(text, is_target)`: the answers are the targets, so the
tokeniser can mask everything else in the labels from the same pieces the prompt is made of.
"""

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
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


TEMPLATES = {
    "plain": Template("plain", system="", bos="", eos="\n"),
    "mistral_instruct_system": Template("mistral_instruct_system", system=SYSTEM, bos="<s>", eos="</s>"),
}


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
        segments = [(IMAGE_PLACEHOLDER if has_image else "", False)]
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
