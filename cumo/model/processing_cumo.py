"""CumoProcessor: prompts and images -> `input_ids`, `attention_mask`, `pixel_values` for the model.

Images as LLaVA-1.5 with `image_aspect_ratio=pad` (llava/mm_utils.py `expand2square`): padded to a square
with the processor's mean colour, then CLIP's resize, centre crop and normalisation (transformers'
CLIPImageProcessor, its PIL backend: no torchvision needed). Each image placeholder in a prompt becomes
`config.num_image_tokens` image tokens, the positions the model fills with the image's features.
"""

import json
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from cumo.data.conversation import chat_template
from cumo.model.configuration_cumo import CumoConfig

# OpenAI CLIP's normalisation (https://huggingface.co/openai/clip-vit-large-patch14-336/blob/main/preprocessor_config.json)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side symmetrically to a square (LLaVA's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def image_token_vocab(tokenizer: PreTrainedTokenizerBase, config: CumoConfig) -> int:
    """Give the tokenizer the image token (if it lacks it) and the config its id; the vocabulary size the
    embeddings need: the config's, or the tokenizer's when the token lies beyond it. The embeddings and the head
    grow by `weights.resize_rows` (at a pretrain start, in a conversion from the released layout)."""
    token = config.image_token
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [token]})
    config.image_token_id = tokenizer.convert_tokens_to_ids(token)
    vocab = config.text_config.vocab_size
    return len(tokenizer) if config.image_token_id >= vocab else vocab


def load_llm_tokenizer(directory: str | Path, text_config) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer in `directory` (a Hub copy of Mistral or Mixtral, a released CuMo checkpoint), as
    transformers builds it for the LLM's model type, padded with <unk> as CuMo pads (cumo/train/train.py).

    The model type picks transformers' SentencePiece conversion, which tokenises as SentencePiece itself; the
    `LlamaTokenizer` class that Mistral's tokenizer_config.json names does not on runs of spaces ("x  y":
    [1318, 259, 28724] where SentencePiece and CuMo's slow tokenizer give [1318, 28705, 337]), and a released
    checkpoint's config (`llava_mistral`, unknown to transformers) would leave AutoTokenizer that class."""
    tokenizer = AutoTokenizer.from_pretrained(directory, config=text_config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """`tokenizer.save_pretrained(directory)`, keeping its `legacy` flag.

    Mistral's tokenizer_config.json says `legacy: true` (SentencePiece's dummy prefix "▁" in front of every
    piece of text, after special tokens too), which is how CuMo's slow tokenizer reads text. transformers 5
    takes the flag at load but does not write it back, and a tokenizer loaded without it switches to
    `Metaspace(prepend_scheme="first")`: every "[INST]" after "</s>" loses its "▁" and the space token after
    the image disappears, so each stage after the first and every evaluation would read the prompts unlike
    CuMo (issue 15, tests/test_mistral_tokenizer.py)."""
    if getattr(tokenizer, "legacy", None) is not None:
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    tokenizer.save_pretrained(directory)


def without_image_token(tokenizer: PreTrainedTokenizerBase, image_token: str) -> PreTrainedTokenizerBase:
    """`tokenizer` as the LLM shipped it: the `image_token` that `image_token_vocab` appended (an added token, the
    last id) taken out. CuMo's vocabulary has no image token (it splices images in at the id -200), so a
    released checkpoint keeps Mistral's 32,000. An image token inside the vocabulary (the shapes world's,
    id 4) is the LLM's own: the tokenizer is returned as it is."""
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if image_token not in tokenizer.get_added_vocab() or image_token_id != len(tokenizer) - 1:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["added_tokens"] = [added for added in state["added_tokens"] if added["content"] != image_token]
    special = {
        name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    return type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **special)


class CumoProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: CumoConfig):
        if config.image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"the tokenizer has no {config.image_token!r} token: call image_token_vocab(tokenizer, config) first"
            )
        self.tokenizer = tokenizer
        self.image_token = config.image_token
        self.template = config.conversation_template
        self.num_image_tokens = config.num_image_tokens
        self.pad_to_square = config.image_aspect_ratio == "pad"
        size = config.vision_config.image_size
        self.image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )

    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) float32 pixel values."""
        background = tuple(int(255 * m) for m in CLIP_MEAN)
        images = [image.convert("RGB") for image in images]
        if self.pad_to_square:
            images = [expand2square(image, background) for image in images]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def __call__(
        self, prompts: list[str], images: list[Image.Image] | None = None, padding_side: str = "left"
    ):
        """Tokenised, `padding_side`-padded prompts (left for generation) and the images of their placeholders."""
        placeholders = sum(prompt.count(self.image_token) for prompt in prompts)
        if placeholders != len(images or []):
            raise ValueError(
                f"{placeholders} {self.image_token!r} placeholder(s) in the prompts but {len(images or [])} image(s): "
                "put exactly one placeholder per image"
            )
        expanded = [
            prompt.replace(self.image_token, self.image_token * self.num_image_tokens) for prompt in prompts
        ]
        batch = self.tokenizer(
            expanded, add_special_tokens=False, padding=True, padding_side=padding_side, return_tensors="pt"
        )
        if images:
            batch["pixel_values"] = self.preprocess_images(images)
        return BatchEncoding(dict(batch))

    def save_pretrained(self, directory: str | Path) -> None:
        """The tokenizer, with the model's conversation template as its chat template, and the image processor."""
        self.tokenizer.chat_template = chat_template(self.template)
        save_tokenizer(self.tokenizer, directory)
        self.image_processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: CumoConfig) -> "CumoProcessor":
        return cls(AutoTokenizer.from_pretrained(directory), config)
