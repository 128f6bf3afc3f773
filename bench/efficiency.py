"""Benchmark: study efficiency of Optuna TPE + ASHA vs random search, at fixed compute budgets.

Each searcher runs the default study (``configs/hardneg.yaml``: its ``base`` and ``search`` sections; scaled down in
quick mode with ``--set`` overrides and fewer trials) through ``study/run.py`` as a subprocess, ``repetitions``
times with searcher seeds 0, 1, ... Random search runs every trial to its budget (no early stopping). Grid search
is not compared: it cannot search the default space, whose ``selection_warmup_epochs`` is conditional.
The studies run without the MoCo v2 baseline as their first trial (``baseline: false``): that free first point is the
same for every searcher, and at these budgets it is often the best point any study finds, which would leave nothing
of the searchers themselves to compare.

**Compute** is the training config's ``compute`` column (one-way epochs; a dual-view epoch counts 2, see
``moco/config.py``): a study's compute after a report is the sum over its trials of their latest ``compute``.
**Endpoint:** the full-validation value of the default study's metric (``final_val_probe_top1`` for its monitor's
ridge probe, ``final_val_knn_top1`` for its kNN: every validation image against the trial's training bank), which a
trial computes when it completes its budget (the studies run with ``final_eval`` on, which the default study's search
leaves to its confirmation); a pruned trial costs compute and yields none.
The per-epoch monitor (a 2k-image sample, binomial SE about 1 point) only steers the search.

From Tune's per-trial ``result.json`` we rebuild, per study, the best endpoint so far against the study's compute, and
report per searcher, over the repetitions (mean and bootstrap 95 % CI):

* the best endpoint within fixed compute budgets: 25, 50 and 100 % of random search's total (median over its
  studies); a study with no completed trial within a budget leaves that budget **undetermined** for its searcher;
* the compute to reach the target (the best endpoint of any study of this run, minus ``TOLERANCE``). A study that never
  reaches it has no such compute: its searcher's median, and the TPE / random ratio, are then **undetermined**, not a
  number.

Goal: TPE + ASHA needs at most a third of random search's compute to reach the target (ratio of medians), with every
study of both searchers reaching it.

The process tree of the first TPE study is sampled for memory (see bench/memory.py) and its files are reused by
bench/overhead.py (Ray overhead) and bench/quality.py (best configuration found).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from bench.common import ROOT, Context, machine, run_study, stats, tune_events, write_space
from bench.page import Goal, cpu_line, goal_sentence, num, spread
from moco.vocabulary import COMPUTE, FINAL_OF

SEARCHERS = {  # name -> study-section overrides
    "tpe_asha": {"searcher": "optuna-tpe", "scheduler": "asha"},
    "random": {"searcher": "random", "scheduler": "none"},
}
DEFAULT_STUDY = yaml.safe_load((ROOT / "configs" / "hardneg.yaml").read_text())["study"]
ENDPOINT = FINAL_OF[DEFAULT_STUDY["metric"]]
FINAL_EVAL = {"final_eval": True}  # on in this benchmark's studies (the default search leaves it to its confirmation)
TOLERANCE = 1.0  # points of the endpoint: 1.7 binomial SEs on 5,000 validation images at 77 %, 1.8 at 82 %
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)  # of random search's total compute
GOAL_RATIO = 1 / 3
RESAMPLES = 2000  # bootstrap resamples of the repetitions
TITLE = "3. Study efficiency"


def settings(quick: bool) -> dict[str, Any]:
    if quick:  # Fashion-MNIST, 2000 training images, compute budget 4, 8 trials, 5 repetitions of the two searchers
        # the goal compares; two 1-CPU trials at once (quicker here, and bench/scaling.py
        # reuses the random study as its 2-at-once point). TPE draws 3 trials at random, then chooses 5 (with
        # Optuna's default 10 start-up trials, TPE would equal random search in 8). About 40 minutes on 2 idle cores.
        return {"num_samples": 8, "repetitions": 5, "study": {"grace_period": 1, "cpus_per_worker": 1,
                                                                     "baseline": False, "startup_trials": 3},
                "overrides": {"compute_budget": 4, "train_subset": 2000, "knn_bank_size": 2000,
                              "knn_val_size": 1000}, "searchers": ("tpe_asha", "random")}
    return {"num_samples": int(DEFAULT_STUDY["num_samples"]), "repetitions": 5, "study": {"baseline": False},
            "overrides": {}, "searchers": tuple(SEARCHERS)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value) else None


def curve(events: Iterable[dict], started: float) -> list[dict[str, float | None]]:
    """The study's best endpoint so far after each epoch report (time order), with its cumulative compute and time.

    ``events``: Tune result rows with ``trial_id``, ``compute`` (the trial's cumulative compute) and, on a trial's
    last report, the endpoint. A trial restarted from a checkpoint repeats compute it already reported; that repeat is
    not counted (the study's compute never decreases)."""
    latest: dict[str, float] = {}
    total, best, out = 0.0, None, []
    for row in events:
        spent = _number(row.get(COMPUTE))
        trial = str(row.get("trial_id"))
        if spent is not None and spent > latest.get(trial, 0.0):
            total += spent - latest.get(trial, 0.0)
            latest[trial] = spent
        value = _number(row.get(ENDPOINT))
        if value is not None and not row.get("diverged"):
            best = value if best is None else max(best, value)
        out.append({"compute": total, "wall_s": max(0.0, float(row.get("timestamp", started)) - started),
                    "best": best})
    return out


def best_within(points: Sequence[dict], budget: float) -> float | None:
    """The best endpoint a study had found once it had spent at most ``budget`` compute (None: none yet)."""
    best = None
    for p in points:
        if p["compute"] > budget + 1e-9:
            break
        best = p["best"]
    return best


def compute_to_target(points: Sequence[dict], target: float) -> float | None:
    """The study's compute at its first report whose best endpoint reached ``target``; None when it never did."""
    return next((p["compute"] for p in points if p["best"] is not None and p["best"] >= target), None)


def bootstrap_ci(groups: Sequence[Sequence[float]], statistic: Callable[..., float], resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % CI of ``statistic(*groups)``, each group resampled with replacement on its own."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(g, dtype=float) for g in groups]
    draws = [statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays)) for _ in range(resamples)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def _mean_ci(values: list[float | None]) -> dict[str, Any]:
    """Mean and bootstrap CI of per-study values; undetermined when any study has none."""
    known = [v for v in values if v is not None]
    if not values or len(known) < len(values):
        return {"mean": None, "ci": None, "n": len(known), "of": len(values), "undetermined": True}
    ci = bootstrap_ci([known], np.mean) if len(known) > 1 else None
    return {"mean": float(np.mean(known)), "ci": ci, "n": len(known), "of": len(values), "undetermined": False}


def setup(quick: bool) -> dict[str, Any]:
    """What a study of this benchmark depends on; a saved study is reused only under an equal setup."""
    base = settings(quick)
    return {"space": "configs/hardneg.yaml (base + search; study section per searcher)",
            "overrides": base["overrides"], "num_samples": base["num_samples"],
            "repetitions": base["repetitions"], "searchers": {k: SEARCHERS[k] for k in base["searchers"]},
            "study_extra": base["study"],
            "endpoint": f"{ENDPOINT} (full validation split, at the end of each completed trial)",
            "compute": f"{COMPUTE} (one-way epochs; a dual-view epoch counts 2)", "tolerance_points": TOLERANCE,
            "budget_fractions_of_random": list(BUDGET_FRACTIONS)}


def reusable_studies(previous: dict[str, Any] | None, quick: bool) -> dict[str, list[dict[str, Any]]]:
    """The finished studies of an interrupted run (``previous``: its partial result) that this run may keep.

    Only a result with the same setup qualifies; the caller checks that the training code is unchanged."""
    if not previous or previous.get("setup") != json.loads(json.dumps(setup(quick))):
        return {}
    return {name: [r for r in previous.get("studies", {}).get(name, []) if "points" in r]
            for name in settings(quick)["searchers"]}


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.median(a) / np.median(b))


def _goal_met(partial: bool, ratio: float | None, tpe: dict | None) -> bool | None:
    """Judged on the complete run only: missed when a TPE + ASHA study never reached the target, undetermined (None)
    when only random search did not, else whether the ratio is at most a third."""
    if partial or not tpe:
        return None
    if tpe["reached"] < tpe["repetitions"]:
        return False
    return None if ratio is None else bool(ratio <= GOAL_RATIO)


def summarize(studies: dict[str, list[dict[str, Any]]], quick: bool) -> dict[str, Any]:
    """Budgets, best endpoint within each, compute to target, the TPE / random ratio and the goal, so far."""
    cfg = setup(quick)
    planned = cfg["repetitions"] * len(cfg["searchers"])
    done = sum(len(runs) for runs in studies.values())
    bests = [r["best"] for runs in studies.values() for r in runs if r.get("best") is not None]
    best = max(bests) if bests else None
    target = None if best is None else best - TOLERANCE
    random_totals = [r["points"][-1]["compute"] for r in studies.get("random", []) if r.get("points")]
    reference = statistics.median(random_totals) if random_totals else None
    budgets = [] if reference is None else [{"fraction": f, "compute": f * reference} for f in BUDGET_FRACTIONS]
    summary = {}
    for name, runs in studies.items():
        to_target = [None if target is None else compute_to_target(r["points"], target) for r in runs]
        for r, c in zip(runs, to_target):
            r["compute_to_target"] = c
        reached = [c for c in to_target if c is not None]
        summary[name] = {
            "repetitions": len(runs), "reached": len(reached),
            "compute_to_target": {"values": to_target, "median": (statistics.median(reached) if runs and
                                                                  len(reached) == len(runs) else None)},
            "at_budget": [{**b, **_mean_ci([best_within(r["points"], b["compute"]) for r in runs])}
                          for b in budgets],
            "total_compute": stats(r["points"][-1]["compute"] if r["points"] else 0.0 for r in runs),
            "study_wall_s": stats(r["wall_s"] for r in runs),
            "best_endpoint": stats(r["best"] for r in runs if r.get("best") is not None),
        }
    tpe, rnd = summary.get("tpe_asha"), summary.get("random")
    ratio, ratio_ci, why = None, None, None
    if not tpe or not rnd or not tpe["repetitions"] or not rnd["repetitions"]:
        why = "no study of one of the two searchers yet"
    elif tpe["compute_to_target"]["median"] is None:
        why = f"TPE + ASHA reached the target in {tpe['reached']} of {tpe['repetitions']} studies"
    elif rnd["compute_to_target"]["median"] is None:
        why = f"random search reached the target in {rnd['reached']} of {rnd['repetitions']} studies"
    else:
        a, b = tpe["compute_to_target"]["values"], rnd["compute_to_target"]["values"]
        ratio = _median_ratio(a, b)
        ratio_ci = bootstrap_ci([a, b], _median_ratio) if len(a) > 1 and len(b) > 1 else None
    return {
        "setup": cfg, "partial": done < planned, "studies_done": done, "studies_planned": planned,
        "best_endpoint_any": best, "target": target, "budgets": budgets, "summary": summary,
        "tpe_over_random_compute": ratio, "tpe_over_random_compute_ci": ratio_ci, "ratio_undetermined": why,
        "goal": f"TPE+ASHA needs <= 1/3 of random search's compute to reach the best {ENDPOINT} - {TOLERANCE}",
        # judged only on the complete run: with studies missing, the target itself may still rise
        "goal_met": _goal_met(done < planned, ratio, tpe),
        "studies": studies,
    }


def run(ctx: Context) -> dict[str, Any]:
    """Run every (repetition, searcher) study not already in ``ctx.previous`` (the partial result of an interrupted
    run); ``ctx.save`` gets the summary after each."""
    quick, save, previous = ctx.quick, ctx.save, ctx.previous
    cfg = settings(quick)
    workdir = Path(ctx.workdir) / "efficiency"
    if workdir.exists():
        shutil.rmtree(workdir)
    kept = reusable_studies(previous, quick)
    provenance = {"resumed_from": previous.get("resumed_from")} if kept else {}
    studies: dict[str, list[dict[str, Any]]] = {name: [] for name in cfg["searchers"]}
    for rep in range(cfg["repetitions"]):  # interleave searchers so load drift hits all alike
        for name in cfg["searchers"]:
            study = SEARCHERS[name]
            old = next((r for r in kept.get(name, []) if r.get("seed") == rep), None)
            if old is not None:
                print(f"[efficiency] {name} seed {rep}: kept from the interrupted run", flush=True)
                studies[name].append({**old, "reused": True})
                continue
            print(f"[efficiency] {name} seed {rep} ...", flush=True)
            space = write_space(workdir / f"{name}.yaml", {**study, **cfg["study"], "seed": rep,
                                                            "num_samples": cfg["num_samples"]})
            record = run_study(space, workdir / "runs", f"{name}-seed{rep}",
                               overrides={**cfg["overrides"], **FINAL_EVAL},
                               sample_memory=(name == "tpe_asha" and rep == 0))
            events = tune_events(Path(record["run_dir"]))
            points = curve(events, record["started_unix"])
            record.update(seed=rep, points=points, reports=len(events), best=points[-1]["best"] if points else None,
                          cpu=cpu_line(machine()))  # a resumed run may span sessions on different machines
            studies[name].append(record)
            print(f"[efficiency] {name} seed {rep}: best {ENDPOINT} {record['best']}, "
                  f"compute {points[-1]['compute'] if points else 0:g}, {record['wall_s']:.0f} s", flush=True)
            if save is not None:
                save({**summarize(studies, quick), **provenance})
    return {**summarize(studies, quick), **provenance}


def figure(result: dict[str, Any], path: Path) -> Path:
    """Best endpoint so far against the study's compute, every study of every searcher, with the budgets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    # grid: studies in result files of earlier versions
    colors = {"tpe_asha": "tab:blue", "random": "tab:orange", "grid": "tab:green"}
    labels = {"tpe_asha": "Optuna TPE + ASHA", "random": "random, no early stopping", "grid": "grid, no early stopping"}
    styles = {"tpe_asha": ("-", 2.2, 3), "random": ("--", 1.5, 2), "grid": (":", 1.7, 2)}
    for name in ("grid", "random", "tpe_asha"):  # TPE drawn last, on top
        for i, r in enumerate(result["studies"].get(name, [])):
            pts = [p for p in r["points"] if p["best"] is not None]
            ls, lw, z = styles[name]
            ax.step([p["compute"] for p in pts], [p["best"] for p in pts], where="post", color=colors[name],
                    ls=ls, lw=lw, zorder=z, alpha=0.8, label=labels[name] if i == 0 else None)
    if result.get("target") is not None:
        ax.axhline(result["target"], color="grey", ls="--", lw=1, label=f"target (best - {TOLERANCE:g})")
    for b in result.get("budgets", []):
        ax.axvline(b["compute"], color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel("study compute (one-way epochs; dual-view epochs count 2; vertical lines: budgets)")
    endpoint = str(result.get("setup", {}).get("endpoint", "endpoint")).split(" (")[0]
    ax.set_ylabel(f"best {endpoint} so far (%)")
    ax.set_title("Study efficiency" + (" (quick mode)" if result.get("quick") else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_NAMES = {"tpe_asha": "Optuna TPE + ASHA", "random": "random", "grid": "grid (2 points per parameter)"}


def _ci(mean: float | None, ci: Sequence[float] | None) -> str:
    if mean is None:
        return "undetermined"
    return f"{mean:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _tpe_startup_trials(study_settings: dict[str, Any]) -> int:
    """TPE's random start-up trials in the benchmark's studies: their ``startup_trials``, else Optuna's default."""
    import inspect

    import optuna

    if study_settings.get("startup_trials") is not None:
        return int(study_settings["startup_trials"])
    return int(inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default)


def _cpus(r: dict[str, Any]) -> list[str]:
    """A line naming the CPUs the studies ran on, when a resumed run spans more than one."""
    by_cpu: dict[str, list[str]] = {}
    for name, runs in r["studies"].items():
        for run in runs:
            by_cpu.setdefault(run.get("cpu") or "CPU not recorded", []).append(f"{name} seed {run.get('seed')}")
    if len(by_cpu) < 2:
        return []
    return ["", "The run was resumed on other machines; its studies ran on " + "; ".join(
        f"{cpu}: {', '.join(runs)}" for cpu, runs in by_cpu.items()) + ". Compute and endpoints do not depend on a "
        "CPU's speed; wall times do."]


def render(r: dict[str, Any], figs: Path) -> list[str]:
    """The page's section: setup, best endpoint within each budget, compute to target, the ratio and its goal."""
    if "budgets" not in r:  # a result of the earlier benchmark (trial-epochs of the per-epoch monitor)
        return ["*The saved result predates the compute-budget benchmark (it counted trial-epochs of the 2k-image "
                "monitor); rerun `python bench/run.py --only efficiency`.*", ""]
    fig = figure(r, figs / "efficiency.png")
    s = r["setup"]
    out = [f"Space {s['space']}; overrides {s['overrides'] or 'none (the default study)'}; {s['num_samples']} trials "
           f"per study, {s['repetitions']} repetitions per searcher (searcher seeds 0..{s['repetitions'] - 1}; "
           f"training seed 0). Endpoint: {s['endpoint']}. Compute: {s['compute']}. Means over the repetitions with "
           "bootstrap 95 % CIs.", *_cpus(r), "",
           "Best endpoint found within a compute budget (a fraction of random search's total, median over its "
           "studies; *undetermined* where some study had no completed trial yet):", "",
           "| searcher | " + " | ".join(f"{100 * b['fraction']:.0f} % ({b['compute']:g})" for b in r["budgets"])
           + " | total compute | best |", "|---|" + "---|" * (len(r["budgets"]) + 2)]
    for name, sm in r["summary"].items():
        cells = [_ci(a["mean"], a["ci"]) + ("" if not a["undetermined"] else f" ({a['n']} of {a['of']} studies)")
                 for a in sm["at_budget"]]
        out.append(f"| {_NAMES.get(name, name)} | " + " | ".join(cells)
                   + f" | {spread(sm['total_compute'], 0)} | {spread(sm['best_endpoint'])} |")
    startup = _tpe_startup_trials(s.get("study_extra") or {})
    guided = max(0, s["num_samples"] - startup)
    out += ["", f"Both samplers are seeded with the study's seed, so TPE's first {startup} trials (Optuna's random "
            f"start-up, `n_startup_trials`) are the very configurations random search draws: of the {s['num_samples']} "
            f"trials per study, {guided} are chosen by TPE's model. Where none are, the two rows differ only by what "
            "ASHA saved."]
    out += ["", f"Target: the best endpoint of any study, {num(r['best_endpoint_any'])}, minus "
            f"{s['tolerance_points']} = {num(r.get('target'))}.", "",
            "| searcher | studies reaching the target | compute to target, per study | median |", "|---|---|---|---|"]
    for name, sm in r["summary"].items():
        ct = sm["compute_to_target"]
        per = ", ".join("never" if v is None else f"{v:g}" for v in ct["values"])
        out.append(f"| {_NAMES.get(name, name)} | {sm['reached']}/{sm['repetitions']} | {per} | "
                   f"{'undetermined' if ct['median'] is None else format(ct['median'], 'g')} |")
    ratio = r["tpe_over_random_compute"]
    if ratio is None:
        verdict = f"TPE + ASHA / random, compute to target: **undetermined** ({r['ratio_undetermined']})."
    else:
        ci = r.get("tpe_over_random_compute_ci")
        verdict = f"TPE + ASHA / random, compute to target (ratio of medians): {ratio:.3f}" + (
            f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "."
    out += ["", verdict + " " + goal_sentence(r["goal_met"], "<= 1/3 (0.333) with every study reaching the target",
                                      r.get("ratio_undetermined") or ""), ""]
    if r.get("partial"):
        out += [f"**Partial run: {r['studies_done']} of {r['studies_planned']} studies finished** (the run was "
                "stopped; `python bench/run.py --only efficiency --resume` runs the rest and keeps these). The goal "
                "is judged on the complete run only: a later study may still raise the target.", ""]
    if r.get("resumed_from"):
        src = r["resumed_from"]
        kept = [f"{name} seed {x['seed']}" for name, runs in r["studies"].items() for x in runs if x.get("reused")]
        out += [f"Kept from the interrupted run of {src.get('date')} (commit {str(src.get('commit'))[:10]}, same "
                f"benchmark code and setup): {', '.join(kept) or 'none'}.", ""]
    out += [f"![best-so-far vs compute](figures/{fig.name})", ""]
    return out


def goals(r: dict[str, Any]) -> list[Goal]:
    """(goal, measured, met) rows for the page's summary table."""
    if "budgets" not in r:
        return [("TPE + ASHA needs <= 1/3 of random search's compute", "not measured (old result format)", None)]
    ratio = r["tpe_over_random_compute"]
    measured = ("undetermined: " + r["ratio_undetermined"]) if ratio is None else f"{ratio:.3f} of random's compute"
    partial = f"not judged: partial run, {r['studies_done']} of {r['studies_planned']} studies"
    return [("TPE + ASHA needs <= 1/3 of random search's compute", measured,
             partial if r.get("partial") else r["goal_met"])]
