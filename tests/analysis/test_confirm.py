"""Confirmation statistics (analysis/confirm.py) on planted confirm.csv tables: Holm against statsmodels, CIs and
tests against scipy, Spearman on planted rankings, verdicts, and the report section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import confirm
from analysis.report import build_report
from moco.vocabulary import (BASELINE, FINAL_METRICS, FINAL_VAL_KNN, FINAL_VAL_PROBE, TEST_KNN, TEST_LINEAR,
                             raw_name)

from .conftest import make_search_study

SEEDS = [1, 2, 3]
OFFSETS = {1: -1.5, 2: 0.4, 3: 1.1}  # shared by every candidate of a seed: pairing by seed removes it
RAW = {FINAL_VAL_KNN: 81.0, FINAL_VAL_PROBE: 83.0, TEST_KNN: 80.0, TEST_LINEAR: 82.0}


def write_confirmation(run_dir: Path, effects: dict[str, tuple[float, float]], ranks: dict[str, int],
                       seed: int = 0, status: dict | None = None) -> Path:
    """confirm.csv + confirm.json as study/confirm.py writes them: candidate -> (effect, noise sd) on every endpoint
    around 80 + the seed's offset; raw pixels constant per endpoint."""
    rng = np.random.default_rng(seed)
    rows = []
    for cand, (effect, sd) in effects.items():
        for s in SEEDS:
            value = 80.0 + OFFSETS[s] + effect + (rng.normal(0, sd) if sd else 0.0)
            row = {"candidate": cand, "source_trial": f"t_{cand}", "search_rank": ranks[cand],
                   "search_value": 70.0 - ranks[cand], "seed": s, "params": json.dumps({"temperature": 0.1})}
            row.update({m: value + (0.5 if m.startswith("test") or m == TEST_LINEAR else 0.0) for m in FINAL_METRICS})
            row.update({raw_name(m): RAW[m] for m in FINAL_METRICS})
            row.update(epochs=12, compute=12.0, images_seen=180000, wall_s=100.0, workers=1,
                       status=(status or {}).get((cand, s), "completed"), trial_id=f"{cand}_{s}", error="")
            rows.append(row)
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / confirm.CSV, index=False)
    meta = {"top": len(effects) - 1, "seeds": SEEDS, "metric": "val_knn_top1", "mode": "max",
            "decision_endpoint": FINAL_VAL_KNN, "search_seeds": [0],
            "budget": {"epochs": 12, "train_subset": 15000}, "search_budget": {"epochs": 8, "train_subset": 15000}}
    (run_dir / confirm.JSON).write_text(json.dumps(meta))
    return run_dir


PLANTED = {BASELINE: (0.0, 0.0), "top1": (2.0, 0.05), "top2": (0.0, 1.0), "top3": (-2.0, 0.05)}
PLANTED_RANKS = {"top1": 1, "top2": 2, "top3": 3, BASELINE: 4}


def test_holm_matches_statsmodels_on_a_fixed_table():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    table = [0.01, 0.04, 0.03, 0.005, 0.5, 0.04, 0.0, 1.0, 0.2]
    expected = multitest.multipletests(table, method="holm")[1]
    assert confirm.holm(table) == pytest.approx(expected, abs=1e-12)
    # NaN (no test) stays NaN and does not count in the number of hypotheses
    with_nan = confirm.holm([0.01, math.nan, 0.02])
    assert math.isnan(with_nan[1])
    assert with_nan[[0, 2]] == pytest.approx(multitest.multipletests([0.01, 0.02], method="holm")[1])


def test_intervals_paired_tests_and_verdicts(tmp_path):
    conf = confirm.load(write_confirmation(tmp_path, PLANTED, PLANTED_RANKS))
    table = confirm.endpoint_table(conf).set_index(["endpoint", "candidate"])
    rows = table.loc[FINAL_VAL_KNN]
    # mean and 95 % CI against scipy's t interval
    top2 = conf.values(FINAL_VAL_KNN, "top2").to_numpy()
    lo, hi = stats.t.interval(0.95, len(top2) - 1, loc=top2.mean(), scale=stats.sem(top2))
    assert (rows.loc["top2", "ci_low"], rows.loc["top2", "ci_high"]) == pytest.approx((lo, hi))
    # paired by seed: the shared seed offsets cancel; p from scipy's paired t-test, Holm over the three candidates
    base = conf.values(FINAL_VAL_KNN, BASELINE)
    raw_p = [stats.ttest_rel(conf.values(FINAL_VAL_KNN, c), base).pvalue for c in ("top1", "top2", "top3")]
    assert list(rows.loc[["top1", "top2", "top3"], "p_value"]) == pytest.approx(raw_p)
    assert list(rows.loc[["top1", "top2", "top3"], "p_holm"]) == pytest.approx(list(confirm.holm(raw_p)))
    assert rows.loc["top1", "diff"] == pytest.approx(2.0, abs=0.2)
    assert rows.loc["top1", "verdict"] == confirm.BETTER
    assert rows.loc["top3", "verdict"] == confirm.WORSE
    assert rows.loc["top2", "verdict"] == confirm.NOT_DISTINGUISHABLE
    assert rows.loc[BASELINE, "verdict"] == "(reference)"
    # against raw pixels: one-sample t-test of the per-seed values against the raw-pixel value
    top1 = conf.values(FINAL_VAL_KNN, "top1")
    assert rows.loc["top1", "p_raw"] == pytest.approx(stats.ttest_1samp(top1, RAW[FINAL_VAL_KNN]).pvalue)
    assert rows.loc["top1", "vs_raw"] == pytest.approx(top1.mean() - RAW[FINAL_VAL_KNN])
    # the best configuration is chosen on the validation endpoint; test endpoints are not in this table
    assert confirm.best_candidate(confirm.endpoint_table(conf), FINAL_VAL_KNN)["candidate"] == "top1"
    assert set(table.index.get_level_values(0)) == {FINAL_VAL_KNN, FINAL_VAL_PROBE}


def test_too_few_seeds_and_missing_runs(tmp_path):
    status = {("top1", 3): "errored", ("top1", 2): "diverged"}
    conf = confirm.load(write_confirmation(tmp_path, PLANTED, PLANTED_RANKS, status=status))
    rows = confirm.endpoint_table(conf).set_index(["endpoint", "candidate"]).loc[FINAL_VAL_KNN]
    assert rows.loc["top1", "n_seeds"] == 1 and rows.loc["top1", "verdict"] == confirm.TOO_FEW
    assert math.isnan(rows.loc["top1", "ci_low"])


@pytest.mark.parametrize("confirmed, rho", [
    ({"top1": 3.0, "top2": 2.0, "top3": 1.0, BASELINE: 0.0}, 1.0),  # the search's order, confirmed
    ({"top1": 0.0, "top2": 1.0, "top3": 2.0, BASELINE: 3.0}, -1.0),  # reversed
    ({"top1": 2.0, "top2": 3.0, "top3": 1.0, BASELINE: 0.0}, 1 - 6 * 2 / (4 * (4 ** 2 - 1))),  # one swap: 0.8
])
def test_spearman_on_planted_rankings(tmp_path, confirmed, rho):
    effects = {c: (v, 0.0) for c, v in confirmed.items()}
    result = confirm.rank_agreement(confirm.load(write_confirmation(tmp_path, effects, PLANTED_RANKS)))
    assert result["n"] == 4 and result["rho"] == pytest.approx(rho)
    assert result["endpoint"] == FINAL_VAL_KNN


def test_spearman_undetermined_below_three(tmp_path):
    effects = {BASELINE: (0.0, 0.0), "top1": (1.0, 0.0)}
    result = confirm.rank_agreement(confirm.load(write_confirmation(tmp_path, effects, {BASELINE: 2, "top1": 1})))
    assert result["n"] == 2 and math.isnan(result["rho"]) and result["verdict"] == confirm.UNDETERMINED


def test_report_section_states_seeds_budget_endpoint_and_verdicts(tmp_path):
    study = make_search_study(tmp_path, "search", n=8)
    write_confirmation(study, PLANTED, PLANTED_RANKS)
    md = (build_report(study, formats="md") / "report.md").read_text()
    section = md[md.index("## Confirmation"):]
    assert "seeds [1, 2, 3]" in section and "seed(s) [0]" in section
    assert "12 epochs of 15000 training images" in section and "8 epochs of 15000" in section
    first_claim = next(line for line in section.splitlines() if line.startswith("- Best configuration"))
    assert "**top1**" in first_claim and FINAL_VAL_KNN in first_claim and "**better** than the MoCo v2" in first_claim
    assert "search trial `t_top1`, search rank 1," in first_claim
    assert "vs raw pixels" in section and "Spearman" in section and "n = 4 configurations" in section
    assert "Final table, test endpoints" in section
    claims = section[:section.index("Final table")]
    assert TEST_KNN not in claims.split("Validation endpoints (decide)")[0]  # tests never decide
    for name in ("confirm_validation", "confirm_final", "confirm_ranks"):
        assert (study / "report" / "tables" / f"{name}.csv").is_file()


def test_no_confirmation_no_section(tmp_path):
    study = make_search_study(tmp_path, "plain", n=8)
    assert confirm.load(study) is None
    assert "## Confirmation" not in (build_report(study, formats="md") / "report.md").read_text()


def test_a_seeded_grid_reads_as_a_confirmation_with_holm_verdicts_per_endpoint(tmp_path):
    """A grid's last reports (final_eval) become one row per run; the planted effects (dual_view +2, filter -2 with
    tiny noise, selective 0 with sd 1) get their verdicts on every endpoint, Holm over the four variants."""
    from analysis.load import load_study

    from .conftest import FINAL, VARIANTS, make_grid_study

    study = load_study(make_grid_study(tmp_path, seeds=5, final=True))
    conf = confirm.from_grid(study)
    assert len(conf.table) == 5 * len(VARIANTS) and conf.candidates[0] == BASELINE
    table = confirm.endpoint_table(conf, tuple(FINAL))
    for endpoint, (offset, raw) in FINAL.items():
        rows = table[table["endpoint"] == endpoint].set_index("candidate")
        assert rows.loc["dual_view", "verdict"] == confirm.BETTER
        assert rows.loc["all", "verdict"] == confirm.BETTER
        assert rows.loc["filter", "verdict"] == confirm.WORSE
        assert rows.loc["selective", "verdict"] == confirm.NOT_DISTINGUISHABLE
        assert rows.loc["dual_view", "diff"] == pytest.approx(2.0, abs=0.3)
        assert rows.loc[BASELINE, "raw"] == raw
        p = rows.loc[rows.index != BASELINE, "p_value"].to_numpy()
        assert rows.loc[rows.index != BASELINE, "p_holm"].to_numpy() == pytest.approx(confirm.holm(p))


def test_a_grid_without_final_endpoints_has_no_endpoint_view(tmp_path):
    from analysis.load import load_study

    from .conftest import make_grid_study

    assert confirm.from_grid(load_study(make_grid_study(tmp_path))) is None
    assert confirm.from_grid(load_study(make_search_study(tmp_path))) is None


def test_the_grid_report_states_endpoints_diagnostics_and_the_command(tmp_path):
    from .conftest import make_grid_study

    grid = make_grid_study(tmp_path, seeds=5, final=True)
    page = tmp_path / "docs" / "negatives.md"
    out = build_report(grid, out=page, resamples=0, command="python -m analysis.report runs/ablation")
    assert out == page and page.is_file()
    md = page.read_text()
    assert "## Endpoints" in md and "Holm-corrected across the variants of each endpoint" in md
    assert "test_knn_top1: **dual_view**" in md and "**better**" in md
    assert "Regenerate this page: `python -m analysis.report runs/ablation`" in md
    folder = tmp_path / "docs" / "negatives"
    for link in ("negatives/figures/endpoints.png", "negatives/tables/endpoints.csv",
                 "negatives/tables/diagnostics.csv", "negatives/figures/variant_curves.png"):
        assert f"]({link})" in md, link
        assert (page.parent / link).is_file(), link
    endpoints = pd.read_csv(folder / "tables" / "endpoints.csv")  # the figure's data file is the table's
    assert list(endpoints.columns[:2]) == ["endpoint", "candidate"] and "test_knn_top1" in set(endpoints.endpoint)
    diag = pd.read_csv(folder / "tables" / "diagnostics.csv")
    assert diag["variant"].iloc[0] == "baseline" and (diag["n"] == 5).all() and "false_neg_rate" in diag
    assert (folder / "report.html").is_file() and not (folder / "report.md").exists()
