"""The cluster/ templates: they parse, carry what their format needs, and run the same study entrypoint."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import yaml

from study import submit
from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
ENTRYPOINT = "study/run.py --address"  # the study command of `make study`, with the cluster's address


def test_aws_launcher_yaml():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in cfg["available_node_types"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["mocostudy_driver"] > 0 and head["resources"]["CPU"] == 0
    gpu = cfg["available_node_types"]["gpu"]
    assert gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "/home/ray/mocostudy" in setup
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(commands)
    assert "2.60.0" in cfg["docker"]["image"]
    text = (CLUSTER / "aws.yaml").read_text()
    assert "study/submit.py --address" in text and "study/run.py --address auto --space" in text


def test_kuberay_rayjob():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and runtime_env["env_vars"]["MOCO_DATA_DIR"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert "mocostudy_driver" in head["rayStartParams"]["resources"] and head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    (workers,) = cluster["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    # The same entrypoint study/submit.py would send for these options.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "study/run.py"] and ENTRYPOINT in spec["entrypoint"]
    space = argv[argv.index("--space") + 1]
    args = submit.build_parser().parse_args(["--space", space, "--storage", "/mnt/studies", "--name",
                                             argv[argv.index("--name") + 1]])
    expected = submit.entrypoint(args, submit.space_argument(space), "/mnt/studies")
    assert shlex.split(expected)[4:6] == ["--space", "configs/cifar10-hardneg.yaml"]
    assert argv[argv.index("--storage") + 1] == "/mnt/studies"


def test_slurm_script():
    path = CLUSTER / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert "\"$RAY\" start --head" in text and "srun" in text and "--address=\"$head_ip:$gcs_port\"" in text
    assert "--dashboard-port=" in text and "--temp-dir=" in text and "RAY_AUTH_MODE=token" in text
    assert "study/run.py --address \"$head_ip:$gcs_port\" --space \"$SPACE\" --storage \"$STUDIES\"" in text
    assert "ray stop" not in text.replace("never a bare `ray stop`", "")


@pytest.mark.parametrize("name", ["aws.yaml", "rayjob.yaml", "slurm.sbatch"])
def test_templates_are_documented_and_use_real_spaces(name):
    readme = (CLUSTER / "README.md").read_text()
    assert name in readme
    text = (CLUSTER / name).read_text()
    assert "--space cifar10-hardneg.yaml" in text or "SPACE:-cifar10-hardneg.yaml" in text
    assert (ROOT / "configs" / "cifar10-hardneg.yaml").is_file()
