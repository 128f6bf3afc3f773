"""The study's private Ray head (study/local_cluster.py): what importing it must not do."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_importing_the_local_cluster_loads_no_ray():
    # The head gets its own auth token through the environment, set when it starts; Ray read before that (a
    # module-level import of anything that imports ray) would keep the default token and fail to connect to it.
    probe = "import sys, study.local_cluster, study.run; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]"]
