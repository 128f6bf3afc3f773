"""Ray Train worker side of the training core: ``train_loop_per_worker``, checkpoints, and ``python -m moco.train``.

The loop is a plain function of a config dict (as in Ray's own examples); the worker's Ray-specific part lives here
(the trainer that runs it, without torch: :mod:`moco.trainer`), while the training itself is
:class:`moco.engine.Engine`. Every epoch the loop reports its metrics with
``ray.train.report``; every ``checkpoint_every`` epochs (and at the end) rank 0 attaches a checkpoint holding the
model (with its queue), optimiser, epoch and config. On start it resumes from ``ray.train.get_checkpoint()``; a
checkpoint that fails its checksum is skipped for the previous one, with a warning.

Loop config keys: ``train`` (a TrainConfig dict), ``threads`` (torch threads per worker), ``run_dir`` (persistent
folder of this run, for fault-injection markers), ``fault`` (optional fault injection, see :mod:`moco.faults`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from moco.catalog import resolve
from moco.checkpoint import engine_state, read_checkpoint_dir, restore, write_checkpoint_dir
from moco.config import ConfigError, TrainConfig, parse_overrides, plain_name
from moco.data import DatasetNotFoundError, check_dataset, load_dataset
from moco.engine import DistInfo, DivergedError, Engine, resolve_device
from moco.faults import FAULT_ENV, maybe_fail_start, maybe_inject_fault, parse_fault
from moco.precision import describe
from moco.ray_address import PREEMPTION_WATCHER_ENV, AddressError, check_address, start_local_ray
from moco.trainer import make_trainer
from moco.vocabulary import COMPUTE, EPOCH, MONITOR_METRICS, REPEATED


# --- checkpoints (the state and its folder: moco/checkpoint.py) -------------------------------------------------
def load_latest_valid(checkpoint) -> dict[str, Any] | None:
    """State of the newest readable checkpoint: ``checkpoint`` itself, else its older siblings (``epoch-*``)."""
    if checkpoint is None:
        return None
    import pyarrow.fs

    fs, path = checkpoint.filesystem, checkpoint.path
    parent = path.rstrip("/").rsplit("/", 1)[0]
    infos = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    siblings = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                       and i.base_name.startswith("epoch-") and i.path <= path), reverse=True)
    candidates = [path] + [p for p in siblings if p != path]
    for candidate in candidates:
        with tempfile.TemporaryDirectory() as local:
            try:
                pyarrow.fs.copy_files(candidate, local, source_filesystem=fs)
                state = read_checkpoint_dir(local)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
                warnings.warn(f"skipping unreadable checkpoint {candidate}: {err}", stacklevel=2)
                continue
        if candidate != path:
            warnings.warn(f"resumed from the older checkpoint {candidate} because newer ones are unreadable",
                          stacklevel=2)
        return state
    warnings.warn("no readable checkpoint found; starting from scratch", stacklevel=2)
    return None


# --- the loop -----------------------------------------------------------------------------------------------------
def progress_line(metrics: dict[str, Any], epochs: int) -> str:
    monitor = "".join(f" {name.removesuffix('_top1')} {metrics[name]:5.2f}%" for name in MONITOR_METRICS
                      if metrics.get(name) is not None)
    return (f"epoch {metrics[EPOCH]:>3}/{epochs} compute {metrics[COMPUTE]:>3} loss {metrics['loss']:.4f}{monitor} "
            f"lr {metrics['lr']:.4f} m {metrics['momentum']:.4f} {metrics['images_per_s']:.0f} img/s "
            f"{metrics['epoch_s']:.1f}s")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function: train, report every epoch, checkpoint, resume."""
    import ray.train
    import ray.train.torch

    loop_start = time.time()
    maybe_fail_start(loop_config.get("fault"))
    cfg = TrainConfig.from_dict(loop_config["train"])
    if loop_config.get("threads"):
        torch.set_num_threads(int(loop_config["threads"]))
    dist_info = DistInfo.current()
    if cfg.device == "cuda" and declared_gpus_on_cpu():
        cfg = cfg.replace(device="cpu")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    engine = Engine(cfg, load_dataset(cfg), device, dist_info)
    if dist_info.rank == 0:
        print(describe(device, engine.precision, engine.memory_format)
              + (", freed memory kept (moco/allocator.py)" if engine.retains_freed_memory else ""), flush=True)
    state = load_latest_valid(ray.train.get_checkpoint())
    if state is not None:
        restore(engine, state)
        if dist_info.rank == 0:
            print(f"resumed from epoch {engine.epoch}", flush=True)
    node_id = _node_id()
    # Start-up of this worker process (reported with its first epoch): Ray's part (trainer created -> this function
    # runs: controller, placement group, worker start, process group) and ours (config, data, model, resume).
    startup = {"startup_ray_s": loop_start - loop_config["created_unix"] if loop_config.get("created_unix") else None,
               "startup_setup_s": time.time() - loop_start}
    last_monitor = {k: engine.last_metrics[k] for k in MONITOR_METRICS if k in engine.last_metrics}
    if state is not None and engine.last_metrics:
        # Resumed from a checkpoint: report its epoch again. Its first report can have missed the study (a study
        # stopped after the checkpoint was stored but before the report reached it), which keeps one report per
        # epoch. After the final checkpoint (a study resumed after a crash) this is the run's result.
        ray.train.report({**engine.last_metrics, REPEATED: 1})
        if engine.epoch >= cfg.epochs:
            return
    while engine.epoch < cfg.epochs:
        epoch = engine.epoch + 1
        maybe_inject_fault(loop_config.get("fault"), epoch, dist_info.rank, loop_config.get("run_dir"))
        try:
            metrics = engine.train_epoch()
        except DivergedError as err:
            # Report the worst value of the metric so the searcher learns, then stop this run.
            ray.train.report({EPOCH: epoch, COMPUTE: engine.compute + cfg.views, "diverged": 1,
                              **dict.fromkeys(MONITOR_METRICS, 0.0), "loss": float("nan"), "error": str(err),
                              "node_id": node_id, "world_size": dist_info.world_size})
            print(f"run diverged: {err}", flush=True)
            return
        last = epoch == cfg.epochs
        if dist_info.rank == 0 and (epoch % cfg.knn_every == 0 or last):
            monitor = engine.monitor()
            last_monitor = {k: monitor[k] for k in MONITOR_METRICS}
            metrics.update(monitor)
        metrics.update(last_monitor)  # epochs between monitors carry the latest value (studies monitor every epoch)
        if dist_info.rank == 0 and last and cfg.final_eval:
            metrics.update(engine.final_evaluation())
        metrics.update(diverged=0, node_id=node_id, world_size=dist_info.world_size)
        metrics.update({k: v for k, v in startup.items() if v is not None})
        startup = {}
        engine.last_metrics = metrics
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if dist_info.rank == 0 and (epoch % cfg.checkpoint_every == 0 or last):
                write_checkpoint_dir(engine_state(engine), tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch:04d}")
        if dist_info.rank == 0:
            print(progress_line(metrics, cfg.epochs), flush=True)
        release_free_memory()


#: Test-only switch: Ray schedules on GPUs that nodes declare (``ray start --num-gpus 1``) whether or not CUDA is
#: there, so planning, placement and fractional GPUs can be tested on machines without one. With this variable set to
#: 1 in the cluster's environment and no CUDA on the node, a run placed on a GPU trains on the CPU (gloo instead of
#: NCCL). Never set it on a real cluster: a GPU node without working CUDA would then train slowly instead of failing.
DECLARED_GPUS_ON_CPU_ENV = "MOCO_TEST_DECLARED_GPUS_ON_CPU"


def declared_gpus_on_cpu() -> bool:
    return os.environ.get(DECLARED_GPUS_ON_CPU_ENV) == "1" and not torch.cuda.is_available()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc keeps ~200 MB of an epoch's freed CPU tensors otherwise;
    with several trials per machine that adds up). A no-op where glibc's ``malloc_trim`` is not available."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _node_id() -> str:
    try:
        import ray

        if not ray.is_initialized():  # local mode without Ray: any Ray call here would start or join an instance
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - local mode without a Ray runtime
        return "local"


# --- driver side -------------------------------------------------------------------------------------------------
def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Ray workers change directory; make path-valued settings absolute before they leave the driver."""
    if cfg.data_root and "://" not in cfg.data_root:
        return cfg.replace(data_root=str(Path(cfg.data_root).expanduser().resolve()))
    return cfg


# --- command line -------------------------------------------------------------------------------------------------
TRAIN_EXAMPLES = """examples:
  moco-train --config fashion_mnist                       # a shipped config (mocostudy --list), 1 Ray Train worker
  moco-train --config fashion_mnist --workers 2 --set temperature=0.1
  moco-train --config runs/hardneg/best_config.yaml        # the best trial of a study
  moco-train --config digits --workers 0                   # in this process, no Ray (debugging)
Rerunning the same command (same --name and --storage) resumes from the latest checkpoint.
Also runs as `python -m moco.train`."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moco-train", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Train one MoCo v2 configuration under Ray Train, with checkpoints "
                                            "and resume.", epilog=TRAIN_EXAMPLES)
    p.add_argument("--config", required=True,
                   help="training config: a shipped name (fashion_mnist, digits, cifar10) or a YAML path")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers; 0 trains in this process (default: 1)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (default: all / workers)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable)")
    p.add_argument("--storage", default="runs", help="where runs are written, a path or URI (default: ./runs)")
    p.add_argument("--name", default=None, help="run name; reuse it to resume (default: train-<config name>)")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster (HOST:PORT or auto; ray:// is refused: submit a Ray Job instead); "
                        "it must answer within 5 s (default: a new local Ray instance, none with --workers 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.gpus:
            overrides.setdefault("device", "cuda")
        cfg = absolute_paths(TrainConfig.from_yaml(resolve(args.config), overrides))
        if args.workers < 0:
            raise ConfigError("--workers", args.workers, "an integer >= 0")
        if args.gpus and args.address is None and not torch.cuda.is_available():
            raise ConfigError("--gpus", True, "a machine with a CUDA GPU (none found here)")
        if cfg.device == "cuda" and args.workers > 0 and not args.gpus:
            raise ConfigError("device", "cuda", "with --gpus only: without it Ray gives the workers no GPU (add "
                              "--gpus, or use device: auto)", args.config)
        if cfg.device == "cuda" and (args.workers == 0 or args.address is None) and not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "a machine with a CUDA GPU (none found here): use device: auto or "
                              "cpu", args.config)
        check_dataset(cfg)
        name = plain_name(args.name if args.name is not None else f"train-{Path(args.config).stem}", "--name")
        address = check_address(args.address)  # a given address must answer within seconds
    except (ConfigError, DatasetNotFoundError, AddressError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    if "://" not in storage:
        Path(storage, name).mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(Path(storage, name, "config.yaml"))
    import ray

    if not ray.is_initialized():
        # The address given, or a new instance of our own; never the one a `ray start` left in Ray's temp dir (a
        # head that may be gone). --workers 0 without --address runs in this process with no Ray instance at all.
        if address:
            ray.init(address=address, log_to_driver=True)
        elif args.workers > 0:
            os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")  # this machine alone: nothing to preempt
            start_local_ray(log_to_driver=True)
    total_cpus = (ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count() or 1)
    cpus = args.cpus_per_worker or max(1.0, float(int(total_cpus // max(args.workers, 1))))
    trainer = make_trainer(cfg, workers=args.workers, use_gpu=args.gpus, cpus_per_worker=cpus, storage=storage,
                           name=name, fault=parse_fault(os.environ.get(FAULT_ENV)))
    result = trainer.fit()
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))}
    print(json.dumps(final, indent=1, sort_keys=True))
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
