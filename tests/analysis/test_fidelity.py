"""Comparing trials at one fidelity: the common rung, importance with intervals, boundary warnings, the raw-pixel
reference line and readable log axes (planted studies from conftest.py)."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import curves, plots, style
from analysis.bounds import boundary_table, boundary_warnings
from analysis.fidelity import ASHA, OBSERVED, at_rung, common_rung, rung_counts, time_attribute, values_at
from analysis.importance import MIN_TRUSTED, compute_importance
from analysis.load import load_study
from analysis.report import build_report, main

from .conftest import make_grid_study, make_rung_study, make_search_study

RESAMPLES = 100  # enough for stable 95 % percentile intervals on these planted studies, and fast


@pytest.fixture(scope="module")
def rung_study(tmp_path_factory):
    return load_study(make_rung_study(tmp_path_factory.mktemp("rung")))


def _reach(study, attr):
    """Independent count: trials whose history has a value of the metric at some time >= level."""
    h = study.history.dropna(subset=[study.metric])
    return h.groupby("trial_id")[attr].max()


# ------------------------------------------------------------------------------------------------ the common rung
def test_common_rung_is_the_highest_asha_rung_enough_trials_reached(rung_study):
    assert time_attribute(rung_study) == "compute"
    counts = rung_counts(rung_study)
    assert counts["level"].tolist() == [1, 2, 4, 8] and set(counts["source"]) == {ASHA}
    reach = _reach(rung_study, "compute")
    assert counts["n_trials"].tolist() == [int((reach >= x).sum()) for x in (1, 2, 4, 8)]
    assert counts["n_trials"].tolist()[2:] == [12, 6]
    rung = common_rung(rung_study)  # default: at least 8 trials
    assert (rung.level, rung.n_trials, rung.n_total, rung.time_attr) == (4, 12, 48, "compute")
    assert "compute ≥ 4" in rung.label and "12 of 48 trials" in rung.label
    assert common_rung(rung_study, min_trials=13).level == 2
    assert common_rung(rung_study, min_trials=6).level == 8
    assert common_rung(rung_study, min_trials=1000).level == 1  # fewer trials than asked: all of them


def test_value_at_a_rung_is_the_first_report_at_or_past_it(rung_study):
    vals = values_at(rung_study, 1.0).set_index("trial_id")
    assert len(vals) == 48
    h = rung_study.history
    one_way = rung_study.trials.loc[rung_study.trials["param_dual_view_weight"] == 1.0, "trial_id"].iloc[1]
    dual = rung_study.trials.loc[rung_study.trials["param_dual_view_weight"] < 1.0, "trial_id"].iloc[0]
    assert vals.loc[one_way, "at"] == 1 and vals.loc[dual, "at"] == 2  # a dual-view epoch adds 2 compute
    first_dual = h[(h["trial_id"] == dual) & (h["epoch"] == 1)]["val_knn_top1"].iloc[0]
    assert vals.loc[dual, "value"] == first_dual


def test_view_at_rung_compares_every_trial_that_reached_it(rung_study):
    rung = common_rung(rung_study)
    view = at_rung(rung_study, rung)
    assert len(view.trials) == 12 and (view.trials["status"] == "completed").all()
    assert set(view.trials["final_status"]) == {"completed", "pruned"}
    assert (view.trials["at_compute"] >= 4).all()
    assert view.fidelity == rung and view.fidelity_label == rung.label
    assert rung_study.fidelity is None and len(rung_study.trials) == 48  # the study itself is unchanged


def test_older_study_falls_back_to_epochs(tmp_path):
    s = load_study(make_rung_study(tmp_path, time_attr=False))
    assert time_attribute(s) == "epoch"
    rung = common_rung(s)
    reach = _reach(s, "epoch")
    assert rung.time_attr == "epoch" and rung.n_trials == int((reach >= rung.level).sum()) >= 8
    counts = rung_counts(s)
    assert counts["level"].tolist() == [1, 2, 4, 8]  # the same rungs formula, on epochs
    assert (counts.loc[counts["level"] > rung.level, "n_trials"] < 8).all()


def test_without_asha_the_rung_is_the_highest_time_enough_trials_reached(tmp_path):
    grid = load_study(make_grid_study(tmp_path))  # scheduler none, every run to the end
    rung = common_rung(grid)
    assert rung.source == OBSERVED and rung.level == grid.history["epoch"].max() and rung.n_trials == 15
    path = make_search_study(tmp_path, "none", n=20)  # some trials stopped early (pruned at epoch 2)
    meta = json.loads((path / "study.json").read_text())
    meta["scheduler"] = "none"
    (path / "study.json").write_text(json.dumps(meta))
    s = load_study(path)
    reach = _reach(s, "epoch")
    rung = common_rung(s, min_trials=int((reach >= 6).sum()) + 1)
    assert rung.source == OBSERVED and rung.level == 2  # epochs 4 and 6: one trial short (pruned ones stop at 2)
    assert common_rung(s, min_trials=int((reach >= 6).sum())).level == 6


def test_no_history_values_means_no_rung(tmp_path):
    s = load_study(make_search_study(tmp_path, n=6))
    s.history = s.history.drop(columns=["val_knn_top1"])
    assert common_rung(s) is None


# ------------------------------------------------------------------------------------------------ importance
def _separates(imp, method, planted):
    t = imp.table[imp.table["method"] == method].set_index("param")
    others = t.drop(index=planted)
    return t["importance"].idxmax() == planted and t.loc[planted, "ci_low"] > others["ci_high"].max()


def test_importance_at_the_rung_finds_the_planted_parameter_and_completed_only_does_not(rung_study):
    at = compute_importance(at_rung(rung_study, common_rung(rung_study)), resamples=RESAMPLES)
    assert at.n_complete == 12 and (at.table["resamples"] > RESAMPLES * 0.9).all()
    assert _separates(at, "fANOVA", "temperature"), at.table
    assert (at.table["ci_low"] <= at.table["importance"] + 1e-9).all()
    done = compute_importance(rung_study, resamples=RESAMPLES)  # the 6 completed trials, at their final values
    assert done.n_complete == 6
    assert not _separates(done, "fANOVA", "temperature") and not _separates(done, "PED-ANOVA", "temperature")


def test_bootstrap_is_deterministic_given_the_seed(rung_study):
    view = at_rung(rung_study, common_rung(rung_study))
    a, b = (compute_importance(view, resamples=10, seed=3) for _ in range(2))
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not compute_importance(view, resamples=10, seed=4).table["ci_low"].equals(a.table["ci_low"])


def test_warning_under_ten_trials_and_not_above(rung_study):
    view = at_rung(rung_study, common_rung(rung_study))
    few = compute_importance(rung_study, resamples=0)
    assert few.n_complete < MIN_TRUSTED and "6 trials" in few.warning and "cannot be trusted" in few.warning
    assert few.table["ci_low"].isna().all()
    enough = compute_importance(view, resamples=0)
    assert enough.n_complete >= MIN_TRUSTED and enough.warning == ""


def test_importance_figure_names_the_rung_and_draws_intervals(rung_study):
    view = at_rung(rung_study, common_rung(rung_study))
    imp = compute_importance(view, resamples=20)
    p = plots.importance(imp.table, view.name, imp.fidelity, imp.warning)
    ax = p.fig.axes[0]
    assert "compute ≥ 4" in ax.get_title() and "12 of 48 trials" in ax.get_title()
    assert len(ax.collections) > 0  # the error bars
    assert (p.tables["importance"]["view"] == view.fidelity_label).all()
    plt.close(p.fig)


# ------------------------------------------------------------------------------------------------ boundaries
def _study_with_top(tmp_path, temperatures, ratios):
    """A completed search whose three best trials have the given temperatures and ratios (the others interior)."""
    s = load_study(make_search_study(tmp_path, n=12))
    t = s.trials
    t["status"] = "completed"
    t["val_knn_top1"] = np.arange(len(t), dtype=float)  # the last three rows are the best
    t["param_temperature"], t["param_hard_negative_ratio"] = 0.15, 0.5
    t.loc[t.index[-3:], "param_temperature"] = temperatures
    t.loc[t.index[-3:], "param_hard_negative_ratio"] = ratios
    return s


def test_boundary_warning_for_a_best_at_a_bound_only(tmp_path):
    # temperature 0.05-0.5 is log-scaled: 0.46 is 96 % of the way on the log scale (89 % on a linear one)
    s = _study_with_top(tmp_path, [0.46, 0.48, 0.5], [0.06, 0.05, 0.08])
    flagged = boundary_table(s).set_index("param")
    assert flagged.loc["temperature", "bound"] == "high" and flagged.loc["temperature", "scale"] == "log"
    assert flagged.loc["hard_negative_ratio", "bound"] == "low"
    assert "queue_size" not in flagged.index  # categorical
    text = " ".join(boundary_warnings(s))
    assert "the optimum may lie outside the range; widen it" in text and "temperature" in text
    interior = _study_with_top(tmp_path / "b", [0.1, 0.2, 0.3], [0.5, 0.6, 0.9])
    assert boundary_warnings(interior) == []
    linear_only = _study_with_top(tmp_path / "c", [0.15, 0.15, 0.15], [0.9, 0.92, 0.94])
    assert boundary_warnings(linear_only) == []  # 0.9 of 0.05-1.0 is 89 % of the range: not within 5 %


def test_boundary_warning_at_a_limit_of_the_key_does_not_ask_to_widen(tmp_path):
    s = _study_with_top(tmp_path, [0.15, 0.15, 0.15], [0.97, 0.99, 1.0])  # ratio 1 keeps every negative
    flagged = boundary_table(s).set_index("param")
    assert flagged.loc["hard_negative_ratio", "natural"] == "every negative kept (MoCo v2)"
    (text,) = boundary_warnings(s)
    assert "a limit of the key (every negative kept (MoCo v2)), so the range cannot be widened there" in text
    assert "widen it" not in text


# ------------------------------------------------------------------------------------------------ raw pixels
def _raw_lines(fig):
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == style.RAW_LABEL]


def test_raw_pixel_line_on_every_metric_figure(rung_study):
    raw = rung_study.raw_pixel_value()
    first = rung_study.history.dropna(subset=["raw_val_knn_top1"]).groupby("trial_id")["raw_val_knn_top1"].first()
    assert raw == pytest.approx(float(np.median(first)))
    view = at_rung(rung_study, common_rung(rung_study))
    for p in (curves.learning_curves(rung_study), curves.optimization_history([rung_study]),
              plots.metric_vs_params(view, rung_study)):
        lines = _raw_lines(p.fig)
        assert lines and all(ln.get_ydata()[0] == pytest.approx(raw) for ln in lines), p.name
        plt.close(p.fig)


@pytest.mark.parametrize("column", ["absent", "all_nan"])
def test_old_studies_render_without_raw_line(tmp_path, column):
    s = load_study(make_rung_study(tmp_path, raw=column == "all_nan"))
    if column == "all_nan":
        s.history["raw_val_knn_top1"] = math.nan
    assert "raw_val_knn_top1" in s.history.columns or column == "absent"
    assert math.isnan(s.raw_pixel_value())
    for p in (curves.learning_curves(s), curves.optimization_history([s]), plots.metric_vs_params(s)):
        assert not _raw_lines(p.fig)
        plt.close(p.fig)


# ------------------------------------------------------------------------------------------------ log axes
def _visible_labels(fig, ax):
    fig.canvas.draw()
    lo, hi = sorted(ax.get_xlim())
    ticks = [t for t in ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
             if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
    return [t.label1.get_text() for t in ticks], [t.label1.get_window_extent() for t in ticks]


def test_log_axes_have_readable_ticks(rung_study):
    fig_mv = plots.metric_vs_params(at_rung(rung_study, common_rung(rung_study)), rung_study)
    hn = load_study(make_search_study(rung_study.path.parent / "hn", n=12))
    hn.param("hard_negative_ratio").log = True  # as in the default space
    fig_hn = curves.hard_negative_diagnostics(hn)
    checked = 0
    for p in (fig_mv, fig_hn):
        for ax in p.fig.axes:
            if ax.get_xscale() != "log":
                continue
            texts, boxes = _visible_labels(p.fig, ax)
            assert len(texts) >= 2 and len(set(texts)) == len(texts), texts
            assert all(float(t) > 0 for t in texts)  # plain numbers, no 10^k mathtext
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), texts
            checked += 1
        plt.close(p.fig)
    assert checked == 3  # temperature in both blocks of metric_vs_params, ρ in the diagnostics


def test_log_ticks_are_short_sequences():
    assert style.log_axis is not None
    from analysis.style import log_ticks

    assert log_ticks(0.05, 0.5) == [0.05, 0.1, 0.2, 0.5]
    assert log_ticks(0.01, 1.0) == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert 2 <= len(log_ticks(1e-6, 1.0)) <= 6
    assert len(log_ticks(0.3, 0.45)) >= 2


# ------------------------------------------------------------------------------------------------ the report
def test_report_compares_all_trials_at_one_rung(tmp_path):
    out = build_report(make_rung_study(tmp_path), formats="md", resamples=20)
    md = (out / "report.md").read_text()
    assert "compared at **compute ≥ 4 (ASHA rung), 12 of 48 trials**" in md
    table = pd.read_csv(out / "tables" / "importance_table.csv")
    assert {"fANOVA CI low", "fANOVA CI high", "trials", "fidelity"} <= set(table.columns)
    assert (table["fidelity"] == "compute ≥ 4 (ASHA rung), 12 of 48 trials").all() and (table["trials"] == 12).all()
    mv = pd.read_csv(out / "tables" / "metric_vs_params.csv")
    assert mv["view"].value_counts().to_dict() == {"final values": 48, "compute ≥ 4 (ASHA rung), 12 of 48 trials": 12}
    assert "Warning:" not in md
    svg = (out / "figures" / "metric_vs_params.svg").read_text()
    assert "compute ≥ 4 (ASHA rung)" in svg and "raw pixels" in svg
    assert "### Search-range boundaries" in md


def test_cli_sets_the_trials_a_rung_must_hold(tmp_path):
    study = make_rung_study(tmp_path)
    assert main([str(study), "--min-trials", "13", "--resamples", "0", "--format", "md"]) == 0
    md = (study / "report" / "report.md").read_text()
    assert "compared at **compute ≥ 2 (ASHA rung)" in md and "No intervals" in md
