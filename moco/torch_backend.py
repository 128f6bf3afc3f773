"""A Ray Train backend for PyTorch that does not import torch where it is configured.

Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at its top; ``TorchTrainer`` and its
config, pickled to the Train controller, made both the Tune trial driver and the controller load torch (~470 MB
resident each) although neither trains. :class:`TorchBackendConfig` does the same setup for ``DataParallelTrainer``
(Ray Train V2: one or more workers on CPUs or GPUs) with torch imported only inside the functions it runs on the
workers:

- process group: rank 0's address and a free port as ``MASTER_ADDR``/``MASTER_PORT``; the torchrun variables
  (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...); ``torch.distributed.init_process_group`` with NCCL when the worker
  holds a GPU, else gloo (also for a GPU that a node declares without CUDA, under the test-only switch
  ``moco.train.DECLARED_GPUS_ON_CPU_ENV``; without it such a node fails, as with Ray's TorchConfig);
- the worker's CUDA device set as current before the training function runs (as Ray's own context manager does);
- at the end: the process group destroyed (several workers) and the CUDA cache emptied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import ray
import ray.exceptions
import ray.train
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework

from moco.import_probe import record_modules

logger = logging.getLogger(__name__)


@dataclass
class TorchBackendConfig(BackendConfig):
    """torch.distributed settings; ``backend`` None picks NCCL or gloo on the workers (see the module doc)."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return TorchBackend

    @property
    def train_func_context(self):
        return CudaDeviceContext

    @property
    def framework(self):
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "timeout_s": self.timeout_s}


class CudaDeviceContext:
    """Around the training function on a worker: its CUDA device (if it has one) is the current device."""

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            import ray.train.torch

            device = ray.train.torch.get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, exc_type, exc, tb):
        return False


class TorchBackend(Backend):
    """Sets up and tears down torch.distributed on the workers; runs in the Train controller, without torch."""

    share_cuda_visible_devices: bool = True  # workers of a node see each other's GPUs (NCCL needs it), as in Ray's

    def on_start(self, worker_group, backend_config: TorchBackendConfig) -> None:
        backend = backend_config.backend or worker_group.execute_single(0, _default_backend)
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env_vars, addr=addr, port=port)
        ray.get([worker_group.execute_single_async(rank, _init_process_group, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig) -> None:
        record_modules("controller")
        try:
            ray.get(worker_group.execute_async(_shutdown, destroy=len(worker_group) > 1), timeout=30)
        except ray.exceptions.GetTimeoutError:
            logger.warning("torch process group shutdown timed out after 30 s")


# --- run on the workers (torch is imported there) ---------------------------------------------------------------
def _default_backend() -> str:
    if not ray.get_gpu_ids():
        return "gloo"
    from moco.train import declared_gpus_on_cpu

    return "gloo" if declared_gpus_on_cpu() else "nccl"


def _set_env_vars(addr: str, port: int) -> None:
    context = ray.train.get_context()
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(context.get_world_rank()),
                      LOCAL_RANK=str(context.get_local_rank()), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_WORLD_SIZE=str(context.get_local_world_size()), NODE_RANK=str(context.get_node_rank()))


def _init_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    import torch.distributed as dist

    if backend == "nccl":  # fail a timed-out collective instead of hanging (as Ray does)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend=backend, init_method="env://", rank=world_rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _shutdown(destroy: bool) -> None:
    import torch
    import torch.distributed as dist

    if destroy and dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        import ray.train.torch

        for device in ray.train.torch.get_devices():
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()
