"""The shared look of every report figure: style, labels, figure set-up, parameter axes and reference lines.

Figure functions (``analysis/plots.py``, ``analysis/curves.py``) draw inside :func:`styled`, return a :class:`Plot`
or raise :class:`Skip`.
Parameter axes (:func:`param_axis`) span the searched range; a log-scaled parameter gets a log axis whose ticks are
a short 1-2-5 (or 1-3, or decade) sequence inside the range, printed as plain numbers, and no minor-tick labels, so
labels never crowd or overlap (:func:`log_ticks`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from analysis.load import Param  # noqa: E402
from moco.vocabulary import COMPLETED, DIVERGED, ERRORED, PENDING, PRUNED, RUNNING  # noqa: E402

#: one style for every figure: readable at slide size
STYLE = {
    "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight", "font.size": 12, "axes.titlesize": 13,
    "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 10,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "lines.linewidth": 1.6, "svg.fonttype": "none", "figure.constrained_layout.use": True,
}
PANEL = (5.4, 4.0)  #: inches per panel
CMAP = "viridis"
STATUS_STYLE = {  # learning-curve style per trial status
    COMPLETED: dict(color="tab:blue", ls="-", alpha=0.55, lw=1.4),
    PRUNED: dict(color="0.55", ls="--", alpha=0.8, lw=1.2),
    DIVERGED: dict(color="tab:red", ls=":", alpha=0.9, lw=1.4),
    ERRORED: dict(color="tab:red", ls=":", alpha=0.9, lw=1.4),
    RUNNING: dict(color="tab:purple", ls="-.", alpha=0.8, lw=1.2),
    PENDING: dict(color="tab:purple", ls="-.", alpha=0.8, lw=1.2),
}
BASELINE_MARK = dict(marker="*", s=260, color="tab:red", edgecolor="black", linewidth=0.8, zorder=5)
#: the raw-pixel reference: a horizontal line at the metric of raw pixels (same bank and protocol)
RAW_LABEL = "raw pixels"
RAW_STYLE = dict(color="tab:brown", ls=(0, (4, 2, 1, 2)), lw=1.6, zorder=3)
STUDY_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
MAX_LOG_TICKS = 6

LABELS = {
    "temperature": "temperature τ", "hard_negative_ratio": "hard-negative ratio ρ (fraction kept)",
    "false_negative_threshold": "false-negative threshold δ (cosine)", "queue_size": "queue size K (keys)",
    "dual_view_weight": "dual-view weight λ", "lr": "learning rate", "momentum": "key-encoder momentum m",
    "batch_size": "batch size (images)", "weight_decay": "weight decay", "epochs": "epochs",
    "val_knn_top1": "val kNN top-1 (%)", "best_val_knn_top1": "best val kNN top-1 (%)",
    "val_probe_top1": "val linear-probe top-1 (%)",
    "test_knn_top1": "test kNN top-1 (%)", "linear_top1": "linear-probe top-1 (%)", "loss": "loss",
    "cpu_hours": "CPU-hours", "gpu_hours": "GPU-hours", "images_seen": "images seen",
    "wall_s": "wall time (s)", "compute": "compute (passes of the training split)",
}


class Skip(Exception):
    """A figure cannot be drawn for this study; the message says why (shown in the report)."""


@dataclass
class Plot:
    """A drawn figure, the data behind it (one CSV per entry of ``tables``) and a caption."""

    name: str
    fig: plt.Figure
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    caption: str = ""


def label(name: str) -> str:
    """Axis label with units for a parameter or metric name."""
    return LABELS.get(name, name.replace("_", " "))


def styled(func: Callable[..., Plot]) -> Callable[..., Plot]:
    """Draw inside the shared style (rcParams) so every figure looks the same."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> Plot:
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def new_figure(n_panels: int = 1, ncols: int | None = None) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with ``n_panels`` panels of the shared size, returned as a flat list (unused panels removed)."""
    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL[0] * ncols, PANEL[1] * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.remove()
    return fig, flat[:n_panels]


def save_figure(fig: plt.Figure, directory: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` into ``directory`` and close the figure."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.svg"]
    with plt.rc_context(STYLE):
        for p in paths:
            fig.savefig(p)
    plt.close(fig)
    return paths


def categorical_positions(p: Param, values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Positions 0..n-1 of categorical values (declared order, then unseen ones) and their tick labels."""
    choices = [str(c) for c in (p.choices or [])]
    for v in pd.unique(values.dropna().astype(str)):
        if v not in choices:
            choices.append(v)
    norm = values.astype(object).map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    pos = norm.map({c: i for i, c in enumerate(choices)}).astype(float)
    return pos.to_numpy(), choices


def log_ticks(lo: float, hi: float, max_ticks: int = MAX_LOG_TICKS) -> list[float]:
    """Tick positions for a log axis over [lo, hi] (lo > 0): the densest of m·10^k with m in {1, 2, 5}, {1, 3} or
    {1} that gives at most ``max_ticks`` ticks inside the range (decades thinned to every j-th beyond that); a range
    too narrow for two such ticks gets three geometrically spaced ticks rounded to two significant digits."""
    if not (lo > 0 and hi > lo):
        return [lo] if lo > 0 else []
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    eps = 1e-9
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** k for k in decades for m in mantissas if lo * (1 - eps) <= m * 10.0 ** k <= hi * (1 + eps)]
        if len(ticks) <= max_ticks:
            break
    else:  # many decades: every j-th one
        ticks = ticks[::math.ceil(len(ticks) / max_ticks)]
    if len(ticks) < 2:
        ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 3)})
    return [float(f"{t:.12g}") for t in ticks]


def param_range(p: Param, values: np.ndarray) -> tuple[float, float]:
    """The searched range of ``p`` widened to hold every finite value (the baseline may lie outside)."""
    v = values[np.isfinite(values)]
    lows = [x for x in (p.low, v.min() if v.size else None) if x is not None]
    highs = [x for x in (p.high, v.max() if v.size else None) if x is not None]
    return (float(min(lows)), float(max(highs))) if lows and highs else (math.nan, math.nan)


def log_axis(ax: plt.Axes, lo: float, hi: float, axis: str = "x") -> None:
    """Log-scale ``ax``'s axis over [lo, hi] (padded 4 % of the log span) with :func:`log_ticks` as plain numbers."""
    scale, lim = (ax.set_xscale, ax.set_xlim) if axis == "x" else (ax.set_yscale, ax.set_ylim)
    scale("log")
    if lo > 0 and hi > lo:
        pad = (math.log10(hi) - math.log10(lo)) * 0.04
        lim(10 ** (math.log10(lo) - pad), 10 ** (math.log10(hi) + pad))
    which = ax.xaxis if axis == "x" else ax.yaxis
    which.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    which.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def param_axis(ax: plt.Axes, p: Param, values: pd.Series, axis: str = "x") -> np.ndarray:
    """Set up ``ax``'s axis for parameter ``p`` (categorical ticks; numbers over the searched range, log-scaled
    parameters on a :func:`log_axis`); return the plotting coordinates of ``values``."""
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(label(p.name))
    if p.type == "categorical":
        pos, choices = categorical_positions(p, values)
        (ax.set_xticks if axis == "x" else ax.set_yticks)(range(len(choices)), choices)
        return pos
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    lo, hi = param_range(p, x)
    if p.log and lo > 0:
        log_axis(ax, lo, hi, axis)
    elif math.isfinite(lo) and hi > lo:
        pad = (hi - lo) * 0.04
        (ax.set_xlim if axis == "x" else ax.set_ylim)(lo - pad, hi + pad)
    return x


def raw_line(ax: plt.Axes, value: float, text: str = RAW_LABEL, color: str | None = None) -> bool:
    """A horizontal reference line at the raw-pixel value of the metric, labelled ``text``; nothing (False) when
    the value is missing."""
    if value is None or not math.isfinite(value):
        return False
    style = dict(RAW_STYLE, **({"color": color} if color else {}))
    ax.axhline(value, label=text, **style)
    return True


def legend_handles(raw: bool) -> list[Line2D]:
    """Legend entries of the baseline marker and, when ``raw``, of the raw-pixel reference line."""
    handles = [Line2D([], [], ls="", marker="*", ms=14, color="tab:red", mec="black", label="baseline")]
    return handles + ([Line2D([], [], label=RAW_LABEL, **RAW_STYLE)] if raw else [])
