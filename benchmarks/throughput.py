"""Input-pipeline and training-step throughput, `device` loader vs `pil` loader, side by side.

One run measures, on the same CIFAR-100 images and the same model:
  (a) augmentation only: weak + strong views per image, images/s, for each loader;
  (b) a full ACT robust-phase epoch (paper CNN, batch 128: views, 3 forwards, 3 backwards,
      SGD step), images/s, for each loader;
  (c) the same ACT step on the device loader in fp32 and in bf16 autocast, side by side (on a
      CPU with native bf16, AVX-512 BF16 or AMX, bf16 is about twice as fast);
  (d) evaluation images/s of one net;
  (e) peak memory (CUDA: max allocated; CPU: peak resident set of this process).
The last line printed is one JSON object with the figures.

    python benchmarks/throughput.py --data-dir ../shared/data [--device cuda] [--images 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

from asymco.config import TrainConfig
from asymco.data.loader import ArrayLoader, array_batches, normalizer_for, to_device_images
from asymco.data.pil_loader import PilLoader
from asymco.data.sharding import BatchPlan
from asymco.data.sources import load_source
from asymco.engine.device import resolve_device
from asymco.engine.evaluate import accuracy
from asymco.engine.loop import run_epoch
from asymco.engine.precision import auto_precision, cpu_has_native_bf16, resolve_execution
from asymco.methods import create_method
from asymco.methods.act import ACTSettings
from asymco.models import create_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="training images per measurement (default: 50000 on GPU, 2048 on CPU)",
    )
    p.add_argument(
        "--step-images",
        type=int,
        default=None,
        help="images per training-step measurement (default: --images on GPU, 512 on CPU)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the pil path (the reference uses 4)",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch-size", type=int, default=128)
    return p.parse_args()


def make_loader(kind: str, images, labels, normalize, device, args):
    plan = BatchPlan(len(labels), args.batch_size, seed=0)
    common = dict(plan=plan, views="cifar", normalize=normalize, device=device)
    if kind == "pil":
        return PilLoader(images, labels, workers=args.workers, **common)
    return ArrayLoader(images, labels, **common)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_augmentation(loader, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _batch in loader.epoch(0, views=("weak", "strong")):
        pass
    sync(device)
    return loader.num_samples / (time.perf_counter() - start)


def time_training(loader, labels: np.ndarray, exe, device, args) -> float:
    """Images/s of one ACT robust-phase epoch through the engine's own `run_epoch`."""
    torch.manual_seed(0)
    method = (
        create_method(
            "act",
            ACTSettings(),
            num_classes=100,
            observed_labels=torch.from_numpy(labels),
            make_model=lambda: create_model("cnn7", num_classes=100),
        )
        .to(device)
        .to(memory_format=exe.memory_format())
    )
    if args.compile:
        method.fwd.update({k: torch.compile(v) for k, v in method.nets.items()})
    optimizer = torch.optim.SGD(
        method.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    scaler = exe.make_scaler()
    method.train()
    method.on_epoch_start(50, warmup=False)  # robust phase: 3 forwards, strong view, selection
    run_epoch(method, optimizer, scaler, loader, exe, 50)  # warm caches / compile
    method.on_epoch_start(51, warmup=False)
    sync(device)
    start = time.perf_counter()
    run_epoch(method, optimizer, scaler, loader, exe, 51)
    sync(device)
    return loader.num_samples / (time.perf_counter() - start)


def main() -> int:
    args = parse_args()
    device = resolve_device(args.device)
    exe = resolve_execution(TrainConfig(precision=args.precision), device)
    cuda = device.type == "cuda"
    n_aug = args.images or (50_000 if cuda else 2048)
    n_step = args.step_images or (n_aug if cuda else 512)
    source = load_source("cifar100", root=args.data_dir, download=False)
    images, labels = source.x_train[:n_aug], source.y_train[:n_aug]
    normalize = normalizer_for(images, "imagenet", device, exe.memory_format())
    print(
        f"device {device}, precision {exe.precision}, channels_last {exe.channels_last}, "
        f"compile {args.compile}, pil workers {args.workers}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        file=sys.stderr,
    )
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    result: dict[str, object] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    for kind in ("device", "pil"):
        loader = make_loader(kind, images, labels, normalize, device, args)
        result[f"aug_{kind}_ips"] = round(time_augmentation(loader, device), 1)
        step_loader = make_loader(kind, images[:n_step], labels[:n_step], normalize, device, args)
        step_ips = time_training(step_loader, labels[:n_step], exe, device, args)
        result[f"step_{kind}_ips"] = round(step_ips, 1)
        print(
            f"{kind:>6}: augmentation {result[f'aug_{kind}_ips']} img/s, ACT robust step "
            f"{result[f'step_{kind}_ips']} img/s",
            file=sys.stderr,
        )
    result["aug_speedup"] = round(result["aug_device_ips"] / result["aug_pil_ips"], 2)
    result["step_speedup"] = round(result["step_device_ips"] / result["step_pil_ips"], 2)
    step_loader = make_loader("device", images[:n_step], labels[:n_step], normalize, device, args)
    for precision in ("fp32", "bf16"):
        exe_p = resolve_execution(TrainConfig(precision=precision), device)
        ips = time_training(step_loader, labels[:n_step], exe_p, device, args)
        result[f"step_{precision}_ips"] = round(ips, 1)
    result["bf16_speedup"] = round(result["step_bf16_ips"] / result["step_fp32_ips"], 2)
    result["native_bf16"] = cuda or cpu_has_native_bf16()
    result["auto_precision"] = auto_precision(device)
    print(
        f"ACT robust step, device loader: fp32 {result['step_fp32_ips']} img/s, bf16 "
        f"{result['step_bf16_ips']} img/s ({result['bf16_speedup']}x); native bf16 "
        f"{result['native_bf16']}, so train.precision=auto is {result['auto_precision']}",
        file=sys.stderr,
    )

    net = create_model("cnn7", num_classes=100).to(device).to(memory_format=exe.memory_format())
    test_images = to_device_images(source.x_test[: (10_000 if cuda else 2000)], device)
    test_labels = torch.from_numpy(source.y_test[: len(test_images)]).to(device)
    batch = 1024 if cuda else 128
    batches = array_batches(test_images, test_labels, batch_size=batch, normalize=normalize)
    with exe.autocast():
        accuracy(net, batches)  # warm
        sync(device)
        start = time.perf_counter()
        accuracy(net, batches)
        sync(device)
    result["eval_ips"] = round(len(test_labels) / (time.perf_counter() - start), 1)
    if cuda:
        result["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        result["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result.update(
        precision=exe.precision,
        channels_last=exe.channels_last,
        compile=args.compile,
        aug_images=n_aug,
        step_images=n_step,
        pil_workers=args.workers,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
