"""Charts for the Dagster UI (PNG, embedded in Markdown metadata), drawn with matplotlib.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: no
global state, no display, safe in the threads and processes of a run.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(width: float, height: float) -> "Figure":
    # Imported when a chart is drawn: matplotlib takes 0.4 s to import, and every run's process loads this module
    # with the code location, also the near-real-time runs that draw nothing.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _png(fig: "Figure") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def grouped_bar_png(title: str, categories: Sequence[str], groups: dict[str, Sequence[float]], ylabel: str = "",
                    width: int = 720, values_on_bars: bool = True) -> bytes:
    """Vertical bars per category, one bar per group side by side (e.g. a funnel against its holdout). Many groups
    (eight attribution models) read better without a value on every bar: the axis carries the scale."""
    from matplotlib.ticker import StrMethodFormatter

    fig = _figure(width / 100, 3.6)
    ax = fig.add_subplot()
    n = max(len(groups), 1)
    step = 0.8 / n
    for k, (name, values) in enumerate(groups.items()):
        xs = [i - 0.4 + step * (k + 0.5) for i in range(len(categories))]
        rects = ax.bar(xs, [float(v) for v in values], width=step, label=name, color=PALETTE[k % len(PALETTE)])
        if values_on_bars:
            ax.bar_label(rects, labels=[f"{float(v):,.0f}" for v in values], padding=2, fontsize=8)
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xticks(range(len(categories)), list(categories))
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if len(groups) > 3:  # beside the plot: over the bars it would hide some of them
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    else:
        ax.legend(frameon=False)
    return _png(fig)


def line_chart_png(title: str, x: Sequence, series: dict[str, Sequence[float]], ylabel: str = "",
                   width: int = 720) -> bytes:
    """One line per series over a shared x axis (days, weeks)."""
    fig = _figure(width / 100, 3.4)
    ax = fig.add_subplot()
    for k, (name, values) in enumerate(series.items()):
        ax.plot(list(x), [float(v) for v in values], marker="o", markersize=3, label=name, color=PALETTE[k % len(PALETTE)])
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if len(x) > 8:
        fig.autofmt_xdate()
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def funnel_png(title: str, stages: Sequence[str], counts: Sequence[float], width: int = 720) -> bytes:
    """A funnel: one centred bar per stage, widest first, each with its count and the conversion from the stage
    before."""
    fig = _figure(width / 100, 0.55 * max(len(stages), 1) + 1.0)
    ax = fig.add_subplot()
    values = [float(v) for v in counts]
    top = max(values) if values and max(values) > 0 else 1.0
    ys = list(range(len(stages)))[::-1]
    ax.barh(ys, values, left=[(top - v) / 2 for v in values], color=[PALETTE[i % len(PALETTE)] for i in range(len(values))],
            height=0.8)
    for i, (y, v) in enumerate(zip(ys, values)):
        rate = "" if i == 0 or values[i - 1] <= 0 else f"  ({v / values[i - 1]:.0%} of {stages[i - 1]})"
        ax.text(top / 2, y, f"{v:,.0f}{rate}", ha="center", va="center", fontsize=9, color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    ax.set_yticks(ys, list(stages))
    ax.set_xticks([])
    ax.set_title(title, loc="left")
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    return _png(fig)
