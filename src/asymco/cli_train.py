"""`asymco train`: one run, started, restarted or continued (`--resume`) with one command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from asymco.errors import UserError

if TYPE_CHECKING:
    from asymco.config import RunConfig


def _check_out(out: str) -> None:
    """Refuse an --out path the file system cannot even look up (e.g. a name too long)."""
    if not out.strip():
        raise UserError("--out is empty; give the run directory's path or leave --out out")
    try:
        os.stat(out)
    except (FileNotFoundError, NotADirectoryError):
        return  # a new directory, or one under a file: the run directory reports the latter
    except OSError as err:
        raise UserError(f"cannot use --out {out} ({err.strerror})") from None


def _train(args: argparse.Namespace) -> int:
    from asymco import api

    if args.out is not None:
        _check_out(args.out)
    if args.budget is not None:  # a budget asked for on the command line is filled
        args.set = [*args.set, f"train.budget={args.budget}", "train.budget_fill=true"]
    if args.resume and _finished(args.out):
        return 0
    if args.resume and not (args.preset or args.data):
        cfg = _saved_config(args)
    elif args.data:
        cfg = api.resolve_own_data(args.data, args.test, args.set, preset=args.preset)
    else:
        if not args.preset:
            raise UserError("pass --preset NAME (see `asymco presets`) or --data folder:PATH")
        if args.test:
            raise UserError("--test goes with --data")
        cfg = api.resolve_config(args.preset, args.set, data_dir=args.data_dir)
    if args.device is not None:  # even "": an empty device name is refused, not ignored
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, device=args.device))
    result = api.train(cfg, out_dir=args.out, resume=args.resume, started=args.started)
    if is_main_process():
        print(api.describe_run(result.summary, result.run_dir))
    return 0


def _finished(out: str | None) -> bool:
    """Whether --out holds a finished run, said in one line (start-or-resume leaves it alone)."""
    from asymco import api
    from asymco.engine.claim import run_state

    if out is None:
        raise UserError("--resume needs --out: the run directory to start or continue")
    if run_state(Path(out)) != "finished":
        return False
    if is_main_process():
        from asymco.untrusted import decoding

        summary = api.read_summary(Path(out))
        with decoding(Path(out) / "summary.json", "the run's summary", "copy the run again"):
            line = api.describe_run(summary, Path(out))  # a figure it lacks: one sentence
        print(f"already finished, nothing rewritten: {line}")
    return True


def _saved_config(args: argparse.Namespace) -> RunConfig:
    """The configuration saved in --out, for `--resume --out DIR` without the first command."""
    from asymco import api
    from asymco.engine.claim import run_state

    if args.set or args.data_dir or args.test or args.budget:
        raise UserError(
            "--set, --budget, --data-dir and --test describe a run: give them with its --preset "
            "or --data (the same command as the first time), or drop them to continue as saved"
        )
    if run_state(Path(args.out)) in ("empty", "unstarted"):
        raise UserError(
            f"{args.out} holds no run to continue; to start it, give --resume with the command "
            "that starts it (--preset NAME or --data ...)"
        )
    return api.load_run_config(Path(args.out))


def add_train(train: argparse.ArgumentParser) -> None:
    train.add_argument("--preset", help="a name from `asymco presets`")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. train.epochs=10 (repeatable)",
    )
    train.add_argument(
        "--data",
        help="your own images: folder:PATH (one folder per class), csv:FILE (path,label rows), "
        "npz:FILE (x_train, y_train arrays), hf:PATH (a datasets.save_to_disk folder) or "
        "parquet:PATH (a .parquet file or folder with image and label columns)",
    )
    train.add_argument(
        "--test",
        help="their test split, same kind as --data (default: hold out data.holdout_fraction)",
    )
    train.add_argument(
        "--data-dir", help="where the data is (an .npz, a folder, or the download cache)"
    )
    train.add_argument(
        "--out", help="run directory (default: runs/<preset>-<method>-s<seed>-<time>)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="start or continue the run in --out: the same command, run again, picks up where "
        "it stopped (a finished run is left alone)",
    )
    train.add_argument(
        "--budget",
        metavar="TIME",
        help="finish within about this long, e.g. 15m, 2h, 1h30m: the epochs are chosen from "
        "step times measured before training (train.budget)",
    )
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    train.set_defaults(func=_train)


def is_main_process() -> bool:
    """False on every torchrun rank but 0: they train, but print nothing (rank 0 speaks)."""
    return os.environ.get("RANK", "0") == "0"
