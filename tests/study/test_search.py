"""The searcher tells Optuna the truth about early-stopped, diverged and resumed trials."""

from __future__ import annotations

import pickle

import optuna
import pytest

from study.search import EpochAwareOptunaSearch, trial_outcome, use_storage


def _space(trial):
    trial.suggest_float("temperature", 0.05, 0.5, log=True)


def _searcher(tmp_path, max_epochs=4):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return EpochAwareOptunaSearch(space=_space, metric="val_knn_top1", mode="max", study_name="t", storage=storage,
                                  max_epochs=max_epochs), storage


def _run(searcher, trial_id, epochs, value=70.0, **last):
    assert searcher.suggest(trial_id) is not None
    result = {}
    for epoch in range(1, epochs + 1):
        result = {"epoch": epoch, "val_knn_top1": value + epoch, **last}
        searcher.on_trial_result(trial_id, result)
    return result


@pytest.mark.parametrize("last, error, expected", [
    ({"epoch": 4}, False, "completed"), ({"epoch": 2}, False, "pruned"), ({"epoch": 1, "diverged": 1}, False,
                                                                           "diverged"), (None, True, "errored")])
def test_trial_outcome(last, error, expected):
    assert trial_outcome(last, 4, error) == expected


def test_early_stopped_trial_is_pruned_and_diverged_gets_the_worst_value(tmp_path):
    searcher, storage = _searcher(tmp_path)
    searcher.on_trial_complete("a", _run(searcher, "a", 4))
    searcher.on_trial_complete("b", _run(searcher, "b", 2))  # stopped by ASHA after 2 of 4 epochs
    searcher.suggest("c")
    searcher.on_trial_result("c", {"epoch": 1, "diverged": 1, "val_knn_top1": 0.0})
    searcher.on_trial_complete("c", {"epoch": 1, "diverged": 1, "val_knn_top1": 0.0})
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                               optuna.trial.TrialState.COMPLETE]
    assert study.trials[0].value == pytest.approx(74.0)
    assert study.trials[1].intermediate_values == {1: 71.0, 2: 72.0}  # pruned at the epoch it reached
    assert study.trials[2].value == 0.0 and study.trials[2].intermediate_values == {}  # worst value, no NaN report


def test_reports_from_a_resumed_trial_already_finished_in_optuna_do_not_raise(tmp_path):
    searcher, storage = _searcher(tmp_path)
    _run(searcher, "a", 3)
    final = {"epoch": 4, "val_knn_top1": 74.0}
    searcher.on_trial_complete("a", final)  # finished in Optuna; its last report had not reached the searcher
    # A study resumed from a searcher state saved before the trial finished (the database is newer): the trial
    # runs again from its final checkpoint and re-reports its last epoch.
    searcher._completed_trials.discard("a")
    searcher.on_trial_result("a", final)
    searcher.on_trial_complete("a", final)
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


def test_the_result_asha_stopped_on_reaches_optuna(tmp_path):
    """Tune does not call the searcher's on_trial_result for the result on which the scheduler says STOP; the
    searcher records it from on_trial_complete, so the pruned trial holds the epoch it was stopped at."""
    searcher, storage = _searcher(tmp_path)
    last = _run(searcher, "a", 1)  # epoch 1 reached the searcher ...
    stopped = {**last, "epoch": 2, "val_knn_top1": 65.4}  # ... epoch 2 (ASHA's STOP) did not
    searcher.on_trial_complete("a", stopped)
    trial = optuna.load_study(study_name="t", storage=storage).trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values == {1: 71.0, 2: 65.4}


def test_every_write_to_the_database_is_followed_by_after_write(tmp_path):
    """With remote storage, after_write copies optuna.db to the storage. It runs after each of the searcher's writes,
    before the searcher returns to Tune, so a searcher state Tune saves never names a trial the copy lacks."""
    searcher, storage = _searcher(tmp_path)
    seen = []

    def after_write():  # what a copy made now would hold
        seen.append([(t.state.name, dict(t.intermediate_values))
                     for t in optuna.load_study(study_name="t", storage=storage).trials])

    use_storage("t", storage, after_write)
    try:
        searcher.suggest("a")
        assert seen == [[("RUNNING", {})]]  # the new trial is in the copy before Tune learns of it
        searcher.on_trial_result("a", {"epoch": 1, "val_knn_top1": 71.0})
        searcher.on_trial_complete("a", {"epoch": 2, "val_knn_top1": 72.0})
        assert seen[1:] == [[("RUNNING", {1: 71.0})], [("RUNNING", {1: 71.0, 2: 72.0})],  # (ASHA's STOP epoch)
                            [("PRUNED", {1: 71.0, 2: 72.0})]]
        # Tune pickles the searcher: the hook (here a closure, which pickle refuses) is not part of its state, and a
        # restored searcher calls the hook this run registered.
        restored = pickle.loads(pickle.dumps(searcher))
        count = len(seen)
        restored.suggest("b")
        assert len(seen) == count + 1 and [state for state, _ in seen[-1]] == ["PRUNED", "RUNNING"]
    finally:
        use_storage("t", storage)


def test_a_resumed_searcher_adopts_the_trial_its_saved_state_missed(tmp_path):
    """Killed after the searcher created a trial in the database but before Tune saved its state, a resumed study
    holds an Optuna trial that Tune never ran. The restored searcher gives it to the next Tune trial (same
    parameters) instead of leaving it RUNNING for ever beside a new one."""
    searcher, storage = _searcher(tmp_path)
    searcher.on_trial_complete("a", _run(searcher, "a", 4))
    saved = pickle.dumps(searcher)  # the state Tune saved last
    lost = searcher.suggest("b")  # created in the database, then the study was killed
    use_storage("t", storage)
    restored = pickle.loads(saved)
    assert restored.suggest("c") == lost
    restored.on_trial_complete("c", _run(restored, "c", 4, value=60.0))
    restored.on_trial_complete("d", _run(restored, "d", 4))  # then new trials as usual
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[1].params == lost and study.trials[1].value == pytest.approx(64.0)
    assert study.trials[1].user_attrs["tune_trial_id"] == "c"
