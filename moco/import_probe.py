"""Test-only record of whether a process has loaded torch (the Tune trial driver and the Train controller must not).

With ``MOCO_TEST_IMPORT_PROBE_DIR`` set to a folder in the environment of Ray's processes, :func:`record_modules`
appends one line ``{"role", "pid", "torch"}`` per call to ``<folder>/modules.jsonl``; unset, it does nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

IMPORT_PROBE_ENV = "MOCO_TEST_IMPORT_PROBE_DIR"
PROBE_FILE = "modules.jsonl"


def record_modules(role: str) -> None:
    """Append whether this process has imported torch, as ``role``, to the probe file (only under the switch)."""
    folder = os.environ.get(IMPORT_PROBE_ENV)
    if not folder:
        return
    line = json.dumps({"role": role, "pid": os.getpid(), "torch": "torch" in sys.modules})
    with open(Path(folder) / PROBE_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
