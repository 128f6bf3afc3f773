"""The test-only record of whether a process loaded torch."""

from __future__ import annotations

import json

from moco.import_probe import IMPORT_PROBE_ENV, PROBE_FILE, record_modules


def test_records_role_and_torch_under_the_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(IMPORT_PROBE_ENV, str(tmp_path))
    record_modules("trial driver")
    record_modules("worker")
    rows = [json.loads(line) for line in (tmp_path / PROBE_FILE).read_text().splitlines()]
    assert [r["role"] for r in rows] == ["trial driver", "worker"]
    assert all(isinstance(r["torch"], bool) and r["pid"] > 0 for r in rows)


def test_records_nothing_without_the_switch(tmp_path, monkeypatch):
    monkeypatch.delenv(IMPORT_PROBE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    record_modules("worker")
    assert not any(tmp_path.iterdir())
