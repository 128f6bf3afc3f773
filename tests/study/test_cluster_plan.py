"""Plans that follow the cluster, on a loopback cluster whose worker node declares a GPU (``ray start --num-gpus 1``;
Ray schedules on it without CUDA, and training falls back to the CPU under the test-only switch
``MOCO_TEST_DECLARED_GPUS_ON_CPU``, moco/train.py): two trials share the one GPU with ``--gpus-per-worker 0.5``,
and node shapes that can never hold a trial are refused with exit status 2."""

from __future__ import annotations

import os
import shlex
import subprocess

import pandas as pd
import pytest

from moco.train import DECLARED_GPUS_ON_CPU_ENV
from tests.conftest import MINI_SPACE, ROOT, study_command
from tests.study.test_submit import RAY, LoopbackCluster

pytestmark = [pytest.mark.ray]


class GpuLoopbackCluster(LoopbackCluster):
    """A head (1 CPU, the mocostudy_driver resource) and a worker node with 2 CPUs and 1 declared GPU."""

    def __init__(self):
        super().__init__()
        self.env[DECLARED_GPUS_ON_CPU_ENV] = "1"

    def start(self) -> "GpuLoopbackCluster":
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                     "--ray-client-server-port", str(_free_port()), *self._node_ports("h"), "--num-cpus", "1",
                     "--resources", '{"mocostudy_driver": 100}'], "head.log")
        self.wait_for_nodes(1)
        self._start(["--address", f"127.0.0.1:{self.gcs_port}", *self._node_ports("w"), "--num-cpus", "2",
                     "--num-gpus", "1"], "worker.log")
        self.wait_for_nodes(2)
        return self


def _free_port() -> int:
    from tests.study.test_submit import _free_port as free

    return free()


@pytest.fixture(scope="module")
def gpu_cluster():
    c = GpuLoopbackCluster()
    try:
        yield c.start()
    finally:
        c.stop()


def _study(cluster, tmp_path, *args: str, timeout: float = 800) -> subprocess.CompletedProcess:
    return subprocess.run(study_command("--space", str(MINI_SPACE), "--address", f"127.0.0.1:{cluster.gcs_port}",
                                        "--storage", str(tmp_path / "runs"), "--no-report", *args),
                          cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_node_shapes_that_cannot_hold_a_worker_are_refused(gpu_cluster, tmp_path):
    proc = _study(gpu_cluster, tmp_path, "--name", "big", "--gpus-per-worker", "1", "--cpus-per-worker", "4",
                  timeout=240)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no node can hold one worker" in proc.stderr and "(2 CPU, 1 GPU)" in proc.stderr
    assert "--wait-for-nodes" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(900)
def test_two_trials_share_one_declared_gpu(gpu_cluster, tmp_path):
    proc = _study(gpu_cluster, tmp_path, "--name", "half", "--gpus-per-worker", "0.5", "--cpus-per-worker", "1",
                  "--num-samples", "2", "--set", "compute_budget=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "1 worker(s) x 1 CPU + 0.5 GPU per trial; 2 trial(s) at once" in proc.stdout
    assert "(2 CPU, 1 GPU): 2 worker(s)" in proc.stdout
    # Both trials were running at once: the second started before the first ended.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[trial ")]  # study/console.py's events
    starts = [i for i, line in enumerate(lines) if " started: " in line]
    ends = [i for i, line in enumerate(lines) if any(f"] {end}" in line for end in ("completed", "pruned", "diverged",
                                                                                    "errored"))]
    assert len(starts) == 2 and max(starts) < min(ends), lines
    trials = pd.read_csv(tmp_path / "runs" / "half" / "trials.csv")
    worker = [n for n in gpu_cluster.nodes() if n["resources_total"].get("GPU")][0]["node_id"]
    assert len(trials) == 2 and set(trials.node_id.astype(str)) == {worker}


class BlindWorkerCluster(LoopbackCluster):
    """A head (1 CPU, drivers) and a worker node (1 CPU) started in a mount namespace of its own where ``hidden``
    is covered by an empty tmpfs: a storage that only the head sees. Needs root (unshare, mount)."""

    def __init__(self, hidden: str):
        super().__init__()
        self.hidden = hidden
        self.env["RAY_raylet_start_wait_time_s"] = "180"  # a node registers slowly on a loaded 2-core machine

    def start(self) -> "BlindWorkerCluster":
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                     "--ray-client-server-port", str(_free_port()), *self._node_ports("h"), "--num-cpus", "1",
                     "--resources", '{"mocostudy_driver": 100}'], "head.log")
        self.wait_for_nodes(1)
        ray_start = shlex.join([RAY, "start", "--block", "--address", f"127.0.0.1:{self.gcs_port}",
                                *self._node_ports("w"), "--num-cpus", "1"])
        with open(f"{self.temp_dir}/worker.log", "w") as out:
            self.procs.append(subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f"mount -t tmpfs none {shlex.quote(self.hidden)} && exec {ray_start}"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        self.wait_for_nodes(2)
        return self


@pytest.mark.timeout(400)
def test_storage_that_one_node_cannot_see_is_refused(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare --mount to hide the storage from one node")
    storage = tmp_path / "studies"
    storage.mkdir()
    cluster = BlindWorkerCluster(str(storage))
    try:
        cluster.start()
        proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--address", f"127.0.0.1:{cluster.gcs_port}",
                                            "--storage", str(storage), "--name", "blind", "--no-report"),
                              cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
        worker = [n["node_id"] for n in cluster.nodes() if not n["resources_total"].get("mocostudy_driver")][0]
    finally:
        cluster.stop()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"--storage {storage} is not shared by every node: 1 of 2 cannot read" in proc.stderr
    assert worker[:8] in proc.stderr and "Traceback" not in proc.stderr
    assert not list(storage.glob(".mocostudy-probe-*"))


class GrowingCluster(LoopbackCluster):
    """A head with no CPU for workers (the drivers' resource only), to which a 2-CPU worker node is added later."""

    def start(self) -> "GrowingCluster":
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                     "--ray-client-server-port", str(_free_port()), *self._node_ports("h"), "--num-cpus", "0",
                     "--resources", '{"mocostudy_driver": 100}'], "head.log")
        self.wait_for_nodes(1)
        return self

    def add_worker(self) -> None:
        self._start(["--address", f"127.0.0.1:{self.gcs_port}", *self._node_ports("w"), "--num-cpus", "2"],
                    "worker.log")
        self.wait_for_nodes(2)


@pytest.mark.timeout(900)
def test_a_node_that_joins_after_the_start_receives_the_trials(tmp_path):
    """The head holds no worker: the study waits (--wait-for-nodes) instead of failing, and the trials run on the
    node that joins later. Both node ids are recorded at their start and required."""
    cluster = GrowingCluster()
    try:
        cluster.start()
        (head,) = [n["node_id"] for n in cluster.nodes()]
        proc = subprocess.Popen(study_command("--space", str(MINI_SPACE), "--address", f"127.0.0.1:{cluster.gcs_port}",
                                              "--storage", str(tmp_path / "runs"), "--name", "grow", "--no-report",
                                              "--num-samples", "2", "--set", "compute_budget=2",
                                              "--wait-for-nodes", "400"),
                                cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:  # wait until the study says it is waiting, then add the node
            lines.append(line)
            if "waiting up to 400 s for nodes" in line:
                break
        assert any("waiting up to 400 s for nodes" in line for line in lines), "".join(lines)[-3000:]
        cluster.add_worker()
        (worker,) = [n["node_id"] for n in cluster.nodes() if n["node_id"] != head]
        rest, _ = proc.communicate(timeout=800)
    finally:
        cluster.stop()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out[-4000:]
    trials = pd.read_csv(tmp_path / "runs" / "grow" / "trials.csv")
    assert len(trials) == 2 and set(trials.node_id.astype(str)) == {worker}
