"""Benchmark: Ray overhead of a study: how much of its time trials spend inside training epochs.

Reuses the first TPE + ASHA study of bench/efficiency.py when it ran in the same invocation (or is named in
``bench/results/efficiency.json`` and still on disk); otherwise runs one itself with the same settings. From Tune's
per-trial ``result.json``:

- inside epochs: the sum of ``epoch_s`` (Engine.train_epoch's own timer) over all epoch reports;
- share of trial time: inside-epochs / sum over trials of the trial's ``time_total_s`` at its last report;
- share of study time: inside-epochs / (study wall time x trials at once), i.e. of the trial slots the study held;
- start-up per trial: time of the first report minus its epoch's ``epoch_s`` minus the between-epoch time (monitor
  kNN, checkpoint, report) measured on the trial's later epochs; the raw "first report - first epoch" is kept too;
- its parts reported by the worker: ``startup_ray_s`` (trainer created -> training function runs: controller,
  placement group, worker process, process group) and ``startup_setup_s`` (config, data, model, resume).

Goal: >= 85 % of the study's time inside epochs for the default study (full mode). Where the efficiency
benchmark's random-search study (same space and trials, no early stopping) is on disk, its share is shown beside it.
When it runs its own study, the study's process tree is sampled for memory as in bench/efficiency.py (reported by
bench/memory.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Context, read_json, saved_result, stats, tune_events
from bench.page import Goal, goal_sentence, num, pct, spread

GOAL_SHARE = 0.85  #: of a study's trial slots spent inside training epochs
TITLE = "4. Ray overhead"


def analyse(run_dir: Path, study_wall_s: float) -> dict[str, Any]:
    events = tune_events(run_dir)
    info = read_json(Path(run_dir) / "study.json") or {}
    concurrent = int((info.get("resources") or {}).get("max_concurrent") or 1)
    by_trial: dict[str, list[dict]] = {}
    for e in events:
        by_trial.setdefault(e["trial_id"], []).append(e)
    trials = []
    for trial_id, rows in by_trial.items():
        rows.sort(key=lambda r: r.get("epoch", 0))
        epochs_s = sum(float(r.get("epoch_s") or 0) for r in rows)
        wall = float(rows[-1].get("time_total_s") or 0)
        first = float(rows[0].get("time_total_s") or 0) - float(rows[0].get("epoch_s") or 0)
        between = [float(b["time_total_s"]) - float(a["time_total_s"]) - float(b.get("epoch_s") or 0)
                   for a, b in zip(rows, rows[1:])]
        between_mean = sum(between) / len(between) if between else None
        trials.append({"trial_id": trial_id, "epochs": len(rows), "inside_epochs_s": epochs_s, "wall_s": wall,
                       "share": epochs_s / wall if wall else None, "first_report_minus_epoch_s": first,
                       "between_epochs_s": between_mean,
                       "startup_s": first - between_mean if between_mean is not None else None})
    inside = sum(t["inside_epochs_s"] for t in trials)
    trial_wall = sum(t["wall_s"] for t in trials)
    share_study = inside / (study_wall_s * concurrent) if study_wall_s else None
    return {
        "run_dir": str(run_dir), "trials": len(trials), "trial_epochs": len(events), "trials_at_once": concurrent,
        "study_wall_s": study_wall_s, "inside_epochs_s": inside, "trial_wall_s": trial_wall,
        "share_of_trial_time": inside / trial_wall if trial_wall else None,
        "share_of_study_time": share_study,
        "per_trial_share": stats(t["share"] for t in trials),
        "startup_s_per_trial": stats(t["startup_s"] for t in trials),
        "first_report_minus_epoch_s": stats(t["first_report_minus_epoch_s"] for t in trials),
        "between_epochs_s": stats(t["between_epochs_s"] for t in trials),
        "epoch_s": stats(e.get("epoch_s") for e in events),
        # where a trial's start-up goes (first report of each worker process; see moco/train.py)
        "startup_ray_s": stats(e.get("startup_ray_s") for e in events),
        "startup_setup_s": stats(e.get("startup_setup_s") for e in events),
        "monitor_s": stats(e.get("monitor_s") for e in events),
        "final_eval_s": stats(e.get("final_eval_s") for e in events),
        "accounting_s": accounting(events, inside, study_wall_s * concurrent if study_wall_s else None),
        "goal": f">= {GOAL_SHARE:.0%} of the study's time inside training epochs (default study)",
        "goal_met": bool(share_study is not None and share_study >= GOAL_SHARE),
        "per_trial": trials,
    }


def accounting(events: list[dict], inside: float, slots_s: float | None) -> dict[str, float] | None:
    """Where the trial slots' time went, in seconds, from what the workers report (moco/train.py, moco/engine.py):
    training epochs, the per-epoch monitor, the final evaluation, worker start-up (Ray's part and the setup), and the
    rest (Tune and Train bookkeeping, trials starting and stopping, reports in flight). None without the timers."""
    if slots_s is None or not any("monitor_s" in e for e in events):
        return None
    parts = {"training epochs": inside,
             "monitor (kNN, ridge probe, raw pixels at the first)": sum(float(e.get("monitor_s") or 0) for e in events),
             "final evaluation": sum(float(e.get("final_eval_s") or 0) for e in events),
             "worker start-up: Ray": sum(float(e.get("startup_ray_s") or 0) for e in events),
             "worker start-up: setup": sum(float(e.get("startup_setup_s") or 0) for e in events)}
    parts["rest: Tune and Train between and around trials"] = slots_s - sum(parts.values())
    return parts


def run_default_search(folder: Path, quick: bool, overrides: dict[str, Any] | None = None,
                       sample_memory: bool = False, extra: list[str] | None = None) -> dict[str, Any]:
    """Run the efficiency benchmark's first TPE + ASHA study (full mode: the default study's search, seed 0, with
    the default's own ``final_eval``, which the efficiency benchmark turns on for its endpoint) in ``folder``, with
    training-config ``overrides`` on top and ``extra`` study/run.py options; return
    :func:`bench.common.run_study`'s record."""
    from bench import efficiency
    from bench.common import run_study, write_space

    cfg = efficiency.settings(quick)
    space = write_space(Path(folder) / "tpe.yaml", {**efficiency.SEARCHERS["tpe_asha"], **cfg["study"], "seed": 0,
                                                    "num_samples": cfg["num_samples"]})
    return run_study(space, Path(folder) / "runs", "tpe-seed0", overrides={**cfg["overrides"], **(overrides or {})},
                     sample_memory=sample_memory, extra=extra)


def run(ctx: Context) -> dict[str, Any]:
    quick, workdir, results_dir = ctx.quick, ctx.workdir, ctx.results_dir
    eff = ctx.results.get("efficiency")
    source = "reused the first TPE + ASHA study of the efficiency benchmark (same invocation)"
    if not eff:
        eff = saved_result(results_dir, "efficiency", quick)
        if eff:
            source = (f"reused the first TPE + ASHA study of the efficiency benchmark's run of {eff['date']} "
                      "(bench/results/efficiency.json; its files still on disk)")
    if not eff or not eff.get("studies", {}).get("tpe_asha") or not Path(
            eff["studies"]["tpe_asha"][0]["run_dir"]).is_dir() or eff.get("quick") != quick:
        record = run_default_search(Path(workdir) / "overhead", quick, sample_memory=True)
        source = ("ran its own TPE + ASHA study (" + ("the efficiency benchmark's quick settings" if quick
                                                       else "the default study, configs/hardneg.yaml as it is") + ")")
    else:
        record = eff["studies"]["tpe_asha"][0]
    out = analyse(Path(record["run_dir"]), record["wall_s"])
    out.update(source=source, study_command=record["command"])
    full_length = [r for r in ((eff or {}).get("studies") or {}).get("random", []) if Path(r["run_dir"]).is_dir()]
    if full_length:  # the same trials without early stopping: every trial runs all epochs (for comparison)
        other = analyse(Path(full_length[0]["run_dir"]), full_length[0]["wall_s"])
        out["without_early_stopping"] = {k: other[k] for k in ("trials", "trial_epochs", "study_wall_s",
                                                               "share_of_study_time", "startup_s_per_trial")}
        out["without_early_stopping"]["study_command"] = full_length[0]["command"]
    if record.get("memory"):  # bench/memory.py reports it when the efficiency benchmark did not run
        out["memory"] = record["memory"]
    return out


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    full = r.get("without_early_stopping")  # the same search with every trial run to the end
    out = [f"Study: {r['source']}; {r['trials']} trials, {r['trial_epochs']} trial-epochs, "
           f"{r['trials_at_once']} trial(s) at once; command `{r.get('study_command', '')}`.", "",
           "| quantity | value |", "|---|---|",
           f"| study wall time | {num(r['study_wall_s'], 1)} s |",
           f"| time inside training epochs (sum of epoch_s) | {num(r['inside_epochs_s'], 1)} s |",
           f"| share of the study's trial slots (wall x trials at once) | {pct(r['share_of_study_time'])} |",
           f"| share of the trials' own time | {pct(r['share_of_trial_time'])} |",
           f"| per-trial share: min / median / max | {spread(r['per_trial_share'], 3)} |",
           f"| start-up per trial (s) | {spread(r['startup_s_per_trial'], 1)} |",
           f"| first report minus its epoch (s) | {spread(r['first_report_minus_epoch_s'], 1)} |",
           *([f"| of which Ray: trainer created -> training function runs (s) | {spread(r['startup_ray_s'], 1)} |",
              f"| of which setup: config, data, model, resume (s) | {spread(r['startup_setup_s'], 2)} |"]
             if (r.get("startup_ray_s") or {}).get("n") else []),
           f"| between epochs: monitor, checkpoint, report (s) | {spread(r['between_epochs_s'], 2)} |",
           f"| one training epoch (s) | {spread(r['epoch_s'], 2)} |",
           *([f"| one monitor (s) | {spread(r['monitor_s'], 2)} |",
              f"| one final evaluation (s) | {spread(r['final_eval_s'], 2)} |"]
             if (r.get("monitor_s") or {}).get("n") else []), "",
           *(["Where the trial slots' time went (wall x trials at once; from the workers' own timers):", "",
              "| part | seconds | share |", "|---|---|---|",
              *(f"| {part} | {num(sec, 1)} | {pct(sec / r['study_wall_s'] / r['trials_at_once'])} |"
                for part, sec in r["accounting_s"].items()), ""] if r.get("accounting_s") else []),
           *([f"The same search without early stopping (random search, every trial runs all epochs; "
              f"`{full['study_command']}`): {full['trials']} trials, {full['trial_epochs']} trial-epochs, "
              f"{num(full['study_wall_s'], 0)} s, **{pct(full['share_of_study_time'])}** inside epochs (start-up "
              f"per trial {spread(full['startup_s_per_trial'], 1, ' s')}).", ""] if full else []),
           goal_sentence(r["goal_met"], f">= {pct(GOAL_SHARE, 0)} of the study's time inside training epochs",
                 "" if r["share_of_study_time"] is None else
                 f"{100 * (GOAL_SHARE - r['share_of_study_time']):.1f} points short")
           + (" This is the quick-mode study (tiny epochs), where fixed start-up costs dominate; the goal applies "
              "to the default study (full mode)." if r.get("quick") else ""), ""]
    return out


def goals(r: dict) -> list[Goal]:
    return [(f">= {pct(GOAL_SHARE, 0)} of the default study's time inside training epochs",
             pct(r["share_of_study_time"]), r["goal_met"])]
