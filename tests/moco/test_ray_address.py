"""moco.ray_address: where Ray's address file is, which addresses answer, what is stale; and ``python -m moco.train``
with a stale address file (it never joins it) or an unreachable ``--address`` (exit 2 within seconds)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from moco import ray_address
from moco.ray_address import AddressError, check_address
from tests.conftest import CONFIGS, MINI_SPACE, ROOT, study_command


@pytest.fixture()
def ray_tmp(tmp_path, monkeypatch):
    """Ray's temp dir pointed at a test folder (never the real /tmp/ray), with no RAY_ADDRESS in the way."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


@pytest.fixture()
def listening():
    """An address where something accepts connections (stands in for a live `ray start` head); on every interface,
    like a GCS, since Ray turns 127.0.0.1 into this machine's address."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def dead_address() -> str:
    """An address where nothing listens (a head that is gone)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_temp_dir_is_where_ray_looks(tmp_path, monkeypatch):
    from ray._common.utils import get_default_ray_temp_dir, get_ray_address_file

    for env in ({"RAY_TMPDIR": str(tmp_path / "a")}, {"TMPDIR": str(tmp_path / "b")}, {}):
        for var in ("RAY_TMPDIR", "TMPDIR"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert str(ray_address.ray_temp_dir()) == get_default_ray_temp_dir()
        assert str(ray_address.address_file()) == get_ray_address_file(None)


def test_no_address_means_a_new_instance(ray_tmp):
    (ray_tmp / "ray_current_cluster").write_text(dead_address())
    assert check_address(None) is None and check_address("local") is None


def test_an_address_that_answers_is_kept(listening):
    assert check_address(listening) == listening


def test_an_unreachable_address_fails_within_seconds():
    address = dead_address()
    start = time.time()
    with pytest.raises(AddressError, match=rf"--address {address}: cannot reach {address} \(.*\); check that the "
                                           "Ray head node is running"):
        check_address(address)
    assert time.time() - start < 10
    with pytest.raises(AddressError, match="not a Ray address"):
        check_address("127.0.0.1:notaport")


def test_auto_resolves_like_ray_and_checks_what_it_finds(ray_tmp, listening, monkeypatch):
    from ray._private import services

    # Ray's "auto" prefers a Ray process running on this machine when there is exactly one: leave out other people's.
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: set())
    stale = dead_address()
    (ray_tmp / "ray_current_cluster").write_text(stale)
    port = stale.rsplit(":", 1)[1]  # Ray reports 127.0.0.1 as this machine's address
    with pytest.raises(AddressError, match=rf"--address auto: cannot reach \S+:{port} \(.*\), the cluster found in "
                                           rf"{ray_tmp / 'ray_current_cluster'} \(written by the last ray start"):
        check_address("auto")
    (ray_tmp / "ray_current_cluster").write_text(listening)
    assert check_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", stale)  # RAY_ADDRESS comes first, as in ray.init
    with pytest.raises(AddressError, match=rf"cannot reach {stale} \(.*\), the cluster found in \$RAY_ADDRESS;"):
        check_address("auto")


def test_a_stale_address_file_is_removed_a_live_one_kept(ray_tmp, listening):
    path = ray_tmp / "ray_current_cluster"
    assert ray_address.remove_stale_address_file() is None  # no file: nothing to do
    stale = dead_address()
    path.write_text(stale)
    assert ray_address.remove_stale_address_file() == stale and not path.exists()
    path.write_text(listening)
    assert ray_address.remove_stale_address_file() is None and path.read_text() == listening


# --- python -m moco.train with a stale address file, and with an unreachable --address -----------------------------
def _train(env, storage, *args: str, timeout: float = 800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "moco.train", "--config", str(CONFIGS / "digits.yaml"), "--epochs", "1",
           "--set", "final_eval=false", "--storage", str(storage), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [0, 1])
def test_train_never_joins_the_address_a_gone_head_left(stale_ray_tmp, tmp_path, workers):
    """The README's in-process debugging command (and a 1-worker run) after a study that left its address behind."""
    env, ray_tmp, stale = stale_ray_tmp
    proc = _train(env, tmp_path, "--workers", str(workers))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert '"epoch": 1' in proc.stdout
    assert "Connecting to existing Ray cluster" not in out  # neither the driver ...
    # ... nor Ray Train's placement-group cleaner inside the new instance went looking for "its" cluster
    assert "Found multiple active Ray instances" not in out and "Monitor thread did not exit" not in out
    if workers == 0:
        assert "Started a local Ray instance" not in out  # in-process: no Ray instance at all
    assert (ray_tmp / "ray_current_cluster").read_text() == stale  # not moco.train's to touch


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["moco.train", "study/run.py"])
def test_an_unreachable_address_exits_2_within_seconds(stale_ray_tmp, tmp_path, command):
    env, _, stale = stale_ray_tmp
    start = time.time()
    if command == "moco.train":
        proc = _train(env, tmp_path, "--address", stale, timeout=60)
    else:
        proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path), "--address",
                                            stale), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert time.time() - start < 30
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    # The README's unreachable-cluster message, the same from both commands.
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --address {stale}: cannot reach {stale} (Connection refused); check that the Ray head node is "
        "running and the address and port are right")


def test_ray_client_addresses_are_refused_with_a_pointer_to_ray_jobs(monkeypatch):
    """ray:// cannot work (Tune would run remotely while the study writes its files here): refused before any
    connection is tried, also when ``auto`` finds one in $RAY_ADDRESS."""
    with pytest.raises(AddressError, match=r"--address ray://head:10001: a Ray Client address \(ray://\) is not "
                                           r"supported; .*study/submit.py --address http://HEAD:8265"):
        check_address("ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(AddressError, match=r"--address auto \(found in \$RAY_ADDRESS: ray://head:10001\): a Ray "
                                           "Client address"):
        check_address("auto")


@pytest.mark.parametrize("command", [
    study_command("--space", str(MINI_SPACE), "--address", "ray://127.0.0.1:10001", "--name", "client"),
    [sys.executable, "-m", "moco.train", "--config", str(CONFIGS / "digits.yaml"), "--address",
     "ray://127.0.0.1:10001"],
], ids=["study", "train"])
def test_commands_refuse_ray_client_with_exit_2(command, tmp_path):
    proc = subprocess.run([*command, "--storage", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Ray Client address (ray://) is not supported" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray job submit" in proc.stderr and not list(tmp_path.iterdir())
