"""A real seeded grid of variants on digits (Ray Tune + Train), stopped by Ctrl-C while its first trials train and
continued with --resume: trials numbered from 0 in seed-major order (every variant at a seed before the next seed),
the interrupted trials still running (not mistaken for pruned), nothing rolled back by Tune's restore, and the
report's endpoint section read from the runs' final endpoints."""

from __future__ import annotations

import json
import signal
import subprocess

import pandas as pd
import pytest

from study.processes import wait_until
from tests.conftest import ROOT, study_command

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
SPACE = ROOT / "tests" / "study" / "spaces" / "grid.yaml"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The grid interrupted (SIGINT) after its first epoch report, its records then, and the resumed run's output."""
    storage = tmp_path_factory.mktemp("studies")
    run_dir = storage / "g"
    cmd = study_command("--space", str(SPACE), "--storage", str(storage), "--name", "g")
    log = open(storage / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: (run_dir / "results.jsonl").is_file(), proc, 400), "no epoch was reported"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    first = (storage / "first.log").read_text()
    assert proc.returncode == 130 and "--resume" in first, first[-3000:]
    interrupted = json.loads((run_dir / "trial_status.json").read_text())
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    return run_dir, interrupted, first + again.stdout


def test_interrupted_trials_stay_running_and_resume_to_the_end(resumed):
    run_dir, interrupted, _ = resumed
    assert interrupted and {r["status"] for r in interrupted.values()} == {"running"}, interrupted
    trials = pd.read_csv(run_dir / "trials.csv")
    assert set(trials.status) == {"completed"} and (trials.epochs == 3).all()
    # Tune's restore copies the study's own records into its staging folder and uploads them back at every
    # checkpoint; they must hold every trial's start record (params, number) after the resumed run.
    records = json.loads((run_dir / "trial_status.json").read_text())
    assert len(records) == 4 and all("params" in r and "number" in r for r in records.values()), records


def test_a_grid_runs_seed_major_numbered_from_zero_and_reports_its_endpoints(resumed):
    run_dir, _, stdout = resumed
    trials = pd.read_csv(run_dir / "trials.csv").sort_values("trial_number")
    assert list(trials.trial_number) == [0, 1, 2, 3]
    assert list(zip(trials.seed, trials.variant)) == [(1, "baseline"), (1, "hcl"), (2, "baseline"), (2, "hcl")]
    assert trials.test_knn_top1.notna().all() and trials.linear_top1.notna().all()
    assert "[trial 0] started: variant baseline, seed 1" in stdout and "[trial -1]" not in stdout
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Endpoints" in report and "linear_top1: **hcl**" in report
