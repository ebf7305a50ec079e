"""Model registry: `create_model(name, num_classes=...)`, `list_models()`; `timm:<name>` builds
any timm model (`timm_models.py`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from asymco.augment import InputSpec
from asymco.config import ModelConfig
from asymco.errors import UserError
from asymco.models.cnn import CNN7, DigitsCNN
from asymco.models.resnet import ResNet50
from asymco.models.timm_models import create_timm_model, is_timm, timm_arch, timm_input
from asymco.registry import Registry

MODELS = Registry("model")
MODELS.register("cnn7")(CNN7)
MODELS.register("digits_cnn")(DigitsCNN)
MODELS.register("resnet50")(ResNet50)

# What the built-in models read; all normalise with ImageNet statistics where they normalise
# with fixed ones (act-spec A.7.8).
_BUILT_IN_INPUT = {
    "digits_cnn": InputSpec(8, 8),
    "resnet50": InputSpec(224, 256),  # the paper's Food-101N recipe
}


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """Build model `name`; `options` are the model's own keyword settings (e.g. mlp_head)."""
    if is_timm(name):
        return create_timm_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **options)


def check_model(name: str) -> None:
    """Refuse a model name nothing can build, with one sentence (before any data is loaded)."""
    if is_timm(name):
        timm_arch(name)
    elif name not in MODELS:
        raise UserError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS.names())}, or "
            "timm:<name> for any timm model"
        )


def model_options(cfg: ModelConfig, *, image_size: int) -> dict[str, Any]:
    """The keyword settings of `cfg`'s model, for `create_model`, reading `image_size` images."""
    if cfg.name == "cnn7":
        return {"mlp_head": cfg.mlp_head}
    if cfg.name == "resnet50":
        return {"pretrained": cfg.pretrained, "weights": cfg.weights}
    if is_timm(cfg.name):
        return {"pretrained": cfg.pretrained, "weights": cfg.weights, "image_size": image_size}
    return {}


def input_spec(cfg: ModelConfig) -> InputSpec:
    """The input size, resize and normalisation `cfg`'s model expects: a timm model's from its
    pretrained config, the built-in models' the ones the paper uses (ImageNet statistics)."""
    if is_timm(cfg.name):
        return timm_input(cfg.name)
    return _BUILT_IN_INPUT.get(cfg.name, InputSpec(32, 32))


def list_models() -> list[str]:
    return MODELS.names()


__all__ = [
    "CNN7",
    "MODELS",
    "DigitsCNN",
    "ResNet50",
    "check_model",
    "create_model",
    "input_spec",
    "is_timm",
    "list_models",
    "model_options",
]
