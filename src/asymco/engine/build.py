"""Building a run's parts from its settings: the method with its nets (on the device, wrapped
for DDP and compile), the optimizer, and each net's LR plan. Checks that the settings can work
together come first, before any data is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from asymco.config import RunConfig
from asymco.data.datasets import FILE_DATASETS
from asymco.data.pipeline import loader_kind
from asymco.data.prepare import NoisyData
from asymco.data.tables import TABLE_DATASETS
from asymco.engine.distributed import Dist
from asymco.engine.precision import Execution
from asymco.errors import UserError
from asymco.methods import METHODS, Method, create_method
from asymco.models import check_model, create_model, model_options


def check_run(cfg: RunConfig) -> None:
    """Fail on an unknown method or model, a model that cannot read the dataset's images, or a
    loader that cannot apply, before any data is loaded."""
    METHODS.get(cfg.method.name)
    check_model(cfg.model.name)
    d, model = cfg.data, cfg.model.name
    if model == "digits_cnn" and d.dataset not in ("digits", "npz"):
        raise UserError("model.name=digits_cnn reads 8x8 images: use it with digits or an npz")
    if model != "digits_cnn" and d.dataset == "digits":
        raise UserError(f"model.name={model} does not fit 8x8 digits; use digits_cnn")
    if model == "cnn7" and d.dataset in (*FILE_DATASETS, *TABLE_DATASETS) and d.image_size != 32:
        raise UserError(
            f"model.name=cnn7 needs 32x32 inputs but data.image_size is "
            f"{d.image_size}; set data.image_size=32 or use resnet50"
        )
    loader_kind(d)


def build_method(cfg: RunConfig, data: NoisyData, exe: Execution, dist: Dist) -> Method:
    """The method with freshly initialised nets, moved to the device; its training forwards
    wrapped in DDP (several processes) and torch.compile (`train.compile`)."""
    # Images decoded per image in workers (files, large arrays) are RGB, cropped to
    # data.image_size; in-memory CNN inputs keep their channels and size.
    files = data.paths is not None or loader_kind(cfg.data) == "workers"
    channels = 3 if files else data.images.shape[-1]
    side = cfg.data.image_size if files else data.images.shape[1]
    options = model_options(cfg.model, image_size=side)
    outputs = cfg.model.num_outputs or data.num_classes
    if outputs < data.num_classes:
        raise UserError(f"model.num_outputs={outputs} is below the {data.num_classes} classes")
    method = create_method(
        cfg.method.name,
        cfg.method.for_run(cfg),
        num_classes=outputs,  # the official Food code keeps q over all 200 logits
        observed_labels=torch.from_numpy(data.noisy_label),
        epochs=cfg.train.epochs,
        warmup_epochs=cfg.train.warmup_epochs,
        make_model=lambda: create_model(
            cfg.model.name, num_classes=outputs, in_channels=channels, **options
        ),
    )
    if dist.enabled and exe.device.type == "cuda" and cfg.train.sync_batchnorm:
        for name, net in list(method.nets.items()):
            method.add_net(name, nn.SyncBatchNorm.convert_sync_batchnorm(net))
    method.to(exe.device, memory_format=exe.memory_format())
    method.dist = dist
    for name, views in method.fwd.items():
        if cfg.train.compile:  # only the training forwards: state_dict keys stay plain
            views.net = torch.compile(views.net)
        method.fwd[name] = dist.wrap(views, exe.device)
    if exe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return method


def build_optimizer(
    method: Method, cfg: RunConfig
) -> tuple[torch.optim.Optimizer, dict[str, list[float]]]:
    """One optimizer over the method's parameter groups, and each group's per-epoch LR (by the
    group's `net` name) from the LR plan the method asked for."""
    o, t = cfg.optim, cfg.train
    groups = method.param_groups(o)
    plans = {
        group["net"]: group.pop("lr_plan").values(epochs=t.epochs, warmup_epochs=t.warmup_epochs)
        for group in groups
    }
    if o.name == "adam":
        optimizer = torch.optim.Adam(
            groups, lr=o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay
        )
    else:
        # One optimizer with a group per net equals one SGD per net: SGD updates each
        # parameter from its own gradient and state only.
        optimizer = torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return optimizer, plans
