"""`asymco issues RUN --html`: the most suspect labels of a run as a page of thumbnails.

One self-contained HTML file (images embedded as `data:` URIs, no network, no other file):
the top-N suspects with their given and predicted class, label score, selection share and the
suggested action (`asymco.suggest`), a class filter (a few lines of inline script; with
JavaScript off every card stays visible), and a per-class table of how many labels were
flagged and what the net predicted for them. Every string from the run is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from asymco.errors import UserError
from asymco.files import write_text_atomic
from asymco.suggest import Suspect, action_counts, suggest

GALLERY_NAME = "label_issues.html"
DEFAULT_TOP = 100
SMALL_SIDE = 96
"""Tiny images (CIFAR's 32 px, digits' 8 px) are enlarged by a whole factor to about this."""
LARGE_SIDE = 128
"""Photos are shrunk to fit in a square of this side."""
PREDICTED_AS_SHOWN = 3
"""The per-class table names this many predicted classes per row (the commonest)."""
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1260px; padding: 0 1rem; color: #1b1b1b; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
p.note { color: #555; font-size: .9rem; max-width: 60rem; }
p.trust { max-width: 60rem; padding: .4rem .6rem; border-left: 4px solid #2e7d32; }
p.trust.low { border-left-color: #c0392b; background: #fdf2f0; }
[hidden] { display: none !important; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: .8rem; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: .5rem; margin: 0; font-size: .8rem; }
.card.flagged { border-color: #c0392b; }
.card img { display: block; margin: 0 auto .4rem; max-width: 128px; height: auto;
            image-rendering: pixelated; }
.card .path { color: #777; overflow-wrap: anywhere; }
.card b { font-weight: 600; }
.card .nw { white-space: nowrap; }
table { border-collapse: collapse; margin: .8rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }
th { background: #f2f4f7; }
td.num { text-align: right; }
"""
# Shows the filter (hidden without JavaScript, where it could do nothing) and hides the cards
# whose given and predicted class both differ from the chosen one.
SCRIPT = """
(function () {
  var form = document.getElementById("filter"), choice = document.getElementById("cls");
  form.hidden = false;
  choice.addEventListener("change", function () {
    var value = choice.value, shown = 0;
    document.querySelectorAll(".card").forEach(function (card) {
      var keep = value === "" || card.dataset.given === value || card.dataset.predicted === value;
      card.hidden = !keep;
      if (keep) { shown += 1; }
    });
    document.getElementById("shown").textContent = String(shown);
  });
})();
"""


def thumbnail(image: Image.Image) -> tuple[bytes, str]:
    """Encode `image` as a small PNG (enlarged pixel art) or JPEG (shrunk photo).

    Returns:
        The encoded bytes and their MIME type.
    """
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    side = max(image.size)
    buffer = io.BytesIO()
    if side <= SMALL_SIDE:
        # Whole-factor nearest-neighbour: each source pixel becomes a crisp square block.
        factor = max(1, SMALL_SIDE // side)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        image.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    image = image.copy()
    image.thumbnail((LARGE_SIDE, LARGE_SIDE), Image.LANCZOS)
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), "image/jpeg"


@dataclass(frozen=True)
class ClassRow:
    """One given class in the per-class table."""

    given_class: str
    labels: int
    flagged: int
    predicted_as: list[tuple[str, int]]
    """(predicted class, count) over this class's flagged labels, commonest first."""


def class_rows(suspects: list[Suspect]) -> list[ClassRow]:
    """Per given class: its labels, how many were flagged and what those were predicted as;
    the most flagged classes first (ties by name)."""
    labels: Counter[str] = Counter(s.given_class for s in suspects)
    predicted: dict[str, Counter[str]] = {name: Counter() for name in labels}
    for s in suspects:
        if s.is_label_issue:
            predicted[s.given_class][s.predicted_class] += 1
    rows = [
        ClassRow(name, labels[name], sum(predicted[name].values()), _commonest(predicted[name]))
        for name in labels
    ]
    return sorted(rows, key=lambda r: (-r.flagged, r.given_class))


def _commonest(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0%}"


def _card(s: Suspect, image: bytes, mime: str) -> str:
    action, suggested = suggest(s)
    advice = {"keep": "keep", "review": "review", "relabel": f"relabel to {suggested}"}[action]
    data = base64.b64encode(image).decode("ascii")
    e = html.escape
    flag = "flagged" if s.is_label_issue else "not flagged"
    path = f'<br><span class="path">{e(s.path)}</span>' if s.path else ""
    return (
        f'<figure class="card{" flagged" if s.is_label_issue else ""}" '
        f'data-given="{s.given_label}" data-predicted="{s.predicted_label}">'
        f'<img alt="sample {s.index}, given {e(s.given_class)}" src="data:{mime};base64,{data}">'
        f"<figcaption>#{s.rank + 1} · sample {s.index}<br>"
        f"given <b>{e(s.given_class)}</b><br>predicted <b>{e(s.predicted_class)}</b><br>"
        f"score {s.label_score:.3f} · "
        f'<span class="nw">selected {_share(s.selected_share)}</span><br>'
        f"{flag} → {e(advice)}{path}</figcaption></figure>"
    )


def _filter(shown: list[Suspect]) -> str:
    names = {s.given_label: s.given_class for s in shown}
    names.update({s.predicted_label: s.predicted_class for s in shown})
    options = "".join(
        f'<option value="{label}">{html.escape(name)}</option>'
        for label, name in sorted(names.items(), key=lambda item: item[1])
    )
    return (
        '<form id="filter" hidden><label for="cls">Show the suspects whose given or predicted '
        f'class is </label><select id="cls"><option value="">any class</option>{options}'
        f'</select> · <span id="shown">{len(shown)}</span> of {len(shown)} shown</form>'
    )


def _class_table(suspects: list[Suspect]) -> str:
    body = []
    for row in class_rows(suspects):
        commonest = row.predicted_as[:PREDICTED_AS_SHOWN]
        named = ", ".join(f"{html.escape(name)} ({count})" for name, count in commonest)
        more = len(row.predicted_as) - PREDICTED_AS_SHOWN
        named += f", {more} more" if more > 0 else ""
        body.append(
            f'<tr><td>{html.escape(row.given_class)}</td><td class="num">{row.labels}</td>'
            f'<td class="num">{row.flagged}</td>'
            f'<td class="num">{row.flagged / row.labels:.0%}</td><td>{named}</td></tr>'
        )
    return (
        "<table><thead><tr><th>given class</th><th>labels</th><th>flagged</th>"
        "<th>flagged share</th><th>flagged labels predicted as</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def gallery_html(
    title: str,
    suspects: list[Suspect],
    thumbs: list[tuple[bytes, str]],
    trust: dict | None = None,
) -> str:
    """The page for the suspects (most suspect first) whose thumbnails `thumbs` holds, in order.

    Args:
        title: What the run is called (escaped here).
        suspects: Every row of the run's label_issues.csv, most suspect first.
        thumbs: (image bytes, MIME type) of the first `len(thumbs)` suspects.
        trust: How far to trust the list (summary.json's `label_trust`: `level`, `message`),
            shown above the cards; None says nothing.
    """
    shown = suspects[: len(thumbs)]
    flagged = sum(s.is_label_issue for s in suspects)
    counts = action_counts(suspects)
    cards = "".join(_card(s, image, mime) for s, (image, mime) in zip(shown, thumbs, strict=True))
    heading = f"Suspect labels of {html.escape(title)}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{heading}</title><style>{CSS}</style></head><body><h1>{heading}</h1>"
        f"{_trust(trust)}"
        f"<p>{flagged} of {len(suspects)} training labels flagged; the {len(shown)} most "
        "suspect are shown, lowest label score first (score in [0, 1], higher = more likely "
        "correct; selected = share of the robust epochs in which the method trusted the "
        f'label).</p><p class="note">Suggested actions: keep {counts["keep"]}, relabel '
        f"{counts['relabel']}, review {counts['review']}; <code>asymco issues RUN --export "
        "FILE.csv</code> writes them for every label.</p>"
        f'{_filter(shown)}<div class="grid">{cards}</div>'
        f"<h2>Flagged labels per class</h2>{_class_table(suspects)}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _trust(trust: dict | None) -> str:
    if not trust:
        return ""
    level = html.escape(str(trust.get("level", "")))
    style = ' class="trust low"' if level == "low" else ' class="trust"'
    return f"<p{style}><b>Trust: {level}.</b> {html.escape(str(trust.get('message', '')))}</p>"


def run_trust(run_dir: Path) -> dict | None:
    """A run's `label_trust` from its summary.json; None for a run without one (an older run,
    or a page written away from its run)."""
    from asymco.untrusted import read_json_mapping

    try:  # the page stays useful without the claim: any unreadable summary says nothing
        summary = read_json_mapping(Path(run_dir) / "summary.json", "the run's summary")
    except (OSError, UserError):
        return None
    trust = summary.get("label_trust")
    return trust if isinstance(trust, dict) else None


def check_page_path(out: Path) -> Path:
    """`out`, if a page can be written there (checked before the images are read)."""
    if not out.parent.is_dir() or out.is_dir():
        raise UserError(f"cannot write {out}: name an .html file in an existing folder")
    return out


def write_gallery(
    out: Path,
    title: str,
    suspects: list[Suspect],
    images: list[Image.Image],
    trust: dict | None = None,
) -> Path:
    """Write the gallery page of a run's suspects to `out` (atomically) and return it.

    Args:
        out: The page's path, e.g. `RUN/label_issues.html` (`GALLERY_NAME`).
        title: What the run is called, e.g. its directory's name.
        suspects: Every row of the run's label_issues.csv, most suspect first.
        images: The training images of the first `len(images)` suspects, in that order (e.g.
            from `asymco.data.images.training_images`).
        trust: How far to trust the list; by default the `label_trust` of the summary.json
            beside `out` (the page's usual place is its run's directory).

    Raises:
        asymco.errors.UserError: `out` cannot be written.
    """
    out = check_page_path(Path(out))
    trust = run_trust(out.parent) if trust is None else trust
    page = gallery_html(title, suspects, [thumbnail(image) for image in images], trust)
    try:
        write_text_atomic(out, page)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror})") from None
    return out


def gallery_link(run_dir: Path, page_dir: Path) -> str:
    """An HTML fragment for a run's section of report.html (in `page_dir`): a relative link to
    the run's gallery when it exists, else the command that makes it (none without a table)."""
    gallery = Path(run_dir) / GALLERY_NAME
    if gallery.is_file():
        href = quote(Path(os.path.relpath(gallery.resolve(), Path(page_dir).resolve())).as_posix())
        return f'<p><a href="{html.escape(href)}">Suspect labels as images ({GALLERY_NAME})</a></p>'
    if (Path(run_dir) / "label_issues.csv").is_file():
        command = html.escape(f"asymco issues {shlex.quote(str(run_dir))} --html")
        return f'<p class="note">Suspect labels as images: <code>{command}</code></p>'
    return ""
