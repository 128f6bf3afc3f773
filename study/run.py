"""Run a hyperparameter study: ``python study/run.py --space hardneg.yaml``.

Searches the training config with Ray Tune + Optuna (TPE by default) and ASHA early stopping on epochs; every trial
is a Ray Train run. The first trial is always the MoCo v2 baseline. Results land in ``<storage>/<name>/``
(``study.json``, ``trials.csv``, ``history.csv``, ``best_config.yaml``, the Optuna SQLite study and a report).
Interrupt with Ctrl-C (or SIGTERM) and continue later with ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python study/run.py` puts study/ on sys.path, not the project root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moco.import_probe import record_modules  # noqa: E402
from moco.sources import DatasetNotFoundError, check_dataset  # noqa: E402
from moco.vocabulary import EPOCH, REPEATED  # noqa: E402
from study.cli import (  # noqa: E402
    CHECK_ERRORS, StudyError, build_parser, check_address, check_args, check_writable, describe_plan, dry_run,
    local_gpus, plan_resources, resume_command)
from study.optuna_storage import check_url  # noqa: E402
from study.plan import DRIVER_RESOURCE, PlanError  # noqa: E402
from study.space import Space  # noqa: E402

LIVE_FILES = ("trial_status.json", "results.jsonl")  # mirrored at every trial start and epoch report


def _tune_callback(run_dir: Path, space: Space, mirror=None):
    from study.callbacks import TrialFiles, trial_number
    from study.results import append_result, recorded_epochs

    class StudyFiles(TrialFiles):
        """Also records every epoch report as it happens, and rewrites the result files every 30 s."""

        live_files = LIVE_FILES  # (the searcher mirrors optuna.db itself, after each write: _optuna_after_write)

        def __init__(self):
            super().__init__(run_dir, lambda: _write(run_dir, space, mirror), mirror)
            self._last_write = 0.0
            self._recorded = recorded_epochs(run_dir)  # (trial id, epoch) already in results.jsonl

        def max_epochs(self, trial) -> int:
            return space.trial_config(trial.config).epochs

        def start_fields(self, trial) -> dict:
            return {"number": trial_number(trial, grid=bool(space.variants))}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = (trial.trial_id, int(result.get(EPOCH) or 0))
            if result.get(REPEATED) and key in self._recorded:
                return  # a resumed run's repeat of its checkpoint's epoch: recorded before the study stopped
            self._recorded.add(key)
            append_result(run_dir, trial.trial_id, result)
            if mirror is not None:  # every epoch report reaches the storage before the next one
                mirror.push(LIVE_FILES)

        def on_step_end(self, iteration, trials, **info):
            if time.time() - self._last_write > 30:
                self._last_write = time.time()
                self.write()

    return StudyFiles()


class StorageError(RuntimeError):
    """The study's storage cannot be written (full, read-only, gone); results already written stay intact."""


def _optuna_after_write(mirror, optuna_storage: str | None):
    """What the searcher calls after each write to its database (study.search.use_storage): with remote storage and
    the default SQLite file, copy ``optuna.db`` to the storage at once."""
    if mirror is None or optuna_storage is not None:
        return None
    from study.optuna_storage import DEFAULT_FILE

    return functools.partial(mirror.push, (DEFAULT_FILE,))


def _write(run_dir: Path, space: Space, mirror=None) -> None:
    from study.results import write_results

    try:
        write_results(run_dir, space)
        if mirror is not None:
            mirror.push()
    except OSError as err:
        raise StorageError(f"cannot write the study's results to {run_dir}: {err.strerror or err}; the files "
                           "written before this error are intact") from err


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
    from study.results import finished_rows, finished_trials, write_results, write_study_json
    from study.search import make_scheduler, make_searcher
    from study.breaker import StartFailureBreaker
    from study.callbacks import trial_error
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
    console = Console(space, finished=finished_rows(run_dir, space) if args.resume else ())
    if mirror is None:
        console.watch_hint(run_dir)
    breaker = StartFailureBreaker(args.max_start_failures, trial_error)
    callbacks = [_tune_callback(run_dir, space, mirror), tune_callback(console, trial_error), breaker]
    run_config = tune.RunConfig(  # Tune's own table only with --verbose (verbose 0: Tune prints no status)
        name=run_dir.name, storage_path=storage, callbacks=callbacks, stop=breaker.stopper,
        failure_config=tune.FailureConfig(max_failures=1), verbose=tune_verbosity())
    experiment = f"{storage}/{run_dir.name}"
    after_write = _optuna_after_write(mirror, args.optuna_storage)
    if args.resume and tune.Tuner.can_restore(experiment):
        if not space.variants:  # the searcher pickled by Tune is rebound to this run's storage (study/search.py)
            from study.optuna_storage import open_storage, resolve
            from study.search import use_storage

            use_storage(run_dir.name, open_storage(resolve(args.optuna_storage, run_dir)), after_write)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:  # the pickled callbacks may not survive; attach fresh ones
            local.get_run_config().callbacks = run_config.callbacks
            local.get_run_config().stop = breaker.stopper
    else:
        if space.variants:  # a grid of variants x seeds, seed-major, its concurrency planned now
            from ray.tune.search.basic_variant import BasicVariantGenerator

            # Tune's grid_search would vary the seed fastest; in this order an interrupted grid holds every variant
            # at each seed it finished, paired by seed
            points = [{"seed": seed, "variant": variant} for seed in space.seeds for variant in space.variants]
            searcher = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=resources["max_concurrent"])
            param_space = {"seed": tune.choice(space.seeds), "variant": tune.choice(list(space.variants))}
        else:  # a search: the concurrency follows the cluster's nodes as they come and go (study/cluster.py)
            searcher = follow_cluster(make_searcher(space, run_dir, args.optuna_storage, after_write), s,
                                      space.num_trials)
            param_space = {}
        # reuse_actors stays off: a pruned trial's Train run keeps the trainable's thread busy, so Tune's reset of a
        # reused actor fails ("Trainable runner reuse requires reset_config() ...") and the next trial errors (tried
        # with Ray 2.60 on the default study, 2026-12-04)
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config,
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, search_alg=searcher, scheduler=make_scheduler(space),
                num_samples=space.num_trials, reuse_actors=False))
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
    record_modules("study driver")  # after the whole search: it trains nothing, so it must not have loaded torch
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
    """Record outcomes from Tune's final results for trials the callback missed (e.g. restored by --resume). A trial
    Tune left unfinished (the study was stopped by Ctrl-C while it trained) has no outcome yet: ``--resume`` continues
    it, so it stays running (recorded as pruned once, its shorter last epoch mistaken for a scheduler's stop)."""
    from ray.tune import ExperimentAnalysis

    from study.results import finished_trials, record_trial
    from study.search import trial_outcome

    done = finished_trials(run_dir)
    try:
        trials = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    except Exception as err:  # noqa: BLE001 - without Tune's own states nothing is recorded that could be wrong
        print(f"warning: Tune's trial states could not be read ({err}); outcomes stay as the callback saw them",
              file=sys.stderr)
        return
    ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if not trial_id or trial_id in done or trial_id not in ended:
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
            return dry_run(space, run_dir)
        check_address(args.address)
        if args.address is None:
            check_dataset(space.base)
        check_writable(run_dir.parent)
        if args.address is None:
            plan_resources(space, float(os.cpu_count() or 1), local_gpus())
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


if __name__ == "__main__":
    sys.exit(main())
