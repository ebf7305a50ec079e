"""The practitioner's API: train ACT on your own images and get the suspect labels back.

    result = asymco.fit(images=x, labels=y, class_names=names)       # arrays
    result = asymco.fit(folder="photos/")                            # <folder>/<class>/<image>
    issues = asymco.find_label_issues(images=x, labels=y)            # (N,) bool mask

Arrays are saved into the run directory (`inputs-<digest>.npz`) so the run stays
self-describing and can be resumed; everything else is what `asymco train --data ...` does. The
file is named by its content and written atomically before the run's lock is taken (training
takes it), so a second `fit` on a directory whose run is still writing (or already finished)
adds its own file, is refused, and removes it: it never replaces the arrays the run reads.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from asymco import api
from asymco.data.arrays import as_uint8_images
from asymco.files import write_atomic
from asymco.label_issues import COLUMNS, read_label_issues
from asymco.text import csv_value
from asymco.untrusted import decoding


@dataclass(frozen=True)
class FitResult:
    model: torch.nn.Module
    """The robust model (RTM), eval mode."""
    label_issues: dict[str, np.ndarray]
    """label_issues.csv as columns in training-set order (`index` = position in your data)."""
    run_dir: Path
    summary: dict = field(repr=False)

    @property
    def is_label_issue(self) -> np.ndarray:
        return self.label_issues["is_label_issue"]

    def ranked(self) -> np.ndarray:
        """Indices of your training samples, most suspect label first."""
        scores = self.label_issues["label_score"]
        return np.lexsort((np.arange(len(scores)), scores))


def fit(
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    folder: str | Path | None = None,
    csv_file: str | Path | None = None,
    test: str | Path | None = None,
    class_names: list[str] | None = None,
    settings: dict[str, object] | None = None,
    out_dir: str | Path | None = None,
) -> FitResult:
    """Train ACT on your data and return the robust model with the per-sample label table.

    Args:
        images: (N, H, W) or (N, H, W, C) images, C in {1, 3, 4}, uint8 or floats in [0, 1],
            any side: up to 64 px they are padded or resized for the paper's CNN, larger ones
            train an ImageNet ResNet-50 (see `asymco train --data npz:FILE`).
        labels: (N,) integer labels, possibly wrong.
        folder: Instead of arrays: an image folder `<folder>/<class>/<image>`.
        csv_file: Instead of arrays: a CSV with `path,label` columns.
        test: A test split of the same kind as `folder`/`csv_file` (else a share is held out).
        class_names: Names of the classes of `labels`.
        settings: Overrides such as {"train.epochs": 30}, as `--set` takes them.
        out_dir: Run directory (default: runs/own-<time>).

    Returns:
        FitResult with `model`, `label_issues` (columns in data order), `run_dir`, `summary`.
    """
    run_dir = (
        Path(out_dir) if out_dir else Path("runs") / datetime.now().strftime("own-%Y%m%d-%H%M%S")
    )
    if (images is None) == (folder is None and csv_file is None):
        raise api.UserError("pass either images= and labels=, or folder= or csv_file=")
    created = not run_dir.exists()
    saved = None  # the arrays file this call added, removed again if the run does not start
    try:
        if images is not None:
            path, saved = _save_arrays(run_dir, images, labels, class_names)
            spec = f"npz:{path}"
        else:
            spec = f"folder:{folder}" if folder is not None else f"csv:{csv_file}"
        test_spec = None if test is None else f"{spec.split(':', 1)[0]}:{test}"
        overrides = [f"{k}={v}" for k, v in (settings or {}).items()]
        cfg = api.resolve_own_data(spec, test_spec, overrides)
        result = api.train(cfg, out_dir=run_dir)
    except BaseException:
        _forget_inputs(run_dir, saved, created)
        raise
    return FitResult(
        result.model, _read_table(run_dir / "label_issues.csv"), run_dir, result.summary
    )


def find_label_issues(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    return_ranking: bool = False,
    **fit_options,
) -> np.ndarray:
    """(N,) bool mask of the labels ACT judges wrong, or (with `return_ranking`) all indices
    ordered from most to least suspect. `fit_options` go to `fit`."""
    result = fit(images=images, labels=labels, **fit_options)
    return result.ranked() if return_ranking else result.is_label_issue


def _save_arrays(run_dir: Path, images, labels, class_names) -> tuple[Path, Path | None]:
    """The arrays' file in `run_dir`, and that path again when this call added it (None when
    the same arrays were already there)."""
    if labels is None:
        raise api.UserError("images= needs labels= beside it")
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise api.UserError(f"{len(images)} images but {len(labels)} labels")
    images = as_uint8_images(images, "images=")  # floats in [0, 1] and RGBA are accepted
    if not np.issubdtype(labels.dtype, np.integer):
        raise api.UserError(f"labels must be integers, got {labels.dtype}")
    arrays = {"x_train": images, "y_train": labels}
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"inputs-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    added = not path.exists()
    write_atomic(path, data)  # same name, same bytes: rewriting also mends a damaged copy
    return path, path if added else None


def _forget_inputs(run_dir: Path, saved: Path | None, created: bool) -> None:
    """After a failure, remove the arrays file this call added unless a run it started names
    it (its --resume needs them), and the run directory this call created if that left it
    empty."""
    if saved is not None and not _named_by_run(run_dir, saved):
        saved.unlink(missing_ok=True)
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _named_by_run(run_dir: Path, arrays: Path) -> bool:
    """Whether the run in `run_dir` (its config.yaml) trains on `arrays`."""
    try:
        return arrays.name in (run_dir / "config.yaml").read_text(errors="replace")
    except OSError:
        return False


_FLOAT_COLUMNS = ("label_score", "given_label_prob", "predicted_label_prob", "selected_share")


def _read_table(path: Path) -> dict[str, np.ndarray]:
    with decoding(path, "the label table", "train again into a new directory"):
        return _table(sorted(read_label_issues(path), key=lambda r: int(r["index"])))


def _table(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    table: dict[str, np.ndarray] = {}
    for column in COLUMNS:
        values = [r[column] for r in rows]
        if column in ("index", "given_label", "predicted_label"):
            table[column] = np.array(values, dtype=np.int64)
        elif column == "is_label_issue":
            table[column] = np.array([v == "True" for v in values])
        elif column in _FLOAT_COLUMNS:
            table[column] = np.array([float(v) if v else np.nan for v in values])
        elif column == "selected_epochs":
            table[column] = np.array([int(v) if v else -1 for v in values])
        else:  # the paths and class names, as the run was given them
            table[column] = np.array([csv_value(v) for v in values])
    return table
