"""CumoForConditionalGeneration: CLIP (+MoE, S^2) -> connector (+MoE) -> Mistral or Mixtral.

LLaVA-style, written like transformers' `models/llava/modeling_llava.py`: the prompt carries
`config.num_image_tokens` copies of the image token per image (`CumoProcessor` expands them), and the
embeddings at those positions are replaced by the image's features, in order. Labels at image positions
are ignored. Generation goes through transformers' `generate()` with its KV cache: `pixel_values` are used
in the prefill only.

The loss is CuMo's (language_model/llava_mistral.py): LM loss + balance_loss_coef * balance +
router_z_loss_coef * z, for the CLIP MoE and for the connector MoE separately. A Mixtral LLM adds its own
router loss as transformers defines it (`load_balancing_loss_func` times `router_aux_loss_coef`).
Every term is returned on its own for logging, with the tokens each expert received per MoE layer.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils import ModelOutput

from cumo.data.conversation import IGNORE_INDEX
from cumo.model.configuration_cumo import CumoConfig
from cumo.model.moe import SparseMoeBlock, StackedExperts
from cumo.model.projector import build_projector
from cumo.model.vision import CumoVisionTower, VisionAux


@dataclass
class CumoOutput(ModelOutput):
    """Loss terms are unweighted except `loss`, which is the weighted sum that is optimised."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    lm_loss: torch.Tensor | None = None
    clip_balance_loss: torch.Tensor | None = None
    clip_router_z_loss: torch.Tensor | None = None
    mlp_balance_loss: torch.Tensor | None = None
    mlp_router_z_loss: torch.Tensor | None = None
    llm_aux_loss: torch.Tensor | None = None
    clip_tokens_per_expert: torch.Tensor | None = None  # (CLIP layers, E)
    mlp_tokens_per_expert: torch.Tensor | None = None  # (E,)


class CumoPreTrainedModel(PreTrainedModel):
    config: CumoConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CumoVisionEncoderLayer", "MistralDecoderLayer", "MixtralDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        std = self.config.text_config.initializer_range
        if isinstance(module, CLIPVisionEmbeddings):
            # As transformers' CLIPPreTrainedModel, which our vision tower is not.
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.normal_(module.patch_embedding.weight, std=self.config.vision_config.initializer_range)
            init.normal_(module.position_embedding.weight, std=self.config.vision_config.initializer_range)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, StackedExperts):
            for weight, bias in ((module.fc1_weight, module.fc1_bias), (module.fc2_weight, module.fc2_bias)):
                init.normal_(weight, std=std)
                init.zeros_(bias)
        else:
            super()._init_weights(module)


class CumoModel(CumoPreTrainedModel):
    def __init__(self, config: CumoConfig):
        super().__init__(config)
        # The CLIP layers are not a PreTrainedModel of their own, so they take the resolved attention
        # implementation from here (transformers sets it on submodels that are).
        config.vision_config._attn_implementation_internal = config._attn_implementation
        self.vision_tower = CumoVisionTower(config)
        self.mm_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values_B3HW: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(B, 3, H, W) -> features (B, num_image_tokens, hidden) and the MoE aux terms."""
        features_BNC, vision_aux = self.vision_tower(pixel_values_B3HW)
        aux = {}
        if isinstance(vision_aux, VisionAux):
            aux.update(
                clip_balance_loss=vision_aux.balance,
                clip_router_z_loss=vision_aux.router_z,
                clip_tokens_per_expert=vision_aux.tokens_per_expert_LE,
            )
        if isinstance(self.mm_projector, SparseMoeBlock):
            features_BNH, mlp_aux = self.mm_projector(features_BNC)
            aux.update(
                mlp_balance_loss=mlp_aux.balance_R.mean(),
                mlp_router_z_loss=mlp_aux.router_z_R.mean(),
                mlp_tokens_per_expert=mlp_aux.tokens_per_expert_E,
            )
        else:
            features_BNH = self.mm_projector(features_BNC)
        return features_BNH, aux

    def merge_image_features(
        self, input_ids_BT: torch.Tensor, inputs_embeds_BTH: torch.Tensor, features_INH: torch.Tensor
    ) -> torch.Tensor:
        """Put the features of image i at the i-th group of image tokens (row-major over the batch)."""
        if self.config.image_token_id is None:
            raise ValueError(
                "config.image_token_id is not set: call cumo.model.processing_cumo.image_token_vocab first"
            )
        image_mask_BT = input_ids_BT == self.config.image_token_id
        num_tokens, (num_images, per_image) = int(image_mask_BT.sum()), features_INH.shape[:2]
        if num_tokens != num_images * per_image:
            raise ValueError(
                f"the prompts hold {num_tokens} image tokens (id {self.config.image_token_id}) but {num_images} "
                f"image(s) of {per_image} tokens were given: put one {self.config.image_token!r} per image in the "
                "prompt and expand it with CumoProcessor (or pass as many images as placeholders)"
            )
        features = features_INH.reshape(-1, features_INH.shape[-1]).to(
            inputs_embeds_BTH.device, inputs_embeds_BTH.dtype
        )
        return inputs_embeds_BTH.masked_scatter(image_mask_BT.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        stand_in_image: bool = False,
        **kwargs,
    ):
        """Returns the language model's output and the image aux terms (a dict, empty without MoE).

        The images go through the vision tower and the connector before the tokens are embedded: under ZeRO-3
        every rank gathers each module's parameters when it runs, and prefetches them in the order of the first
        step, so every rank must run the same modules in the same order whatever its batch holds. Embedding first
        put the embeddings' gather against another rank's CLIP gather (seen: gloo "Received data size doesn't
        match expected size (32768000 vs 150528)", Mistral's embeddings against CLIP's patch embedding, in sft on 2
        ranks with text-only samples).

        `stand_in_image`: the batch holds no image and `pixel_values` is a blank stand-in that runs the vision
        tower and connector all the same, their output joining as 0 x (features and aux losses): the same modules,
        gathers and gradient reductions as a batch with images, and no change to the loss or the gradients (as
        LLaVA's training feeds a zero image to text-only samples, llava/train/train.py)."""
        aux = {}
        if pixel_values is not None:
            features, aux = self.get_image_features(pixel_values)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and stand_in_image:
            if (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "stand_in_image is for batches without images, but the prompts hold image tokens"
                )
            inputs_embeds = inputs_embeds + 0.0 * features.sum().to(inputs_embeds.dtype)
            # The aux losses stay in the output, zeroed, as the loss of a batch with images holds them: ZeRO-3
            # hooks each module's output tensors for the backward, and a module whose output lost them was met
            # at another point of the backward than in the recorded trace (seen: rank 1 alone invalidated its
            # trace, "expected module CumoModel, but got MixtralModel", and the ranks' collectives parted).
            aux = {key: 0.0 * value if key.endswith("_loss") else value for key, value in aux.items()}
        elif pixel_values is not None:
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, features)
        elif cache is None or cache.get_seq_length() == 0:
            if (input_ids == self.config.image_token_id).any():
                raise ValueError("the prompts hold image tokens but no pixel_values were given")
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return outputs, aux


class CumoForConditionalGeneration(CumoPreTrainedModel, GenerationMixin):
    def __init__(self, config: CumoConfig):
        super().__init__(config)
        self.model = CumoModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    @property
    def llm_is_moe(self) -> bool:
        return hasattr(self.config.text_config, "num_local_experts")

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        stand_in_image: bool = False,
        **kwargs,
    ) -> CumoOutput:
        """`stand_in_image`: see CumoModel.forward (a text-only training batch under ZeRO-3)."""
        if self.llm_is_moe and labels is not None:
            kwargs["output_router_logits"] = True
        outputs, aux = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            stand_in_image=stand_in_image,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states)

        loss = lm_loss = llm_aux_loss = None
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, IGNORE_INDEX)
            lm_loss = ForCausalLMLoss(logits, labels, self.config.text_config.vocab_size)
            loss = lm_loss
            for part in ("clip", "mlp"):
                if f"{part}_balance_loss" in aux:
                    loss = loss + self.config.balance_loss_coef * aux[f"{part}_balance_loss"]
                    loss = loss + self.config.router_z_loss_coef * aux[f"{part}_router_z_loss"]
            if getattr(outputs, "router_logits", None):
                text_config = self.config.text_config
                llm_aux_loss = load_balancing_loss_func(
                    outputs.router_logits,
                    text_config.num_local_experts,
                    text_config.num_experts_per_tok,
                    attention_mask,
                )
                loss = loss + text_config.router_aux_loss_coef * llm_aux_loss

        return CumoOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            lm_loss=lm_loss,
            llm_aux_loss=llm_aux_loss,
            **aux,
        )


__all__ = ["CumoForConditionalGeneration", "CumoModel", "CumoPreTrainedModel"]
