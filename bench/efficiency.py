"""Benchmark: study efficiency of Optuna TPE + ASHA vs random search vs grid search (same trial budget).

Each searcher runs the default study (``configs/hardneg.yaml``: its ``base`` and ``search`` sections; scaled down in
quick mode with ``--set`` overrides and fewer trials) through ``study/run.py`` as a subprocess, ``repetitions``
times with different searcher seeds. Random and grid search run every trial to the end (no early stopping). From
Tune's per-trial ``result.json`` (one line per epoch report, with its time) we rebuild, for every study, the
best-so-far validation kNN (the study metric) against cumulative compute: trial-epochs and wall seconds since the
study started. The target is the best validation kNN any study of this run found, minus 0.5 points; the compute a
study needs is the trial-epochs (and wall time) of the first report reaching the target. A study that never reaches it
is reported as "not reached" and counted at its whole budget (a lower bound). Goal: TPE + ASHA needs at most a third
of random search's trial-epochs (ratio of medians over repetitions).

The process tree of the first TPE study is sampled for memory (see bench/memory.py) and its files are reused by
bench/overhead.py (Ray overhead) and bench/quality.py (best configuration found).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from fractions import Fraction
from typing import Any

from bench.common import Context, run_study, stats, tune_events, write_space
from bench.page import Goal, goal_sentence, num, spread

SEARCHERS = {  # name -> study-section overrides
    "tpe_asha": {"searcher": "optuna-tpe", "scheduler": "asha"},
    "random": {"searcher": "random", "scheduler": "none"},
    "grid": {"searcher": "grid", "scheduler": "none", "grid_points": 2},
}
TOLERANCE = 0.5  # points of validation kNN top-1
GOAL_RATIO = 1 / 3  #: TPE + ASHA over random search, trial-epochs to the target (medians)
TITLE = "3. Study efficiency"


def settings(quick: bool) -> dict[str, Any]:
    if quick:  # tiny: Fashion-MNIST, 2000 training images, 3 epochs, 4 trials, 1 repetition
        # two 1-CPU trials at once (quicker here, and bench/scaling.py reuses the random study as its 2-at-once point)
        return {"num_samples": 4, "repetitions": 1, "study": {"grace_period": 1, "cpus_per_worker": 1},
                "overrides": {"epochs": 3, "train_subset": 2000, "knn_bank_size": 2000, "knn_val_size": 1000}}
    import yaml

    from bench.common import ROOT

    default = yaml.safe_load((ROOT / "configs" / "hardneg.yaml").read_text())["study"]["num_samples"]
    return {"num_samples": int(default), "repetitions": 3, "study": {}, "overrides": {}}  # the default study as it is


def curve(events: list[dict], started: float, metric: str = "val_knn_top1") -> list[dict[str, float]]:
    """Best-so-far metric after each epoch report, in time order, with cumulative trial-epochs and wall seconds."""
    out, best = [], -math.inf
    for i, row in enumerate(events, 1):
        value = row.get(metric)
        if isinstance(value, (int, float)) and not row.get("diverged") and value == value:
            best = max(best, float(value))
        out.append({"trial_epochs": i, "wall_s": max(0.0, float(row.get("timestamp", started)) - started),
                    "best": best if best > -math.inf else None})
    return out


def compute_to_target(points: list[dict[str, float]], target: float) -> dict[str, Any]:
    for p in points:
        if p["best"] is not None and p["best"] >= target:
            return {"reached": True, "trial_epochs": p["trial_epochs"], "wall_s": p["wall_s"]}
    last = points[-1] if points else {"trial_epochs": 0, "wall_s": 0.0}
    return {"reached": False, "trial_epochs": last["trial_epochs"], "wall_s": last["wall_s"]}


def setup(quick: bool) -> dict[str, Any]:
    """What a study of this benchmark depends on; a saved study is reused only under an equal setup."""
    base = settings(quick)
    return {"space": "configs/hardneg.yaml (base + search; study section per searcher)",
            "overrides": base["overrides"], "num_samples": base["num_samples"],
            "repetitions": base["repetitions"], "searchers": SEARCHERS, "study_extra": base["study"],
            "metric": "val_knn_top1 (per-epoch validation monitor)", "tolerance_points": TOLERANCE}


def reusable_studies(previous: dict[str, Any] | None, quick: bool) -> dict[str, list[dict[str, Any]]]:
    """The finished studies of an interrupted run (``previous``: its partial result) that this run may keep.

    Only a result with the same setup qualifies; the caller checks that the training code is unchanged."""
    if not previous or previous.get("setup") != json.loads(json.dumps(setup(quick))):
        return {}
    return {name: [r for r in previous.get("studies", {}).get(name, []) if "points" in r] for name in SEARCHERS}


def summarize(studies: dict[str, list[dict[str, Any]]], quick: bool) -> dict[str, Any]:
    """Target, compute-to-target per study and per searcher, and the goal, over the studies finished so far."""
    cfg = setup(quick)
    planned = cfg["repetitions"] * len(SEARCHERS)
    done = sum(len(runs) for runs in studies.values())
    bests = [r["best"] for runs in studies.values() for r in runs if r["best"] is not None]
    best = max(bests) if bests else None
    target = None if best is None else best - TOLERANCE
    summary = {}
    for name, runs in studies.items():
        for r in runs:
            r["to_target"] = (compute_to_target(r["points"], target) if target is not None
                              else {"reached": False, "trial_epochs": None, "wall_s": None})
        summary[name] = {
            "reached": sum(r["to_target"]["reached"] for r in runs), "repetitions": len(runs),
            "trial_epochs_to_target": stats(r["to_target"]["trial_epochs"] for r in runs),
            "wall_s_to_target": stats(r["to_target"]["wall_s"] for r in runs),
            "total_trial_epochs": stats(r["points"][-1]["trial_epochs"] if r["points"] else 0 for r in runs),
            "study_wall_s": stats(r["wall_s"] for r in runs),
            "best_val_knn": stats(r["best"] for r in runs),
        }
    tpe, rnd = summary["tpe_asha"], summary["random"]

    def ratio(key: str) -> float | None:
        a, b = tpe[key]["median"], rnd[key]["median"]
        return a / b if a is not None and b else None

    te_ratio = ratio("trial_epochs_to_target")
    return {
        "setup": cfg, "partial": done < planned, "studies_done": done, "studies_planned": planned,
        "best_val_knn_any": best, "target": target, "summary": summary,
        "tpe_over_random_trial_epochs": te_ratio, "tpe_over_random_wall": ratio("wall_s_to_target"),
        "goal": f"TPE+ASHA needs <= 1/3 of random search's trial-epochs to reach best - {TOLERANCE}",
        # judged only on the complete run: with studies missing, the target itself may still rise
        "goal_met": (None if done < planned or te_ratio is None
                     else bool(te_ratio <= GOAL_RATIO and tpe["reached"] == tpe["repetitions"])),
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
    studies: dict[str, list[dict[str, Any]]] = {name: [] for name in SEARCHERS}
    for rep in range(cfg["repetitions"]):  # interleave searchers so load drift hits all alike
        for name, study in SEARCHERS.items():
            old = next((r for r in kept.get(name, []) if r.get("seed") == rep), None)
            if old is not None:
                print(f"[efficiency] {name} seed {rep}: kept from the interrupted run", flush=True)
                studies[name].append({**old, "reused": True})
                continue
            print(f"[efficiency] {name} seed {rep} ...", flush=True)
            space = write_space(workdir / f"{name}.yaml", {**study, **cfg["study"], "seed": rep,
                                                            "num_samples": cfg["num_samples"]})
            record = run_study(space, workdir / "runs", f"{name}-seed{rep}", overrides=cfg["overrides"],
                               sample_memory=(name == "tpe_asha" and rep == 0))
            events = tune_events(Path(record["run_dir"]))
            record.update(seed=rep, points=curve(events, record["started_unix"]), reports=len(events),
                          best=max((e["val_knn_top1"] for e in events if not e.get("diverged")
                                    and isinstance(e.get("val_knn_top1"), (int, float))), default=None))
            studies[name].append(record)
            print(f"[efficiency] {name} seed {rep}: best {record['best']}, {len(events)} trial-epochs, "
                  f"{record['wall_s']:.0f} s", flush=True)
            if save is not None:
                save({**summarize(studies, quick), **provenance})
    return {**summarize(studies, quick), **provenance}


def figure(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"tpe_asha": "tab:blue", "random": "tab:orange", "grid": "tab:green"}
    labels = {"tpe_asha": "Optuna TPE + ASHA", "random": "random, no early stopping", "grid": "grid, no early stopping"}
    styles = {"tpe_asha": ("-", 2.4, 3), "random": ("--", 1.6, 2), "grid": (":", 1.8, 2)}
    for name in ("grid", "random", "tpe_asha"):  # TPE drawn last, on top
        for i, r in enumerate(result["studies"].get(name, [])):
            pts = [p for p in r["points"] if p["best"] is not None]
            ls, lw, z = styles[name]
            ax.step([p["trial_epochs"] for p in pts], [p["best"] for p in pts], where="post", color=colors[name],
                    ls=ls, lw=lw, zorder=z, alpha=0.9, label=labels[name] if i == 0 else None)
    ax.axhline(result["target"], color="grey", ls="--", lw=1, label=f"target (best - {TOLERANCE})")
    ax.set_xlabel("cumulative compute (trial-epochs)")
    ax.set_ylabel("best validation kNN top-1 so far (%)")
    ax.set_title("Study efficiency" + (" (quick mode)" if result.get("quick") else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the page -----------------------------------------------------------------------------------------------------
def _goal_fraction() -> str:
    return str(Fraction(GOAL_RATIO).limit_denominator(100))


def _random_bound(r: dict) -> str:
    """Why the TPE / random ratio is an upper bound, when random search missed the target in some studies."""
    rnd = r["summary"]["random"]
    missed = rnd["repetitions"] - rnd["reached"]
    return (f" Random search missed the target in {missed} of {rnd['repetitions']} studies; they count their whole "
            "budget, a lower bound on what they need, so the true ratio can only be lower." if missed else "")


def render(r: dict, figs: Path) -> list[str]:
    fig = figure(r, figs / "efficiency.png")
    setup = r["setup"]
    out = [f"Space {setup['space']}; overrides {setup['overrides'] or 'none (the default study)'}; "
           f"{setup['num_samples']} trials per study, {setup['repetitions']} repetition(s) per searcher (searcher "
           f"seeds 0..{setup['repetitions'] - 1}); metric {setup['metric']}. Best validation kNN any study found: "
           f"{num(r['best_val_knn_any'])}; target {num(r['target'])}.", "",
           "| searcher | reached target | trial-epochs to target | wall s to target | trial-epochs used | "
           "study wall s | best val kNN |", "|---|---|---|---|---|---|---|"]
    for name, sm in r["summary"].items():
        out.append(f"| {name} | {sm['reached']}/{sm['repetitions']} | {spread(sm['trial_epochs_to_target'], 0)} | "
                   f"{spread(sm['wall_s_to_target'], 0)} | {spread(sm['total_trial_epochs'], 0)} | "
                   f"{spread(sm['study_wall_s'], 0)} | {spread(sm['best_val_knn'])} |")
    ratio = r["tpe_over_random_trial_epochs"]
    tpe = r["summary"]["tpe_asha"]  # the goal also asks that every TPE + ASHA study reaches the target
    short_by = "; ".join(
        ([f"by {ratio - GOAL_RATIO:.3f}: {ratio / GOAL_RATIO:.2f}x the allowed compute"]
         if ratio and ratio > GOAL_RATIO else [])
        + ([f"TPE + ASHA reached the target in {tpe['reached']} of {tpe['repetitions']} studies"]
           if tpe["reached"] < tpe["repetitions"] else []))
    out += ["", "A study that never reached the target counts its whole budget (a lower bound).", "",
            f"TPE + ASHA / random, trial-epochs to target (medians): {num(ratio, 3)}; wall time: "
            f"{num(r.get('tpe_over_random_wall'), 3)}. "
            + goal_sentence(r["goal_met"], f"<= {_goal_fraction()} ({GOAL_RATIO:.3f})", short_by)
            + _random_bound(r), ""]
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


def goals(r: dict) -> list[Goal]:
    partial = f"not judged: partial run, {r['studies_done']} of {r['studies_planned']} studies"
    rnd = r["summary"]["random"]
    missed = rnd["repetitions"] - rnd["reached"]
    bound = f" (at most: random missed the target in {missed} of {rnd['repetitions']} studies)" if missed else ""
    return [(f"TPE + ASHA needs <= {_goal_fraction()} of random search's compute",
             f"{num(r['tpe_over_random_trial_epochs'], 3)} of random's trial-epochs{bound}",
             partial if r.get("partial") else r["goal_met"])]
