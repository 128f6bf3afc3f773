"""The Ray Train trainer of one training run, built and driven without torch.

:func:`make_trainer` returns a Ray Train V2 ``DataParallelTrainer`` (less an actor it does not need:
:func:`trainer_class`) with :class:`moco.torch_backend.TorchBackendConfig`
instead of ``ray.train.torch.TorchTrainer``: the trainer and everything pickled with it (this module, the backend) load
no torch, so neither the process that fits it (a Tune trial driver, ``moco-train``) nor its Train controller does.
Its training function, :func:`train_loop`, imports :mod:`moco.train` (and torch) inside the worker only.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from moco.config import TrainConfig
from moco.import_probe import record_modules
from moco.torch_backend import TorchBackendConfig

#: Ray Train's print patch sends each ``print`` of a worker through the root logger as well, so with the workers'
#: output on the console every line arrived twice. With it off (Ray Train hands this variable on to the controller and
#: the workers) a worker's print reaches its stdout once; Ray's log files keep it as before. Set it to 1 to undo.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function: :func:`moco.train.train_loop_per_worker`, imported here, in the worker."""
    from moco.train import train_loop_per_worker

    quiet_report_log()
    train_loop_per_worker(loop_config)
    record_modules("worker")


def quiet_report_log() -> None:
    """Keep only warnings of the logger with which Ray Train 2.60 logs every report's whole metrics dict at INFO
    ("Reporting training result N: TrainingReport(...)"): it is named by its file's path, outside ``ray.train``, so
    ``LoggingConfig``'s level does not reach it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet here
        return
    log = getattr(context, "logger", None)
    if isinstance(log, logging.Logger):
        log.setLevel(logging.WARNING)


@functools.cache
def trainer_class():
    """Ray Train V2's ``DataParallelTrainer``, without Ray Data's ``DatasetManager`` actor for a run that passes no
    datasets (ours never does: the engine reads its own data). Ray starts that actor for every run: one more process
    per trial (about 240 MB resident, over a second of CPU to start on 2 cores) that nothing here uses."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class Trainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

    return Trainer


def make_trainer(cfg: TrainConfig, *, workers: int, use_gpu: bool, cpus_per_worker: float, storage: str, name: str,
                 max_failures: int = 2, callbacks: list | None = None, fault: dict | None = None,
                 gpus_per_worker: float = 1.0):
    """A ``DataParallelTrainer`` for one run of ``cfg``; rerunning with the same ``storage``/``name`` resumes it.
    ``gpus_per_worker`` (with ``use_gpu``) may be a fraction: workers of several runs then share a GPU."""
    import ray.train

    os.environ.setdefault(PRINT_PATCH_ENV, "0")
    run_dir = storage.rstrip("/") + "/" + name
    loop_config = {"train": cfg.to_dict(), "threads": max(1, int(cpus_per_worker)), "run_dir": run_dir,
                   "fault": fault, "created_unix": time.time()}
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    return trainer_class()(
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
