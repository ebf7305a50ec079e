"""Which execution settings make an ACT robust epoch fastest on this machine's CPU?

Times the same robust-phase epoch (device loader, paper CNN, batch 128) under each combination
of torch threads, channels_last and torch.compile, side by side in one run, and prints the
images/s of each and the ratio to the fp32 eager default. Precision stays fp32: the CPU default
must be the faithful numerics. The last line is one JSON object.

    python benchmarks/cpu_settings.py --data-dir ../shared/data [--images 384]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
from throughput import time_training  # benchmarks/ is the script's directory

from asymco.config import TrainConfig
from asymco.data.loader import ArrayLoader, normalizer_for
from asymco.data.sharding import BatchPlan
from asymco.data.sources import load_source
from asymco.engine.precision import resolve_execution


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--images", type=int, default=384)
    args = p.parse_args()
    device = torch.device("cpu")
    source = load_source("cifar100", root=args.data_dir, download=False)
    images, labels = source.x_train[: args.images], source.y_train[: args.images]
    cores = os.cpu_count() or 1
    rows = []
    for threads, channels_last, compile_ in itertools.product(
        sorted({1, cores}), (False, True), (False, True)
    ):
        torch.set_num_threads(threads)
        exe = resolve_execution(TrainConfig(channels_last=channels_last), device)
        normalize = normalizer_for(images, "imagenet", device, exe.memory_format())
        loader = ArrayLoader(
            images,
            labels,
            plan=BatchPlan(len(labels), 128, seed=0),
            views="cifar",
            normalize=normalize,
            device=device,
        )
        ips = time_training(loader, labels, exe, device, argparse.Namespace(compile=compile_))
        rows.append(
            {
                "threads": threads,
                "channels_last": channels_last,
                "compile": compile_,
                "images_per_second": round(ips, 1),
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    base = next(
        r for r in rows if r["threads"] == cores and not r["channels_last"] and not r["compile"]
    )["images_per_second"]
    for row in rows:
        row["ratio_to_default"] = round(row["images_per_second"] / base, 2)
    best = max(rows, key=lambda r: r["images_per_second"])
    print(json.dumps({"cores": cores, "rows": rows, "best": best}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
