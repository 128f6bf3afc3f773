"""A real seeded grid of variants on digits (Ray Tune + Train): trials numbered from 0 in seed-major order, every
variant at a seed before the next seed, and the report's endpoint section read from the runs' final endpoints."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from tests.conftest import ROOT, study_command

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
SPACE = ROOT / "tests" / "study" / "spaces" / "grid.yaml"


def test_a_grid_runs_seed_major_numbered_from_zero_and_reports_its_endpoints(tmp_path):
    proc = subprocess.run(study_command("--space", str(SPACE), "--storage", str(tmp_path), "--name", "g"),
                          cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    trials = pd.read_csv(tmp_path / "g" / "trials.csv").sort_values("trial_number")
    assert list(trials.trial_number) == [0, 1, 2, 3]
    assert list(zip(trials.seed, trials.variant)) == [(1, "baseline"), (1, "hcl"), (2, "baseline"), (2, "hcl")]
    assert set(trials.status) == {"completed"} and trials.test_knn_top1.notna().all()
    assert "[trial 0] started: variant baseline, seed 1" in proc.stdout and "[trial -1]" not in proc.stdout
    report = (tmp_path / "g" / "report" / "report.md").read_text()
    assert "## Endpoints" in report and "linear_top1: **hcl**" in report
