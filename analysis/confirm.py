"""Statistics of a confirmation (``confirm.csv`` and ``confirm.json``, written by ``study/confirm.py``) and its section
of the report. pandas and scipy only: no torch, no Ray.

For an endpoint e and a candidate c with per-seed values x_{c,s} over its n completed seeds (every endpoint is a top-1
accuracy in percent: higher is better):

- mean and 95 % t-interval: mean +- t_{0.975, n-1} * sd / sqrt(n) (:func:`analysis.ablation.t_interval`, scipy's t);
- against the baseline, paired by seed: d_s = x_{c,s} - x_{baseline,s} over the seeds both completed; mean d with its
  t-interval, the paired t-test p (:func:`analysis.ablation.paired_test`) and its Holm correction over the candidates
  of that endpoint (:func:`holm`); verdict better / worse when the Holm p < alpha = 0.05 (the sign of mean d), else
  "not distinguishable at this budget and seed count"; with fewer than 3 paired seeds "too few seeds to conclude";
- against raw pixels: r_s = x_{c,s} - raw_s, raw_s the same endpoint on raw pixels in the same run (same bank and
  protocol; it does not depend on the training seed, so this is the one-sample t-test of x_c against the raw-pixel
  value); Holm over the candidates; the same verdicts;
- rank agreement: Spearman's rho (scipy) between the candidates' search ranks and their confirmed ranks (by the mean of
  the decision endpoint, the full-validation form of the study's metric); "undetermined" when fewer than 3 candidates
  have both.

Validation endpoints decide; test endpoints are shown in a separate final table only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import ablation as abl
from analysis.checks import read_csv, read_json
from analysis.load import Study
from moco.vocabulary import (
    BASELINE, COMPLETED, COMPUTE, FINAL_METRICS, FINAL_OF, FINAL_VAL_KNN, TEST_ENDPOINTS, VAL_ENDPOINTS, raw_name)

CSV, JSON = "confirm.csv", "confirm.json"  # as study/confirm.py writes them
BETTER, WORSE = "better", "worse"
NOT_DISTINGUISHABLE, TOO_FEW = abl.NOT_DISTINGUISHABLE, abl.TOO_FEW
UNDETERMINED = "undetermined"
MIN_RANKED = 3  #: candidates needed for a rank correlation
COLUMNS = ["endpoint", "candidate", "n_seeds", "mean", "ci_low", "ci_high", "n_paired", "diff", "diff_ci_low",
           "diff_ci_high", "p_value", "p_holm", "verdict", "raw", "vs_raw", "vs_raw_ci_low", "vs_raw_ci_high",
           "p_raw", "p_raw_holm", "raw_verdict"]


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control). With the m finite p-values sorted,
    p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)). NaN stays NaN and is not
    counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


@dataclass
class Confirmation:
    """A study's confirmation: one row per candidate and seed (``table``) and its settings (``meta``)."""

    table: pd.DataFrame
    meta: dict[str, Any]

    @property
    def candidates(self) -> list[str]:
        return list(pd.unique(self.table["candidate"]))

    @property
    def decision_endpoint(self) -> str:
        return str(self.meta.get("decision_endpoint") or FINAL_VAL_KNN)

    @property
    def completed(self) -> pd.DataFrame:
        return self.table[self.table["status"] == COMPLETED]

    def values(self, endpoint: str, candidate: str) -> pd.Series:
        """Per-seed values (index: seed) of a candidate's completed runs; NaN-free."""
        t = self.completed
        if endpoint not in t.columns:
            return pd.Series(dtype=float)
        rows = t[t["candidate"] == candidate]
        return pd.to_numeric(rows.set_index("seed")[endpoint], errors="coerce").dropna()


def load(run_dir: str | Path) -> Confirmation | None:
    """The confirmation of the study in ``run_dir``; None when it has none."""
    run_dir = Path(run_dir)
    if not (run_dir / CSV).is_file():
        return None
    meta = read_json(run_dir / JSON) if (run_dir / JSON).is_file() else {}
    table = read_csv(run_dir / CSV, ("candidate", "source_trial", "trial_id"))
    return Confirmation(table, meta) if len(table) else None


def from_grid(study: Study) -> Confirmation | None:
    """A seeded grid of variants (an ablation, :func:`analysis.ablation.is_ablation`) read as a confirmation: one row
    per completed trial, ``candidate`` its variant (the baseline variant named ``baseline``), with the final endpoints
    and their raw-pixel values from the trial's last report in ``history.csv``. None when the study is not an
    ablation or no completed trial reported a final endpoint (``final_eval``)."""
    h = study.history
    present = [c for c in (*FINAL_METRICS, *(raw_name(m) for m in FINAL_METRICS)) if c in h.columns]
    if not abl.is_ablation(study) or not any(h[c].notna().any() for c in present if c in FINAL_METRICS):
        return None
    last = h.dropna(subset=present, how="all").sort_values("epoch").groupby("trial_id").tail(1)
    t = study.completed.dropna(subset=["variant"])
    t = t[[c for c in ("trial_id", "variant", "seed", "status", COMPUTE) if c in t.columns]]
    table = t.merge(last[["trial_id", *present]], on="trial_id", how="inner")
    base = abl.baseline_variant(study)
    table.insert(0, "candidate", table.pop("variant").astype(str).replace({base: BASELINE}))
    meta = {"decision_endpoint": FINAL_OF.get(study.metric, FINAL_VAL_KNN), "metric": study.metric}
    return Confirmation(table.reset_index(drop=True), meta) if len(table) else None


def _compare(values: pd.Series, reference: pd.Series) -> dict[str, float]:
    """Paired by seed: n, mean difference with its t-interval, and the paired t-test p."""
    common = values.index.intersection(reference.index)
    diffs = (values.loc[common] - reference.loc[common]).to_numpy(dtype=float)
    lo, hi = abl.t_interval(diffs)
    p, _ = abl.paired_test(diffs)
    return {"n": len(diffs), "diff": float(diffs.mean()) if len(diffs) else math.nan, "lo": lo, "hi": hi, "p": p}


def endpoint_table(conf: Confirmation, endpoints=VAL_ENDPOINTS) -> pd.DataFrame:
    """One row per endpoint and candidate (baseline first): mean and CI over seeds, paired difference from the
    baseline with Holm-corrected p and verdict, and the same against raw pixels."""
    rows = []
    for endpoint in endpoints:
        base = conf.values(endpoint, BASELINE)
        block = []
        for cand in conf.candidates:
            vals = conf.values(endpoint, cand)
            lo, hi = abl.t_interval(vals.to_numpy())
            raw = conf.values(raw_name(endpoint), cand)
            vs_raw = _compare(vals, raw)
            row = {"endpoint": endpoint, "candidate": cand, "n_seeds": len(vals),
                   "mean": float(vals.mean()) if len(vals) else math.nan, "ci_low": lo, "ci_high": hi,
                   "raw": float(raw.mean()) if len(raw) else math.nan, "vs_raw": vs_raw["diff"],
                   "vs_raw_ci_low": vs_raw["lo"], "vs_raw_ci_high": vs_raw["hi"], "p_raw": vs_raw["p"],
                   "_n_raw": vs_raw["n"]}
            if cand == BASELINE:
                row.update(n_paired=len(vals), diff=0.0, p_value=math.nan, verdict="(reference)")
            else:
                d = _compare(vals, base)
                row.update(n_paired=d["n"], diff=d["diff"], diff_ci_low=d["lo"], diff_ci_high=d["hi"], p_value=d["p"])
            block.append(row)
        others = [r for r in block if r["candidate"] != BASELINE]
        for r, p in zip(others, holm([r["p_value"] for r in others])):
            r["p_holm"] = p
            r["verdict"] = abl.verdict(r["diff"], p, r["n_paired"], labels=(BETTER, WORSE))
        for r, p in zip(block, holm([r["p_raw"] for r in block])):
            r["p_raw_holm"] = p
            r["raw_verdict"] = abl.verdict(r["vs_raw"], p, r.pop("_n_raw"), labels=(BETTER, WORSE)) \
                if math.isfinite(r["raw"]) else "no raw-pixel value"
        rows += block
    return pd.DataFrame(rows, columns=COLUMNS)


def rank_agreement(conf: Confirmation) -> dict[str, Any]:
    """Spearman's rho between the search's ranking and the confirmed ranking (by the decision endpoint's mean) of the
    candidates that have both; ``rho`` and ``p`` NaN and ``verdict`` "undetermined" with fewer than 3."""
    endpoint = conf.decision_endpoint
    ranks = conf.table.drop_duplicates("candidate").set_index("candidate")["search_rank"]
    means = pd.Series({c: conf.values(endpoint, c).mean() for c in conf.candidates}, dtype=float)
    both = pd.DataFrame({"search_rank": pd.to_numeric(ranks, errors="coerce"), "mean": means}).dropna()
    both["confirmed_rank"] = both["mean"].rank(ascending=False, method="average")
    out = {"endpoint": endpoint, "n": len(both), "rho": math.nan, "p": math.nan, "verdict": UNDETERMINED,
           "ranks": both.reset_index(names="candidate")}
    if len(both) >= MIN_RANKED:
        result = stats.spearmanr(both["search_rank"], both["confirmed_rank"])
        out.update(rho=float(result.statistic), p=float(result.pvalue))
        out["verdict"] = f"rho = {out['rho']:+.2f}" if math.isfinite(out["rho"]) else UNDETERMINED
    return out


def best_candidate(table: pd.DataFrame, endpoint: str) -> pd.Series | None:
    """The candidate (not the baseline) with the highest mean of ``endpoint`` in an :func:`endpoint_table`."""
    rows = table[(table["endpoint"] == endpoint) & (table["candidate"] != BASELINE)].dropna(subset=["mean"])
    return rows.loc[rows["mean"].idxmax()] if len(rows) else None


# --- the report section -----------------------------------------------------------------------------------------
def _num(x: float, fmt: str = ".2f") -> str:
    ok = isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)
    return format(x, fmt) if ok else "n/a"


def _ci(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if math.isfinite(lo) else "(no CI: fewer than 2 seeds)"


def _params(text: str) -> str:
    """confirm.csv's JSON params as ``name = value`` (numbers to 3 significant digits)."""
    try:
        params = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    return ", ".join(f"{k} = {format(v, '.3g') if isinstance(v, float) else v}" for k, v in params.items())


def budget_text(conf: Confirmation) -> str:
    """The compute of one confirmation run, and of one search trial, in words."""
    def words(b: dict[str, Any]) -> str:
        images, epochs = b.get("train_subset"), b.get("epochs")
        if b.get("compute_budget"):  # epochs follow from the budget: compute_budget / views
            return f"a compute budget of {b['compute_budget']} passes of {images if images else 'all'} training images"
        return f"{epochs} epoch{'s' if epochs != 1 else ''} of {images if images else 'all'} training images"

    text = words(conf.meta.get("budget") or {})
    compute = pd.to_numeric(conf.completed.get(COMPUTE, pd.Series(dtype=float)), errors="coerce").dropna()
    if len(compute):
        low, high = _num(float(compute.min()), ".0f"), _num(float(compute.max()), ".0f")
        text += f" ({COMPUTE} {low if low == high else f'{low} to {high}'} per run)"
    if conf.meta.get("search_budget"):
        text += f"; the search trained {words(conf.meta['search_budget'])} per trial"
    return text


def section(doc, name: str, run_dir: Path, prefix: str = "") -> None:
    """Add the confirmation of the study in ``run_dir`` to ``doc`` (an analysis.document.Doc; tables named with
    ``prefix``); nothing when the study has none."""
    conf = load(run_dir)
    if conf is None:
        return
    meta, t = conf.meta, conf.table
    seeds = sorted(int(s) for s in pd.unique(t["seed"]))
    endpoint = conf.decision_endpoint
    doc.heading("Confirmation" + (f": {name}" if prefix else ""))
    done = len(conf.completed)
    doc.para(f"**{name}**: the search's top {len(conf.candidates) - 1} configuration(s) and the MoCo v2 baseline "
             f"re-trained with seeds {seeds} (the search trained with seed(s) {meta.get('search_seeds', '?')}) at "
             f"{budget_text(conf)}; {done} of {len(t)} runs completed. The full-validation endpoints decide "
             f"(**{endpoint}** ranks the configurations); test endpoints appear only in the final table. Per "
             f"configuration: mean over seeds with a 95 % t-interval; difference from the baseline paired by seed, "
             f"paired t-test, Holm-corrected across the configurations of each endpoint (α = {abl.ALPHA}); against "
             f"raw pixels (the same endpoint on raw pixels, same bank and protocol): one-sample t-test, "
             f"Holm-corrected. Verdicts: **{BETTER}** / **{WORSE}** when the corrected p < {abl.ALPHA}, otherwise "
             f"**{NOT_DISTINGUISHABLE}**; with fewer than {abl.MIN_SEEDS} paired seeds, **{TOO_FEW}**.")
    if done < len(t):
        statuses = ", ".join(sorted(set(t.loc[t["status"] != COMPLETED, "status"])))
        doc.para(f"*{len(t) - done} run(s) did not complete ({statuses}); they are left out of every statistic, so "
                 "some comparisons pair fewer seeds.*")
    val = endpoint_table(conf, VAL_ENDPOINTS)
    claims = []
    best = best_candidate(val, endpoint)
    if best is None:
        claims.append(f"No configuration besides the baseline has a value of {endpoint} yet: no claim.")
    else:
        src = t[t["candidate"] == best["candidate"]].iloc[0]
        base = val[(val["endpoint"] == endpoint) & (val["candidate"] == BASELINE)].iloc[0]
        where = f"{endpoint}, seeds {seeds}, {budget_text(conf).split(';')[0]}"
        than = " than the MoCo v2 baseline" if best["verdict"] in (BETTER, WORSE) else ""
        claims.append(f"Best configuration **{best['candidate']}** (search trial `{src['source_trial']}`, search rank "
                      f"{_num(src['search_rank'], '.0f')}, {meta.get('metric', 'metric')} = "
                      f"{_num(src['search_value'])}; {_params(src['params'])}) vs the MoCo v2 baseline on {where}: "
                      f"{_num(best['mean'])} {_ci(best['ci_low'], best['ci_high'])} against {_num(base['mean'])} "
                      f"{_ci(base['ci_low'], base['ci_high'])}; difference {_num(best['diff'], '+.2f')} "
                      f"{_ci(best['diff_ci_low'], best['diff_ci_high'])} points, Holm p = {_num(best['p_holm'], '.3g')}"
                      f", n = {best['n_paired']} paired seeds: **{best['verdict']}**{than}.")
        if math.isfinite(best["raw"]):
            claims.append(f"**{best['candidate']}** vs raw pixels on {where}: {_num(best['mean'])} against "
                          f"{_num(best['raw'])}; difference {_num(best['vs_raw'], '+.2f')} "
                          f"{_ci(best['vs_raw_ci_low'], best['vs_raw_ci_high'])} points, Holm p = "
                          f"{_num(best['p_raw_holm'], '.3g')}: **{best['raw_verdict']}**"
                          + (" than raw pixels." if best["raw_verdict"] in (BETTER, WORSE) else "."))
        else:
            claims.append(f"Raw pixels: no raw-pixel value of {endpoint} in these runs, so no comparison.")
    for missing in [e for e in VAL_ENDPOINTS if not val.loc[val["endpoint"] == e, "n_seeds"].any()]:
        claims.append(f"No completed run reported {missing}: no statistics on it.")
    for r in val[(val["candidate"] != BASELINE) & (val["n_seeds"] > 0)].itertuples():
        if best is not None and r.candidate == best["candidate"] and r.endpoint == endpoint:
            continue
        claims.append(f"{r.candidate} vs baseline on {r.endpoint}: {_num(r.diff, '+.2f')} "
                      f"{_ci(r.diff_ci_low, r.diff_ci_high)} points, Holm p = {_num(r.p_holm, '.3g')}, "
                      f"n = {r.n_paired}: {r.verdict}.")
    ranks = rank_agreement(conf)
    claims.append(f"Does the cheap search rank configurations the way longer runs do? Spearman's ρ between search "
                  f"rank and confirmed rank (by {ranks['endpoint']}), n = {ranks['n']} configurations: "
                  + (f"ρ = {ranks['rho']:+.2f} (p = {_num(ranks['p'], '.3g')})." if math.isfinite(ranks["rho"]) else
                     f"**{UNDETERMINED}** (needs at least {MIN_RANKED} configurations)."))
    doc.bullets(claims)
    doc.table(val, f"{prefix}confirm_validation",
              "Validation endpoints (decide): per configuration mean [95 % CI] over seeds; paired difference from "
              "the baseline with Holm-corrected p; the same against raw pixels.")
    if len(ranks["ranks"]):
        doc.table(ranks["ranks"], f"{prefix}confirm_ranks", "Search rank against confirmed rank.")
    final = endpoint_table(conf, TEST_ENDPOINTS)[["endpoint", "candidate", "n_seeds", "mean", "ci_low", "ci_high",
                                                  "diff", "diff_ci_low", "diff_ci_high", "raw"]]
    doc.table(final, f"{prefix}confirm_final", "Final table, test endpoints (shown, never used to choose): mean "
              "[95 % CI] over seeds, paired difference from the baseline, raw pixels.")


def grid_section(doc, study: Study, prefix: str = "") -> None:
    """Add the final endpoints of a seeded grid of variants (:func:`from_grid`) to ``doc``: per endpoint, the
    statistics of :func:`endpoint_table` (Holm over the variants of each endpoint). Nothing when the grid has none.

    The variants of a grid are fixed before it runs (none is chosen by its numbers), so its test endpoints are
    reported with their tests: they are the grid's answer, not a selection."""
    conf = from_grid(study)
    if conf is None:
        return
    t = conf.table
    endpoints = [e for e in (*VAL_ENDPOINTS, *TEST_ENDPOINTS) if e in t.columns and t[e].notna().any()]
    table = endpoint_table(conf, endpoints)
    seeds = sorted(int(s) for s in pd.unique(t["seed"]))
    compute = pd.to_numeric(t.get(COMPUTE, pd.Series(dtype=float)), errors="coerce").dropna()
    spent = (f"{COMPUTE} {_num(float(compute.min()), '.0f')}" + ("" if compute.min() == compute.max() else
             f" to {_num(float(compute.max()), '.0f')}") + " per run") if len(compute) else "compute not recorded"
    doc.heading("Endpoints" + (f": {study.name}" if prefix else ""))
    doc.para(f"**{study.name}**: {len(t)} completed runs of {len(conf.candidates)} variants, seeds {seeds}, "
             f"{spent}. Each run's endpoints are measured once, after training: kNN and linear probe on the full "
             f"validation split, then on the test split. The variants were fixed before the runs, so no test value "
             f"chose anything. Per variant: mean over seeds with a 95 % t-interval; difference from the baseline "
             f"paired by seed, paired t-test, Holm-corrected across the variants of each endpoint (α = {abl.ALPHA}); "
             f"against raw pixels (the same endpoint on raw pixels, same bank and protocol): one-sample t-test, "
             f"Holm-corrected. Verdicts: **{BETTER}** / **{WORSE}** when the corrected p < {abl.ALPHA}, otherwise "
             f"**{NOT_DISTINGUISHABLE}**; with fewer than {abl.MIN_SEEDS} paired seeds, **{TOO_FEW}**.")
    claims = []
    for endpoint in endpoints:
        rows = table[table["endpoint"] == endpoint]
        base = rows[rows["candidate"] == BASELINE].iloc[0]
        if math.isfinite(base["raw"]):
            than = " than raw pixels" if base["raw_verdict"] in (BETTER, WORSE) else ""
            claims.append(f"**{endpoint}**: baseline {_num(base['mean'])} {_ci(base['ci_low'], base['ci_high'])} "
                          f"against raw pixels {_num(base['raw'])} ({_num(base['vs_raw'], '+.2f')} "
                          f"{_ci(base['vs_raw_ci_low'], base['vs_raw_ci_high'])} points, Holm p = "
                          f"{_num(base['p_raw_holm'], '.3g')}): **{base['raw_verdict']}**{than}.")
        for r in rows[rows["candidate"] != BASELINE].itertuples():
            claims.append(f"{endpoint}: **{r.candidate}** {_num(r.mean)} {_ci(r.ci_low, r.ci_high)}, "
                          f"{_num(r.diff, '+.2f')} {_ci(r.diff_ci_low, r.diff_ci_high)} points from the baseline, "
                          f"Holm p = {_num(r.p_holm, '.3g')}, n = {r.n_paired}: **{r.verdict}**.")
    doc.bullets(claims)
    doc.table(table, f"{prefix}endpoints", "Final endpoints: per variant mean [95 % CI] over seeds; paired difference "
              "from the baseline with Holm-corrected p; the same against raw pixels.")

    def figure():
        from analysis import plots  # matplotlib only where a figure is drawn

        names = {"endpoint": "study", "candidate": "variant"}  # the ablation plot's grouping columns
        plot = plots.ablation(table.rename(columns=names), "top-1 accuracy (%)", name="endpoints")
        # its data file is the table's own (same name): written with the table's column names
        plot.tables = {k: v.rename(columns={b: a for a, b in names.items()}) for k, v in plot.tables.items()}
        plot.caption = ("One colour per endpoint; the difference is paired by seed, its verdict Holm-corrected "
                        "across the variants of that endpoint.")
        return plot

    doc.figure(figure, prefix, "Endpoints: means and paired differences")
