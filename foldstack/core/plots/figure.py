"""The plots' shared canvas: every PNG is WIDTH_PX wide at DPI, drawn with matplotlib's object-oriented API on
an Agg canvas (never pyplot), so no GUI backend is touched and no global matplotlib state changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100
WIDTH_PX = 1200  # every PNG; the height follows the content (models, classes), at least MIN_HEIGHT_PX
MIN_HEIGHT_PX = 400
ENSEMBLE = "ensemble"
ENSEMBLE_COLOR = "#d62728"
OTHER_COLOR = "#1f77b4"


def new_figure(height_px: float):
    """A constrained-layout figure WIDTH_PX wide and `height_px` (at least MIN_HEIGHT_PX) tall."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib
    from matplotlib.figure import Figure  # deferred: matplotlib

    height = max(int(round(height_px)), MIN_HEIGHT_PX)
    figure = Figure(figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure, path: Path) -> Path:
    """Write the figure at its own size (no tight bounding box: the PNG is exactly the stated pixels)."""
    figure.savefig(path, dpi=DPI)
    return path


def note_figure(path: Path, title: str, note: str) -> Path:
    """A PNG that says why its plot is not drawn (the file still exists: DVC declares it as an output)."""
    figure = new_figure(MIN_HEIGHT_PX)
    ax = figure.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=12, wrap=True, transform=ax.transAxes)
    return save(figure, path)


def annotate_cells(ax, values, fmt: str, threshold: float) -> None:
    """Write each cell's value on a heatmap, white on dark cells."""
    for (row, col), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        color = "white" if abs(value) > threshold else "black"
        ax.text(col, row, format(value, fmt), ha="center", va="center", color=color, fontsize=9)
