"""study/callbacks.py: the trial record the search and the confirmation keep as Tune reports trials (fake trials; no
Ray started)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from study.callbacks import TrialFiles, trial_error, trial_number
from study.results import STATUS_FILE


class Files(TrialFiles):
    live_files = ("trial_status.json",)

    def max_epochs(self, trial) -> int:
        return 3

    def start_fields(self, trial) -> dict:
        return {"number": trial_number(trial)}


class Mirror:
    def __init__(self):
        self.pushed = []

    def push(self, files=None):
        self.pushed.append(files)


def _trial(trial_id, tag, last=None, error_file=None):
    return SimpleNamespace(trial_id=trial_id, experiment_tag=tag, config={"lr": 0.1}, last_result=last,
                           error_file=error_file)


def test_trials_are_recorded_as_they_start_complete_and_error(tmp_path):
    writes, mirror = [], Mirror()
    files = Files(tmp_path, lambda: writes.append(1), mirror)
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  ...\nValueError: bad batch\n\n")
    done, short, failed = (_trial("a", "1_lr=0.1", {"epoch": 3}), _trial("b", "2_lr=0.1", {"epoch": 1}),
                           _trial("c", "3_lr=0.1", error_file=str(error_file)))
    for trial in (done, short, failed):
        files.on_trial_start(0, [], trial)
    assert mirror.pushed == [("trial_status.json",)] * 3 and not writes
    files.on_trial_complete(0, [], done)
    files.on_trial_complete(0, [], short)
    files.on_trial_error(0, [], failed)
    records = json.loads((tmp_path / STATUS_FILE).read_text())
    assert {k: (r["number"], r["status"], r["params"]) for k, r in records.items()} == {
        "a": (0, "completed", {"lr": 0.1}), "b": (1, "pruned", {"lr": 0.1}), "c": (2, "errored", {"lr": 0.1})}
    assert records["c"]["error"] == "ValueError: bad batch" and len(writes) == 3


def test_a_trials_outcome_reaches_the_mirror_before_the_result_files_are_rewritten(tmp_path):
    """A driver killed while the result files are rewritten has already stored the outcome (the status file first)."""
    events = []
    mirror = Mirror()
    mirror.push = lambda files=None: events.append(("push", files, _status(tmp_path)))
    files = Files(tmp_path, lambda: events.append(("write",)), mirror)
    done, failed = _trial("a", "1_lr=0.1", {"epoch": 3}), _trial("b", "2_lr=0.1", error_file=str(tmp_path / "x"))
    files.on_trial_complete(0, [], done)
    files.on_trial_error(0, [], failed)
    assert events == [("push", ("trial_status.json",), {"a": "completed"}), ("write",),
                      ("push", ("trial_status.json",), {"a": "completed", "b": "errored"}), ("write",)]


def _status(record_dir):
    return {k: r["status"] for k, r in json.loads((record_dir / STATUS_FILE).read_text()).items()}


def test_an_error_without_its_file_is_recorded_with_where_to_look(tmp_path):
    files = Files(tmp_path, lambda: None)
    files.noun = "run"
    trial = _trial("x", "1", error_file=str(tmp_path / "gone.txt"))
    assert trial_error(trial) is None
    files.on_trial_error(0, [], trial)
    assert json.loads((tmp_path / STATUS_FILE).read_text())["x"]["error"] == "see the run's error.txt"


def test_trial_numbers_start_at_zero_for_both_of_tunes_generators():
    """Tune's searcher generator tags its first trial ``1_...`` and its grid generator ``0_...`` (a variant grid's first
    trial was once numbered -1); the real generators are asked, so a change in Ray's convention fails here."""
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator, Searcher
    from ray.tune.search.basic_variant import BasicVariantGenerator

    class Fixed(Searcher):
        def suggest(self, trial_id):
            return {"lr": 0.1}

    def trainable(config):
        pass

    grid = BasicVariantGenerator()
    grid.add_configurations([Experiment("grid", trainable, config={
        "variant": tune.grid_search(["baseline", "hcl"]), "seed": tune.grid_search([1, 2])})])
    search = SearchGenerator(Fixed(metric="m", mode="max"))
    search.add_configurations([Experiment("search", trainable, config={}, num_samples=2)])
    assert [trial_number(grid.next_trial(), grid=True) for _ in range(4)] == [0, 1, 2, 3]
    assert [trial_number(search.next_trial()) for _ in range(2)] == [0, 1]


def test_a_repeated_report_is_recorded_only_when_its_epoch_is_missing(tmp_path):
    """A resumed run repeats its checkpoint's epoch (moco/train.py): kept when the study lost the first report,
    dropped when the record has it; a trial that re-trains an epoch (no mark) is recorded again, the latest wins."""
    from study.results import RESULTS_FILE, append_result
    from study.run import _tune_callback
    from study.space import load_space
    from tests.conftest import MINI_SPACE

    append_result(tmp_path, "t0", {"epoch": 1, "compute": 1, "val_knn_top1": 50.0})  # before the study stopped
    files = _tune_callback(tmp_path, load_space(str(MINI_SPACE)))
    trial = _trial("t0", "1_x")
    for result in ({"epoch": 1, "compute": 1, "val_knn_top1": 50.0, "repeated": 1},  # recorded: dropped
                   {"epoch": 2, "compute": 2, "val_knn_top1": 55.0, "repeated": 1},  # lost before: kept
                   {"epoch": 2, "compute": 2, "val_knn_top1": 55.0, "repeated": 1},  # again: dropped
                   {"epoch": 3, "compute": 3, "val_knn_top1": 56.0},
                   {"epoch": 3, "compute": 3, "val_knn_top1": 57.0}):  # re-trained: kept
        files.on_trial_result(0, [trial], trial, result)
    rows = [json.loads(line) for line in (tmp_path / RESULTS_FILE).read_text().splitlines()]
    assert [(r["epoch"], r["val_knn_top1"]) for r in rows] == [(1, 50.0), (2, 55.0), (3, 56.0), (3, 57.0)]
