"""One command for a short GPU window: check every GPU path, time it, then (with --table1)
train ACT's six Table-1 cells x 3 seeds in packs and write the report.

1. Smoke checks, a few ACT steps each, reported as passed/failed with the error's first line:
   fp32, bf16 autocast, fp16 with the gradient scaler, contiguous memory (channels_last off),
   torch.compile, evaluation, a packed step, and 2-process NCCL with SyncBatchNorm (torchrun)
   when there are 2+ GPUs.
2. Timing: seconds per robust epoch (50,000 images at batch 128) for one run and for packs,
   and the projected wall time of Table 1 (18 runs of 150 epochs) in packs, printed before
   anything long starts.
3. --table1: `asymco sweep` of the six cells x seeds with --pack, stopped by SIGTERM before
   --limit seconds (each run checkpoints first), so it fits a command time limit; running the
   same command again continues where it stopped (finished phases are read from
   OUT/gpu_check.json). At the end, `asymco report` with the paper's numbers beside ours.

    python benchmarks/gpu_check.py --data-dir ../shared/data --out gpu [--table1] [--limit 540]
    python benchmarks/gpu_check.py --data-dir ../shared/data --out /tmp/g --dry   # CPU, tiny

--dry runs the same phases on the CPU at tiny sizes (the CUDA-only checks are reported as
skipped), so a typo never costs GPU time; the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pack import measure, members  # benchmarks/ is a folder of scripts, not a package

TABLE1 = [f"cifar{n}n-{noise}" for n in (100, 80) for noise in ("sym20", "sym80", "asym40")]
EPOCH_IMAGES, EPOCHS, RUNS = 50_000, 150, 18


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar100.npz")
    p.add_argument("--out", required=True, help="where results, runs and the report go")
    p.add_argument("--table1", action="store_true", help="also train Table 1 (ACT) in packs")
    p.add_argument("--pack", type=int, default=9, help="runs per pack for Table 1 (default 9)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--limit", type=float, default=540, help="seconds before the sweep is stopped")
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: check the script itself")
    p.add_argument("--again", action="store_true", help="redo finished checks and timings")
    return p.parse_args()


class Results:
    """OUT/gpu_check.json, rewritten after every finished phase (a rerun skips those)."""

    def __init__(self, path: Path, again: bool) -> None:
        self.path = path
        self.data = {} if again or not path.is_file() else json.loads(path.read_text())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def smoke_checks(args: argparse.Namespace, device: str) -> dict[str, str]:
    cuda = device == "cuda"
    steps, batch = (3, 128) if cuda else (1, 16)
    checks = {
        "fp32": ["train.precision=fp32"],
        "bf16": ["train.precision=bf16"],
        "fp16+scaler": ["train.precision=fp16"] if cuda else None,
        "contiguous": ["train.precision=bf16" if cuda else "train.precision=fp32",
                       "train.channels_last=false"],
        "compile": ["train.compile=true"] if cuda else None,
    }
    results = {}
    for name, overrides in checks.items():
        if overrides is None:
            results[name] = "skipped: needs CUDA"
            continue
        results[name] = _try(lambda o=overrides: measure(1, args.data_dir, steps,
                                                         [f"train.device={device}", *o], batch))
    results["evaluation"] = _try(lambda: _evaluate(args.data_dir, device))
    results["packed step"] = _try(
        lambda: measure(2, args.data_dir, steps, [f"train.device={device}"], batch)
    )
    if cuda and torch.cuda.device_count() >= 2:
        results["nccl+syncbn (2 GPUs)"] = _try(lambda: _two_processes(args))
    else:
        results["nccl+syncbn (2 GPUs)"] = "skipped: needs 2 GPUs"
    return results


def _try(fn) -> str:
    try:
        fn()
        return "passed"
    except Exception as err:  # a check that fails is a finding, not the end of the script
        traceback.print_exc()
        return f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _evaluate(data_dir: str, device: str) -> None:
    from asymco.engine.evaluate import accuracy

    method, _, _, exe, test = members(1, data_dir, 1, [f"train.device={device}"], 16)[0]
    with exe.evaluation():
        acc = accuracy(method.eval_nets()[method.reported_net], test)
    if not 0 <= acc <= 100:
        raise RuntimeError(f"accuracy {acc} is not a percentage")


def _two_processes(args: argparse.Namespace) -> None:
    out = Path(args.out) / "nccl-run"
    cmd = ["torchrun", "--nproc-per-node", "2", "-m", "asymco", "train", "--preset",
           "cifar100n-sym20", "--data-dir", args.data_dir, "--out", str(out), "--set",
           "data.subset=2048", "--set", "data.test_subset=512", "--set", "train.epochs=2",
           "--set", "train.warmup_epochs=1", "--set", "train.progress=false"]
    if (out / "summary.json").is_file():
        return
    subprocess.run(cmd + (["--resume"] if (out / "checkpoint.pt").is_file() else []), check=True)


def timings(args: argparse.Namespace, device: str) -> dict:
    """Seconds per robust epoch for one run and for packs, and Table 1's projection."""
    cuda = device == "cuda"
    steps, batch = (20, 128) if cuda else (1, 16)
    sizes = [1, 2, 3, 6, 9] if cuda else [1, 2]
    rows, projected = {}, {}
    for k in sizes:
        row = measure(k, args.data_dir, steps, [f"train.device={device}"], batch)
        pack_epoch = k * EPOCH_IMAGES / row["total_ips"]  # one epoch of all K runs
        rows[k] = {"pack_epoch_seconds": round(pack_epoch, 2),
                   "seconds_per_run_epoch": round(pack_epoch / k, 2),
                   "peak_mem_mb": row["peak_mem_mb"], "precision": row["precision"]}
        # Table 1 packs as two groups of 9 (CIFAR-100N and CIFAR-80N differ in their data).
        projected[k] = 2 * -(-(RUNS // 2) // k) * pack_epoch * EPOCHS
        print(f"K={k}: {rows[k]}", file=sys.stderr)
    best = min(projected, key=projected.get)
    return {"per_k": rows, "best_pack": best, "table1_projected_seconds": round(projected[best]),
            "table1_sequential_seconds": round(projected[1])}


def table1(args: argparse.Namespace, device: str) -> int:
    """The sweep, stopped by SIGTERM before --limit (checkpoints first), then the report."""
    root = Path(args.out) / "table1"
    presets = TABLE1 if not args.dry else TABLE1[:2]
    tiny = [] if not args.dry else [
        "data.subset=64", "data.test_subset=64", "train.epochs=2", "train.warmup_epochs=1",
        "data.batch_size=16"]
    cmd = [sys.executable, "-m", "asymco", "sweep", "--presets", *presets, "--methods", "act",
           "--seeds", *map(str, args.seeds), "--out", str(root), "--data-dir", args.data_dir,
           "--pack", str(args.pack), "--set", "train.progress=false",
           "--set", f"train.device={device}"]
    for setting in tiny:
        cmd += ["--set", setting]
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait(timeout=args.limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # every run in progress checkpoints, then it exits
        code = proc.wait()
        print("gpu_check: time limit reached; run the same command to continue", file=sys.stderr)
        return 3
    if code:
        return code
    report = [sys.executable, "-m", "asymco", "report", str(root)]
    return subprocess.run(report, check=False).returncode


def main() -> int:
    args = parse_args()
    device = "cpu" if args.dry else "cuda"
    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry to check the script on a CPU",
              file=sys.stderr)
        return 2
    results = Results(Path(args.out) / "gpu_check.json", args.again)
    if "checks" not in results.data:
        results.data["checks"] = smoke_checks(args, device)
        results.save()
    for name, verdict in results.data["checks"].items():
        print(f"{name:>22}: {verdict}", file=sys.stderr)
    if "timing" not in results.data:
        results.data["timing"] = timings(args, device)
        results.save()
    t = results.data["timing"]
    print(f"Table 1 ({RUNS} runs x {EPOCHS} epochs): projected "
          f"{t['table1_projected_seconds'] / 60:.1f} min in packs of {t['best_pack']}, "
          f"{t['table1_sequential_seconds'] / 60:.1f} min one run at a time", file=sys.stderr)
    failed = [n for n, v in results.data["checks"].items() if v.startswith("FAILED")]
    code = table1(args, device) if args.table1 else 0
    print(json.dumps({**results.data, "failed": failed}))
    return code or (1 if failed else 0)


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"gpu_check: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    raise SystemExit(status)
