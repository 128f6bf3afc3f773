"""The training loop: the engine on its own, and through Ray Train's TorchTrainer with 1 and 2 workers."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from moco.config import TrainConfig
from moco.data import load_dataset
from moco.engine import DivergedError, Engine
from moco.checkpoint import engine_state, read_checkpoint_dir, restore, write_checkpoint_dir
from moco.ray_address import PREEMPTION_WATCHER_ENV
from moco.trainer import PRINT_PATCH_ENV, make_trainer
from tests.conftest import CONFIGS, ROOT

DIGITS = CONFIGS / "digits.yaml"


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig.from_yaml(DIGITS, {"epochs": 3, "final_eval": False, **overrides})


def _run(engine: Engine, epochs: int) -> list[dict]:
    out = []
    for _ in range(epochs):
        metrics = engine.train_epoch()
        metrics.update(engine.monitor())
        out.append(metrics)
    return out


def _same(a: dict, b: dict, keys=("loss", "pos_sim", "val_knn_top1", "neg_sim_q50", "alignment")) -> None:
    for key in keys:
        assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-6), (key, a[key], b[key])


def test_engine_resume_repeats_epoch_3_exactly(tmp_path):
    cfg = _cfg()
    data = load_dataset(cfg)
    straight = _run(Engine(cfg, data, torch.device("cpu")), 3)

    first = Engine(cfg, data, torch.device("cpu"))
    _run(first, 2)
    write_checkpoint_dir(engine_state(first), tmp_path)
    state = read_checkpoint_dir(tmp_path)
    resumed = Engine(cfg, data, torch.device("cpu"))
    assert int(resumed.model.queue.filled) == 0
    restore(resumed, state)
    assert resumed.epoch == 2
    # The queue travels in the checkpoint: restored, not re-initialised.
    assert int(resumed.model.queue.filled) == int(first.model.queue.filled) > 0
    assert torch.equal(resumed.model.queue.keys, first.model.queue.keys)
    _same(_run(resumed, 1)[0], straight[2])


def test_same_seed_same_metrics_and_other_seed_differs():
    data = load_dataset(_cfg())
    a = _run(Engine(_cfg(), data, torch.device("cpu")), 1)[0]
    b = _run(Engine(_cfg(), data, torch.device("cpu")), 1)[0]
    assert a["loss"] == b["loss"] and a["val_knn_top1"] == b["val_knn_top1"]
    c = _run(Engine(_cfg(seed=1), data, torch.device("cpu")), 1)[0]
    assert c["loss"] != a["loss"]


def test_corrupt_checkpoint_is_refused(tmp_path):
    write_checkpoint_dir({"epoch": 1}, tmp_path)
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        read_checkpoint_dir(tmp_path)
    (tmp_path / "state.sha256").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        read_checkpoint_dir(tmp_path)


def test_non_finite_loss_stops_the_run():
    cfg = _cfg(lr=1e30, warmup_epochs=0)
    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    with pytest.raises(DivergedError, match="non-finite"):
        _run(engine, 3)


def test_engine_reports_compute_probe_and_raw_pixels_once():
    data = load_dataset(_cfg())
    one_way = Engine(_cfg(epochs=2, linear_probe=True, probe_epochs=1), data, torch.device("cpu"))
    first, second = _run(one_way, 2)
    assert (first["compute"], second["compute"]) == (1, 2)
    assert 0 <= first["val_probe_top1"] <= 100 and 0 <= second["val_probe_top1"] <= 100
    # The raw-pixel reference is scored once, on the same bank and queries as the monitor: far above chance.
    assert first["raw_val_knn_top1"] > 50 and first["raw_val_probe_top1"] > 50
    assert "raw_val_knn_top1" not in second
    final = one_way.final_evaluation()
    assert set(final) == {"final_val_knn_top1", "final_val_probe_top1", "test_knn_top1", "linear_top1",
                          "raw_final_val_knn_top1", "raw_final_val_probe_top1", "raw_test_knn_top1", "raw_linear_top1",
                          "final_eval_s"}
    # Each evaluation reports its own wall time (bench/overhead.py accounts the study's time with them).
    assert final["final_eval_s"] > 0 and first["monitor_s"] > 0 and second["monitor_s"] > 0
    dual = Engine(_cfg(epochs=1, dual_view_weight=0.5, queue_size=1024, raw_reference=False), data,
                  torch.device("cpu"))
    only = _run(dual, 1)[0]
    assert only["compute"] == 2 and not any(key.startswith("raw_") for key in only)


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_torch_trainer_learns_digits(ray_session, tmp_path, workers):
    cfg = _cfg(epochs=2, final_eval=True)
    result = make_trainer(cfg, workers=workers, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path),
                          name=f"digits-{workers}").fit()
    metrics = result.metrics
    assert metrics["epoch"] == 2 and metrics["world_size"] == workers
    # Chance is 10% on ten classes; a working pipeline is far above it after two epochs.
    assert metrics["val_knn_top1"] > 50.0 and metrics["test_knn_top1"] > 50.0
    assert result.checkpoint is not None and "epoch-0002" in result.checkpoint.path


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_worker_failure_resumes_from_checkpoint_with_same_metrics(ray_session, tmp_path):
    cfg = _cfg(epochs=3)
    straight = make_trainer(cfg, workers=1, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path),
                            name="straight").fit().metrics
    # The worker process exits at the start of epoch 3; Ray Train restarts it from the epoch-2 checkpoint.
    faulty = make_trainer(cfg, workers=1, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path), name="faulty",
                          max_failures=1, fault={"epoch": 3, "kind": "exit", "rank": 0}).fit().metrics
    assert (tmp_path / "faulty" / ".fault-injected-epoch3").exists()
    assert faulty["epoch"] == 3
    _same(faulty, straight)


def test_a_resumed_worker_reports_its_checkpoint_epoch_again_then_trains_on(tmp_path, monkeypatch):
    """The lost-report case: epoch 1's checkpoint was stored but its report never reached the study; the resumed
    worker reports epoch 1 again (from the checkpoint) before epoch 2."""
    import ray.train

    from moco.train import train_loop_per_worker

    cfg = _cfg(epochs=2)
    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    engine.last_metrics = {**_run(engine, 1)[0], "epoch": 1}
    (tmp_path / "epoch-0001").mkdir()
    write_checkpoint_dir(engine_state(engine), tmp_path / "epoch-0001")
    reports = []
    monkeypatch.setattr(ray.train, "get_checkpoint",
                        lambda: ray.train.Checkpoint.from_directory(str(tmp_path / "epoch-0001")))
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: reports.append((dict(metrics), kw)))
    train_loop_per_worker({"train": cfg.to_dict()})
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert reports[0] == ({**engine.last_metrics, "repeated": 1}, {})  # as stored, marked, no checkpoint
    assert reports[1][1]["checkpoint_dir_name"] == "epoch-0002"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_moco_train_prints_each_epoch_once_and_no_ray_report_dumps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (PRINT_PATCH_ENV, PREEMPTION_WATCHER_ENV)}
    proc = subprocess.run([sys.executable, "-m", "moco.train", "--config", str(DIGITS), "--epochs", "2",
                           "--set", "final_eval=false", "--storage", str(tmp_path), "--name", "console"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for epoch in (1, 2):
        assert len(re.findall(rf"epoch +{epoch}/2 compute", out)) == 1, out[-3000:]
    assert "Reporting training result" not in out and "PreemptionWatcher" not in out
