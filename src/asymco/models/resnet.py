"""ResNet-50 for the web-image and Food-101N experiments (act-spec B.2).

The backbone is torchvision's ResNet-50 (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016), ImageNet-pretrained as the paper uses it, followed by one linear head.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights

from asymco.errors import UserError
from asymco.models.weights import describe, load_matching, read_state_dict

FEATURES = 2048
"""Width of ResNet-50's pooled features (the input of the head)."""

# The weights the paper used: torchvision 0.15's `resnet50(pretrained=True)` means
# IMAGENET1K_V1 (76.13 % top-1), not the newer IMAGENET1K_V2 that `DEFAULT` names today.
PAPER_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1

_FIX = "pass torchvision's resnet50 weights (a state_dict of torchvision.models.resnet50)"
# torchvision's 1000-class ImageNet head `fc`: never used here.
_CHECK = {"what": "resnet50", "fix": _FIX, "head": ("fc",)}


class ResNet50(nn.Module):
    """torchvision's ResNet-50 backbone with a single Linear(2048, num_classes) head.

    Source: He et al. 2016, as implemented by torchvision (`torchvision.models.resnet50`). The
    ACT paper trains it, ImageNet-1K-pretrained, on Web-Aircraft/Bird/Car and Food-101N: conv1,
    bn1, relu, maxpool, layer1..layer4, global average pool and flatten to 2048 features, then
    the head (kaiming-normal fan_in weights, zero bias). The official code's unused `proba_head`
    is left out. Every BatchNorm trains and nothing is frozen; backbone and head share one
    parameter group. 23,508,032 backbone parameters; the head has 2048*C + C (204,900 at C=100).

    Input (B, 3, H, W) -> logits (B, num_classes); the paper uses H = W = 448 (Web-*) or 224.

    Args:
        num_classes: Number of output classes C.
        in_channels: Must be 3 (the backbone and its pretrained weights take RGB images).
        pretrained: Without `weights`, True loads torchvision's IMAGENET1K_V1 weights (the ones
            the paper used), downloading them into torch's hub cache the first time; False
            leaves the backbone randomly initialised.
        weights: Path to a local state_dict of torchvision's resnet50 (e.g. the
            `resnet50-0676ba61.pth` file torchvision downloads). It takes precedence over
            `pretrained`; its `fc.*` entries, if any, are ignored. None or "" means no file.

    Raises:
        UserError: `in_channels` is not 3, the weights file is missing, unreadable or not a
            resnet50 state_dict, or the pretrained weights cannot be downloaded.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        pretrained: bool = True,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if in_channels != 3:
            raise UserError(
                f"resnet50 takes 3-channel RGB images but in_channels={in_channels}; use RGB "
                "data or another model"
            )
        # Looked up at call time (not imported by name) so tests can substitute it.
        backbone = torchvision.models.resnet50(weights=None)
        # Identity keeps torchvision's forward (avgpool, flatten, fc) and holds no parameters,
        # so the ImageNet head neither trains nor appears in the state_dict.
        backbone.fc = nn.Identity()
        if weights:
            path = Path(weights).expanduser()
            state = read_state_dict(path, what="resnet50", fix=_FIX)
            load_matching(backbone, state, source=str(path), **_CHECK)
        elif pretrained:
            load_matching(backbone, _download_paper_weights(), source=PAPER_WEIGHTS.url, **_CHECK)
        self.features = backbone
        self.classifier = nn.Linear(FEATURES, num_classes)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _download_paper_weights() -> Mapping[str, Any]:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return PAPER_WEIGHTS.get_state_dict(
            progress=True, check_hash=True, weights_only=True, map_location="cpu"
        )
    # Broad on purpose: besides URLError (an OSError) and a bad hash (RuntimeError), http.client
    # errors and a truncated file in the cache can fail in many ways; all need the same fix.
    except Exception as err:
        raise UserError(
            f"could not get torchvision's ImageNet resnet50 weights ({PAPER_WEIGHTS}) from "
            f"{PAPER_WEIGHTS.url} into {cache} ({describe(err, corrupt=False)}); download "
            "that file elsewhere and pass model.weights=PATH, or set model.pretrained=false"
        ) from None
