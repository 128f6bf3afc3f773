"""How a study runs: :class:`StudySettings`, the ``study:`` section of a space file, a pydantic model validated once
where the settings enter (the file, then the command line's overrides), with the refusal naming the key or flag.

Every field's description is what it allows; a refusal reads ``<file>: study.<key>: <value>: <what is allowed>``,
and an unknown key gets a "did you mean" hint (study/params.py turns pydantic's errors into SpaceError).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from moco.safe_yaml import short
from moco.vocabulary import STUDY_METRICS
from study.params import STRICT, SpaceError, refuse, under, validated

SEARCHERS = ("optuna-tpe", "random", "grid")
SCHEDULERS = ("asha", "none")
MAX_TRIALS = 10_000  #: trials in one study (num_samples, or variants x seeds)
MAX_SEED = 2**32 - 1  #: numpy's largest seed (torch accepts more)
#: how a setting is spelled on the command line, for refusals of command-line values
CLI_FLAGS = {"num_samples": "--num-samples", "max_concurrent": "--max-concurrent", "seed": "--seed",
             "workers_per_trial": "--workers-per-trial", "gpus_per_worker": "--gpus-per-worker",
             "cpus_per_worker": "--cpus-per-worker"}
GPUS_ALLOWED = "0, a fraction in (0, 1] (0.5: two workers share a GPU) or a whole number <= 64"


class StudySettings(BaseModel):
    """How the study runs. Every field is a key of the space file's ``study`` section."""

    model_config = STRICT

    metric: Literal[STUDY_METRICS] = Field(
        "val_knn_top1", description="one the training reports every epoch: " + ", ".join(STUDY_METRICS))
    mode: Literal["max", "min"] = Field("max", description="max or min")
    #: trials (search); ignored for variants (variants x seeds)
    num_samples: int = Field(16, ge=1, le=MAX_TRIALS, description=f"an integer in [1, {MAX_TRIALS:,}]")
    #: optuna-tpe (multivariate TPE), random, or grid
    searcher: Literal[SEARCHERS] = Field("optuna-tpe", description="one of " + ", ".join(SEARCHERS))
    #: optuna-tpe: trials drawn at random before TPE's model chooses (Optuna's n_startup_trials; null: its default, 10)
    startup_trials: int | None = Field(None, ge=0, le=MAX_TRIALS,
                                       description=f"null or an integer in [0, {MAX_TRIALS:,}]")
    #: values per continuous parameter with searcher = grid
    grid_points: int = Field(2, ge=1, le=100, description="an integer in [1, 100]")
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"an integer in [0, {MAX_SEED}]")
    scheduler: Literal[SCHEDULERS] = Field("asha", description="one of " + ", ".join(SCHEDULERS))
    #: ASHA: compute (one-way epochs; a dual-view epoch counts 2) before a trial can stop
    grace_period: int = Field(2, ge=1, description="an integer >= 1")
    #: ASHA: keep 1 / reduction_factor at each rung
    reduction_factor: int = Field(2, ge=2, description="an integer >= 2")
    #: trials at once (default: what the cluster holds)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_TRIALS,
                                       description=f"null or an integer in [1, {MAX_TRIALS:,}]")
    workers_per_trial: int = Field(1, ge=0, le=1024, description="an integer in [0, 1024] (0 = in-process)")
    #: default: 1 without GPUs, else the CPUs of a GPU's share of its node (study/plan.py)
    cpus_per_worker: float | None = Field(None, gt=0, description="null or a finite number > 0")
    #: 0, a fraction (0.5: two workers share a GPU) or a whole number
    gpus_per_worker: float = Field(0, ge=0, description=GPUS_ALLOWED)
    #: worker failures per trial retried from its latest checkpoint
    max_failures: int = Field(2, ge=0, description="an integer >= 0")
    #: evaluate the MoCo v2 baseline (lambda = rho = delta = 1) as the first trial
    baseline: bool = Field(True, description="true or false")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not (value.is_integer() and value <= 64):
            raise refuse("gpus_per_worker", f"{short(value)}: {GPUS_ALLOWED}")
        return value


def load_settings(section: Any, source: str) -> StudySettings:
    """The ``study:`` section of ``source``, validated."""
    if not isinstance(section, dict):
        raise SpaceError(source, "study", "a mapping of study settings")
    return validated(StudySettings, section, source, under("study"))


def with_cli(settings: StudySettings, values: dict[str, Any]) -> StudySettings:
    """``settings`` with the command line's ``values`` (None: not given), validated; refusals name the flag."""
    given = {key: value for key, value in values.items() if value is not None}
    return validated(StudySettings, {**settings.model_dump(), **given}, "command line",
                     lambda key: CLI_FLAGS.get(key, f"study.{key}"))
