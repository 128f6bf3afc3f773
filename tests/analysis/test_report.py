"""End-to-end checks of the report on synthetic studies with planted effects (see conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from analysis.report import ReportError, build_report, main

from .conftest import make_grid_study, make_search_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Build each report once per module (figures are the slow part)."""
    root = tmp_path_factory.mktemp("studies")
    search = make_search_study(root, "search")
    broken = make_search_study(root, "broken", n=20, seed=3, broken=True, status="interrupted")
    grid = make_grid_study(root, "ablation")
    grid2 = make_grid_study(root, "ablation_b", seed=7)
    few = 30  # bootstrap resamples: intervals are checked in test_fidelity.py; keep these reports fast
    return {
        "search": build_report([search], resamples=few),
        "broken": build_report(broken, resamples=few),
        "grid": build_report([grid, grid2], out=root / "grid_report", resamples=few),
    }


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_best_configuration_is_the_planted_one(reports):
    md = _read(reports["search"] / "report.md")
    assert "best trial `planted_best`" in md
    best = pd.read_csv(reports["search"] / "tables" / "best_configs.csv")
    assert best.loc[0, "trial_id"] == "planted_best"
    assert best.loc[0, "param_temperature"] == pytest.approx(0.1)


def test_planted_importance_order(reports):
    imp = pd.read_csv(reports["search"] / "tables" / "importance.csv")
    assert set(imp["method"]) == {"fANOVA", "PED-ANOVA"}
    order = {m: g.sort_values("importance", ascending=False)["param"].tolist() for m, g in imp.groupby("method")}
    # fANOVA (variance decomposition) recovers the full planted order
    assert order["fANOVA"][:2] == ["temperature", "hard_negative_ratio"], order
    # PED-ANOVA asks what separates the top 10 % of trials: both planted parameters, ahead of the null ones
    assert set(order["PED-ANOVA"][:2]) == {"temperature", "hard_negative_ratio"}, order
    weights = imp[imp["method"] == "fANOVA"].set_index("param")["importance"]
    assert weights["temperature"] > 0.5 > weights[["queue_size", "false_negative_threshold", "dual_view_weight"]].max()


def test_ablation_verdicts(reports):
    ab = pd.read_csv(reports["grid"] / "tables" / "ablation.csv")
    assert set(ab["study"]) == {"ablation", "ablation_b"}  # side by side
    for study, g in ab.groupby("study"):
        v = g.set_index("variant")["verdict"]
        assert v["dual_view"] == "helps"
        assert v["filter"] == "hurts"
        assert v["selective"] == "not distinguishable at this budget and seed count"
        dv = g.set_index("variant").loc["dual_view"]
        assert dv["diff"] == pytest.approx(2.0, abs=0.3)
        assert dv["ci_low"] < dv["mean"] < dv["ci_high"]
        assert dv["images_seen"] == 2 * g.set_index("variant").loc["baseline", "images_seen"]
    wide = pd.read_csv(reports["grid"] / "tables" / "ablation_side_by_side.csv")
    assert list(wide.columns) == ["variant", "ablation", "ablation_b"]
    assert "helps" in _read(reports["grid"] / "report.md")


def test_every_figure_is_a_valid_image_with_data(reports):
    names = {p.stem for p in (reports["search"] / "figures").glob("*.png")}
    expected = {"metric_vs_params", "heatmap_queue_size_x_hard_negative_ratio",
                "heatmap_temperature_x_hard_negative_ratio", "learning_curves", "optimization_history", "importance",
                "parallel_coordinates", "hard_negative_diagnostics"}
    assert expected <= names
    for rep in reports.values():
        md = _read(rep / "report.md")
        assert "could not be drawn" not in md
        for png in (rep / "figures").glob("*.png"):
            data = png.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, png
            img = mpimg.imread(io.BytesIO(data), format="png")
            assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
            svg = png.with_suffix(".svg")
            assert svg.stat().st_size > 1000 and "<svg" in svg.read_text()[:2000]
            assert f"figures/{png.name}" in md
        for csv in (rep / "tables").glob("*.csv"):
            assert csv.stat().st_size > 0


def test_html_is_self_contained(reports):
    html = _read(reports["search"] / "report.html")
    n_figs = len(list((reports["search"] / "figures").glob("*.png")))
    assert html.count("data:image/png;base64,") == n_figs
    assert "src='figures/" not in html and 'src="figures/' not in html and "http" not in html


def test_log_axis_and_skips_on_grid(reports):
    svg = _read(reports["search"] / "figures" / "metric_vs_params.svg")
    assert "temperature" in svg
    md = _read(reports["grid"] / "report.md")
    assert "Heatmap queue_size × hard_negative_ratio: skipped (queue_size and hard_negative_ratio not searched)" in md


def test_incomplete_study_still_reports(reports):
    md = _read(reports["broken"] / "report.md")
    assert "marked `interrupted`" in md
    assert "2 diverged trial(s)" in md and "1 errored trial(s)" in md and "1 running trial(s)" in md
    summary = pd.read_csv(reports["broken"] / "tables" / "summary.csv")
    assert summary.loc[0, "diverged"] == 2 and summary.loc[0, "errored"] == 1
    unfinished = pd.read_csv(reports["broken"] / "tables" / "unfinished_trials.csv")
    assert "CUDA OOM" in " ".join(unfinished["error"].dropna())
    assert (reports["broken"] / "report.html").is_file()


def test_rerun_replaces_report_atomically(tmp_path):
    study = make_search_study(tmp_path, n=6)
    out = build_report(study, formats="md", resamples=0)
    (out / "stale.txt").write_text("old")
    assert build_report(study, formats=("md",), resamples=0) == out
    assert not (out / "stale.txt").exists() and (out / "report.md").exists() and not (out / "report.html").exists()
    assert [p.name for p in study.iterdir() if p.name.startswith(".")] == []


def test_tiny_study_skips_importance_with_reason(tmp_path):
    study = make_search_study(tmp_path, n=2)  # baseline + planted best
    trials = pd.read_csv(study / "trials.csv")
    trials.loc[1, "status"] = "errored"
    trials.to_csv(study / "trials.csv", index=False)
    history = pd.read_csv(study / "history.csv")  # errored before its first report: no value at any rung
    history[history["trial_id"] != trials.loc[1, "trial_id"]].to_csv(study / "history.csv", index=False)
    md = _read(build_report(study, formats="md", resamples=0) / "report.md")
    assert "Parameter importance: skipped (needs at least 2 completed trials, found 1)" in md
    assert "best trial `t000`" in md


def test_seed_count_too_small(tmp_path):
    study = make_grid_study(tmp_path, seeds=2)
    md = _read(build_report(study, formats="md", resamples=0) / "report.md")
    assert "too few seeds to conclude" in md and "seed count is too small to conclude" in md


# ------------------------------------------------------------------------------------------------ bad input
def _cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_not_a_study(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _cli([tmp_path / "empty"], capsys)
    assert code == 2 and err.startswith("error: ") and "not a study directory" in err
    code, err = _cli([tmp_path / "missing"], capsys)
    assert code == 2 and "no such directory" in err
    assert not (tmp_path / "empty" / "report").exists()


def test_empty_study(tmp_path, capsys):
    study = make_search_study(tmp_path, n=3)
    (study / "trials.csv").write_text("")
    code, err = _cli([study], capsys)
    assert code == 2 and "no trials" in err
    assert not (study / "report").exists()


def test_unknown_metric_lists_available(tmp_path, capsys):
    study = make_search_study(tmp_path, n=3)
    code, err = _cli([study, "--metric", "val_top5"], capsys)
    assert code == 2 and "'val_top5' does not exist" in err and "test_knn_top1" in err and "cpu_hours" in err
    assert not (study / "report").exists()
    assert main([str(study), "--metric", "test_knn_top1", "--format", "md", "--resamples", "0"]) == 0


def test_different_metrics(tmp_path, capsys):
    a = make_search_study(tmp_path, "a", n=3)
    b = make_search_study(tmp_path, "b", n=3)
    meta = json.loads((b / "study.json").read_text())
    meta["metric"] = "test_knn_top1"
    (b / "study.json").write_text(json.dumps(meta))
    code, err = _cli([a, b], capsys)
    assert code == 2 and "different metrics" in err and "--metric" in err
    assert not (a / "report").exists() and not (b / "report").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_format(tmp_path, capsys):
    study = make_search_study(tmp_path, n=3)
    code, err = _cli([study, "--format", "pdf"], capsys)
    assert code == 2 and "pdf" in err
    with pytest.raises(ReportError):
        build_report(study, formats=())
    assert not (study / "report").exists()


def test_a_parameter_the_best_trial_does_not_use_is_named_not_applicable(tmp_path):
    from analysis.load import load_study
    from analysis.report import _describe_best

    path = make_search_study(tmp_path)
    trials = pd.read_csv(path / "trials.csv")
    trials.loc[trials["trial_id"] == "planted_best", "param_dual_view_weight"] = float("nan")  # its `when` was false
    trials.to_csv(path / "trials.csv", index=False)
    text = _describe_best(load_study(path))
    assert "best trial `planted_best`" in text and "temperature = 0.1" in text
    assert "dual_view_weight =" not in text and text.endswith("(dual_view_weight: not applicable).")
