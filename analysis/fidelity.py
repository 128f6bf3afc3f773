"""Compare trials at one fidelity: the highest ASHA rung that enough trials reached.

A trial's final value mixes fidelities: under ASHA most trials stop at an early rung, so their last value sits beside
the end-of-budget value of the few that ran on, and a plot of final values mostly shows which trials ran longer.
Comparing like with like means reading every trial at the same point of its budget.

ASHA's time attribute T is ``compute`` (``moco.vocabulary.COMPUTE``: cumulative passes of the training split through
the query encoder) when ``study.json`` records ``settings.time_attr`` and ``history.csv`` has that column; older
studies fall back to ``epoch``. ASHA's rungs are

    r_k = grace_period · reduction_factor^k  (k = 0, 1, ...; r_k <= max_t),

plus max_t itself (the end of the budget: ``settings.max_t``, else the largest T observed). ASHA judges a trial at
its first report with T >= r_k, so the value of trial i at level L is

    y_i(L) = the metric of i's first history row (by T) with T >= L and a finite metric,

defined only for trials that reached L. The **common rung** is the highest level L that at least
``min(min_trials, n)`` trials reached (n: trials with any value; ``min_trials`` defaults to 8). Without ASHA
(``scheduler: none``, variant grids) the levels are the distinct T values observed in ``history.csv``, so the common
rung is the largest T at least that many trials reached; the same fallback applies when no ASHA rung holds enough
trials. When ``history.csv`` holds no per-report value of the metric (a metric only in ``trials.csv``), there is no
common rung and the report keeps final values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import Study
from moco.vocabulary import COMPLETED, EPOCH

MIN_TRIALS = 8  #: default: the common rung must hold at least this many trials (or all of them, if fewer)
ASHA, OBSERVED = "ASHA rung", "time reached"  #: where a level comes from
_EPS = 1e-9


@dataclass(frozen=True)
class Rung:
    """The fidelity at which trials are compared: ``n_trials`` of ``n_total`` trials reached ``level`` of
    ``time_attr`` (an ASHA rung, or a time value reached, see ``source``)."""

    time_attr: str
    level: float
    n_trials: int
    n_total: int
    source: str = ASHA
    min_trials: int = MIN_TRIALS

    @property
    def label(self) -> str:
        """E.g. ``compute ≥ 4 (ASHA rung), 9 of 16 trials``: names the rung and how many trials it compares."""
        return f"{self.time_attr} ≥ {self.level:g} ({self.source}), {self.n_trials} of {self.n_total} trials"


def time_attribute(study: Study) -> str:
    """ASHA's time attribute: ``settings.time_attr`` when ``history.csv`` has values of it, else ``epoch``."""
    attr = (study.meta.get("settings") or {}).get("time_attr")
    h = study.history
    if attr and attr in h.columns and pd.to_numeric(h[attr], errors="coerce").notna().any():
        return str(attr)
    return EPOCH


def _observations(study: Study, time_attr: str) -> pd.DataFrame:
    """History rows of known trials with a finite time and metric: trial_id, time, value."""
    h = study.history
    if study.metric not in h.columns or time_attr not in h.columns:
        return pd.DataFrame({"trial_id": pd.Series(dtype=object), "time": pd.Series(dtype=float),
                             "value": pd.Series(dtype=float)})
    obs = pd.DataFrame({"trial_id": h["trial_id"], "time": pd.to_numeric(h[time_attr], errors="coerce"),
                        "value": pd.to_numeric(h[study.metric], errors="coerce")})
    obs = obs[np.isfinite(obs["time"]) & np.isfinite(obs["value"]) & obs["trial_id"].isin(study.trials["trial_id"])]
    return obs.sort_values(["trial_id", "time"], kind="stable").reset_index(drop=True)


def asha_rungs(study: Study, time_attr: str, max_t: float | None = None) -> list[float]:
    """ASHA's rungs r_k = grace_period · reduction_factor^k up to max_t, then max_t; empty without ASHA settings.
    ``settings.max_t`` counts only when it is in ``time_attr``'s units (else ``max_t``, the largest T observed)."""
    settings = study.meta.get("settings") or {}
    grace, factor = settings.get("grace_period"), settings.get("reduction_factor")
    if str(study.meta.get("scheduler", "")).lower() != "asha" or not grace or not factor or float(factor) <= 1:
        return []
    if settings.get("max_t") and settings.get("time_attr", EPOCH) == time_attr:
        max_t = settings["max_t"]
    if max_t is None or not math.isfinite(float(max_t)) or float(max_t) < float(grace):
        return []
    rungs, r = [], float(grace)
    while r < float(max_t) - _EPS:
        rungs.append(r)
        r *= float(factor)
    return rungs + [float(max_t)]


def values_at(study: Study, level: float, time_attr: str | None = None) -> pd.DataFrame:
    """y_i(level) for every trial that reached ``level``: columns trial_id, value, at (the T it was read at)."""
    obs = _observations(study, time_attr or time_attribute(study))
    reached = obs[obs["time"] >= level - _EPS].drop_duplicates("trial_id", keep="first")
    return reached.rename(columns={"time": "at"})[["trial_id", "value", "at"]].reset_index(drop=True)


def rung_counts(study: Study, time_attr: str | None = None) -> pd.DataFrame:
    """Trials that reached each level: columns level, source, n_trials (ASHA rungs when the study used ASHA, else
    every T observed), in increasing order of level."""
    attr = time_attr or time_attribute(study)
    obs = _observations(study, attr)
    if obs.empty:
        return pd.DataFrame(columns=["level", "source", "n_trials"])
    reach = obs.groupby("trial_id")["time"].max()  # a trial reached L iff it has a value at some T >= L
    rungs = asha_rungs(study, attr, float(reach.max()))
    levels, source = (rungs, ASHA) if rungs else (sorted(obs["time"].unique().tolist()), OBSERVED)
    return pd.DataFrame({"level": [float(x) for x in levels], "source": source,
                         "n_trials": [int((reach >= x - _EPS).sum()) for x in levels]})


def common_rung(study: Study, min_trials: int = MIN_TRIALS) -> Rung | None:
    """The highest level at least ``min(min_trials, n)`` trials reached (see the module docstring); None when the
    history holds no value of the study's metric."""
    attr = time_attribute(study)
    obs = _observations(study, attr)
    if obs.empty:
        return None
    n_with_values = int(obs["trial_id"].nunique())
    need = max(1, min(int(min_trials), n_with_values))
    counts = rung_counts(study, attr)
    ok = counts[counts["n_trials"] >= need]
    if ok.empty:  # no ASHA rung holds enough trials (e.g. they stopped before the first): use observed times
        reach = obs.groupby("trial_id")["time"].max()
        levels = sorted(obs["time"].unique().tolist())
        ok = pd.DataFrame({"level": levels, "source": OBSERVED,
                           "n_trials": [int((reach >= x - _EPS).sum()) for x in levels]})
        ok = ok[ok["n_trials"] >= need]
    top = ok.iloc[-1]
    return Rung(time_attr=attr, level=float(top["level"]), n_trials=int(top["n_trials"]),
                n_total=len(study.trials), source=str(top["source"]), min_trials=int(min_trials))


def at_rung(study: Study, rung: Rung) -> Study:
    """A view of ``study`` at ``rung``: only the trials that reached it, each with the metric at the rung
    (y_i(level)) and status ``completed`` (observed at this fidelity); the recorded outcome is kept in
    ``final_status``, the value read in ``at_<time_attr>``, and ``fidelity`` is set to ``rung``. Every
    figure and statistic that compares trials can then take the view in place of the study."""
    vals = values_at(study, rung.level, rung.time_attr).set_index("trial_id")
    t = study.trials[study.trials["trial_id"].isin(vals.index)].copy()
    t["final_status"] = t["status"]
    t["status"] = COMPLETED
    t[study.metric] = t["trial_id"].map(vals["value"]).astype(float)
    t[f"at_{rung.time_attr}"] = t["trial_id"].map(vals["at"]).astype(float)
    return dataclasses.replace(study, trials=t.reset_index(drop=True), fidelity=rung)
