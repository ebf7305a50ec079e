"""Seconds per ACT epoch of `cifar100n-sym20` through the real engine, and the projected time of
the 150-epoch preset (50 warmup + 100 robust epochs, each followed by evaluating both nets).

It trains 2 warmup and 2 robust epochs into a temporary run directory and takes the second of
each (the first pays for cuDNN autotuning and torch.compile). Meant for a GPU; on a CPU pass
`--subset` to time a slice and scale. The last line printed is one JSON object.

    python benchmarks/epoch_time.py --data-dir ../shared/data [--set train.compile=true ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from asymco import api


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--preset", default="cifar100n-sym20")
    p.add_argument("--subset", type=int, default=None, help="train on this many images only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    overrides = ["train.epochs=4", "train.warmup_epochs=2", "train.progress=false", *args.set]
    if args.subset:
        overrides.append(f"data.subset={args.subset}")
    cfg = api.resolve_config(args.preset, overrides, data_dir=args.data_dir)
    with tempfile.TemporaryDirectory() as out:
        result = api.train(cfg, out_dir=out)
    warm, robust = result.history[1], result.history[3]
    full = api.resolve_config(args.preset)
    n_warm, n_robust = full.train.warmup_epochs, full.train.epochs - full.train.warmup_epochs
    scale = 50_000 / result.summary["num_train"]  # a subset's time, scaled to the full set
    train_seconds = scale * (n_warm * warm["epoch_seconds"] + n_robust * robust["epoch_seconds"])
    test_scale = (10_000 if full.noise.openset_ratio == 0 else 8_000) / result.summary["num_test"]
    eval_seconds = full.train.epochs * robust["eval_seconds"] * test_scale
    summary = {
        "device": result.summary["device"],
        "execution": result.summary["execution"],
        "train_images": result.summary["num_train"],
        "warmup_epoch_seconds": warm["epoch_seconds"],
        "robust_epoch_seconds": robust["epoch_seconds"],
        "eval_seconds": robust["eval_seconds"],
        "robust_images_per_second": robust["images_per_second"],
        "projected_preset_minutes": round((train_seconds + eval_seconds) / 60, 2),
    }
    print(
        f"warmup epoch {warm['epoch_seconds']:.2f}s, robust epoch {robust['epoch_seconds']:.2f}s"
        f", evaluation {robust['eval_seconds']:.2f}s",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
