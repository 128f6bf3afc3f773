"""Figures of a study report that compare trials: one function per figure, all drawn in one shared style
(``analysis/style.py``). The figures over epochs and trials in time order are ``analysis/curves.py``.

Every figure function returns a :class:`Plot` (the figure plus the table(s) behind it) or raises :class:`Skip`
with a one-line reason the report prints instead. Nothing here writes files except :func:`save_figure`.
Parameters searched on a log scale (``study.json`` space, ``"log": true``) get log axes with plain-number ticks.
Figures that compare trials take a study *at one fidelity* when given one (``analysis/fidelity.py``: every trial
at the same ASHA rung) and say which in their title; metric figures draw the raw-pixel value of the metric as a
reference line when the study recorded it.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import Param, Study  # noqa: E402
from analysis.style import (  # noqa: E402,F401 - Plot, Skip, label, save_figure are used through this module too
    BASELINE_MARK, CMAP, PANEL, STUDY_COLORS, Plot, Skip, categorical_positions, label, legend_handles, new_figure,
    param_axis, raw_line, save_figure, styled,
)
from moco.vocabulary import COMPLETED  # noqa: E402

TOO_FEW_SHORT = ("too few seeds to conclude", "too few seeds")


# ------------------------------------------------------------------------------------------------------------


def _view_title(study: Study) -> str:
    return (f"at {study.fidelity.label}" if study.fidelity is not None
            else "final values (each trial at its last report: fidelities mixed)")


@styled
def metric_vs_params(study: Study, final: Study | None = None) -> Plot:
    """Metric against each searched parameter, one panel per parameter, for the trials of ``study`` (a view at one
    fidelity when it has one, see ``analysis.fidelity``) and, when ``final`` is given, a second block of panels with
    every trial at its final value (fidelities mixed). Both blocks share the metric axis; points coloured by epochs
    reached, the baseline starred, the raw-pixel value of the metric as a reference line."""
    if not study.params:
        raise Skip("no parameters were searched")
    views = [v for v in (study, final) if v is not None]
    frames = [v.trials[np.isfinite(v.trials[v.metric])] for v in views]
    if frames[0].empty:
        raise Skip(f"no trial has a value of {study.metric}")
    raw = study.raw_pixel_value()
    ys = np.concatenate([f[study.metric].to_numpy(dtype=float) for f in frames] + [[raw] if math.isfinite(raw) else []])
    pad = (ys.max() - ys.min()) * 0.06 or 1.0
    ncols = min(len(study.params), 3)
    nrows = math.ceil(len(study.params) / ncols)
    fig = plt.figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows * len(views)))
    vmax = float(np.nanmax(study.trials["max_epochs"])) if study.trials["max_epochs"].notna().any() else None
    cols = ["trial_id", "trial_number", "status", "is_baseline", "epochs", study.metric] + [p.column for p in
                                                                                           study.params]
    tables = []
    for sub, v, t in zip(fig.subfigures(len(views), 1, squeeze=False).ravel(), views, frames):
        axes = list(sub.subplots(nrows, ncols, squeeze=False).ravel())
        for ax in axes[len(study.params):]:
            ax.remove()
        sc = None
        for ax, p in zip(axes, study.params):
            x = param_axis(ax, p, t[p.column])
            if p.type == "categorical":
                x = x + np.random.default_rng(0).uniform(-0.12, 0.12, size=len(x))
            sc = ax.scatter(x, t[study.metric], c=t["epochs"], cmap=CMAP, vmin=0, vmax=vmax, s=36,
                            edgecolor="black", linewidth=0.3)
            base = t["is_baseline"].to_numpy()
            if base.any():
                ax.scatter(x[base], t.loc[t["is_baseline"], study.metric], label="baseline", **BASELINE_MARK)
            raw_line(ax, raw)
            ax.set_ylim(ys.min() - pad, ys.max() + pad)
            ax.set_ylabel(label(study.metric))
        axes[0].legend(handles=legend_handles(math.isfinite(raw)), loc="best")
        if sc is not None:
            sub.colorbar(sc, ax=axes[:len(study.params)], label="epochs reached", shrink=0.8)
        sub.suptitle(_view_title(v) + (f" ({len(t)} trials)" if v.fidelity is None else ""))
        tables.append(t[cols].assign(view=v.fidelity_label))
    fig.suptitle(f"{study.name}: {label(study.metric)} vs searched parameters", fontsize=14, fontweight="bold")
    if study.fidelity is not None:
        caption = (f"Top: every trial that reached {study.fidelity.time_attr} {study.fidelity.level:g}, at its value "
                   f"there ({study.fidelity.label}); " + ("bottom: each trial at its last reported value (pruned "
                                                          "trials stopped early, so heights mix fidelities); "
                                                          if final is not None else ""))
    else:
        caption = "Each point is a trial (pruned trials at their last reported value); "
    caption += "colour = epochs reached" + ("; dash-dot line = raw pixels (median over trials)." if math.isfinite(raw)
                                            else ".")
    return Plot("metric_vs_params", fig, {"metric_vs_params": pd.concat(tables, ignore_index=True)}, caption)


def _bins(p: Param, values: pd.Series, n: int) -> tuple[pd.Series, list[str]]:
    """Bin a parameter's values: categories as-is, numbers into ``n`` equal (log-)width bins over the range."""
    if p.type == "categorical":
        pos, choices = categorical_positions(p, values)
        return pd.Series(pos, index=values.index), choices
    v = values.astype(float)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if p.low is not None and p.high is not None:
        lo, hi = min(lo, float(p.low)), max(hi, float(p.high))
    if hi <= lo:
        return pd.Series(0.0, index=values.index), [f"{lo:.3g}"]
    edges = np.geomspace(lo, hi, n + 1) if (p.log and lo > 0) else np.linspace(lo, hi, n + 1)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n - 1)
    return pd.Series(idx.astype(float), index=values.index), [f"{a:.3g}–{b:.3g}" for a, b in zip(edges, edges[1:])]


@styled
def interaction_heatmap(study: Study, x: str, y: str, bins: int = 4) -> Plot:
    """Mean metric of completed trials (of every trial at the rung, for a view at one fidelity) in bins of two
    parameters (cell text: mean and trial count)."""
    px, py = study.param(x), study.param(y)
    missing = [n for n, p in ((x, px), (y, py)) if p is None]
    if missing:
        raise Skip(f"{' and '.join(missing)} not searched")
    t = study.completed
    if len(t) < 2:
        raise Skip(f"needs at least 2 trials ({study.fidelity_label}), found {len(t)}")
    bx, lx = _bins(px, t[px.column], bins)
    by, ly = _bins(py, t[py.column], bins)
    cells = pd.DataFrame({"x_bin": bx, "y_bin": by, "value": t[study.metric]}).dropna()
    agg = cells.groupby(["y_bin", "x_bin"])["value"].agg(["mean", "count"]).reset_index()
    grid = np.full((len(ly), len(lx)), np.nan)
    for r in agg.itertuples():
        grid[int(r.y_bin), int(r.x_bin)] = r.mean
    fig, (ax,) = new_figure(1)
    fig.set_size_inches(PANEL[0] * 1.35, PANEL[1] * 1.2)
    im = ax.imshow(grid, origin="lower", cmap=CMAP, aspect="auto")
    for r in agg.itertuples():
        ax.text(r.x_bin, r.y_bin, f"{r.mean:.1f}\n(n={r.count})", ha="center", va="center", fontsize=9,
                color="white" if r.mean < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(lx)), lx, rotation=30, ha="right")
    ax.set_yticks(range(len(ly)), ly)
    ax.set_xlabel(label(x) + (" (log bins)" if px.log else ""))
    ax.set_ylabel(label(y) + (" (log bins)" if py.log else ""))
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=f"mean {label(study.metric)}")
    ax.set_title(f"{study.name}: {x} × {y}\n{_view_title(study)}", fontsize=11)
    table = agg.assign(view=study.fidelity_label, x_param=x, x_range=[lx[int(i)] for i in agg["x_bin"]], y_param=y,
                       y_range=[ly[int(i)] for i in agg["y_bin"]])
    return Plot(f"heatmap_{x}_x_{y}", fig, {f"heatmap_{x}_x_{y}": table},
                (f"Trials at {study.fidelity.label}" if study.fidelity is not None else "Completed trials only")
                + "; empty cells had no trial.")


@styled
def importance(table: pd.DataFrame, study_name: str, fidelity: str = "", warning: str = "") -> Plot:
    """Horizontal bars of parameter importance, one bar per evaluator (method named in the legend and title), each
    with its bootstrap interval (``ci_low``..``ci_high``) when the table has one; the title names the fidelity the
    trials were compared at, and ``warning`` (too few trials) is printed under the axes."""
    if table.empty:
        raise Skip("no importances were computed")
    methods = list(pd.unique(table["method"]))
    order = table.groupby("param")["importance"].mean().sort_values().index.tolist()
    fig, (ax,) = new_figure(1)
    fig.set_size_inches(PANEL[0] * 1.4, max(PANEL[1], 0.6 * len(order) * len(methods) + 1.5))
    height = 0.8 / len(methods)
    has_ci = {"ci_low", "ci_high"} <= set(table.columns) and table[["ci_low", "ci_high"]].notna().any().any()
    for j, m in enumerate(methods):
        rows = table[table["method"] == m].set_index("param").reindex(order)
        vals = rows["importance"].fillna(0)
        err = None
        if has_ci:
            err = np.nan_to_num(np.vstack([vals - rows["ci_low"], rows["ci_high"] - vals]).clip(min=0))
        ax.barh(np.arange(len(order)) + (j - (len(methods) - 1) / 2) * height, vals, height=height, xerr=err,
                capsize=3, error_kw=dict(lw=1.2, ecolor="0.2"), label=f"{m} (Optuna)",
                color=STUDY_COLORS[j % len(STUDY_COLORS)])
    ax.set_yticks(range(len(order)), [label(p) for p in order])
    ax.set_xlabel("importance (normalised, sum = 1 per method)" + (", 95 % bootstrap interval" if has_ci else ""))
    ax.legend(loc="lower right")
    ax.set_title(f"{study_name}: parameter importance ({', '.join(methods)})" + (f"\n{fidelity}" if fidelity else ""))
    if warning:
        fig.text(0.5, -0.02, warning, ha="center", va="top", color="tab:red", wrap=True)
    table = table.assign(view=fidelity) if fidelity else table
    return Plot("importance", fig, {"importance": table.reset_index(drop=True)},
                "Optuna importance evaluators over the study rebuilt from trials.csv "
                f"({fidelity or 'completed trials'})"
                + ("; whiskers: 95 % percentile interval over bootstrap resamples of the trials." if has_ci else "."))


@styled
def parallel_coordinates(study: Study, top: int = 10) -> Plot:
    """Parallel coordinates of the ``top`` completed trials (and the baseline, dashed black): one axis per
    searched parameter plus the metric, each scaled to its range (log parameters on a log scale)."""
    if not study.params:
        raise Skip("no parameters were searched")
    done = study.completed
    if len(done) < 2:
        raise Skip(f"needs at least 2 trials ({study.fidelity_label}), found {len(done)}")
    ranked = done.sort_values(study.metric, ascending=not study.maximize).head(top)
    base = study.baseline[study.baseline["status"] == COMPLETED].head(1)
    rows = pd.concat([ranked, base[~base["trial_id"].isin(ranked["trial_id"])]])
    axes_names = [p.column for p in study.params] + [study.metric]
    coords, ticks = {}, {}
    for p in study.params:
        col = rows[p.column]
        if p.type == "categorical":
            pos, choices = categorical_positions(p, col)
            span = max(len(choices) - 1, 1)
            coords[p.column] = pos / span
            ticks[p.column] = (choices[0], choices[-1])
        else:
            v = col.to_numpy(dtype=float)
            lo = float(p.low) if p.low is not None else np.nanmin(v)
            hi = float(p.high) if p.high is not None else np.nanmax(v)
            lo, hi = min(lo, np.nanmin(v)), max(hi, np.nanmax(v))
            f = np.log10 if (p.log and lo > 0) else (lambda a: a)
            coords[p.column] = (f(v) - f(lo)) / ((f(hi) - f(lo)) or 1)
            ticks[p.column] = (f"{lo:.3g}", f"{hi:.3g}")
    m = rows[study.metric].to_numpy(dtype=float)
    coords[study.metric] = (m - m.min()) / ((m.max() - m.min()) or 1)
    ticks[study.metric] = (f"{m.min():.2f}", f"{m.max():.2f}")
    fig, (ax,) = new_figure(1)
    fig.set_size_inches(max(PANEL[0] * 1.5, 1.9 * len(axes_names)), PANEL[1] * 1.3)
    cmap = plt.get_cmap(CMAP)
    xs = np.arange(len(axes_names))
    for i, (_, r) in enumerate(rows.iterrows()):
        ys = [coords[a][i] for a in axes_names]
        if r["is_baseline"] and r["trial_id"] not in set(ranked["trial_id"]):
            ax.plot(xs, ys, color="black", ls="--", lw=2, zorder=4)
        else:
            ax.plot(xs, ys, color=cmap(coords[study.metric][i]), lw=2.2 if i == 0 else 1.5, alpha=0.9)
    for x, a in zip(xs, axes_names):
        ax.axvline(x, color="0.3", lw=1)
        for y, text, va in ((-0.04, ticks[a][0], "top"), (1.04, ticks[a][1], "bottom")):
            ax.text(x, y, text, ha="center", va=va, fontsize=10, bbox=dict(fc="white", ec="none", pad=1))
    ax.set_xticks(xs, [label(a.removeprefix("param_")) for a in axes_names], rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.grid(False)
    ax.set_title(f"{study.name}: top {len(ranked)} trials (colour = {label(study.metric)}; baseline dashed)\n"
                 f"{_view_title(study)}", pad=18)
    cols = ["trial_id", "trial_number", "is_baseline", study.metric] + [p.column for p in study.params]
    table = rows[cols].assign(view=study.fidelity_label).reset_index(drop=True)
    return Plot("parallel_coordinates", fig, {"parallel_coordinates": table},
                "Each axis spans the searched range (min at the bottom, max at the top).")


@styled
def ablation(table: pd.DataFrame, metric: str, name: str = "ablation") -> Plot:
    """Left: per-variant mean with 95 % t-interval over seeds. Right: paired difference from the baseline with its
    95 % t-interval (the quantity the verdict tests). One colour per ``study`` value; verdict under each variant.
    ``name`` names the figure and the CSV behind it."""
    if table.empty:
        raise Skip("no study has seeded variants with a baseline")
    studies = list(pd.unique(table["study"]))
    variants = list(pd.unique(table["variant"]))
    fig, axes = new_figure(2)
    fig.set_size_inches(max(2 * PANEL[0], 3.4 * len(variants)), PANEL[1] * 1.3)
    width = 0.6 / len(studies)
    for j, s in enumerate(studies):
        rows = table[table["study"] == s].set_index("variant").reindex(variants)
        x = np.arange(len(variants)) + (j - (len(studies) - 1) / 2) * width
        color = STUDY_COLORS[j % len(STUDY_COLORS)]
        for ax, (mid, lo, hi) in zip(axes, (("mean", "ci_low", "ci_high"), ("diff", "diff_ci_low", "diff_ci_high"))):
            err = np.nan_to_num(np.vstack([rows[mid] - rows[lo], rows[hi] - rows[mid]]))
            ax.errorbar(x, rows[mid], yerr=err, fmt="o", ms=8, capsize=5, lw=2, color=color, label=s)
    axes[1].axhline(0, color="black", lw=1)
    short = {"helps": "helps", "hurts": "hurts", "better": "better", "worse": "worse", "(reference)": "ref.",
             TOO_FEW_SHORT[0]: TOO_FEW_SHORT[1]}
    ticks = [v + "\n" + "/".join(short.get(x, "n.d.") for x in table[table["variant"] == v]["verdict"])
             for v in variants]
    for ax in axes:
        ax.set_xticks(range(len(variants)), ticks)
        ax.set_xlim(-0.6, len(variants) - 0.4)
    axes[0].set_ylabel(f"{label(metric)}\nmean ± 95 % CI over seeds")
    axes[1].set_ylabel("difference from baseline (points)\npaired by seed, ± 95 % CI")
    axes[0].legend(loc="best")
    fig.suptitle("Ablation (n.d. = not distinguishable at this budget and seed count)")
    return Plot(name, fig, {name: table.reset_index(drop=True)},
                "Paired t-test by seed against the baseline variant.")
