"""Turn one or more study directories into a report: Markdown, a self-contained HTML file, figures and tables.

Usage::

    python -m analysis.report RUN_DIR [RUN_DIR ...] [--out DIR] [--metric NAME] [--format md,html]

or from Python (the study calls this at its end)::

    build_report(["runs/my_study"]) -> Path("runs/my_study/report")

The report directory (``RUN_DIR/report`` of the first study, or ``--out``) holds ``report.md``, ``report.html``
(opens offline, every figure embedded as base64 PNG), ``figures/*.png`` + ``*.svg`` and ``tables/*.csv`` (one CSV
behind every table and figure). It is written into a temporary sibling directory and moved into place at the end,
so a failed run leaves no half-written report (and an earlier report stays intact).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from analysis import ablation as abl  # noqa: E402
from analysis import confirm, curves  # noqa: E402
from analysis import plots  # noqa: E402
from analysis.comparison import boundary_section, fidelity_paragraph, importance_section  # noqa: E402
from analysis.document import Doc, fmt, slug  # noqa: E402
from analysis.fidelity import MIN_TRIALS, at_rung, common_rung  # noqa: E402
from analysis.importance import RESAMPLES  # noqa: E402
from analysis.load import ReportError, Study, load_studies  # noqa: E402
from moco.vocabulary import COMPLETED, DIVERGED, ERRORED, PENDING, PRUNED, RUNNING  # noqa: E402

__all__ = ["ReportError", "build_report", "main"]

FORMATS = ("md", "html")
HEATMAP_PAIRS = (("queue_size", "hard_negative_ratio"), ("temperature", "hard_negative_ratio"))
FAILED = (DIVERGED, ERRORED)
UNFINISHED = (RUNNING, PENDING)


# ---------------------------------------------------------------------------------------------------- content
def summary_table(studies: Sequence[Study]) -> pd.DataFrame:
    """One row per study: trials by status, best vs baseline, total compute."""
    rows = []
    for s in studies:
        t = s.trials
        counts = t["status"].value_counts()
        best = s.best_trial()
        base = s.baseline_value()
        best_v = float(best[s.metric]) if best is not None else math.nan
        row = {"study": s.name, "kind": s.kind, "study_status": s.meta.get("status", ""),
               "searcher": s.meta.get("searcher", ""), "scheduler": s.meta.get("scheduler", ""), "trials": len(t)}
        row.update({st: int(counts.get(st, 0)) for st in (COMPLETED, PRUNED, *FAILED, *UNFINISHED)})
        other = len(t) - sum(int(counts.get(st, 0)) for st in (COMPLETED, PRUNED, *FAILED, *UNFINISHED))
        if other:
            row["other_status"] = other
        row.update({"best_trial": best["trial_id"] if best is not None else "", f"best_{s.metric}": best_v,
                    f"baseline_{s.metric}": base, "best_minus_baseline": best_v - base,
                    "cpu_hours": float(t["cpu_hours"].sum()), "gpu_hours": float(t["gpu_hours"].sum())})
        rows.append(row)
    return pd.DataFrame(rows)


def best_configs(studies: Sequence[Study]) -> pd.DataFrame:
    """The best completed trial of each study with its parameters (``param_*`` columns) and metric."""
    rows = []
    for s in studies:
        best = s.best_trial()
        if best is None:
            continue
        row = {"study": s.name, "trial_id": best["trial_id"], "trial_number": int(best["trial_number"]),
               s.metric: float(best[s.metric])}
        for extra in ("variant", "seed", "test_knn_top1", "epochs"):
            if extra in best.index and pd.notna(best[extra]) and s.param(extra) is None:
                row[extra] = best[extra]
        row.update({p.column: best[p.column] for p in s.params})
        rows.append(row)
    return pd.DataFrame(rows)


def _describe_best(s: Study) -> str:
    best = s.best_trial()
    if best is None:
        return f"**{s.name}**: no completed trial yet, so no best configuration."
    # a conditional parameter whose condition the best trial does not meet has no value: left out, named
    applies = [p for p in s.params if pd.notna(best[p.column])]
    params = ", ".join(f"{p.name} = {fmt(best[p.column])}" for p in applies) or "no searched parameters"
    if len(applies) < len(s.params):
        params += " (" + ", ".join(p.name for p in s.params if p not in applies) + ": not applicable)"
    base = s.baseline_value()
    vs = f" (baseline {fmt(base)}, {best[s.metric] - base:+.2f})" if math.isfinite(base) else ""
    text = f"**{s.name}**: best trial `{best['trial_id']}` (#{int(best['trial_number'])}): {s.metric} = " \
           f"{fmt(float(best[s.metric]))}{vs}; {params}."
    if abl.is_ablation(s):
        means = s.completed.groupby("variant")[s.metric].mean()
        top = means.idxmax() if s.maximize else means.idxmin()
        text += f" Best variant averaged over seeds: **{top}** ({fmt(float(means[top]))}); a single best run " \
                f"of a seeded grid is partly seed luck, see the ablation below."
    return text


def _state_notes(s: Study) -> list[str]:
    notes = []
    status = s.meta.get("status")
    if status and status != "finished":
        notes.append(f"**{s.name}** is marked `{status}` in study.json: results are partial.")
    t = s.trials
    for st in (*FAILED, *UNFINISHED):
        n = int((t["status"] == st).sum())
        if n:
            notes.append(f"**{s.name}**: {n} {st} trial(s) ({', '.join(t.loc[t['status'] == st, 'trial_id'][:8])}"
                         f"{', …' if n > 8 else ''}); excluded from best and ablation statistics (compared "
                         f"with the others at the common rung only if they reached it).")
    if (t["status"] == "pruned").any():
        notes.append(f"**{s.name}**: {int((t['status'] == 'pruned').sum())} trial(s) stopped early by the "
                     f"scheduler (pruned); their final values are at the epoch they stopped and never count as best; "
                     f"the figures that compare trials read every trial at one common rung instead.")
    return notes


def _ablation_section(doc: Doc, studies: Sequence[Study], metric: str) -> None:
    table = abl.ablation_tables(list(studies), metric)
    if table.empty:
        return
    doc.heading("Ablation")
    doc.para(f"Per variant: mean {metric} over seeds with a 95 % t-interval; difference from the baseline variant "
             f"paired by seed, paired t-test (two-sided, α = {abl.ALPHA}, not corrected for the number of variants), "
             f"effect size Cohen's d_z = mean(diff) / sd(diff); cost averaged per run: images seen is the compute, "
             f"CPU- and GPU-hours are wall time times the trial's resources, so they also count whatever else the "
             f"machine was doing. Verdicts: "
             f"**helps** / **hurts** when p < {abl.ALPHA}; otherwise **{abl.NOT_DISTINGUISHABLE}**; with fewer than "
             f"{abl.MIN_SEEDS} paired seeds, **{abl.TOO_FEW}**.")
    if table["study"].nunique() > 1:
        doc.table(abl.side_by_side(table), "ablation_side_by_side",
                  "Side by side: mean [95 % CI]; difference from baseline: verdict.")
    shown = table.copy()
    doc.table(shown, "ablation", "Ablation statistics (one row per study and variant).")
    verdicts = []
    for r in table.itertuples():
        if r.verdict == "(reference)":
            continue
        detail = f"{r.diff:+.2f} points, p = {fmt(r.p_value)}, d_z = {fmt(r.cohens_dz)}, n = {r.n_paired} seeds" \
            if r.n_paired >= 2 else f"n = {r.n_paired} paired seed(s)"
        verdicts.append(f"{r.study} / **{r.variant}**: {r.verdict} ({detail}).")
    small = table[(table["verdict"] == abl.TOO_FEW)]
    if not small.empty:
        verdicts.append(f"The seed count is too small to conclude for: "
                        f"{', '.join(sorted(set(small['study'] + '/' + small['variant'])))} "
                        f"(needs at least {abl.MIN_SEEDS} paired seeds).")
    doc.bullets(verdicts)
    doc.figure(lambda: plots.ablation(table, metric), "", "Ablation: means and paired differences")
    many = len(studies) > 1
    for s in (s for s in studies if abl.is_ablation(s)):
        prefix = f"{slug(s.name)}__" if many else ""
        confirm.grid_section(doc, s, prefix)
        doc.heading("Why: diagnostics by variant" + (f": {s.name}" if many else ""), 3)
        diag = abl.diagnostics_table(s)
        if not diag.empty:
            doc.table(diag, f"{prefix}diagnostics", "At each run's last epoch, mean over its completed seeds: "
                      "false_neg_rate is the share of the negatives in use that are the query's own class; "
                      "kept_negatives the negatives per query (synthetic ones included); neg_sim_q* the quantiles "
                      "of their cosine similarity to the query; images_per_s the wall-clock training throughput, "
                      "which also depends on what else shared the machine (the cost that every variant pays alike "
                      "is the compute budget; a strategy's own step cost is in bench/step.py).")
        doc.figure(lambda s=s: curves.variant_curves(s), prefix, "Variants over epochs")


def _study_section(doc: Doc, s: Study, prefix: str, min_trials: int = MIN_TRIALS,
                   resamples: int = RESAMPLES) -> None:
    doc.heading(f"Study: {s.name}")
    meta = s.meta
    doc.para(f"Path `{s.path}`; kind {s.kind}; searcher {meta.get('searcher', '?')}; scheduler "
             f"{meta.get('scheduler', '?')}; metric {s.metric} ({'max' if s.maximize else 'min'}); git "
             f"{meta.get('git_commit', '?')}; started {meta.get('started', '?')}, ended {meta.get('ended') or '—'}.")
    if meta.get("command"):
        doc.para(f"Command: `{meta['command']}`")
    rung = common_rung(s, min_trials)
    view = at_rung(s, rung) if rung is not None else s
    doc.para(fidelity_paragraph(s, view))
    doc.heading("Metric vs searched parameters", 3)
    doc.figure(lambda: plots.metric_vs_params(view, s if rung is not None else None), prefix,
               "Metric vs each searched parameter")
    doc.heading("Interactions", 3)
    for x, y in HEATMAP_PAIRS:
        doc.figure(lambda x=x, y=y: plots.interaction_heatmap(view, x, y), prefix, f"Heatmap {x} × {y}")
    doc.heading("Learning curves", 3)
    doc.figure(lambda: curves.learning_curves(s), prefix, "Learning curves")
    doc.heading("Parameter importance", 3)
    importance_section(doc, s, view, prefix, resamples)
    doc.heading("Top trials", 3)
    doc.figure(lambda: plots.parallel_coordinates(view), prefix, "Parallel coordinates of the top trials")
    boundary_section(doc, view, prefix)
    doc.heading("Hard-negative diagnostics", 3)
    doc.figure(lambda: curves.hard_negative_diagnostics(s), prefix, "Hard-negative diagnostics")
    failed = s.trials[s.trials["status"].isin(FAILED + UNFINISHED)]
    if not failed.empty:
        doc.heading("Trials that did not finish", 3)
        cols = [c for c in ("trial_id", "trial_number", "status", "epochs", "error") if c in failed.columns]
        doc.table(failed[cols].reset_index(drop=True), f"{prefix}unfinished_trials")


def _write(root: Path, studies: list[Study], formats: Sequence[str], min_trials: int = MIN_TRIALS,
           resamples: int = RESAMPLES, command: str | None = None, page: Path | None = None,
           base: str = "") -> None:
    metric = studies[0].metric
    doc = Doc(root)
    title = f"Study report: {', '.join(s.name for s in studies)}"
    doc.heading(title, 1)
    doc.para(f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from "
             f"{', '.join(f'`{s.path}`' for s in studies)}. Metric: **{metric}** "
             f"({'higher' if studies[0].maximize else 'lower'} is better).")
    if command:
        doc.para(f"Regenerate this page: `{command}`")
    doc.heading("Summary")
    doc.table(summary_table(studies), "summary", "Trials by status, best vs baseline, total compute.")
    doc.bullets(n for s in studies for n in _state_notes(s))
    doc.heading("Best configuration")
    doc.bullets(_describe_best(s) for s in studies)
    best = best_configs(studies)
    if not best.empty:
        doc.table(best, "best_configs")
    _ablation_section(doc, studies, metric)
    for s in studies:  # a study's confirmation stage (confirm.csv), when it has one
        confirm.section(doc, s.name, s.path, f"{slug(s.name)}__" if len(studies) > 1 else "")
    doc.heading("Optimisation history" + (" (all studies)" if len(studies) > 1 else ""))
    doc.figure(lambda: curves.optimization_history(studies), "", "Best so far vs trial number and compute")
    many = len(studies) > 1
    for s in studies:
        _study_section(doc, s, f"{slug(s.name)}__" if many else "", min_trials, resamples)
    if page is not None:  # the Markdown outside the report directory, its links into it (``base``)
        page.write_text(doc.markdown(base=base), encoding="utf-8")
    elif "md" in formats:
        (root / "report.md").write_text(doc.markdown(), encoding="utf-8")
    if "html" in formats:
        (root / "report.html").write_text(doc.html(title), encoding="utf-8")


def _parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower() for f in items if f and f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ReportError(f"format {', '.join(bad) or '(none)'} is not allowed: one or more of {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def build_report(run_dirs: str | Path | Iterable[str | Path], out: str | Path | None = None,
                 metric: str | None = None, formats: str | Iterable[str] = FORMATS, min_trials: int = MIN_TRIALS,
                 resamples: int = RESAMPLES, command: str | None = None) -> Path:
    """Write the report of one or more studies and return the report directory (or page).

    ``out`` defaults to ``<first run dir>/report``; an existing report there is replaced atomically (the new one
    is built in a temporary sibling directory and renamed into place). An ``out`` ending in ``.md`` is a page for a
    documentation tree: the Markdown goes there, and everything else (figures, tables, the HTML) into the directory
    of the same name without ``.md``, which the page links into. ``command``, when given, is printed on the page as
    the way to regenerate it. Raises :class:`ReportError` for bad input
    (not a study, empty study, unknown metric, studies with different metrics, unknown format) before anything is
    written. Trials are compared at the common rung that at least ``min_trials`` trials reached
    (``analysis/fidelity.py``); importance intervals use ``resamples`` bootstrap resamples (0: none).
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    formats = _parse_formats(formats)
    studies = load_studies(run_dirs, metric)
    final = Path(out) if out is not None else studies[0].path / "report"
    page = None
    if final.suffix == ".md":
        page, final = final, final.with_suffix("")
    if final.exists() and not final.is_dir():
        raise ReportError(f"{final}: exists and is not a directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    staged = tmp.parent / f"{tmp.name}.md"  # the page, renamed into place after the directory it links into
    try:
        _write(tmp, studies, formats, min_trials, resamples, command, staged if page else None, f"{final.name}/")
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(old / final.name)
        tmp.rename(final)
        if page is not None:
            staged.replace(page)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        staged.unlink(missing_ok=True)
    return page or final


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``mocostudy-report`` / ``python -m analysis.report``). Returns the exit code:
    0 on success, 2 on bad input (message on stderr)."""
    parser = argparse.ArgumentParser(prog="mocostudy-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="study directories (runs/<name>)")
    parser.add_argument("--out", help="report directory, or a page PATH.md whose figures and tables go into PATH/ "
                        "(default: RUN_DIR/report of the first study)")
    parser.add_argument("--metric", help="metric column of trials.csv (default: the study's metric)")
    parser.add_argument("--format", default="md,html", help="comma-separated: md, html (default: md,html)")
    parser.add_argument("--min-trials", type=int, default=MIN_TRIALS,
                        help="compare trials at the highest rung at least this many reached (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help="bootstrap resamples for importance intervals, 0 for none (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        command = shlex.join(["python", "-m", "analysis.report", *(sys.argv[1:] if argv is None else argv)])
        path = build_report(args.run_dirs, out=args.out, metric=args.metric, formats=args.format,
                            min_trials=args.min_trials, resamples=args.resamples, command=command)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
