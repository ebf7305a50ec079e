"""Model registry: `create_model(name, num_classes=...)`, `list_models()`."""

from __future__ import annotations

from torch import nn

from asymco.models.cnn import CNN7, DigitsCNN
from asymco.models.resnet import ResNet50
from asymco.registry import Registry

MODELS = Registry("model")
MODELS.register("cnn7")(CNN7)
MODELS.register("digits_cnn")(DigitsCNN)
MODELS.register("resnet50")(ResNet50)


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """Build model `name`; `options` are the model's own keyword settings (e.g. mlp_head)."""
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **options)


def list_models() -> list[str]:
    return MODELS.names()


__all__ = ["CNN7", "MODELS", "DigitsCNN", "ResNet50", "create_model", "list_models"]
