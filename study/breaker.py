"""The study's circuit breaker: stop after N trials in a row fail to start, instead of spinning.

A trial *fails to start* when it errors before its first epoch report (its workers could not start: the node ran out
of memory, ``WorkerGroupStartupTimeoutError``, a broken environment). One trial that reports an epoch resets the
count. At N (``--max-start-failures``, default 3) Tune is told to stop every trial (a ``Stopper``), and the study
ends with a message naming the cause and the resume command (study/run.py).
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.stopper import Stopper


class StartFailureBreaker(Callback):
    """A Tune callback that counts consecutive start failures; :attr:`stopper` ends the study when it trips."""

    def __init__(self, limit: int, error_of):
        self.limit = limit
        self._error_of = error_of  #: trial -> the last line of its error (or None)
        self._started: set[str] = set()
        self.in_a_row = 0
        self.causes: list[str] = []
        self.stopper = _Stop(self)

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._started.add(trial.trial_id)
        self.in_a_row, self.causes = 0, []

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id in self._started or (trial.last_result or {}).get("epoch"):
            return  # it trained, then failed: not a start-up failure
        self.in_a_row += 1
        self.causes.append(self._error_of(trial) or "no error message (see the trial's error.txt)")

    def message(self) -> str:
        cause = self.causes[-1] if self.causes else "unknown"
        trials = "1 trial" if self.in_a_row == 1 else f"{self.in_a_row} trials in a row"
        return (f"{trials} failed to start (--max-start-failures {self.limit}); the study "
                f"stopped instead of trying more. Last cause: {cause}")

    def __getstate__(self):  # Tune pickles its run config with the experiment; a restored study starts afresh
        return {"limit": self.limit, "_error_of": self._error_of, "_started": set(), "in_a_row": 0, "causes": [],
                "stopper": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.stopper = _Stop(self)


class _Stop(Stopper):
    def __init__(self, breaker: StartFailureBreaker):
        self._breaker = breaker

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self._breaker.tripped
