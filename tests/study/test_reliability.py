"""Faults injected for real: dying and killed workers, an interrupted driver, corrupt checkpoints, bad storage,
diverging trials. A crash costs at most the epoch in flight; nothing already written is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest

from moco.checkpoint import write_checkpoint_dir
from moco.train import load_latest_valid
from study.results import atomic_write, finished_trials
from study.processes import train_workers, wait_until
from study.run import main
from tests.conftest import MINI_SPACE, ROOT, study_command

DIVERGE_SPACE = ROOT / "configs" / "smoke" / "diverge.yaml"


# --- checkpoints ----------------------------------------------------------------------------------------------------
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    import ray.train

    for epoch in (1, 2, 3):
        d = tmp_path / f"epoch-{epoch:04d}"
        d.mkdir()
        write_checkpoint_dir({"epoch": epoch}, d)
    (tmp_path / "epoch-0003" / "state.pt").write_bytes(b"half-written")  # crash mid-write of the newest
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = load_latest_valid(ray.train.Checkpoint.from_directory(str(tmp_path / "epoch-0003")))
    assert state["epoch"] == 2
    assert any("epoch-0003" in str(w.message) for w in caught)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    write_checkpoint_dir({"epoch": 1}, tmp_path)
    good = (tmp_path / "state.pt").read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_checkpoint_dir({"epoch": 2, "big": list(range(1000))}, tmp_path)
    assert (tmp_path / "state.pt").read_bytes() == good  # the good checkpoint was never replaced


def test_result_file_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "trials.csv"
    atomic_write(path, "old,content\n")
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_text() == "old,content\n"


def test_unwritable_storage_is_refused_before_ray_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["--space", str(MINI_SPACE), "--storage", str(blocker / "runs")]) == 2
    assert "not writable" in capsys.readouterr().err


# --- studies under fire --------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_diverged_trials_end_as_diverged_and_the_study_goes_on(tmp_path):
    proc = subprocess.run(study_command("--space", str(DIVERGE_SPACE), "--storage", str(tmp_path), "--no-report"),
                          cwd=ROOT, capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = pd.read_csv(tmp_path / "diverge" / "trials.csv")
    assert len(trials) == 3
    diverged = trials[trials.param_lr > 1]
    assert len(diverged) >= 1 and (diverged.status == "diverged").all()
    assert (trials[trials.param_lr < 1].status == "completed").all()
    assert "diverged" in diverged.error.iloc[0]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_study_survives_worker_faults_and_an_interrupted_driver(tmp_path):
    """Each trial's worker exits once at epoch 2 (injected), one worker is SIGKILLed from outside, and the driver
    gets SIGTERM; ``--resume`` then completes the study with gap-free, duplicate-free histories."""
    storage, name = tmp_path / "runs", "faults"
    run_dir = storage / name
    cmd = study_command("--space", str(MINI_SPACE), "--storage", str(storage), "--name", name, "--no-report",
                        "--max-concurrent", "1")
    env = {**os.environ, "MOCO_FAULT": "epoch=2,kind=exit", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1. A Ray Train worker killed from outside while it trains.
        assert wait_until(lambda: (run_dir / "results.jsonl").is_file() and train_workers(proc.pid), proc, 300), \
            "no training worker appeared"
        victim = train_workers(proc.pid)[0]
        victim.send_signal(signal.SIGKILL)
        # 2. The driver interrupted (SIGTERM) once at least one trial has finished.
        assert wait_until(lambda: len(finished_trials(run_dir)) >= 1, proc, 400), "no trial finished"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    first = (tmp_path / "first.log").read_text()
    assert proc.returncode != 0, first[-2000:]
    assert "--resume" in first and f"--name {name}" in first, first[-2000:]
    assert json.loads((run_dir / "study.json").read_text())["status"] == "interrupted"
    done_before = finished_trials(run_dir)

    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and set(trials.status) <= {"completed", "pruned"}
    assert set(done_before) <= set(trials.trial_id.astype(str))
    # Every trial that reached epoch 2 failed there once (injected) and resumed from its checkpoint.
    train_runs = list((run_dir / "train").iterdir())
    assert any((d / ".fault-injected-epoch2").exists() for d in train_runs)
    history = pd.read_csv(run_dir / "history.csv")
    for trial_id, rows in history.groupby("trial_id"):
        assert list(rows.epoch) == list(range(1, len(rows) + 1)), (trial_id, list(rows.epoch))
    # The raw epoch log has no duplicate reports either (a resumed trial does not repeat finished epochs).
    raw = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    pairs = [(r["trial_id"], r["epoch"]) for r in raw]
    assert len(pairs) == len(set(pairs)), "an epoch was reported twice"
    assert all(r["epoch"] for r in raw)
    assert Path(run_dir / "best_config.yaml").is_file()
