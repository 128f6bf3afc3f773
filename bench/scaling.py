"""Benchmark: scaling on this machine, written as efficiency against linear.

1. Data parallel: training images/s of one Ray Train run (``moco.trainer.make_trainer``, gloo, CPU) of the default
   study's base config on a Fashion-MNIST subset with 1 worker x 1 CPU and 2 workers x 1 CPU (plus, in full mode,
   1 worker x 2 CPUs, all cores in one process, for reference). Runs alternate (1, 2, 1x2CPU, 1, 2, ...); each
   epoch after the first is one repetition (the first epoch is warm-up).
   Efficiency = images/s(2 workers) / (2 x images/s(1 worker)).
2. Trial parallel: wall time of the same study (random search with a fixed seed, no early stopping, 1 worker x 1 CPU
   per trial) with ``--max-concurrent 1`` and ``2``. Efficiency = T(1) / (2 x T(2)). In quick mode the random-search
   study of bench/efficiency.py (run at 2 trials at once) is reused as the ``--max-concurrent 2`` point when present.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, loadavg, run_study, stats, write_space
from bench.page import Goal, num, pct, spread

SPACE = ROOT / "configs" / "hardneg.yaml"
TITLE = "5. Scaling"


def _base_config(quick: bool):
    from study.space import load_space

    base = load_space(str(SPACE)).base
    epochs = 3 if quick else 5
    return base.replace(compute_budget=epochs, train_subset=4096 if quick else 12288, final_eval=False, knn_every=100,
                        keep_checkpoints=epochs, checkpoint_every=1)


def _epoch_rates(result) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        frame = result.metrics_dataframe
        if frame is not None and len(frame):
            rows = frame.to_dict("records")
    except Exception:  # noqa: BLE001 - fall back to the kept checkpoints' metrics
        rows = []
    if not rows:
        rows = [metrics for _, metrics in (result.best_checkpoints or [])]
    return sorted(rows, key=lambda r: r.get("epoch", 0))


def data_parallel(quick: bool, workdir: Path) -> dict[str, Any]:
    import ray

    from moco.ray_address import start_local_ray
    from moco.train import absolute_paths
    from moco.trainer import make_trainer

    cfg = absolute_paths(_base_config(quick))
    layouts = {"1 worker x 1 CPU": (1, 1.0), "2 workers x 1 CPU": (2, 1.0)}
    if not quick:  # reference: all cores in one process
        layouts["1 worker x 2 CPUs"] = (1, 2.0)
    rounds = 1 if quick else 2
    rates: dict[str, list[float]] = {k: [] for k in layouts}
    shares: dict[str, list[float]] = {k: [] for k in layouts}
    storage = Path(workdir) / "scaling" / "train"
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    started_here = not ray.is_initialized()
    if started_here:  # a new instance, whose own processes know its address (see moco.ray_address)
        start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for r in range(rounds):
            for name, (workers, cpus) in layouts.items():
                trainer = make_trainer(cfg, workers=workers, use_gpu=False, cpus_per_worker=cpus,
                                       storage=str(storage), name=f"r{r}-{workers}w-{int(cpus)}c", max_failures=0)
                rows = _epoch_rates(trainer.fit())
                for row in rows:
                    if row.get("epoch", 0) >= 2:  # epoch 1 is warm-up
                        rates[name].append(float(row["images_per_s"]))
                        shares[name].append(float(row.get("data_share") or 0))
    finally:
        if started_here:
            ray.shutdown()
    one, two = stats(rates["1 worker x 1 CPU"]), stats(rates["2 workers x 1 CPU"])
    return {"config": {"train_subset": cfg.train_subset, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                       "width": cfg.width, "backbone": cfg.backbone, "rounds": rounds,
                       "repetition": "one epoch after the first, per run"},
            "images_per_s": {k: stats(v) for k, v in rates.items()},
            "data_share": {k: stats(v) for k, v in shares.items()},
            "efficiency_vs_linear": two["median"] / (2 * one["median"]) if one["median"] else None,
            "efficiency_vs_linear_of_minimums": two["min"] / (2 * one["min"]) if one["min"] else None,
            "two_workers_over_one_process_two_cpus":
                two["median"] / stats(rates["1 worker x 2 CPUs"])["median"] if rates.get("1 worker x 2 CPUs") else None}


def trial_parallel(quick: bool, workdir: Path, context: dict[str, Any]) -> dict[str, Any]:
    from bench import efficiency

    cfg = efficiency.settings(quick)
    num = cfg["num_samples"] if quick else 4
    overrides = cfg["overrides"] if quick else {"epochs": 3}
    # one CPU per trial, so that 2 trials fit at once on 2 cores (the default study gives each trial 2)
    study = {**efficiency.SEARCHERS["random"], "seed": 0, "num_samples": num, "cpus_per_worker": 1}
    space = write_space(Path(workdir) / "scaling" / "random.yaml", study)
    runs: dict[str, list[float]] = {"1": [], "2": []}
    commands: dict[str, str] = {}
    eff = (context or {}).get("efficiency")
    reused = None
    if (quick and eff and eff.get("quick") and eff["studies"].get("random")
            and eff["setup"]["study_extra"].get("cpus_per_worker") == 1):
        rec = eff["studies"]["random"][0]
        runs["2"].append(rec["wall_s"])
        commands["2"] = rec["command"]
        reused = "the concurrency-2 point is the efficiency benchmark's random-search study (seed 0, same settings)"
    reps = 1 if quick else 2
    for rep in range(reps):
        for conc in ("1", "2"):
            if len(runs[conc]) > rep:
                continue
            rec = run_study(space, Path(workdir) / "scaling" / "runs", f"random-c{conc}-r{rep}", overrides=overrides,
                            extra=["--max-concurrent", conc])
            runs[conc].append(rec["wall_s"])
            commands[conc] = rec["command"]
    t1, t2 = stats(runs["1"]), stats(runs["2"])
    return {"trials": num, "overrides": overrides, "study_wall_s": {"1 trial at once": t1, "2 trials at once": t2},
            "efficiency_vs_linear": t1["median"] / (2 * t2["median"]) if t2["median"] else None,
            "speedup": t1["median"] / t2["median"] if t2["median"] else None,
            "commands": commands, "reused": reused}


def run(ctx: Context) -> dict[str, Any]:
    quick, workdir = ctx.quick, ctx.workdir
    target = Path(workdir) / "scaling"
    if target.exists():
        shutil.rmtree(target)
    before = loadavg()
    dp = data_parallel(quick, workdir)
    mid = loadavg()
    tp = trial_parallel(quick, workdir, ctx.results)
    return {"data_parallel": {**dp, "load_before": before, "load_after": mid},
            "trial_parallel": {**tp, "load_before": mid, "load_after": loadavg()}}


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp, tp = r["data_parallel"], r["trial_parallel"]
    c = dp["config"]
    out = [f"Data parallel (Ray Train, gloo, CPU): base config of the default study, {c['train_subset']} training "
           f"images, {c['epochs']} epochs per run, {c['rounds']} run(s) per layout, repetition = {c['repetition']}; "
           f"load {dp['load_before']} -> {dp['load_after']}.", "",
           "| layout | images/s | data share |", "|---|---|---|"]
    for name, st in dp["images_per_s"].items():
        out.append(f"| {name} | {spread(st, 0)} | {spread(dp['data_share'][name], 3)} |")
    out += ["", f"Efficiency against linear, 2 workers vs 2 x 1 worker (medians): {pct(dp['efficiency_vs_linear'])} "
            f"(minimums: {pct(dp['efficiency_vs_linear_of_minimums'])}); 2 workers / one process with 2 CPUs: "
            f"{num(dp['two_workers_over_one_process_two_cpus'], 2)}.", "",
            f"Trial parallel: {tp['trials']} trials (random search, seed 0, no early stopping, 1 worker x 1 CPU "
            f"each), overrides {tp['overrides']}; load {tp['load_before']} -> {tp['load_after']}."
            + (f" Note: {tp['reused']}." if tp.get("reused") else ""), "",
            "| trials at once | study wall time (s) |", "|---|---|"]
    for name, st in tp["study_wall_s"].items():
        out.append(f"| {name} | {spread(st, 1)} |")
    out += ["", f"Speed-up {num(tp['speedup'], 2)}x; efficiency against linear {pct(tp['efficiency_vs_linear'])}.", ""]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(dp["images_per_s"])
    axes[0].bar(range(len(names)), [dp["images_per_s"][n]["median"] or 0 for n in names],
                yerr=[[max(0, (dp["images_per_s"][n]["median"] or 0) - (dp["images_per_s"][n]["min"] or 0))
                       for n in names],
                      [max(0, (dp["images_per_s"][n]["max"] or 0) - (dp["images_per_s"][n]["median"] or 0))
                       for n in names]], capsize=4)
    axes[0].set_xticks(range(len(names)), names, fontsize=7)
    axes[0].set_ylabel("training images/s (median, min-max)")
    axes[0].set_title("Ray Train workers")
    tnames = list(tp["study_wall_s"])
    axes[1].bar(range(len(tnames)), [tp["study_wall_s"][n]["median"] or 0 for n in tnames], color="tab:orange")
    axes[1].set_xticks(range(len(tnames)), tnames, fontsize=8)
    axes[1].set_ylabel("study wall time (s)")
    axes[1].set_title("Concurrent trials")
    fig.suptitle("Scaling on this machine" + (" (quick mode)" if r.get("quick") else ""), fontsize=10)
    fig.tight_layout()
    figs.mkdir(parents=True, exist_ok=True)
    fig.savefig(figs / "scaling.png", dpi=110)
    plt.close(fig)
    out += ["![scaling](figures/scaling.png)", ""]
    return out


def goals(r: dict) -> list[Goal]:
    """No goal: the issue asks for the figures, as efficiency against linear."""
    dp, tp = r["data_parallel"], r["trial_parallel"]
    return [("2 Ray Train workers vs 1: efficiency against linear", pct(dp.get("efficiency_vs_linear")), "no goal"),
            ("2 trials at once vs 1: efficiency against linear", pct(tp.get("efficiency_vs_linear")), "no goal")]
