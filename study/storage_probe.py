"""Is the study's storage shared by every node? Checked before any trial starts.

Each trial's Train workers write their checkpoints to the storage, on whatever node they run; on storage that a node
cannot see, Train fails at the first checkpoint, after epochs of work. So the driver writes a marker file into the
storage and a task pinned to each alive node reads it back (``NodeAffinitySchedulingStrategy``, no CPU asked, so it
runs on a CPU-less head and on busy nodes alike). Nodes that cannot read it are named in :class:`StorageNotShared`.
Paths and ``file://``/``s3://``/``gs://`` URIs alike go through pyarrow's file systems, as Ray's own storage does.
"""

from __future__ import annotations

import uuid

TIMEOUT_S = 120.0


class StorageNotShared(Exception):
    """Some nodes cannot see the storage; exit status 2."""


def _fs(storage: str):
    import pyarrow.fs

    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage.rstrip("/"))
    return pyarrow.fs.LocalFileSystem(), storage.rstrip("/")


def _sees(storage: str, name: str, token: str) -> str:
    """On a node: what the marker holds there ('' when it cannot be read)."""
    try:
        fs, root = _fs(storage)
        with fs.open_input_stream(f"{root}/{name}") as f:
            return f.read().decode()
    except Exception as err:  # noqa: BLE001 - any failure to read means: not shared with this node
        return f"! {type(err).__name__}: {err}"


def probe(storage: str, timeout: float = TIMEOUT_S) -> None:
    """Write a marker into ``storage`` and read it from every alive node; :class:`StorageNotShared` naming the
    nodes that cannot. A cluster of one node passes without a task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    fs, root = _fs(storage)
    fs.create_dir(root, recursive=True)
    name, token = f".mocostudy-probe-{uuid.uuid4().hex}", uuid.uuid4().hex
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(token.encode())
    try:
        remote = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {n["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(storage, name, token) for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        blind = []
        for node in nodes:
            ref = refs[node["NodeID"]]
            seen = ray.get(ref) if ref in ready else f"! no answer within {timeout:g} s"
            if seen != token:
                reason = seen[2:] if seen.startswith("! ") else "another file at that path"
                blind.append(f"{node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')}: {reason})")
    finally:
        try:
            fs.delete_file(f"{root}/{name}")
        except OSError:
            pass
    if blind:
        raise StorageNotShared(
            f"--storage {storage} is not shared by every node: {len(blind)} of {len(nodes)} cannot read a file the "
            f"driver wrote there: {'; '.join(blind)}. Trials' checkpoints would fail there: use a file system "
            "mounted at the same path on every node, or s3:// / gs:// storage")
