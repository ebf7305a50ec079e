"""timm backbones: `model.name=timm:<name>` builds any model of timm (Wightman, "PyTorch Image
Models", github.com/huggingface/pytorch-image-models) with a fresh `num_classes` head.

`model.pretrained` downloads timm's default pretrained weights for `<name>` (a tag such as
`resnet50.a1_in1k` picks others) from the Hugging Face Hub; `model.weights=PATH` loads a local
file instead (a state_dict or `.safetensors`, as timm and the Hub store them), its classifier
head left out. The input size, resize and normalisation come from the model's pretrained config
(`timm.data.resolve_data_config`), so a run feeds the model what its weights were trained on.

timm is an optional extra (`pip install "asymco[timm]"`), imported only when a timm model is
named.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from types import ModuleType

from torch import nn

from asymco.augment import InputSpec
from asymco.errors import UserError
from asymco.models.weights import describe, load_matching, read_state_dict

TIMM_PREFIX = "timm:"


def is_timm(name: str) -> bool:
    """Whether `name` (a `model.name`) names a timm model."""
    return name.startswith(TIMM_PREFIX)


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise UserError(
            'model.name=timm:<name> needs the timm package: pip install "asymco[timm]"'
        ) from None
    return timm


def timm_arch(name: str) -> str:
    """The timm model name in `name` ("timm:resnet18" -> "resnet18"), checked against timm's
    registry (and its pretrained tags), without building anything."""
    timm = _timm()
    arch = name.removeprefix(TIMM_PREFIX)
    base, _, tag = arch.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise UserError(
            f"timm has no model {base!r} (model.name={name}); {hint}timm.list_models() "
            "lists every name"
        )
    try:
        timm.models.get_pretrained_cfg(arch)
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for ..."
        raise UserError(
            f"timm's {base} has no pretrained tag {tag!r} (model.name={name}); "
            f"timm.list_pretrained('{base}.*') lists its tags"
        ) from None
    return arch


def create_timm_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = True,
    weights: str | Path | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """timm's model `name` ("timm:<arch>") with a fresh `num_classes` head.

    Args:
        name: "timm:" and a timm model name, optionally with a pretrained tag.
        num_classes: Outputs of the new head.
        in_channels: Image channels (timm adapts a pretrained first convolution to 1 channel).
        pretrained: Without `weights`, download timm's pretrained weights for `name`.
        weights: A local state_dict or .safetensors file of this model; it takes precedence
            over `pretrained`, and its classifier head is left out. None or "" means no file.
        image_size: The side of the images it will see; a model built for one input size
            (ViT, Swin, ...) is built for this one instead (timm resamples pretrained position
            embeddings). None: the model's own size.

    Raises:
        UserError: timm is missing, the name is unknown, the download fails, or the weights
            file is unreadable or does not fit the model.
    """
    timm = _timm()
    arch = timm_arch(name)
    download = pretrained and not weights
    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    sized = {}
    if image_size and pretrained_cfg and pretrained_cfg.fixed_input_size:
        sized["img_size"] = image_size  # without it the first batch fails on the size
    try:
        net = timm.create_model(
            arch, pretrained=download, num_classes=num_classes, in_chans=in_channels, **sized
        )
    # Broad on purpose: offline, the Hub client, the cache and a truncated file each fail in
    # their own way; every one needs the same fix.
    except Exception as err:
        if not download:
            raise
        raise UserError(
            f"could not get timm's pretrained weights for {arch} ({describe(err, corrupt=False)}); "
            "download them elsewhere (the model's model.safetensors) and pass "
            "model.weights=PATH, or set model.pretrained=false"
        ) from None
    if weights:
        _load_file(net, arch, Path(weights).expanduser())
    return net


def _load_file(net: nn.Module, arch: str, path: Path) -> None:
    """`path`'s weights into `net`, its classifier head (named by timm's config) left out."""
    fix = f"pass weights of timm's {arch} (a state_dict or .safetensors file)"
    state = read_state_dict(path, what=f"timm {arch}", fix=fix)
    head = net.pretrained_cfg.get("classifier") or ()
    head = (head,) if isinstance(head, str) else tuple(head)
    load_matching(net, state, source=str(path), what=f"timm {arch}", fix=fix, head=head)


def timm_input(name: str) -> InputSpec:
    """Input size, resize and normalisation of timm's model `name`, from its pretrained config
    (timm's defaults, 224 px and ImageNet statistics, for a model without one)."""
    timm = _timm()
    pretrained_cfg = timm.models.get_pretrained_cfg(timm_arch(name))
    config = timm.data.resolve_data_config(
        pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {}
    )
    size = int(config["input_size"][-1])  # (C, H, W); crops here are square
    # As timm's eval transform: resize the shorter side to size / crop_pct, then centre-crop.
    resize = math.floor(size / config["crop_pct"])
    return InputSpec(size, resize, tuple(config["mean"]), tuple(config["std"]))
