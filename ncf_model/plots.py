"""Evaluation plots as matplotlib Figures, drawn with the Agg backend (no display, no pyplot).

`ncf_model.tracking` logs them as MLflow artifacts; nothing here does I/O.

    hr_at_k_figure           sampled HR@K for K = 1..50, one line per model
    training_curves_figure   loss and validation HR/NDCG per epoch
    candidates_figure        every family's validation and test score, the served one marked
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg, whatever the backend
    return figure


def hr_at_k_figure(curves: Mapping[str, Sequence[float]], *, title: str,
                   mark_k: int | None = None) -> Figure:
    """HR@K against K (1-based) for each named curve; a dotted line at `mark_k`."""
    if not curves or not all(curves.values()):
        raise ValueError("hr_at_k_figure needs at least one non-empty curve")
    figure = _figure(6.0, 4.0)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), list(curve), label=name, linewidth=1.5)
    if mark_k is not None:
        axes.axvline(mark_k, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="K", ylabel="HR@K (sampled)", ylim=(0.0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def training_curves_figure(history: Sequence[Mapping[str, float]], *, title: str) -> Figure:
    """Left: the training loss per epoch; right: every `val_*` metric per epoch.

    `history` is the train stage's list of per-epoch metric dicts (training_history.json).
    """
    if not history:
        raise ValueError("training_curves_figure needs at least one epoch of history")
    epochs = list(range(1, len(history) + 1))
    figure = _figure(9.0, 3.6)
    loss_axes, val_axes = figure.subplots(1, 2)
    if all("loss" in row for row in history):
        loss_axes.plot(epochs, [row["loss"] for row in history], marker="o", markersize=3)
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="loss")
    loss_axes.grid(alpha=0.3)
    keys = sorted({key for row in history for key in row if key.startswith("val_")})
    for key in keys:
        val_axes.plot([e for e, row in zip(epochs, history, strict=True) if key in row],
                      [row[key] for row in history if key in row], marker="o", markersize=3,
                      label=key.removeprefix("val_"))
    val_axes.set(xlabel="epoch", ylabel="validation", title="validation (sampled)")
    val_axes.grid(alpha=0.3)
    if keys:
        val_axes.legend(loc="lower right")
    figure.suptitle(title)
    return figure


def candidates_figure(rows: Sequence[Mapping[str, Any]], *, metric: str,
                      served: str) -> Figure:
    """Validation `metric` (the one that chose) and its test twin per family; the served
    family's bars are outlined."""
    fig = _figure(6.0, 3.2)
    ax = fig.add_subplot()
    names = [str(row["family"]) for row in rows]
    test_metric = "test_" + metric.removeprefix("val_")
    width = 0.4
    for offset, key, label in ((-width / 2, metric, "validation (chooses)"),
                               (width / 2, test_metric, "test (reported)")):
        values = [float(row.get(key) or 0.0) for row in rows]
        bars = ax.bar([i + offset for i in range(len(rows))], values, width, label=label)
        for bar, name in zip(bars, names, strict=True):
            if name == served:
                bar.set_edgecolor("black")
                bar.set_linewidth(2)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel(metric.removeprefix("val_"))
    ax.set_title(f"candidates: {served} served")
    ax.legend(fontsize="small")
    return fig
