"""The confirmation stage: re-train the search's best configurations and its baseline with fresh seeds, longer.

A search ranks configurations from one training seed at a cheap budget. The confirmation re-trains the top N completed
trials (by the study's metric, in the study's mode; the baseline is not one of the N) and the MoCo v2 baseline with S
fresh seeds, never a seed the search trained with, at a longer budget, so that "the best configuration beats the
baseline" becomes a claim with seeds, compute and an endpoint (analysis/confirm.py computes it). The space file's
section::

    confirm:
      top: 2                    # N best completed trials, named top1 .. topN (default 2)
      seeds: [1, 2, 3]          # S distinct non-negative seeds, disjoint from the search's (default: 3 unused ones)
      overrides: {compute_budget: 12}  # TrainConfig keys of the longer budget (not searched, not seed)

Candidates: ``baseline`` (the space's baseline point, or the ``baseline`` variant of a grid) and ``top1 .. topN``.
Every candidate runs once per seed with ``final_eval`` and ``linear_probe`` on: a Tune grid over candidates x seeds
in ``<run_dir>/confirm/`` (no searcher, no scheduler), each run a Ray Train run through :func:`study.trial.run_trial`.
Running it again continues it: finished runs are kept, unfinished ones resume from their checkpoints. It runs after a
search whose space has ``confirm:``, or on its own with ``study/run.py --confirm``. This module plans it (the section's
schema, the candidates, the runs' configs; no Ray); ``study/confirm_run.py`` runs it and writes ``confirm.json`` and
``confirm.csv``. No torch here.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from moco.config import ConfigError, TrainConfig, field_names
from moco.vocabulary import BASELINE, COMPLETED, FINAL_OF, FINAL_VAL_KNN, top_name
from study.checks import EPOCHS_FOLLOW, check_against_config
from study.params import STRICT, SpaceError, closest, refuse, under, validated
from study.settings import MAX_SEED
from study.space import Space

CONFIRM_DIR = "confirm"  #: the Tune experiment (and its Train runs) under the study's folder
CSV, JSON = "confirm.csv", "confirm.json"
DEFAULT_TOP, DEFAULT_SEEDS = 2, 3
FORCED = {"final_eval": True, "linear_probe": True}  #: every confirmation run evaluates every endpoint


class ConfirmError(Exception):
    """The confirmation cannot start (no finished study, a different base config); exit status 2."""


class NothingToConfirm(ConfirmError):
    """No trial besides the baseline completed: an error for ``--confirm``; after a search, the stage is skipped."""


class ConfirmSettings(BaseModel):
    """The ``confirm:`` section. ``seeds`` None means "the DEFAULT_SEEDS smallest seeds the search never used"."""

    model_config = STRICT

    top: int = Field(DEFAULT_TOP, ge=1, description="an integer >= 1")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, min_length=1, description=f"a non-empty list of non-negative integers, at most {MAX_SEED} (numpy's "
        "largest seed)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="a mapping of TrainConfig keys")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise refuse("seeds", f"{seeds!r}: duplicate seeds")
        return seeds


@dataclass
class Candidate:
    """One configuration to confirm: where it came from in the search and its parameters."""

    name: str  #: baseline, top1, top2, ...
    params: dict[str, Any]  #: searched parameters (search) or {"variant": name} (grid)
    source_trial: str | None = None  #: the search trial it repeats (a grid variant: its trials, ';'-joined)
    search_rank: int | None = None  #: rank of that trial among the search's completed trials (1 = best)
    search_value: float = math.nan  #: its value of the study's metric (a variant: the mean over its seeds)


# --- the section's schema ---------------------------------------------------------------------------------------------
def search_seeds(space: Space) -> set[int]:
    """Every training seed the search used: the base config's, a grid's seeds and variant seeds, a searched seed."""
    seeds = {space.base.seed, *space.seeds}
    seeds |= {v["seed"] for v in space.variants.values() if isinstance(v.get("seed"), int)}
    for p in space.params:
        if p.name == "seed":
            seeds |= set(range(p.low, p.high + 1)) if p.type == "int" else {v for v in p.extremes()
                                                                             if isinstance(v, int)}
    return seeds


def resolve_seeds(space: Space, settings: ConfirmSettings) -> list[int]:
    """The confirmation's seeds; refuses (SpaceError) seeds the search trained with, e.g. after ``--set seed=1``."""
    used = search_seeds(space)
    if settings.seeds is None:
        fresh = (s for s in range(len(used) + DEFAULT_SEEDS + 1) if s not in used)
        return [next(fresh) for _ in range(DEFAULT_SEEDS)]
    clash = sorted(set(settings.seeds) & used)
    if clash:
        fresh = [s for s in range(len(used) + len(settings.seeds) + 1) if s not in used][:len(settings.seeds)]
        raise SpaceError(space.source, "confirm.seeds",
                         f"{settings.seeds!r}: seed(s) {clash} trained the search (its training seeds: "
                         f"{sorted(used)}); confirmation seeds must be fresh, e.g. {fresh}")
    return list(settings.seeds)


def load_confirm(section: Any, space: Space) -> ConfirmSettings:
    """Validate the ``confirm:`` section of ``space``'s file (called by :func:`study.space.load_space`)."""
    source = space.source
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise SpaceError(source, "confirm",
                         f"{section!r}: a mapping with keys {', '.join(ConfirmSettings.model_fields)}")
    settings = validated(ConfirmSettings, section, source, under("confirm"))
    _check_overrides(settings.overrides, space)
    if not space.variants and not space.settings.baseline:
        raise SpaceError(source, "confirm", "needs the study's baseline (study.baseline: true): every candidate is "
                         "compared with it")
    if space.variants and BASELINE not in space.variants:
        raise SpaceError(source, "confirm", f"needs a variant named {BASELINE!r} to compare the others with "
                         f"(variants: {', '.join(space.variants)})")
    resolve_seeds(space, settings)
    return settings


def _check_overrides(overrides: dict[str, Any], space: Space) -> None:
    source = space.source
    searched = {p.name for p in space.params} | {k for v in space.variants.values() for k in v}
    for key, value in overrides.items():
        where = f"confirm.overrides.{key}"
        if key not in field_names():
            raise SpaceError(source, where, "not a training config key" + closest(key, field_names()))
        if key == "seed":
            raise SpaceError(source, where, "the confirmation's seeds are confirm.seeds")
        if key == "epochs":
            raise SpaceError(source, where, EPOCHS_FOLLOW)
        if key in searched:
            raise SpaceError(source, where, "a searched (or variant) key: the confirmation re-trains the values "
                             "the search chose; override only the budget and fixed keys")
        if key in FORCED and value != FORCED[key]:
            raise SpaceError(source, where, f"{value!r}: always {FORCED[key]} in a confirmation run")
    probe = copy.copy(space)
    try:
        probe.base = space.base.replace(**overrides, **FORCED)
    except ConfigError as err:
        key = f"confirm.overrides.{err.key}" if err.key in overrides else "confirm.overrides"
        raise SpaceError(source, key, f"{err.key} = {err.value!r} is not allowed (with the base config): "
                         f"{err.allowed}") from None
    try:
        check_against_config(probe)  # every configuration the search can reach, at the confirmation's budget
    except SpaceError as err:
        raise SpaceError(source, "confirm.overrides", f"with these overrides, {err}") from None


def describe_section(space: Space) -> str:
    """The plan's line for the confirmation (``--dry-run``)."""
    settings = space.confirm
    seeds = resolve_seeds(space, settings)
    budget = settings.overrides.get("compute_budget", space.budget)
    runs = (settings.top + 1) * len(seeds)
    return (f"confirm    then the top {settings.top} trial(s) and the baseline x seeds {seeds} (the search's: "
            f"{sorted(search_seeds(space))}) at compute {budget} (the search's: {space.budget}) with "
            f"{settings.overrides or 'no overrides'}: {runs} runs, {runs * budget} compute")


# --- what to run ------------------------------------------------------------------------------------------------------
@dataclass
class Confirmation:
    """A planned confirmation: resolved settings, candidates and one training config per candidate (seed unset)."""

    top: int
    seeds: list[int]
    overrides: dict[str, Any]
    metric: str
    mode: str
    candidates: list[Candidate]
    configs: dict[str, dict[str, Any]]

    def config(self, candidate: str, seed: int) -> TrainConfig:
        return TrainConfig.from_dict({**self.configs[candidate], "seed": seed})

    @property
    def runs(self) -> list[tuple[str, int]]:
        return [(c.name, s) for c in self.candidates for s in self.seeds]

    @property
    def decision_endpoint(self) -> str:
        """The validation endpoint that ranks and decides: the full-validation form of the study's metric."""
        return FINAL_OF.get(self.metric, FINAL_VAL_KNN)

    def describe(self, space: Space) -> dict[str, Any]:
        """confirm.json: settings, candidates, the search's seeds and the budgets of the search and of the runs."""
        budget = lambda c: {"epochs": c.epochs, "compute": c.compute, "compute_budget": c.compute_budget,  # noqa: E731
                            "train_subset": c.train_subset, "dataset": c.dataset}
        return {"top": self.top, "seeds": self.seeds, "overrides": self.overrides, "metric": self.metric,
                "mode": self.mode, "decision_endpoint": self.decision_endpoint,
                "candidates": [asdict(c) for c in self.candidates], "search_seeds": sorted(search_seeds(space)),
                "budget": budget(self.config(BASELINE, self.seeds[0])), "search_budget": budget(space.config_with({}))}


def select_candidates(trials: pd.DataFrame, space: Space, top: int) -> list[Candidate]:
    """The baseline and the ``top`` best completed trials of a search (or variants of a grid), best first."""
    s = space.settings
    done = trials[(trials["status"] == COMPLETED) & pd.to_numeric(trials[s.metric], errors="coerce").notna()].copy()
    done[s.metric] = done[s.metric].astype(float)
    baseline_mask = done["is_baseline"].astype(str).str.lower().isin(["true", "1"])
    if space.variants:  # a variant's value is its mean over seeds
        values = done.groupby(done["variant"].astype(str))[s.metric].mean()
        order = values.sort_values(ascending=s.mode == "min", kind="stable")
        ranks = {v: i + 1 for i, v in enumerate(order.index)}
        ids = done.groupby(done["variant"].astype(str))["trial_id"].agg(lambda x: ";".join(map(str, x)))

        def variant(name: str, v: str) -> Candidate:
            return Candidate(name, {"variant": v}, ids.get(v), ranks.get(v), float(values.get(v, math.nan)))

        others = [v for v in order.index if v != BASELINE][:top]
        return [variant(BASELINE, BASELINE)] + [variant(top_name(i + 1), v) for i, v in enumerate(others)]
    done = done.sort_values(["trial_number"]).sort_values(s.metric, ascending=s.mode == "min", kind="stable")
    done["search_rank"] = range(1, len(done) + 1)

    def trial(name: str, row: pd.Series, params: dict[str, Any]) -> Candidate:
        return Candidate(name, params, str(row["trial_id"]), int(row["search_rank"]), float(row[s.metric]))

    base = done[baseline_mask.loc[done.index]]
    baseline = (trial(BASELINE, base.iloc[0], space.baseline_point()) if len(base)
                else Candidate(BASELINE, space.baseline_point()))
    best = done[~baseline_mask.loc[done.index]].head(top)
    return [baseline] + [trial(top_name(i + 1), row, _params(row, space)) for i, (_, row) in enumerate(best.iterrows())]


def _params(row: pd.Series, space: Space) -> dict[str, Any]:
    out = {}
    for p in space.params:
        value = row.get(f"param_{p.name}")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[p.name] = value.item() if hasattr(value, "item") else value
    return out


def plan(space: Space, run_dir: Path, settings: ConfirmSettings | None = None) -> Confirmation:
    """Plan the confirmation of the finished study in ``run_dir`` (its ``trials.csv``); no Ray."""
    settings = settings or space.confirm or ConfirmSettings()
    if settings is not space.confirm:
        load_confirm(settings.model_dump(), space)  # defaults (a --confirm of a space without the section) validate too
    seeds = resolve_seeds(space, settings)
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise ConfirmError(f"--confirm: {run_dir} has no trials.csv: not a finished study")
    trials = pd.read_csv(path, dtype={"trial_id": str, "variant": str})
    candidates = select_candidates(trials, space, settings.top)
    if len(candidates) == 1:
        raise NothingToConfirm(f"--confirm: {path} has no completed trial besides the baseline: nothing to confirm")
    configs = {}
    for c in candidates:
        params = {**c.params, "seed": seeds[0]} if space.variants else c.params
        cfg = space.trial_config(params).replace(**settings.overrides, **FORCED)
        configs[c.name] = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
    job = Confirmation(settings.top, seeds, dict(settings.overrides), space.settings.metric, space.settings.mode,
                       candidates, configs)
    _check_continues(job, run_dir)
    return job


def _check_continues(job: Confirmation, run_dir: Path) -> None:
    """A confirmation already under way continues only as planned (its Tune grid is fixed): same runs, same budget."""
    path = run_dir / JSON
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    before = ([(c["name"], c["source_trial"]) for c in old.get("candidates", [])], old.get("seeds"),
              old.get("overrides"))
    now = ([(c.name, c.source_trial) for c in job.candidates], job.seeds, job.overrides)
    if before != now:
        raise ConfirmError(f"{path}: this study's confirmation was started with candidates {before[0]}, seeds "
                           f"{before[1]}, overrides {before[2]}; now {now[0]}, {now[1]}, {now[2]}. Continue it with "
                           f"the same confirm: section, or delete {path.parent / CONFIRM_DIR}, {path} and "
                           f"{path.parent / CSV} to start it again")


def preflight(space: Space, run_dir: Path) -> None:
    """``--confirm`` checks before Ray starts: the study finished, with this base config, and has candidates."""
    check_same_base(space, run_dir)
    plan(space, run_dir)


def check_same_base(space: Space, run_dir: Path) -> None:
    """``--confirm`` re-trains the study's configurations: the space (and --set) must give the study's base config."""
    meta = json.loads((run_dir / "study.json").read_text())
    if meta.get("status") != "finished":
        raise ConfirmError(f"--confirm: study {run_dir} is {meta.get('status')!r}, not finished: finish it first "
                           "with --resume")
    recorded = meta.get("base_config") or {}
    differ = sorted(k for k, v in space.base.to_dict().items() if k in recorded and recorded[k] != v)
    if differ:
        changes = ", ".join(f"{k}: study {recorded[k]!r}, now {getattr(space.base, k)!r}" for k in differ)
        raise ConfirmError(f"--confirm: the base config differs from the study's ({changes}): pass the study's "
                           "--space and --set")
