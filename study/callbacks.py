"""The Tune callback that keeps a study's record of its trials as they run, shared by the search (study/run.py) and
the confirmation (study/confirm_run.py), and how a Tune trial's error and number are read.

:class:`TrialFiles` records each trial in ``trial_status.json`` (study.results.record_trial) as it starts, completes
or errors, rewrites the result files when it ends, and pushes files to the storage mirror; a subclass says what
differs (the trial's budget, what it prints, what else it records). Imports Ray: import it where Tune runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from moco.vocabulary import ERRORED, RUNNING
from study.results import record_trial
from study.search import trial_outcome


def trial_error(trial) -> str | None:
    """The last line of a Tune trial's error file (the exception), if any."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()] if path else []
    except OSError:
        return None
    return lines[-1][:500] if lines else None


#: The files of ours that Tune's restore copies (every top-level ``*.json`` and ``*.pkl`` of the experiment folder).
OWN_FILES = ("study.json", "trial_status.json", "confirm.json")


def unstage(trial, names: tuple[str, ...] = OWN_FILES) -> list[Path]:
    """Remove ``names`` from the driver staging folder of ``trial``'s Tune experiment; return what was removed.

    On restore, Tune downloads every top-level ``*.json`` and ``*.pkl`` of the experiment folder into that staging
    folder and then, at each experiment checkpoint, uploads the staging folder back over the experiment folder
    (``ray.tune.execution.experiment_state``). The study's own records live in the experiment folder, so a resumed
    study had them rolled back to their state at the restore every few seconds, and read them half-copied (an empty
    ``trial_status.json``). Tune's own state files are left alone."""
    staging = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
    removed = []
    for name in names if staging else ():
        path = Path(staging) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def trial_number(trial, grid: bool = False) -> int:
    """A study trial's number from 0. Tune's searcher generator tags its first trial ``1_...``; its grid generator
    (variants x seeds) tags its first ``0_...``."""
    return int(str(trial.experiment_tag).split("_", 1)[0]) - (0 if grid else 1)


class TrialFiles(Callback):
    """Records each trial's status in ``record_dir`` as it starts and ends, and calls ``write`` (which rewrites the
    result files and pushes them to the mirror) when one ends; ``live_files`` reach the mirror as a trial starts and,
    before that rewrite, as it ends."""

    noun = "trial"  #: how the fallback error message names a trial
    live_files: tuple[str, ...] = ()

    def __init__(self, record_dir: Path, write: Callable[[], Any], mirror=None):
        self.record_dir, self.write, self.mirror = record_dir, write, mirror
        self._unstaged = False

    def on_step_begin(self, iteration, trials, **info):
        """Once, as a restored run starts: :func:`unstage` this study's own files from Tune's driver staging folder."""
        if not self._unstaged and trials:
            self._unstaged = True
            unstage(trials[0])

    def max_epochs(self, trial) -> int:
        """The epochs the trial trains when it is not stopped early (a shorter completed trial was pruned)."""
        raise NotImplementedError

    def start_fields(self, trial) -> dict[str, Any]:
        """What else to record as the trial starts."""
        return {}

    def end_fields(self, last: dict[str, Any]) -> dict[str, Any]:
        """What else to record from the trial's last report as it completes."""
        return {}

    def announce(self, trial, outcome: str, detail: str | None = None) -> None:
        """Say that a trial started (``outcome`` running), completed (its outcome) or errored (``detail``: why)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        record_trial(self.record_dir, trial.trial_id, params=dict(trial.config), **self.start_fields(trial),
                     status=RUNNING)
        self.announce(trial, RUNNING)
        self._push_live()

    def _push_live(self) -> None:
        """Copy ``live_files`` to the mirror now: a trial's status reaches the storage before anything slower runs."""
        if self.mirror is not None and self.live_files:
            self.mirror.push(self.live_files)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        outcome = trial_outcome(last, self.max_epochs(trial), error=False)
        record_trial(self.record_dir, trial.trial_id, status=outcome, error=last.get("error"),
                     **self.end_fields(last))
        self._push_live()
        self.announce(trial, outcome)
        self.write()

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial_error(trial) or f"see the {self.noun}'s error.txt"
        record_trial(self.record_dir, trial.trial_id, status=ERRORED, error=error)
        self._push_live()
        self.announce(trial, ERRORED, error)
        self.write()
