"""Model shapes, parameter counts and initialisation (act-spec B.1)."""

import pytest
import torch
from torch import nn

from asymco.errors import UserError
from asymco.models import CNN7, DigitsCNN, create_model, list_models


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("num_classes", "expected"), [(100, 699_488), (80, 689_228)])
def test_cnn7_parameter_count(num_classes, expected):
    """Spec B.1: 699,488 (C=100) / 689,228 (C=80) trainable parameters without `g`."""
    assert n_params(CNN7(num_classes=num_classes)) == expected


def test_cnn7_split_conv_and_head():
    """conv + BN = 515,580; MLP head = 183,908 at C = 100."""
    model = CNN7(num_classes=100)
    assert n_params(model.features) == 515_580
    assert n_params(model.classifier) == 183_908


@pytest.mark.parametrize("num_classes", [10, 80, 100])
@pytest.mark.parametrize("train", [True, False])
def test_cnn7_output_shape_and_finite(num_classes, train):
    """(B, 3, 32, 32) -> (B, K) finite logits in train and eval mode."""
    torch.manual_seed(0)
    model = CNN7(num_classes=num_classes).train(train)
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, num_classes)
    assert not torch.isnan(out).any()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [CNN7, DigitsCNN])
def test_head_linear_biases_zero_and_he_init(cls):
    """MLP head: Linear biases start at 0, weights are non-zero (He normal)."""
    torch.manual_seed(0)
    model = cls(num_classes=10)
    linears = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    for linear in linears:
        assert torch.all(linear.bias == 0)
        assert linear.weight.abs().sum() > 0
    # He normal (fan_in, gain sqrt 2): std ~ sqrt(2 / fan_in) for the 256 -> hidden layer.
    first = linears[0]
    expected_std = (2.0 / first.in_features) ** 0.5
    assert first.weight.std().item() == pytest.approx(expected_std, rel=0.1)


def test_head_has_batchnorm_and_relu():
    """Head is Linear -> BatchNorm1d -> ReLU -> Linear (spec B.1, row 7)."""
    layers = list(CNN7(num_classes=10).classifier.layers)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (256, 512)


@pytest.mark.parametrize("num_classes", [10, 3])
def test_digits_cnn_output_shape(num_classes):
    """DigitsCNN: (B, 1, 8, 8) -> (B, K)."""
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=num_classes)
    out = model(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, num_classes)
    assert torch.isfinite(out).all()


def test_create_model_known_names():
    """The registry builds both models with the right class count and channels."""
    assert set(list_models()) >= {"cnn7", "digits_cnn"}
    model = create_model("cnn7", num_classes=80)
    assert isinstance(model, CNN7)
    assert n_params(model) == 689_228
    digits = create_model("digits_cnn", num_classes=10, in_channels=1)
    assert isinstance(digits, DigitsCNN)
    assert digits.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet50", "CNN7", ""])
def test_create_model_unknown_name_raises(name):
    """An unknown model name is a UserError."""
    with pytest.raises(UserError):
        create_model(name, num_classes=10)


def test_cnn7_without_mlp_head_is_josrc_cnn():
    """model.mlp_head=false gives Jo-SRC's 6 conv + 1 linear CNN (541,280 parameters at 100)."""
    model = create_model("cnn7", num_classes=100, mlp_head=False)
    assert sum(p.numel() for p in model.parameters()) == 541_280
    assert isinstance(model.classifier, torch.nn.Linear)
