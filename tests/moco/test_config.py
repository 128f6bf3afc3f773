"""TrainConfig: compute budgets (epochs follow from compute and views), views, and refusals that name the key."""

from __future__ import annotations

import pytest

from moco.config import ConfigError, TrainConfig


@pytest.mark.parametrize("weight, views", [(1.0, 1), (0.0, 1), (0.5, 2), (0.84, 2)])
def test_views_count_the_query_passes_per_image(weight, views):
    cfg = TrainConfig(dual_view_weight=weight, queue_size=8192).validate()
    assert cfg.views == views and cfg.compute == cfg.epochs * views


def test_a_dual_view_run_trains_half_the_epochs_of_a_one_way_run_at_equal_compute():
    one_way = TrainConfig.from_dict({"compute_budget": 8})
    dual = TrainConfig.from_dict({"compute_budget": 8, "dual_view_weight": 0.5, "queue_size": 8192})
    assert (one_way.epochs, dual.epochs) == (8, 4)
    assert one_way.compute == dual.compute == 8
    # The budget is kept through replace(): changing lambda re-derives the epochs.
    assert dual.replace(dual_view_weight=1.0).epochs == 8


def test_without_a_budget_epochs_are_taken_as_given():
    cfg = TrainConfig.from_dict({"epochs": 3, "dual_view_weight": 0.5, "queue_size": 8192})
    assert cfg.epochs == 3 and cfg.compute == 6


@pytest.mark.parametrize("values, key", [
    ({"compute_budget": 7, "dual_view_weight": 0.5, "queue_size": 8192}, "compute_budget"),  # half an epoch
    ({"compute_budget": 0}, "compute_budget"),
    ({"compute_budget": 2.5}, "compute_budget"),
    ({"compute_budget": 4, "warmup_epochs": 5}, "warmup_epochs"),  # warm-up longer than the derived epochs
])
def test_budgets_that_do_not_hold_whole_epochs_are_refused(values, key):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values, source="space.yaml")
    assert err.value.key == key and "space.yaml" in str(err.value)


def test_the_defaults_are_fashion_mnist_yaml_but_for_the_two_keys_the_docstring_names():
    import dataclasses
    from pathlib import Path

    default = TrainConfig()
    shipped = TrainConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "fashion_mnist.yaml")
    differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(default, f.name) != getattr(shipped, f.name)}
    assert differ == {"mlp_hidden", "knn_val_size"}
    assert all(f"``{key}`` ({getattr(shipped, key)} in the file)" in TrainConfig.__doc__ for key in differ)


@pytest.mark.parametrize("values, allowed", [
    ({"pool_grid": 0}, "an integer >= 1"),
    ({"pool_grid": 2, "backbone": "resnet18"}, "ResNets pool globally"),
])
def test_a_pooling_grid_is_a_positive_convnet_option(values, allowed):
    with pytest.raises(ConfigError, match=allowed) as err:
        TrainConfig.from_dict(values, source="space.yaml")
    assert err.value.key == "pool_grid"
    assert TrainConfig.from_dict({"pool_grid": 2}).pool_grid == 2
