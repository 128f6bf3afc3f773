"""The benchmark runner produces a well-formed result file and page (benchmarks themselves never run in tests).

Runs ``bench/run.py --quick --only memory`` (the cheapest benchmark: one short training process, no Ray) with the
results and the page redirected into ``tmp_path``, so the committed files are untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(120)
def test_quick_memory_benchmark_writes_result_and_page(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    committed = ROOT / "docs" / "benchmarks.md"
    before = committed.stat().st_mtime if committed.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "memory",
                           "--results-dir", str(results), "--docs", str(docs), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    assert sorted(p.name for p in results.iterdir()) == ["memory.json"]
    doc = json.loads((results / "memory.json").read_text())
    for key in ("benchmark", "mode", "command", "date", "machine", "versions", "git", "load_before", "load_after",
                "elapsed_s", "result"):
        assert key in doc, key
    assert doc["benchmark"] == "memory" and doc["mode"] == "quick" and "--quick" in doc["command"]
    assert len(doc["load_before"]) == 3 and len(doc["load_after"]) == 3
    result = doc["result"]
    queue = result["queue_65536"]
    assert queue["analytic_mib"] == pytest.approx(65536 * (128 * 4 + 16) / 2**20)
    assert queue["measured_buffers_mib"] == pytest.approx(queue["analytic_mib"], rel=1e-3)
    assert result["engine_process"]["peak_mib"] > result["engine_process"]["after_imports_mib"] > 0

    page = docs.read_text()
    assert page.startswith("# Benchmarks")
    assert "## 7. Memory" in page and "Mode: **quick**" in page
    assert "Key queue at K = 65536" in page
    assert "## Machine and versions" in page
    assert "*Not run yet: `python bench/run.py --only efficiency`.*" in page  # other benchmarks: placeholders
    if before is not None:
        assert committed.stat().st_mtime == before
