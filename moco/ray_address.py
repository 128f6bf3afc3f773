"""Which Ray a command uses: the address it was given, or a new instance of its own; never one Ray guesses.

Left to itself, ``ray.init()`` (with no address, or ``"auto"``) joins the cluster whose address the last ``ray start``
wrote to ``<Ray's temp dir>/ray_current_cluster``, and when that head is gone it retries the dead address for ever.
So every entry point of this project (``python -m moco.train``, ``study/run.py``, the benchmarks) goes through here:

- an address that was given is checked to answer within seconds (:func:`check_address`; ``auto`` is resolved the way
  Ray resolves it, then checked), else the command stops with exit status 2 and one message;
- no address: :func:`start_local_ray` starts a new instance (``address="local"``) whose own processes know its
  address, so Ray's helpers inside it (Ray Train's placement-group cleaner) do not go looking either.

It also knows where that file is (:func:`address_file`) and removes it when it names a Ray that no longer answers
(:func:`remove_stale_address_file`). Torch-free, and Ray is imported only where it is used.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

ADDRESS_FILE = "ray_current_cluster"


class AddressError(Exception):
    """A Ray address that does not answer, or ``auto`` with no cluster to find; reported with exit status 2."""


# --- the address file ---------------------------------------------------------------------------------------------
#: Set to 0 where Ray runs on this one machine (a study's own head, ``moco-train`` without ``--address``): nothing
#: there is preempted, and Ray Train's per-run ``PreemptionWatcher`` actor would be one more process per run. (Here,
#: not beside the trainer: this module imports no Ray at its top, and Ray reads its auth-token settings on import.)
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"

def ray_temp_dir() -> Path:
    """Ray's default temp dir, as Ray 2.60 computes it (``ray._common.utils.get_default_ray_temp_dir``):
    ``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray`` on Linux, else ``/tmp/ray``. Computed here without importing Ray, which
    must not be loaded before a private cluster's address and token are in the environment (study/local_cluster.py)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"
    else:
        import tempfile

        base = tempfile.gettempdir()
    return Path(os.path.abspath(os.path.join(base, "ray")))


def address_file(temp_dir: str | Path | None = None) -> Path:
    """Where ``ray start`` records its cluster's address for a later address-less ``ray.init()``."""
    return Path(temp_dir or ray_temp_dir()) / ADDRESS_FILE


def read_address_file(temp_dir: str | Path | None = None) -> str | None:
    try:
        return address_file(temp_dir).read_text().strip() or None
    except OSError:
        return None


def remove_stale_address_file(temp_dir: str | Path | None = None, timeout: float = 2.0) -> str | None:
    """Remove the address file when the address in it does not answer (a head that is gone); return that address.

    A file naming a cluster that answers (someone's ``ray start``) is left as it is."""
    path = address_file(temp_dir)
    address = read_address_file(temp_dir)
    if address is None and not path.is_file():
        return None
    if address is not None and answers(address, timeout):
        return None
    try:
        if read_address_file(temp_dir) != address:  # a `ray start` has written a live address meanwhile
            return None
        path.unlink()
    except OSError:
        return None
    return address or ""


# --- given addresses ----------------------------------------------------------------------------------------------
def host_port(address: str) -> tuple[str, int]:
    """Host and port of a Ray address: ``HOST:PORT`` (a GCS, default port 6379) or ``ray://HOST[:PORT]`` (Ray
    Client, default 10001) or another URL."""
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    default = 10001 if parsed.scheme == "ray" and "://" in address else 6379
    try:
        port = parsed.port or default
    except ValueError:
        raise AddressError(f"--address {address}: not a Ray address (HOST:PORT or auto)") from None
    if not parsed.hostname:
        raise AddressError(f"--address {address}: not a Ray address (HOST:PORT or auto)")
    return parsed.hostname, port


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts a TCP connection at ``address`` within ``timeout`` seconds."""
    try:
        host, port = host_port(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, AddressError):
        return False


def resolve_auto() -> tuple[str, str]:
    """The cluster ``ray.init(address="auto")`` would join, and where it was found, by Ray's own rules:
    ``$RAY_ADDRESS``; else the address file, unless exactly one Ray runs on this machine (Ray then prefers that one);
    else any Ray running here. :class:`AddressError` when there is none."""
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env, "in $RAY_ADDRESS"
    recorded = read_address_file()
    in_file = f"in {address_file()} (written by the last ray start here; a head that is gone leaves it behind)"
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: the file alone
        found, canonical = recorded, recorded
    else:
        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as err:
            raise AddressError(f"--address auto: no running Ray cluster found on this machine ({err}); start one "
                               "with `ray start --head`, or give its address as --address HOST:PORT") from None
        try:
            canonical = canonicalize_bootstrap_address(recorded) if recorded else None
        except Exception:  # noqa: BLE001 - only for naming where the address came from
            canonical = recorded
    if not found:
        raise AddressError("--address auto: no running Ray cluster found on this machine; start one with "
                           "`ray start --head`, or give its address as --address HOST:PORT")
    return found, in_file if found == canonical else "running on this machine"


def check_address(address: str | None, timeout: float = 5.0) -> str | None:
    """Fail fast when a given cluster address does not answer (Ray itself would retry it for ever).

    Returns the address to pass to ``ray.init``: ``None`` when none was given (start a new instance with
    :func:`start_local_ray`), the address itself otherwise. ``auto`` is resolved first (:func:`resolve_auto`), and
    what it finds is checked: a head that is gone but left its address behind fails here too."""
    if not address or address == "local":
        return None
    target, source = resolve_auto() if address == "auto" else (address, "")
    refuse_ray_client(address, target, source)
    host, port = host_port(target)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        found = f", the cluster found {source}" if source else ""
        raise AddressError(f"--address {address}: cannot reach {host}:{port} ({err.strerror or err}){found}; "
                           "check that the Ray head node is running and the address and port are right") from None
    return address


RAY_JOBS_POINTER = ("run the command on the cluster instead, as a Ray Job: `python study/submit.py --address "
                    "http://HEAD:8265 --space ...` for a study, `ray job submit --address http://HEAD:8265 "
                    "--working-dir . -- python -m moco.train ...` for one training run (cluster/README.md)")


def refuse_ray_client(address: str, target: str, source: str = "") -> None:
    """Ray Client addresses (``ray://``) cannot work here: Tune and Train would run on the cluster while this process
    writes the study's files and checkpoints' index locally, and the study would end as "0/N trials, interrupted"."""
    if target.strip().lower().startswith("ray://"):
        found = f" (found {source}: {target})" if source else ""
        raise AddressError(f"--address {address}{found}: a Ray Client address (ray://) is not supported; "
                           + RAY_JOBS_POINTER)


# --- a new instance -----------------------------------------------------------------------------------------------
def free_ports(count: int, low: int = 20000, high: int = 30000) -> list[int]:
    """``count`` distinct ports free now, below Linux's ephemeral range (32768-60999), so that other processes'
    outgoing connections do not take one before Ray binds it (Ray would then silently pick another)."""
    ports: list[int] = []
    for _ in range(200 * count):
        port = random.randint(low, high)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free ports in [{low}, {high}]")


def free_port(low: int = 20000, high: int = 30000) -> int:
    """One port free now (see :func:`free_ports`)."""
    return free_ports(1, low, high)[0]


def start_local_ray(**init_kwargs) -> str:
    """``ray.init(address="local", **init_kwargs)``: a new Ray instance, never an existing one; return its address.

    Its GCS port is chosen beforehand and ``RAY_ADDRESS`` names it in the environment its processes inherit (the same
    as study/local_cluster.py does for a study's head), because some of Ray's own code inside the cluster looks for
    "its" cluster without an address (Ray Train's placement-group cleaner, through the State API): it would otherwise
    read the address file, which may name a dead or someone else's cluster, or fail with "Found multiple active Ray
    instances" when other Ray instances run on this machine. This process's own environment is restored afterwards.
    """
    import ray
    from ray.util import get_node_ip_address

    port = free_port()
    address = f"{get_node_ip_address()}:{port}"
    saved = {key: os.environ.get(key) for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=address, RAY_GCS_SERVER_PORT=str(port))
    try:
        ray.init(address="local", **init_kwargs)  # "local": RAY_ADDRESS is not read, nothing is auto-detected
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    actual = ray.get_runtime_context().gcs_address
    if actual != address:  # the port was taken between the choice and the bind; Ray picked another one
        warnings.warn(f"the new Ray instance is at {actual}, not {address}: Ray's own helpers inside it may not find "
                      "it", stacklevel=2)
    return actual
