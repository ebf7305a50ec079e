"""Write `report.md` (with PNG files next to it) and a self-contained `report.html`.

Every piece of text that comes from a run's files is escaped: `html.escape` in the HTML,
`markdown_escape` in the Markdown. Each file is written to a temporary file in the output
directory and moved into place with `os.replace`, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from asymco.files import write_atomic
from asymco.report.collect import Run
from asymco.report.gallery import gallery_link
from asymco.report.plots import figure_title, plot_run
from asymco.report.tables import (
    COLUMNS,
    TableRow,
    build_rows,
    footnotes,
    markdown_escape,
    markdown_table,
)

MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"
TITLE = "asymco report"
"""Permissions of the written files (mkstemp alone would make them owner-only)."""
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1260px; padding: 0 1rem; color: #1b1b1b; background: #fff; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.1rem; margin-bottom: .3rem; }
table { border-collapse: collapse; margin: .8rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .35rem .7rem; text-align: left; }
th { background: #f2f4f7; }
td.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafafa; }
p.note { color: #555; font-size: .9rem; margin: .3rem 0; max-width: 60rem; }
p.figures { margin: .2rem 0 .6rem; }
code { font-size: .88rem; background: #f2f4f7; padding: 0 .25rem; border-radius: 3px; }
img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
section { margin-bottom: 2rem; }
"""


def image_name(index: int, run: Run) -> str:
    """A safe, unique PNG file name for the run's figure, e.g. `plot-01-run-act-s1.png`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name).strip("._") or "run"
    return f"plot-{index:02d}-{safe[:80]}.png"


def _number(value: object, fmt: str) -> str | None:
    return format(value, fmt) if isinstance(value, (int, float)) else None


def key_figures(run: Run) -> str:
    """One line of a run's main figures from its summary (plain text, not escaped).

    Args:
        run: The run.

    Returns:
        E.g. `last-10 test acc. 96.56 ± 3.18 % · best 98.89 % (epoch 9 of 12) · ...`.
    """
    s = run.summary
    std = _number(s.get("test_acc_last10_std"), ".2f")
    parts = [
        f"last-10 test acc. {s['test_acc_last10_mean']:.2f}" + (f" ± {std}" if std else "") + " %"
    ]
    best = _number(s.get("test_acc_best"), ".2f")
    if best is not None:
        where = ""
        if isinstance(s.get("best_epoch"), int):
            where = f" (epoch {s['best_epoch'] + 1} of {s.get('epochs', len(run.metrics))})"
        parts.append(f"best {best} %{where}")
    final = _number(s.get("test_acc_final"), ".2f")
    if final is not None:
        ntm = _number(s.get("test_acc_ntm_final"), ".2f")
        parts.append(f"final {final} %" + (f" (NTM {ntm} %)" if ntm else ""))
    precision = _number(s.get("sel_precision_final"), ".3f")
    recall = _number(s.get("sel_recall_final"), ".3f")
    if precision and recall:
        parts.append(f"selection P/R {precision} / {recall}")
    noise = _number(s.get("noise_rate_actual"), ".1%")
    if noise:
        parts.append(f"actual noise {noise.replace('%', ' %')}")
    paper = _number(s.get("paper_test_acc"), ".2f")
    if paper:
        parts.append(f"paper {paper} %")
    wall = _number(s.get("wall_seconds"), ".0f")
    if wall:
        parts.append(f"{wall} s" + (f" on {s['device']}" if s.get("device") else ""))
    return " · ".join(parts)


def _ordered(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.preset, r.method, r.seed is None, r.seed or 0, r.name))


def _markdown(rows: list[TableRow], runs: list[Run], images: list[str]) -> str:
    out = [
        f"# {TITLE}",
        "",
        f"{len(runs)} runs, {len(rows)} (preset, method) cells.",
        "",
        "## Results",
        "",
        markdown_table(rows),
        "## Runs",
        "",
    ]
    for run, image in zip(runs, images, strict=True):
        out += [
            f"### {markdown_escape(run.title)}",
            "",
            f"{markdown_escape(run.preset)} / {markdown_escape(run.method)}, "
            f"directory {markdown_escape(str(run.path))}",
            "",
            markdown_escape(key_figures(run)),
            "",
            f"![{re.sub(r'[][]', '', markdown_escape(figure_title(run)))}]({image})",
            "",
        ]
    return "\n".join(out)


def html_table(rows: list[TableRow]) -> str:
    """The results table as an HTML fragment with its footnotes (all text escaped).

    Args:
        rows: The table rows.

    Returns:
        HTML text.
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        cells = row.cells()
        tds = "".join(
            f'<td class="num">{html.escape(c)}</td>' if i >= 3 else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        body.append(f"<tr>{tds}</tr>")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in footnotes(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}"


def _html(rows: list[TableRow], runs: list[Run], pngs: list[bytes], out_dir: Path) -> str:
    sections = []
    for index, (run, png) in enumerate(zip(runs, pngs, strict=True), start=1):
        data = base64.b64encode(png).decode("ascii")
        sections.append(
            f'<section id="run-{index}"><h3>{html.escape(run.title)}</h3>'
            f"<p>{html.escape(run.preset)} / {html.escape(run.method)}, "
            f"<code>{html.escape(str(run.path))}</code></p>"
            f'<p class="figures">{html.escape(key_figures(run))}</p>'
            f'<img alt="{html.escape(figure_title(run))}" src="data:image/png;base64,{data}">'
            f"{gallery_link(run.path, out_dir)}</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{TITLE}</title><style>{CSS}</style></head><body>"
        f"<h1>{TITLE}</h1><p>{len(runs)} runs, {len(rows)} (preset, method) cells.</p>"
        f"<h2>Results</h2>{html_table(rows)}<h2>Runs</h2>{''.join(sections)}"
        "</body></html>\n"
    )


def write_report(runs: list[Run], out_dir: Path) -> tuple[Path, Path]:
    """Write the Markdown and HTML reports for `runs` into `out_dir`.

    `report.md` links one PNG per run saved next to it; `report.html` embeds the same images
    as base64 data URIs and needs no other file, and links each run's gallery of suspect
    labels (`asymco issues RUN --html`) where it exists.

    Args:
        runs: The runs (at least one), e.g. from `find_runs`.
        out_dir: The output directory; created if missing, existing reports are replaced.

    Returns:
        The paths of `report.md` and `report.html`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = _ordered(runs)
    rows = build_rows(ordered)
    pngs = [plot_run(run) for run in ordered]
    images = [image_name(i, run) for i, run in enumerate(ordered, start=1)]
    for name, png in zip(images, pngs, strict=True):
        write_atomic(out_dir / name, png)
    markdown_path, html_path = out_dir / MARKDOWN_NAME, out_dir / HTML_NAME
    write_atomic(markdown_path, _markdown(rows, ordered, images).encode("utf-8"))
    write_atomic(html_path, _html(rows, ordered, pngs, out_dir).encode("utf-8"))
    return markdown_path, html_path
