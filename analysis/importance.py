"""Parameter importance with Optuna's evaluators over an Optuna study rebuilt from ``trials.csv``, with bootstrap
intervals.

The study is rebuilt in memory with :func:`optuna.trial.create_trial` (``optuna.db`` is never needed): completed
trials become ``COMPLETE`` with their final metric, pruned trials ``PRUNED`` with their last intermediate values
from ``history.csv``; other trials (diverged, errored, running, pending) are left out. Distributions come from
``study.json``'s space, widened where a trial (typically the baseline) lies outside the searched range. Pass a view
of the study at one fidelity (``analysis.fidelity.at_rung``) to compare every trial that reached a rung at its value
there: in the view they are all ``completed``.

Uncertainty: the n COMPLETE trials are resampled with replacement B times (seeded); each resample is rebuilt as a
study and scored by the same evaluator (fANOVA with ``RESAMPLE_TREES`` trees instead of 64 to keep B = 200 cheap:
the extra tree noise only widens the intervals). The interval per parameter is the percentile interval
[q_2.5, q_97.5] of its normalised importance over the resamples the evaluator could score; the point estimate is
the evaluator on all n trials. Importance over fewer than ``MIN_TRUSTED`` trials carries a plain warning.
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

#: evaluator name (shown on figures and in the report) -> factory(seed, number of fANOVA trees)
EVALUATORS = {
    "fANOVA": lambda seed, trees: FanovaImportanceEvaluator(n_trees=trees, seed=seed),
    "PED-ANOVA": lambda seed, trees: PedAnovaImportanceEvaluator(),
}
MIN_COMPLETED = 2
MIN_TRUSTED = 10  #: below this many trials, importance comes with a warning
RESAMPLES = 200  #: bootstrap resamples per evaluator
POINT_TREES, RESAMPLE_TREES = 64, 16
CONFIDENCE = 0.95


@dataclass
class ImportanceResult:
    """Importances per (parameter, method) in ``table``; ``skipped`` says why a method (or all) produced nothing."""

    #: columns param, method, importance (normalised to sum 1 per method), ci_low, ci_high (bootstrap percentile
    #: interval), resamples (how many resamples the evaluator scored)
    table: pd.DataFrame
    n_complete: int = 0  #: the trials importance rests on
    n_pruned: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  #: method (or "all") -> reason
    fidelity: str = "final values"  #: which values were compared (the study's ``fidelity_label``)

    @property
    def warning(self) -> str:
        """A plain warning when importance rests on fewer than ``MIN_TRUSTED`` trials; empty otherwise."""
        if self.skipped.get("all") or self.n_complete >= MIN_TRUSTED:
            return ""
        return (f"Importance rests on {self.n_complete} trials (fewer than {MIN_TRUSTED}): the ranking cannot be "
                f"trusted; read the intervals, not the order.")


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


def _evaluate(ostudy: optuna.Study, method: str, params: list[str], seed: int, trees: int) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(ostudy, evaluator=EVALUATORS[method](seed, trees),
                                                       params=params)


def _resampled(trials: list[optuna.trial.FrozenTrial], idx: np.ndarray, direction: str) -> optuna.Study:
    ostudy = optuna.create_study(direction=direction)
    ostudy.add_trials([trials[i] for i in idx])
    return ostudy


def bootstrap_intervals(ostudy: optuna.Study, method: str, params: list[str], resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[pd.DataFrame, int]:
    """Percentile intervals of ``method``'s importances over ``resamples`` resamples (with replacement) of the
    COMPLETE trials; returns (frame with param, ci_low, ci_high; number of resamples scored). Deterministic given
    ``seed``. A resample the evaluator cannot score (e.g. every value equal) is dropped."""
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    direction = "maximize" if ostudy.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    rng = np.random.default_rng(seed)
    draws = []
    for b in range(resamples):
        idx = rng.integers(0, len(complete), size=len(complete))
        if len({complete[i].value for i in idx}) < 2:
            continue
        try:
            imp = _evaluate(_resampled(complete, idx, direction), method, params, seed + 1 + b, RESAMPLE_TREES)
        except Exception:  # noqa: BLE001 - an unscorable resample is dropped and counted
            continue
        if imp and all(np.isfinite(v) for v in imp.values()):
            draws.append([float(imp.get(p, 0.0)) for p in params])
    if not draws:
        return pd.DataFrame({"param": params, "ci_low": np.nan, "ci_high": np.nan}), 0
    a = np.asarray(draws)
    tail = 100 * (1 - CONFIDENCE) / 2
    return pd.DataFrame({"param": params, "ci_low": np.percentile(a, tail, axis=0),
                         "ci_high": np.percentile(a, 100 - tail, axis=0)}), len(draws)


def compute_importance(study: Study, metric: str | None = None, resamples: int = RESAMPLES,
                       seed: int = 0) -> ImportanceResult:
    """fANOVA and PED-ANOVA importances of the searched parameters with bootstrap intervals (see the module
    docstring); skips (with a reason) when they cannot run. ``resamples = 0`` gives point estimates only.

    Needs at least ``MIN_COMPLETED`` completed trials whose metric and parameters vary.
    """
    empty = pd.DataFrame(columns=["param", "method", "importance", "ci_low", "ci_high", "resamples"])
    label = study.fidelity_label
    if not study.params:
        return ImportanceResult(empty, skipped={"all": "no parameters were searched"}, fidelity=label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ostudy = rebuild_optuna_study(study, metric)
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n_pruned = len(ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    result = ImportanceResult(empty, n_complete=len(complete), n_pruned=n_pruned, fidelity=label)
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
    frames = []
    for method in EVALUATORS:
        try:
            imp = _evaluate(ostudy, method, varying, seed, POINT_TREES)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            result.skipped[method] = f"{type(e).__name__}: {e}"
            continue
        if not imp or not any(np.isfinite(v) and v > 0 for v in imp.values()):
            result.skipped[method] = "the evaluator found no importance signal (too few or too similar trials)"
            continue
        point = pd.DataFrame({"param": list(imp), "method": method, "importance": [float(v) for v in imp.values()]})
        if resamples > 0:
            ci, scored = bootstrap_intervals(ostudy, method, varying, resamples, seed)
            point = point.merge(ci, on="param", how="left").assign(resamples=scored)
        else:
            point = point.assign(ci_low=np.nan, ci_high=np.nan, resamples=0)
        frames.append(point)
    if frames:
        result.table = pd.concat(frames, ignore_index=True)
    return result
