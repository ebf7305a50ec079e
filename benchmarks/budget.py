"""How well `--budget` and the printed ETA hold on this machine, measured.

Each case runs `asymco train ... --budget B` in a subprocess and reads its output as it comes:
the whole command's wall time (process start to exit, imports and data loading included) is
compared with the budget, and the ETA of the plan line with the time from that line to the end.
The issue's targets: the run within +-20 % of the budget, the ETA within +-25 %.

    python benchmarks/budget.py --data-dir ../shared/data              # both cases, 2 minutes each
    python benchmarks/budget.py --cases quickstart --budget 1m
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asymco.durations import format_duration, parse_duration

CASES = {
    "quickstart": ["--preset", "quickstart"],
    "cifar100-3000": ["--preset", "cifar100n-sym20", "--set", "data.subset=3000"],
}
ETA = re.compile(r"^plan: .* ETA (\S+) ")


def run_case(args: list[str], budget: str, out: Path) -> dict:
    """Wall time of the whole command, and the ETA it printed against the time after it."""
    command = [sys.executable, "-m", "asymco", "train", *args, "--budget", budget,
               "--out", str(out), "--set", "train.progress=false"]
    began = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    eta = planned_at = None
    for line in proc.stderr:
        sys.stderr.write("  | " + line)
        match = ETA.match(line)
        if match:
            eta, planned_at = parse_duration(match.group(1)), time.perf_counter()
    if proc.wait() != 0 or eta is None:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode})")
    ended = time.perf_counter()
    return {"wall": ended - began, "eta": eta, "after_plan": ended - planned_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--budget", default="2m")
    parser.add_argument("--data-dir", help="where cifar100.npz is (for the CIFAR case)")
    args = parser.parse_args()
    budget = parse_duration(args.budget)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            extra = ["--data-dir", args.data_dir] if args.data_dir and name != "quickstart" else []
            print(f"{name}: --budget {args.budget}", flush=True)
            got = run_case([*CASES[name], *extra], args.budget, Path(tmp) / name)
            rows.append((name, got))
    print("\n| case | budget | wall time | wall / budget | ETA | actual after plan | "
          "actual / ETA |\n|---|---|---|---|---|---|---|")
    for name, got in rows:
        print(f"| {name} | {format_duration(budget)} | {format_duration(got['wall'])} | "
              f"{got['wall'] / budget:.2f} | {format_duration(got['eta'])} | "
              f"{format_duration(got['after_plan'])} | {got['after_plan'] / got['eta']:.2f} |")


if __name__ == "__main__":
    main()
