"""Fault injection for tests and ``bench/faults.py``: one training worker fails once, at a chosen epoch.

Set ``MOCO_FAULT`` (for example ``epoch=2,kind=raise`` or ``epoch=2,kind=exit,rank=1``) when starting a training or
a study; the worker of that rank raises (``raise``) or exits its process (``exit``) at the start of that epoch, once:
a marker file in the run folder stops the resumed run from failing again. ``kind=start`` (no epoch) makes every
worker fail as it starts, every time: a trial that can never start (what the study's circuit breaker stops on).
No torch here (the study driver reads it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

FAULT_ENV = "MOCO_FAULT"


def parse_fault(spec: str | None) -> dict[str, Any] | None:
    """``"epoch=2,kind=raise"`` -> ``{"epoch": 2, "kind": "raise"}``; None or "" -> None."""
    if not spec:
        return None
    fault = dict(item.split("=", 1) for item in spec.split(","))
    if fault.get("kind") == "start":
        return {"kind": "start"}
    if fault.get("kind", "raise") not in ("raise", "exit") or "epoch" not in fault:
        raise ValueError(f"{FAULT_ENV} = {spec!r}: expected 'epoch=N,kind=raise|exit' or 'kind=start'")
    return {"epoch": int(fault["epoch"]), "kind": fault.get("kind", "raise"), "rank": int(fault.get("rank", 0))}


class StartupFault(RuntimeError):
    """The injected failure of a worker's start-up (``kind=start``)."""


def maybe_fail_start(fault: dict[str, Any] | None) -> None:
    """With ``kind=start``: fail as the worker starts, before any epoch (every attempt, no marker)."""
    if fault and fault["kind"] == "start":
        raise StartupFault("injected fault: the training worker failed to start")


def maybe_inject_fault(fault: dict[str, Any] | None, epoch: int, rank: int, run_dir: str | None) -> None:
    """Fail once, at the start of ``fault['epoch']`` on ``fault['rank']``; a marker file makes it happen once."""
    if not fault or fault["kind"] == "start" or epoch != fault["epoch"] or rank != fault["rank"] or not run_dir:
        return
    marker = Path(run_dir) / f".fault-injected-epoch{epoch}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(time.time()))
    print(f"[fault injection] worker rank {rank} fails at epoch {epoch} ({fault['kind']})", flush=True)
    if fault["kind"] == "exit":
        os._exit(1)
    raise RuntimeError(f"injected fault at epoch {epoch}")
