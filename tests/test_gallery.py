"""`asymco issues RUN --html / --export`: the suspects as a page of thumbnails and the suggested
labels as CSV, on real tiny runs (an image folder, a user's .npz, CIFAR-100), checked against
the run's own label_issues.csv and the source images; the page rendered in headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from asymco.cli import main
from asymco.label_issues import COLUMNS, label_quality, read_label_issues
from asymco.report import make_report
from asymco.report.gallery import thumbnail
from asymco.suggest import EXPORT_COLUMNS, Suspect, export_rows, read_suspects, suggest
from asymco.text import csv_cell, csv_value

# Class names a user may well have: markup, quotes, an ampersand, a spreadsheet formula.
CLASSES = ("apple", '<b>"pear"&', "=cmd")
TINY = ["--set", "train.epochs=2", "--set", "train.warmup_epochs=1", "--set", "data.batch_size=8",
        "--set", "train.progress=false", "--set", "data.workers=0"]
TOP = 6


def _colour_images(root: Path, per_class: int = 8) -> None:
    """root/<class>/imgN.png, 40x44 noise tinted by class (lossless, so pixels can be compared)."""
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            pixels = np.random.default_rng(10 * label + i).integers(0, 80, (44, 40, 3), np.uint8)
            pixels[..., label] += 150
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"img{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    _colour_images(root / "pics")
    out = root / "run"
    assert main(["train", "--data", f"folder:{root / 'pics'}", "--out", str(out), *TINY,
                 "--set", "model.name=cnn7", "--set", "data.image_size=32"]) == 0
    return out


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A user's 8x8 grayscale arrays without a test split: a share is held out, so `index`
    must map back to the position in the user's array."""
    root = tmp_path_factory.mktemp("npz")
    y = np.repeat(np.arange(3), 16)
    x = np.random.default_rng(0).integers(0, 60, (48, 8, 8), dtype=np.uint8)
    x[np.arange(48), 2 * y + 1] += 150  # (N, 8, 8): a bright row per class
    np.savez(root / "mine.npz", x_train=x, y_train=y, class_names=np.array(CLASSES))
    out = root / "run"
    assert main(["train", "--data", f"npz:{root / 'mine.npz'}", "--out", str(out), *TINY]) == 0
    return out, x


class Page(HTMLParser):
    """What the page shows: images, filter options, cards, the per-class table, forms."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs, self.options, self.cards, self.rows, self.forms = [], [], [], [], []
        self._text: list[str] | None = None
        self._option: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "figure":
            self.cards.append(a)
        elif tag == "form":
            self.forms.append(a)
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "option"):
            self._text, self._option = [], a if tag == "option" else None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.rows[-1].append("".join(self._text))
        elif tag == "option":
            self.options.append((self._option["value"], "".join(self._text)))
        if tag in ("td", "option"):
            self._text = None


def _thumb(img: dict) -> np.ndarray:
    mime, data = img["src"].removeprefix("data:").split(";base64,")
    assert mime == "image/png"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _one_line_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(["issues", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymco: error: ") and err.count("\n") == 1, err
    return err


def test_folder_run_page_shows_the_top_suspects_with_escaped_names(folder_run, tmp_path):
    export = tmp_path / "fixes.csv"
    assert main(["issues", str(folder_run), "--html", "--top", str(TOP),
                 "--export", str(export)]) == 0
    text = (folder_run / "label_issues.html").read_text()
    rows = read_label_issues(folder_run / "label_issues.csv")
    page = Page(text)
    assert len(page.imgs) == len(page.cards) == TOP
    for img, row in zip(page.imgs, rows, strict=False):  # each card shows its own image
        original = np.asarray(Image.open(row["path"]).convert("RGB"))
        factor = 96 // max(original.shape[:2])
        np.testing.assert_array_equal(_thumb(img)[::factor, ::factor], original)
        assert img["alt"] == f"sample {row['index']}, given {row['given_class']}"
    assert '<b>"pear"&' not in text and "&lt;b&gt;&quot;pear&quot;&amp;" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from anywhere
    shown = rows[:TOP]
    expected = {r["given_label"]: r["given_class"] for r in shown}
    expected |= {r["predicted_label"]: r["predicted_class"] for r in shown}
    assert dict(page.options[1:]) == expected and page.options[0][0] == ""
    assert "hidden" in page.forms[0]  # without JavaScript: no dead control
    assert all("hidden" not in card for card in page.cards)  # ... and every card visible
    assert [(c["data-given"], c["data-predicted"]) for c in page.cards] == [
        (r["given_label"], r["predicted_label"]) for r in shown]
    _check_class_table(page.rows[1:], rows)


def _check_class_table(table: list[list[str]], rows: list[dict[str, str]]) -> None:
    labels = Counter(r["given_class"] for r in rows)
    flagged = Counter(r["given_class"] for r in rows if r["is_label_issue"] == "True")
    assert sorted(t[0] for t in table) == sorted(labels)
    for name, count, issues, share, predicted_as in table:
        assert int(count) == labels[name] and int(issues) == flagged[name]
        assert share == f"{flagged[name] / labels[name]:.0%}"
        wanted = Counter(r["predicted_class"] for r in rows
                         if r["given_class"] == name and r["is_label_issue"] == "True")
        shown = [(n, c) for n, c in sorted(wanted.items(), key=lambda kv: (-kv[1], kv[0]))][:3]
        assert predicted_as.startswith(", ".join(f"{n} ({c})" for n, c in shown))
    assert [int(t[2]) for t in table] == sorted((int(t[2]) for t in table), reverse=True)


def test_folder_run_export_follows_the_rule_and_defuses_formulas(folder_run, tmp_path, capsys):
    export = tmp_path / "fixes.csv"
    assert main(["issues", str(folder_run), "--export", str(export)]) == 0
    assert not (tmp_path / "label_issues.html").exists()
    table, out = read_label_issues(folder_run / "label_issues.csv"), _csv_rows(export)
    assert tuple(out[0]) == EXPORT_COLUMNS and len(out) == len(table)
    actions = Counter()
    for given, row in zip(table, out, strict=True):
        assert row["index"] == given["index"] and row["path"] == given["path"]
        flagged, other = given["is_label_issue"] == "True", given["predicted_label"]
        confident = float(given["predicted_label_prob"]) >= 0.5
        if not flagged:
            want = ("keep", given["given_label"], given["given_class"])
        elif other != given["given_label"] and confident:
            want = ("relabel", other, given["predicted_class"])
        else:
            want = ("review", "", "")
        # `table` holds the names read back; the export holds them in their inert CSV form.
        assert (row["action"], row["suggested_label"], csv_value(row["suggested_class"])) == want
        assert csv_value(row["given_class"]) == given["given_class"]
        actions[row["action"]] += 1
    assert "'=cmd" in {r["given_class"] for r in out}  # the formula-like class, made inert
    assert f"keep {actions['keep']}, relabel {actions['relabel']}" in capsys.readouterr().out


def _suspect(flagged: bool, given: int, predicted: int, prob: float) -> Suspect:
    names = ["cat", "dog", "fox"]
    return Suspect(0, 7, "", given, names[given], predicted, names[predicted], 0.3, flagged,
                   math.nan, 0.1, prob)


def test_the_rule_keeps_relabels_and_asks_for_review():
    assert suggest(_suspect(False, 0, 1, 0.99)) == ("keep", "cat")  # not flagged: kept
    assert suggest(_suspect(True, 0, 1, 0.5)) == ("relabel", "dog")  # at least half: relabel
    assert suggest(_suspect(True, 0, 1, 0.49)) == ("review", "")  # torn between classes
    assert suggest(_suspect(True, 0, 0, 0.9)) == ("review", "")  # net agrees, selection not
    assert suggest(_suspect(True, 0, 1, math.nan)) == ("review", "")  # an older run's table
    assert suggest(_suspect(True, 0, 1, 0.7), confident=0.8) == ("review", "")
    probs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    quality = label_quality(np.array([0, 0]), probs)
    np.testing.assert_allclose(quality["predicted_label_prob"], [0.7, 0.6])


def test_thumbnails_enlarge_tiny_images_and_shrink_photos():
    tiny = Image.fromarray(np.arange(8 * 8, dtype=np.uint8).reshape(8, 8))
    data, mime = thumbnail(tiny)
    enlarged = np.asarray(Image.open(io.BytesIO(data)))
    assert mime == "image/png" and enlarged.shape == (96, 96)
    np.testing.assert_array_equal(enlarged[::12, ::12], np.asarray(tiny))  # crisp blocks
    photo = Image.new("RGBA", (640, 320), (200, 30, 30, 255))
    data, mime = thumbnail(photo)
    small = Image.open(io.BytesIO(data))
    assert mime == "image/jpeg" and small.size == (128, 64) and small.mode == "RGB"
    data, mime = thumbnail(Image.new("P", (20, 10)))
    assert mime == "image/png" and Image.open(io.BytesIO(data)).size == (80, 40)


def test_cells_a_spreadsheet_would_run_are_made_inert():
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert csv_cell(f"{start}HYPERLINK(1)") == f"'{start}HYPERLINK(1)"
    assert csv_cell("apple") == "apple" and csv_cell("") == "" and csv_cell("a=b") == "a=b"
    evil = Suspect(0, 3, "=1+2.jpg", 0, "@SUM(A1)", 1, "+x", 0.1, True, 0.0, 0.0, 0.9)
    row = dict(zip(EXPORT_COLUMNS, export_rows([evil])[0], strict=True))
    assert (row["path"], row["given_class"], row["suggested_class"]) == (
        "'=1+2.jpg", "'@SUM(A1)", "'+x")


def test_npz_thumbnails_are_the_users_own_images(npz_run, tmp_path):
    out, x = npz_run
    page_path = tmp_path / "page.html"
    assert main(["issues", str(out), "--html", str(page_path), "--top", "10"]) == 0
    rows = read_label_issues(out / "label_issues.csv")
    assert len(rows) < len(x)  # a share was held out, so `index` is no position in the rows
    imgs = Page(page_path.read_text()).imgs
    assert len(imgs) == 10
    for img, row in zip(imgs, rows, strict=False):  # 8 px enlarged 12 times, one channel
        np.testing.assert_array_equal(_thumb(img)[::12, ::12], x[int(row["index"])])


@pytest.mark.slow
def test_cifar_run_page_and_export(shared_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "cifar100n-sym20", "--data-dir", str(shared_data),
                 "--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
                 "--set", "data.subset=120", "--set", "data.test_subset=100",
                 "--set", "data.batch_size=32", "--set", "train.progress=false",
                 "--out", str(out)]) == 0
    assert main(["issues", str(out), "--html", "--top", "12", "--export",
                 str(tmp_path / "fixes.csv")]) == 0
    rows = read_label_issues(out / "label_issues.csv")
    imgs = Page((out / "label_issues.html").read_text()).imgs
    assert len(imgs) == 12
    with np.load(shared_data / "cifar100.npz") as archive:
        x_train = archive["x_train"]
    for img, row in zip(imgs, rows, strict=False):  # `index` is the seeded subset's position
        np.testing.assert_array_equal(_thumb(img)[::3, ::3], x_train[int(row["index"])])
    assert len(_csv_rows(tmp_path / "fixes.csv")) == 120


def test_report_links_the_page_or_says_how_to_make_it(folder_run, tmp_path):
    assert main(["issues", str(folder_run), "--html", "--top", "2"]) == 0
    bare = tmp_path / "bare"
    shutil.copytree(folder_run, bare, ignore=shutil.ignore_patterns("*.html", "*.pt"))
    _, report = make_report([folder_run, bare], tmp_path / "report")
    text = report.read_text()
    links = [a for a in text.split('href="')[1:]]
    assert len(links) == 1
    href = links[0].split('"')[0]
    assert (report.parent / href).resolve() == (folder_run / "label_issues.html").resolve()
    assert f"asymco issues {bare} --html" in text


def _damaged(good: list[list[str]]) -> dict[str, bytes]:
    """label_issues.csv spoilt in the ways a disk, an editor or a person spoils it."""
    def table(rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()

    score, flag = COLUMNS.index("label_score"), COLUMNS.index("is_label_issue")
    edited = {name: [list(r) for r in good] for name in ("score", "flag")}
    edited["score"][1][score] = "n/a"
    edited["flag"][1][flag] = "maybe"
    return {
        **{name: table(rows) for name, rows in edited.items()},
        "short": table([*good[:1], good[1][:3], *good[2:]]),
        "columns": table([r[:score] + r[score + 1:] for r in good]),
        "empty": table(good[:1]),
        "binary": b"\xff\xfe\x00garbage\x00" * 20,
    }


def test_bad_input_is_one_sentence_and_writes_nothing(folder_run, tmp_path, capsys):
    assert "does not exist" in _one_line_error(capsys, str(tmp_path), "--html")
    assert not (tmp_path / "label_issues.html").exists()
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns("*.html", "*.pt"))
    with (run / "label_issues.csv").open(newline="") as f:
        good = list(csv.reader(f))
    export = tmp_path / "x.csv"
    for name, data in _damaged(good).items():
        (run / "label_issues.csv").write_bytes(data)
        for flags in (["--html"], ["--export", str(export)]):
            err = _one_line_error(capsys, str(run), *flags)
            assert "label_issues.csv" in err, (name, err)
    assert not (run / "label_issues.html").exists() and not export.exists()
    shutil.copy(folder_run / "label_issues.csv", run / "label_issues.csv")
    assert "--top" in _one_line_error(capsys, str(run), "--html", "--top", "-1")
    assert "folder" in _one_line_error(capsys, str(run), "--export", str(tmp_path / "no/x.csv"))
    assert "folder" in _one_line_error(capsys, str(run), "--html", str(tmp_path / "no/x.html"))


def test_data_that_is_gone_is_one_sentence(folder_run, npz_run, tmp_path, capsys):
    pics = tmp_path / "pics"
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns("*.html", "*.pt"))
    old_root = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    shutil.copytree(old_root, pics)
    table = (run / "label_issues.csv").read_text()
    (run / "label_issues.csv").write_text(table.replace(str(Path(old_root)), str(pics)))
    assert main(["issues", str(run), "--html"]) == 0  # the moved copy is found by its paths
    shutil.rmtree(pics)
    assert "is gone" in _one_line_error(capsys, str(run), "--html", str(tmp_path / "p.html"))
    assert not (tmp_path / "p.html").exists()
    npz = tmp_path / "npz-run"
    shutil.copytree(npz_run[0], npz, ignore=shutil.ignore_patterns("*.html", "*.pt"))
    config = yaml.safe_load((npz / "config.yaml").read_text())
    config["data"]["root"] = str(tmp_path / "moved.npz")
    (npz / "config.yaml").write_text(yaml.safe_dump(config))
    assert "is gone" in _one_line_error(capsys, str(npz), "--html")
    assert not (npz / "label_issues.html").exists()


def test_an_older_table_without_the_new_column_is_read(folder_run, tmp_path):
    old = tmp_path / "label_issues.csv"
    with (folder_run / "label_issues.csv").open(newline="") as f, old.open("w", newline="") as g:
        writer = csv.writer(g)
        for row in csv.reader(f):
            writer.writerow(row[: len(COLUMNS) - 1])
    suspects = read_suspects(old)
    assert all(math.isnan(s.predicted_label_prob) for s in suspects)
    assert {suggest(s)[0] for s in suspects} <= {"keep", "review"}


def test_page_renders_in_headless_chromium(folder_run, tmp_path, chromium):
    """The thumbnails decode (naturalWidth > 0), the class filter hides the right cards, and the
    screenshot shows the images' colours."""
    page = tmp_path / "page.html"
    assert main(["issues", str(folder_run), "--html", str(page), "--top", str(TOP)]) == 0
    rows = read_label_issues(folder_run / "label_issues.csv")[:TOP]
    choice = rows[0]["given_label"]
    probe = page.read_text().replace("</body>", PROBE.replace("CHOICE", choice) + "</body>")
    (tmp_path / "probe.html").write_text(probe)
    done = chromium("--dump-dom", "--virtual-time-budget=5000", (tmp_path / "probe.html").as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    found = json.loads(dom.split('<pre id="probe">')[1].split("</pre>")[0])
    assert found["images"] == found["rendered"] == TOP
    assert found["visible"] == int(found["shown"]) == sum(
        choice in (r["given_label"], r["predicted_label"]) for r in rows)
    assert found["form_hidden"] is False
    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int64)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 100  # the tinted thumbnails
    assert saturated.sum() > TOP * 80 * 88 * 0.5, saturated.sum()


PROBE = """<script>window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var rendered = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var choice = document.getElementById("cls");
  choice.value = "CHOICE";
  choice.dispatchEvent(new Event("change"));
  var cards = Array.from(document.querySelectorAll(".card"));
  var visible = cards.filter(function (c) { return c.offsetParent !== null; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images.length, rendered: rendered.length,
    visible: visible.length, shown: document.getElementById("shown").textContent,
    form_hidden: document.getElementById("filter").hidden});
  document.body.appendChild(out);
});</script>"""
