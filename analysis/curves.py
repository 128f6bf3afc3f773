"""Figures of a study report over time: learning curves per epoch, the optimisation history over trials, and the
hard-negative diagnostics per epoch; drawn like ``analysis/plots.py``'s (``analysis/style.py``), returning a
:class:`Plot` or raising :class:`Skip`.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.ablation import baseline_variant, variant_order  # noqa: E402
from analysis.load import Study  # noqa: E402
from analysis.style import (  # noqa: E402
    BASELINE_MARK, CMAP, PANEL, RAW_LABEL, RAW_STYLE, STATUS_STYLE, STUDY_COLORS, Plot, Skip, label, log_axis,
    new_figure, param_range, raw_line, styled,
)
from moco.vocabulary import COMPLETED, DIVERGED, PRUNED, RUNNING, VAL_KNN  # noqa: E402


def _best_so_far(values: np.ndarray, maximize: bool) -> np.ndarray:
    filled = np.where(np.isfinite(values), values, -np.inf if maximize else np.inf)
    out = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
    return np.where(np.isfinite(out), out, np.nan)


def _curve_metric(study: Study) -> str:
    if study.metric in study.history.columns and study.history[study.metric].notna().any():
        return study.metric
    if VAL_KNN in study.history.columns and study.history[VAL_KNN].notna().any():
        return VAL_KNN
    raise Skip(f"history.csv has no values of {study.metric} or {VAL_KNN} per epoch")


@styled
def learning_curves(study: Study) -> Plot:
    """Validation kNN accuracy per epoch for every trial; pruned (early-stopped) trials dashed grey and ended
    with an ×, failed trials red dotted, the baseline black and the best trial orange."""
    metric = _curve_metric(study)
    h = study.history.dropna(subset=[metric])
    info = study.trials.set_index("trial_id")[["status", "is_baseline"]]
    h = h[h["trial_id"].isin(info.index)].merge(info, left_on="trial_id", right_index=True)
    best = study.best_trial()
    best_id = best["trial_id"] if best is not None else None
    fig, (ax,) = new_figure(1)
    fig.set_size_inches(PANEL[0] * 1.5, PANEL[1] * 1.3)
    for tid, g in h.groupby("trial_id", sort=False):
        g = g.sort_values("epoch")
        status = g["status"].iloc[0]
        style = dict(STATUS_STYLE.get(status, STATUS_STYLE[COMPLETED]))
        if g["is_baseline"].iloc[0]:
            style.update(color="black", ls="-", alpha=1, lw=2.4, zorder=4)
        elif tid == best_id:
            style.update(color="tab:orange", ls="-", alpha=1, lw=2.4, zorder=4)
        ax.plot(g["epoch"], g[metric], marker="o" if len(g) == 1 else None, ms=4, **style)
        if status == PRUNED:
            ax.plot(g["epoch"].iloc[-1], g[metric].iloc[-1], "x", color="0.3", ms=8, mew=2)
    handles = [Line2D([], [], label=s, **{k: v for k, v in STATUS_STYLE[s].items() if k != "alpha"})
               for s in (COMPLETED, PRUNED, DIVERGED, RUNNING) if (h["status"] == s).any()]
    if any(s == PRUNED for s in h["status"]):
        handles[[x.get_label() for x in handles].index(PRUNED)] = Line2D(
            [], [], color="0.55", ls="--", marker="x", mec="0.3", label="pruned (stopped early)")
    handles += [Line2D([], [], color="black", lw=2.4, label="baseline")]
    if best_id is not None:
        handles += [Line2D([], [], color="tab:orange", lw=2.4, label=f"best ({best_id})")]
    if raw_line(ax, study.raw_pixel_value(metric)):
        handles += [Line2D([], [], label=RAW_LABEL, **RAW_STYLE)]
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label(metric))
    ax.set_title(f"{study.name}: learning curves ({h['trial_id'].nunique()} trials)")
    table = h[["trial_id", "status", "is_baseline", "epoch", metric]].reset_index(drop=True)
    return Plot("learning_curves", fig, {"learning_curves": table}, "Epochs without a validation monitor omitted; "
                "dash-dot line (when recorded) = the same metric on raw pixels.")


@styled
def optimization_history(studies: list[Study]) -> Plot:
    """Best-so-far metric vs trial number and vs cumulative compute, one colour per study, baselines dashed."""
    use_gpu = all(s.trials["gpu_hours"].fillna(0).sum() > 0 for s in studies)
    hours = "gpu_hours" if use_gpu else "cpu_hours"
    if all(s.completed.empty for s in studies):
        raise Skip("no completed trials")
    fig, axes = new_figure(2)
    rows = []
    for i, s in enumerate(studies):
        color = STUDY_COLORS[i % len(STUDY_COLORS)]
        t = s.trials.sort_values("trial_number")
        done = (t["status"] == COMPLETED).to_numpy()
        values = np.where(done, t[s.metric].to_numpy(dtype=float), np.nan)
        best = _best_so_far(values, s.maximize)
        cum = t[hours].fillna(0).cumsum().to_numpy()
        for ax, x in zip(axes, (t["trial_number"].to_numpy(), cum)):
            ax.scatter(x, values, color=color, alpha=0.35, s=18)
            ax.step(x, best, where="post", color=color, lw=2.2, label=f"{s.name}: best so far")
            if math.isfinite(s.baseline_value()):
                ax.axhline(s.baseline_value(), color=color, ls="--", lw=1.4, label=f"{s.name}: baseline")
            raw_line(ax, s.raw_pixel_value(), RAW_LABEL if len(studies) == 1 else f"{s.name}: {RAW_LABEL}",
                     None if len(studies) == 1 else color)
        rows.append(pd.DataFrame({"study": s.name, "trial_number": t["trial_number"], "trial_id": t["trial_id"],
                                  "status": t["status"], "value": values, "best_so_far": best,
                                  f"cumulative_{hours}": cum}))
    axes[0].set_xlabel("trial number")
    axes[1].set_xlabel(f"cumulative compute ({label(hours)}, all trials)")
    for ax in axes:
        ax.set_ylabel(label(studies[0].metric))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))
    names = ", ".join(s.name for s in studies)
    fig.suptitle(f"Optimisation history: {names}")
    return Plot("optimization_history", fig, {"optimization_history": pd.concat(rows, ignore_index=True)},
                "Dots: completed trials; line: best so far; dashed: baseline; dash-dot (when recorded): raw pixels.")


def _trial_setting(study: Study, name: str) -> pd.Series:
    """Per-trial value of a TrainConfig field: the searched column, else the base config's fixed value."""
    p = study.param(name)
    if p is not None and p.type != "categorical":
        return study.trials[p.column].astype(float)
    col = f"param_{name}"
    if col in study.trials:
        return pd.to_numeric(study.trials[col], errors="coerce")
    value = (study.meta.get("base_config") or {}).get(name)
    return pd.Series(float(value) if value is not None else np.nan, index=study.trials.index)


@styled
def hard_negative_diagnostics(study: Study, max_curves: int = 4) -> Plot:
    """False-negative rate among selected negatives (last epoch) vs ρ and vs δ, and the similarity of selected
    negatives over epochs (median with the 10-90 % band) for the best trial, the baseline and a few others."""
    h = study.history
    need = {"false_neg_rate", "neg_sim_q10", "neg_sim_q50", "neg_sim_q90"}
    if not need & set(h.columns) or h.empty:
        raise Skip("history.csv has no hard-negative diagnostics (false_neg_rate, neg_sim_q*)")
    last = h.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")
    t = study.trials.set_index("trial_id")
    diag = pd.DataFrame({"status": t["status"], "epochs": t["epochs"], "is_baseline": t["is_baseline"],
                         "rho": _trial_setting(study, "hard_negative_ratio").to_numpy(),
                         "delta": _trial_setting(study, "false_negative_threshold").to_numpy()}, index=t.index)
    diag["false_neg_rate"] = last["false_neg_rate"].reindex(diag.index) if "false_neg_rate" in last else np.nan
    fig, axes = new_figure(3)
    vmax = float(np.nanmax(t["max_epochs"])) if t["max_epochs"].notna().any() else None
    for ax, (col, name) in zip(axes[:2], (("rho", "hard_negative_ratio"), ("delta", "false_negative_threshold"))):
        ok = diag[np.isfinite(diag[col]) & np.isfinite(diag["false_neg_rate"])]
        p = study.param(name)
        if ok.empty or ok[col].nunique() < 2:
            ax.text(0.5, 0.5, f"{name} not varied" if p is None else "no data", transform=ax.transAxes,
                    ha="center", va="center")
        else:
            ax.scatter(ok[col], 100 * ok["false_neg_rate"], c=ok["epochs"], cmap=CMAP, vmin=0, vmax=vmax, s=36,
                       edgecolor="black", linewidth=0.3)
            b = ok[ok["is_baseline"]]
            ax.scatter(b[col], 100 * b["false_neg_rate"], **BASELINE_MARK)
            if p is not None and p.log:
                lo, hi = param_range(p, ok[col].to_numpy(dtype=float))
                log_axis(ax, lo, hi)
        ax.set_xlabel(label(name))
        ax.set_ylabel("false negatives among selected (%)")
    axes[0].set_title("last epoch, per trial")
    ax = axes[2]
    sims = pd.DataFrame()
    if {"neg_sim_q10", "neg_sim_q50", "neg_sim_q90"} <= set(h.columns) and h["neg_sim_q50"].notna().any():
        best = study.best_trial()
        ids = ([best["trial_id"]] if best is not None else []) + list(study.baseline["trial_id"][:1])
        others = study.completed.sort_values(study.metric, ascending=not study.maximize)["trial_id"]
        ids = list(dict.fromkeys(ids + list(others)))[:max_curves]
        sims = h[h["trial_id"].isin(ids)][["trial_id", "epoch", "neg_sim_q10", "neg_sim_q50", "neg_sim_q90"]]
        for i, tid in enumerate(ids):
            g = sims[sims["trial_id"] == tid].sort_values("epoch")
            tag = " (best)" if best is not None and tid == best["trial_id"] else (
                " (baseline)" if bool(t.loc[tid, "is_baseline"]) else "")
            color = STUDY_COLORS[i % len(STUDY_COLORS)]
            ax.fill_between(g["epoch"], g["neg_sim_q10"], g["neg_sim_q90"], color=color, alpha=0.18)
            ax.plot(g["epoch"], g["neg_sim_q50"], color=color, label=f"{tid}{tag}")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no neg_sim_q* in history", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cosine similarity of selected negatives")
    ax.set_title("median, 10–90 % band")
    fig.suptitle(f"{study.name}: hard-negative diagnostics")
    tables = {"hard_negatives_false_neg_rate": diag.reset_index()}
    if not sims.empty:
        tables["hard_negatives_similarity"] = sims.reset_index(drop=True)
    return Plot("hard_negative_diagnostics", fig, tables,
                "Colour = epochs reached; star = baseline. Similarities are of the negatives kept after selection.")


#: What :func:`variant_curves` draws per epoch: the study's metric, then the diagnostics that explain it.
VARIANT_PANELS = ("false_neg_rate", "kept_negatives", "neg_sim_q90")


@styled
def variant_curves(study: Study) -> Plot:
    """A seeded grid's variants over epochs, one colour each (the baseline black): the mean over seeds of the study's
    metric and of the false-negative share, kept negatives and 90 % similarity quantile of the negatives in use, with
    the seeds' range as a band."""
    metric = _curve_metric(study)
    t = study.completed.dropna(subset=["variant"])
    h = study.history.merge(t[["trial_id", "variant"]].astype({"variant": str}), on="trial_id", how="inner")
    panels = [metric] + [c for c in VARIANT_PANELS if c in h.columns and h[c].notna().any()]
    if h.empty or h[metric].isna().all():
        raise Skip("no completed variant has per-epoch values")
    base = {baseline_variant(study)}
    variants = [v for v in variant_order(study) if v in set(h["variant"])]
    stats = h.groupby(["variant", "epoch"])[panels].agg(["mean", "min", "max"])
    fig, axes = new_figure(len(panels), ncols=2)
    for ax, col in zip(axes, panels):
        for i, v in enumerate(variants):
            s = stats.loc[v][col].dropna()
            color = "black" if v in base else STUDY_COLORS[i % len(STUDY_COLORS)]
            ax.plot(s.index, s["mean"], color=color, lw=2.2 if color == "black" else 1.8, label=v)
            ax.fill_between(s.index, s["min"], s["max"], color=color, alpha=0.12, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(col))
    raw_line(axes[0], study.raw_pixel_value(metric))
    axes[0].legend(loc="lower right")
    fig.suptitle(f"{study.name}: variants over epochs (mean over seeds, band: min-max)")
    table = stats.copy()
    table.columns = [f"{c}_{a}" for c, a in table.columns]
    return Plot("variant_curves", fig, {"variant_curves": table.reset_index()},
                "false_neg_rate: the share of the negatives in use that are the query's own class (weighted by "
                "softmax mass for hcl; a MoCHi mix counted by its sources with their mixing weights, the query as its "
                "own class).")
