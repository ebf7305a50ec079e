"""`asymco.report`: table, plots, Markdown and self-contained HTML from real (tiny) runs."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from asymco import api
from asymco.errors import UserError
from asymco.report import build_rows, find_runs, load_run, make_report, markdown_table
from asymco.report.collect import Run
from asymco.report.plots import panels_for, plot_run
from asymco.report.render import key_figures
from asymco.report.tables import FORGET_RATE_NOTE, SHORTENED_NOTE, forget_rate_is_true_noise

PAPER = 90.5
TINY = ["train.epochs=6", "train.warmup_epochs=2", "optim.lr_decay=cosine:2,1e-3,6",
        "data.subset=400", "data.test_subset=200", "train.progress=false",
        f"paper_test_acc={PAPER}"]
METHODS = ("act", "standard")
SEEDS = (1, 2)
DATA_URI = 'src="data:image/png;base64,'


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 methods x 2 seeds of 6-epoch quickstart runs on a digits subset, trained once."""
    root = tmp_path_factory.mktemp("runs")
    for method in METHODS:
        for seed in SEEDS:
            cfg = api.resolve_config(
                "quickstart", [*TINY, f"method.name={method}", f"train.seed={seed}"])
            api.train(cfg, out_dir=root / "sweep" / f"{method}-s{seed}")
    return root


@pytest.fixture(scope="module")
def report(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_report([runs_root], tmp_path_factory.mktemp("report"))


def _copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.pt", "*.npy", "*.csv"))
    return dest


def _edit_run(run_dir: Path, *, preset: str | None = None, method: str | None = None,
              forget_rate: float | None = None) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    if preset is not None:
        config["preset"] = summary["preset"] = preset
    if method is not None:
        config["method"]["name"] = summary["method"] = method
        config["method"]["forget_rate"] = forget_rate
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines[1:]]


def _assert_good_png(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    width, height = image.size
    assert width >= 800 and height >= 300, image.size
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    assert pixels.std() > 5.0  # not blank
    colours = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(colours)) > 20  # not one colour: lines in several colours


def test_table_has_one_row_per_cell_with_mean_std_and_paper(runs_root: Path):
    runs = find_runs([runs_root])
    assert len(runs) == len(METHODS) * len(SEEDS)
    rows = _table_rows(markdown_table(build_rows(runs)))
    assert [(r[0], r[1]) for r in rows] == [("quickstart", m) for m in sorted(METHODS)]
    for row in rows:
        figures = [json.loads((runs_root / "sweep" / f"{row[1]}-s{s}" / "summary.json")
                              .read_text())["test_acc_last10_mean"] for s in SEEDS]
        mean, std = np.mean(figures), np.std(figures, ddof=1)
        assert row[2] == "1, 2" and row[3] == "2"
        assert row[4] == f"{mean:.2f} ± {std:.2f}"
        if row[1] == "act":  # the preset's number is ACT's; quickstart has none for standard
            assert row[5] == f"{PAPER:.2f}"
            assert row[6] == f"{mean - PAPER:+.2f}"
        else:
            assert row[5] == row[6] == "—"


def test_single_run_has_zero_std(runs_root: Path):
    (row,) = build_rows([load_run(runs_root / "sweep" / "act-s1")])
    assert row.n == 1 and row.std == 0.0


def test_every_plot_is_a_valid_non_blank_png(runs_root: Path):
    for run in find_runs([runs_root]):
        assert len(panels_for(run)) == (5 if run.method == "act" else 2)
        _assert_good_png(plot_run(run))


def test_markdown_links_png_files_next_to_it(report: tuple[Path, Path]):
    markdown_path, _ = report
    text = markdown_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(METHODS) * len(SEEDS)
    for link in links:
        assert "/" not in link
        _assert_good_png((markdown_path.parent / link).read_bytes())
    assert not list(markdown_path.parent.glob("*.tmp"))  # atomic writes left nothing behind


def test_html_is_self_contained_with_one_image_per_plot(report: tuple[Path, Path]):
    page = report[1].read_text()
    assert page.count(DATA_URI) == len(METHODS) * len(SEEDS)
    for encoded in re.findall(re.escape(DATA_URI) + r'([A-Za-z0-9+/=]+)"', page):
        _assert_good_png(base64.b64decode(encoded))
    for external in ("http://", "https://", 'src="file', "file://", "<link", "<script"):
        assert external not in page
    assert "<table>" in page and page.count("<tr>") == 1 + len(METHODS)


def test_key_figures_line(runs_root: Path):
    run = load_run(runs_root / "sweep" / "act-s1")
    line = key_figures(run)
    assert f"{run.summary['test_acc_last10_mean']:.2f}" in line and "NTM" in line


def test_incomplete_runs_are_skipped_with_a_warning(runs_root: Path, tmp_path: Path, caplog):
    _copy_run(runs_root / "sweep" / "act-s1", tmp_path / "done")
    partial = tmp_path / "nested" / "still-training"
    _copy_run(runs_root / "sweep" / "act-s2", partial)
    (partial / "summary.json").unlink()
    with caplog.at_level(logging.WARNING, logger="asymco.report"):
        runs = find_runs([tmp_path])
    assert [r.name for r in runs] == ["done"]
    assert "still-training" in caplog.text and "summary.json" in caplog.text
    with pytest.raises(UserError, match=r"missing summary\.json"):
        load_run(partial)


def test_no_runs_is_a_user_error(tmp_path: Path):
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(UserError, match="no complete run"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(UserError, match="not a directory"):
        make_report([tmp_path / "missing"], tmp_path / "out")


def test_text_from_files_is_escaped(runs_root: Path, tmp_path: Path):
    evil = '<b>bold</b> & "q" | $5 $x$'
    _edit_run(_copy_run(runs_root / "sweep" / "act-s1", tmp_path / "runs" / "evil"), preset=evil)
    markdown_path, html_path = make_report([tmp_path / "runs"], tmp_path / "out")
    page, text = html_path.read_text(), markdown_path.read_text()
    assert "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;q&quot;" in page
    assert "<b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    (row,) = _table_rows(text)
    assert len(row) == 7 and row[0] == "&lt;b&gt;bold&lt;/b&gt; &amp; \"q\" \\| $5 $x$"


def test_forget_rate_footnote(runs_root: Path, tmp_path: Path):
    _edit_run(_copy_run(runs_root / "sweep" / "standard-s1", tmp_path / "ct"), method="coteaching")
    markdown = markdown_table(build_rows(find_runs([tmp_path])))
    assert "coteaching †" in markdown and FORGET_RATE_NOTE in markdown
    base = {"noise": {"rate": 0.4}}
    cases = [("coteaching", None, True), ("jocor", 0.4, True), ("coteaching", 0.2, False),
             ("act", None, False), ("standard", 0.4, False)]
    for method, forget, expected in cases:
        config = {**base, "method": {"name": method, "forget_rate": forget}}
        run = Run(Path("x"), config, [], {"method": method})
        assert forget_rate_is_true_noise(run) is expected, (method, forget)
    own = markdown_table(build_rows(find_runs([runs_root])))
    assert FORGET_RATE_NOTE not in own


def test_shortened_runs_show_the_paper_number_without_comparing(runs_root: Path, tmp_path: Path):
    run_dir = _copy_run(runs_root / "sweep" / "standard-s1", tmp_path / "short")
    summary = json.loads((run_dir / "summary.json").read_text())
    for protocol, marked in ((True, False), (False, True)):
        summary.update(paper_test_acc=35.14, paper_protocol=protocol)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        rows = build_rows(find_runs([tmp_path]))
        assert rows[0].paper == 35.14 and rows[0].shortened is marked
        assert (rows[0].diff is None) is marked
        markdown = markdown_table(rows)
        assert ("standard ‡" in markdown) is marked and (SHORTENED_NOTE in markdown) is marked


def test_paper_protocol_means_the_presets_data_and_schedule():
    from asymco.api import resolve_config
    from asymco.engine.results import paper_protocol

    assert paper_protocol(resolve_config("cifar100n-sym20", [])) is True
    for change in ("data.subset=2000", "data.test_subset=500", "train.epochs=8"):
        assert paper_protocol(resolve_config("cifar100n-sym20", [change])) is False, change
    # A reference number of the user's own is compared as asked.
    assert paper_protocol(resolve_config("cifar100n-sym20", ["paper_test_acc=50"])) is None


def test_report_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path,
                                             chromium):
    shot = tmp_path / "shot.png"
    start = time.perf_counter()
    done = chromium(f"--screenshot={shot}", "--window-size=1200,3000",
                    report[1].resolve().as_uri())
    seconds = time.perf_counter() - start
    assert shot.is_file(), f"no screenshot after {seconds:.1f}s: {done.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (3000, 1200)
    assert pixels.std() > 20.0, f"screenshot looks blank (std {pixels.std():.1f})"
