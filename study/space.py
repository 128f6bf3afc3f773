"""The space file: its sections read and checked with precise errors (the searched parameters: study/params.py; the
study settings: study/settings.py).

A space file is YAML with these sections::

    base:                          # the training config every trial starts from
      config: fashion_mnist        # a shipped name (mocostudy --list) or a path
      overrides: {epochs: 8}       # any TrainConfig keys
    search:                        # searched parameters (TrainConfig keys)
      temperature: {type: float, low: 0.05, high: 0.5, log: true}
      queue_size: {type: categorical, choices: [1024, 4096]}
      selection_warmup_epochs: {type: int, low: 0, high: 2, when: "hard_negative_ratio < 1"}
    variants:                      # alternative to `search`: a grid of named variants (ablations)
      baseline: {}
      dual_view: {dual_view_weight: 0.5}
    seeds: [0, 1, 2]               # with variants: every variant runs once per seed
    confirm: {top: 2}              # optional: re-train the best and the baseline with fresh seeds (study/confirm.py)
    study:                         # how the study runs (all optional; defaults in StudySettings)
      metric: val_knn_top1
      ...

Every error is a :class:`SpaceError` naming the file, the key and what is allowed, raised before Ray starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moco.catalog import CONFIG_DIR, resolve
from moco.config import ConfigError, TrainConfig, field_names, load_yaml, plain_name
from moco.safe_yaml import short
from moco.sources import check_sizes
from moco.vocabulary import BASELINE_POINT, SPACE_SECTIONS
from study.checks import check_against_config, check_devices, check_monitor
from study.params import Param, SpaceError, closest, load_params
from study.settings import MAX_SEED, MAX_TRIALS, StudySettings, load_settings


@dataclass
class Space:
    """A validated space file."""

    source: str
    base: TrainConfig
    base_name: str
    base_overrides: dict[str, Any]
    params: list[Param] = field(default_factory=list)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    settings: StudySettings = field(default_factory=StudySettings)
    confirm: Any = None  #: the ``confirm:`` section (study.confirm.ConfirmSettings), None without one

    @property
    def kind(self) -> str:
        return "grid" if self.variants else "search"

    @property
    def num_trials(self) -> int:
        return len(self.variants) * len(self.seeds) if self.variants else self.settings.num_samples

    @property
    def budget(self) -> int:
        """Every trial's compute budget (:data:`moco.vocabulary.COMPUTE`): the base's ``compute_budget``, else the
        base's own compute (``epochs * views``). Trials are compared at equal compute: a dual-view trial trains half
        the epochs of a one-way trial (``TrainConfig.views``)."""
        return self.base.compute_budget or self.base.compute

    def config_with(self, overrides: dict[str, Any]) -> TrainConfig:
        """The base config with ``overrides`` applied, at the study's compute budget (unless they set their own)."""
        return self.base.replace(**{"compute_budget": self.budget, **overrides})

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The training config of a trial: the base with the trial's parameters (or variant + seed) applied."""
        if self.variants:
            overrides = {**self.variants[params["variant"]], "seed": params["seed"]}
        else:
            overrides = {k: v for k, v in params.items() if k in field_names()}
        return self.config_with(overrides)

    @property
    def max_budget(self) -> int:
        """The largest compute any trial can have (ASHA's ``max_t``): the study's budget, or the top of a searched
        ``compute_budget`` or a variant's own."""
        budgets = [self.budget] + [p.high if p.type in ("int", "float") else max(p.extremes())
                                   for p in self.params if p.name == "compute_budget"]
        budgets += [int(v["compute_budget"]) for v in self.variants.values() if v.get("compute_budget")]
        return int(max(budgets))

    def baseline_point(self) -> dict[str, Any] | None:
        """The MoCo v2 baseline as a point of the search space (lambda = rho = delta = 1, base tau and K)."""
        if self.variants or not self.settings.baseline:
            return None
        point: dict[str, Any] = {}
        for p in self.params:
            if not p.active(point):
                continue
            value = BASELINE_POINT.get(p.name, getattr(self.base, p.name))
            if p.type == "categorical" and value not in p.choices:
                value = min(p.choices, key=lambda c: abs(c - value) if isinstance(c, (int, float)) else 0)
            elif p.type in ("float", "int"):
                value = min(max(value, p.low), p.high)
            point[p.name] = value if p.type != "fixed" else p.value
        return {name: value for name, value in point.items()
                if next(p for p in self.params if p.name == name).type != "fixed"}

    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run space: conditional parameters are drawn only when their condition holds."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return {p.name: p.value for p in self.params if p.type == "fixed" and p.name in values}

    def describe(self) -> dict[str, Any]:
        """The resolved space as plain data (written to study.json)."""
        params = {p.name: {k: v for k, v in p.model_dump().items() if k != "name" and v not in (None, False)}
                  for p in self.params}
        return {"params": params, "variants": self.variants, "seeds": self.seeds,
                "base": {"config": self.base_name, "overrides": self.base_overrides},
                "study": self.settings.model_dump()}


# --- loading ------------------------------------------------------------------------------------------------------
def resolve_path(name_or_path: str) -> Path:
    """A bare name (``hardneg`` or ``hardneg.yaml``) resolves among the shipped configs (:mod:`moco.catalog`)."""
    return resolve(name_or_path)


def load_space(name_or_path: str) -> Space:
    """Read and validate a space file; raise :class:`SpaceError` on the first problem."""
    path = resolve_path(name_or_path)
    source = str(path)
    if not path.is_file():
        raise SpaceError(source, "--space", f"no such space file (looked for {path} and in {CONFIG_DIR})")
    try:
        raw = load_yaml(path)
    except ConfigError as err:
        raise SpaceError(source, "yaml", f"{err.value}: {err.allowed}") from None
    if not isinstance(raw, dict):
        raise SpaceError(source, "<top level>", "a mapping with sections " + ", ".join(SPACE_SECTIONS))
    for key in raw:
        if key not in SPACE_SECTIONS:
            raise SpaceError(source, str(key), "unknown section" + closest(key, SPACE_SECTIONS))
    base, base_name, overrides = _load_base(raw.get("base"), source)
    settings = load_settings(raw.get("study") or {}, source)
    space = Space(source, base, base_name, overrides, settings=settings)
    if raw.get("variants") is not None:
        if raw.get("search"):
            raise SpaceError(source, "variants", "use either `search` or `variants`, not both")
        space.variants, space.seeds = _load_variants(raw["variants"], raw.get("seeds", [base.seed]), source)
        space.settings = settings.model_copy(update={"searcher": "grid"})
    else:
        if raw.get("seeds") is not None:
            raise SpaceError(source, "seeds", "seeds apply to variants (each variant runs once per seed); a search "
                             "trains every trial with the base's seed and draws with study.seed")
        space.params = load_params(raw.get("search"), source)
    check_against_config(space)
    check_study(space)
    if "confirm" in raw:
        from study.confirm import load_confirm  # the confirmation stage owns its section's schema

        space.confirm = load_confirm(raw["confirm"], space)
    return space


def check_study(space: Space) -> None:
    """Checks across sections, before anything starts (also after command-line overrides)."""
    s, source = space.settings, space.source
    check_devices(space)
    check_monitor(space)
    for overrides in space.variants.values() or [{}]:  # split sizes against the dataset (no worker would start)
        try:
            check_sizes(space.config_with(overrides))
        except ConfigError as err:
            raise SpaceError(source, f"base.overrides.{err.key}", f"{short(err.value)}: {err.allowed}") from None
    if s.scheduler == "asha" and s.grace_period > space.max_budget:
        raise SpaceError(source, "study.grace_period", f"{s.grace_period} is above the trials' compute budget "
                         f"({space.max_budget}): ASHA could never stop a trial; lower it or use scheduler: none")
    if space.variants:
        if len(space.variants) * len(space.seeds) > MAX_TRIALS:
            raise SpaceError(source, "variants", f"{len(space.variants)} variants x {len(space.seeds)} seeds: at most "
                             f"{MAX_TRIALS:,} trials")
        return
    if s.searcher == "grid":
        conditional = [p.name for p in space.params if p.when is not None]
        if conditional:
            raise SpaceError(source, f"search.{conditional[0]}.when", "the grid searcher cannot search conditional "
                             "parameters; use optuna-tpe or random, or drop the condition")
        points = math.prod(len(p.grid_values(s.grid_points)) for p in space.params)
        if points > MAX_GRID:
            raise SpaceError(source, "study.grid_points", f"{s.grid_points} points per parameter make a grid of "
                             f"{points:,} points: at most {MAX_GRID:,}")


def _load_base(section: Any, source: str) -> tuple[TrainConfig, str, dict]:
    if section is None:
        section = {"config": "fashion_mnist"}
    if not isinstance(section, dict):
        raise SpaceError(source, "base", "a mapping with `config` and optional `overrides`")
    for key in section:
        if key not in ("config", "overrides"):
            raise SpaceError(source, f"base.{key}", "unknown key" + closest(key, ("config", "overrides")))
    name = section.get("config", "fashion_mnist")
    overrides = section.get("overrides") or {}
    if not isinstance(name, str):
        raise SpaceError(source, "base.config", f"{name!r}: a config name in configs/ or a path")
    if not isinstance(overrides, dict):
        raise SpaceError(source, "base.overrides", "a mapping of TrainConfig keys")
    path = resolve_path(name)
    if not path.is_file():
        raise SpaceError(source, "base.config", f"{name!r}: no such config (looked in {CONFIG_DIR} and as a path)")
    try:
        config = TrainConfig.from_yaml(path, overrides)
    except ConfigError as err:
        raise SpaceError(source, f"base.overrides.{err.key}" if err.key in overrides else f"base ({path})",
                         f"{err.value!r} is not allowed: {err.allowed}") from None
    return config, name, overrides


MAX_GRID = 100_000  #: points of a grid search


def _load_variants(section: Any, seeds: Any, source: str):
    if not isinstance(section, dict) or not section:
        raise SpaceError(source, "variants", "a non-empty mapping of variant name: {overrides}")
    for name, overrides in section.items():
        if overrides is None:
            section[name] = {}
        elif not isinstance(overrides, dict):
            raise SpaceError(source, f"variants.{name}", "a mapping of TrainConfig keys (or {})")
        try:
            plain_name(str(name), "variant name")
        except ConfigError as err:
            raise SpaceError(source, f"variants.{short(name)}", err.allowed) from None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                              and 0 <= s <= MAX_SEED for s in seeds):
        raise SpaceError(source, "seeds", f"{short(seeds)}: a non-empty list of integers in [0, {MAX_SEED}]")
    if len(set(seeds)) != len(seeds):
        raise SpaceError(source, "seeds", f"{seeds!r}: duplicate seeds")
    return section, seeds
