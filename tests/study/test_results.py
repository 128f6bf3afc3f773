"""study/results.py: the study's files rebuilt from its trial record and epoch results (no Ray, no training)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from study.results import (RESULTS_FILE, STATUS_FILE, append_result, best_trial, collect, finished_rows,
                           finished_trials, record_trial, write_results, write_study_json)
from study.space import load_space
from tests.conftest import MINI_SPACE

PARAMS = {"queue_size": 512, "hard_negative_ratio": 0.5, "temperature": 0.2, "dual_view_weight": 1.0,
          "selection_warmup_epochs": 0}


def _trials(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "trial_number": n, "status": s, "val_knn_top1": v} for t, n, s, v in rows])


# --- the best trial ---------------------------------------------------------------------------------------------------
def test_the_best_completed_trial_wins_over_better_pruned_ones():
    trials = _trials([("a", 0, "completed", 70.0), ("b", 1, "pruned", 90.0), ("c", 2, "completed", 75.0),
                      ("d", 3, "diverged", 99.0), ("e", 4, "errored", 98.0)])
    assert best_trial(trials, "val_knn_top1")["trial_id"] == "c"
    assert best_trial(trials, "val_knn_top1", maximize=False)["trial_id"] == "a"


def test_ties_go_to_the_earliest_trial_and_missing_values_never_win():
    trials = _trials([("late", 5, "completed", 80.0), ("nan", 0, "completed", math.nan),
                      ("inf", 1, "completed", math.inf), ("early", 2, "completed", 80.0)])
    assert best_trial(trials, "val_knn_top1")["trial_id"] == "early"


def test_without_a_completed_trial_the_best_pruned_one_is_chosen():
    trials = _trials([("a", 0, "pruned", 60.0), ("b", 1, "pruned", 65.0), ("c", 2, "diverged", 99.0),
                      ("d", 3, "completed", math.nan)])
    assert best_trial(trials, "val_knn_top1")["trial_id"] == "b"
    assert best_trial(_trials([("c", 0, "diverged", 99.0), ("r", 1, "running", 99.0)]), "val_knn_top1") is None
    assert best_trial(pd.DataFrame(), "val_knn_top1") is None


# --- the trial record and the rebuilt files ---------------------------------------------------------------------------
def _report(epoch: int, value: float, **extra) -> dict:
    return {"epoch": epoch, "compute": epoch, "val_knn_top1": value, "time_total_s": 360.0 * epoch,
            "world_size": 1, "node_id": "n1", **extra}


@pytest.fixture()
def run_dir(tmp_path):
    """A study whose trials all ended pruned or diverged: no trial completed."""
    space = load_space(str(MINI_SPACE))
    run = tmp_path / "study"
    run.mkdir()
    record_trial(run, "t0", params=PARAMS, number=0)
    record_trial(run, "t1", params={**PARAMS, "temperature": 0.3}, number=1)
    record_trial(run, "t2", params={**PARAMS, "temperature": 0.4}, number=2)
    for epoch, value in ((1, 50.0), (2, 55.0)):
        append_result(run, "t0", _report(epoch, value))
    append_result(run, "t0", _report(2, 56.0))  # a resumed trial repeats epoch 2: the latest report counts
    append_result(run, "t1", _report(1, 61.0))
    append_result(run, "t2", _report(1, 70.0))
    append_result(run, "t2", _report(2, 99.0, diverged=True))
    record_trial(run, "t0", status="pruned")
    record_trial(run, "t1", status="pruned")
    record_trial(run, "t2", status="diverged")
    return run, space


def test_collect_rebuilds_one_row_per_trial_and_one_per_trial_epoch(run_dir):
    run, space = run_dir
    with open(run / RESULTS_FILE, "a") as handle:
        handle.write('{"trial_id": "t1", "epo')  # a line cut by a crash is skipped ...
    append_result(run, "t0", _report(3, 58.0))  # ... and the next report is not glued onto it
    trials, history = collect(run, space)
    assert list(trials.trial_id) == ["t0", "t1", "t2"]
    t0 = trials.set_index("trial_id").loc["t0"]
    assert t0.val_knn_top1 == 58.0 and t0.best_val_knn_top1 == 58.0 and t0.epochs == 3 and t0.status == "pruned"
    assert t0.cpus == 1 and t0.cpu_hours == pytest.approx(1080.0 / 3600)  # 1 worker x 1 CPU for 1080 s
    t2 = trials.set_index("trial_id").loc["t2"]
    assert math.isnan(t2.val_knn_top1) and t2.best_val_knn_top1 == 70.0  # a diverged report is no value
    assert len(history) == 6 and list(history[history.trial_id == "t0"].val_knn_top1) == [50.0, 56.0, 58.0]
    assert set(finished_trials(run)) == {"t0", "t1", "t2"}


def test_finished_rows_give_a_resumed_console_each_ended_trial_with_its_last_value(run_dir):
    run, space = run_dir
    record_trial(run, "t3", params=PARAMS, number=3)
    append_result(run, "t3", _report(1, 80.0))  # still running: not a finished row
    rows = {r["trial_id"]: r for r in finished_rows(run, space)}
    assert set(rows) == {"t0", "t1", "t2"}
    assert rows["t0"] == {"trial_id": "t0", "number": 0, "status": "pruned", "params": PARAMS, "max_epochs": 4,
                          "epoch": 2, "compute": 2, "metric": 56.0, "diverged": False}
    assert rows["t2"]["diverged"] and rows["t2"]["metric"] is None


def test_cpu_hours_count_every_worker_and_its_cpus(run_dir):
    run, space = run_dir
    append_result(run, "t1", _report(2, 62.0, world_size=2))
    row = collect(run, space)[0].set_index("trial_id").loc["t1"]
    cpus = 2 * (space.settings.cpus_per_worker or 1)
    assert row.cpus == cpus and row.cpu_hours == pytest.approx(720.0 * cpus / 3600)


def test_cpus_are_the_planned_ones_when_cpus_per_worker_is_unset(run_dir, tmp_path):
    """A GPU study without cpus_per_worker: the plan gives each worker the CPUs of its GPU's share (here 4 CPUs for
    2 GPUs: 2 per worker), and trials.csv counts those, not 1."""
    from study.cli import plan_resources

    run, _ = run_dir
    path = tmp_path / "gpu.yaml"
    path.write_text(MINI_SPACE.read_text().replace("cpus_per_worker: 1", "gpus_per_worker: 1")
                    .replace("overrides: {", "overrides: {device: cuda, "))
    space = load_space(str(path))
    assert space.settings.cpus_per_worker is None
    resources = plan_resources(space, cpus=4, gpus=2)
    assert resources["cpus_per_worker"] == 2
    write_study_json(run, space, status="running", command=["test"], resources=resources)
    append_result(run, "t1", _report(2, 62.0, world_size=2))
    row = collect(run, space)[0].set_index("trial_id").loc["t1"]
    assert row.cpus == 4 and row.cpu_hours == pytest.approx(720.0 * 4 / 3600)
    assert row.gpus == 2 and row.gpu_hours == pytest.approx(720.0 * 2 / 3600)


def test_a_study_without_completed_trials_gets_the_same_best_in_its_config_and_its_report(run_dir):
    from analysis.load import load_study

    run, space = run_dir
    write_study_json(run, space, status="finished", command=["test"])
    summary = write_results(run, space)
    assert summary["trials"] == 3 and summary["by_status"] == {"pruned": 2, "diverged": 1}
    assert summary["best_trial"] == "t1" and summary["best_value"] == 61.0  # the best pruned trial
    assert (run / "best_config.yaml").read_text().startswith("# best trial t1: val_knn_top1 = 61.000")
    assert load_study(run).best_trial()["trial_id"] == summary["best_trial"]
    assert json.loads((run / STATUS_FILE).read_text())["t1"]["status"] == "pruned"
