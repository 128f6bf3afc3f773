"""Shared fixtures: a local Ray session for the tests that need one, and the project's paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
MINI_SPACE = ROOT / "tests" / "study" / "spaces" / "mini.yaml"

# A worker group that cannot start fails in a minute instead of hanging a test.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) per test module; shut down afterwards, also on failure."""
    import ray

    # address="local": a new instance even when `ray start` (e.g. a study's private head) left its address behind.
    ray.init(address="local", num_cpus=2, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def study_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "study" / "run.py"), *args]
