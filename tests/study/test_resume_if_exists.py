"""--resume-if-exists (for jobs a scheduler restarts): resume the study of that name when it exists, else start it.
Checked up to the cluster's address, which does not answer here, so nothing starts."""

from __future__ import annotations

import json
import socket
import subprocess

from tests.conftest import MINI_SPACE, ROOT, study_command


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_resume_if_exists_resumes_or_starts(tmp_path):
    def run(name):
        return subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path), "--name", name,
                                            "--address", _dead_address(), "--resume-if-exists"),
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    fresh = run("new")
    assert f"--resume-if-exists: starting {tmp_path / 'new'}" in fresh.stdout, fresh.stdout + fresh.stderr
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.json").write_text(json.dumps({"status": "interrupted"}))
    again = run("old")
    assert f"--resume-if-exists: resuming {tmp_path / 'old'}" in again.stdout, again.stdout + again.stderr
    for proc in (fresh, again):  # then the unreachable address stops it, before anything is written
        assert proc.returncode == 2 and "cannot reach" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()
