"""A study's processes: torch only in the Train worker, not in the study driver, the Tune trial driver or the Train
controller."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

from moco.import_probe import IMPORT_PROBE_ENV, PROBE_FILE
from tests.conftest import MINI_SPACE, ROOT, study_command

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_only_the_worker_of_a_trial_imports_torch(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, IMPORT_PROBE_ENV: str(probe)}
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path / "runs"), "--name",
                                        "probe", "--num-samples", "1", "--no-report"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (probe / PROBE_FILE).read_text().splitlines()]
    torch_by_role = {}
    for row in rows:
        torch_by_role.setdefault(row["role"], set()).add(row["torch"])
    # The study driver counts GPUs in a short-lived process and reads versions from package metadata; with the
    # [tensorboard] extra, Tune's TensorBoard logger imports tensorboardX, whose writer module imports torch itself.
    driver = importlib.util.find_spec("tensorboardX") is not None
    assert torch_by_role == {"study driver": {driver}, "trial driver": {False}, "controller": {False},
                             "worker": {True}}
    assert len({row["pid"] for row in rows}) == 4  # four processes
