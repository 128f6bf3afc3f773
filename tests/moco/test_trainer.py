"""The trainer side of a run loads no torch: what a Tune trial driver and a Train controller import and unpickle."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

_PROBE = """
import pickle, sys
import ray.cloudpickle as cloudpickle
from moco.config import TrainConfig
from moco.trainer import make_trainer
import study.trial
trainer = make_trainer(TrainConfig(), workers=2, use_gpu=True, gpus_per_worker=0.5, cpus_per_worker=1,
                       storage='/tmp', name='probe')
blob = cloudpickle.dumps((trainer.train_loop_per_worker, trainer.train_run_context))
print('torch' in sys.modules, len(blob))
"""


def test_trainer_and_what_is_pickled_with_it_import_no_torch():
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "False"


def test_unpickling_the_training_function_and_backend_imports_no_torch():
    dump = _PROBE.replace("print('torch' in sys.modules, len(blob))", "sys.stdout.buffer.write(blob)")
    blob = subprocess.run([sys.executable, "-c", dump], cwd=ROOT, capture_output=True, timeout=120, check=True).stdout
    load = ("import sys, ray.cloudpickle as cp; fn, ctx = cp.loads(sys.stdin.buffer.read()); "
            "ctx.backend_config.backend_cls(); print('torch' in sys.modules, fn.__module__)")
    proc = subprocess.run([sys.executable, "-c", load], cwd=ROOT, input=blob, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().split() == ["False", "moco.trainer"]


def test_the_trainer_starts_no_dataset_manager_for_a_run_without_datasets(tmp_path):
    from moco.config import TrainConfig
    from moco.trainer import make_trainer

    trainer = make_trainer(TrainConfig(), workers=1, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path), name="t")
    kinds = {type(cb).__name__ for cb in trainer._create_default_callbacks()}
    assert "DatasetsCallback" not in kinds and {"BackendSetupCallback", "PlacementGroupCleanerCallback"} <= kinds
    trainer.datasets = {"train": None}  # a run that passes Ray Datasets keeps Ray's callback
    assert "DatasetsCallback" in {type(cb).__name__ for cb in trainer._create_default_callbacks()}


def test_workers_print_once_unless_the_user_turns_rays_print_patch_back_on(tmp_path, monkeypatch):
    from moco.config import TrainConfig
    from moco.trainer import PRINT_PATCH_ENV, make_trainer

    monkeypatch.delenv(PRINT_PATCH_ENV, raising=False)
    make_trainer(TrainConfig(), workers=1, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path), name="t")
    assert os.environ[PRINT_PATCH_ENV] == "0"
    monkeypatch.setenv(PRINT_PATCH_ENV, "1")
    make_trainer(TrainConfig(), workers=1, use_gpu=False, cpus_per_worker=1, storage=str(tmp_path), name="t")
    assert os.environ[PRINT_PATCH_ENV] == "1"


def test_rays_per_report_metrics_dump_is_quieted():
    import logging

    from ray.train.v2._internal.execution import context

    from moco.trainer import quiet_report_log

    assert isinstance(context.logger, logging.Logger)  # where Ray 2.60 logs "Reporting training result N: ..."
    previous = context.logger.level
    try:
        quiet_report_log()
        assert not context.logger.isEnabledFor(logging.INFO) and context.logger.isEnabledFor(logging.WARNING)
    finally:
        context.logger.setLevel(previous)
