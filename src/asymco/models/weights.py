"""Local weights files for pretrained backbones (`model.weights=PATH`): read safely, checked key
by key against the network, and loaded without the file's classifier head.

Shared by torchvision's ResNet-50 (`resnet.py`) and timm backbones (`timm_models.py`): a file
from elsewhere is never unpickled beyond tensors, and a file that does not fit the network gets
one sentence naming what does not fit, never a half-loaded network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asymco.errors import UserError
from asymco.untrusted import decoding


def read_state_dict(path: Path, *, what: str, fix: str) -> Mapping[str, Any]:
    """The tensors in `path`: a `.safetensors` file, or anything else as a `torch.save` file.

    Args:
        path: The weights file.
        what: The network's name in messages, e.g. "resnet50".
        fix: The end of each message: what to pass instead.
    """
    if not path.is_file():
        raise UserError(
            f"{what} weights file {path} does not exist; fix model.weights or leave it unset"
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(
                f"reading {path} needs the safetensors package: pip install safetensors"
            ) from None
        with decoding(path, f"{what} weights file", fix):  # a header or size it refuses
            return load_file(str(path), device="cpu")
    with decoding(path, f"{what} weights file", fix):
        # weights_only: a weights file from elsewhere must not be able to run code.
        return torch.load(path, weights_only=True, map_location="cpu")


def load_matching(
    net: nn.Module,
    state: Any,
    *,
    source: str,
    what: str,
    fix: str,
    head: Sequence[str] = (),
) -> None:
    """Load `state` into `net` after checking that every key and shape matches, leaving out the
    classifier `head` (module names, e.g. ("fc",)) on both sides: the net keeps its fresh head.

    Raises:
        UserError: `state` is not a dict of tensors, or a key is missing, unexpected or of
            another shape (up to three of each are named).
    """
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        hint = ""
        if isinstance(state, Mapping) and ({"state_dict", "model"} & set(state)):
            hint = " (it looks like a training checkpoint: save its state_dict on its own)"
        raise UserError(
            f"{what} weights {source} are not a state_dict (a dict of tensors){hint}; {fix}"
        )
    prefixes = tuple(f"{name}." for name in head)
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith(prefixes)}
    # Files saved before BatchNorm had `num_batches_tracked` (torchvision's older downloads)
    # lack those counters; load_state_dict fills them in, so their absence is no mismatch.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shapes", wrong_shape),
        )
        if keys
    ]
    if problems:
        raise UserError(
            f"{what} weights {source} do not match the {what} network "
            f"({'; '.join(problems)}); {fix}"
        )
    # Every key was checked above; what may still be absent is the head, kept fresh, and old
    # BatchNorm counters, which stay at the net's own value.
    net.load_state_dict(state, strict=False)


def describe(err: BaseException, *, corrupt: bool = True) -> str:
    """One line for `err`; torch's weights_only refusals are paragraphs of advice."""
    text = str(err).strip() or type(err).__name__
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        needs = found.group(1) if found else "objects other than tensors"
        return f"it needs {needs}, which a state_dict never does, so it was not unpickled"
    line = text.splitlines()[0]
    return f"it looks corrupt or was not written by torch.save: {line}" if corrupt else line
