"""The Ray Train trainer of one training run, built and driven without torch.

:func:`make_trainer` returns a Ray Train V2 ``DataParallelTrainer`` with :class:`moco.torch_backend.TorchBackendConfig`
instead of ``ray.train.torch.TorchTrainer``: the trainer and everything pickled with it (this module, the backend) load
no torch, so neither the process that fits it (a Tune trial driver, ``moco-train``) nor its Train controller does.
Its training function, :func:`train_loop`, imports :mod:`moco.train` (and torch) inside the worker only.
"""

from __future__ import annotations

import os
import time
from typing import Any

from moco.config import TrainConfig
from moco.import_probe import record_modules
from moco.torch_backend import TorchBackendConfig


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function: :func:`moco.train.train_loop_per_worker`, imported here, in the worker."""
    from moco.train import train_loop_per_worker

    train_loop_per_worker(loop_config)
    record_modules("worker")


def make_trainer(cfg: TrainConfig, *, workers: int, use_gpu: bool, cpus_per_worker: float, storage: str, name: str,
                 max_failures: int = 2, callbacks: list | None = None, fault: dict | None = None,
                 gpus_per_worker: float = 1.0):
    """A ``DataParallelTrainer`` for one run of ``cfg``; rerunning with the same ``storage``/``name`` resumes it.
    ``gpus_per_worker`` (with ``use_gpu``) may be a fraction: workers of several runs then share a GPU."""
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    run_dir = storage.rstrip("/") + "/" + name
    loop_config = {"train": cfg.to_dict(), "threads": max(1, int(cpus_per_worker)), "run_dir": run_dir,
                   "fault": fault, "created_unix": time.time()}
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    return DataParallelTrainer(
        train_loop,
        train_loop_config=loop_config,
        backend_config=TorchBackendConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources if workers else None),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            logging_config=ray.train.LoggingConfig(log_level=os.environ.get("MOCO_TRAIN_LOG_LEVEL", "WARNING")),
        ),
    )
