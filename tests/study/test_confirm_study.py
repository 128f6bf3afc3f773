"""A real mini search with a confirmation stage on digits (Ray Tune + Train): the search, then its best trial and the
baseline re-trained with fresh seeds; confirm.csv, the report section, a rerun of --confirm that repeats nothing, and
a confirmation stopped by SIGTERM that --confirm continues."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from moco.vocabulary import BASELINE, FINAL_METRICS, FINAL_VAL_KNN, FINAL_VAL_PROBE, TEST_KNN, raw_name
from study.confirm import CONFIRM_DIR
from study.results import finished_trials
from tests.conftest import ROOT, study_command

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
SPACE = ROOT / "tests" / "study" / "spaces" / "confirm.yaml"


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """One finished mini search (2 trials, 1 epoch) and its confirmation (2 configurations x seeds 1, 2; 2 epochs)."""
    storage = tmp_path_factory.mktemp("studies")
    cmd = study_command("--space", str(SPACE), "--storage", str(storage), "--name", "c")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return storage / "c", cmd, proc.stdout


def test_search_then_confirmation(confirmed):
    run_dir, _, stdout = confirmed
    trials = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    table = pd.read_csv(run_dir / "confirm.csv", dtype={"source_trial": str})
    assert list(zip(table.candidate, table.seed)) == [(BASELINE, 1), (BASELINE, 2), ("top1", 1), ("top1", 2)]
    assert set(table.status) == {"completed"} and (table.epochs == 2).all()
    assert not set(table.seed) & set(trials.seed)  # never the search's seed
    for endpoint in FINAL_METRICS:  # every endpoint, and its raw-pixel value
        assert table[endpoint].between(0, 100).all() and table[raw_name(endpoint)].between(0, 100).all(), endpoint
    for endpoint in (FINAL_VAL_KNN, FINAL_VAL_PROBE, TEST_KNN):  # deterministic on raw pixels: same in every run
        assert table[raw_name(endpoint)].nunique() == 1, endpoint
    assert (table.compute == 2).all()  # one-way runs of 2 epochs
    best = trials[~trials.is_baseline.astype(bool) & (trials.status == "completed")].iloc[0]
    top1 = table[table.candidate == "top1"].iloc[0]
    assert top1.source_trial == best.trial_id and top1.search_value == pytest.approx(best.val_knn_top1)
    assert table[table.candidate == BASELINE].source_trial.iloc[0] == trials[trials.is_baseline].trial_id.iloc[0]
    assert (run_dir / "confirm" / "train").is_dir() and (run_dir / "confirm.json").is_file()
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Confirmation" in report and "seeds [1, 2]" in report
    assert "a compute budget of 2 passes of all training images" in report
    assert "vs raw pixels on final_val_knn_top1" in report and "**undetermined**" in report


def test_confirm_again_repeats_nothing(confirmed):
    run_dir, cmd, _ = confirmed
    before = pd.read_csv(run_dir / "confirm.csv")
    proc = subprocess.run(cmd + ["--confirm", "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "started" not in "".join(line for line in proc.stdout.splitlines() if line.startswith("[confirm]"))
    after = pd.read_csv(run_dir / "confirm.csv")
    pd.testing.assert_frame_equal(before, after)


def test_stopped_confirmation_continues(tmp_path):
    run_dir = tmp_path / "k"
    cmd = study_command("--space", str(SPACE), "--storage", str(tmp_path), "--name", "k", "--max-concurrent", "1",
                        "--no-report")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None and not finished_trials(run_dir / CONFIRM_DIR):
            time.sleep(1)
        assert proc.poll() is None, "the study ended before it could be stopped"
        os.kill(proc.pid, signal.SIGTERM)  # as a cluster scheduler stops a job
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "--confirm" in out.split("[confirm] interrupted; continue with:")[1].splitlines()[1]
    before = pd.read_csv(run_dir / "confirm.csv")
    done = before[before.status == "completed"]
    assert 1 <= len(done) < 4
    again = subprocess.run(study_command("--space", str(SPACE), "--storage", str(tmp_path), "--name", "k",
                                         "--confirm", "--no-report"),
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = pd.read_csv(run_dir / "confirm.csv")
    assert set(after.status) == {"completed"}
    started = [line for line in again.stdout.splitlines() if line.startswith("[confirm]") and "started" in line]
    for row in done.itertuples():  # finished runs are kept as they were, never run again
        assert not any(f"({row.trial_id})" in line for line in started)
        kept = after[(after.candidate == row.candidate) & (after.seed == row.seed)].iloc[0]
        assert kept.trial_id == row.trial_id and kept.final_val_knn_top1 == row.final_val_knn_top1
