"""Real mini studies on digits through Ray Tune + Train + Optuna with ASHA: files, baseline, resume after SIGKILL."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pandas as pd
import pytest
import yaml

from moco.config import TrainConfig
from study.results import collect, finished_trials
from study.space import load_space
from tests.conftest import MINI_SPACE, ROOT, kill_study_after_first_trial, study_command

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    """One finished mini study (4 trials, compute budget 4, 2 CPUs), shared by the checks below."""
    storage = tmp_path_factory.mktemp("studies")
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(storage), "--name", "mini"),
                          cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return storage / "mini", proc.stdout


def test_mini_study_writes_every_file(mini_study):
    run_dir, stdout = mini_study
    for name in ("study.json", "trials.csv", "history.csv", "best_config.yaml", "optuna.db"):
        assert (run_dir / name).is_file(), name
    study = json.loads((run_dir / "study.json").read_text())
    assert study["status"] == "finished" and study["num_samples"] == 4 and study["kind"] == "search"
    assert study["versions"]["ray"] and study["started"] and study["ended"]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and set(trials.status) <= {"completed", "pruned"}
    assert (trials.epochs <= 4).all() and (trials.status == "completed").sum() >= 1
    history = pd.read_csv(run_dir / "history.csv")
    # One history row per trial-epoch, matching each trial's epoch count.
    assert history.groupby("trial_id").epoch.max().to_dict() == dict(zip(trials.trial_id.astype(str),
                                                                          trials.epochs))
    assert {"loss", "val_knn_top1", "pos_sim", "neg_sim_q50", "filtered_frac", "false_neg_rate"} <= set(history)
    # How each trial computed (moco/precision.py resolves auto) is recorded with every epoch.
    assert set(history.precision) <= {"fp32", "bf16"} and set(history.memory_format) <= {"contiguous", "channels_last"}
    # ASHA-stopped trials are pruned in trials.csv and in Optuna (not COMPLETE with an early value).
    with sqlite3.connect(run_dir / "optuna.db") as db:
        states = [row[0] for row in db.execute("select state from trials order by number")]
    assert states.count("COMPLETE") == (trials.status == "completed").sum()
    assert states.count("PRUNED") == (trials.status == "pruned").sum()
    assert "report:" in stdout and (run_dir / "report" / "report.md").is_file()


def test_trials_are_budgeted_and_judged_in_compute(mini_study):
    """Compute = epochs x views: a dual-view trial trains half the epochs of a one-way trial at the same budget, and
    ASHA judges it at its rung (compute 2) after one epoch where a one-way trial has trained two."""
    run_dir, _ = mini_study
    trials = pd.read_csv(run_dir / "trials.csv")
    history = pd.read_csv(run_dir / "history.csv")
    study = json.loads((run_dir / "study.json").read_text())
    assert study["settings"]["time_attr"] == "compute" and study["budget"]["compute"] == 4
    views = trials.set_index(trials.trial_id.astype(str)).param_dual_view_weight.map(lambda lam: 2 if lam < 1 else 1)
    assert set(views) == {1, 2}, "the mini study should hold one-way and dual-view trials"
    assert (history.compute == history.epoch * history.trial_id.astype(str).map(views)).all()
    trials["views"] = trials.trial_id.astype(str).map(views)
    assert (trials.max_epochs == 4 // trials.views).all() and (trials.budget == 4).all()
    assert set(trials[trials.status == "completed"].compute) == {4}
    assert set(trials[trials.status == "pruned"].compute) <= {2}  # stopped at the rung, whatever their epochs
    # Optuna holds every pruned trial's values up to and including the epoch on which ASHA stopped it.
    with sqlite3.connect(run_dir / "optuna.db") as db:
        steps = dict(db.execute("select t.number, max(v.step) from trials t join trial_intermediate_values v "
                                "on t.trial_id = v.trial_id group by t.number"))
    for row in trials.itertuples():
        assert steps[row.trial_number] == row.epochs, (row.trial_id, row.status)


def test_first_trial_is_the_baseline(mini_study):
    run_dir, _ = mini_study
    trials = pd.read_csv(run_dir / "trials.csv").sort_values("trial_number")
    first = trials.iloc[0]
    assert first.trial_number == 0 and bool(first.is_baseline)
    # ASHA never stops the baseline: it is the reference every trial is compared with.
    assert first.status == "completed" and first.epochs == first.max_epochs
    assert first.param_hard_negative_ratio == 1.0 and first.param_dual_view_weight == 1.0
    assert trials.is_baseline.sum() == 1


def test_best_config_is_runnable_and_matches_best_trial(mini_study):
    run_dir, _ = mini_study
    cfg = TrainConfig.from_yaml(run_dir / "best_config.yaml")
    trials = pd.read_csv(run_dir / "trials.csv")
    best = trials[trials.status == "completed"].sort_values("val_knn_top1").iloc[-1]
    assert cfg.temperature == pytest.approx(best.param_temperature)
    assert cfg.queue_size == best.param_queue_size
    header = (run_dir / "best_config.yaml").read_text().splitlines()[0]
    assert str(best.trial_id) in header
    assert yaml.safe_load((run_dir / "best_config.yaml").read_text())["dataset"] == "digits"


def test_resume_after_sigkill_keeps_finished_trials(tmp_path):
    """Remote-style storage (a file:// URI): the study's own files are staged in the working directory's
    runs/.remote/<name> and mirrored to the storage; after SIGKILL, --resume restores them from the storage."""
    storage, workdir = tmp_path / "runs", tmp_path / "work"
    workdir.mkdir()
    cmd = study_command("--space", str(MINI_SPACE), "--storage", storage.as_uri(), "--name", "crash",
                        "--max-concurrent", "1", "--no-report")
    kill_study_after_first_trial(cmd, workdir, storage / "crash", timeout=400)
    # What had reached the storage at the crash (the staging copy is discarded: --resume rebuilds it).
    before, _ = collect(storage / "crash", load_space(str(MINI_SPACE)))
    finished_before = finished_trials(storage / "crash")
    assert len(finished_before) >= 1
    assert json.loads((storage / "crash" / "study.json").read_text())["status"] == "running"

    resumed = subprocess.run(cmd + ["--resume"], cwd=workdir, capture_output=True, text=True, timeout=800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = pd.read_csv(storage / "crash" / "trials.csv")
    assert len(after) == 4 and set(after.status) <= {"completed", "pruned"}
    study = json.loads((storage / "crash" / "study.json").read_text())
    assert study["status"] == "finished" and study["resumes"] == 1
    for trial_id in finished_before:
        old = before[before.trial_id.astype(str) == trial_id].iloc[0]
        new = after[after.trial_id.astype(str) == trial_id].iloc[0]
        assert new.status == old.status and new.val_knn_top1 == pytest.approx(old.val_knn_top1)
        assert new.epochs == old.epochs


def test_console_prints_each_epoch_once_and_no_ray_dumps(mini_study):
    """One line per trial event from the driver (study/console.py), none of Ray's per-report dumps (issue #18)."""
    run_dir, stdout = mini_study
    history = pd.read_csv(run_dir / "history.csv")
    trials = pd.read_csv(run_dir / "trials.csv")
    numbers = dict(zip(trials.trial_id.astype(str), trials.trial_number))
    for row in history.itertuples():
        line = f"[trial {numbers[str(row.trial_id)]}] epoch {row.epoch}/"
        assert stdout.count(line) == 1, (line, stdout[-3000:])
    for row in trials.itertuples():
        assert stdout.count(f"[trial {row.trial_number}] started: ") == 1
        assert stdout.count(f"[trial {row.trial_number}] {row.status}") == 1
    assert "TrainingReport(" not in stdout and "Reporting training result" not in stdout
    assert "Tuner.restore" not in stdout and "AIR_VERBOSITY" not in stdout
    assert "[study] 4/4 trials done" in stdout
    assert any(line.startswith("trial  status") and "best so far" in line for line in stdout.splitlines())


def test_optuna_db_names_the_metric_and_tags_each_trial_with_its_tune_trial(mini_study):
    import optuna

    run_dir, _ = mini_study
    study = optuna.load_study(study_name="mini", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert study.metric_names == ["val_knn_top1"]
    trials = pd.read_csv(run_dir / "trials.csv")
    tags = {t.number: t.user_attrs.get("tune_trial_id") for t in study.trials}
    assert tags == dict(zip(trials.trial_number, trials.trial_id.astype(str)))
