"""Ablation statistics for seeded grid studies: per-variant mean with a 95 % t-interval over seeds, the paired
difference from the baseline (paired t-test by seed, Cohen's d_z), compute cost, and a plain verdict.

Verdicts are deliberately conservative: "helps"/"hurts" only when the paired test rejects at ``ALPHA`` (two-sided,
uncorrected for the number of variants); otherwise "not distinguishable at this budget and seed count"; and with
fewer than ``MIN_SEEDS`` paired seeds, "too few seeds to conclude".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import Study
from moco.vocabulary import STEP_STATS

ALPHA = 0.05
MIN_SEEDS = 3
HELPS, HURTS = "helps", "hurts"
NOT_DISTINGUISHABLE = "not distinguishable at this budget and seed count"
TOO_FEW = "too few seeds to conclude"
BASELINE = "baseline"
COLUMNS = [
    "study", "variant", "n_seeds", "mean", "ci_low", "ci_high", "n_paired", "diff", "diff_ci_low", "diff_ci_high",
    "p_value", "cohens_dz", "cpu_hours", "gpu_hours", "images_seen", "verdict",
]


def is_ablation(study: Study) -> bool:
    """True when the study has at least two variants, one of them the baseline, with completed trials."""
    t = study.trials
    if "variant" not in t.columns or t["variant"].dropna().nunique() < 2:
        return False
    return baseline_variant(study) is not None


def baseline_variant(study: Study) -> str | None:
    """The baseline variant: the one named ``baseline``, else the variant of the ``is_baseline`` trials."""
    variants = study.trials["variant"].dropna().astype(str)
    if BASELINE in set(variants):
        return BASELINE
    marked = study.trials.loc[study.trials["is_baseline"], "variant"].dropna().astype(str)
    return marked.iloc[0] if len(marked) else None


def variant_order(study: Study) -> list[str]:
    """The study's variants in the order its trials ran (by trial number), the baseline variant first."""
    base, t = baseline_variant(study), study.trials
    ranked = t.sort_values("trial_number", kind="stable") if "trial_number" in t.columns else t
    return [base] + [v for v in pd.unique(ranked["variant"].dropna().astype(str)) if v != base]


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean; NaN bounds with fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    m, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(n))
    if se == 0:  # all values equal: scipy refuses a zero scale
        return m, m
    lo, hi = stats.t.interval(level, n - 1, loc=m, scale=se)
    return float(lo), float(hi)


def paired_test(diffs: np.ndarray) -> tuple[float, float]:
    """(p-value, Cohen's d_z) of paired differences (variant - baseline, one per seed).

    d_z = mean(diff) / sd(diff). When every seed gives the same non-zero difference the test is degenerate:
    p = 0 and d_z = +/-inf (a deterministic effect); identical zero differences give p = 1, d_z = 0.
    """
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return math.nan, math.nan
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    if sd == 0 or not math.isfinite(sd):
        return (0.0, math.copysign(math.inf, mean)) if mean != 0 else (1.0, 0.0)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue)  # identical to ttest_rel(variant, baseline)
    return p, mean / sd


def verdict(diff: float, p: float, n_paired: int, maximize: bool = True,
            labels: tuple[str, str] = (HELPS, HURTS)) -> str:
    """Plain-language verdict of one component (or configuration) against the baseline: ``labels`` = (better, worse)."""
    if n_paired < MIN_SEEDS:
        return TOO_FEW
    if not math.isfinite(p) or p >= ALPHA or diff == 0:
        return NOT_DISTINGUISHABLE
    better = diff > 0 if maximize else diff < 0
    return labels[0] if better else labels[1]


def ablation_table(study: Study, metric: str | None = None) -> pd.DataFrame:
    """One row per variant of ``study`` (baseline first): statistics over seeds and the verdict against baseline.

    Only completed trials with a finite metric count. When a variant has several trials for one seed, their mean
    is that seed's value.
    """
    metric = metric or study.metric
    base = baseline_variant(study)
    t = study.completed.dropna(subset=["variant"]).copy()
    if "seed" not in t.columns:
        t["seed"] = 0
    t["variant"] = t["variant"].astype(str)
    per_seed = t.groupby(["variant", "seed"])[metric].mean()
    cost = t.groupby("variant")[["cpu_hours", "gpu_hours", "images_seen"]].mean()
    order = variant_order(study)
    base_seeds = per_seed.loc[base] if base in per_seed.index.get_level_values(0) else pd.Series(dtype=float)
    rows = []
    for v in order:
        vals = per_seed.loc[v] if v in per_seed.index.get_level_values(0) else pd.Series(dtype=float)
        lo, hi = t_interval(vals.to_numpy())
        row = {"study": study.name, "variant": v, "n_seeds": len(vals),
               "mean": float(vals.mean()) if len(vals) else math.nan, "ci_low": lo, "ci_high": hi}
        for c in ("cpu_hours", "gpu_hours", "images_seen"):
            row[c] = float(cost.loc[v, c]) if v in cost.index else math.nan
        if v == base:
            row.update(n_paired=len(vals), diff=0.0, diff_ci_low=math.nan, diff_ci_high=math.nan,
                       p_value=math.nan, cohens_dz=math.nan, verdict="(reference)")
        else:
            common = vals.index.intersection(base_seeds.index)
            diffs = (vals.loc[common] - base_seeds.loc[common]).to_numpy(dtype=float)
            p, dz = paired_test(diffs)
            dlo, dhi = t_interval(diffs)
            d = float(diffs.mean()) if len(diffs) else math.nan
            row.update(n_paired=len(diffs), diff=d, diff_ci_low=dlo, diff_ci_high=dhi, p_value=p, cohens_dz=dz,
                       verdict=verdict(d, p, len(diffs), study.maximize) if len(diffs) else TOO_FEW)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def ablation_tables(studies: list[Study], metric: str | None = None) -> pd.DataFrame:
    """Ablation rows of every ablation study, stacked (one ``study`` column) for side-by-side comparison."""
    frames = [ablation_table(s, metric) for s in studies if is_ablation(s)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per variant, one column per study with 'mean [CI] (diff, verdict)'."""
    if table.empty:
        return pd.DataFrame()

    def cell(r: pd.Series) -> str:
        s = f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if math.isfinite(r["ci_low"]) \
            else f"{r['mean']:.2f}"
        if r["verdict"] != "(reference)":
            s += f"; {r['diff']:+.2f}: {r['verdict']}"
        return s

    t = table.assign(cell=table.apply(cell, axis=1))
    wide = t.pivot_table(index="variant", columns="study", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(pd.unique(t["variant"])).reset_index()
    wide.columns.name = None
    return wide


#: What :func:`diagnostics_table` reads from each trial's last epoch: the step statistics that explain a negative
#: strategy's effect (its false-negative share, how many negatives it keeps, how similar they are), the embedding's
#: alignment and uniformity, and the training throughput.
DIAGNOSTICS = (*STEP_STATS, "alignment", "uniformity", "loss", "images_per_s")


def diagnostics_table(study: Study) -> pd.DataFrame:
    """One row per variant (baseline first): the mean over its completed trials of each :data:`DIAGNOSTICS` column
    at the trial's last epoch (``history.csv``), with ``n`` the number of trials; empty when there is no history."""
    h, t = study.history, study.completed.dropna(subset=["variant"])
    cols = [c for c in DIAGNOSTICS if c in h.columns and h[c].notna().any()]
    if h.empty or not cols or t.empty:
        return pd.DataFrame()
    last = h.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")[cols]
    rows = last.join(t.set_index("trial_id")["variant"].astype(str), how="inner")
    out = rows.groupby("variant")[cols].mean().reindex([v for v in variant_order(study) if v in set(rows["variant"])])
    out.insert(0, "n", rows.groupby("variant").size())
    return out.reset_index()
