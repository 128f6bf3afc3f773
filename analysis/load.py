"""Read study directories (``runs/<name>/``) with pandas alone: no Ray, no cluster, no GPU.

A study directory holds ``study.json`` (metadata and search space), ``trials.csv`` (one row per trial) and
``history.csv`` (one row per trial-epoch); see ``study/results.py`` for the writer. Loading is tolerant: extra
columns are kept, missing optional columns are added empty, and incomplete studies (running, interrupted,
errored or diverged trials) load with those trials marked in the ``status`` column. Anything that makes a study
unusable (``analysis/checks.py``) raises :class:`ReportError` with one clear message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from analysis.checks import (HISTORY_COLUMNS, TRIAL_COLUMNS, ReportError, check_columns, check_meta, check_numeric,
                             check_unique_ids, read_csv, read_json)
from moco.vocabulary import COMPUTE, EPOCH, VAL_KNN, raw_name
from study.results import best_trial

if TYPE_CHECKING:
    from analysis.fidelity import Rung

DEFAULT_METRIC = VAL_KNN
#: trial columns that are bookkeeping, never offered as a metric
NON_METRIC_COLUMNS = {"trial_id", "trial_number", "is_baseline", "status", "variant", "seed", "node_id", "error"}
#: numeric trial columns coerced to float when present
NUMERIC_TRIAL_COLUMNS = (
    "best_val_knn_top1", "test_knn_top1", "linear_top1", "epochs", "max_epochs", "images_seen", "wall_s",
    "cpus", "gpus", "cpu_hours", "gpu_hours",
)


@dataclass
class Param:
    """One searched parameter: its name (without ``param_``), kind and range as declared in ``study.json``."""

    name: str
    type: str  #: float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @property
    def column(self) -> str:
        """The column of ``trials.csv`` holding this parameter."""
        return f"param_{self.name}"


@dataclass
class Study:
    """One loaded study: metadata, trials (one row each) and per-epoch history, plus the metric reported on."""

    path: Path
    meta: dict[str, Any]
    trials: pd.DataFrame
    history: pd.DataFrame
    metric: str
    mode: str = "max"
    params: list[Param] = field(default_factory=list)
    #: None for the study as recorded (each trial at its final value); a :class:`analysis.fidelity.Rung` for a view
    #: of the study at one fidelity (``analysis.fidelity.at_rung``), in which every trial observed at the rung is
    #: ``completed`` with its value there
    fidelity: Rung | None = None

    @property
    def name(self) -> str:
        """The study's name (``study.json`` ``name``, else the directory name)."""
        return str(self.meta.get("name") or self.path.name)

    @property
    def kind(self) -> str:
        """``search`` or ``grid``."""
        return str(self.meta.get("kind") or "search")

    @property
    def maximize(self) -> bool:
        """True when larger metric values are better."""
        return self.mode != "min"

    def param(self, name: str) -> Param | None:
        """The searched parameter called ``name`` (without ``param_``), or None when it was not searched."""
        return next((p for p in self.params if p.name == name), None)

    @property
    def completed(self) -> pd.DataFrame:
        """Completed trials with a finite metric value."""
        t = self.trials
        return t[(t["status"] == "completed") & np.isfinite(t[self.metric])]

    @property
    def baseline(self) -> pd.DataFrame:
        """The baseline trial(s): ``is_baseline`` rows (several in a seeded grid)."""
        return self.trials[self.trials["is_baseline"]]

    def best_trial(self) -> pd.Series | None:
        """The best trial, chosen as for ``best_config.yaml`` (:func:`study.results.best_trial`)."""
        return best_trial(self.trials, self.metric, self.maximize)

    @property
    def fidelity_label(self) -> str:
        """Which values the trials are compared at: the rung (``compute ≥ 4 (ASHA rung), 9 of 16 trials``) or
        ``final values``."""
        return self.fidelity.label if self.fidelity is not None else "final values"

    def raw_pixel_value(self, metric: str | None = None) -> float:
        """The raw-pixel value of ``metric`` (default: the study's) on the same bank and protocol: the median over
        trials of each trial's first finite value in ``history.csv`` column ``raw_name(metric)`` (reported with
        epoch 1); NaN when the column is absent or empty (older studies)."""
        col = raw_name(metric or self.metric)
        if col not in self.history.columns:
            return math.nan
        h = self.history[["trial_id", col]].dropna()
        h = h[np.isfinite(h[col].astype(float))]
        return float(h.groupby("trial_id")[col].first().median()) if len(h) else math.nan

    def baseline_value(self) -> float:
        """Mean metric of the completed baseline trial(s); NaN when there is none."""
        b = self.baseline
        vals = b.loc[(b["status"] == "completed"), self.metric].astype(float)
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if len(vals) else math.nan


def _as_bool(series: pd.Series) -> pd.Series:
    """Booleans written as True/False, true/false, 1/0 or empty (False)."""
    if series.dtype == bool:
        return series
    text = series.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "1.0", "yes"]).fillna(False).astype(bool)


def _parse_params(space: dict[str, Any], trials: pd.DataFrame) -> list[Param]:
    """Searched parameters: those declared in the space (except ``fixed``), then any other ``param_*`` column."""
    params: list[Param] = []
    for name, spec in (space or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = str(spec.get("type", "float"))
        if kind == "fixed":
            continue
        params.append(Param(
            name=name, type=kind, low=spec.get("low"), high=spec.get("high"), log=bool(spec.get("log", False)),
            choices=list(spec["choices"]) if spec.get("choices") is not None else None,
        ))
    declared = {p.name for p in params} | {n for n, s in (space or {}).items()}
    for col in trials.columns:
        if col.startswith("param_") and col[len("param_"):] not in declared:
            values = trials[col].dropna()
            if values.nunique() <= 1:
                continue
            name = col[len("param_"):]
            if pd.api.types.is_numeric_dtype(values):
                params.append(Param(name, "float", float(values.min()), float(values.max())))
            else:
                params.append(Param(name, "categorical", choices=sorted(values.unique().tolist(), key=str)))
    return [p for p in params if p.column in trials.columns]


def numeric_columns(trials: pd.DataFrame) -> list[str]:
    """Trial columns usable as a metric: numeric, with at least one value, not bookkeeping or parameters."""
    out = []
    for col in trials.columns:
        if col in NON_METRIC_COLUMNS or col.startswith("param_"):
            continue
        if pd.api.types.is_numeric_dtype(trials[col]) and trials[col].notna().any():
            out.append(col)
    return out


def load_study(path: str | Path, metric: str | None = None) -> Study:
    """Load one study directory.

    ``metric`` overrides ``study.json``'s ``metric`` (default ``val_knn_top1``); it must be a numeric column of
    ``trials.csv``. Raises :class:`ReportError` when the path is not a study, the study has no trials or the metric
    does not exist (the message lists the ones that do).
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such directory")
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory (expected a study directory with study.json and trials.csv)")
    missing = [f for f in ("study.json", "trials.csv") if not (path / f).is_file()]
    if missing:
        raise ReportError(f"{path}: not a study directory (missing {' and '.join(missing)})")
    meta = read_json(path / "study.json")
    check_meta(meta, path / "study.json")
    trials = read_csv(path / "trials.csv")
    if trials.empty:
        raise ReportError(f"{path}: the study has no trials yet (trials.csv is empty)")

    check_columns(trials, TRIAL_COLUMNS, path / "trials.csv")
    trials = trials.copy()
    trials["trial_id"] = trials["trial_id"].astype(str)
    check_unique_ids(trials, path / "trials.csv")
    metric = metric or str(meta.get("metric") or DEFAULT_METRIC)
    check_numeric(trials, [*NUMERIC_TRIAL_COLUMNS, "trial_number"], path / "trials.csv")
    if "trial_number" not in trials:
        trials["trial_number"] = np.arange(len(trials))
    trials["trial_number"] = pd.to_numeric(trials["trial_number"], errors="coerce").fillna(-1).astype(int)
    trials["status"] = trials["status"].astype("string").str.strip().str.lower().fillna("pending").astype(object)
    if "is_baseline" in trials:
        trials["is_baseline"] = _as_bool(trials["is_baseline"])
    else:
        trials["is_baseline"] = trials["trial_number"] == 0
    for col in NUMERIC_TRIAL_COLUMNS:
        if col in trials:
            trials[col] = pd.to_numeric(trials[col], errors="coerce")
        else:
            trials[col] = np.nan
    for col in ("variant", "error"):
        if col in trials:
            trials[col] = trials[col].astype("string").astype(object).where(trials[col].notna(), None)
    trials = trials.sort_values("trial_number", kind="stable").reset_index(drop=True)

    if metric not in trials.columns or metric in NON_METRIC_COLUMNS or metric.startswith("param_"):
        raise ReportError(
            f"{path}: metric {metric!r} does not exist; available metrics: "
            f"{', '.join(numeric_columns(trials)) or 'none'}"
        )
    check_numeric(trials, [metric], path / "trials.csv")
    trials[metric] = pd.to_numeric(trials[metric], errors="coerce")
    if not trials[metric].notna().any() and metric != DEFAULT_METRIC:
        raise ReportError(
            f"{path}: metric {metric!r} has no values; available metrics: {', '.join(numeric_columns(trials))}"
        )

    history = read_csv(path / "history.csv") if (path / "history.csv").is_file() else pd.DataFrame()
    if history.empty:
        history = pd.DataFrame({"trial_id": pd.Series(dtype=object), "epoch": pd.Series(dtype=int)})
    check_columns(history, HISTORY_COLUMNS, path / "history.csv")
    check_numeric(history, [EPOCH, COMPUTE, metric, raw_name(metric)], path / "history.csv")
    history = history.copy()
    history["trial_id"] = history["trial_id"].astype(str)
    for col in history.columns:
        if col != "trial_id":
            history[col] = pd.to_numeric(history[col], errors="coerce")
    if trials["epochs"].isna().all() and not history.empty:
        reached = history.groupby("trial_id")["epoch"].max()
        trials["epochs"] = trials["trial_id"].map(reached).astype(float)

    mode = str(meta.get("mode") or "max").lower()
    if mode not in ("max", "min"):
        raise ReportError(f"{path}/study.json: mode {mode!r} is not allowed: max or min")
    params = _parse_params(meta.get("space") or {}, trials)
    check_numeric(trials, [p.column for p in params if p.type != "categorical"], path / "trials.csv")
    for p in params:
        if p.type != "categorical":
            trials[p.column] = pd.to_numeric(trials[p.column], errors="coerce")
    return Study(path=path, meta=meta, trials=trials, history=history, metric=metric, mode=mode, params=params)


def load_studies(paths: Iterable[str | Path], metric: str | None = None) -> list[Study]:
    """Load several studies for side-by-side comparison; they must report the same metric in the same mode.

    Without ``metric``, each study's own ``study.json`` metric is used and they must agree (else pass ``metric``).
    """
    paths = list(paths)
    if not paths:
        raise ReportError("no study directories given")
    studies = [load_study(p, metric) for p in paths]
    metrics = {(s.metric, s.mode) for s in studies}
    if len(metrics) > 1:
        listing = "; ".join(f"{s.path}: {s.metric} ({s.mode})" for s in studies)
        raise ReportError(f"the studies optimise different metrics ({listing}); pass --metric NAME to compare on one")
    names = [s.name for s in studies]
    if len(set(names)) < len(names):
        for i, s in enumerate(studies):  # disambiguate equal names by their directory
            if names.count(s.name) > 1:
                s.meta = {**s.meta, "name": f"{s.name}@{s.path.parent.name}/{s.path.name}"}
    return studies
