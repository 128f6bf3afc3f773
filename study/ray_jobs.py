"""The Ray Jobs side of ``study/submit.py``: the dashboard address, the cluster's token (found as Ray finds it), the
connection to the cluster and the check that a study's storage is shared by its nodes.

Authentication: Ray 2.60 enables token auth on a cluster whose nodes have a token. The token is read like Ray reads
it: ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"


class SubmitError(Exception):
    """A refusal before anything is submitted (or a job that cannot be found); exit status 2."""


# --- the cluster ---------------------------------------------------------------------------------------------------
def normalise_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("--address is required: the Ray dashboard of the cluster, e.g. http://HEAD:8265 "
                          "(or set RAY_API_SERVER_ADDRESS)")
    if address.startswith(("ray://", "auto")) or "://" not in address and address.rsplit(":", 1)[-1] == "6379":
        raise SubmitError(f"--address {address}: give the dashboard's HTTP address (http://HEAD:8265), "
                          "not the Ray Client or GCS address")
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def find_token() -> tuple[str | None, str]:
    """(token or None, where it came from / where we looked), in Ray 2.60's order."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, f"${TOKEN_ENV}"
    path_env = os.environ.get(TOKEN_PATH_ENV)
    if path_env:
        try:
            token = Path(path_env).expanduser().read_text().strip()
        except OSError as err:
            raise SubmitError(f"{TOKEN_PATH_ENV}={path_env} cannot be read ({err.strerror or err}); point it at the "
                              f"cluster's token file, or unset it") from None
        if not token:
            raise SubmitError(f"{TOKEN_PATH_ENV}={path_env} is empty; point it at the cluster's token file")
        return token, f"{TOKEN_PATH_ENV}={path_env}"
    path = Path(DEFAULT_TOKEN_FILE).expanduser()
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, str(path)
    return None, f"${TOKEN_ENV}, ${TOKEN_PATH_ENV} or {path}"


HOW_TO_GET_TOKEN = (f"Get the cluster's token on its head node with `ray get-auth-token` (it prints the token of "
                    f"that node: $RAY_AUTH_TOKEN or {DEFAULT_TOKEN_FILE} there; on KubeRay the Secret named in "
                    f"the RayCluster's authOptions), then `export {TOKEN_ENV}=<token>` here or save it in "
                    f"{DEFAULT_TOKEN_FILE} (or a file named by ${TOKEN_PATH_ENV}).")


class Cluster:
    """The dashboard's HTTP API with a short timeout and the token, checked once before anything else."""

    def __init__(self, address: str, timeout: float):
        self.address, self.timeout = address, timeout
        self.token, self.token_source = find_token()
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str) -> Any:
        import requests

        try:
            r = requests.get(self.address + path, headers=self.headers, timeout=(self.timeout, 3 * self.timeout))
        except requests.exceptions.RequestException as err:
            raise SubmitError(f"cannot reach the Ray dashboard at {self.address} within {self.timeout:g} s "
                              f"({type(err).__name__}). Is the cluster up, and is the dashboard port (8265 by "
                              "default) reachable from here? For a remote cluster forward it: `ray dashboard "
                              "cluster/aws.yaml`, or `kubectl port-forward svc/<cluster>-head-svc 8265`.") from None
        if r.status_code == 401:
            raise SubmitError(f"the cluster at {self.address} requires a token (token authentication) and none was "
                              f"found in {self.token_source}. {HOW_TO_GET_TOKEN}")
        if r.status_code == 403:
            raise SubmitError(f"the cluster at {self.address} rejected the token from {self.token_source}: it is "
                              f"not this cluster's token. {HOW_TO_GET_TOKEN}")
        if r.status_code == 404 and path == "/api/version":
            raise SubmitError(f"{self.address} answered 404 for /api/version: it is not a Ray dashboard. Give the "
                              "dashboard's address and port (http://HEAD:8265 by default).")
        try:
            if r.status_code == 200:
                return r.json()
        except ValueError:
            pass
        raise SubmitError(f"{self.address}{path} answered {r.status_code}: {r.text[:300] or '(no body)'}")

    def check(self) -> str:
        """The cluster's Ray version; raises SubmitError when it cannot be used."""
        return self.get("/api/version").get("ray_version", "?")

    def nodes(self) -> tuple[int, int]:
        """(alive nodes, nodes the autoscaler is launching)."""
        data = self.get("/api/v0/nodes?limit=10000&detail=false")
        alive = sum(1 for n in data["data"]["result"]["result"] if n.get("state") == "ALIVE")
        pending = 0
        try:
            status = self.get("/api/cluster_status").get("data", {}).get("autoscalingStatus") or ""
            section = status.split("Pending:", 1)[1].split("Recent failures", 1)[0] if "Pending:" in status else ""
            pending = sum(1 for line in section.splitlines()
                          if line.strip() and "no pending" not in line and line.strip() != "Pending:")
        except SubmitError:
            pass
        return alive, pending

    def client(self):
        from ray.job_submission import JobSubmissionClient

        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):  # they would override the address given here
            os.environ.pop(var, None)
        return JobSubmissionClient(self.address, headers=dict(self.headers))


def check_storage(cluster: Cluster, storage: str) -> str:
    alive, pending = cluster.nodes()
    if alive + pending > 1:
        what = f"{alive} nodes" + (f" (+{pending} starting)" if pending else "")
        raise SubmitError(f"--storage {storage} is a path local to each node, but the cluster at {cluster.address} "
                          f"has {what}: trials on other nodes would write their results where the study cannot read "
                          "them. Use shared storage: s3://bucket/studies or gs://bucket/studies, or a shared "
                          f"filesystem mounted on every node (--storage file://{storage} or --shared-storage).")
    return (f"note: --storage {storage} is on the head node (the cluster has one node now); if it autoscales, "
            "use s3://, gs:// or a shared filesystem")
