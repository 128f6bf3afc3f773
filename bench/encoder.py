"""Benchmark: what the default study's metric measures. Its monitor values for raw pixels, an untrained encoder and the
MoCo v2 baseline trained at the search's budget, with features pooled to one point (``pool_grid`` 1) or to a 2x2 grid
(2, the shipped default).

A representation is worth studying when training it beats what comes for free: raw pixels, and the same encoder
untrained (random convolutions are strong features of small centred images). For each grid and each seed (1, 2, 3:
seeds the default study's search, seed 0, does not train with) the base of ``configs/hardneg.yaml`` (15,000 images,
a 16-channel ConvNet) is scored by ``Engine.monitor`` (weighted kNN and ridge probe, 5k-image bank, 2k validation
images) before training and after training MoCo v2 (the study's baseline point) for the search's compute budget,
with ``moco.engine.Engine`` directly on the CPU (no Ray). Raw pixels (centred) are scored by the same monitor: each
seed draws its own bank and validation images, so raw pixels score differently per seed and every difference is
paired by seed. Per row: the mean over seeds with a 95 % t-interval.

Quick mode: one seed, compute 2 on 4,096 images (a smoke test of the path, not a quality figure).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.common import Context, loadavg
from bench.page import Goal, num
from moco.vocabulary import MONITOR_METRICS, RAW_PREFIX, VAL_KNN, VAL_PROBE, raw_name

SPACE = "hardneg"
GRIDS = (1, 2)
SEEDS = (1, 2, 3)
METRICS = MONITOR_METRICS
TITLE = "12. What the default study's metric measures: raw pixels, untrained and trained encoders"


def _monitor(engine) -> dict[str, float]:
    out = engine.monitor()
    return {k: out[k] for k in (*METRICS, *map(raw_name, METRICS)) if k in out}


def score(cfg, log=print) -> dict[str, Any]:
    """Monitor values of ``cfg``'s encoder before and after training for ``cfg.epochs`` epochs, and of raw pixels
    (the monitor scores them at its first call only)."""
    from moco.data import load_dataset
    from moco.engine import Engine

    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    untrained = _monitor(engine)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        row = engine.train_epoch()
        log(f"[encoder] pool_grid {cfg.pool_grid} seed {cfg.seed}: epoch {row['epoch']} loss {row['loss']:.4f} "
            f"({time.perf_counter() - start:.0f} s, load {loadavg()})")
    return {"untrained": {k: v for k, v in untrained.items() if k in METRICS},
            "raw": {k.removeprefix(RAW_PREFIX): v for k, v in untrained.items() if k.startswith(RAW_PREFIX)},
            "trained": _monitor(engine), "train_s": time.perf_counter() - start}


def run(ctx: Context) -> dict[str, Any]:
    from moco.vocabulary import BASELINE_POINT
    from study.space import load_space

    space = load_space(SPACE)
    seeds = SEEDS[:1] if ctx.quick else SEEDS
    extra = {"compute_budget": 2, "train_subset": 4096} if ctx.quick else {}
    out: dict[str, Any] = {"space": SPACE, "quick": ctx.quick, "seeds": list(seeds),
                           "torch_threads": torch.get_num_threads(), "runs": []}
    for grid in GRIDS:
        for seed in seeds:
            cfg = space.config_with({**BASELINE_POINT, **extra, "pool_grid": grid, "seed": seed, "final_eval": False})
            out.update(compute=cfg.compute_budget, train_subset=cfg.train_subset, width=cfg.width)
            out["runs"].append({"pool_grid": grid, "seed": seed, **score(cfg)})
    return out


def _stats(values) -> tuple[float, float, float]:
    import numpy as np

    from analysis.ablation import t_interval

    v = np.asarray(values, dtype=float)
    return (float(v.mean()), *t_interval(v))


def summary(r: dict) -> dict[str, dict[str, tuple[float, float, float]]]:
    """row name -> metric -> (mean, CI low, CI high) over seeds; the rows "... minus ..." are paired by seed (each seed
    draws its own monitor bank and validation images, so raw pixels score differently per seed)."""
    runs = {grid: [run for run in r["runs"] if run["pool_grid"] == grid] for grid in GRIDS}
    out = {"raw pixels (centred)": {m: _stats([run["raw"][m] for run in runs[GRIDS[0]]]) for m in METRICS}}
    for grid in GRIDS:
        out[f"untrained encoder, pool_grid {grid}"] = {m: _stats([run["untrained"][m] for run in runs[grid]])
                                                      for m in METRICS}
        out[f"MoCo v2 baseline trained, pool_grid {grid}"] = {m: _stats([run["trained"][m] for run in runs[grid]])
                                                             for m in METRICS}
    for grid in GRIDS:
        for other in ("raw", "untrained"):
            out[f"trained minus {other}, pool_grid {grid} (paired by seed)"] = {
                m: _stats([run["trained"][m] - run[other][m] for run in runs[grid]]) for m in METRICS}
    return out


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    def cell(stat: tuple[float, float, float]) -> str:
        mean, lo, hi = stat
        return num(mean) if lo != lo else f"{num(mean)} [{num(lo)}, {num(hi)}]"

    out = [f"The base of `configs/{r['space']}.yaml` ({r['train_subset']} images, width {r['width']}), seeds "
           f"{', '.join(map(str, r['seeds']))} (the search trains with seed 0), {r['torch_threads']} torch threads. "
           "The study's per-epoch monitor (weighted kNN, k = 200, t = 0.1, and ridge probe; 5k-image bank, 2k "
           f"validation images) of the encoder before training and after training MoCo v2 for compute {r['compute']}"
           + (" (quick mode: a smoke test, not the search's budget)" if r.get("quick") else " (the search's budget)")
           + "; raw pixels centred on the bank's mean. Mean over seeds [95 % t-interval].", "",
           f"| features | monitor kNN (`{VAL_KNN}`) | monitor ridge probe (`{VAL_PROBE}`) |", "|---|---|---|"]
    for name, stats in summary(r).items():
        out.append(f"| {name} | {cell(stats[VAL_KNN])} | {cell(stats[VAL_PROBE])} |")
    out.append("")
    return out


def goals(r: dict) -> list[Goal]:
    s, grid = summary(r), max(GRIDS)
    out = []
    for other, words in (("raw", "raw pixels"), ("untrained", "its untrained encoder")):
        diff = s[f"trained minus {other}, pool_grid {grid} (paired by seed)"][VAL_PROBE]
        out.append((f"the default study's trained baseline beats {words} on the study's metric (monitor ridge probe, "
                    f"pool_grid {grid}, paired difference, 95 % CI above 0)",
                    f"{num(diff[0])} [{num(diff[1])}, {num(diff[2])}] points",
                    bool(diff[1] > 0) if diff[1] == diff[1] else None))
    return out
