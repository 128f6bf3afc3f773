"""Searcher and scheduler set-up: Optuna (TPE, random or grid) behind Ray Tune, and ASHA on epochs.

Ray's ``OptunaSearch`` tells Optuna that a trial stopped early by ASHA is COMPLETE with its early, low-fidelity
value, which skews TPE and parameter importances. :class:`EpochAwareOptunaSearch` records such trials as PRUNED at
the epoch they reached (their per-epoch values stay as intermediate values), and diverged trials as COMPLETE with
the worst value of the metric so the searcher learns to avoid them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from study.space import Space

logger = logging.getLogger(__name__)

WORST = {"max": 0.0, "min": float("inf")}


def trial_outcome(result: dict[str, Any] | None, max_epochs: int, error: bool) -> str:
    """completed, pruned (stopped before ``max_epochs``), diverged or errored, from a trial's last result."""
    if error:
        return "errored"
    if not result:
        return "pruned"
    if result.get("diverged"):
        return "diverged"
    return "completed" if int(result.get("epoch", 0)) >= max_epochs else "pruned"


class EpochAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that reports at the trial's own epoch and tells Optuna the truth about early stops."""

    def __init__(self, *args, max_epochs: dict[str, int] | int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self.outcomes: dict[str, str] = {}
        self._reported: dict[str, set[int]] = {}

    def _epochs_of(self, trial_id: str) -> int:
        ot_trial = self._ot_trials[trial_id]
        epochs = self._max_epochs
        return epochs(ot_trial.params) if callable(epochs) else epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result or result.get("diverged"):
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        reported = self._reported.setdefault(trial_id, set())
        if epoch not in reported:  # a trial resumed from a checkpoint may repeat an epoch's report
            reported.add(epoch)
            try:
                self._ot_trials[trial_id].report(float(result[self.metric]), epoch)
            except Exception as exc:  # noqa: BLE001 - e.g. the trial was told finished before a crash and resume
                logger.warning("could not record epoch %s of trial %s in Optuna: %s", epoch, trial_id, exc)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        outcome = trial_outcome(result, self._epochs_of(trial_id), error)
        self.outcomes[trial_id] = outcome
        state, value = optuna.trial.TrialState.COMPLETE, None
        if outcome == "completed":
            value = float(result[self.metric])
        elif outcome == "diverged":
            value = WORST[self.mode]
        elif outcome == "pruned":
            state = optuna.trial.TrialState.PRUNED
        else:
            state = optuna.trial.TrialState.FAIL
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. a trial already told before a resume
            logger.warning("could not record trial %s in Optuna: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def make_sampler(space: Space):
    import optuna

    settings = space.settings
    if settings.searcher == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if settings.searcher == "grid":
        grid = {p.name: p.grid_values(settings.grid_points) for p in space.params if p.when is None}
        return optuna.samplers.GridSampler(grid, seed=settings.seed)
    return optuna.samplers.TPESampler(seed=settings.seed, multivariate=True, constant_liar=True)


def make_searcher(space: Space, run_dir: Path):
    """The Tune searcher for a study; ``None`` for variant grids (Tune's grid over variants x seeds)."""
    if space.variants:
        return None
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    baseline = space.baseline_point()
    base_epochs = space.base.epochs
    epochs_param = next((p for p in space.params if p.name == "epochs"), None)
    max_epochs = (lambda params: int(params.get("epochs", base_epochs))) if epochs_param else base_epochs
    return EpochAwareOptunaSearch(
        space=space.define_by_run, metric=space.settings.metric, mode=space.settings.mode,
        points_to_evaluate=[baseline] if baseline else None, sampler=make_sampler(space),
        study_name=run_dir.name, storage=storage, max_epochs=max_epochs)


class BaselineProtectedASHA(ASHAScheduler):
    """ASHA on epochs that never stops the baseline: it is the reference every trial is compared with, so it runs to
    the end (its results still count in ASHA's rungs)."""

    def __init__(self, baseline: dict[str, Any] | None, **kwargs):
        super().__init__(**kwargs)
        self._baseline = baseline

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if self._baseline and all(trial.config.get(k) == v for k, v in self._baseline.items()):
            return TrialScheduler.CONTINUE
        return decision


def make_scheduler(space: Space) -> BaselineProtectedASHA | None:
    settings = space.settings
    if settings.scheduler == "none":
        return None
    return BaselineProtectedASHA(space.baseline_point(), time_attr="epoch", max_t=space.base.epochs,
                                 grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
