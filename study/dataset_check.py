"""Is the base config's dataset where the Train workers will read it? Checked on the cluster before trials start.

With ``--address`` the driver's machine says nothing about the nodes': each node that can hold a Train worker runs
a task pinned to it (``NodeAffinitySchedulingStrategy``, no CPU asked, like study/storage_probe.py) that looks for
the dataset as a worker there would (:func:`moco.sources.locate`: ``data_root``, that node's ``$MOCO_DATA_DIR``,
Debian's copy, the download cache).

* Missing with ``download: false``: :class:`DatasetMissingOnCluster` (exit status 2) naming the nodes and the
  places searched on them.
* Missing with ``download: true``: staged before any trial. One task downloads it on one node that lacks it
  (:func:`moco.sources.obtain`, under the download root's file lock); the other nodes are looked at again (a shared
  data folder has it now), and only those still lacking it (a folder of their own) download theirs. So Train
  workers find the data and never download it concurrently; a node that joins later and lacks it downloads it
  in its workers, one at a time under the same lock.
"""

from __future__ import annotations

from typing import Callable, Iterable

TIMEOUT_S = 120.0
STAGE_TIMEOUT_S = 3600.0


class DatasetMissingOnCluster(Exception):
    """The dataset is missing on some nodes that will train (or could not be staged there); exit status 2."""


def _look(cfg) -> str:
    """On a node: the folder holding the dataset; ``? ROOT`` when it is missing and would be downloaded into ROOT;
    ``! reason`` when it is missing and will not be."""
    from moco.sources import download_root, locate

    try:
        place = locate(cfg)
    except Exception as err:  # noqa: BLE001 - DatasetNotFoundError (the places searched) or a bad data_root
        return f"! {err}"
    return str(place) if place is not None else f"? {download_root(cfg)}"


def _stage(cfg, fetch=None) -> str:
    """On a node: download the dataset under the download lock (a second stager waits, then finds it)."""
    from moco.sources import obtain

    if fetch is None:
        from moco.readers import download as fetch
    return str(obtain(cfg, fetch))


def _on_nodes(fn, node_ids: Iterable[str], timeout: float, *args) -> dict[str, str]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {nid: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(*args)
            for nid in node_ids}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    out = {}
    for nid, ref in refs.items():
        try:
            out[nid] = ray.get(ref) if ref in ready else f"! no answer within {timeout:g} s"
        except Exception as err:  # noqa: BLE001 - a failed task: report it for that node
            out[nid] = f"! {type(getattr(err, 'cause', None) or err).__name__}: {getattr(err, 'cause', None) or err}"
    return out


def _name(nid: str, addresses: dict[str, str]) -> str:
    return f"node {nid[:8]} ({addresses.get(nid, '?')})"


def check_on_cluster(cfg, node_ids: Iterable[str], fetch: Callable | None = None,
                     say: Callable[[str], None] = print, timeout: float = TIMEOUT_S) -> None:
    """Look for ``cfg``'s dataset on each node of ``node_ids`` (the nodes that can hold a Train worker) and stage it
    where it must be downloaded; :class:`DatasetMissingOnCluster` naming the nodes that lack it. ``fetch`` is the
    download (default :func:`moco.readers.download`, imported on the node)."""
    import ray

    node_ids = list(node_ids)
    if cfg.dataset == "digits" or not node_ids:  # digits is bundled with scikit-learn
        return
    addresses = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
    seen = _on_nodes(_look, node_ids, timeout, cfg)
    lacking = [nid for nid, s in seen.items() if s.startswith("! ")]
    if lacking:
        details = "\n".join(f"  {_name(nid, addresses)}: {seen[nid][2:]}" for nid in lacking)
        raise DatasetMissingOnCluster(
            f"dataset {cfg.dataset!r} is missing on {len(lacking)} of {len(node_ids)} nodes that will train:\n"
            f"{details}\nProvide it on every node at the same path (data_root or $MOCO_DATA_DIR on a shared file "
            "system, or Debian's package on each node), or set download: true to stage it before the trials")
    missing = [nid for nid, s in seen.items() if s.startswith("? ")]
    if not missing:
        return
    first = missing[0]
    say(f"[study] staging {cfg.dataset} into {seen[first][2:]} on {_name(first, addresses)} before the trials")
    staged = _on_nodes(_stage, [first], STAGE_TIMEOUT_S, cfg, fetch)
    rest = [nid for nid, s in _on_nodes(_look, missing[1:], timeout, cfg).items() if s[:2] in ("! ", "? ")]
    if rest:  # their download root is not the one staged into (not shared): each downloads its own, under its lock
        say(f"[study] staging {cfg.dataset} on {len(rest)} more node(s) whose data folder is their own")
        staged.update(_on_nodes(_stage, rest, STAGE_TIMEOUT_S, cfg, fetch))
    failed = {nid: s for nid, s in staged.items() if s.startswith("! ")}
    if failed:
        details = "\n".join(f"  {_name(nid, addresses)}: {s[2:]}" for nid, s in failed.items())
        raise DatasetMissingOnCluster(f"dataset {cfg.dataset!r} could not be staged (download: true) on "
                                      f"{len(failed)} node(s):\n{details}")


def check_for_plan(cfg, plan, **kw) -> None:
    """:func:`check_on_cluster` on the nodes of ``plan`` (study/plan.py) that can hold a Train worker."""
    check_on_cluster(cfg, [nid for nid, n in plan.slots.items() if n > 0], **kw)
