"""The cluster/ templates: they parse, carry what their format needs, and run the same study entrypoint."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

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


def test_slurm_template_derives_gpus_ports_and_head_address():
    text = (CLUSTER / "slurm.sbatch").read_text()
    assert "GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}" in text  # follows --gres
    assert "--cpus-per-worker $((CPUS / GPUS_PER_NODE))" in text  # one trial per GPU, not the space's 8 CPUs
    assert "hostname --ip-address" not in text and "grep -v -e '^127\\.'" in text
    assert "base=$((10000 + (SLURM_JOB_ID % 220) * 100))" in text
    assert 10000 + 219 * 100 + 99 < 32768  # the highest port of the last block is below the ephemeral range
    assert "#SBATCH --requeue" in text and "--resume-if-exists" in text and "--wait-for-nodes" in text


@pytest.mark.timeout(120)
def test_slurm_batch_shell_forwards_sigterm_to_the_study(tmp_path):
    """SLURM's --signal=B:TERM reaches only the batch shell: its trap must pass it on to the study (in the background)
    and wait for its clean stop, then exit with the study's status. Run with plain bash on the script's own function."""
    text = (CLUSTER / "slurm.sbatch").read_text()
    start = text.index("run_forwarding_term() {")
    func = text[start:text.index("\n}\n", start) + 3]
    child = tmp_path / "study.py"  # stands in for study/run.py: on SIGTERM it takes 2 s to stop, then exits 130
    child.write_text("import pathlib, signal, sys, time\n"
                     "def stop(*_):\n"
                     "    time.sleep(2)\n"
                     "    pathlib.Path(sys.argv[1]).write_text('clean')\n"
                     "    sys.exit(130)\n"
                     "signal.signal(signal.SIGTERM, stop)\n"
                     "pathlib.Path(sys.argv[2]).write_text('up')\n"
                     "time.sleep(60)\n")
    stopped, up = tmp_path / "stopped", tmp_path / "up"
    script = (f"set -euo pipefail\n{func}\nstatus=0\n"
              f"run_forwarding_term {shlex.join([sys.executable, str(child), str(stopped), str(up)])} || status=$?\n"
              "echo \"status=$status\"\nexit $status\n")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not up.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert up.exists(), "the stand-in study did not start"
    proc.send_signal(signal.SIGTERM)  # what SLURM sends the batch shell
    out, _ = proc.communicate(timeout=60)
    assert "[slurm] stop signal" in out and "status=130" in out, out
    assert stopped.read_text() == "clean" and proc.returncode == 130


def test_templates_resume_wait_for_nodes_and_stop_gracefully():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "--resume-if-exists" in argv and "--wait-for-nodes" in argv and job["spec"]["backoffLimit"] >= 1
    assert int(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    max_trials = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert int(head["resources"]["limits"]["memory"].removesuffix("Gi")) >= 2 * max_trials + 4  # ~2 GB per trial
    aws = (CLUSTER / "aws.yaml").read_text()
    assert "--wait-for-nodes" in aws and "--resume-if-exists" in aws
    # submit.py forwards the new options, and gives a stopped job time to stop cleanly (Ray's default is 3 s).
    args = submit.build_parser().parse_args(["--space", "hardneg", "--storage", "/nfs/s", "--wait-for-nodes", "60",
                                             "--resume-if-exists"])
    assert "--wait-for-nodes 60 --resume-if-exists" in submit.entrypoint(args, "configs/hardneg.yaml", "/nfs/s")
    assert int(submit.runtime_env(args)["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60


def test_dockerfile_matches_setup():
    """The image's Ray and Python match setup.cfg's pins, and it installs the project as scripts/setup.sh does."""
    docker = (CLUSTER / "Dockerfile").read_text()
    setup_cfg = (ROOT / "setup.cfg").read_text()
    ray_pin = setup_cfg.split("ray[", 1)[1].split("==", 1)[1].split()[0]
    base = next(line.split()[1] for line in docker.splitlines() if line.startswith("FROM "))
    assert base == f"rayproject/ray:{ray_pin}-py311-gpu"
    setup_sh = (ROOT / "scripts" / "setup.sh").read_text()
    install = next(line.split("python ", 1)[1] for line in setup_sh.splitlines() if "pip install -q -e" in line)
    assert install.startswith("-m pip install -q -e") and install in docker  # the same extras as the set-up
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    image = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":ray{ray_pin}-gpu") and "Dockerfile" in (CLUSTER / "README.md").read_text()
