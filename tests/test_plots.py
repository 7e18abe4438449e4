"""ncf_model.plots: the figures carry the data they were given."""

from __future__ import annotations

import io

import pytest

from ncf_model.plots import hr_at_k_figure, training_curves_figure


def test_hr_at_k_figure_draws_one_line_per_curve() -> None:
    figure = hr_at_k_figure({"ncf": [0.2, 0.5, 0.7], "popularity": [0.1, 0.2, 0.3]},
                            title="test", mark_k=2)
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines() if not
             line.get_label().startswith("_")}
    assert list(lines["ncf"].get_xdata()) == [1, 2, 3]
    assert list(lines["popularity"].get_ydata()) == [0.1, 0.2, 0.3]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="non-empty"):
        hr_at_k_figure({"ncf": []}, title="t")


def test_training_curves_figure_plots_loss_and_every_validation_metric() -> None:
    history = [{"loss": 0.7, "samples_per_s": 1e5, "val_hr_10": 0.4, "val_ndcg_10": 0.2},
               {"loss": 0.5, "samples_per_s": 1e5, "val_hr_10": 0.6, "val_ndcg_10": 0.3}]
    figure = training_curves_figure(history, title="run")
    loss_axes, val_axes = figure.axes
    assert list(loss_axes.get_lines()[0].get_ydata()) == [0.7, 0.5]
    drawn = {line.get_label(): list(line.get_ydata()) for line in val_axes.get_lines()}
    assert drawn == {"hr_10": [0.4, 0.6], "ndcg_10": [0.2, 0.3]}
    with pytest.raises(ValueError, match="at least one epoch"):
        training_curves_figure([], title="run")
