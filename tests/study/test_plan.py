"""study/plan.py: one trial's resources from the nodes' shapes, not the cluster's totals (no Ray)."""

from __future__ import annotations

import pytest

from study.plan import Node, PlanError, make_plan, nodes_from_ray


def plan(nodes, workers=1, cpw=None, gpw=0.0, cap=None):
    return make_plan(nodes, workers_per_trial=workers, cpus_per_worker=cpw, gpus_per_worker=gpw, max_concurrent=cap)


def test_cpus_per_worker_come_from_the_gpu_nodes_not_the_totals():
    """A 32-CPU head (drivers) with 8-CPU/1-GPU workers: 8 CPUs per GPU worker (the totals would say 24)."""
    nodes = [Node("head", 32, 0, driver=True), Node("g1", 8, 1), Node("g2", 8, 1)]
    p = plan(nodes, gpw=1)
    assert p.cpus_per_worker == 8 and p.slots == {"head": 0, "g1": 1, "g2": 1} and p.fit_now == 2
    assert p.as_dict(16)["nodes"]["g1"] == {"cpus": 8, "gpus": 1, "driver": False, "workers": 1}


def test_without_a_driver_node_every_node_keeps_a_cpu_for_the_drivers():
    """Drivers then take 0.01 CPU somewhere; a worker planned on all 8 CPUs of a node could never start there."""
    p = plan([Node("g1", 8, 1), Node("g2", 8, 1)], gpw=1)
    assert p.cpus_per_worker == 7 and p.fit_now == 2 and p.drivers_take_cpu


def test_fractional_gpus_put_two_workers_on_one_gpu():
    p = plan([Node("head", 1, 0, driver=True), Node("g", 2, 1)], gpw=0.5)
    assert p.cpus_per_worker == 1 and p.slots["g"] == 2 and p.fit_now == 2


def test_a_user_cap_bounds_what_fits():
    p = plan([Node("local", 8, 0, driver=True)], cap=3)
    assert p.fit_now == 8 and p.concurrent(16) == 3 and p.concurrent(2) == 2


def test_shapes_that_cannot_hold_a_worker_are_never_enough():
    with pytest.raises(PlanError, match=r"no node can hold one worker: node head \(32 CPU, drivers\); node g "
                                        r"\(2 CPU, 1 GPU\)") as err:
        plan([Node("head", 32, 0, driver=True), Node("g", 2, 1)], cpw=4, gpw=1)
    assert err.value.never
    with pytest.raises(PlanError, match="no node can hold one worker") as err:  # a CPU-only head, no GPU node yet
        plan([Node("head", 0, 0, driver=True)], gpw=1)
    assert err.value.never


def test_too_few_nodes_now_is_not_never():
    with pytest.raises(PlanError, match="the nodes up now hold 1 worker") as err:
        plan([Node("head", 0, 0, driver=True), Node("g", 8, 1)], workers=2, gpw=1)
    assert not err.value.never


def test_nodes_from_ray_reads_alive_nodes():
    nodes = nodes_from_ray([{"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "mocostudy_driver": 100}},
                            {"NodeID": "b", "Alive": False, "Resources": {"CPU": 4.0}},
                            {"NodeID": "c", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])
    assert nodes == [Node("a", 4, 0, True), Node("c", 8, 1, False)]
