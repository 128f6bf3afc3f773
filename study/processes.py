"""A study's processes seen from outside: its Ray Train workers, and waiting on a condition while it runs.

Used where faults are injected into a running study for real (bench/faults.py and tests/study/test_reliability.py).
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import psutil


def train_workers(pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes below ``pid`` (a study's driver)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def wait_until(predicate: Callable[[], object], proc: subprocess.Popen, timeout: float = 400) -> bool:
    """Poll ``predicate`` until it holds (True), ``proc`` ends or ``timeout`` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.5)
    return False
