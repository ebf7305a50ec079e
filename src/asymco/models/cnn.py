"""The paper's CIFAR CNN (act-spec B.1) and a small CNN for the 8x8 digits quickstart."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # 3x3, stride 1, padding 1, with bias; BN momentum 0.1 / eps 1e-5 are PyTorch's defaults.
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MLPHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear, with He-normal weights and zero biases."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class CNN7(nn.Module):
    """ACT's "7-layer CNN": the six convolutions of Jo-SRC's CNN and a 2-layer MLP head.

    Input (B, 3, 32, 32) -> logits (B, num_classes). The official model also computes an unused
    projection head; it is left out (it never affects the logits or the gradients). 699,488
    parameters at 100 classes.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, mlp_head: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2, 2),  # 64x16x16
            *_conv_bn_relu(64, 128),
            *_conv_bn_relu(128, 128),
            nn.MaxPool2d(2, 2),  # 128x8x8
            *_conv_bn_relu(128, 196),
            *_conv_bn_relu(196, 16),
            nn.MaxPool2d(2, 2),  # 16x4x4 = 256 features
            nn.Flatten(),
        )
        # Jo-SRC's original CNN ends in one Linear layer (PyTorch's default init); ACT's has
        # the MLP head (act-spec A.7.7).
        self.classifier = (
            MLPHead(256, 512, num_classes) if mlp_head else nn.Linear(256, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 single-channel digits: (B, 1, 8, 8) -> (B, num_classes)."""

    def __init__(self, *, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2, 2),  # 64x4x4
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2, 2),  # 64x2x2
            nn.Flatten(),
        )
        self.classifier = MLPHead(256, 128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
