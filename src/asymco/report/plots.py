"""One PNG figure per run, drawn from its `metrics.jsonl` with matplotlib's Agg backend.

Panels (those without data for the run's method are left out):

1. test accuracy per epoch of the reported net (ACT's RTM) and of ACT's NTM;
2. precision, recall and F1 of the selected "clean" subset against the true labels;
3. the share of training samples selected and the share of robust batches with mining on;
4. the learning-rate plan of both nets;
5. ACT only: the memorisation gap per epoch against the mining threshold tau.

Epochs are numbered from 1, as in the training progress lines; warmup epochs are shaded.
The figure is drawn on a `Figure` with an explicit Agg canvas rather than through pyplot, so
nothing needs a display and the global backend of a host process (e.g. Jupyter) is untouched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from asymco.report.collect import Run

DPI = 100
PANEL_WIDTH_IN = 6.0
PANEL_HEIGHT_IN = 3.6
WARMUP_COLOR = "#d9d9d9"
COLORS = {
    "rtm": "#1f77b4",
    "ntm": "#ff7f0e",
    "precision": "#2ca02c",
    "recall": "#d62728",
    "f1": "#9467bd",
    "selected": "#1f77b4",
    "mining": "#ff7f0e",
    "clean": "#7f7f7f",
    "gap": "#8c564b",
    "tau": "#d62728",
}


def plain(text: str) -> str:
    """Text from a run's files made safe for matplotlib (no mathtext from `$`)."""
    return text.replace("$", r"\$")


def _epochs(run: Run) -> list[int]:
    return [int(row.get("epoch", i)) + 1 for i, row in enumerate(run.metrics)]


def _nan(values: list[float | None], scale: float = 1.0) -> list[float]:
    return [math.nan if v is None else v * scale for v in values]


def _warmup_end(run: Run) -> int:
    """Number of warmup epochs: from the `phase` field, else `train.warmup_epochs`."""
    phases = [row.get("phase") for row in run.metrics]
    if any(p is not None for p in phases):
        return sum(1 for p in phases if p == "warmup")
    train = run.config.get("train") if isinstance(run.config.get("train"), dict) else {}
    warmup = train.get("warmup_epochs", 0)
    return min(int(warmup), len(run.metrics)) if isinstance(warmup, int) else 0


def _line(
    ax: Axes, run: Run, key: str, label: str, color: str, scale: float = 1.0, style: str = "-"
) -> None:
    marker = "o" if len(run.metrics) <= 40 else None
    ax.plot(
        _epochs(run),
        _nan(run.series(key), scale),
        style,
        color=color,
        label=label,
        marker=marker,
        markersize=3,
        linewidth=1.6,
    )


def _accuracy(ax: Axes, run: Run) -> None:
    two_nets = run.has("test_acc_ntm")
    _line(ax, run, "test_acc", "RTM (reported)" if two_nets else "reported net", COLORS["rtm"])
    if two_nets:
        _line(ax, run, "test_acc_ntm", "NTM", COLORS["ntm"], style="--")
    ax.set_title("Test accuracy")
    ax.set_ylabel("test accuracy (%)")


def _selection(ax: Axes, run: Run) -> None:
    _line(ax, run, "sel_precision", "precision", COLORS["precision"], 100.0)
    _line(ax, run, "sel_recall", "recall", COLORS["recall"], 100.0, "--")
    _line(ax, run, "sel_f1", "F1", COLORS["f1"], 100.0, ":")
    ax.set_title("Selected subset vs. true labels")
    ax.set_ylabel("score (%)")


def _shares(ax: Axes, run: Run) -> None:
    if run.has("sel_fraction"):
        _line(ax, run, "sel_fraction", "samples selected", COLORS["selected"], 100.0)
    if run.has("mining_fraction"):
        _line(
            ax,
            run,
            "mining_fraction",
            "robust batches with mining on",
            COLORS["mining"],
            100.0,
            "--",
        )
    noise = run.summary.get("noise_rate_actual")
    if isinstance(noise, (int, float)):
        ax.axhline(
            100.0 * (1.0 - noise),
            color=COLORS["clean"],
            linestyle=":",
            linewidth=1.2,
            label=f"clean labels ({100.0 * (1.0 - noise):.1f} %)",
        )
    ax.set_title("Selection and mining")
    ax.set_ylabel("share (%)")
    ax.set_ylim(-3, 103)


def _learning_rate(ax: Axes, run: Run) -> None:
    label = "RTM / reported net" if run.has("lr_ntm") else "reported net"
    _line(ax, run, "lr", label, COLORS["rtm"])
    if run.has("lr_ntm"):
        _line(ax, run, "lr_ntm", "NTM", COLORS["ntm"], style="--")
    ax.set_title("Learning-rate plan")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def _memorization(ax: Axes, run: Run) -> None:
    _line(ax, run, "memorization_gap", "memorisation gap", COLORS["gap"])
    tau = run.tau
    if tau is not None:
        ax.axhline(
            tau,
            color=COLORS["tau"],
            linestyle="--",
            linewidth=1.4,
            label=f"τ = {tau:g} (mining on below)",
        )
    ax.set_title("Memorisation gap (Acc_NTM − Acc_RTM) / Acc_RTM")
    ax.set_ylabel("gap (ratio)")


Panel = Callable[[Axes, Run], None]


def panels_for(run: Run) -> list[Panel]:
    """The panels this run has data for, in display order.

    Args:
        run: The run.

    Returns:
        Drawing functions, each taking an `Axes` and the run.
    """
    chosen: list[Panel] = [_accuracy]
    if any(run.has(k) for k in ("sel_precision", "sel_recall", "sel_f1")):
        chosen.append(_selection)
    if run.has("sel_fraction") or run.has("mining_fraction"):
        chosen.append(_shares)
    chosen.append(_learning_rate)
    if run.has("memorization_gap"):
        chosen.append(_memorization)
    return chosen


def figure_title(run: Run) -> str:
    """The figure's title: preset / method / seed and the run directory's name."""
    return run.title


def plot_run(run: Run) -> bytes:
    """Draw one run's figure.

    Args:
        run: The run.

    Returns:
        The figure as PNG bytes (about 1200 px wide at 100 dpi).
    """
    chosen = panels_for(run)
    ncols = 2
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(PANEL_WIDTH_IN * ncols, PANEL_HEIGHT_IN * nrows + 0.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    warmup = _warmup_end(run)
    for ax, draw in zip(axes, chosen, strict=False):
        if warmup:
            ax.axvspan(
                0.5,
                warmup + 0.5,
                color=WARMUP_COLOR,
                alpha=0.6,
                linewidth=0,
                label=f"warmup ({warmup} epochs)",
            )
        draw(ax, run)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(_epochs(run)) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    fig.suptitle(plain(figure_title(run)), fontsize=13)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
