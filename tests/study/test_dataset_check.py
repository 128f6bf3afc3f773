"""The dataset checked on the cluster before trials start (study/dataset_check.py), on a loopback cluster of two
``ray start`` nodes that each see their own ``$MOCO_DATA_DIR``: the head's holds CIFAR-10 (fake files), the
worker's is empty. A dataset missing on a node that will train is refused with exit status 2 naming that node and
the places searched there; with ``download: true`` it is staged once, before any trial."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import MINI_SPACE, ROOT, study_command
from tests.moco.test_download_lock import CIFAR_FILES
from tests.study.test_submit import LoopbackCluster, _free_port

pytestmark = [pytest.mark.ray]


class SplitDataCluster(LoopbackCluster):
    """A head (2 CPUs, drivers; ``$MOCO_DATA_DIR`` = ``have``) and a worker (1 CPU; ``$MOCO_DATA_DIR`` = ``empty``):
    both can hold a Train worker; only the head's data folder holds the dataset."""

    def __init__(self, have: str, empty: str):
        super().__init__()
        self.have, self.empty = have, empty

    def start(self) -> "SplitDataCluster":
        common = dict(self.env)
        self.env = {**common, "MOCO_DATA_DIR": self.have}
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                     "--ray-client-server-port", str(_free_port()), *self._node_ports("h"), "--num-cpus", "2",
                     "--resources", '{"mocostudy_driver": 100}'], "head.log")
        self.wait_for_nodes(1)
        self.env = {**common, "MOCO_DATA_DIR": self.empty}
        self._start(["--address", f"127.0.0.1:{self.gcs_port}", *self._node_ports("w"), "--num-cpus", "1"],
                    "worker.log")
        self.wait_for_nodes(2)
        self.env = common
        self.env.pop("MOCO_DATA_DIR", None)  # the driver's own setting says nothing about the nodes'
        return self


@pytest.fixture(scope="module")
def split_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    have, empty = base / "have", base / "empty"
    (have / "cifar-10-batches-py").mkdir(parents=True)
    empty.mkdir()
    for name in CIFAR_FILES:
        (have / "cifar-10-batches-py" / name).write_bytes(b"")
    c = SplitDataCluster(str(have), str(empty))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.mark.timeout(400)
def test_a_dataset_missing_on_a_node_is_refused_naming_it(split_cluster, tmp_path):
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--address", f"127.0.0.1:{split_cluster.gcs_port}",
                                        "--storage", str(tmp_path / "runs"), "--no-report", "--set", "dataset=cifar10"),
                          cwd=ROOT, env=split_cluster.env, capture_output=True, text=True, timeout=300)
    nodes = split_cluster.nodes()
    head = [n["node_id"] for n in nodes if n["resources_total"].get("mocostudy_driver")][0]
    worker = [n["node_id"] for n in nodes if not n["resources_total"].get("mocostudy_driver")][0]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dataset 'cifar10' is missing on 1 of 2 nodes that will train" in proc.stderr
    assert f"node {worker[:8]}" in proc.stderr and f"{split_cluster.empty}/cifar-10-batches-py" in proc.stderr
    assert head[:8] not in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").glob("*/trials.csv"))


STAGE = """
import ray, sys
from moco.config import TrainConfig
from study.dataset_check import check_on_cluster
from tests.moco.test_download_lock import _slow_fetch

ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
assert len(nodes) == 2, nodes
check_on_cluster(TrainConfig(dataset="cifar10", data_root=sys.argv[2], download=True), nodes, fetch=_slow_fetch)
check_on_cluster(TrainConfig(dataset="cifar10", data_root=sys.argv[2], download=True), nodes, fetch=_slow_fetch)
"""


@pytest.mark.timeout(300)
def test_a_dataset_to_download_is_staged_once(split_cluster, tmp_path):
    shared = tmp_path / "shared"  # data_root: one folder both nodes see, empty
    proc = subprocess.run([sys.executable, "-c", STAGE, f"127.0.0.1:{split_cluster.gcs_port}", str(shared)],
                          cwd=ROOT, env=split_cluster.env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("[study] staging cifar10 into") == 1
    assert (tmp_path / "fetch.log").read_text().split()[0::2] == ["start", "end"]  # downloaded once, not per node
    assert all((shared / "cifar-10-batches-py" / name).read_bytes() == b"complete" for name in CIFAR_FILES)
