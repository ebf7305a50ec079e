"""`asymco` command line: a thin shell over `asymco.api`.

Bad input of any kind ends with one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from asymco._clock import command_started
from asymco.cli_train import add_train, is_main_process
from asymco.errors import PreemptedError, UserError
from asymco.files import describe_os_error
from asymco.text import printable

EXIT_USAGE = 2
EXIT_OS = 1  # the machine failed the run (a full disk, ...), not its input
EXIT_TERMINATED = 143  # 128 + SIGTERM, as if the signal had ended the process
ISSUES_TOP = 20
ISSUES_DESCRIPTION = """Show the labels a run judges most likely wrong (label_issues.csv).

  asymco issues RUN                      print the 20 most suspect labels
  asymco issues RUN --html               RUN/label_issues.html: thumbnails of the top 100
  asymco issues RUN --export fixes.csv   every label with a suggested action

The suggested action: keep a label the run does not flag; relabel a flagged label to the
predicted class when the net gives that class a probability of 0.5 or more (more than all
other classes together); review any other flagged label. Cells a spreadsheet would run as a
formula (starting with = + - @) get a leading apostrophe."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one sentence, status 2
        raise UserError(message)


def _presets(args: argparse.Namespace) -> int:
    from asymco.presets import get_preset, list_presets

    for name in list_presets():
        cfg = get_preset(name)
        paper = f"paper {cfg.paper_test_acc:.2f}" if cfg.paper_test_acc is not None else ""
        print(f"{name:<18} {cfg.description}  {paper}".rstrip())
    return 0


def _issues(args: argparse.Namespace) -> int:
    from asymco.suggest import read_suspects

    if args.top is not None and args.top < 0:
        raise UserError(f"--top must be 0 or more, got {args.top}")
    run_dir = Path(args.run_dir)
    if args.html is not None or args.export is not None:
        return _issues_files(args, run_dir)
    top = ISSUES_TOP if args.top is None else args.top
    rows = read_suspects(run_dir / "label_issues.csv")
    flagged = sum(row.is_label_issue for row in rows)
    print(f"{flagged} of {len(rows)} training labels flagged as issues; most suspect first:")
    print(f"{'index':>7}  {'given':<20} {'predicted':<20} {'score':>6}  issue  path")
    for row in rows[:top]:  # names and paths are the user's: escape their control characters
        given, predicted = printable(row.given_class)[:20], printable(row.predicted_class)[:20]
        print(
            f"{row.index:>7}  {given:<20} {predicted:<20} {row.label_score:6.3f}  "
            f"{'yes' if row.is_label_issue else 'no':<5}  {printable(row.path)}"
        )
    return 0


def _issues_files(args: argparse.Namespace, run_dir: Path) -> int:
    """`--export` and `--html`: the suggested labels as CSV, the suspects as a page. Every
    input is read before anything is written, so a failure leaves no new file behind."""
    from asymco.report.gallery import DEFAULT_TOP, GALLERY_NAME, check_page_path, write_gallery
    from asymco.suggest import action_counts, read_suspects, write_export

    suspects = read_suspects(run_dir / "label_issues.csv")
    written = []
    if args.html is not None:
        from asymco.api import load_run_config
        from asymco.data.images import training_images

        page = check_page_path(Path(args.html) if args.html else run_dir / GALLERY_NAME)
        shown = suspects[: DEFAULT_TOP if args.top is None else args.top]
        images = training_images(
            load_run_config(run_dir).data, [s.index for s in shown], [s.path for s in shown]
        )
    if args.export is not None:
        export = write_export(Path(args.export), suspects)
        counts = ", ".join(f"{action} {n}" for action, n in action_counts(suspects).items())
        written.append(f"wrote {printable(export)} ({counts})")
    if args.html is not None:
        page = write_gallery(page, run_dir.resolve().name, suspects, images)
        written.append(f"wrote {printable(page)}")
    print("\n".join(written))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from asymco.sweep import check_parallel, plan, run_sweep

    check_parallel(args.parallel, args.pack)
    cells = plan(args.presets, args.methods, args.seeds)
    try:
        failed = run_sweep(
            cells,
            Path(args.out),
            overrides=args.set,
            data_dir=args.data_dir,
            parallel=args.parallel,
            pack=args.pack,
        )
    except KeyboardInterrupt:
        print("asymco: sweep interrupted; run the same command to continue it", file=sys.stderr)
        return 130
    except PreemptedError as stopped:  # SIGTERM: the runs in progress saved their checkpoints
        print(
            f"asymco: sweep {stopped} ({stopped.run_dir}); run the same command to continue it",
            file=sys.stderr,
        )
        return EXIT_TERMINATED
    done = len(cells) - len(failed)
    print(
        f"sweep {args.out}: {done} of {len(cells)} runs complete; "
        f"`asymco report {args.out}` writes the tables and plots"
    )
    if failed:
        names = ", ".join(f"{c.preset}/{c.method}/seed{c.seed}" for c in failed[:5])
        print(
            f"asymco: {len(failed)} runs failed ({names}); run the same command to retry",
            file=sys.stderr,
        )
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from asymco.report import make_report

    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    markdown, html = make_report([Path(d) for d in args.dirs], out)
    print(f"wrote {printable(markdown)} and {printable(html)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per function above."""
    parser = _Parser(
        prog="asymco", description="Learning with noisy labels by Asymmetric Co-Training (ACT)."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_train(sub.add_parser("train", help="train a preset into a run directory"))
    _add_sweep(sub.add_parser("sweep", help="run presets x methods x seeds into one directory"))
    report = sub.add_parser("report", help="tables and plots of run or sweep directories")
    report.add_argument("dirs", nargs="+", help="run directories, or folders holding them")
    report.add_argument("--out", help="where report.md/.html go (default: <first dir>/report)")
    report.set_defaults(func=_report)
    _add_issues(
        sub.add_parser(
            "issues",
            help="the most suspect labels of a run: printed, as a page of images, or as a CSV of "
            "suggested labels",
            description=ISSUES_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    presets = sub.add_parser("presets", help="list the presets, one line each")
    presets.set_defaults(func=_presets)
    return parser


def _add_issues(issues: argparse.ArgumentParser) -> None:
    issues.add_argument("run_dir", help="a run directory holding label_issues.csv")
    issues.add_argument(
        "--top",
        type=int,
        help=f"how many suspects: printed rows (default {ISSUES_TOP}) or thumbnails on the "
        "--html page (default 100)",
    )
    issues.add_argument(
        "--html",
        nargs="?",
        const="",
        metavar="PAGE",
        help="write a self-contained page of the top suspects' images (default PAGE: "
        "RUN/label_issues.html); re-reads the run's training images, trains nothing",
    )
    issues.add_argument(
        "--export",
        metavar="FILE.csv",
        help="write every label's suggested action (keep / relabel / review) to FILE.csv",
    )
    issues.set_defaults(func=_issues)


def _add_sweep(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("--presets", nargs="+", required=True, metavar="PRESET")
    sweep.add_argument("--methods", nargs="+", default=["act"], metavar="METHOD")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], metavar="SEED")
    sweep.add_argument("--out", required=True, help="the sweep directory")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting in every run (repeatable)",
    )
    sweep.add_argument("--data-dir", help="where the data is")
    sweep.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time, as separate processes (default 1: in this process)",
    )
    sweep.add_argument(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="train up to K runs that share data, network, method and schedule together, as "
        "one batched model (fills a GPU; each run keeps its own directory)",
    )
    sweep.set_defaults(func=_sweep)


def main(argv: list[str] | None = None) -> int:
    speaks = is_main_process()
    logging.basicConfig(
        level=logging.INFO if speaks else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    try:
        args = build_parser().parse_args(argv)
        args.started = command_started()
        return args.func(args)
    except UserError as err:
        if speaks:
            # One line even when the message quotes a value with a line break in it.
            print(f"asymco: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_USAGE
    except PreemptedError as stopped:  # a scheduler's SIGTERM: the checkpoint is already saved
        if speaks:
            print(f"asymco: {stopped}; {_resume_hint(stopped)}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt as stopped:
        if speaks:
            print(f"asymco: interrupted; {_resume_hint(stopped)}", file=sys.stderr)
        return 130
    except OSError as err:  # the machine's, not the input's: a full disk, a lost mount, ...
        if speaks:
            print(f"asymco: error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_OS


def _resume_hint(stopped: BaseException) -> str:
    run_dir = getattr(stopped, "run_dir", None)  # set once a run directory was chosen
    where = f" --out {printable(shlex.quote(str(run_dir)))}" if run_dir else ""
    return f"run the same command with --resume{where} to continue"
