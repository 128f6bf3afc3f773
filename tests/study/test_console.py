"""The study's console (study/console.py) and circuit breaker (study/breaker.py): unit checks on made-up trial
events, and a real study whose workers can never start, which the breaker stops (issue #18)."""

from __future__ import annotations

import io
import os
import subprocess
from types import SimpleNamespace

import pytest

from study.breaker import StartFailureBreaker
from study.console import Console, duration
from study.space import load_space
from tests.conftest import MINI_SPACE, ROOT, study_command


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_console():
    out, clock = io.StringIO(), Clock()
    return Console(load_space(str(MINI_SPACE)), out=out, clock=clock), out, clock


def test_each_epoch_is_printed_once_with_the_metric_and_the_best_so_far():
    console, out, clock = make_console()
    console.started("a", 0, {"queue_size": 512, "hard_negative_ratio": 1.0, "temperature": 0.2,
                             "dual_view_weight": 1.0}, 4)
    console.started("b", 1, {"queue_size": 1024, "hard_negative_ratio": 0.30421, "temperature": 0.24,
                             "dual_view_weight": 0.7}, 2)
    console.epoch("a", {"epoch": 1, "compute": 1, "val_knn_top1": 80.0})
    console.epoch("a", {"epoch": 1, "compute": 1, "val_knn_top1": 80.0})  # a resumed trial repeats its report
    console.epoch("b", {"epoch": 1, "compute": 2, "val_knn_top1": 85.5})
    console.epoch("a", {"epoch": 2, "compute": 2, "val_knn_top1": 81.0})
    clock.now += 90
    console.ended("b", "pruned")
    text = out.getvalue()
    assert text.count("[trial 0] epoch 1/4") == 1
    assert "[trial 1] started: queue_size 1024, hard_negative_ratio 0.304, temperature 0.24" in text
    assert "[trial 1] epoch 1/2  compute 2/4  val_knn_top1 85.50  (best 85.50, trial 1)" in text
    assert "[trial 0] epoch 2/4  compute 2/4  val_knn_top1 81.00  (best 85.50, trial 1)" in text
    console.epoch("b", {"epoch": 2, "compute": 4, "val_knn_top1": 79.0})  # best: each trial's latest value
    assert "[trial 1] epoch 2/2  compute 4/4  val_knn_top1 79.00  (best 81.00, trial 0)" in out.getvalue()
    assert "[trial 1] pruned at compute 2: val_knn_top1 85.50" in text
    # 1 of 4 trials in 90 s: about 270 s for the 3 left.
    assert "[study] 1/4 trials done, 1 running | compute 4/16 | best val_knn_top1 85.50 (trial 1) | 1m30s, " \
           "ETA ~4m30s" in text


def test_table_lists_trials_with_status_compute_metric_best_and_params():
    console, out, clock = make_console()
    console.started("a", 0, {"queue_size": 512, "temperature": 0.2}, 4)
    console.started("b", 1, {"queue_size": 1024, "temperature": 0.31}, 4)
    console.epoch("a", {"epoch": 1, "compute": 1, "val_knn_top1": 70.0})
    console.epoch("b", {"epoch": 1, "compute": 1, "val_knn_top1": 75.0})
    console.ended("a", "errored", "RuntimeError: boom")
    out.truncate(0), out.seek(0)
    console.table()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["trial", "status", "epoch", "compute", "val_knn_top1", "best", "so", "far",
                                "queue_size", "hard_negative_ratio", "temperature", "dual_view_weight",
                                "selection_warmup_epochs"]
    assert lines[1].split() == ["0", "errored", "1/4", "1/4", "70.00", "70.00", "512", "-", "0.2", "-", "-"]
    assert lines[2].split() == ["1", "running", "1/4", "1/4", "75.00", "75.00", "1024", "-", "0.31", "-", "-"]
    assert lines[3].startswith("[study] 1/4 trials done, 1 running")


def test_table_and_progress_come_when_due():
    console, out, clock = make_console()
    console.started("a", 0, {}, 4)
    console.tick()
    assert "[study]" not in out.getvalue()
    clock.now += 61
    console.tick()
    assert out.getvalue().count("[study] 0/4 trials done, 1 running") == 1
    console.epoch("a", {"epoch": 1, "compute": 1, "val_knn_top1": 70.0})
    clock.now += 60
    console.tick()
    assert "trial  status" in out.getvalue()


def test_a_resumed_study_counts_ranks_and_shows_the_trials_finished_before_and_a_retry_is_one_line():
    out, clock = io.StringIO(), Clock()
    before = [{"trial_id": tid, "number": n, "status": status, "params": {"queue_size": 512}, "max_epochs": 4,
               "epoch": epochs, "compute": epochs, "metric": value, "diverged": False}
              for tid, n, status, epochs, value in (("a", 0, "completed", 4, 78.5), ("b", 1, "pruned", 2, 61.0))]
    console = Console(load_space(str(MINI_SPACE)), out=out, clock=clock, finished=before)
    console.started("c", 2, {"queue_size": 512}, 4)
    console.epoch("c", {"epoch": 1, "compute": 1, "val_knn_top1": 70.0, "repeated": 1})  # resumed at epoch 1
    console.epoch("c", {"epoch": 1, "compute": 1, "val_knn_top1": 70.0})
    console.retrying("c", "RayActorError: the worker died")
    clock.now += 30
    console.ended("c", "completed")
    console.table()
    text = out.getvalue()
    assert "[trial 2] epoch 1/4  compute 1/4  val_knn_top1 70.00  (best 78.50, trial 0)  (again, from its " \
        "checkpoint)" in text and text.count("[trial 2] epoch 1/4") == 1
    assert "[trial 2] failed, retrying from its latest checkpoint: RayActorError: the worker died" in text
    # trials: 2 before + 1 now; compute: 4 + 2 before + 1 now; the ETA from this run's one trial in 30 s
    assert "[study] 3/4 trials done, 0 running | compute 7/16 | best val_knn_top1 78.50 (trial 0)" in text
    assert "ETA ~30s" in text
    table = text[text.index("trial  status"):]
    assert "0      completed  4/4" in table and "1      pruned" in table


def test_duration():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def trial(trial_id, epoch=None):
    return SimpleNamespace(trial_id=trial_id, last_result={"epoch": epoch} if epoch else {})


def test_breaker_trips_after_n_start_failures_in_a_row_only():
    breaker = StartFailureBreaker(3, lambda t: f"cannot start {t.trial_id}")
    breaker.on_trial_error(0, [], trial("a"))
    breaker.on_trial_error(0, [], trial("b"))
    breaker.on_trial_result(0, [], trial("c"), {"epoch": 1})  # one trial that trains resets the count
    breaker.on_trial_error(0, [], trial("c", epoch=1))  # failed after training: not a start failure
    breaker.on_trial_error(0, [], trial("d"))
    breaker.on_trial_error(0, [], trial("e"))
    assert not breaker.tripped and not breaker.stopper.stop_all()
    breaker.on_trial_error(0, [], trial("f"))
    assert breaker.tripped and breaker.stopper.stop_all()
    assert "3 trials in a row failed to start" in breaker.message() and "cannot start f" in breaker.message()


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_study_whose_workers_cannot_start_stops_with_the_cause_and_the_resume_command(tmp_path):
    space = tmp_path / "nostart.yaml"
    space.write_text(MINI_SPACE.read_text().replace("study:\n", "study:\n  max_failures: 0\n  max_concurrent: 1\n"))
    env = {**os.environ, "MOCO_FAULT": "kind=start"}
    proc = subprocess.run(study_command("--space", str(space), "--storage", str(tmp_path / "runs"),
                                        "--max-start-failures", "1"),  # one trial: 2 attempts (Tune retries once)
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "1 trial failed to start (--max-start-failures 1)" in proc.stderr, out[-4000:]
    assert "injected fault: the training worker failed to start" in proc.stderr
    assert "--name nostart" in proc.stderr and "--resume" in proc.stderr
    assert out.count("] errored: ") == 1 and "Tuner.restore" not in out
    assert "[trial 1] started" not in out  # no trial started after the breaker tripped
