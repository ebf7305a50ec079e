"""timm backbones (`model.name=timm:<name>`): building, local weights, bad names and files, the
input size and normalisation taken from the model's pretrained config, and a run end to end.

Every model here is one of timm's tiny `test_*` models with random initialisation; nothing is
downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asymco.augment import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from asymco.cli import main
from asymco.config import ModelConfig
from asymco.data.loader import normalizer_for
from asymco.errors import UserError
from asymco.label_issues import read_label_issues
from asymco.models import check_model, create_model, input_spec

timm = pytest.importorskip("timm")

TINY = "timm:test_resnet"  # 0.37 M parameters; pretrained config: 160 px, mean = std = 0.5


def tiny(num_classes: int = 3, **options) -> torch.nn.Module:
    return create_model(TINY, num_classes=num_classes, **{"pretrained": False, **options})


def reference_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """test_resnet's state_dict with timm's own 1000-class head, filled with distinct values."""
    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():  # BN statistics away from their defaults, so a skipped copy shows
        for buffer in net.buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    return net.state_dict()


def test_builds_any_timm_model_with_the_asked_classes_and_channels():
    net = tiny(num_classes=5).eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    gray = create_model(
        "timm:test_efficientnet", num_classes=4, in_channels=1, pretrained=False
    ).eval()
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_a_model_built_for_one_input_size_is_built_for_the_run_s_size():
    x = torch.randn(1, 3, 32, 32)
    native = create_model("timm:test_vit_relpos", num_classes=3, pretrained=False)  # 160 px
    with pytest.raises(AssertionError, match="doesn't match model"):  # timm's own check
        native.eval()(x)
    sized = create_model("timm:test_vit_relpos", num_classes=3, pretrained=False, image_size=32)
    assert sized.eval()(x).shape == (1, 3)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_backbone_and_keeps_a_fresh_head(tmp_path: Path, suffix: str):
    reference = reference_weights()
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference, str(path))
    else:
        torch.save(reference, path)
    net = tiny(num_classes=3, pretrained=True, weights=str(path))  # the file wins: no download
    loaded = net.state_dict()
    for key, value in reference.items():
        if key.startswith("fc."):
            assert loaded[key].shape[0] == 3, key  # the new head, not the file's 1000 classes
        else:
            assert torch.equal(loaded[key], value), key


def test_bad_weights_files_are_one_sentence_naming_the_file(tmp_path: Path):
    reference = reference_weights()
    other = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    files = {"other_model": other, "checkpoint": {"state_dict": reference, "epoch": 2}}
    partial = {k: v for k, v in reference.items() if not k.startswith("layer4.")}
    files["missing_keys"] = partial
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pth")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not safetensors at all")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    for path in [*tmp_path.iterdir(), tmp_path / "absent.pth"]:
        with pytest.raises(UserError) as info:
            tiny(weights=path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, message
        assert "test_resnet" in message, message
    with pytest.raises(UserError, match=r"do not match.*missing layer4\."):
        tiny(weights=tmp_path / "missing_keys.pth")


def test_unknown_names_and_tags_are_one_sentence():
    with pytest.raises(UserError, match=r"no model 'resnet18x'.*did you mean timm:resnet18"):
        check_model("timm:resnet18x")
    with pytest.raises(UserError, match=r"no pretrained tag 'bogus'.*list_pretrained"):
        check_model("timm:resnet18.bogus")
    check_model("timm:resnet18.a1_in1k")  # a real tag passes without building anything
    with pytest.raises(UserError, match=r"or timm:<name>"):
        check_model("resnet51")
    with pytest.raises(UserError, match=r"model\.name.*timm:<name>"):
        ModelConfig(name="timm:")


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(UserError, match=r'pip install "asymco\[timm\]"'):
        check_model(TINY)


def test_download_failure_is_a_user_error(no_network: list[str], monkeypatch):
    asked = []

    def offline(repo_id: str, *args, **kwargs):  # what the Hub client raises after its retries
        asked.append(repo_id)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    with pytest.raises(UserError, match=r"test_resnet.*model\.weights=PATH.*pretrained=false"):
        create_model(TINY, num_classes=3, pretrained=True)
    assert asked == ["timm/test_resnet.r160_in1k"]


def test_input_size_and_normalisation_come_from_the_pretrained_config():
    # timm's test_resnet: 160 px, crop_pct 0.95 -> resize floor(160 / 0.95) = 168; mean/std 0.5
    assert input_spec(ModelConfig(name=TINY)) == InputSpec(160, 168, (0.5,) * 3, (0.5,) * 3)
    spec = input_spec(ModelConfig(name="timm:resnet18.a1_in1k"))
    assert (spec.size, spec.mean, spec.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    # The built-in models keep the paper's ImageNet statistics.
    for name in ("cnn7", "resnet50", "digits_cnn"):
        spec = input_spec(ModelConfig(name=name))
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    images = np.array([[[[0, 0, 0]], [[255, 255, 255]]]], dtype=np.uint8)  # (1, 2, 1, 3)
    normalize = normalizer_for(images, "imagenet", torch.device("cpu"), stats=((0.5,) * 3,) * 2)
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert x.flatten().tolist() == [-1.0, 1.0] * 3


def image_folder(root: Path) -> Path:
    """root/class<k>/<i>.png: 8 images of mixed sizes per class, each class its own colour."""
    from PIL import Image

    for label in range(3):
        for i in range(8):
            rng = np.random.default_rng(10 * label + i)
            pixels = rng.integers(0, 80, (36 + i, 40, 3), dtype=np.uint8)
            pixels[..., label] += 150
            (root / f"class{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{i}.png")
    return root


def test_an_unknown_timm_model_on_the_command_line_is_one_line(tmp_path: Path, capsys):
    data = f"folder:{image_folder(tmp_path / 'pics')}"
    assert main(["train", "--data", data, "--set", "model.name=timm:resnet18x"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "did you mean timm:resnet18" in errors[0], errors


def test_train_a_timm_model_on_an_image_folder(tmp_path: Path, caplog):
    image_folder(tmp_path / "pics")
    out = tmp_path / "run"
    settings = ["model.name=" + TINY, "model.pretrained=false", "train.epochs=2",
                "train.warmup_epochs=1", "data.batch_size=8", "train.progress=false",
                "data.workers=0", "train.precision=fp32", "data.image_size=32", "data.resize=36"]
    with caplog.at_level("INFO"):
        assert main(["train", "--data", f"folder:{tmp_path / 'pics'}", "--out", str(out),
                     *[a for s in settings for a in ("--set", s)]]) == 0
    assert f"model {TINY} at 160 px" in caplog.text  # the defaults follow the timm model
    config = (out / "config.yaml").read_text()
    assert f"name: {TINY}" in config and "image_size: 32" in config  # --set still wins
    rows = read_label_issues(out / "label_issues.csv")
    assert len(rows) == 19 and {r["given_class"] for r in rows} == {"class0", "class1", "class2"}
    state = torch.load(out / "checkpoint.pt", weights_only=True)["method"]
    assert state["nets.rtm.fc.weight"].shape[0] == 3  # timm's own head, 3 classes
