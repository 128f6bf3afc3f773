"""Shared fixtures: a local Ray session for the tests that need one, and the project's paths."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
MINI_SPACE = ROOT / "configs" / "smoke" / "mini.yaml"

# A worker group that cannot start fails in a minute instead of hanging a test.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) per test module; shut down afterwards, also on failure."""
    import ray

    from moco.ray_address import start_local_ray

    # A new instance even when a `ray start` left its address behind (see moco.ray_address).
    start_local_ray(num_cpus=2, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def study_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "study" / "run.py"), *args]


@pytest.fixture()
def stale_ray_tmp():
    """Ray's temp dir pointed at a test folder (never the real /tmp/ray) whose ``ray_current_cluster`` names a head
    that is gone (an address where nothing listens): ``(environment for a subprocess, the folder's ray/, address)``.
    Short, under /tmp: Ray's Unix socket paths inside it are limited to 107 bytes."""
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with socket.socket() as sock:
        sock.bind(("", 0))
        stale = f"127.0.0.1:{sock.getsockname()[1]}"
    ray_tmp = Path(root) / "ray"
    ray_tmp.mkdir()
    (ray_tmp / "ray_current_cluster").write_text(stale)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TMPDIR")}
    env["RAY_TMPDIR"] = root
    try:
        yield env, ray_tmp, stale
    finally:
        shutil.rmtree(root, ignore_errors=True)


def kill_study_after_first_trial(cmd: list[str], cwd: Path, stored: Path, timeout: float) -> None:
    """Run the study ``cmd`` (file:// storage) in ``cwd`` and SIGKILL its driver, then its whole process group (the
    Ray processes it started: a lost machine), once the storage's copy ``stored`` records a finished trial (the local
    staging copy records it first, a moment before the mirror pushes it: a kill in between loses it, as it should)."""
    from study.results import finished_trials

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    status = Path(stored) / "trial_status.json"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if status.is_file() and len(finished_trials(status.parent)) >= 1:
                break
            time.sleep(1)
        assert proc.poll() is None, "the study ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
    finally:
        time.sleep(2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
