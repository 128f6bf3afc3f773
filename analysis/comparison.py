"""Report sections that compare trials at one fidelity (``analysis/fidelity.py``): which rung, importance with
bootstrap intervals and its warning, and boundary warnings.

Each function adds blocks to the report's document (``analysis.document.Doc``: ``heading``, ``para``, ``bullets``,
``table``, ``figure``); ``study`` is the study as recorded and ``view`` the same study at its common rung.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from analysis import plots
from analysis.bounds import MARGIN, TOP, boundary_table, boundary_warnings
from analysis.fidelity import rung_counts
from analysis.importance import EVALUATORS, compute_importance
from analysis.load import Study


def fidelity_paragraph(s: Study, view: Study) -> str:
    """Which fidelity the trials are compared at, and how many trials reached each level."""
    if view.fidelity is None:
        return (f"*history.csv has no per-report values of {s.metric}: trials are compared at their final values "
                f"(fidelities may be mixed).*")
    r = view.fidelity
    counts = rung_counts(s, r.time_attr)
    reach = ", ".join(f"{x.level:g}: {x.n_trials}" for x in counts.itertuples())
    return (f"**Fidelity.** Trials are compared at **{r.label}**: the highest level ({r.source}) that at least "
            f"{r.min_trials} trials (or all, if fewer) reached, each trial at its first report with {r.time_attr} ≥ "
            f"{r.level:g}. Trials per level of {r.time_attr}: {reach}. Metric vs parameters also shows final values "
            f"(fidelities mixed) in its second block.")


def importance_section(doc: Any, s: Study, view: Study, prefix: str, resamples: int) -> None:
    """Importance of the searched parameters over the trials of ``view``, with 95 % bootstrap intervals (table and
    figure), the number of trials and fidelity it rests on, and a plain warning below ``MIN_TRUSTED`` trials."""
    imp = compute_importance(view, resamples=resamples)
    if imp.skipped.get("all"):
        doc.para(f"*Parameter importance: skipped ({imp.skipped['all']}).* Trials compared at {imp.fidelity}.")
        return
    doc.para(f"Optuna importance evaluators ({', '.join(EVALUATORS)}) over a study rebuilt from trials.csv: "
             f"{imp.n_complete} trials at {imp.fidelity}"
             + (f", and {imp.n_pruned} pruned" if imp.n_pruned else "") + (
                 f". Intervals: 95 % percentile bootstrap over {resamples} resamples of the trials (with "
                 f"replacement)." if resamples > 0 else ". No intervals (no bootstrap resamples asked for)."))
    if imp.warning:
        doc.para(f"**Warning:** {imp.warning}")
    for method, why in imp.skipped.items():
        doc.para(f"*{method}: skipped ({why}).*")
    if imp.table.empty:
        return
    wide = None
    for m in [m for m in EVALUATORS if m in set(imp.table["method"])]:
        part = imp.table[imp.table["method"] == m].set_index("param")
        cols = pd.DataFrame({m: part["importance"], f"{m} CI low": part["ci_low"], f"{m} CI high": part["ci_high"]})
        wide = cols if wide is None else wide.join(cols, how="outer")
    wide = wide.sort_values(wide.columns[0], ascending=False).rename_axis("param").reset_index()
    wide["trials"], wide["fidelity"] = imp.n_complete, imp.fidelity
    doc.table(wide, f"{prefix}importance_table", f"Normalised importances (sum = 1 per method) at {imp.fidelity}, "
                                                 f"with 95 % bootstrap intervals.")
    doc.figure(lambda: plots.importance(imp.table, s.name, imp.fidelity, imp.warning), prefix, "Parameter importance")


def boundary_section(doc: Any, view: Study, prefix: str) -> None:
    """Boundary warnings (``analysis/bounds.py``) over the top trials of ``view``; nothing for a study whose
    searched parameters are all categorical."""
    if not any(p.type != "categorical" for p in view.params):
        return
    doc.heading("Search-range boundaries", 3)
    warned = boundary_warnings(view)
    if warned:
        doc.bullets(f"**Boundary warning** ({view.fidelity_label}): {w}" for w in warned)
        doc.table(boundary_table(view), f"{prefix}boundary_warnings")
    else:
        doc.para(f"No searched numeric parameter has all of its top-{TOP} trials ({view.fidelity_label}) within "
                 f"{MARGIN * 100:g} % of a bound of its range.")
