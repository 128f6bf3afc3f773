"""study/submit.py against a real two-node Ray cluster on the loopback address (token auth on), and its refusals.

The cluster is private to this module: non-default free ports, its own --temp-dir, each `ray start --block` in its
own session, stopped by killing those process groups (never `ray stop`, which would stop other people's Ray too).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from study import submit
from tests.conftest import MINI_SPACE, ROOT

RAY = str(Path(sys.executable).parent / "ray")
SUBMIT = [sys.executable, str(ROOT / "study" / "submit.py")]


_HANDED_OUT: set[int] = set()  # ports given to a cluster of this test process: free now, but not yet bound by Ray


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _free_range(n: int = 40) -> tuple[int, int]:
    """A range of ``n`` free ports overlapping none handed out before (a node's worker-port range once took the port
    chosen for its own dashboard agent, and ``ray start`` refused to start)."""
    for _ in range(200):
        base = random.randint(30000, 60000 - n)
        if _HANDED_OUT.intersection(range(base, base + n)):
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.update(range(base, base + n))
        return base, base + n - 1
    raise RuntimeError("no free range of ports")


class LoopbackCluster:
    """A head node (1 CPU, the mocostudy_driver resource, dashboard) and a worker node (1 CPU) on 127.0.0.1."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="rsub", dir="/tmp")  # short: Unix socket paths are limited
        self.token = secrets.token_hex(16)
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0"}
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(var, None)
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        # Ray Train's PlacementGroupCleaner finds the State API by auto-detecting "the" local Ray instance; on a
        # machine running several (other people's and this one) that fails and the cleaner actors pile up. Point
        # it at this cluster's dashboard. (On a real cluster each node runs one Ray, so nothing is needed.)
        self.env["RAY_API_SERVER_ADDRESS"] = self.address
        # Worker processes start slowly on a loaded 2-core machine with 1 CPU per node.
        self.env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "240"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_ports(self, node: str) -> list[str]:
        # One temp dir per node, as on separate machines: nodes sharing one would share runtime_resources/, and a
        # node's runtime-env agent would delete the job's working_dir under the other node's job driver.
        singles = {flag: _free_port() for flag in ("--node-manager-port", "--object-manager-port",
                                                   "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port",
                                                   "--metrics-export-port", "--runtime-env-agent-port")}
        low, high = _free_range()  # after the single ports, so that it avoids them
        return ["--node-ip-address", "127.0.0.1", "--num-gpus", "0", "--temp-dir", f"{self.temp_dir}/{node}",
                "--disable-usage-stats", *(str(x) for item in singles.items() for x in item),
                "--min-worker-port", str(low), "--max-worker-port", str(high)]

    def _start(self, args: list[str], log: str) -> None:
        with open(f"{self.temp_dir}/{log}", "w") as out:
            self.procs.append(subprocess.Popen([RAY, "start", "--block", *args], env=self.env, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> "LoopbackCluster":
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                     "--ray-client-server-port", str(_free_port()), "--num-cpus", "1",
                     "--resources", '{"mocostudy_driver": 100}', *self._node_ports("h")], "head.log")
        self.wait_for_nodes(1)
        self._start(["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", "1",
                     "--resources", '{"second_node": 1}', *self._node_ports("w")], "worker.log")
        self.wait_for_nodes(2)
        return self

    def nodes(self) -> list[dict]:
        r = requests.get(f"{self.address}/api/v0/nodes", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=5)
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 300) -> None:  # ray start can take minutes under load
        end = time.time() + timeout
        while time.time() < end:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {proc.returncode}: {self.logs()}")
            try:
                if len(self.nodes()) >= count:
                    return
            except (requests.RequestException, KeyError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} node(s) not up after {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "".join(Path(self.temp_dir, name).read_text()[-2000:] for name in ("head.log", "worker.log")
                       if Path(self.temp_dir, name).is_file())

    def stop(self) -> None:
        """SIGTERM each `ray start --block` session (it stops its raylet, GCS, ...), then SIGKILL what is left."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            for proc in self.procs:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            for proc in self.procs:
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
        # Workers of this cluster that left the process groups: found by this cluster's own temp dir.
        for pid in _pids_with(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids_with(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                pids.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            pass
    return pids


@pytest.fixture(scope="module")
def cluster():
    c = LoopbackCluster()
    try:
        yield c.start()
    finally:
        c.stop()


def run_submit(*args: str, token: str | None, home: Path, timeout: float = 60, **env_extra: str):
    """study/submit.py with a clean auth environment: the token (if any) in RAY_AUTH_TOKEN, HOME without a token."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
                        "RAY_API_SERVER_ADDRESS")}
    env["HOME"] = str(home)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    env.update(env_extra)
    return subprocess.run([*SUBMIT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# --- a real study on two nodes ---------------------------------------------------------------------------------------
@pytest.mark.ray  # the module\'s two-node cluster
@pytest.mark.timeout(420)
def test_mini_study_runs_on_both_nodes(cluster, tmp_path):
    storage = tmp_path / "studies"
    proc = run_submit("--address", cluster.address, "--space", str(MINI_SPACE), "--name", "mini",
                      "--storage", f"file://{storage}", "--max-concurrent", "2", "--no-report", "--follow",
                      token=cluster.token, home=tmp_path, timeout=360)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "submitted job raysubmit_" in proc.stdout and f"{storage}/mini/" in proc.stdout
    assert "python study/run.py --address auto --space configs/smoke/mini.yaml" in proc.stdout
    job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
    assert "SUCCEEDED" in proc.stdout
    run_dir = storage / "mini"
    study = json.loads((run_dir / "study.json").read_text())
    assert study["status"] == "finished"
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and set(trials.status) <= {"completed", "pruned"}, trials
    nodes = set(trials.node_id.dropna()) | {n for ns in trials.nodes.dropna() for n in str(ns).split(";") if n}
    assert {n["node_id"] for n in cluster.nodes()} <= nodes, (nodes, trials[["trial_id", "node_id", "nodes"]])
    # --status and --logs of the finished job
    status = run_submit("--address", cluster.address, "--status", job_id, token=cluster.token, home=tmp_path)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout + status.stderr
    logs = run_submit("--address", cluster.address, "--logs", job_id, token=cluster.token, home=tmp_path)
    assert logs.returncode == 0 and "trials finished" in logs.stdout, logs.stdout[-2000:] + logs.stderr
    missing = run_submit("--address", cluster.address, "--status", "raysubmit_nosuchjob", token=cluster.token,
                         home=tmp_path)
    assert missing.returncode == 2 and "no job raysubmit_nosuchjob" in missing.stderr, missing.stderr


@pytest.mark.ray  # the module\'s two-node cluster
@pytest.mark.timeout(120)
def test_stop_a_running_job(cluster, tmp_path):
    proc = run_submit("--address", cluster.address, "--space", str(MINI_SPACE), "--name", "stopped",
                      "--storage", f"file://{tmp_path}", "--no-report", token=cluster.token, home=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
    stop = run_submit("--address", cluster.address, "--stop", job_id, token=cluster.token, home=tmp_path)
    assert stop.returncode == 0 and job_id in stop.stdout, stop.stdout + stop.stderr
    end = time.time() + 60
    while time.time() < end:
        status = run_submit("--address", cluster.address, "--status", job_id, token=cluster.token, home=tmp_path)
        if "STOPPED" in status.stdout or "FAILED" in status.stdout:
            break
        time.sleep(2)
    assert "STOPPED" in status.stdout, status.stdout + status.stderr


# --- refusals: exit 2, quickly, before anything is submitted ---------------------------------------------------------
@pytest.mark.ray  # the module\'s two-node cluster
@pytest.mark.timeout(60)
def test_local_storage_on_two_nodes_is_refused(cluster, tmp_path):
    proc = run_submit("--address", cluster.address, "--space", str(MINI_SPACE), "--storage", str(tmp_path),
                      token=cluster.token, home=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has 2 nodes" in proc.stderr and "--shared-storage" in proc.stderr and "file://" in proc.stderr
    assert "s3://" in proc.stderr and "submitted" not in proc.stdout


@pytest.mark.ray  # the module\'s two-node cluster
@pytest.mark.timeout(60)
def test_missing_and_wrong_token(cluster, tmp_path):
    start = time.time()
    proc = run_submit("--address", cluster.address, "--space", str(MINI_SPACE), "--storage", "s3://b/s",
                      token=None, home=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "requires a token" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr
    assert "~/.ray/auth_token" in proc.stderr and "ray get-auth-token" in proc.stderr
    proc = run_submit("--address", cluster.address, "--status", "x", token="not-the-token", home=tmp_path)
    assert proc.returncode == 2 and "rejected the token from $RAY_AUTH_TOKEN" in proc.stderr, proc.stderr
    # the token file Ray uses by default is read too
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(cluster.token + "\n")
    proc = run_submit("--address", cluster.address, "--status", "raysubmit_none", token=None, home=tmp_path)
    assert proc.returncode == 2 and "no job raysubmit_none" in proc.stderr, proc.stderr
    bad = tmp_path / "nothing"
    proc = run_submit("--address", cluster.address, "--status", "x", token=None, home=tmp_path,
                      RAY_AUTH_TOKEN_PATH=str(bad))
    assert proc.returncode == 2 and f"RAY_AUTH_TOKEN_PATH={bad} cannot be read" in proc.stderr, proc.stderr
    assert time.time() - start < 40


@pytest.mark.timeout(60)
def test_unreachable_address_fails_fast(tmp_path):
    port = _free_port()  # nothing listens there
    start = time.time()
    proc = run_submit("--address", f"http://127.0.0.1:{port}", "--space", str(MINI_SPACE), "--storage", "s3://b/s",
                      token="t", home=tmp_path, timeout=30)
    assert proc.returncode == 2 and f"http://127.0.0.1:{port}" in proc.stderr, proc.stderr
    assert "cannot reach the Ray dashboard" in proc.stderr and time.time() - start < 15


def test_unanswered_connect_times_out(monkeypatch):
    """A host that never answers (packets dropped) fails after --connect-timeout, not after the OS's TCP timeout."""
    class Silent:
        def get(self, *a, timeout=None, **k):
            raise requests.exceptions.ConnectTimeout("timed out")

    monkeypatch.setattr(requests, "get", Silent().get)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    with pytest.raises(submit.SubmitError, match=r"http://10.1.2.3:8265 within 2 s"):
        submit.Cluster("http://10.1.2.3:8265", 2).check()


# --- no cluster needed ---------------------------------------------------------------------------------------------
def test_the_study_command_line_is_ray_free():
    """submit builds its options and makes the study's checks from study/cli.py, which loads neither Ray nor torch."""
    code = ("import sys; import study.cli, study.submit; study.submit.forwarded_actions(); "
            "print('ray' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_storage_rules():
    assert submit.storage_argument("s3://bucket/studies/", False) == ("s3://bucket/studies", False)
    assert submit.storage_argument("file:///nfs/studies", False) == ("/nfs/studies", False)
    assert submit.storage_argument("/nfs/studies", True) == ("/nfs/studies", False)
    assert submit.storage_argument("/tmp/studies", False) == ("/tmp/studies", True)
    for bad in (None, "runs", "file://relative"):
        with pytest.raises(submit.SubmitError):
            submit.storage_argument(bad, False)


def test_dry_run_prints_the_job(tmp_path):
    proc = run_submit("--space", "hardneg.yaml", "--storage", "gs://b/studies", "--max-concurrent", "2",
                      "--set", "compute_budget=4", "--pip", "--dry-run", token=None, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("entrypoint  python study/run.py --address auto --space configs/hardneg.yaml --storage gs://b/studies "
            "--max-concurrent 2 --set compute_budget=4") in proc.stdout
    env = json.loads(proc.stdout.split("runtime_env ", 1)[1].splitlines()[0])
    assert env["working_dir"] == str(ROOT) and {"/.venv/", "/runs/", "/.git/", "/data/"} <= set(env["excludes"])
    assert "torch==2.14.1" in env["pip"] and not any(r.startswith("ray") for r in env["pip"])
    assert "results     gs://b/studies/hardneg/" in proc.stdout


def test_space_outside_the_project_is_refused(tmp_path):
    outside = tmp_path / "space.yaml"
    outside.write_text(MINI_SPACE.read_text())
    proc = run_submit("--space", str(outside), "--storage", "s3://b/s", "--dry-run", token=None, home=tmp_path)
    assert proc.returncode == 2 and "outside the project" in proc.stderr, proc.stderr
