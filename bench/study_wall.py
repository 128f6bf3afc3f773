"""Benchmark: the default study's search in fp32 and in ``precision: auto``, on the same machine (issue #22).

The ``auto`` side is the overhead benchmark's study (this invocation's, else the one named in
``bench/results/overhead.json`` while its files are on disk and it ran on this CPU, else one run here); the fp32
side is the same study (:func:`bench.overhead.run_default_search`: the default study's search, Optuna TPE + ASHA,
seed 0) with ``precision: fp32``, run right after it. The two searches see different metric values, so TPE and ASHA
can choose other trials and stop them at other rungs: beside each search's wall time and time inside epochs the page
gives the median epoch of each kind (one-way, dual-view), which compares like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Context, saved_result, stats, tune_events
from bench.page import Goal, num, spread

TITLE = "11. The default study's search in fp32 and in auto precision"
SIDES = ("auto", "fp32")
KINDS = ("one-way", "dual-view")


def summarise(run_dir: Path, wall_s: float, command: str) -> dict[str, Any]:
    """Wall time, time inside epochs, trial-epochs, the precisions the workers resolved, and epochs by kind."""
    events = [e for e in tune_events(run_dir) if e.get("epoch_s") is not None]
    by_views: dict[str, list[float]] = {"one-way": [], "dual-view": []}
    for e in events:
        views = float(e.get("compute") or 0) / max(1, int(e.get("epoch") or 1))
        by_views["dual-view" if views > 1 else "one-way"].append(float(e["epoch_s"]))
    return {"run_dir": str(run_dir), "command": command, "wall_s": wall_s, "trial_epochs": len(events),
            "trials": len({e.get("trial_id") for e in events}),
            "inside_epochs_s": sum(float(e["epoch_s"]) for e in events),
            "precision": sorted({str(e.get("precision")) for e in events}),
            "epoch_s": {kind: stats(values) for kind, values in by_views.items()}}


def _auto_side(ctx: Context) -> dict[str, Any]:
    from bench.overhead import run_default_search

    overhead = ctx.results.get("overhead") or saved_result(ctx.results_dir, "overhead", ctx.quick, this_cpu=True)
    if overhead and Path(overhead.get("run_dir", "")).is_dir() and overhead.get("study_wall_s"):
        return summarise(Path(overhead["run_dir"]), overhead["study_wall_s"], overhead.get("study_command", ""))
    record = run_default_search(Path(ctx.workdir) / "study_wall" / "auto", ctx.quick, {"precision": "auto"})
    return summarise(Path(record["run_dir"]), record["wall_s"], record["command"])


def run(ctx: Context) -> dict[str, Any]:
    from bench.overhead import run_default_search

    out: dict[str, Any] = {"auto": _auto_side(ctx)}
    record = run_default_search(Path(ctx.workdir) / "study_wall" / "fp32", ctx.quick, {"precision": "fp32"})
    out["fp32"] = summarise(Path(record["run_dir"]), record["wall_s"], record["command"])
    auto, fp32 = out["auto"], out["fp32"]
    out["fp32_over_auto"] = {
        "wall": fp32["wall_s"] / auto["wall_s"],
        "inside_epochs": fp32["inside_epochs_s"] / auto["inside_epochs_s"],
        **{f"epoch_{kind}": (fp32["epoch_s"][kind]["median"] / auto["epoch_s"][kind]["median"]
                             if fp32["epoch_s"][kind]["n"] and auto["epoch_s"][kind]["n"] else None)
           for kind in KINDS}}
    return out


def render(r: dict, figs: Path) -> list[str]:
    rows = ["| | " + " | ".join(f"`precision: {side}` ({', '.join(r[side]['precision'])})" for side in SIDES) + " |",
            "|---|---|---|",
            "| search wall time (s) | " + " | ".join(num(r[side]["wall_s"], 0) for side in SIDES) + " |",
            "| inside training epochs (s) | " + " | ".join(num(r[side]["inside_epochs_s"], 0) for side in SIDES) + " |",
            "| trials / trial-epochs | " + " | ".join(f"{r[side]['trials']} / {r[side]['trial_epochs']}"
                                                     for side in SIDES) + " |",
            *(f"| {kind} epoch (s): min / median / max | "
              + " | ".join(spread(r[side]["epoch_s"][kind], 2) for side in SIDES) + " |"
              for kind in KINDS if any(r[side]["epoch_s"][kind]["n"] for side in SIDES))]
    ratio = r["fp32_over_auto"]
    epochs = "".join(f", median {kind} epoch {num(ratio[f'epoch_{kind}'], 2)}x" for kind in KINDS
                     if ratio.get(f"epoch_{kind}") is not None)
    return [f"Commands: `{r['auto']['command']}` (auto) and `{r['fp32']['command']}` (fp32), one after the other.",
            "", *rows, "",
            f"fp32 / auto: search wall time {num(ratio['wall'], 2)}x, time inside epochs "
            f"{num(ratio['inside_epochs'], 2)}x{epochs}. The searches may differ in the trials they ran (TPE and ASHA "
            "see each precision's own metric values); the epoch medians compare like with like.", ""]


def goals(r: dict) -> list[Goal]:
    return []  # measured for the README (issue #22); the speed goal is the step benchmark's
