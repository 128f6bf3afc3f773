"""A private single-node Ray cluster for a study run on this machine.

``ray.init()`` can start a local cluster, but Ray's own helper actors (Ray Train's placement-group cleaner) find
"their" cluster by scanning the machine; with two Ray instances on one machine (two studies, a test cluster) they
fail, finished trials keep their resources, and the next trial never starts. Starting the head node ourselves lets us
set ``RAY_ADDRESS`` in its environment, so every process of this cluster knows which one is its own. Ports are picked
free, so several studies can run side by side; the whole process group is stopped on exit.

The head runs in a temp dir of its own (``<Ray's temp dir>/mocostudy``, e.g. ``/tmp/ray/mocostudy``, holding its
``session_*`` logs), so ``ray start`` writes its address there and never into ``<Ray's temp dir>/ray_current_cluster``,
the file an address-less ``ray.init()`` or ``ray status`` reads. So a study neither overwrites the address of a
cluster the user started with ``ray start`` nor leaves behind the address of a head that is gone, whichever way it
ends (even SIGKILL of every process). That file, when it names a Ray that no longer answers (left by a crashed Ray, or
by this project's studies before they ran in their own temp dir), is removed when a study starts and when it stops.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moco.ray_address import (PREEMPTION_WATCHER_ENV, address_file, free_ports, ray_temp_dir, read_address_file,
                               remove_stale_address_file)

TEMP_SUBDIR = "mocostudy"  # the head's --temp-dir, under Ray's temp dir
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--metrics-export-port", "--ray-client-server-port", "--runtime-env-agent-port",
              "--node-manager-port", "--object-manager-port")


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local Ray head node exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the local Ray head node did not open port {port} within {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the head node's process: get SIGTERM when the study's driver dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalCluster:
    """``with LocalCluster(num_cpus, resources) as address:`` a head node on 127.0.0.1, stopped on exit."""

    def __init__(self, num_cpus: int | None = None, num_gpus: int | None = None,
                 resources: dict[str, float] | None = None, start_timeout: float = 120.0):
        self.num_cpus, self.num_gpus, self.resources = num_cpus, num_gpus, resources or {}
        self.start_timeout = start_timeout
        self.address: str | None = None
        self._proc: subprocess.Popen | None = None
        self._previous: dict[str, str | None] = {}
        self._token_dir = ""
        self._log = None
        self.temp_dir = str(ray_temp_dir() / TEMP_SUBDIR)

    def __enter__(self) -> str:
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.address = f"127.0.0.1:{ports['--port']}"
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--disable-usage-stats",
               "--temp-dir", self.temp_dir]  # its address file goes there, not into Ray's shared one
        cmd += [f"{flag}={port}" for flag, port in ports.items()]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        if self.resources:
            cmd += ["--resources", json.dumps(self.resources)]
        # Token authentication (Ray's default) with a token of this cluster's own, so concurrent clusters on
        # one machine never overwrite each other's ~/.ray/auth_token.
        self._token_dir = tempfile.mkdtemp(prefix="mocostudy-ray-")
        token_path = Path(self._token_dir) / "auth_token"
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
        self._env = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        env.update(self._env)
        # One machine, nothing to be preempted: skip Ray Train's per-run PreemptionWatcher actor (~200 MB per trial).
        env[PREEMPTION_WATCHER_ENV] = "0"
        self._log = tempfile.NamedTemporaryFile("w+", prefix="mocostudy-ray-head-", suffix=".log", delete=False)
        remove_stale_address_file()
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        try:
            _wait_for_port(ports["--port"], self._proc, self.start_timeout)
            _wait_for_port(ports["--dashboard-port"], self._proc, self.start_timeout)
        except RuntimeError as err:
            self.__exit__(None, None, None)
            raise RuntimeError(f"{err}; see {self._log.name}") from None
        self._previous = {key: os.environ.get(key) for key in (*self._env, "RAY_AUTH_TOKEN")}
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(self._env)
        return self.address

    def __exit__(self, *exc) -> None:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            if self._proc is not None:
                for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(self._proc.pid, sig)
                        self._proc.wait(timeout=wait)
                        break
                    except ProcessLookupError:
                        break
                    except subprocess.TimeoutExpired:
                        continue
            for key, value in self._previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(self._token_dir, ignore_errors=True)
            self._forget_address()

    def _forget_address(self) -> None:
        """Leave no address of this head behind: not in its own temp dir (where ``ray start`` wrote it, as
        ``<node IP>:<port>``), and none that has stopped answering in Ray's shared file."""
        recorded = read_address_file(self.temp_dir)
        if self.address and recorded and recorded.rsplit(":", 1)[-1] == self.address.rsplit(":", 1)[-1]:
            try:
                address_file(self.temp_dir).unlink()
            except OSError:
                pass
        remove_stale_address_file()
