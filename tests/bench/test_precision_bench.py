"""bench/precision.py's verdict and page lines, on made-up paired runs (no training)."""

from __future__ import annotations

import pytest

from bench.precision import paired_summary, parity_goal, render_parity, step_goal


def _runs(fp32: list[float], bf16: list[float]) -> dict:
    return {str(seed): {"fp32": {"test_knn": f, "linear_probe": f, "val_knn": f, "train_s": 200.0},
                        "bf16": {"test_knn": b, "linear_probe": b, "val_knn": b, "train_s": 100.0}}
            for seed, (f, b) in enumerate(zip(fp32, bf16), start=1)}


def test_a_consistent_loss_larger_than_the_seeds_spread_costs_accuracy():
    s = paired_summary(_runs([80.0, 81.0, 82.0], [77.0, 78.1, 78.9]))
    m = s["test_knn"]
    assert m["diffs"] == pytest.approx([-3.0, -2.9, -3.1])
    assert m["ci95"][1] < 0 and m["fp32_sd"] == pytest.approx(1.0)
    assert m["costs_accuracy"] is True


def test_differences_within_the_seeds_spread_do_not():
    s = paired_summary(_runs([80.0, 81.0, 82.0], [80.2, 80.7, 82.1]))
    assert s["test_knn"]["costs_accuracy"] is False
    # a small but consistent difference is still within the seeds' spread
    s = paired_summary(_runs([80.0, 81.0, 82.0], [79.8, 80.7, 81.8]))
    assert s["test_knn"]["ci95"][1] < 0 and s["test_knn"]["costs_accuracy"] is False


def test_an_unfinished_pair_is_left_out_and_a_partial_run_is_not_judged():
    runs = _runs([80.0, 81.0], [80.1, 80.9])
    runs["3"] = {"fp32": {"test_knn": 50.0, "linear_probe": 50.0, "val_knn": 50.0, "train_s": 1.0}}
    s = paired_summary(runs)
    assert s["seeds_paired"] == ["1", "2"] and len(s["test_knn"]["diffs"]) == 2
    result = {"config": "configs/fashion_mnist.yaml", "overrides": {"epochs": 3}, "seeds": [1, 2, 3], "runs": runs,
              "summary": s, "partial": True}
    text = "\n".join(render_parity(result))
    assert "2 of 3" in text and "partial run" in text and "2.00x" in text
    (goal, measured, met), = parity_goal(result)
    assert met.startswith("partial run: within")
    one = paired_summary(_runs([80.0], [79.0]))
    assert one["test_knn"]["costs_accuracy"] is None


def _step(fp32: list[float], auto: list[float], flags=("avx512_bf16",)) -> dict:
    med = sorted(auto)[len(auto) // 2] / sorted(fp32)[len(fp32) // 2]
    return {"machine": {"cpu_bf16_flags": list(flags)},
            "epoch": {"fp32": {"all": fp32}, "auto": {"all": auto}, "speedup_auto_over_fp32": med,
                      "auto_resolved": {"precision": "bf16" if flags else "fp32"}}}


def test_the_2x_goal_needs_the_pairs_interval_above_2_to_be_met_outright():
    assert step_goal(_step([100, 101, 99], [230, 232, 229]))[2] is True
    noisy = step_goal(_step([100, 80, 120, 100], [204, 190, 230, 205]))
    assert noisy[2] == "on medians only" and "pairs' 95 % CI from" in noisy[1]
    assert step_goal(_step([100, 100, 100], [180, 181, 179]))[2] is False
    assert step_goal(_step([100, 100], [100, 100], flags=()))[2] is True  # no bf16: auto stays fp32


def test_both_runs_of_a_pair_train_in_the_memory_format_asked_for_and_the_page_says_which(monkeypatch):
    import bench.longrun
    from bench.precision import train_pairs

    trained = []

    def fake_run(cfg, log=print):
        trained.append((cfg.seed, cfg.precision, cfg.memory_format))
        return {"test_knn": 80.0, "linear_probe": 85.0, "val_knn": 80.0, "train_s": 1.0}

    monkeypatch.setattr(bench.longrun, "train_run", fake_run)
    result = train_pairs([1, 2], {"epochs": 1}, log=lambda _: None, memory_format="channels_last")
    assert trained == [(1, "fp32", "channels_last"), (1, "bf16", "channels_last"),
                       (2, "fp32", "channels_last"), (2, "bf16", "channels_last")]
    assert "memory format channels_last in both" in "\n".join(render_parity(result))
    older = {k: v for k, v in result.items() if k != "memory_format"}  # results before the option: contiguous
    assert "memory format contiguous in both" in "\n".join(render_parity(older))
