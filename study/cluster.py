"""The study and the Ray cluster it is connected to: the plan on the nodes up now (study/plan.py), waiting for nodes
that are still to come, the trial drivers' resources, and a concurrency limit that follows the cluster.

Trials queue on resources instead of a concurrency fixed at start: :class:`ClusterLimiter` re-plans on the nodes
alive whenever the searcher is asked for a trial (at most every few seconds), so trials start as nodes join (SLURM
workers that come up late, an autoscaler's new nodes) and a resume on another cluster uses that cluster. While the
nodes up cannot hold one trial, :func:`plan_on_cluster` asks the autoscaler for one trial's workers
(``ray.autoscaler.sdk.request_resources``) and waits up to ``--wait-for-nodes`` seconds, saying so.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from ray.tune.search import ConcurrencyLimiter

from study.plan import DRIVER_RESOURCE, Node, Plan, PlanError, make_plan, nodes_from_ray

POLL_S = 5.0


def current_nodes() -> list[Node]:
    import ray

    return nodes_from_ray(ray.nodes())


def plan_for(settings, nodes: list[Node]) -> Plan:
    return make_plan(nodes, workers_per_trial=settings.workers_per_trial, cpus_per_worker=settings.cpus_per_worker,
                     gpus_per_worker=settings.gpus_per_worker, max_concurrent=settings.max_concurrent)


def plan_on_cluster(settings, wait_s: float = 0.0, say: Callable[[str], None] = print) -> Plan:
    """The plan on the nodes alive; while they cannot hold one trial, wait up to ``wait_s`` seconds for nodes
    (asking an autoscaler for them). :class:`PlanError` when none came."""
    deadline, asked = time.time() + wait_s, False
    while True:
        try:
            return plan_for(settings, current_nodes())
        except PlanError as err:
            if time.time() >= deadline:
                hint = (f" (after waiting {wait_s:g} s for nodes)" if wait_s else
                        "; lower --workers-per-trial, --cpus-per-worker or --gpus-per-worker, or, on a cluster that "
                        "autoscales or whose nodes are still joining, wait for them with --wait-for-nodes SECONDS")
                raise PlanError(f"{err}{hint}", err.never) from None
            if not asked:
                asked = True
                _ask_for_one_trial(settings)
                say(f"[study] waiting up to {wait_s:g} s for nodes that can hold a trial: {err}")
        time.sleep(POLL_S)


def prepare(settings, storage: str, external: bool, wait_s: float = 0.0) -> Plan:
    """Before any trial: the plan on the nodes (waiting for them up to ``wait_s`` on an ``external`` cluster), then
    the storage probe (study/storage_probe.py) on an external cluster of several nodes. :class:`PlanError` or
    :class:`study.storage_probe.StorageNotShared` when the study cannot run there."""
    from study.storage_probe import probe

    plan = plan_on_cluster(settings, wait_s if external else 0.0)
    if external:
        probe(storage)
    return plan


def _ask_for_one_trial(settings) -> None:
    bundle = {"CPU": float(settings.cpus_per_worker or 1)}
    if settings.gpus_per_worker:
        bundle["GPU"] = float(settings.gpus_per_worker)
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[bundle] * max(settings.workers_per_trial, 1))
    except Exception:  # noqa: BLE001 - no autoscaler here: nodes may still join by themselves (SLURM, ray start)
        pass


def driver_resources(nodes: list[Node] | None = None) -> dict[str, float]:
    """Trial drivers go to the node with ``mocostudy_driver`` (no CPU taken); elsewhere 0.01 CPU (the plan keeps a
    CPU of every node for them)."""
    nodes = current_nodes() if nodes is None else nodes
    return {DRIVER_RESOURCE: 1} if any(n.driver for n in nodes) else {"CPU": 0.01}


def trials_that_fit(settings, num_trials: int) -> int:
    """Trials at once on the nodes alive now (at least 1, so the study keeps its place in the queue)."""
    try:
        return plan_for(settings, current_nodes()).concurrent(num_trials)
    except PlanError:
        return 1


class ClusterLimiter(ConcurrencyLimiter):
    """A ``ConcurrencyLimiter`` whose limit is re-planned on the nodes alive (every :data:`POLL_S` s at most)."""

    def __init__(self, searcher, replan: Callable[[], int]):
        super().__init__(searcher, max_concurrent=max(1, replan()))
        self._replan, self._checked = replan, time.time()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if time.time() - self._checked >= POLL_S:
            self._checked = time.time()
            self.max_concurrent = max(1, self._replan())
        return super().suggest(trial_id)


def follow_cluster(searcher, settings, num_trials: int) -> ClusterLimiter:
    return ClusterLimiter(searcher, functools.partial(trials_that_fit, settings, num_trials))
