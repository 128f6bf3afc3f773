"""Fast unit checks of loading, statistics, importance and individual figures (no full report)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import ablation as abl
from analysis import curves, plots
from analysis.importance import compute_importance, rebuild_optuna_study
from analysis.load import ReportError, load_studies, load_study

from .conftest import make_grid_study, make_search_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return load_study(make_search_study(tmp_path_factory.mktemp("u"), n=24, broken=True))


def test_load_marks_statuses_and_tolerates_extra_columns(study):
    t = study.trials
    assert t["trial_id"].map(type).eq(str).all()
    assert t["is_baseline"].dtype == bool and t["is_baseline"].sum() == 1
    assert set(t["status"]) == {"completed", "pruned", "diverged", "errored", "running"}
    assert "extra_column" in t.columns
    assert study.param("temperature").log and study.param("epochs") is None  # fixed params are not searched
    assert study.best_trial()["trial_id"] == "planted_best"
    assert not study.completed["status"].ne("completed").any()


def test_string_booleans_and_missing_history(tmp_path):
    path = make_search_study(tmp_path, n=4)
    t = pd.read_csv(path / "trials.csv")
    t["is_baseline"] = ["true", "false", "", "False"]
    t.to_csv(path / "trials.csv", index=False)
    (path / "history.csv").unlink()
    s = load_study(path)
    assert s.trials["is_baseline"].tolist() == [True, False, False, False]
    assert s.history.empty
    with pytest.raises(plots.Skip, match="no values"):
        curves.learning_curves(s)


def test_load_studies_rejects_different_modes(tmp_path):
    import json

    a, b = make_search_study(tmp_path, "a", n=3), make_search_study(tmp_path, "b", n=3)
    meta = json.loads((b / "study.json").read_text())
    meta["mode"] = "min"
    (b / "study.json").write_text(json.dumps(meta))
    with pytest.raises(ReportError, match="different metrics"):
        load_studies([a, b])


def test_t_interval_and_paired_test_match_scipy():
    x = np.array([1.0, 2.5, 1.7, 2.2])
    lo, hi = abl.t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (lo, hi) == pytest.approx(ref)
    a, b = np.array([70.0, 72.0, 71.0]), np.array([71.9, 74.2, 72.8])
    p, dz = abl.paired_test(b - a)
    assert p == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert dz == pytest.approx((b - a).mean() / (b - a).std(ddof=1))
    assert abl.paired_test(np.array([1.0, 1.0, 1.0])) == (0.0, math.inf)
    assert abl.verdict(2.0, 0.001, 2) == abl.TOO_FEW
    assert abl.verdict(-2.0, 0.001, 3) == abl.HURTS
    assert abl.verdict(-2.0, 0.001, 3, maximize=False) == abl.HELPS
    assert abl.verdict(0.5, 0.3, 5) == abl.NOT_DISTINGUISHABLE


def test_ablation_pairs_by_seed_and_ignores_failed_runs(tmp_path):
    path = make_grid_study(tmp_path)
    t = pd.read_csv(path / "trials.csv")
    t.loc[(t["variant"] == "dual_view") & (t["seed"] == 2), "status"] = "diverged"
    t.to_csv(path / "trials.csv", index=False)
    table = abl.ablation_table(load_study(path)).set_index("variant")
    assert table.loc["dual_view", "n_paired"] == 2
    assert table.loc["dual_view", "verdict"] == abl.TOO_FEW
    assert table.loc["baseline", "verdict"] == "(reference)"
    assert table.loc["filter", "verdict"] == abl.HURTS


def test_rebuilt_optuna_study(study):
    o = rebuild_optuna_study(study)
    states = pd.Series([t.state.name for t in o.trials]).value_counts()
    assert states["COMPLETE"] == (study.trials["status"] == "completed").sum()
    assert states["PRUNED"] == (study.trials["status"] == "pruned").sum()
    pruned = next(t for t in o.trials if t.state.name == "PRUNED")
    assert pruned.intermediate_values  # last reported values carried over
    dist = o.trials[0].distributions["temperature"]
    assert dist.log and dist.low == pytest.approx(0.05)
    assert o.trials[0].params["queue_size"] == 4096  # categorical matched to the declared choice


def test_importance_skipped_without_variation(tmp_path):
    path = make_search_study(tmp_path, n=4)
    t = pd.read_csv(path / "trials.csv")
    t["status"], t["val_knn_top1"] = "completed", 50.0
    t.to_csv(path / "trials.csv", index=False)
    result = compute_importance(load_study(path), resamples=0)
    assert result.table.empty and "same value" in result.skipped["all"]


def test_figures_use_log_axes_and_mark_pruned(study):
    p = plots.metric_vs_params(study)
    scales = {ax.get_xlabel(): ax.get_xscale() for ax in p.fig.axes if ax.get_xlabel()}
    assert scales[plots.label("temperature")] == "log"
    assert scales[plots.label("hard_negative_ratio")] == "linear"
    plt.close(p.fig)
    lc = curves.learning_curves(study)
    styles = {line.get_linestyle() for line in lc.fig.axes[0].get_lines()}
    assert "--" in styles and "-" in styles  # pruned trials dashed, completed solid
    assert set(lc.tables["learning_curves"]["status"]) >= {"completed", "pruned"}
    plt.close(lc.fig)


def test_heatmap_skips_unsearched_parameter(study):
    study = load_study(study.path)
    study.params = [p for p in study.params if p.name != "queue_size"]
    with pytest.raises(plots.Skip, match="queue_size not searched"):
        plots.interaction_heatmap(study, "queue_size", "hard_negative_ratio")
    h = plots.interaction_heatmap(study, "temperature", "hard_negative_ratio")
    table = h.tables["heatmap_temperature_x_hard_negative_ratio"]
    assert table["count"].sum() == len(study.completed)
    plt.close(h.fig)


def test_importance_figure_names_methods(study):
    imp = compute_importance(study, resamples=0)
    p = plots.importance(imp.table, study.name)
    title = p.fig.axes[0].get_title()
    assert "fANOVA" in title and "PED-ANOVA" in title
    plt.close(p.fig)


def test_zero_padded_trial_ids_stay_text(tmp_path):
    path = make_search_study(tmp_path, n=4)
    for name in ("trials.csv", "history.csv"):
        df = pd.read_csv(path / name)
        df["trial_id"] = df["trial_id"].map({"t000": "00000", "t001": "00001", "planted_best": "00002",
                                             "t003": "00003"})
        df.to_csv(path / name, index=False)
    s = load_study(path)
    assert s.best_trial()["trial_id"] == "00002"
    assert set(s.history["trial_id"]) <= set(s.trials["trial_id"])
