"""A study's private Ray head and Ray's address file (``<Ray's temp dir>/ray_current_cluster``, which an address-less
``ray.init()`` joins): the head never writes it, so it never overwrites a user's ``ray start`` cluster and leaves no
address behind, even when the driver is killed; a stale one found there is removed. Ray's temp dir is a test folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MINI_SPACE, ROOT, study_command

pytestmark = pytest.mark.ray

DRIVER = """
import sys, time
sys.path.insert(0, {root!r})
from study.local_cluster import LocalCluster

cluster = LocalCluster(num_cpus=1)
with cluster as address:
    print(address, cluster._proc.pid, flush=True)
    time.sleep(900)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_private_head_keeps_a_users_address_and_leaves_none_when_the_driver_is_killed(stale_ray_tmp, tmp_path):
    env, ray_tmp, _ = stale_ray_tmp
    shared = ray_tmp / "ray_current_cluster"
    with socket.socket() as user_head:  # stands in for the user's own, still running `ray start` cluster
        user_head.bind(("", 0))
        user_head.listen(8)
        users = f"127.0.0.1:{user_head.getsockname()[1]}"
        shared.write_text(users)
        out = tmp_path / "driver.out"
        with open(out, "w") as log:
            driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(root=str(ROOT))], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        head_pid = None
        try:
            deadline = time.time() + 180
            while time.time() < deadline and driver.poll() is None and not out.read_text().strip():
                time.sleep(0.5)
            assert driver.poll() is None, out.read_text()[-3000:]
            address, pid = out.read_text().split()[:2]
            head_pid = int(pid)
            # The head records its address (as <node IP>:<port>) in its own temp dir, and leaves the user's alone.
            private = ray_tmp / "mocostudy" / "ray_current_cluster"
            deadline = time.time() + 120
            while time.time() < deadline and not private.is_file():
                time.sleep(0.5)
            assert private.read_text().rsplit(":", 1)[1] == address.rsplit(":", 1)[1]
            assert shared.read_text() == users

            driver.kill()  # SIGKILL: no clean-up in the driver; the head gets SIGTERM (PR_SET_PDEATHSIG)
            driver.wait()
            deadline = time.time() + 90
            while time.time() < deadline and _alive(head_pid):
                time.sleep(0.5)
            assert not _alive(head_pid), "the head outlived its driver"
            assert shared.read_text() == users
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            if head_pid is not None:
                try:
                    os.killpg(head_pid, signal.SIGKILL)  # the head's session: what is left of its Ray processes
                except ProcessLookupError:
                    pass


@pytest.mark.timeout(900)
def test_mini_study_removes_a_stale_address_and_leaves_none(stale_ray_tmp, tmp_path):
    env, ray_tmp, _ = stale_ray_tmp
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path), "--name", "stale",
                                        "--num-samples", "2", "--no-report"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "stale" / "trials.csv").is_file()
    assert not (ray_tmp / "ray_current_cluster").exists()  # the stale address is gone, none was written
    assert (ray_tmp / "mocostudy").is_dir()  # where the head ran (its session logs stay, as with Ray's own)
    assert not (ray_tmp / "mocostudy" / "ray_current_cluster").exists()
