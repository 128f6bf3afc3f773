"""The files a study leaves for the analysis package, written from Tune's own per-trial files.

Everything is rebuilt from the trial folders Tune writes (``params.json`` and ``result.json``, one JSON line per
epoch report) plus the status this module records as trials end, so the files can be rewritten at any time (during
the study, at its end, after a crash) and never disagree with what Tune persisted:

- ``study.json``: the resolved space, base config, command, seed, versions, git commit, start/end times, status;
- ``trials.csv``: one row per trial (parameters, status, final and best metric, epochs, compute and budget, wall
  time, resources);
- ``history.csv``: one row per trial-epoch with every reported metric;
- ``best_config.yaml``: the best trial's training config, runnable with ``python -m moco.train --config``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moco.vocabulary import COMPLETED, COMPUTE, DIVERGED, EPOCH, FINISHED, HISTORY_KEYS, PENDING, PRUNED, RUNNING
from study.space import Space

STATUS_FILE = "trial_status.json"  # per trial: params, number, status, error
RESULTS_FILE = "results.jsonl"  # one line per epoch report, appended as reports arrive
STUDY_FILE = "study.json"  # the study's settings, plan (``resources``) and status


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """The versions that matter, read from the installed packages' metadata: importing torch here would cost the
    study driver, which trains nothing, about 400 MB."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), **{name: installed(name) for name in ("torch", "ray", "optuna")},
            "pandas": pd.__version__, "platform": platform.platform()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_study_json(run_dir: Path, space: Space, *, status: str, command: list[str] | None = None,
                     resources: dict | None = None, optuna_storage: str | None = None) -> None:
    """Create or update ``study.json``; ``started`` and ``command`` of the first run are kept on resume.
    ``optuna_storage``: a non-default Optuna storage URL, password hidden (study/optuna_storage.py)."""
    path = run_dir / STUDY_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    s = space.settings
    doc = {
        "name": run_dir.name, "kind": space.kind, "metric": s.metric, "mode": s.mode,
        "space": {p.name: {"type": p.type, "low": p.low, "high": p.high, "log": p.log, "choices": p.choices,
                           "value": p.value, "when": p.when} for p in space.params},
        "variants": space.variants, "seeds": space.seeds, "base_config": space.base.to_dict(),
        "base": {"config": space.base_name, "overrides": space.base_overrides}, "space_file": space.source,
        "num_samples": space.num_trials, "searcher": s.searcher if not space.variants else "grid",
        "scheduler": s.scheduler,
        "settings": {**space.describe()["study"], "time_attr": COMPUTE, "max_t": space.max_budget},
        "budget": {COMPUTE: space.budget, "max": space.max_budget}, "seed": s.seed,
        "command": previous.get("command") or " ".join(command or sys.argv), "resumes": previous.get("resumes", 0),
        "versions": previous.get("versions") or versions(), "git_commit": previous.get("git_commit") or git_commit(),
        "started": previous.get("started") or now(), "ended": now() if status != RUNNING else None,
        "status": status, "resources": resources or previous.get("resources"),
        "optuna_storage": optuna_storage or previous.get("optuna_storage"),
    }
    if status == RUNNING and previous:
        doc["resumes"] = previous.get("resumes", 0) + 1
    atomic_write(path, json.dumps(doc, indent=2, default=str))


# --- the study's own record of trials (written by the Tune callback in study/run.py as events happen) -----------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def record_trial(run_dir: Path, trial_id: str, **fields: Any) -> None:
    """Update one trial's entry (params, number, status, error) in ``trial_status.json`` (atomic rewrite)."""
    path = run_dir / STATUS_FILE
    records = _read_json(path)
    records[trial_id] = {**records.get(trial_id, {}), **fields}
    atomic_write(path, json.dumps(records, indent=1, default=str))


def append_result(run_dir: Path, trial_id: str, result: dict[str, Any]) -> None:
    """Append one epoch report to ``results.jsonl`` and flush it to disk before returning."""
    row = {"trial_id": trial_id, **{k: result.get(k) for k in HISTORY_KEYS if k in result}}
    line = json.dumps(row, default=str) + "\n"
    path = run_dir / RESULTS_FILE
    with open(path, "a+b") as handle:
        if path.stat().st_size:  # a last line cut by a crash is ended first: skipped, not glued onto this row
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = "\n" + line
        handle.write(line.encode())
        handle.flush()
        os.fsync(handle.fileno())


def finished_trials(run_dir: Path) -> dict[str, dict]:
    """Trials whose outcome is final (completed, pruned, diverged or errored)."""
    return {k: v for k, v in _read_json(run_dir / STATUS_FILE).items()
            if v.get("status") in FINISHED}


def recorded_epochs(run_dir: Path) -> set[tuple[str, int]]:
    """(trial id, epoch) of every epoch report in ``results.jsonl``."""
    return {(trial_id, int(r.get(EPOCH) or 0)) for trial_id, rows in _read_results(run_dir).items() for r in rows}


def _read_results(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    path = run_dir / RESULTS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            out.setdefault(row["trial_id"], []).append(row)
    return out


def planned_cpus_per_worker(run_dir: Path, space: Space) -> float:
    """The CPUs each worker was given: the plan's (``resources`` in ``study.json``, recorded when the plan is made;
    study/plan.py gives GPU workers several when ``cpus_per_worker`` is unset), else the space's setting, else 1."""
    resources = _read_json(run_dir / STUDY_FILE).get("resources") or {}
    return float(resources.get("cpus_per_worker") or space.settings.cpus_per_worker or 1)


def collect(run_dir: Path, space: Space) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) frames from the study's own trial record and epoch results."""
    records = _read_json(run_dir / STATUS_FILE)
    all_results = _read_results(run_dir)
    baseline = space.baseline_point()
    s = space.settings
    cpus_per_worker = planned_cpus_per_worker(run_dir, space)
    trials, history = [], []
    for trial_id, record in records.items():
        params = record.get("params", {})
        results = all_results.get(trial_id, [])
        by_epoch: dict[int, dict] = {}
        for r in results:  # a resumed trial can repeat an epoch; keep the latest report of each epoch
            by_epoch[int(r.get("epoch", r.get("training_iteration", 0)))] = r
        for epoch in sorted(by_epoch):
            r = by_epoch[epoch]
            history.append({"trial_id": trial_id, **{k: r.get(k) for k in HISTORY_KEYS}, "epoch": epoch})
        last = by_epoch[max(by_epoch)] if by_epoch else {}
        cfg = space.trial_config(params)
        status = record.get("status") or (RUNNING if results else PENDING)
        metric_values = [r[s.metric] for r in by_epoch.values()
                         if isinstance(r.get(s.metric), (int, float)) and not r.get("diverged")]
        best = (max if s.mode == "max" else min)(metric_values) if metric_values else math.nan
        wall = float(last.get("time_total_s", 0.0) or 0.0)
        workers = max(int(last.get("world_size", 1) or 1), 1)
        cpus = workers * cpus_per_worker
        gpus = workers * s.gpus_per_worker
        row = {
            "trial_id": trial_id, "trial_number": record.get("number", -1),
            "is_baseline": (params.get("variant") == "baseline") if space.variants else
            (baseline is not None and all(params.get(k) == v for k, v in baseline.items())),
            "status": status, "variant": params.get("variant"), "seed": cfg.seed,
            **{f"param_{p.name}": params.get(p.name) for p in space.params},
            s.metric: last.get(s.metric, math.nan) if not last.get("diverged") else math.nan,
            f"best_{s.metric}": best,
            "final_val_knn_top1": last.get("final_val_knn_top1"), "test_knn_top1": last.get("test_knn_top1"),
            "linear_top1": last.get("linear_top1"), "epochs": int(last.get("epoch", 0) or 0),
            "max_epochs": cfg.epochs, COMPUTE: last.get(COMPUTE), "budget": cfg.compute,
            "images_seen": last.get("images_seen"), "wall_s": wall,
            "cpus": cpus, "gpus": gpus, "cpu_hours": wall * cpus / 3600, "gpu_hours": wall * gpus / 3600,
            "node_id": last.get("node_id"),
            "nodes": ";".join(sorted({str(r.get("node_id")) for r in by_epoch.values() if r.get("node_id")})),
            "error": record.get("error") or last.get("error") or "",
        }
        trials.append(row)
    trials_df = pd.DataFrame(trials)
    if len(trials_df):
        trials_df = trials_df.sort_values("trial_number").reset_index(drop=True)
    return trials_df, pd.DataFrame(history)


def finished_rows(run_dir: Path, space: Space) -> list[dict[str, Any]]:
    """The trials of ``run_dir`` whose outcome is final, as the console's rows (``Console(finished=...)``): trial_id,
    number, status, params, max_epochs, epoch, compute, metric (their last report's), diverged."""
    trials, _ = collect(run_dir, space)
    if trials.empty:
        return []
    names = [p.name for p in space.params] if space.params else ["variant", "seed"]
    rows = []
    for _, t in trials[trials.status.isin(FINISHED)].iterrows():
        params = {n: t.get(n if not space.params else f"param_{n}") for n in names}
        metric = t.get(space.settings.metric)
        rows.append({"trial_id": str(t.trial_id), "number": int(t.trial_number), "status": t.status,
                     "params": {k: v for k, v in _plain(params).items() if not _missing(v)},
                     "max_epochs": int(t.max_epochs), "epoch": int(t.epochs),
                     COMPUTE: int(t[COMPUTE]) if not _missing(t[COMPUTE]) else 0,
                     "metric": None if _missing(metric) else float(metric), "diverged": t.status == DIVERGED})
    return rows


def best_trial(trials: pd.DataFrame, metric: str, maximize: bool = True) -> pd.Series | None:
    """The completed trial with the best finite ``metric`` (ties: the lowest ``trial_number``); when no trial
    completed, the best of the completed and pruned ones; None when there is none. The one choice of the best
    trial: ``best_config.yaml`` (here) and the report (``analysis.load.Study.best_trial``) both use it."""
    if trials.empty or metric not in trials.columns:
        return None
    order = trials.sort_values("trial_number", kind="stable") if "trial_number" in trials.columns else trials
    values = pd.to_numeric(order[metric], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values)
    for statuses in ((COMPLETED,), (COMPLETED, PRUNED)):
        pool = np.flatnonzero(finite & order["status"].isin(statuses).to_numpy())
        if len(pool):
            return order.iloc[pool[int(np.argmax(values[pool]) if maximize else np.argmin(values[pool]))]]
    return None


def write_results(run_dir: Path, space: Space) -> dict[str, Any]:
    """Rewrite ``trials.csv``, ``history.csv`` and ``best_config.yaml``; return a short summary."""
    trials, history = collect(run_dir, space)
    atomic_write(run_dir / "trials.csv", trials.to_csv(index=False))
    atomic_write(run_dir / "history.csv", history.to_csv(index=False))
    best = best_trial(trials, space.settings.metric, space.settings.mode == "max")
    summary: dict[str, Any] = {"trials": len(trials),
                               "by_status": trials.status.value_counts().to_dict() if len(trials) else {}}
    if best is not None:
        params = {p.name: best[f"param_{p.name}"] for p in space.params if not _missing(best[f"param_{p.name}"])}
        if space.variants:
            params = {"variant": best["variant"], "seed": int(best["seed"])}
        cfg = space.trial_config(_plain(params))
        import yaml

        atomic_write(run_dir / "best_config.yaml",
                     f"# best trial {best['trial_id']}: {space.settings.metric} = {best[space.settings.metric]:.3f}\n"
                     + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary.update(best_trial=best["trial_id"], best_value=float(best[space.settings.metric]),
                       best_params=_plain(params))
    baseline = trials[trials.is_baseline] if len(trials) else trials
    if len(baseline):
        summary["baseline_value"] = float(baseline[space.settings.metric].iloc[0])
    return summary


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars from pandas -> Python scalars (TrainConfig coerces 4096.0 to 4096 itself)."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in params.items()}
