"""Typed, frozen run configuration.

Every knob of a run lives here, with its meaning and its default. Defaults are the faithful ones
from `act-spec.md` (the official CIFAR script `main.py` where paper and code agree, the paper where
the spec says so); each deviation the spec allows is a named setting. Values are checked in
`__post_init__`, and a bad one raises `UserError` naming the dotted key (e.g. ``noise.rate``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from asymco.errors import UserError

NoiseKind = Literal["none", "symmetric", "asymmetric", "human"]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key} {message}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "digits", "folder", "csv", "npz", "web", "food101n"] = (
        "cifar100"
    )
    """Image source. CIFAR comes from an .npz, a torchvision folder or torchvision's download;
    `folder` (root/<class>/<image>), `csv` (path,label) and `npz` (x_train, y_train) are your
    own data; `web` (root/train, root/val) and `food101n` are the paper's real-noise sets."""
    root: str | None = None
    """Where the data is: an .npz file, a folder holding `<dataset>.npz` or torchvision's CIFAR
    folder, or the download cache (None = `$ASYMCO_DATA` or `~/.cache/asymco`); the folder, CSV
    file or .npz file of your own data; the web set's or Food-101N's root."""
    test_root: str | None = None
    """Test split of your own data (same kind as `root`), or Food-101's root for food101n
    (None: `<root>/food-101`). Without one, own data is split with `holdout_fraction`."""
    holdout_fraction: float = 0.2
    """Share of your own data held out (seeded by `subset_seed`) when there is no test split."""
    image_size: int = 32
    """Crop side for image files (the paper: 448 web, 224 Food-101N)."""
    resize: int | None = None
    """Shorter-side resize before cropping image files; None = image_size (448 web, 256 Food)."""
    on_bad_image: Literal["skip", "stop"] = "skip"
    """An unreadable image file: skip it with a warning naming it, or stop with its path."""
    download: bool = True
    """Let torchvision download CIFAR into `root` when it is not there yet."""
    subset: int | None = None
    """Train on a seeded random subset of this many images (drawn after the noise, which is
    always drawn on the full training set). None = all."""
    test_subset: int | None = None
    """Evaluate on a seeded random subset of this many test images (quick runs only)."""
    subset_seed: int = 0
    """Seed of both subsets; independent of the noise seed and of the training seed."""
    digits_test_fraction: float = 0.2
    """Share of scikit-learn's digits held out (stratified, seeded by `subset_seed`) for testing."""
    batch_size: int = 128
    eval_batch_size: int | None = None
    """Test-set batch size; None = 1024 on a GPU, 128 on a CPU. The official code uses 16; the
    result does not depend on it (eval mode), only the speed does."""
    loader: Literal["device", "pil"] = "device"
    """`device`: images live on the training device, views are built there in batches (fast);
    `pil`: DataLoader workers with per-image torchvision/PIL transforms (the reference
    pipeline's structure, kept for comparison)."""
    workers: int | None = None
    """DataLoader worker processes of the `pil` loader; None = min(4, CPU cores) (the official
    code uses 4)."""
    views: Literal["cifar", "digits"] = "cifar"
    """Weak/strong view recipe: `cifar` = crop(32, pad 4) + flip, strong adds the AutoAugment
    CIFAR-10 policy; `digits` = small shifts, strong adds a larger shift and a cutout."""
    normalize: Literal["imagenet", "dataset"] = "imagenet"
    """The official CIFAR code normalises with ImageNet statistics (act-spec A.7.8)."""

    def __post_init__(self) -> None:
        for key in ("subset", "test_subset"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}", "must be a positive number of images")
        _check(self.batch_size > 0, "data.batch_size", "must be positive")
        _check(
            self.eval_batch_size is None or self.eval_batch_size > 0,
            "data.eval_batch_size",
            "must be positive",
        )
        _check(self.workers is None or self.workers >= 0, "data.workers", "must be >= 0")
        _check(0 < self.digits_test_fraction < 1, "data.digits_test_fraction", "must be in (0, 1)")
        _check(0 < self.holdout_fraction < 1, "data.holdout_fraction", "must be in (0, 1)")
        _check(self.image_size > 0, "data.image_size", "must be positive")
        _check(self.resize is None or self.resize > 0, "data.resize", "must be positive")


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    kind: NoiseKind = "symmetric"
    """`symmetric`: uniform over the other known classes; `asymmetric`: pair flip i -> i+1 mod K
    in class-id order (act-spec C.1); `none`: clean labels."""
    rate: float = 0.2
    """Closed-set noise rate r (the expected share of known-class samples whose label flips)."""
    openset_ratio: float = 0.0
    """Share of classes held out as open-set (0.2 = CIFAR-80N: classes >= 80 get a uniformly
    random known label, the test set keeps classes < 80, the nets have 80 outputs)."""
    seed: int = 0
    """numpy RandomState seed of the noise draw; the official protocol uses 0 for every run and
    keeps it independent of the training seed."""
    labels_file: str | None = None
    """`human` noise: the CIFAR-N label file (`CIFAR-100_human.pt`, `CIFAR-10_human.pt` or an
    .npz with the same arrays); None = look in the data root."""
    label_set: str = "noisy_label"
    """`human` noise: which human labels (`noisy_label` for CIFAR-100N; `aggre`, `random1`,
    `random2`, `random3`, `worst` for CIFAR-10N)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.rate < 1.0, "noise.rate", f"must be in [0, 1), got {self.rate}")
        _check(0.0 <= self.openset_ratio < 1.0, "noise.openset_ratio", "must be in [0, 1)")
        _check(self.seed >= 0, "noise.seed", "must be a non-negative integer")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = "cnn7"
    """`cnn7`: the paper's CIFAR CNN (6 conv + MLP head, act-spec B.1); `digits_cnn` for digits."""
    mlp_head: bool = True
    """cnn7 only: ACT's 2-layer MLP head (faithful); false = Jo-SRC's single Linear(256, K)."""
    pretrained: bool = True
    """resnet50 only: start from torchvision's ImageNet IMAGENET1K_V1 weights (downloaded)."""
    weights: str | None = None
    """resnet50 only: a local file with those weights (for machines without a network)."""
    num_outputs: int | None = None
    """Logits of the nets; None = the number of classes. The official Food-101N code uses 200
    for its 101 classes (act-spec C.3): set 200 to reproduce that quirk."""

    def __post_init__(self) -> None:
        _check(self.num_outputs is None or self.num_outputs > 1, "model.num_outputs", "must be > 1")


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    name: str = "act"
    """`act` (Asymmetric Co-Training), `standard` (one net, cross-entropy on every label), or
    the baselines `coteaching`, `coteaching_plus`, `jocor`."""
    tau: float = 0.025
    """Memorization threshold: mining is on while (Acc_NTM - Acc_RTM) / Acc_RTM < tau."""
    mining_gate: Literal["per_batch", "per_epoch", "latched"] = "per_batch"
    """`per_batch` (official: re-decided on every batch), `per_epoch` (decided once per epoch
    from the previous epoch's accuracies), `latched` (once closed, closed for good)."""
    selection_variant: Literal["paper_main", "web"] = "paper_main"
    """`paper_main`: Fig. 2 / main.py truth table; `web`: main_web.py, which also keeps samples
    only the RTM fits."""
    ema_momentum: float = 0.8
    """q <- ema_momentum * q + (1 - ema_momentum) * softmax(z_RTM)."""
    cr_weight: float = 0.2
    """L_RTM = (1 - cr_weight) * L_sel + cr_weight * L_CR."""
    conf_penalty_weight: float = 1.0
    """Weight of the negative-entropy penalty on the RTM during warmup."""
    conf_penalty_clamp_logits: bool = True
    """Official behaviour: clamp the logits (not the probabilities) at 1e-12 before the softmax."""
    label_smoothing: float = 0.0
    """Applied to every cross-entropy term (0 on CIFAR, 0.35 in the web/Food scripts)."""
    use_ass: bool = True
    """Table 4 switch: agreement-based selection. Off = the RTM trains on every sample."""
    use_asm: bool = True
    """Table 4 switch: discrepancy-based mining while the tau gate is open."""
    use_dsrw: bool = True
    """Table 4 switch: historical re-weighting w = c / (epoch + 1); off = weight 1."""
    use_cr: bool = True
    """Table 4 switch: the consistency term on the strong view (and the 1 - cr_weight factor)."""
    forget_rate: float | None = None
    """Co-teaching, Co-teaching+, JoCoR: share of each batch dropped as large-loss once the
    schedule has ramped up. None = the true noise rate (`noise.rate`), as those papers assume."""
    num_gradual: int = 10
    """Co-teaching family: epochs over which the dropped share ramps up from 0 (T_k)."""
    exponent: float = 1.0
    """Co-teaching family: shape c of the ramp, forget_rate * min((T / T_k)^c, 1)."""
    init_epoch: int = 20
    """Co-teaching+: epochs of plain Co-teaching before the disagreement step starts."""
    co_lambda: float = 0.9
    """JoCoR: weight of the co-regularisation (symmetric KL) in the joint loss."""

    def __post_init__(self) -> None:
        _check(self.tau > 0, "method.tau", "must be positive")
        _check(0.0 <= self.ema_momentum < 1.0, "method.ema_momentum", "must be in [0, 1)")
        _check(0.0 <= self.cr_weight <= 1.0, "method.cr_weight", "must be in [0, 1]")
        _check(self.conf_penalty_weight >= 0, "method.conf_penalty_weight", "must be >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "method.label_smoothing", "must be in [0, 1)")
        _check(
            self.forget_rate is None or 0.0 <= self.forget_rate < 1.0,
            "method.forget_rate",
            "must be in [0, 1)",
        )
        _check(self.num_gradual >= 0, "method.num_gradual", "must be >= 0")
        _check(self.exponent > 0, "method.exponent", "must be positive")
        _check(self.init_epoch >= 0, "method.init_epoch", "must be >= 0")
        _check(0.0 <= self.co_lambda <= 1.0, "method.co_lambda", "must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    """RTM learning rate after warmup (paper: 0.01)."""
    warmup_lr: float = 0.01
    """Constant learning rate of the warmup epochs."""
    lr_decay: str = "cosine:50,5e-4,150"
    """Official plan string `cosine:s,end,t` (act-spec A.4). The default cosine runs over
    epochs 50..149 as the paper describes; the repo's `cosine:20,5e-4,100` ends at 129."""
    ntm_lr_mode: Literal["same_as_rtm", "separate_cosine", "separate_step"] = "same_as_rtm"
    """`same_as_rtm`: official CIFAR code (lr1 is overwritten); `separate_cosine`: the RTM plan
    rebuilt with `ntm_lr` (paper: NTM lr 0.08); `separate_step`: `ntm_lr` x0.1 at 60/120/150,
    no warmup lr (main_web.py)."""
    ntm_lr: float = 0.08
    """NTM learning rate in the separate modes (paper: 0.08)."""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be positive")
        _check(self.warmup_lr > 0, "optim.warmup_lr", "must be positive")
        _check(self.ntm_lr > 0, "optim.ntm_lr", "must be positive")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        # Parse now so a malformed plan string fails before any data is loaded.
        from asymco.engine.lr import parse_decay

        parse_decay(self.lr_decay)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 150
    warmup_epochs: int = 50
    """Epochs 0..warmup_epochs-1 are warmup (confidence penalty, everything counts as selected)."""
    seed: int = 123
    """Training seed (init, shuffling, augmentation); the official default is 123."""
    device: str = "auto"
    """`auto` = CUDA if present, else CPU; or any torch device string."""
    threads: int | None = None
    """CPU threads for torch; None = torch's default."""
    progress: bool = True
    """Show a progress bar with the running figures."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision of the training forward passes; `auto` = bf16 on CUDA, fp32 on CPU.
    fp32 is the faithful reference; fp16 adds a gradient scaler."""
    channels_last: bool = True
    """Channels-last memory format for nets and images. Faster on GPUs, and on the 2-core CPU
    too (benchmarks/cpu_settings.py: 1.17x per ACT step, ~2x in evaluation)."""
    compile: bool = False
    """Wrap the nets' training forwards in torch.compile (same algorithm, faster kernels)."""
    checkpoint_steps: int = 0
    """Also write checkpoint.pt every this many training steps inside an epoch, so a killed run
    loses at most that many steps (0: only at the end of each epoch). Resuming from either kind
    continues exactly."""
    sync_batchnorm: bool = True
    """With several GPU processes (torchrun), BatchNorm statistics over the whole global batch
    (SyncBatchNorm), as one process would compute them. CPU processes (gloo) cannot: there each
    process normalises over its own share of the batch."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", "must be positive")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        _check(self.threads is None or self.threads > 0, "train.threads", "must be positive")
        _check(self.checkpoint_steps >= 0, "train.checkpoint_steps", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    tensorboard: bool = False
    """Also write every metrics.jsonl figure as TensorBoard scalars under <run>/tensorboard
    (needs the `tensorboard` package: pip install "asymco[tensorboard]")."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    preset: str = "custom"
    description: str = ""
    paper_test_acc: float | None = None
    """The paper's reported number for this cell (RTM, last-10 mean), stored with the preset."""
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS = ("data", "noise", "model", "method", "optim", "train", "log")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a `RunConfig` from `to_dict` output (e.g. a run directory's config.yaml).

    Raises:
        UserError: naming the key, for anything `to_dict` could not have written: an unknown
            section or key, a section that is not a mapping, or a value of the wrong type.
    """
    if not isinstance(values, dict):
        raise UserError(f"a configuration must be a mapping of settings, got {_shown(values)}")
    top_fields = {f.name for f in fields(RunConfig)} - set(SECTIONS)
    for key in values:
        if key not in top_fields and key not in SECTIONS:
            raise UserError(
                f"unknown setting {key!r} in the configuration; its sections are "
                f"{', '.join(SECTIONS)}"
            )
    top = {
        k: _checked_value(v, _field_type(RunConfig, k), k)
        for k, v in values.items()
        if k in top_fields
    }
    sections = {}
    for name in SECTIONS:
        section_type = _field_type(RunConfig, name)
        given = values.get(name, {})
        if not isinstance(given, dict):
            raise UserError(
                f"configuration section {name} must be a mapping of settings, got {_shown(given)}"
            )
        hints = typing.get_type_hints(section_type)
        for key in given:
            if key not in hints:
                raise UserError(
                    f"unknown setting {f'{name}.{key}'!r} in the configuration; {name} has: "
                    f"{', '.join(sorted(hints))}"
                )
        sections[name] = section_type(
            **{k: _checked_value(v, hints[k], f"{name}.{k}") for k, v in given.items()}
        )
    return RunConfig(**top, **sections)


def _shown(value: Any) -> str:
    """`repr(value)`, cut to a readable length for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` if it is of type `annotation` (bool, int, float, str, Literal, X | None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked_value(value, inner, key)
    if origin is Literal:
        ok = isinstance(value, str) and value in args
        what = f"one of {', '.join(map(str, args))}"
    elif annotation is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif annotation is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif annotation is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and abs(value) < 1e308 and math.isfinite(value)  # a huge int is no float
        what = "a finite number"
    else:
        ok, what = isinstance(value, str), "text"
    if not ok:
        raise UserError(f"{key} must be {what}, got {_shown(value)}")
    return value


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _parse_scalar(text: str, annotation: Any, key: str) -> Any:
    """Parse `text` as a value of `annotation` (bool, int, float, str, Literal, X | None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_scalar(text, inner, key)
    if origin is Literal:
        if text not in args:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}, got {_shown(text)}")
        return text
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key} must be true or false, got {_shown(text)}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{key} must be a whole number, got {_shown(text)}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{key} must be a number, got {_shown(text)}") from None
        if not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {_shown(text)}")
        return value
    return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` strings, each type-checked against the field it sets."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {_shown(item)} must look like section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in {f.name for f in fields(RunConfig)} - set(SECTIONS):
            value = _parse_scalar(text, _field_type(RunConfig, parts[0]), key)
            cfg = dataclasses.replace(cfg, **{parts[0]: value})
            continue
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise UserError(
                f"unknown setting {_shown(key)}; settings look like section.key with section "
                f"one of {', '.join(SECTIONS)}"
            )
        section_name, name = parts
        section = getattr(cfg, section_name)
        hints = typing.get_type_hints(type(section))
        if name not in hints:
            raise UserError(
                f"unknown setting {_shown(key)}; {section_name} has: {', '.join(sorted(hints))}"
            )
        value = _parse_scalar(text.strip(), hints[name], key)
        cfg = dataclasses.replace(
            cfg, **{section_name: dataclasses.replace(section, **{name: value})}
        )
    return cfg
