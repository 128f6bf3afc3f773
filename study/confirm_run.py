"""Running the confirmation stage planned by ``study/confirm.py``, and its files.

A Tune experiment in ``<run_dir>/confirm/``: a grid over candidates x seeds, no searcher, no scheduler, each run a Ray
Train run through :func:`study.trial.run_trial` (``TrialPlan.configs``). Running it again continues it: Tune restores
the experiment (finished runs are kept, unfinished and errored ones resume from their checkpoints). As runs end it
records them (``confirm/trial_status.json``, with :func:`study.results.record_trial`) and rewrites

- ``confirm.csv``: one row per candidate and seed: candidate, source trial, search rank and value, seed, params (JSON),
  every endpoint and its raw-pixel value (``raw_<name>``), epochs, compute, images seen, wall seconds, status;
- ``confirm.json``: the settings, the candidates, the search's seeds, the budgets of the search and of the runs.

No torch here; Ray only inside the functions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from moco.vocabulary import COMPUTE, EPOCH, ERRORED, FINAL_METRICS, FINISHED, PENDING, RUNNING, raw_name
from study.confirm import CONFIRM_DIR, CSV, JSON, Confirmation, ConfirmError, NothingToConfirm, plan
from study.params import SpaceError
from study.space import Space

ENDPOINTS = (*FINAL_METRICS, *(raw_name(m) for m in FINAL_METRICS))
RUN_KEYS = (*ENDPOINTS, EPOCH, COMPUTE, "images_seen", "time_total_s", "world_size", "diverged", "error")


def write_csv(run_dir: Path, job: Confirmation) -> pd.DataFrame:
    """Rewrite ``confirm.csv`` from the runs' record (``confirm/trial_status.json``): one row per candidate x seed."""
    from study.results import STATUS_FILE, _read_json, atomic_write

    records = _read_json(run_dir / CONFIRM_DIR / STATUS_FILE)
    latest: dict[tuple[str, int], tuple[str, dict]] = {}
    for trial_id, record in records.items():
        params = record.get("params", {})
        key = (params.get("candidate"), params.get("seed"))
        if key not in latest or record.get("status") in FINISHED:
            latest[key] = (trial_id, record)
    rows = []
    for c in job.candidates:
        for seed in job.seeds:
            trial_id, record = latest.get((c.name, seed), (None, {}))
            result = record.get("result") or {}
            row = {"candidate": c.name, "source_trial": c.source_trial, "search_rank": c.search_rank,
                   "search_value": c.search_value, "seed": seed, "params": json.dumps(c.params, sort_keys=True),
                   **{k: result.get(k, math.nan) for k in ENDPOINTS},
                   "epochs": result.get(EPOCH), COMPUTE: result.get(COMPUTE), "images_seen": result.get("images_seen"),
                   "wall_s": result.get("time_total_s"), "workers": result.get("world_size"),
                   "status": record.get("status", PENDING), "trial_id": trial_id, "error": record.get("error") or ""}
            rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write(run_dir / CSV, table.to_csv(index=False))
    return table


def _callback(run_dir: Path, job: Confirmation, mirror=None):
    from study.callbacks import TrialFiles

    class ConfirmFiles(TrialFiles):
        """Also records each run's endpoints as it ends, says what each run did, and rewrites confirm.csv."""

        noun = "run"

        def max_epochs(self, trial) -> int:
            return job.configs[trial.config["candidate"]]["epochs"]

        def end_fields(self, last: dict[str, Any]) -> dict[str, Any]:
            return {"result": {k: last[k] for k in RUN_KEYS if k in last}}

        def announce(self, trial, outcome: str, detail: str | None = None) -> None:
            name = f"[confirm] {trial.config['candidate']} seed {trial.config['seed']}"
            if outcome == RUNNING:
                print(f"{name} ({trial.trial_id}) started", flush=True)
            elif outcome == ERRORED:
                print(f"{name} errored: {detail}", flush=True)
            else:
                value = (trial.last_result or {}).get(job.decision_endpoint, math.nan)
                print(f"{name} {outcome}: {job.decision_endpoint} = {value:.2f}", flush=True)

    return ConfirmFiles(run_dir / CONFIRM_DIR, lambda: _write(run_dir, job, mirror), mirror)


def _write(run_dir: Path, job: Confirmation, mirror=None) -> pd.DataFrame:
    table = write_csv(run_dir, job)
    if mirror is not None:
        mirror.push((CSV, JSON))
    return table


def _write_json(run_dir: Path, job: Confirmation, space: Space, status: str) -> None:
    from study.results import atomic_write, now

    doc = {**job.describe(space), "status": status, "updated": now()}
    atomic_write(run_dir / JSON, json.dumps(doc, indent=2, default=str))


# --- running ----------------------------------------------------------------------------------------------------------
def run(space: Space, job: Confirmation, run_dir: Path, storage: str, resources: dict[str, Any],
        mirror=None) -> bool:
    """Run (or continue) the confirmation on the connected Ray cluster; True when every run has finished."""
    from ray import tune

    from study.results import finished_trials, record_trial
    from study.cluster import driver_resources
    from study.search import trial_outcome
    from study.console import tune_verbosity
    from study.trial import TrialPlan, run_trial

    experiment = f"{storage}/{run_dir.name}"
    print(f"[confirm] {len(job.candidates)} configurations x seeds {job.seeds} = {len(job.runs)} runs in "
          f"{experiment}/{CONFIRM_DIR}: " + ", ".join(f"{c.name} (trial {c.source_trial or '-'}, "
                                                       f"{job.configs[c.name]['epochs']} epochs)"
                                                       for c in job.candidates), flush=True)
    _write_json(run_dir, job, space, "running")
    _write(run_dir, job, mirror)
    plan_ = TrialPlan(space=space, train_storage=f"{experiment}/{CONFIRM_DIR}/train",
                      workers=resources["workers_per_trial"], cpus_per_worker=resources["cpus_per_worker"],
                      gpus_per_worker=resources["gpus_per_worker"], configs=job.configs)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan_), driver_resources())
    callbacks = [_callback(run_dir, job, mirror)]
    run_config = tune.RunConfig(name=CONFIRM_DIR, storage_path=experiment, callbacks=callbacks,
                                verbose=tune_verbosity(),
                                failure_config=tune.FailureConfig(max_failures=1))
    if tune.Tuner.can_restore(f"{experiment}/{CONFIRM_DIR}"):
        tuner = tune.Tuner.restore(f"{experiment}/{CONFIRM_DIR}", trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:  # the pickled callbacks may not survive; attach fresh ones
            local.get_run_config().callbacks = callbacks
    else:
        tuner = tune.Tuner(trainable, run_config=run_config,
                           param_space={"candidate": tune.grid_search([c.name for c in job.candidates]),
                                        "seed": tune.grid_search(job.seeds)},
                           tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False,
                                                       max_concurrent_trials=resources["max_concurrent"]))
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        grid = None
    if grid is not None:  # runs Tune finished before a crash or a resume, which the callback never saw
        done = finished_trials(run_dir / CONFIRM_DIR)
        for result in grid:
            metrics, config = result.metrics or {}, result.config or {}
            trial_id = metrics.get("trial_id")
            if not trial_id or trial_id in done or "candidate" not in config:
                continue
            status = "errored" if result.error is not None else trial_outcome(
                metrics, job.configs[config["candidate"]]["epochs"], error=False)
            record_trial(run_dir / CONFIRM_DIR, trial_id, params=dict(config), status=status,
                         result={k: metrics[k] for k in RUN_KEYS if k in metrics})
    table = _write(run_dir, job, mirror)
    complete = bool(len(table)) and table["status"].isin(FINISHED).all()
    _write_json(run_dir, job, space, "finished" if complete else "interrupted")
    if mirror is not None:
        mirror.push((CSV, JSON))
    counts = table["status"].value_counts().to_dict()
    print(f"[confirm] {sum(counts.get(s, 0) for s in FINISHED)}/{len(table)} runs finished ({counts}); "
          f"{run_dir / CSV}", flush=True)
    if counts.get("errored"):
        print(f"[confirm] {counts['errored']} run(s) errored and are left out of the statistics; running the "
              "confirmation again (--confirm) retries them from their checkpoints", flush=True)
    return complete


def stage(space: Space, args, run_dir: Path, storage: str, resources: dict[str, Any] | None, mirror=None) -> int:
    """The confirmation stage of ``study/run.py`` (after a search, or ``--confirm``), then the report.

    Returns 0; 130 when interrupted (with the command that continues it); 2 when it cannot start (the search's report
    is still written)."""

    from study.cli import resume_command
    from study.cluster import plan_on_cluster
    from study.plan import PlanError
    from study.run import _report

    if resources is None:
        from study.dataset_check import DatasetMissingOnCluster, check_for_plan

        try:
            cluster_plan = plan_on_cluster(space.settings)
            if args.address:  # --confirm on its own: the dataset checked (and staged) as before a search
                check_for_plan(space.base, cluster_plan)
            resources = cluster_plan.as_dict(space.num_trials)
        except (PlanError, DatasetMissingOnCluster) as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
    try:
        job = plan(space, run_dir)
    except (ConfirmError, SpaceError) as err:
        # Right after a search, nothing to confirm is an outcome of the search, not a failed command.
        skipped = isinstance(err, NothingToConfirm) and not args.confirm
        if skipped:
            print("[confirm] skipped: no trial besides the baseline completed in the search (the others were "
                  "stopped early, diverged or failed), so there is nothing to confirm against it; a longer search "
                  "(--num-samples) gives it candidates", flush=True)
        else:
            print(f"error: {err}", file=sys.stderr, flush=True)
        if not args.no_report:
            _report(run_dir)
        return 0 if skipped else 2
    if not run(space, job, run_dir, storage, resources, mirror):
        finished_search = argparse.Namespace(**{**vars(args), "confirm": True})  # the search is done: --confirm
        print(f"[confirm] interrupted; continue with:\n  {resume_command(finished_search, run_dir.name)}", flush=True)
        return 130
    if not args.no_report:
        _report(run_dir)
    return 0
