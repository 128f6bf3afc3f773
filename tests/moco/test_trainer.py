"""The trainer side of a run loads no torch: what a Tune trial driver and a Train controller import and unpickle."""

from __future__ import annotations

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
