"""Your own data on the command line: `--data folder:PATH | csv:FILE | npz:FILE | hf:PATH |
parquet:PATH`.

Without a preset, the model, image size and schedule are chosen from the data's size and image
size, and printed, so a first run needs no settings; every choice can still be overridden.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from asymco.augment import InputSpec
from asymco.config import RunConfig
from asymco.errors import UserError

logger = logging.getLogger(__name__)

KINDS = ("folder", "csv", "npz", "hf", "parquet")
CPU_BUDGET = "15m"
"""The own-data default's time budget on a CPU (`train.budget`, not filled: fewer epochs
only when the size-based schedule would take longer)."""


def parse_spec(spec: str, *, flag: str = "--data") -> tuple[str, str]:
    """`kind:path` -> (kind, path)."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise UserError(
            f"{flag} must look like folder:PATH, csv:FILE, npz:FILE, hf:PATH or parquet:PATH, "
            f"got {spec!r}"
        )
    return kind, path


def with_own_data(cfg: RunConfig, data: str, test: str | None) -> RunConfig:
    """`cfg` reading the data `--data`/`--test` name."""
    kind, root = parse_spec(data)
    test_root = None
    if test is not None:
        test_kind, test_root = parse_spec(test, flag="--test")
        if test_kind != kind:
            raise UserError(f"--test must be of the same kind as --data ({kind}:...)")
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dataset=kind, root=root, test_root=test_root)
    )


def _survey(cfg: RunConfig) -> tuple[int, int, int]:
    """(number of training images, typical shorter image side, channels) without decoding.

    The data is checked here in full (labels, class count, test split), so bad data gets its
    one sentence before any defaults are chosen and printed."""
    from asymco.data.datasets import check_holdout, own_splits, read_own_npz

    d = cfg.data
    if d.dataset == "npz":
        own = read_own_npz(
            Path(d.root).expanduser(), Path(d.test_root).expanduser() if d.test_root else None
        )
        if own.x_test is None:
            check_holdout(own.y, d.holdout_fraction)
        shape = own.x.shape
        return shape[0], min(shape[1:3]), shape[3]
    split, test = own_splits(d)
    if test is None:
        check_holdout(split.labels, d.holdout_fraction)
    sides = _sides(split.paths[:: max(1, len(split.paths) // 20)][:20])
    if not sides:  # not one of the sampled images opens: does any?
        _check_any_opens(split.paths)
    return len(split.paths), int(np.median(sides)) if sides else 224, 3


def _sides(paths: np.ndarray) -> list[int]:
    """The shorter side of each image of `paths` whose header can be read."""
    from asymco.data.encoded import open_image
    from asymco.untrusted import decoding

    sides = []
    for path in paths:
        try:  # unreadable images are left out later (data.on_bad_image); here they are skipped
            with decoding(path, "image"), open_image(path) as img:  # reads the header only
                sides.append(min(img.size))
        except UserError:
            continue
    return sides


def _check_any_opens(paths: np.ndarray) -> None:
    """Refuse data of which no image opens, in one sentence, before the defaults are printed."""
    from asymco.data.encoded import open_image
    from asymco.untrusted import decoding

    for path in paths:
        try:
            with decoding(path, "image"), open_image(path):
                return
        except UserError:
            continue
    if len(paths):
        raise UserError(
            f"none of the {len(paths)} images can be read (e.g. {paths[0]}); check that they "
            "are image files that open"
        )


def choose_defaults(cfg: RunConfig, model_input: InputSpec | None = None) -> RunConfig:
    """Model, image size, batch and schedule for a user's data, chosen from its size; or, given
    the `model_input` of the model `cfg` names (a timm model), fine-tuning at its input size."""
    d = cfg.data
    n, side, channels = _survey(cfg)
    small = side <= 64 and model_input is None
    if small:
        model = "digits_cnn" if side == 8 else "cnn7"
        epochs, warmup = (100, 20) if n < 10_000 else (150, 50)
        data = dataclasses.replace(
            d,
            image_size=side if side == 8 else 32,
            resize=None,
            batch_size=128,
            views="digits" if side == 8 else "cifar",
            normalize="dataset" if channels == 1 else "imagenet",
        )
        optim = dataclasses.replace(
            cfg.optim, lr=0.01, warmup_lr=0.01, lr_decay=f"cosine:{warmup},5e-4,{epochs}"
        )
    else:  # fine-tune an ImageNet ResNet-50 (or the named model), as the paper does on web images
        model = cfg.model.name if model_input else "resnet50"
        size = model_input or InputSpec(224, 256)
        epochs, warmup = (30, 5) if n < 50_000 else (20, 4)
        data = dataclasses.replace(d, image_size=size.size, resize=size.resize, batch_size=32)
        optim = dataclasses.replace(
            cfg.optim, lr=0.005, warmup_lr=0.005, lr_decay=f"cosine:{warmup},5e-5,{epochs}"
        )
    # On a CPU the answer should come within the quarter hour; small data finishes sooner.
    on_cpu = cfg.train.device == "cpu" or (
        cfg.train.device == "auto" and not torch.cuda.is_available()
    )
    budget = {"budget": CPU_BUDGET, "budget_fill": False} if on_cpu else {}
    cfg = dataclasses.replace(
        cfg,
        data=data,
        optim=optim,
        model=dataclasses.replace(cfg.model, name=model),
        train=dataclasses.replace(cfg.train, epochs=epochs, warmup_epochs=warmup, **budget),
    )
    held = (
        f", held to about {CPU_BUDGET} on this CPU (a longer schedule may be better: "
        f"--budget 1h, or --set train.budget=null for all {epochs} epochs)"
        if on_cpu
        else ""
    )
    logger.info(
        "your data: %d training images, typical side %d px -> model %s at %d px, batch %d, "
        "up to %d epochs (%d warmup)%s, lr %g; override any of these with --set",
        n,
        side,
        model,
        cfg.data.image_size,
        cfg.data.batch_size,
        epochs,
        warmup,
        held,
        optim.lr,
    )
    return cfg
