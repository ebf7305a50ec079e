"""benchmarks/label_issues.py (asymco against cleanlab) runs end to end in its quick mode."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "label_issues.py"


def _need_cleanlab() -> None:
    if importlib.util.find_spec("cleanlab") is not None:
        return
    message = 'cleanlab is not installed (pip install "asymco[compare]")'
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(message + "; CI installs it with the test extra")
    pytest.skip(message)


@pytest.mark.slow
@pytest.mark.real_data
def test_the_quick_comparison_covers_both_data_sets_with_figures_in_range(shared_data, tmp_path):
    _need_cleanlab()
    cmd = [sys.executable, str(SCRIPT), "--data-dir", str(shared_data), "--out", str(tmp_path),
           "--quick"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "results.json").read_text())
    rows = printed["rows"]
    assert [r["preset"] for r in rows] == ["cifar100n-human", "cifar100n-sym20"]
    for row in rows:
        assert 0 < row["noise_rate"] < 1
        for tool in ("asymco", "asymco_guard", "cleanlab"):
            f = row[tool]
            for key in ("auroc", "precision", "recall", "f1"):
                assert math.isfinite(f[key]) and 0 <= f[key] <= 1, (tool, key, f[key])
            assert 0 <= f["flagged"] <= row["train_images"]
            assert f["wall_seconds"] > 0
    md = (tmp_path / "table.md").read_text()
    assert md in done.stderr  # the table printed is the table written
    for name in ("CIFAR-100N human", "CIFAR-100 sym-20%"):
        assert md.count(f"| {name} (") == 3  # one line per tool: ACT faithful, guarded, cleanlab
    assert printed["settings"]["collapse_guard"] == "both"
    # each side's runs are in OUT: an ACT run without and one with the guard, K cleanlab folds
    for folder, guard in (("act", False), ("act-guard", True)):
        run = tmp_path / "cifar100n-human" / folder
        assert (run / "label_issues.csv").is_file()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["method"]["collapse_guard"] is guard
    assert len(list((tmp_path / "cifar100n-sym20" / "cleanlab").glob("fold*/run"))) == 2


def test_without_cleanlab_it_says_which_extra_to_install(tmp_path, monkeypatch, capsys):
    """A missing cleanlab stops the benchmark at once with one sentence naming the extra."""
    spec = importlib.util.spec_from_file_location("label_issues_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("cleanlab", "cleanlab.filter", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)  # import cleanlab -> ImportError
    assert bench.main(["--out", str(tmp_path / "out"), "--quick"]) == 2
    assert 'pip install "asymco[compare]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
