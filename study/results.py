"""The files a study leaves for the analysis package, written from Tune's own per-trial files.

Everything is rebuilt from the trial folders Tune writes (``params.json`` and ``result.json``, one JSON line per
epoch report) plus the status this module records as trials end, so the files can be rewritten at any time (during
the study, at its end, after a crash) and never disagree with what Tune persisted:

- ``study.json``: the resolved space, base config, command, seed, versions, git commit, start/end times, status;
- ``trials.csv``: one row per trial (parameters, status, final and best metric, epochs, wall time, resources);
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

import pandas as pd

from study.space import Space

STATUS_FILE = "trial_status.json"
HISTORY_KEYS = ("epoch", "loss", "lr", "momentum", "images_per_s", "epoch_s", "data_share", "val_knn_top1",
                "pos_sim", "neg_sim_q10", "neg_sim_q50", "neg_sim_q90", "filtered_frac", "kept_negatives",
                "false_neg_rate", "alignment", "uniformity", "images_seen", "ratio", "threshold",
                "final_val_knn_top1", "test_knn_top1", "linear_top1", "time_total_s", "node_id", "world_size",
                "diverged")


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
    import optuna
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "pandas": pd.__version__, "platform": platform.platform()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_study_json(run_dir: Path, space: Space, *, status: str, command: list[str] | None = None,
                     resources: dict | None = None) -> None:
    """Create or update ``study.json``; ``started`` and ``command`` of the first run are kept on resume."""
    path = run_dir / "study.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    s = space.settings
    doc = {
        "name": run_dir.name, "kind": space.kind, "metric": s.metric, "mode": s.mode,
        "space": {p.name: {"type": p.type, "low": p.low, "high": p.high, "log": p.log, "choices": p.choices,
                           "value": p.value, "when": p.when} for p in space.params},
        "variants": space.variants, "seeds": space.seeds, "base_config": space.base.to_dict(),
        "base": {"config": space.base_name, "overrides": space.base_overrides}, "space_file": space.source,
        "num_samples": space.num_trials, "searcher": s.searcher if not space.variants else "grid",
        "scheduler": s.scheduler, "settings": space.describe()["study"], "seed": s.seed,
        "command": previous.get("command") or " ".join(command or sys.argv), "resumes": previous.get("resumes", 0),
        "versions": previous.get("versions") or versions(), "git_commit": previous.get("git_commit") or git_commit(),
        "started": previous.get("started") or now(), "ended": now() if status != "running" else None,
        "status": status, "resources": resources or previous.get("resources"),
    }
    if status == "running" and previous:
        doc["resumes"] = previous.get("resumes", 0) + 1
    atomic_write(path, json.dumps(doc, indent=2, default=str))


# --- trial status (recorded as trials end) -------------------------------------------------------------------------
def record_status(run_dir: Path, trial_id: str, status: str, error: str | None = None) -> None:
    path = run_dir / STATUS_FILE
    statuses = json.loads(path.read_text()) if path.is_file() else {}
    statuses[trial_id] = {"status": status, "error": error}
    atomic_write(path, json.dumps(statuses, indent=1))


def _read_results(trial_dir: Path) -> list[dict[str, Any]]:
    rows = []
    path = trial_dir / "result.json"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
    return rows


def _trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "params.json").is_file())


def collect(run_dir: Path, space: Space) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) frames from the trial folders under ``run_dir``."""
    statuses = json.loads((run_dir / STATUS_FILE).read_text()) if (run_dir / STATUS_FILE).is_file() else {}
    baseline = space.baseline_point()
    s = space.settings
    trials, history = [], []
    for trial_dir in _trial_dirs(run_dir):
        params = json.loads((trial_dir / "params.json").read_text())
        results = _read_results(trial_dir)
        trial_id = results[-1]["trial_id"] if results else _trial_id_from_dir(trial_dir)
        by_epoch: dict[int, dict] = {}
        for r in results:  # a resumed trial can repeat an epoch; keep the latest report of each epoch
            by_epoch[int(r.get("epoch", r.get("training_iteration", 0)))] = r
        for epoch in sorted(by_epoch):
            r = by_epoch[epoch]
            history.append({"trial_id": trial_id, **{k: r.get(k) for k in HISTORY_KEYS}, "epoch": epoch})
        last = by_epoch[max(by_epoch)] if by_epoch else {}
        cfg = space.trial_config(params)
        recorded = statuses.get(trial_id, {})
        status = recorded.get("status") or ("running" if results else "pending")
        metric_values = [r[s.metric] for r in by_epoch.values()
                         if isinstance(r.get(s.metric), (int, float)) and not r.get("diverged")]
        best = (max if s.mode == "max" else min)(metric_values) if metric_values else math.nan
        wall = float(last.get("time_total_s", 0.0) or 0.0)
        workers = max(int(last.get("world_size", 1) or 1), 1)
        cpus = workers * (s.cpus_per_worker or 1)
        gpus = workers * s.gpus_per_worker
        row = {
            "trial_id": trial_id, "trial_number": _dir_parts(trial_dir)[1],
            "is_baseline": (params.get("variant") == "baseline") if space.variants else
            (baseline is not None and all(params.get(k) == v for k, v in baseline.items())),
            "status": status, "variant": params.get("variant"), "seed": cfg.seed,
            **{f"param_{p.name}": params.get(p.name) for p in space.params},
            s.metric: last.get(s.metric, math.nan) if not last.get("diverged") else math.nan,
            f"best_{s.metric}": best,
            "final_val_knn_top1": last.get("final_val_knn_top1"), "test_knn_top1": last.get("test_knn_top1"),
            "linear_top1": last.get("linear_top1"), "epochs": int(last.get("epoch", 0) or 0),
            "max_epochs": cfg.epochs, "images_seen": last.get("images_seen"), "wall_s": wall,
            "cpus": cpus, "gpus": gpus, "cpu_hours": wall * cpus / 3600, "gpu_hours": wall * gpus / 3600,
            "node_id": last.get("node_id"),
            "nodes": ";".join(sorted({str(r.get("node_id")) for r in by_epoch.values() if r.get("node_id")})),
            "error": recorded.get("error") or last.get("error") or "",
            "trial_dir": trial_dir.name,
        }
        trials.append(row)
    trials_df = pd.DataFrame(trials)
    if len(trials_df):
        trials_df = trials_df.sort_values("trial_number").reset_index(drop=True)
    return trials_df, pd.DataFrame(history)


def _trial_id_from_dir(trial_dir: Path) -> str:
    return _dir_parts(trial_dir)[0]


def _dir_parts(trial_dir: Path) -> tuple[str, int]:
    """(trial id, 0-based trial number) from a Tune trial folder ``<trainable>_<id>_<n>_<params>_<date>``."""
    parts = trial_dir.name.split("_")
    for i in range(len(parts) - 1):
        if len(parts[i]) == 8 and parts[i + 1].isdigit():
            return parts[i], int(parts[i + 1]) - 1
    return trial_dir.name, -1


def best_trial(trials: pd.DataFrame, space: Space) -> pd.Series | None:
    """The completed trial with the best final metric (or, when none completed, the best of the others)."""
    metric = space.settings.metric
    if trials.empty:
        return None
    for pool in (trials[trials.status == "completed"], trials[trials.status.isin(["completed", "pruned"])]):
        pool = pool.dropna(subset=[metric])
        if len(pool):
            index = pool[metric].idxmax() if space.settings.mode == "max" else pool[metric].idxmin()
            return pool.loc[index]
    return None


def write_results(run_dir: Path, space: Space) -> dict[str, Any]:
    """Rewrite ``trials.csv``, ``history.csv`` and ``best_config.yaml``; return a short summary."""
    trials, history = collect(run_dir, space)
    atomic_write(run_dir / "trials.csv", trials.to_csv(index=False))
    atomic_write(run_dir / "history.csv", history.to_csv(index=False))
    best = best_trial(trials, space)
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
