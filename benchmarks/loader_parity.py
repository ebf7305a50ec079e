"""Does the fast `device` loader train as well as the reference `pil` loader?

Runs the same preset with `data.loader=device` and `data.loader=pil` for several training seeds
and prints the last-10 test accuracy of each run, the mean ± std per loader, and the difference
of the means in units of its standard error. The last line is one JSON object.

    python benchmarks/loader_parity.py --preset quickstart --seeds 1 2 3
    python benchmarks/loader_parity.py --preset cifar100n-sym20 --data-dir ../shared/data \\
        --set data.subset=4000 --set train.epochs=8 --set train.warmup_epochs=4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile

import numpy as np

from asymco import api


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quickstart")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    results: dict[str, list[float]] = {"device": [], "pil": []}
    for seed in args.seeds:
        for loader in results:
            overrides = [
                *args.set,
                f"data.loader={loader}",
                f"train.seed={seed}",
                "train.progress=false",
            ]
            cfg = api.resolve_config(args.preset, overrides, data_dir=args.data_dir)
            with tempfile.TemporaryDirectory() as out:
                summary = api.train(cfg, out_dir=out).summary
            results[loader].append(summary["test_acc_last10_mean"])
            print(
                f"seed {seed} {loader:>6}: last-10 {summary['test_acc_last10_mean']:.2f} "
                f"({summary['wall_seconds']:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    stats = {
        k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
        for k, v in results.items()
    }
    diff = stats["device"][0] - stats["pil"][0]
    stderr = math.sqrt(sum(s**2 / len(args.seeds) for _, s in stats.values())) or float("nan")
    for k, (mean, std) in stats.items():
        print(f"{k:>6}: {mean:.2f} ± {std:.2f} over seeds {args.seeds}", file=sys.stderr)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "overrides": args.set,
                "seeds": args.seeds,
                "device": results["device"],
                "pil": results["pil"],
                "difference": round(diff, 3),
                "difference_in_stderr": round(diff / stderr, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
