"""Run a hyperparameter study: ``python study/run.py --space hardneg.yaml``.

Searches the training config with Ray Tune + Optuna (TPE by default) and ASHA early stopping on epochs; every trial
is a Ray Train run. The first trial is always the MoCo v2 baseline. Results land in ``<storage>/<name>/``
(``study.json``, ``trials.csv``, ``history.csv``, ``best_config.yaml``, the Optuna SQLite study and a report).
Interrupt with Ctrl-C (or SIGTERM) and continue later with ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python study/run.py` puts study/ on sys.path, not the project root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moco.config import ConfigError, plain_name  # noqa: E402
from moco.sources import DatasetNotFoundError, check_dataset  # noqa: E402
from study.confirm import ConfirmError  # noqa: E402
from study.optuna_storage import OptunaStorageError, check_url  # noqa: E402
from study.plan import DRIVER_RESOURCE, Node, PlanError, make_plan  # noqa: E402
from study.space import Space, SpaceError, check_settings, check_study, load_space  # noqa: E402

LIVE_FILES = ("trial_status.json", "results.jsonl", "optuna.db")  # mirrored at every trial start and epoch report


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


# --- planning (no Ray) ----------------------------------------------------------------------------------------------
def apply_cli(space: Space, args: argparse.Namespace) -> Space:
    s = space.settings
    if space.variants and args.num_samples is not None:
        raise StudyError(f"--num-samples: {space.source} is a grid of variants x seeds ({space.num_trials} trials); "
                         "the number of trials follows from it")
    for attr, value in (("num_samples", args.num_samples), ("max_concurrent", args.max_concurrent),
                        ("workers_per_trial", args.workers_per_trial), ("gpus_per_worker", args.gpus_per_worker),
                        ("cpus_per_worker", args.cpus_per_worker), ("seed", args.seed)):
        if value is not None:
            setattr(s, attr, value)
    check_settings(s, "command line", cli=True)
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
    if s.gpus_per_worker:
        space.base = space.base.replace(device="cuda")
    check_study(space, cli=True)  # the same cross-section checks as loading, on the overridden space
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


# --- running ------------------------------------------------------------------------------------------------------
def _tune_callback(run_dir: Path, space: Space, mirror=None):
    from ray.tune import Callback

    from study.results import append_result, record_trial
    from study.search import trial_outcome

    class StudyFiles(Callback):
        """Records trials and every epoch report as they happen, and rewrites the result files as trials end."""

        def __init__(self):
            self._last_write = 0.0

        def on_trial_start(self, iteration, trials, trial, **info):
            number = int(str(trial.experiment_tag).split("_", 1)[0]) - 1
            record_trial(run_dir, trial.trial_id, params=dict(trial.config), number=number, status="running")
            if mirror is not None:  # the searcher has just created this trial in the Optuna database
                mirror.push(LIVE_FILES)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            append_result(run_dir, trial.trial_id, result)
            if mirror is not None:  # every epoch report reaches the storage before the next one
                mirror.push(LIVE_FILES)

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            outcome = trial_outcome(last, space.trial_config(trial.config).epochs, error=False)
            record_trial(run_dir, trial.trial_id, status=outcome, error=last.get("error"))
            _write(run_dir, space, mirror)

        def on_trial_error(self, iteration, trials, trial, **info):
            error = trial_error(trial) or "see the trial's error.txt"
            record_trial(run_dir, trial.trial_id, status="errored", error=error)
            _write(run_dir, space, mirror)

        def on_step_end(self, iteration, trials, **info):
            if time.time() - self._last_write > 30:
                self._last_write = time.time()
                _write(run_dir, space, mirror)

    return StudyFiles()


class StorageError(RuntimeError):
    """The study's storage cannot be written (full, read-only, gone); results already written stay intact."""


def _write(run_dir: Path, space: Space, mirror=None) -> None:
    from study.results import write_results

    try:
        write_results(run_dir, space)
        if mirror is not None:
            mirror.push()
    except OSError as err:
        raise StorageError(f"cannot write the study's results to {run_dir}: {err.strerror or err}; the files "
                           "written before this error are intact") from err


def trial_error(trial) -> str | None:
    """The last line of a Tune trial's error file (the exception), if any."""
    return _last_line(getattr(trial, "error_file", None))


def _last_line(path: str | None) -> str | None:
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()] if path else []
    except OSError:
        return None
    return lines[-1][:500] if lines else None


def start_ray(address: str | None, stack: contextlib.ExitStack, verbose: bool = False) -> None:
    """Connect to ``address`` (checked by :func:`check_address`), or start a private local cluster that is stopped
    when ``stack`` closes; never the cluster Ray's temp dir names (a head that may be gone)."""
    if not address or address == "local":
        from study.local_cluster import LocalCluster

        # Before `import ray`: the cluster's address and auth token must be in the environment when Ray loads.
        address = stack.enter_context(LocalCluster(resources={DRIVER_RESOURCE: 1000}))
    import ray

    ray.init(address=address, log_to_driver=verbose)  # the workers' own output only with --verbose
    stack.callback(ray.shutdown)


def run_study(space: Space, args: argparse.Namespace, run_dir: Path, storage: str, mirror=None) -> int:
    def stop(signum, frame):  # until Tune takes over: unwind, so the local cluster is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.ExitStack() as stack:
        from study.console import quiet_ray

        start_ray(args.address, stack, args.verbose)
        quiet_ray(args.verbose)
        if mirror is not None:
            stack.callback(mirror.push)
        if args.confirm:
            from study.confirm_run import stage

            return stage(space, args, run_dir, storage, None, mirror)
        return _run_study(space, args, run_dir, storage, mirror)


def _run_study(space: Space, args: argparse.Namespace, run_dir: Path, storage: str, mirror=None) -> int:
    from ray import tune

    from moco.faults import FAULT_ENV, parse_fault
    from study.results import finished_trials, write_results, write_study_json
    from study.search import make_scheduler, make_searcher
    from study.breaker import StartFailureBreaker
    from study.console import Console, tune_callback, tune_verbosity
    from study.trial import TrialPlan, run_trial

    from study.cluster import driver_resources, follow_cluster, prepare
    from study.dataset_check import DatasetMissingOnCluster, check_for_plan
    from study.storage_probe import StorageNotShared

    try:
        cluster_plan = prepare(space.settings, storage, external=bool(args.address), wait_s=args.wait_for_nodes)
        if args.address:  # the dataset where the workers read it, staged once when it must be downloaded
            check_for_plan(space.base, cluster_plan)
    except (PlanError, StorageNotShared, DatasetMissingOnCluster) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    resources = cluster_plan.as_dict(space.num_trials)
    print(describe_plan(space, resources, str(run_dir)), flush=True)
    from study.optuna_storage import display, masked_argv

    optuna_storage = display(args.optuna_storage) if args.optuna_storage else None
    write_study_json(run_dir, space, status="running", resources=resources, command=masked_argv(sys.argv),
                     optuna_storage=optuna_storage)
    plan = TrialPlan(space=space, train_storage=f"{storage}/{run_dir.name}/train",
                     workers=resources["workers_per_trial"], cpus_per_worker=resources["cpus_per_worker"],
                     gpus_per_worker=resources["gpus_per_worker"], fault=parse_fault(os.environ.get(FAULT_ENV)))
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), driver_resources(cluster_plan.nodes))
    s = space.settings
    console = Console(space, done_before=len(finished_trials(run_dir)) if args.resume else 0)
    if mirror is None:
        console.watch_hint(run_dir)
    breaker = StartFailureBreaker(args.max_start_failures, trial_error)
    callbacks = [_tune_callback(run_dir, space, mirror), tune_callback(console, trial_error), breaker]
    run_config = tune.RunConfig(  # Tune's own table only with --verbose (verbose 0: Tune prints no status)
        name=run_dir.name, storage_path=storage, callbacks=callbacks, stop=breaker.stopper,
        failure_config=tune.FailureConfig(max_failures=1), verbose=tune_verbosity())
    experiment = f"{storage}/{run_dir.name}"
    if args.resume and tune.Tuner.can_restore(experiment):
        if not space.variants:  # the searcher pickled by Tune is rebound to this run's storage (study/search.py)
            from study.optuna_storage import open_storage, resolve
            from study.search import use_storage

            use_storage(run_dir.name, open_storage(resolve(args.optuna_storage, run_dir)))
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:  # the pickled callbacks may not survive; attach fresh ones
            local.get_run_config().callbacks = run_config.callbacks
            local.get_run_config().stop = breaker.stopper
    else:
        searcher, param_space, concurrent = make_searcher(space, run_dir, args.optuna_storage), {}, None
        if space.variants:  # a grid: Tune's own generator, its concurrency planned now
            param_space = {"variant": tune.grid_search(list(space.variants)), "seed": tune.grid_search(space.seeds)}
            concurrent = resources["max_concurrent"]
        else:  # a search: the concurrency follows the cluster's nodes as they come and go (study/cluster.py)
            searcher = follow_cluster(searcher, s, space.num_trials)
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config,
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, search_alg=searcher, scheduler=make_scheduler(space),
                num_samples=1 if space.variants else space.num_trials, max_concurrent_trials=concurrent,
                reuse_actors=False))
    interrupted = {"flag": False}

    def on_sigterm(signum, frame):  # Tune stops cleanly on SIGINT; treat SIGTERM the same way
        interrupted["flag"] = True
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        grid, interrupted["flag"] = None, True
    except Exception as err:  # noqa: BLE001 - report any crash of the study loop with the way back
        cause = next((e for e in _chain(err) if isinstance(e, (StorageError, OSError))), err)
        traceback.print_exc()
        print(f"error: the study stopped: {cause}\n[study] after fixing it, continue with:\n  "
              f"{resume_command(args, run_dir.name)}", file=sys.stderr, flush=True)
        return 1
    if grid is not None and not interrupted["flag"]:
        _record_grid(grid, run_dir, space)
    summary = write_results(run_dir, space)
    console.table()
    if breaker.tripped:
        write_study_json(run_dir, space, status="interrupted", resources=resources)
        print(f"error: {breaker.message()}\n[study] after fixing the cause, continue with:\n  "
              f"{resume_command(args, run_dir.name)}", file=sys.stderr, flush=True)
        return 1
    finished = len(finished_trials(run_dir))
    complete = finished >= space.num_trials and not interrupted["flag"]
    write_study_json(run_dir, space, status="finished" if complete else "interrupted", resources=resources,
                     optuna_storage=optuna_storage)
    print(f"[study] {finished}/{space.num_trials} trials finished; {json.dumps(summary, default=str)}")
    if not complete:
        print(f"[study] interrupted; continue with:\n  {resume_command(args, run_dir.name)}", flush=True)
        return 130
    if space.confirm is not None:
        from study.confirm_run import stage

        print(f"best config: {run_dir / 'best_config.yaml'}")
        return stage(space, args, run_dir, storage, resources, mirror)
    if not args.no_report:
        _report(run_dir)
    print(f"best config: {run_dir / 'best_config.yaml'}")
    del grid
    return 0


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _record_grid(grid, run_dir: Path, space: Space) -> None:
    """Record outcomes from Tune's final results for trials the callback missed (e.g. restored by --resume)."""
    from study.results import finished_trials, record_trial
    from study.search import trial_outcome

    done = finished_trials(run_dir)
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if not trial_id or trial_id in done:
            continue
        if result.error is not None:
            record_trial(run_dir, trial_id, status="errored", error=str(result.error).splitlines()[0][:500])
        elif metrics:
            epochs = space.trial_config(metrics.get("config", {})).epochs
            record_trial(run_dir, trial_id, status=trial_outcome(metrics, epochs, error=False),
                         error=metrics.get("error"))


def _report(run_dir: Path) -> None:
    try:
        from analysis.report import build_report
    except ImportError:
        print("[study] analysis package not available; skipping the report")
        return
    try:
        path = build_report([run_dir])
        print(f"report: {path}")
    except Exception as err:  # noqa: BLE001 - the study's results stay valid when the report fails
        print(f"[study] the report failed ({err}); run `python -m analysis.report {run_dir}` to retry")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        from moco.catalog import listing

        print(listing())
        return 0
    try:
        space, name = check_args(args)
        remote = "://" in args.storage
        if not remote and Path(args.storage).exists() and not Path(args.storage).is_dir():
            raise StudyError(f"--storage {args.storage}: a file, not a folder")
        storage = args.storage.rstrip("/") if remote else str(Path(args.storage).resolve())
        # With remote storage the study's own files are staged locally and mirrored (study/mirror.py).
        run_dir = Path("runs").resolve() / ".remote" / name if remote else Path(storage) / name
        mirror = None
        if remote and not args.dry_run:
            from study.mirror import Mirror

            mirror = Mirror(storage, name, run_dir)
        where = mirror.uri if mirror else str(run_dir)
        exists = mirror.exists() if mirror else run_dir.exists()
        if not args.dry_run:
            if args.resume_if_exists:  # a scheduler's restart (KubeRay backoffLimit, SLURM --requeue)
                args.resume = mirror.exists() if mirror else (run_dir / "study.json").is_file()
                exists = exists and args.resume
                print(f"[study] --resume-if-exists: {'resuming' if args.resume else 'starting'} {where}", flush=True)
            if exists and not (args.resume or args.confirm):
                raise StudyError(f"study {where} already exists: continue it with --resume, "
                                 "or choose another --name")
            found = mirror.exists() if mirror else (run_dir / "study.json").is_file()
            if (args.resume or args.confirm) and not found:
                flag = "--confirm" if args.confirm else "--resume"
                raise StudyError(f"{flag}: no study named {name!r} under {storage} (no {where}/study.json)")
        if args.dry_run:
            check_url(args.optuna_storage)
            return dry_run(space, args, run_dir)
        check_address(args.address)
        if args.address is None:
            check_dataset(space.base)
        _check_writable(run_dir.parent)
        if args.address is None:
            plan_resources(space, float(os.cpu_count() or 1), _local_gpus())
        if mirror is not None:
            shutil.rmtree(run_dir, ignore_errors=True)  # the staging copy is rebuilt from the remote folder
            mirror.pull() if args.resume or args.confirm else mirror.push()
        run_dir.mkdir(parents=True, exist_ok=True)
        args.optuna_storage = _optuna_storage(args, run_dir)
        if args.confirm:  # refused before Ray starts: not finished, another base config, nothing to confirm
            from study.confirm import preflight

            preflight(space, run_dir)
    except (*CHECK_ERRORS, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: --storage {args.storage}: {err}", file=sys.stderr)
        return 2
    return run_study(space, args, run_dir, storage, mirror)


def _optuna_storage(args: argparse.Namespace, run_dir: Path) -> str | None:
    """The checked --optuna-storage URL (on resume, the one study.json recorded), its database opened once here."""
    from study.optuna_storage import for_study, open_storage

    recorded = json.loads((run_dir / "study.json").read_text()).get("optuna_storage") if args.resume else None
    url = for_study(args.optuna_storage, recorded, args.resume)
    if url is not None:
        open_storage(url)
    return url


def dry_run(space: Space, args: argparse.Namespace, run_dir: Path) -> int:
    """Print the plan; problems that only matter on this machine (data, GPUs) are notes, not errors."""
    notes = []
    try:
        check_dataset(space.base)
    except DatasetNotFoundError as err:
        notes.append(f"note: the dataset is not on this machine; the cluster that runs the study needs it.\n{err}")
    cpus, gpus = float(os.cpu_count() or 1), _local_gpus()
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


def _local_gpus() -> float:
    import torch

    return float(torch.cuda.device_count())


def _check_writable(storage: Path) -> None:
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StudyError(f"--storage {storage} is not writable: {err.strerror or err}") from None


if __name__ == "__main__":
    sys.exit(main())
