"""Packed runs (`asymco sweep --pack K`): ACT robust-step throughput per run and in total for
packs of K runs, side by side in one command, with peak memory.

For each K the same ACT robust step (paper CNN, CIFAR-100 images, batch 128, weak + strong
views, three forwards, one backward, SGD) runs for K members with different seeds: K = 1 as a
plain run (no vmap), K >= 2 packed (`engine/pack.py`). Each K runs in its own process, so its
peak memory is its own (CUDA: max allocated; CPU: peak resident set).

    python benchmarks/pack.py --data-dir ../shared/data [--device cuda] [--packs 1 2 4 8 16]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from asymco import api
from asymco.data.pipeline import workers_for
from asymco.data.prepare import prepare_data
from asymco.engine.build import build_method, build_optimizer
from asymco.engine.device import resolve_device
from asymco.engine.loop import ALONE
from asymco.engine.pack import PackedModel
from asymco.engine.precision import resolve_execution
from asymco.engine.run import run_pipeline
from asymco.engine.seeding import seed_everything


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar100.npz")
    p.add_argument("--device", default="auto")
    p.add_argument("--packs", type=int, nargs="+", help="pack sizes (default: 1 2 4 8, GPU +16 32)")
    p.add_argument("--steps", type=int, help="timed steps per pack (default: 4 on CPU, 30 on GPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--only", type=int, help=argparse.SUPPRESS)  # one K, in a child process
    return p.parse_args()


def members(
    k: int, data_dir: str, steps: int, overrides: list[str], batch_size: int = 128
) -> list:
    """K ACT runs on a CIFAR-100 subset just large enough for the timed steps."""
    out = []
    for seed in range(1, k + 1):
        cfg = api._fixed(api.resolve_config("cifar100n-sym20", [
            f"train.seed={seed}", f"data.subset={batch_size * (steps + 2)}",
            "data.test_subset=256", f"data.batch_size={batch_size}", *overrides,
        ], data_dir=data_dir))
        seed_everything(seed)
        data = prepare_data(cfg.data, cfg.noise, workers=workers_for(cfg.data))
        exe = resolve_execution(cfg.train, resolve_device(cfg.train.device))
        method = build_method(cfg, data, exe, ALONE)
        optimizer, _ = build_optimizer(method, cfg)
        method.train()
        method.on_epoch_start(1, warmup=False)  # a robust epoch: two views, selection
        pipe = run_pipeline(cfg, data, exe, ALONE)
        out.append((method, optimizer, pipe.loader, exe, pipe.test))
    return out


def measure(
    k: int, data_dir: str, steps: int, overrides: list[str], batch_size: int = 128
) -> dict:
    """Images/s of `steps` ACT robust steps of K runs (plain for K = 1, packed else)."""
    runs = members(k, data_dir, steps, overrides, batch_size)
    exe = runs[0][3]
    device = exe.device
    streams = [iter(r[2].epoch(1, views=r[0].train_views())) for r in runs]
    if k == 1:
        method, optimizer = runs[0][0], runs[0][1]

        def step(batches: list) -> None:
            with exe.autocast():
                loss = method.training_step(batches[0])["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        packed = PackedModel([r[0] for r in runs], [r[1] for r in runs])

        def step(batches: list) -> None:
            packed.step(batches, exe)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 2):
        if i == 2:  # two warm steps (allocator, cuDNN autotuning)
            sync(device)
            began = time.perf_counter()
        step([next(s) for s in streams])
    sync(device)
    seconds = time.perf_counter() - began
    total = k * batch_size * steps / seconds
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "k": k,
        "total_ips": round(total, 1),
        "per_run_ips": round(total / k, 1),
        "peak_mem_mb": round(peak, 1),
        "precision": exe.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    args = parse_args()
    cuda = resolve_device(args.device).type == "cuda"
    steps = args.steps or (30 if cuda else 4)
    if args.only is not None:
        overrides = [f"train.precision={args.precision}", f"train.device={args.device}"]
        print(json.dumps(measure(args.only, args.data_dir, steps, overrides)))
        return 0
    packs = args.packs or ([1, 2, 4, 8, 16, 32] if cuda else [1, 2, 4, 8])
    rows = []
    for k in packs:
        child = [sys.executable, __file__, "--only", str(k), "--steps", str(steps),
                 "--data-dir", args.data_dir, "--device", args.device,
                 "--precision", args.precision]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"K={k}: failed\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["total_ips"] if rows and rows[0]["k"] == 1 else None
    print(f"{'K':>3} {'total img/s':>12} {'per run':>9} {'vs K=1':>7} {'peak MB':>9}",
          file=sys.stderr)
    for r in rows:
        r["speedup_vs_1"] = round(r["total_ips"] / base, 2) if base else None
        print(f"{r['k']:>3} {r['total_ips']:>12} {r['per_run_ips']:>9} "
              f"{r['speedup_vs_1'] or '-':>7} {r['peak_mem_mb']:>9}", file=sys.stderr)
    print(json.dumps({"steps": steps, "rows": rows}))
    return 0 if len(rows) == len(packs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
