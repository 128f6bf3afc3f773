"""The study's console, written for people: one line per trial event, a compact table and a progress line.

Every line comes from the driver (a Tune callback), so each epoch is printed once, whatever Ray's workers print:

    [trial 2] started: queue_size 1024, hard_negative_ratio 0.304, temperature 0.24, dual_view_weight 0.712
    [trial 2] epoch 1/2  compute 2/4  val_knn_top1 86.67  (best 86.67, trial 2)
    [trial 2] pruned at compute 2: val_knn_top1 86.67
    [study] 3/4 trials done, 1 running | compute 12/16 | best val_knn_top1 88.00 (trial 0) | 1m12s, ETA ~25s

Ray's own progress table and the workers' output (per-epoch dumps of every metric) are off unless ``--verbose``;
Tune's "Resume experiment with: Tuner.restore(...)" is never shown: the study prints its own resume command.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from moco.vocabulary import COMPLETED, COMPUTE, DIVERGED, EPOCH, ERRORED, PRUNED, REPEATED

STUDY_EXAMPLES = """examples:
  mocostudy --list                                   # the space files and training configs that ship
  mocostudy --space hardneg --dry-run                # validate the default study and print its plan
  mocostudy --space hardneg                          # run it; results in runs/hardneg/
  mocostudy --space hardneg --resume                 # continue after Ctrl-C, SIGTERM or a crash
  mocostudy --space my_space.yaml --storage s3://bucket/studies
  tensorboard --logdir runs/hardneg                  # watch it live (pip install "mocostudy[tensorboard]")
A space file is YAML: base (a training config and overrides), search (or variants), study settings;
base: {config: digits} names a shipped config from any directory. Also runs as `python study/run.py`."""

TABLE_EVERY_S = 120.0  #: the table is printed at most this often (and once at the end)
PROGRESS_EVERY_S = 60.0  #: a progress line at least this often while trials run


def program() -> list[str]:
    """How this study was started, for the commands it prints: ``mocostudy`` when installed, else the script."""
    if Path(sys.argv[0]).name == "mocostudy":
        return ["mocostudy"]
    script = Path(__file__).resolve().parent / "run.py"
    try:
        shown = str(script.relative_to(Path.cwd()))
    except ValueError:
        shown = str(script)
    return [sys.executable, shown]


def command(*args: str) -> str:
    return shlex.join([*program(), *args])


_VERBOSE = {"on": False}  # set once per process by quiet_ray (the study's --verbose)


def quiet_ray(verbose: bool) -> None:
    """Before Tune runs: drop Tune's own resume hint always, Optuna's info lines unless ``verbose``."""
    _VERBOSE["on"] = verbose
    logging.getLogger("ray.tune.tune").addFilter(_NoTuneResumeHint())
    if not verbose:
        # Ray 2.60's new output prints its experiment header (and a TensorBoard path under /tmp/ray) even when
        # silent; the classic output with verbose 0 prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_verbosity() -> int:
    """``RunConfig(verbose=...)``: 0 prints no Tune status (Ray 2.60's new output), 2 its table (``--verbose``)."""
    return 2 if _VERBOSE["on"] else 0


class _NoTuneResumeHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Resume experiment with" not in message and "Resume training with" not in message


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Console:
    """The study's console state; :func:`tune_callback` feeds it Tune's trial events. ``out`` is where it prints."""

    def __init__(self, space, out=None, clock=time.time, finished: Iterable[dict[str, Any]] = ()):
        """``finished``: a resumed study's trials that ended before this run (:func:`finished_rows`), counted in
        the progress line's trials and compute, ranked for the best so far and shown in the table."""
        self.space, self.metric, self.mode = space, space.settings.metric, space.settings.mode
        self.params = [p.name for p in space.params] or ["variant", "seed"]
        self.planned = space.num_trials
        self.budget = space.num_trials * space.max_budget
        self.out, self.clock = out or sys.stdout, clock
        self.started_at = clock()
        # trial id -> number, status, params, max_epochs, epoch, compute, metric, diverged
        self.rows: dict[str, dict[str, Any]] = {r["trial_id"]: {k: v for k, v in r.items() if k != "trial_id"}
                                                for r in finished}
        self.done_before = len(self.rows)  #: trials a resumed study had finished before this run
        self.best: tuple[float, int] | None = self._rank()  # (value, trial number)
        self._epochs_seen: set[tuple[str, int]] = set()
        self._last_table = self._last_progress = self.started_at
        self._dirty = False

    def watch_hint(self, run_dir) -> None:
        self._print(f"[study] watch it live: tensorboard --logdir {run_dir}   (pip install 'mocostudy[tensorboard]')")

    # --- events -----------------------------------------------------------------------------------------------
    def started(self, trial_id: str, number: int, params: dict[str, Any], max_epochs: int) -> None:
        row = self.rows.setdefault(trial_id, {"number": number, "epoch": 0, COMPUTE: 0, "metric": None})
        row.update(status="running", params=params, max_epochs=max_epochs)
        shown = ", ".join(f"{k} {fmt(params[k])}" for k in self.params if k in params)
        self._print(f"[trial {number}] started: {shown or '(base config)'}")

    def epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        row = self.rows.get(trial_id)
        epoch = int(result.get(EPOCH, 0))
        if row is None or not epoch or (trial_id, epoch) in self._epochs_seen:
            return  # a resumed trial may repeat an epoch's report: printed once
        self._epochs_seen.add((trial_id, epoch))
        value = result.get(self.metric)
        row.update(epoch=epoch, compute=int(result.get(COMPUTE, epoch)), metric=value,
                   diverged=bool(result.get("diverged")))
        self.best = self._rank()
        best = f"  (best {self.best[0]:.2f}, trial {self.best[1]})" if self.best else ""
        shown = f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"
        again = "  (again, from its checkpoint)" if result.get(REPEATED) else ""
        self._print(f"[trial {row['number']}] epoch {epoch}/{row['max_epochs']}  compute {row[COMPUTE]}/"
                    f"{self.space.max_budget}  {self.metric} {shown}{best}{again}")
        self._dirty = True

    def ended(self, trial_id: str, outcome: str, error: str | None = None) -> None:
        row = self.rows.get(trial_id)
        if row is None:
            return
        row["status"] = outcome
        value = row["metric"]
        shown = f"{self.metric} {value:.2f}" if isinstance(value, (int, float)) else "no result"
        detail = {PRUNED: f"pruned at compute {row[COMPUTE]}: {shown}",
                  COMPLETED: f"completed: {shown} after {row['epoch']} epochs",
                  DIVERGED: f"diverged at epoch {row['epoch']} (scored as the worst value)",
                  ERRORED: f"errored: {error or 'see the trial error.txt'}"}.get(outcome, outcome)
        self._print(f"[trial {row['number']}] {detail}")
        self.progress()
        self._dirty = True

    def retrying(self, trial_id: str, error: str | None) -> None:
        row = self.rows.get(trial_id)
        if row is not None:
            self._print(f"[trial {row['number']}] failed, retrying from its latest checkpoint: "
                        f"{error or 'see the trial error.txt'}")

    def tick(self) -> None:
        """Called on every Tune step: a progress line and the table when due."""
        now = self.clock()
        if now - self._last_table >= TABLE_EVERY_S and self._dirty:
            self.table()
        elif now - self._last_progress >= PROGRESS_EVERY_S and self.running():
            self.progress()

    # --- views ------------------------------------------------------------------------------------------------
    def running(self) -> int:
        return sum(row["status"] == "running" for row in self.rows.values())

    def progress(self) -> None:
        now = self.clock()
        self._last_progress = now
        done = sum(row["status"] != "running" for row in self.rows.values())
        now_done = done - self.done_before  # in this run: the ETA's rate
        used = sum(row[COMPUTE] for row in self.rows.values())
        elapsed = now - self.started_at
        eta = ("done" if done >= self.planned else f"ETA ~{duration(elapsed / now_done * (self.planned - done))}"
               if now_done else "ETA after the first trial")
        best = f"best {self.metric} {self.best[0]:.2f} (trial {self.best[1]})" if self.best else "no result yet"
        self._print(f"[study] {done}/{self.planned} trials done, {self.running()} running | compute {used}/"
                    f"{self.budget} | {best} | {duration(elapsed)}, {eta}")

    def table(self) -> None:
        self._last_table = self._last_progress = self.clock()
        self._dirty = False
        header = ["trial", "status", "epoch", COMPUTE, self.metric, "best so far", *self.params]
        lines, best = [], None
        for row in sorted(self.rows.values(), key=lambda r: r["number"]):
            value = row["metric"]
            if isinstance(value, (int, float)) and row["status"] != DIVERGED and self._better(value, best):
                best = float(value)
            params = row.get("params", {})
            lines.append([str(row["number"]), row["status"], f"{row['epoch']}/{row.get('max_epochs', '?')}",
                          f"{row[COMPUTE]}/{self.space.max_budget}",
                          f"{value:.2f}" if isinstance(value, (int, float)) else "-",
                          f"{best:.2f}" if best is not None else "-",
                          *[fmt(params[k]) if k in params else "-" for k in self.params]])
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
        text = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
        self._print("\n".join(text))
        self.progress()

    def _rank(self) -> tuple[float, int] | None:
        """(value, trial number) of the best trial as the study ranks them: by each trial's latest value, not its
        best epoch; diverged trials never."""
        best = None
        for r in self.rows.values():
            if isinstance(r["metric"], (int, float)) and not r.get("diverged") and self._better(
                    r["metric"], best[0] if best else None):
                best = (float(r["metric"]), r["number"])
        return best

    def _better(self, value: float, than: float | None) -> bool:
        """``value`` ranks above ``than`` (any non-NaN value above None)."""
        if isinstance(value, float) and math.isnan(value):
            return False
        return than is None or (value > than if self.mode == "max" else value < than)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def tune_callback(console: Console, error_of):
    """The Tune callback that feeds :class:`Console` (Ray imported here, at the edge)."""
    from ray.tune import Callback

    from study.callbacks import trial_number
    from study.search import trial_outcome

    class ConsoleCallback(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            params, number = dict(trial.config), trial_number(trial, grid=bool(console.space.variants))
            console.started(trial.trial_id, number, params, _max_epochs(console.space, params))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            console.epoch(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            outcome = trial_outcome(last, _max_epochs(console.space, dict(trial.config)), error=False)
            console.ended(trial.trial_id, outcome, last.get("error"))

        def on_trial_error(self, iteration, trials, trial, **info):
            console.ended(trial.trial_id, ERRORED, error_of(trial))

        def on_trial_recover(self, iteration, trials, trial, **info):
            console.retrying(trial.trial_id, error_of(trial))

        def on_step_end(self, iteration, trials, **info):
            console.tick()

        def __getstate__(self):  # Tune pickles its run config; a restored study attaches a fresh console
            return {}

    return ConsoleCallback()


def _max_epochs(space, params: dict[str, Any]) -> int | str:
    try:
        return space.trial_config(params).epochs
    except Exception:  # noqa: BLE001 - a confirmation's {candidate, seed} is not a point of the space
        return "?"
