"""ResNet-50 (act-spec B.2): shape, parameter counts, head init and weight loading, offline."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights

from asymco.errors import UserError
from asymco.models.resnet import ResNet50

BACKBONE_PARAMS = 23_508_032  # act-spec B.2


@pytest.fixture(autouse=True)
def offline_hub(no_network: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No network, and torch's hub cache pointed at an empty folder, so weights a developer
    has cached can neither hide a download attempt nor be read by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return no_network


def _reference_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A torchvision resnet50 state_dict with its 1000-class fc, filled with distinct values."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # give BN statistics non-default values so a skipped copy shows
        for name, buffer in net.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(7)
    return net.state_dict()


def _assert_backbone_equals(model: ResNet50, reference: dict[str, torch.Tensor]) -> None:
    loaded = model.features.state_dict()
    expected = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_forward_shape_and_training_state():
    model = ResNet50(num_classes=7, pretrained=False)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("num_classes", [100, 196])
def test_parameter_counts(num_classes: int):
    model = ResNet50(num_classes=num_classes, pretrained=False)
    backbone = sum(p.numel() for p in model.features.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())
    assert backbone == BACKBONE_PARAMS
    assert head == 2048 * num_classes + num_classes  # 204,900 at 100 classes
    # No unused heads: nothing but backbone and classifier holds parameters.
    assert sum(p.numel() for p in model.parameters()) == backbone + head
    assert not any(k.startswith("features.fc.") for k in model.state_dict())


def test_head_init_is_kaiming_with_zero_bias():
    torch.manual_seed(0)
    model = ResNet50(num_classes=1000, pretrained=False)
    assert torch.count_nonzero(model.classifier.bias) == 0
    std = model.classifier.weight.std().item()
    assert std == pytest.approx((2 / 2048) ** 0.5, rel=0.02)  # relu gain, fan_in


def test_in_channels_other_than_3_is_a_user_error():
    with pytest.raises(UserError, match="in_channels=1"):
        ResNet50(num_classes=10, in_channels=1, pretrained=False)


def test_weights_file_with_fc_loads_backbone_and_ignores_fc(tmp_path: Path):
    reference = _reference_state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(reference, path)
    # 1000 classes: the file's fc would fit the head, so only ignoring it keeps the zero bias.
    model = ResNet50(num_classes=1000, weights=str(path))
    _assert_backbone_equals(model, reference)
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert not torch.equal(model.classifier.weight, reference["fc.weight"])


def test_weights_file_without_fc_and_old_bn_counters(tmp_path: Path):
    reference = _reference_state_dict(seed=1)
    plain = {
        k: v
        for k, v in reference.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "backbone.pt"
    torch.save(plain, path)
    model = ResNet50(num_classes=5, pretrained=False, weights=path)  # the file wins
    loaded = model.features.state_dict()
    for key, value in plain.items():
        assert torch.equal(loaded[key], value), key


def test_weights_file_takes_precedence_over_download(tmp_path: Path, monkeypatch):
    def no_download(self, *args, **kwargs):
        raise AssertionError("weights=PATH must not download anything")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", no_download)
    reference = _reference_state_dict()
    path = tmp_path / "w.pth"
    torch.save(reference, path)
    _assert_backbone_equals(ResNet50(num_classes=3, pretrained=True, weights=path), reference)


def _bad_weight_files(tmp_path: Path) -> dict[str, Path]:
    reference = _reference_state_dict()
    files = {}

    def save(name: str, obj) -> None:
        files[name] = tmp_path / f"{name}.pth"
        torch.save(obj, files[name])

    save("missing_keys", {k: v for k, v in reference.items() if not k.startswith("layer4.")})
    save("prefixed_keys", {f"module.{k}": v for k, v in reference.items()})
    wrong = dict(reference)
    wrong["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    save("wrong_shape", wrong)
    save("resnet18", torchvision.models.resnet18(weights=None).state_dict())
    save("not_a_dict", torch.zeros(3))
    save("checkpoint", {"state_dict": reference, "epoch": 3})
    files["corrupt"] = tmp_path / "corrupt.pth"
    files["corrupt"].write_bytes(b"this is not a checkpoint")
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(files["wrong_shape"].read_bytes()[:5000])
    files["absent"] = tmp_path / "absent.pth"
    return files


def test_bad_weights_files_are_user_errors_naming_the_file(tmp_path: Path):
    for name, path in _bad_weight_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            ResNet50(num_classes=10, pretrained=False, weights=path)
        message = str(info.value)
        assert str(path) in message, name
        assert "\n" not in message, name


def test_weights_file_that_would_run_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(UserError, match=r"evil\.pth.*\.system"):
        ResNet50(num_classes=10, weights=path)
    assert not marker.exists()


def test_pretrained_requests_imagenet1k_v1(monkeypatch):
    requested = []
    reference = _reference_state_dict(seed=2)

    def fake_get_state_dict(self, *args, **kwargs):
        requested.append((self, kwargs))
        return reference

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", fake_get_state_dict)
    model = ResNet50(num_classes=10, pretrained=True)
    assert len(requested) == 1
    weights, kwargs = requested[0]
    assert weights is ResNet50_Weights.IMAGENET1K_V1
    assert weights is not ResNet50_Weights.DEFAULT  # DEFAULT is V2, not what the paper used
    assert kwargs.get("weights_only") is True and kwargs.get("check_hash") is True
    _assert_backbone_equals(model, reference)


@pytest.mark.parametrize(
    "failure",
    [
        URLError("no route to host"),
        OSError("disk full"),
        RuntimeError('invalid hash value (expected "0676ba61", got "deadbeef")'),
    ],
)
def test_download_failure_is_a_user_error(monkeypatch, failure: Exception):
    def offline(self, *args, **kwargs):
        raise failure

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(UserError, match=r"model\.weights=PATH.*model\.pretrained=false"):
        ResNet50(num_classes=10)


def test_real_download_path_offline_is_a_user_error(no_network: list[str]):
    """torchvision's own download code, stopped by the network guard, ends in a UserError."""
    with pytest.raises(UserError, match=r"IMAGENET1K_V1.*model\.pretrained=false"):
        ResNet50(num_classes=10, pretrained=True)
    assert no_network, "expected a (blocked) download attempt"
    no_network.clear()  # this test wanted the attempt; the guard should not fail it
