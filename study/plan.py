"""What one trial needs and where it fits, from the shapes of the cluster's nodes (not its totals). Ray-free.

A trial is ``workers_per_trial`` Ray Train workers, each ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (a
fraction such as 0.5 puts several small trials on one GPU). A worker must fit on one node, so the plan counts, node by
node, how many workers each can hold (its *slots*), and a trial needs ``workers_per_trial`` slots anywhere.

- ``cpus_per_worker`` left unset is 1 on CPU studies; on GPU studies it is the CPUs each GPU worker can have on the
  smallest GPU node (its CPUs over the workers its GPUs hold), so every GPU node can be filled.
- Trial drivers run on the node with the ``mocostudy_driver`` resource and take no CPU. Where no node has it, each
  driver takes 0.01 CPU on some node, so one CPU of every node is kept out of the workers' share: otherwise a node
  whose CPUs the workers fill exactly could never start the worker that a driver's 0.01 CPU displaced.
- :func:`make_plan` raises :class:`PlanError` when no node of this shape can hold one worker (``never``), or when the
  nodes up now hold less than one trial (``not_yet``: a cluster that autoscales or where nodes are still joining may
  hold it later; study/run.py waits for that with ``--wait-for-nodes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

DRIVER_RESOURCE = "mocostudy_driver"  # a custom resource that keeps trial drivers off the workers' CPUs


class PlanError(Exception):
    """The cluster cannot hold one trial: ``never`` on nodes of these shapes, or ``not_yet`` with the nodes up now."""

    def __init__(self, message: str, never: bool):
        super().__init__(message)
        self.never = never


@dataclass(frozen=True)
class Node:
    node_id: str
    cpus: float
    gpus: float = 0.0
    driver: bool = False  #: has the ``mocostudy_driver`` resource

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"node {self.node_id[:8]} ({self.cpus:g} CPU{gpus}{', drivers' if self.driver else ''})"


def nodes_from_ray(ray_nodes: Iterable[dict[str, Any]]) -> list[Node]:
    """:class:`Node` s from ``ray.nodes()`` (alive nodes only)."""
    out = []
    for entry in ray_nodes:
        if not entry.get("Alive", entry.get("alive", False)):
            continue
        res = entry.get("Resources", {})
        out.append(Node(str(entry.get("NodeID", "?")), float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                        bool(res.get(DRIVER_RESOURCE))))
    return out


@dataclass
class Plan:
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    slots: dict[str, int] = field(default_factory=dict)  #: workers each node can hold, by node id
    nodes: list[Node] = field(default_factory=list)
    drivers_take_cpu: bool = False
    max_concurrent: int | None = None  #: the user's cap (``--max-concurrent``), else None: as many as fit

    @property
    def fit_now(self) -> int:
        """Trials that fit at once on these nodes (workers of one trial may sit on different nodes)."""
        return sum(self.slots.values()) // max(self.workers_per_trial, 1)

    def concurrent(self, num_trials: int) -> int:
        cap = self.fit_now if self.max_concurrent is None else min(self.max_concurrent, self.fit_now)
        return max(1, min(cap, num_trials))

    def as_dict(self, num_trials: int) -> dict[str, Any]:
        """The plan as study.json records it (and as study/confirm_run.py reads it)."""
        workers = self.workers_per_trial
        return {"workers_per_trial": workers, "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": self.gpus_per_worker, "cpus_per_trial": max(workers, 1) * self.cpus_per_worker,
                "gpus_per_trial": workers * self.gpus_per_worker,
                "max_concurrent": max(1, min(self.max_concurrent or self.fit_now, num_trials)),
                "fit_at_once": max(self.fit_now, 1),
                "cluster_cpus": sum(n.cpus for n in self.nodes), "cluster_gpus": sum(n.gpus for n in self.nodes),
                "nodes": {n.node_id: {"cpus": n.cpus, "gpus": n.gpus, "driver": n.driver,
                                      "workers": self.slots.get(n.node_id, 0)} for n in self.nodes}}

    def describe_nodes(self) -> list[str]:
        return [f"  {n.describe()}: {self.slots.get(n.node_id, 0)} worker(s)" for n in self.nodes]


def _usable_cpus(node: Node, drivers_take_cpu: bool) -> float:
    return max(node.cpus - 1, 0.0) if drivers_take_cpu and node.cpus > 1 else node.cpus


def make_plan(nodes: list[Node], *, workers_per_trial: int, cpus_per_worker: float | None, gpus_per_worker: float,
              max_concurrent: int | None = None) -> Plan:
    """Plan one trial's resources on ``nodes``; :class:`PlanError` when not one trial fits."""
    drivers_take_cpu = not any(n.driver for n in nodes)
    workers = max(workers_per_trial, 1)  # workers_per_trial 0 trains in the trial's driver: plan one worker's share
    gpu_nodes = [n for n in nodes if n.gpus >= gpus_per_worker > 0]
    if cpus_per_worker:
        cpw = float(cpus_per_worker)
    elif gpus_per_worker and gpu_nodes:
        cpw = max(1.0, min(math.floor(_usable_cpus(n, drivers_take_cpu) / math.floor(n.gpus / gpus_per_worker))
                           for n in gpu_nodes))
    else:
        cpw = 1.0
    slots = {}
    for n in nodes:
        count = math.floor(_usable_cpus(n, drivers_take_cpu) / cpw + 1e-9)
        if gpus_per_worker:
            count = min(count, math.floor(n.gpus / gpus_per_worker + 1e-9))
        slots[n.node_id] = count
    plan = Plan(workers_per_trial, cpw, gpus_per_worker, slots, list(nodes), drivers_take_cpu, max_concurrent)
    need = (f"one trial needs {workers * cpw:g} CPUs and {workers * gpus_per_worker:g} GPUs ({workers} worker(s) x "
            f"{cpw:g} CPU" + (f", {gpus_per_worker:g} GPU)" if gpus_per_worker else ")"))
    if drivers_take_cpu:
        need += ", and every node keeps 1 CPU for the trial drivers (no node has the mocostudy_driver resource)"
    shapes = "; ".join(n.describe() for n in nodes) or "no nodes"
    if not any(slots.values()):
        raise PlanError(f"{need}, but no node can hold one worker: {shapes}", never=True)
    if plan.fit_now < 1:
        raise PlanError(f"{need}, but the nodes up now hold {sum(slots.values())} worker(s): {shapes}",
                        never=False)
    return plan
