"""Typed, frozen run configuration.

Every knob of a run lives here, with its meaning and its default, except each method's own
knobs, which live in its `Settings` class beside the method (a subclass of `MethodSettings`,
registered under the method's name in `METHOD_SETTINGS`). Defaults are the faithful ones from
`act-spec.md` (the official CIFAR script `main.py` where paper and code agree, the paper where the
spec says so); each deviation the spec allows is a named setting. Values are checked in
`__post_init__`, and a bad one raises `UserError` naming the dotted key (e.g. ``noise.rate``).
Reading settings from `--set` strings and config.yaml mappings is `config_io.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asymco.durations import parse_duration
from asymco.errors import UserError
from asymco.lr_plan import MAX_EPOCH, parse_decay
from asymco.registry import Registry

NoiseKind = Literal["none", "symmetric", "asymmetric", "human"]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key} {message}")


SEED_LIMIT = 2**32
"""Seeds go to numpy's RandomState and scikit-learn, which take only [0, 2**32)."""


def check_seed(value: int, key: str) -> None:
    """Refuse a seed numpy and scikit-learn cannot take, naming the setting and its range."""
    _check(
        0 <= value < SEED_LIMIT,
        key,
        f"must be a whole number from 0 to {SEED_LIMIT - 1} (2**32 - 1), got {value}",
    )


MAX_WORKERS = 256
"""The most loader processes (`data.workers`) and CPU threads (`train.threads`) a run may ask
for: far above any machine's use, and low enough that a typo cannot fork thousands of them."""
MAX_SIDE = 8192
"""The largest image side (`data.image_size`, `data.resize`) a run may ask for; a bigger crop
would fail allocating its first batch."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Literal[
        "cifar10", "cifar100", "digits", "folder", "csv", "npz", "hf", "parquet", "web", "food101n"
    ] = "cifar100"
    """Image source. CIFAR comes from an .npz, a torchvision folder or torchvision's download;
    `folder` (root/<class>/<image>), `csv` (path,label), `npz` (x_train, y_train), `hf` (a
    Hugging Face `datasets.save_to_disk` folder) and `parquet` (a .parquet file or a folder of
    them) are your own data; `web` (root/train, root/val) and `food101n` are the paper's
    real-noise sets."""
    root: str | None = None
    """Where the data is: an .npz file, a folder holding `<dataset>.npz` or torchvision's CIFAR
    folder, or the download cache (None = `$ASYMCO_DATA` or `~/.cache/asymco`); the folder, CSV
    file, .npz file, hf folder or Parquet file or folder of your own data; the web set's or
    Food-101N's root."""
    test_root: str | None = None
    """Test split of your own data (same kind as `root`), or Food-101's root for food101n
    (None: `<root>/food-101`). Without one, own data is split with `holdout_fraction`."""
    image_column: str | None = None
    """hf/parquet: the column of images (encoded bytes, Hugging Face Image structs or paths
    relative to the Parquet file); None = the first of image, img, ... that the table has."""
    label_column: str | None = None
    """hf/parquet: the column of labels (integers, with names from a Hugging Face ClassLabel,
    or strings); None = the first of label, labels, ... that the table has."""
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
    loader: Literal["auto", "device", "pil"] = "auto"
    """How in-memory images (CIFAR, digits, npz) become batches. `device`: the images live on
    the training device, views are built there in batches (fast); `pil`: DataLoader workers
    with per-image torchvision/PIL transforms (the reference pipeline's structure, kept for
    comparison). Image files always stream through DataLoader workers and refuse both;
    `auto` = `device` for arrays, the file loader for image files."""
    workers: int | None = None
    """DataLoader worker processes of the `pil` loader; None = min(4, CPU cores) (the official
    code uses 4)."""
    views: Literal["cifar", "digits"] = "cifar"
    """Weak/strong view recipe: `cifar` = crop(32, pad 4) + flip, strong adds the AutoAugment
    CIFAR-10 policy; `digits` = small shifts, strong adds a larger shift and a cutout."""
    normalize: Literal["imagenet", "dataset"] = "imagenet"
    """The official CIFAR code normalises with ImageNet statistics (act-spec A.7.8); a timm model
    normalises with its own pretrained mean and std instead. `dataset`: the training images'
    own statistics (arrays only; image files always use the model's)."""

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
        _check(
            self.workers is None or 0 <= self.workers <= MAX_WORKERS,
            "data.workers",
            f"must be from 0 to {MAX_WORKERS}",
        )
        _check(0 < self.digits_test_fraction < 1, "data.digits_test_fraction", "must be in (0, 1)")
        _check(0 < self.holdout_fraction < 1, "data.holdout_fraction", "must be in (0, 1)")
        _check(0 < self.image_size <= MAX_SIDE, "data.image_size", f"must be from 1 to {MAX_SIDE}")
        _check(
            self.resize is None or 0 < self.resize <= MAX_SIDE,
            "data.resize",
            f"must be from 1 to {MAX_SIDE}",
        )
        check_seed(self.subset_seed, "data.subset_seed")


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
        check_seed(self.seed, "noise.seed")


MAX_OUTPUTS = 100_000
"""The most logits a net may have: data/layouts.py's class limit (a head this wide is already
large; a wider one would fail allocating memory instead)."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = "cnn7"
    """`cnn7`: the paper's CIFAR CNN (6 conv + MLP head, act-spec B.1); `digits_cnn` for digits;
    `resnet50`: torchvision's ResNet-50; `timm:<name>`: any timm model, e.g. `timm:resnet18` or
    `timm:convnext_tiny.fb_in1k` (pip install "asymco[timm]"), whose pretrained config gives
    your own data's default image size and the normalisation."""
    mlp_head: bool = True
    """cnn7 only: ACT's 2-layer MLP head (faithful); false = Jo-SRC's single Linear(256, K)."""
    pretrained: bool = True
    """resnet50 and timm models: start from pretrained weights, downloaded (resnet50:
    torchvision's ImageNet IMAGENET1K_V1; timm: the model's own, from the Hugging Face Hub)."""
    weights: str | None = None
    """resnet50 and timm models: a local file with those weights, a state_dict or .safetensors
    (for machines without a network); its classifier head is left out."""
    num_outputs: int | None = None
    """Logits of the nets; None = the number of classes. The official Food-101N code uses 200
    for its 101 classes (act-spec C.3): set 200 to reproduce that quirk."""

    def __post_init__(self) -> None:
        _check(
            self.num_outputs is None or 1 < self.num_outputs <= MAX_OUTPUTS,
            "model.num_outputs",
            f"must be > 1 and at most {MAX_OUTPUTS}",
        )
        _check(
            self.name != "timm:" and self.name.strip() == self.name,
            "model.name",
            f"{self.name!r} names no model; a timm model is timm:<name>, e.g. timm:resnet18",
        )


@dataclass(frozen=True, kw_only=True)
class MethodSettings:
    """The settings every method has; each method's `Settings` subclass adds its own knobs and
    is registered in `METHOD_SETTINGS` under the method's name (`--set method.<key>=...`)."""

    name: str
    """Which method trains: a name from `asymco.list_methods()` (default: act)."""
    label_smoothing: float = 0.0
    """Applied to every cross-entropy term (0 on CIFAR, 0.35 in the web/Food scripts)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.label_smoothing < 1.0, "method.label_smoothing", "must be in [0, 1)")

    def resolved(self, noise: NoiseConfig) -> MethodSettings:
        """These settings with anything left to the run filled in (a new run calls this once
        and writes the result to config.yaml); e.g. a forget rate that defaults to the noise
        rate. Most methods have nothing to fill."""
        return self

    def for_run(self, cfg: RunConfig) -> MethodSettings:
        """These settings with what depends on how the run is done (its data, its budget)
        decided; the run builds its method from them. Most methods have nothing to decide."""
        return self


METHOD_SETTINGS = Registry("method")
"""Method name -> its `MethodSettings` subclass; `methods/__init__.py` fills it."""
DEFAULT_METHOD = "act"


def default_method_settings() -> MethodSettings:
    return METHOD_SETTINGS.create(DEFAULT_METHOD)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    """Learning rate after warmup (ACT: the RTM's, paper 0.01; a method may give a net its own
    plan, as ACT's `method.ntm_lr_mode` does)."""
    warmup_lr: float = 0.01
    """Constant learning rate of the warmup epochs."""
    lr_decay: str = "cosine:50,5e-4,150"
    """Official plan string `cosine:s,end,t` (act-spec A.4). The default cosine runs over
    epochs 50..149 as the paper describes; the repo's `cosine:20,5e-4,100` ends at 129."""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be positive")
        _check(self.warmup_lr > 0, "optim.warmup_lr", "must be positive")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        parse_decay(self.lr_decay)  # a malformed plan fails before any data is loaded


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
    """Autocast precision of the training forward passes; `auto` = bf16 on CUDA and on CPUs
    with native bf16 (AVX-512 BF16, AMX, Arm BF16), fp32 on other CPUs. fp32 is the faithful
    reference (evaluation is fp32 either way, `eval_precision`); fp16 adds a gradient scaler."""
    channels_last: bool = True
    """Channels-last memory format for nets and images. Faster on GPUs, and on the 2-core CPU
    too (benchmarks/cpu_settings.py: 1.17x per ACT step, ~2x in evaluation)."""
    compile: bool = False
    """Wrap the nets' training forwards in torch.compile (same algorithm, faster kernels)."""
    checkpoint_steps: int = 0
    """Also write checkpoint.pt every this many training steps inside an epoch, so a killed run
    loses at most that many steps (0: only at the end of each epoch). Resuming from either kind
    continues exactly."""
    eval_precision: Literal["fp32", "train"] = "fp32"
    """Precision of evaluation (test accuracy, label_issues.csv): fp32 everywhere, so reported
    numbers do not depend on `precision`; `train` evaluates under the training autocast."""
    budget: str | None = None
    """Wall-time budget of the whole run, e.g. `15m`, `2h`, `1h30m`: before training, the
    steps of each phase are timed (on throwaway copies of the nets), then the number of epochs
    is chosen so the run ends within it, keeping the warmup share and the LR plan's shape.
    config.yaml records the epochs chosen (a resume keeps them). None = `epochs` as given."""
    budget_fill: bool = True
    """With `budget`: true fills it (as many epochs as fit, more or fewer than `epochs`);
    false stops at `epochs` when they take less (the own-data default on a CPU)."""
    sync_batchnorm: bool = True
    """With several GPU processes (torchrun), BatchNorm statistics over the whole global batch
    (SyncBatchNorm), as one process would compute them. CPU processes (gloo) cannot: there each
    process normalises over its own share of the batch."""

    def __post_init__(self) -> None:
        _check(
            0 < self.epochs <= MAX_EPOCH,
            "train.epochs",
            f"must be positive and at most {MAX_EPOCH}",
        )
        _check(
            0 <= self.warmup_epochs <= MAX_EPOCH,
            "train.warmup_epochs",
            f"must be from 0 to {MAX_EPOCH}",
        )
        _check(
            self.threads is None or 0 < self.threads <= MAX_WORKERS,
            "train.threads",
            f"must be from 1 to {MAX_WORKERS}",
        )
        _check(self.checkpoint_steps >= 0, "train.checkpoint_steps", "must be >= 0")
        check_seed(self.seed, "train.seed")
        if self.budget is not None:
            parse_duration(self.budget)


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
    """The paper's reported number for this cell (ACT's RTM, last-10 mean), stored with the
    preset; the baselines' numbers live with each method (`Method.paper_numbers`)."""
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodSettings = field(default_factory=default_method_settings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS = ("data", "noise", "model", "method", "optim", "train", "log")
