"""The CuMo model. Importing `cumo.model` registers CumoConfig and the model classes with transformers' Auto
classes, so a saved model loads with `AutoModelForImageTextToText.from_pretrained(path)`."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration, CumoModel

AutoConfig.register("cumo", CumoConfig)
AutoModel.register(CumoConfig, CumoModel)
AutoModelForImageTextToText.register(CumoConfig, CumoForConditionalGeneration)

__all__ = ["CumoConfig", "CumoForConditionalGeneration", "CumoModel"]
