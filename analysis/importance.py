"""Parameter importance with Optuna's evaluators over an Optuna study rebuilt from ``trials.csv``.

The study is rebuilt in memory with :func:`optuna.trial.create_trial` (``optuna.db`` is never needed): completed
trials become ``COMPLETE`` with their final metric, pruned trials ``PRUNED`` with their last intermediate values
from ``history.csv``; other trials (diverged, errored, running, pending) are left out. Distributions come from
``study.json``'s space, widened where a trial (typically the baseline) lies outside the searched range.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from analysis.load import Param, Study

#: evaluator name (shown on figures and in the report) -> factory
EVALUATORS = {
    "fANOVA": lambda: FanovaImportanceEvaluator(seed=0),
    "PED-ANOVA": lambda: PedAnovaImportanceEvaluator(),
}
MIN_COMPLETED = 2


@dataclass
class ImportanceResult:
    """Importances per (parameter, method) in ``table``; ``skipped`` says why a method (or all) produced nothing."""

    table: pd.DataFrame  #: columns param, method, importance (normalised to sum 1 per method)
    n_complete: int = 0
    n_pruned: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  #: method (or "all") -> reason


def _match_choice(value: Any, choices: list[Any]) -> Any:
    """The declared choice equal to a CSV value (CSV turns 4096 into 4096.0 or "4096")."""
    for c in choices:
        if value == c or str(value) == str(c):
            return c
        try:
            if float(value) == float(c):
                return c
        except (TypeError, ValueError):
            pass
    return None


def _distribution(p: Param, values: pd.Series) -> BaseDistribution | None:
    """The Optuna distribution of ``p``, widened to hold every observed value; None when it cannot vary."""
    values = values.dropna()
    if p.type == "categorical":
        choices = list(p.choices or [])
        extra = [v for v in pd.unique(values) if _match_choice(v, choices) is None]
        choices += sorted(extra, key=str)
        return CategoricalDistribution(choices) if len(choices) >= 1 else None
    if values.empty and (p.low is None or p.high is None):
        return None
    lo = min(v for v in (p.low, values.min() if len(values) else None) if v is not None)
    hi = max(v for v in (p.high, values.max() if len(values) else None) if v is not None)
    log = p.log and lo > 0
    if p.type == "int":
        return IntDistribution(int(math.floor(lo)), int(math.ceil(hi)), log=log)
    return FloatDistribution(float(lo), float(hi), log=log)


def _param_value(p: Param, dist: BaseDistribution, value: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return _match_choice(value, list(dist.choices))
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(round(value)) if isinstance(dist, IntDistribution) else float(value)


def rebuild_optuna_study(study: Study, metric: str | None = None) -> optuna.Study:
    """An in-memory Optuna study holding the study's completed and pruned trials (see module docstring)."""
    metric = metric or study.metric
    dists = {p.name: _distribution(p, study.trials[p.column]) for p in study.params}
    dists = {k: d for k, d in dists.items() if d is not None}
    curves: dict[str, dict[int, float]] = {}
    if metric in study.history.columns:
        h = study.history.dropna(subset=[metric])
        for tid, g in h.groupby("trial_id"):
            curves[str(tid)] = {int(e): float(v) for e, v in zip(g["epoch"], g[metric]) if math.isfinite(v)}
    direction = "maximize" if study.maximize else "minimize"
    ostudy = optuna.create_study(direction=direction, study_name=study.name)
    trials = []
    for _, row in study.trials.iterrows():
        status, value = row["status"], row[metric]
        if status == "completed" and np.isfinite(value):
            state = TrialState.COMPLETE
        elif status == "pruned":
            state = TrialState.PRUNED
        else:
            continue
        params, pdists = {}, {}
        for p in study.params:
            if p.name in dists:
                v = _param_value(p, dists[p.name], row[p.column])
                if v is not None:
                    params[p.name], pdists[p.name] = v, dists[p.name]
        trials.append(optuna.trial.create_trial(
            state=state, value=float(value) if state == TrialState.COMPLETE else None,
            params=params, distributions=pdists, intermediate_values=curves.get(row["trial_id"], {}),
            user_attrs={"trial_id": row["trial_id"], "is_baseline": bool(row["is_baseline"])},
        ))
    ostudy.add_trials(trials)
    return ostudy


def compute_importance(study: Study, metric: str | None = None) -> ImportanceResult:
    """fANOVA and PED-ANOVA importances of the searched parameters; skips (with a reason) when they cannot run.

    Needs at least ``MIN_COMPLETED`` completed trials whose metric and parameters vary.
    """
    empty = pd.DataFrame(columns=["param", "method", "importance"])
    if not study.params:
        return ImportanceResult(empty, skipped={"all": "no parameters were searched"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ostudy = rebuild_optuna_study(study, metric)
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n_pruned = len(ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    result = ImportanceResult(empty, n_complete=len(complete), n_pruned=n_pruned)
    if len(complete) < MIN_COMPLETED:
        result.skipped["all"] = f"needs at least {MIN_COMPLETED} completed trials, found {len(complete)}"
        return result
    if len({t.value for t in complete}) < 2:
        result.skipped["all"] = "the metric has the same value in every completed trial"
        return result
    varying = sorted({k for t in complete for k in t.params
                      if len({repr(u.params.get(k)) for u in complete}) > 1
                      and all(k in u.params for u in complete)})
    if not varying:
        result.skipped["all"] = "no searched parameter varies across the completed trials"
        return result
    rows = []
    for method, make in EVALUATORS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(ostudy, evaluator=make(), params=varying)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            result.skipped[method] = f"{type(e).__name__}: {e}"
            continue
        if not imp or not any(np.isfinite(v) and v > 0 for v in imp.values()):
            result.skipped[method] = "the evaluator found no importance signal (too few or too similar trials)"
            continue
        rows += [{"param": k, "method": method, "importance": float(v)} for k, v in imp.items()]
    if rows:
        result.table = pd.DataFrame(rows)
    return result
