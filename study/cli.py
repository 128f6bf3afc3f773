"""The study's command line without Ray: the parser, the checks made before anything starts, the plan and the dry run.

``study/run.py`` (the run itself) and ``study/submit.py`` (a job on a cluster) share them, so the three refuse the
same mistakes with the same words.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from moco.config import ConfigError, plain_name
from moco.sources import DatasetNotFoundError, check_dataset
from study.confirm import ConfirmError
from study.optuna_storage import OptunaStorageError
from study.plan import Node, PlanError, make_plan
from study.params import SpaceError
from study.settings import CLI_FLAGS, with_cli
from study.space import Space, check_study, load_space


class StudyError(Exception):
    """A problem found before Ray starts; reported with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from study.console import STUDY_EXAMPLES

    p = argparse.ArgumentParser(prog="mocostudy", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a hyperparameter study of MoCo v2 (dual-view loss, hard negatives) "
                                            "with Ray Tune + Optuna and ASHA; resumable.", epilog=STUDY_EXAMPLES)
    p.add_argument("--space", default="hardneg",
                   help="space file: a shipped name (see --list) or a path (default: hardneg)")
    p.add_argument("--list", action="store_true", help="list the shipped space files and training configs, then exit")
    p.add_argument("--name", default=None, help="study name (default: the space file's name)")
    p.add_argument("--storage", default="runs", help="where studies are written, a path or URI (s3://, gs://) "
                   "(default: ./runs)")
    p.add_argument("--num-samples", type=int, default=None, help="number of trials (default: the space file's)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as the nodes hold, re-planned as nodes come and go)")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="Ray Train workers per trial (default: the space file's)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per Ray Train worker: 0, a fraction (0.5: two workers share a GPU) or a whole number "
                   "(default: the space file's)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs per Ray Train worker (default: 1, or the node's CPUs per GPU)")
    p.add_argument("--address", default=None, help="an existing Ray cluster, HOST:PORT or auto (default: a private "
                   "local one; ray:// is refused: submit with study/submit.py)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="where Optuna keeps the trials: a SQLAlchemy URL (postgresql://user:pw@host/db, "
                   "sqlite:////path.db) or journal:///path/file.log (default: optuna.db in the study folder)")
    p.add_argument("--wait-for-nodes", type=float, default=0.0, metavar="SECONDS",
                   help="with --address: while the nodes up cannot hold one trial, wait this long for more (an "
                   "autoscaling cluster, nodes still joining) instead of stopping with exit status 2 (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="resume the study of this name if it exists, else start it (for jobs that a scheduler "
                   "restarts: KubeRay backoffLimit, SLURM --requeue)")
    p.add_argument("--confirm", action="store_true", help="run (or continue) the confirmation of the finished "
                   "study --name: its best trials and baseline re-trained with fresh seeds (the space's confirm:)")
    p.add_argument("--seed", type=int, default=None, help="searcher seed (default: the space file's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base training config (repeatable)")
    p.add_argument("--max-start-failures", type=int, default=3, metavar="N",
                   help="stop the study after N trials in a row fail to start (default: 3)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's own progress table and the workers' output")
    p.add_argument("--no-report", action="store_true", help="do not write the analysis report at the end")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan without starting Ray")
    return p


def apply_cli(space: Space, args: argparse.Namespace) -> Space:
    if space.variants and args.num_samples is not None:
        raise StudyError(f"--num-samples: {space.source} is a grid of variants x seeds ({space.num_trials} trials); "
                         "the number of trials follows from it")
    space.settings = with_cli(space.settings, {key: getattr(args, key) for key in CLI_FLAGS})
    if args.set:
        from moco.config import parse_overrides

        overrides = parse_overrides(args.set)
        if "epochs" in overrides and space.base.compute_budget is not None:
            raise StudyError(f"--set epochs: the base sets compute_budget = {space.base.compute_budget}, from which "
                             "every trial's epochs follow; use --set compute_budget=N")
        try:
            space.base = space.base.replace(**overrides)
        except ConfigError as err:
            raise StudyError(f"--set {err.key}={err.value!r}: {err.allowed}") from None
        space.base_overrides = {**space.base_overrides, **overrides}
    if space.settings.gpus_per_worker:
        space.base = space.base.replace(device="cuda")
    check_study(space)  # the same cross-section checks as loading, on the overridden space
    if space.confirm is not None:  # `--set seed=N` must not make a confirmation seed one the search trains with
        from study.confirm import resolve_seeds

        resolve_seeds(space, space.confirm)
    return space


def plan_resources(space: Space, cpus: float, gpus: float) -> dict[str, Any]:
    """Resources of one trial and how many fit at once on one machine of ``cpus`` / ``gpus`` (study/plan.py)."""
    s = space.settings
    try:
        plan = make_plan([Node("local", cpus, gpus, driver=True)], workers_per_trial=s.workers_per_trial,
                         cpus_per_worker=s.cpus_per_worker, gpus_per_worker=s.gpus_per_worker,
                         max_concurrent=s.max_concurrent)
    except PlanError as err:
        lower = "--gpus-per-worker (this machine has no GPU), " if s.gpus_per_worker and not gpus else ""
        raise StudyError(f"{err}: lower {lower}--workers-per-trial or --cpus-per-worker, or pass --address of a "
                         "cluster that holds it") from None
    return plan.as_dict(space.num_trials)


def describe_plan(space: Space, resources: dict[str, Any], run_dir: str) -> str:
    s = space.settings
    lines = [f"study      {run_dir}  ({space.kind}, {space.num_trials} trials, metric {s.metric} ({s.mode}))",
             f"space file {space.source}",
             f"base       {space.base_name} + {space.base_overrides or '{}'}: {space.base.dataset}, "
             f"{space.base.backbone}, compute budget {space.budget} per trial (one-way: {space.budget} epochs, "
             f"dual-view: {space.budget // 2}), batch {space.base.batch_size}"]
    if space.variants:
        for name, overrides in space.variants.items():
            lines.append(f"  variant {name:<12} {overrides or '(base)'}  x seeds {space.seeds}")
    for p in space.params:
        rng = (f"{p.choices}" if p.type == "categorical" else f"= {p.value}" if p.type == "fixed"
               else f"[{p.low}, {p.high}]{' log' if p.log else ''}")
        lines.append(f"  search  {p.name:<26} {p.type:<11} {rng}{'  when ' + p.when if p.when else ''}")
    baseline = space.baseline_point()
    if baseline:
        lines.append(f"baseline   trial 0 = {baseline}")
    sched = (f"ASHA on compute (max_t {space.max_budget}, grace {s.grace_period}, reduction {s.reduction_factor})"
             if s.scheduler == "asha" else "none (every trial runs all epochs)")
    lines += [f"searcher   {s.searcher if not space.variants else 'grid over variants x seeds'} (seed {s.seed})",
              f"scheduler  {sched}",
              f"resources  {resources['workers_per_trial']} worker(s) x {resources['cpus_per_worker']:g} CPU"
              f"{' + ' + str(resources['gpus_per_worker']) + ' GPU' if resources['gpus_per_worker'] else ''} per "
              f"trial; {resources['max_concurrent']} trial(s) at once on {resources['cluster_cpus']:g} CPUs / "
              f"{resources['cluster_gpus']:g} GPUs" + (
                  f" (only {resources['fit_at_once']} fit(s) now: the others wait for resources)"
                  if resources.get("fit_at_once", resources["max_concurrent"]) < resources["max_concurrent"]
                  else ""),
              *[f"  node {node_id[:8]} ({n['cpus']:g} CPU, {n['gpus']:g} GPU{', drivers' if n['driver'] else ''}): "
                f"{n['workers']} worker(s)" for node_id, n in (resources.get("nodes") or {}).items()
                if len(resources["nodes"]) > 1 or node_id != "local"],
              f"budget     at most {space.num_trials * space.max_budget} compute "
              f"({space.num_trials} trials x {space.max_budget}; one-way epochs, a dual-view epoch counts 2)"]
    if space.confirm is not None:
        from study.confirm import describe_section

        lines.append(describe_section(space))
    return "\n".join(lines)


def resume_command(args: argparse.Namespace, name: str) -> str:
    from study.console import command

    parts = ["--space", args.space, "--name", name, "--storage", args.storage]
    if args.address:
        parts += ["--address", args.address]
    return command(*parts, "--confirm" if getattr(args, "confirm", False) else "--resume")


#: every refusal of :func:`check_args`
CHECK_ERRORS = (SpaceError, ConfigError, StudyError, ConfirmError, OptunaStorageError)


def check_args(args: argparse.Namespace) -> tuple[Space, str]:
    """The checks that need neither Ray, a cluster nor this machine's files (the dry run, the real run and
    study/submit.py make them alike): the space with the command line applied, and the study's name."""
    if getattr(args, "max_start_failures", 1) < 1:
        raise StudyError(f"--max-start-failures {args.max_start_failures}: an integer >= 1")
    space = apply_cli(load_space(args.space), args)
    name = plain_name(args.name if args.name is not None else Path(space.source).stem, "--name")
    if not args.storage.strip() or not args.storage.partition("://")[2].strip("/ ") and "://" in args.storage:
        raise StudyError(f"--storage {args.storage!r}: a folder or a URI with a bucket or path (s3://bucket/studies, "
                         "gs://..., file:///shared/studies)")
    if args.address not in (None, "auto", "local"):
        from moco.ray_address import AddressError, host_port

        try:
            host_port(args.address)
        except AddressError as err:
            raise StudyError(str(err)) from None
    return space, name


def dry_run(space: Space, run_dir: Path) -> int:
    """Print the plan; problems that only matter on this machine (data, GPUs) are notes, not errors."""
    notes = []
    try:
        check_dataset(space.base)
    except DatasetNotFoundError as err:
        notes.append(f"note: the dataset is not on this machine; the cluster that runs the study needs it.\n{err}")
    cpus, gpus = float(os.cpu_count() or 1), local_gpus()
    try:
        resources = plan_resources(space, cpus, gpus)
    except StudyError as err:
        notes.append(f"note: this machine cannot run it ({err}); planned for a cluster that holds one trial per "
                     "node-sized slot")
        s = space.settings
        need_cpu = max(s.workers_per_trial, 1) * (s.cpus_per_worker or 1)
        resources = plan_resources(space, max(cpus, need_cpu), max(gpus, s.workers_per_trial * s.gpus_per_worker))
    print(describe_plan(space, resources, str(run_dir)))
    for note in notes:
        print(note)
    print("dry run: nothing started, nothing written")
    return 0


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast when a cluster address does not answer (instead of Ray's endless connection retries); ``auto`` is
    resolved as Ray would and checked too (moco.ray_address, shared with ``python -m moco.train``)."""
    from moco.ray_address import AddressError, check_address as check

    try:
        check(address, timeout)
    except AddressError as err:
        raise StudyError(str(err)) from None


def local_gpus() -> float:
    """CUDA devices this machine shows torch (``CUDA_VISIBLE_DEVICES`` applies), counted in a short-lived process:
    torch imported in the study driver, which trains nothing, would hold about 400 MB for the whole study."""
    probe = "import torch; print(torch.cuda.device_count())"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
        return float(out.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        raise StudyError(f"could not count this machine's GPUs with torch: {err}") from None


def check_writable(storage: Path) -> None:
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StudyError(f"--storage {storage} is not writable: {err.strerror or err}") from None
