"""Searcher and scheduler set-up: Optuna (TPE, random or grid) behind Ray Tune, and ASHA on compute.

Ray's ``OptunaSearch`` tells Optuna that a trial stopped early by ASHA is COMPLETE with its early, low-fidelity
value, which skews TPE and parameter importances. :class:`EpochAwareOptunaSearch` records such trials as PRUNED at
the epoch they reached (their per-epoch values stay as intermediate values, the epoch on which ASHA stopped them
included), and diverged trials as COMPLETE with the worst value of the metric so the searcher learns to avoid them.

ASHA's time attribute is :data:`moco.vocabulary.COMPUTE`, not epochs: a dual-view epoch costs two one-way epochs, so
a dual-view trial meets each rung at half the epochs of a one-way trial, and every rung compares trials at equal
compute.
"""

from __future__ import annotations

import copy
import functools
import logging
import pickle
from pathlib import Path
from typing import Any, Callable

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from moco.vocabulary import COMPLETED, COMPUTE, DIVERGED, EPOCH, ERRORED, PRUNED
from study.space import Space

logger = logging.getLogger(__name__)

WORST = {"max": 0.0, "min": float("inf")}
TUNE_TRIAL_ID = "tune_trial_id"  #: the Optuna user attribute naming a trial's Tune trial id


def trial_outcome(result: dict[str, Any] | None, max_epochs: int, error: bool) -> str:
    """completed, pruned (stopped before ``max_epochs``), diverged or errored, from a trial's last result."""
    if error:
        return ERRORED
    if not result:
        return PRUNED
    if result.get("diverged"):
        return DIVERGED
    return COMPLETED if int(result.get(EPOCH, 0)) >= max_epochs else PRUNED


#: The Optuna storage this process uses, by study name (:func:`use_storage`). A restored searcher is attached to it:
#: the storage pickled in Tune's ``tuner.pkl`` and ``searcher-state-*.pkl`` names the database as it was when the
#: study last ran (for the default SQLite file, an absolute path into the old working directory or study folder).
_CURRENT_STORAGE: dict[str, Any] = {}
#: What a searcher of a study calls after each write to its Optuna database (:func:`use_storage`); never pickled.
_AFTER_WRITE: dict[str, Callable[[], None]] = {}


def use_storage(study_name: str, storage, after_write: Callable[[], None] | None = None) -> None:
    """Make ``storage`` (an Optuna storage) the one a searcher of ``study_name`` uses, also after it is unpickled by
    ``Tuner.restore``: call it before restoring.

    ``after_write`` is called after every write the searcher makes to the database (a trial created, an epoch's
    value reported, a trial finished), before the searcher returns to Tune. A staged ``optuna.db`` (remote storage,
    study/mirror.py) is copied to the storage there, so the database in the storage is never older than the searcher
    state Tune saves beside it: otherwise a study killed in between resumes trials its database does not hold."""
    _CURRENT_STORAGE[study_name] = storage
    if after_write is None:
        _AFTER_WRITE.pop(study_name, None)
    else:
        _AFTER_WRITE[study_name] = after_write


class EpochAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that reports at the trial's own epoch and tells Optuna the truth about early stops; restored
    from Tune's pickles, it uses this run's storage (:func:`use_storage`), not the one it was pickled with."""

    def __init__(self, *args, max_epochs: Callable[[dict[str, Any]], int] | int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self.outcomes: dict[str, str] = {}
        self._reported: dict[str, set[int]] = {}
        self._orphans: list[int] = []  # see _attach

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # The objective's name in optuna.db (optuna-dashboard shows it instead of "Objective 0").
        import warnings

        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            self._ot_study.set_metric_names([self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._orphans:  # see _attach
            import optuna

            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
        params = super().suggest(trial_id)  # an adopted trial's parameters are its own: Optuna returns them again
        if trial_id in self._ot_trials:  # which Tune trial this Optuna trial is (results.jsonl, trials.csv)
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
            self._written()
        return params

    def _written(self) -> None:
        """The database changed: run the study's ``after_write`` (:func:`use_storage`), if it has one."""
        after_write = _AFTER_WRITE.get(self._study_name)
        if after_write is not None:
            after_write()

    # Tune pickles the searcher twice (tuner.pkl; searcher-state-*.pkl through save/restore). Optuna's storages
    # reconnect when unpickled (an RDBStorage at its pickled URL, creating tables), so the storage, the study and the
    # trials' links to them are pickled apart and re-attached to this run's storage (:func:`use_storage`) when loaded.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        study = state.pop("_ot_study", None)
        state["_ot_study_ref"] = None if study is None else (study.study_name, study.sampler, study.pruner)
        state["_storage"] = pickle.dumps(state.get("_storage"))  # used only where no storage is bound
        trials = {}
        for trial_id, ot_trial in state.get("_ot_trials", {}).items():
            trials[trial_id] = copy.copy(ot_trial)
            trials[trial_id].study = trials[trial_id].storage = None
        state["_ot_trials"] = trials
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._attach()

    def _attach(self) -> None:
        """Load the study from this run's storage and link the trials to it. An *orphan* is a RUNNING trial of the
        database that the searcher does not know: it was created after Tune last saved the searcher's state, and then
        the study was killed. The next trials Tune asks for get the orphans (same parameters), so none stays RUNNING
        for ever, beside a new trial with the point it was meant to evaluate."""
        import optuna

        self._orphans = []
        storage = _CURRENT_STORAGE.get(self._study_name)
        if storage is None:
            storage = pickle.loads(self._storage) if isinstance(self._storage, bytes) else self._storage
        self._storage = storage
        ref = self.__dict__.pop("_ot_study_ref", None)
        pickled = self.__dict__.get("_ot_study")  # a searcher pickled whole (by an earlier version of this module)
        if ref is None and pickled is not None:
            ref = (pickled.study_name, pickled.sampler, pickled.pruner)
        if ref is None:
            self._ot_study = None
            return
        name, sampler, pruner = ref
        self._ot_study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        for ot_trial in self._ot_trials.values():  # same ids: the same database, wherever it is now
            ot_trial.study, ot_trial.storage = self._ot_study, self._ot_study._storage
        known = {ot_trial._trial_id for ot_trial in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        self._orphans = [t._trial_id for t in running if t._trial_id not in known]
        if self._orphans:
            logger.info("resuming %d Optuna trial(s) created just before the study stopped", len(self._orphans))

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
            else:
                self._written()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and not error:
            # Tune does not pass the searcher the result on which the scheduler said STOP: record it here, so a
            # pruned trial holds its values up to and including the epoch ASHA stopped it at.
            self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        outcome = trial_outcome(result, self._epochs_of(trial_id), error)
        self.outcomes[trial_id] = outcome
        state, value = optuna.trial.TrialState.COMPLETE, None
        if outcome == COMPLETED:
            value = float(result[self.metric])
        elif outcome == DIVERGED:
            value = WORST[self.mode]
        elif outcome == PRUNED:
            state = optuna.trial.TrialState.PRUNED
        else:
            state = optuna.trial.TrialState.FAIL
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. a trial already told before a resume
            logger.warning("could not record trial %s in Optuna: %s", trial_id, exc)
        else:
            self._written()
        self._completed_trials.add(trial_id)


def trial_epochs(space: Space, params: dict[str, Any]) -> int:
    """A trial's epochs, which follow from its compute budget and views (``TrainConfig.views``)."""
    return space.trial_config(params).epochs


def make_sampler(space: Space):
    import optuna

    settings = space.settings
    if settings.searcher == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if settings.searcher == "grid":
        grid = {p.name: p.grid_values(settings.grid_points) for p in space.params if p.when is None}
        return optuna.samplers.GridSampler(grid, seed=settings.seed)
    startup = {} if settings.startup_trials is None else {"n_startup_trials": settings.startup_trials}
    return optuna.samplers.TPESampler(seed=settings.seed, multivariate=True, constant_liar=True, **startup)


def make_searcher(space: Space, run_dir: Path, optuna_storage: str | None = None,
                  after_write: Callable[[], None] | None = None):
    """The Tune searcher for a study; ``None`` for variant grids (Tune's grid over variants x seeds).
    ``optuna_storage``: a URL checked by :func:`study.optuna_storage.check_url` (default: ``optuna.db`` in
    ``run_dir``); ``after_write``: see :func:`use_storage`."""
    if space.variants:
        return None
    from study.optuna_storage import open_storage, resolve

    storage = open_storage(resolve(optuna_storage, run_dir))
    use_storage(run_dir.name, storage, after_write)
    baseline = space.baseline_point()
    max_epochs = functools.partial(trial_epochs, space)  # picklable: Tune saves the searcher with the study
    return EpochAwareOptunaSearch(
        space=space.define_by_run, metric=space.settings.metric, mode=space.settings.mode,
        points_to_evaluate=[baseline] if baseline else None, sampler=make_sampler(space),
        study_name=run_dir.name, storage=storage, max_epochs=max_epochs)


class BaselineProtectedASHA(ASHAScheduler):
    """ASHA that never stops the baseline: it is the reference every trial is compared with, so it runs to
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
    return BaselineProtectedASHA(space.baseline_point(), time_attr=COMPUTE, max_t=space.max_budget,
                                 grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
